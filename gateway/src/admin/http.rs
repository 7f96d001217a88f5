//! What every admin route module shares about HTTP: reading a JSON body, the path's
//! ids and card numbers, CSV on request, yuan as text. Kept apart from the routes so
//! that the route modules depend on it and never on each other.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use cardgate_codec::CardNo;
use cardgate_domain::money::from_fen;
use serde::de::DeserializeOwned;

use super::ApiError;

pub(crate) fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the JSON body does not parse: {e}")))
}

pub(crate) fn yuan(fen: i64) -> String {
    from_fen(fen).to_string()
}

pub(crate) fn parse_card(s: &str) -> Result<CardNo, ApiError> {
    cardgate_domain::rules::input::parse_card_no(s).map_err(|e| ApiError::bad_request(e.to_string()))
}

pub(crate) fn parse_id(s: &str, what: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("{what} {s:?} is not a number")))
}

/// Whether the caller asked for CSV: `format=csv`, or `Accept: text/csv`. Any other
/// `format` than json or csv is refused rather than answered in a format not asked for.
pub(crate) fn wants_csv(q: &HashMap<String, String>, headers: &HeaderMap) -> Result<bool, ApiError> {
    match q.get("format").map(String::as_str) {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "format={other:?} is not offered: format=json (the default) or format=csv"
        ))),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv"))),
    }
}

pub(crate) fn csv_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response()
}

pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
