//! The business-day reports over the admin API: the daily completeness check (system
//! admin) and the merchants' settlement with its once-only close (data admin). The
//! figures come from `crate::reports`.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cardgate_domain::clock::{business_day, format_local, parse_local_date};
use cardgate_domain::entry::SettlementClose;
use cardgate_domain::operator::Permission;
use serde_json::{Value, json};

use super::http::{csv_response, wants_csv, yuan};
use super::{AdminState, ApiError, Done, idempotency_key};
use crate::reports::{SettlementError, completeness, completeness_csv, may_close, settlement};

pub fn api() -> Router<AdminState> {
    Router::new()
        .route("/api/v1/reports/completeness", get(completeness_report))
        .route("/api/v1/settlements/{date}", get(get_settlement))
        .route("/api/v1/settlements/{date}/close", post(close_settlement))
}

/// A business day from `date=YYYY-MM-DD` (or the path), yesterday when absent: the
/// morning check is about the day that just ended.
fn day_of(s: &AdminState, date: Option<&str>) -> Result<i32, ApiError> {
    let tz = s.tz_offset_minutes;
    match date {
        None => Ok(s.ledger.today() - 1),
        Some(d) => parse_local_date(d, tz)
            .map(|ms| business_day(ms, tz))
            .ok_or_else(|| ApiError::bad_request(format!("date {d:?} is not YYYY-MM-DD"))),
    }
}

impl From<SettlementError> for ApiError {
    fn from(e: SettlementError) -> ApiError {
        let status = match &e {
            SettlementError::NoCentral | SettlementError::Central(_) => StatusCode::SERVICE_UNAVAILABLE,
            SettlementError::NotEnded(_) | SettlementError::Behind { .. } => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.to_string())
    }
}

async fn completeness_report(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(
        s,
        headers,
        Permission::Terminals,
        "reports.completeness",
        String::from("reports")
    );
    let csv = tryr!(wants_csv(&q, &headers));
    let day = tryr!(day_of(&s, q.get("date").map(String::as_str)));
    let central = s.durability.central.clone();
    let report = completeness(&s.ledger, central.as_deref(), day).await;
    if csv {
        return csv_response(completeness_csv(&report, s.tz_offset_minutes));
    }
    axum::Json(report).into_response()
}

/// A settlement as JSON; `closed_ms` the close's time (`None` while open).
fn settlement_json(c: &SettlementClose, closed_ms: Option<i64>, tz: i32) -> Value {
    let closed = closed_ms.is_some();
    let merchants: Vec<Value> = c
        .merchants
        .iter()
        .map(|m| {
            json!({
                "merchant": m.merchant,
                "count": m.count,
                "gross": yuan(m.gross_fen),
                "reversal_count": m.reversal_count,
                "reversals": yuan(m.reversals_fen),
                "adjustment_count": m.adjustment_count,
                "adjustments": yuan(m.adjustments_fen),
                "net": yuan(m.net_fen),
                "fee_rate_bp": m.fee_rate_bp,
                "fee": yuan(m.fee_fen),
                "payable": yuan(m.net_fen - m.fee_fen),
            })
        })
        .collect();
    let sum = |f: fn(&cardgate_domain::model::SettlementDay) -> i64| c.merchants.iter().map(f).sum::<i64>();
    let (y, mo, d) = cardgate_domain::clock::civil_from_days(i64::from(c.day));
    json!({
        "date": format!("{y:04}-{mo:02}-{d:02}"),
        "closed": closed,
        "closed_by": if closed { Some(c.actor.name.clone()) } else { None },
        "closed_at": closed_ms.map(|ms| format_local(ms, tz)),
        "through_entry": c.through_entry,
        "merchants": merchants,
        "totals": {
            "count": c.merchants.iter().map(|m| m.count).sum::<u64>(),
            "gross": yuan(sum(|m| m.gross_fen)),
            "reversals": yuan(sum(|m| m.reversals_fen)),
            "adjustments": yuan(sum(|m| m.adjustments_fen)),
            "net": yuan(sum(|m| m.net_fen)),
            "fee": yuan(sum(|m| m.fee_fen)),
        },
    })
}

fn settlement_csv(c: &SettlementClose, closed: bool) -> String {
    let mut out = String::from(
        "date,merchant,count,gross,reversal_count,reversals,adjustment_count,adjustments,net,fee_rate_bp,fee,payable,closed\n",
    );
    let (y, mo, d) = cardgate_domain::clock::civil_from_days(i64::from(c.day));
    for m in &c.merchants {
        out.push_str(&format!(
            "{y:04}-{mo:02}-{d:02},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            m.merchant,
            m.count,
            yuan(m.gross_fen),
            m.reversal_count,
            yuan(m.reversals_fen),
            m.adjustment_count,
            yuan(m.adjustments_fen),
            yuan(m.net_fen),
            m.fee_rate_bp,
            yuan(m.fee_fen),
            yuan(m.net_fen - m.fee_fen),
            closed
        ));
    }
    out
}

/// A closed day's figures as they were closed; an open day's as the central store has
/// them now, with the card desk's fee list of the day beside them.
async fn get_settlement(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(date): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let actor = auth!(
        s,
        headers,
        Permission::Settlement,
        "settlement.get",
        format!("settlement:{date}")
    );
    let csv = tryr!(wants_csv(&q, &headers));
    let day = tryr!(day_of(&s, Some(&date)));
    let tz = s.tz_offset_minutes;
    let (close, closed) = match s.ledger.settlement(day) {
        Some(c) => (c, true),
        None => {
            let Some(central) = s.durability.central.clone() else {
                return ApiError::from(SettlementError::NoCentral).into_response();
            };
            (tryr!(settlement(&s.ledger, &central, day, &actor.actor).await), false)
        }
    };
    if csv {
        return csv_response(settlement_csv(&close, closed));
    }
    let closed_ms = if closed {
        s.ledger.settlement_closed_ms(day)
    } else {
        None
    };
    let mut body = settlement_json(&close, closed_ms, tz);
    let (from, to) = s.ledger.day_bounds(day);
    let l = s.ledger.clone();
    if let Ok(Ok((rows, complete))) = tokio::task::spawn_blocking(move || l.fee_list(from, to)).await {
        body["desk_fees"] = json!({
            "count": rows.len(),
            "total": yuan(rows.iter().map(|r| r.amount_fen).sum()),
            "complete": complete,
            "list": format!("/api/v1/fees?day={date}"),
        });
    }
    axum::Json(body).into_response()
}

/// Closes the day (轧帐): its figures are taken from the central store, which must hold
/// everything the journal holds, and never change afterwards.
async fn close_settlement(State(s): State<AdminState>, headers: HeaderMap, Path(date): Path<String>) -> Response {
    let target = format!("settlement:{date}");
    let authed = auth!(s, headers, Permission::Settlement, "settlement.close", target);
    let key = key!(headers, "settlement.close", target, "", axum::body::Bytes::new());
    let day = tryr!(day_of(&s, Some(&date)));
    let tz = s.tz_offset_minutes;
    let central = s.durability.central.clone();
    s.mutate(authed, "settlement.close", target, key, move |l, call| async move {
        let central = central.ok_or(SettlementError::NoCentral)?;
        may_close(&l, &central, day).await?;
        let close = settlement(&l, &central, day, &call.actor).await?;
        // Built inside the close, once its time is kept: the answer names it.
        let at = |c: &SettlementClose| l.settlement_closed_ms(c.day);
        let describe = |c: &SettlementClose| (String::new(), settlement_json(c, at(c), tz).to_string());
        let answer = |c: &SettlementClose| settlement_json(c, at(c), tz).to_string();
        let closed = l
            .close_settlement(&call.by(StatusCode::CREATED, &describe, &answer), close)
            .await?;
        Ok(Done {
            status: StatusCode::CREATED,
            before: Value::Null,
            after: Value::Null,
            body: settlement_json(&closed, l.settlement_closed_ms(closed.day), tz),
        })
    })
    .await
}
