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

/// The header a CSV search answer carries with its JSON's `complete`: a CSV has no place
/// for it, and an export cut at its row bound, or reaching past what the journal holds,
/// must not pass for the whole record.
pub(crate) const COMPLETE_HEADER: &str = "x-cardgate-complete";

/// A CSV search answer, with whether it is the whole of what was asked for.
pub(crate) fn csv_search_response(text: String, complete: bool) -> Response {
    let mut r = csv_response(text);
    r.headers_mut().insert(
        header::HeaderName::from_static(COMPLETE_HEADER),
        header::HeaderValue::from_static(if complete { "true" } else { "false" }),
    );
    r
}

/// Refuses a search parameter the endpoint does not take: a misspelt or unsupported
/// filter silently ignored would answer, and export, more than was asked for.
pub(crate) fn only_params(q: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = q.keys().map(String::as_str).filter(|k| !known.contains(k)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    let takes = if known.is_empty() {
        "this endpoint takes no parameters".to_string()
    } else {
        format!("this search takes {}", known.join(", "))
    };
    Err(ApiError::bad_request(format!(
        "unknown parameter {}: {takes}",
        unknown.join(", ")
    )))
}

/// The first parameter a query string names more than once, if any. Every endpoint
/// reads its parameters into a map that keeps one value per name: a repeated one would
/// silently keep the last (`door=1&door=2` searching door 2 only, and audited so).
pub(crate) fn repeated_param(query: &str) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, _)| k.into_owned())
        .find(|k| !seen.insert(k.clone()))
}

/// A `true`/`false` (or `1`/`0`) parameter, `None` when absent. Anything else is 400:
/// `dry_run=yes` read as "not a dry run" would import for real.
pub(crate) fn parse_flag(q: &HashMap<String, String>, key: &str) -> Result<Option<bool>, ApiError> {
    match q.get(key).map(String::as_str) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad_request(format!("{key}={other:?}: true or false"))),
    }
}

/// A text cell of an exported CSV: quoted where the format needs it, and a cell a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@`, a tab or carriage return
/// first, e.g. a person named `=HYPERLINK(...)`) led by an apostrophe, which
/// spreadsheets show as text. A number (`-12.50`) stays a number.
pub(crate) fn csv_field(s: &str) -> String {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err();
    let s = if formula { format!("'{s}") } else { s.to_string() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::{csv_field, repeated_param};

    #[test]
    fn exported_cells_never_run_as_formulas() {
        assert_eq!(csv_field("张三"), "张三");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(
            csv_field("=HYPERLINK(\"http://evil\",\"x\")"),
            "\"'=HYPERLINK(\"\"http://evil\"\",\"\"x\"\")\""
        );
        assert_eq!(csv_field("+1+1"), "'+1+1");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("-2+3"), "'-2+3");
        assert_eq!(csv_field("\tx"), "'\tx");
        assert_eq!(csv_field("-12.50"), "-12.50");
        assert_eq!(csv_field("+86"), "+86");
    }

    #[test]
    fn a_parameter_named_twice_is_found_whatever_its_values_or_spelling() {
        assert_eq!(repeated_param("door=1&door=2").as_deref(), Some("door"));
        assert_eq!(repeated_param("person=A&from=1&person=A").as_deref(), Some("person"));
        // Percent-encoded, it is still the same name.
        assert_eq!(repeated_param("door=1&d%6For=2").as_deref(), Some("door"));
        assert_eq!(repeated_param("door=1&door_group=2&format=csv"), None);
        assert_eq!(repeated_param(""), None);
    }
}
