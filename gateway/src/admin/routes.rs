//! The admin API's endpoints, grouped by the permission they need (see `Role::allows`).
//!
//! Money is a decimal string of yuan with at most two places (`"12.50"`) in and out,
//! never a JSON number, so nothing between the desk and the ledger rounds it.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cardgate_domain::clock::{format_local, parse_local_date};
use cardgate_domain::entry::{CardAction, FeeKind, MoneyMove, PayMethod};
use cardgate_domain::model::{Account, AccountKind, Card, KindParams, Limits, Params, Person};
use cardgate_domain::money::{from_fen, to_fen};
use cardgate_domain::operator::{Operator, Permission, Role};
use cardgate_domain::rules::input::YuanRefusal;
use cardgate_ledger::audit::AuditQuery;
use cardgate_ledger::desk::{CardResult, MoneyResult, NewPerson, PasswordChanged, SignIn};
use cardgate_ledger::history::HistoryQuery;
use cardgate_ledger::import::ImportReport;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{
    csv_field, csv_search_response, json_body, only_params, parse_card, parse_flag, parse_id, wants_csv, yuan,
};
use super::{ADMIN_BODY_BYTES_MAX, AdminState, ApiError, BULK_BODY_BYTES_MAX, Done, idempotency_key, with_body_limit};

pub fn router(state: AdminState) -> Router {
    // A whole campus in one call is what these three are for; every other route takes
    // a small body. `guard` keeps both from anyone without a token.
    let bulk = Router::new()
        .route("/api/v1/imports", post(import))
        .route("/api/v1/grants", post(grants))
        .route("/api/v1/cancellations", post(cancel_batch));
    let api = Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/persons", post(open_person))
        .route("/api/v1/persons/{id}", get(get_person).patch(update_person))
        .route("/api/v1/accounts/{id}", get(get_account))
        .route("/api/v1/accounts/{id}/topup", post(top_up))
        .route("/api/v1/accounts/{id}/refund", post(refund))
        .route("/api/v1/accounts/{id}/fees", post(fee))
        .route("/api/v1/accounts/{id}/adjustments", post(adjust))
        .route("/api/v1/accounts/{id}/transactions", get(account_history))
        .route("/api/v1/cards", post(issue_card))
        .route("/api/v1/cards/{no}", get(get_card))
        .route("/api/v1/cards/{no}/transactions", get(card_history))
        .route("/api/v1/cards/{no}/{action}", post(card_action))
        .route("/api/v1/fees", get(fee_list))
        .route("/api/v1/cash", get(cash_book))
        .route("/api/v1/params", get(get_params).put(put_params))
        .route("/api/v1/operators", get(list_operators).post(add_operator))
        .route("/api/v1/operators/{id}/disable", post(disable_operator))
        .route("/api/v1/operators/{id}/password", post(set_password))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/exceptions", get(list_exceptions))
        .route("/api/v1/exceptions/{id}/resolve", post(resolve_exception))
        .route("/api/v1/blacklist", get(blacklist))
        .route("/api/v1/blacklist/changes", get(blacklist_changes))
        .route("/api/v1/backups", post(create_backup))
        .route("/api/v1/integrity/checks", post(run_check))
        .route("/api/v1/integrity/checks/last", get(last_check));
    let api = api
        .merge(super::registry::api())
        .merge(super::reports::api())
        .merge(super::doors::api());
    let bulk = bulk.merge(super::registry::bulk());
    with_body_limit(api, ADMIN_BODY_BYTES_MAX)
        .merge(with_body_limit(bulk, BULK_BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(state.clone(), super::guard))
        .with_state(state)
}

// ---- helpers --------------------------------------------------------------------------

fn dec(v: Decimal) -> String {
    to_fen(v).map(yuan).unwrap_or_else(|| v.to_string())
}

/// `"12.50"` → 1250 fen (`input::parse_yuan`): not of that form is 400, a third decimal
/// or beyond the largest amount 422.
fn parse_amount(s: &str) -> Result<i64, ApiError> {
    cardgate_domain::rules::input::parse_yuan(s).map_err(|e| match e {
        YuanRefusal::Unreadable(r) => ApiError::bad_request(r.0),
        YuanRefusal::OutOfBounds(r) => ApiError::unprocessable(r.0),
    })
}

fn card_json(c: &Card) -> Value {
    json!({
        "card_no": c.no.0.to_string(),
        "account": c.account,
        "status": c.status.as_str(),
        "expires_ms": c.expires_ms,
        "issued_ms": c.issued_ms,
    })
}

fn account_json(a: &Account) -> Value {
    json!({
        "id": a.id,
        "kind": a.kind.as_str(),
        "status": a.status.as_str(),
        "balance": dec(a.balance),
        "spent_today": dec(a.spent_today),
        "limits": a.limits.map(|l| json!({
            "single_payment_max": dec(l.single_payment_max),
            "daily_max": dec(l.daily_max),
        })),
    })
}

fn person_json(p: &Person) -> Value {
    json!({
        "person_id": p.id,
        "name": p.name,
        "department": p.department,
        "account": p.account,
        "created_ms": p.created_ms,
    })
}

pub(crate) fn operator_json(o: &Operator) -> Value {
    json!({
        "id": o.id,
        "name": o.name,
        "role": o.role.as_str(),
        "enabled": o.enabled,
        "created_ms": o.created_ms,
    })
}

fn money_json(m: &MoneyMove) -> Value {
    json!({
        "kind": m.kind.as_str(),
        "tx_id": m.tx_id,
        "account": m.account,
        "amount": yuan(m.amount_fen),
        "balance_delta": yuan(m.balance_delta_fen),
        "balance_after": yuan(m.balance_after_fen),
        "method": m.method.as_str(),
        "reason": m.reason,
    })
}

/// A card operation's answer: everything it decided, all known before it is committed,
/// so that the answer kept under an idempotency key is the answer given.
fn card_result_json(r: &CardResult) -> Value {
    json!({
        "action": r.change.action.as_str(),
        "cards": r.change.cards.iter().map(card_json).collect::<Vec<_>>(),
        "account": r.change.account.map(|a| json!({
            "id": a.id, "status": a.status.as_str(), "balance": yuan(a.balance_fen),
        })),
        "money": r.change.money.as_ref().map(money_json),
        "blacklist_version": r.blacklist_version,
        "batch_id": r.change.batch_id,
    })
}

/// A card operation's before and after, as its audit record keeps them.
fn card_audit(r: &CardResult) -> (String, String) {
    let before = json!({
        "cards": r.before.iter().map(card_json).collect::<Vec<_>>(),
        "account": r.account_before.as_ref().map(account_json),
    });
    (before.to_string(), card_result_json(r).to_string())
}

fn card_answer(r: &CardResult) -> String {
    card_result_json(r).to_string()
}

fn card_done(r: CardResult) -> Done {
    Done::ok(Value::Null, Value::Null, card_result_json(&r))
}

/// The audit record of a money move: the balance before, and after it the whole move
/// (kind, amount, method, reason), so that the trail alone says what was paid and why.
fn money_audit(r: &MoneyResult) -> (String, String) {
    let m = &r.movement;
    (
        json!({ "balance": dec(r.before.balance) }).to_string(),
        json!({
            "balance": yuan(m.balance_after_fen),
            "tx_id": m.tx_id,
            "kind": m.kind.as_str(),
            "amount": yuan(m.amount_fen),
            "balance_delta": yuan(m.balance_delta_fen),
            "method": m.method.as_str(),
            "reason": m.reason,
        })
        .to_string(),
    )
}

fn money_answer(r: &MoneyResult) -> String {
    json!({ "money": money_json(&r.movement) }).to_string()
}

fn money_done(r: MoneyResult) -> Done {
    Done::ok(Value::Null, Value::Null, json!({ "money": money_json(&r.movement) }))
}

/// A time bound from the query: a local date (`2025-06-01`) or unix ms. A date as `to`
/// means the end of that day.
fn time_bound(q: &HashMap<String, String>, key: &str, tz: i32, end: bool) -> Result<Option<i64>, ApiError> {
    let Some(v) = q.get(key) else { return Ok(None) };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    let start = parse_local_date(v, tz)
        .ok_or_else(|| ApiError::bad_request(format!("{key}={v:?} is neither YYYY-MM-DD nor unix ms")))?;
    Ok(Some(if end { start + 86_400_000 } else { start }))
}

// ---- whoami, persons, accounts ----------------------------------------------------------

async fn whoami(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    match s.identify(&headers).await {
        Ok(op) => {
            let allowed: Vec<&str> = Permission::ALL
                .iter()
                .filter(|p| op.role.allows(**p))
                .map(|p| p.as_str())
                .collect();
            axum::Json(json!({ "operator": operator_json(&op), "groups": allowed })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonBody {
    person_id: String,
    name: String,
    #[serde(default)]
    department: String,
    kind: String,
}

/// Any capitalisation, as the import takes it ("Student" from a spreadsheet).
fn parse_kind(k: &str) -> Result<AccountKind, ApiError> {
    AccountKind::parse(&k.trim().to_ascii_lowercase())
        .ok_or_else(|| ApiError::unprocessable(format!("kind {k:?} is not one of student, staff, temporary")))
}

async fn open_person(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(s, headers, Permission::Persons, "person.open", String::from("persons"));
    let key = key!(headers, "person.open", "persons", "", body);
    s.mutate(actor, "person.open", "persons".into(), key, move |l, call| async move {
        let b: PersonBody = json_body(&body)?;
        let kind = parse_kind(&b.kind)?;
        let answer = |r: &(Person, Account)| json!({ "person": person_json(&r.0), "account": account_json(&r.1) });
        let describe = |r: &(Person, Account)| (String::new(), answer(r).to_string());
        let answer = |r: &(Person, Account)| answer(r).to_string();
        let (p, a) = l
            .open_person(
                &call.by(StatusCode::CREATED, &describe, &answer),
                NewPerson {
                    id: b.person_id,
                    name: b.name,
                    department: b.department,
                    kind,
                },
            )
            .await?;
        let body = json!({ "person": person_json(&p), "account": account_json(&a) });
        Ok(Done {
            status: StatusCode::CREATED,
            before: Value::Null,
            after: body.clone(),
            body,
        })
    })
    .await
}

async fn get_person(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    auth!(s, headers, Permission::Persons, "person.get", format!("person:{id}"));
    let Some(p) = s.ledger.person(&id) else {
        return ApiError::new(StatusCode::NOT_FOUND, format!("person {id} not found")).into_response();
    };
    let account = s.ledger.account(p.account);
    let cards: Vec<Value> = s.ledger.cards_of(p.account).iter().map(card_json).collect();
    axum::Json(json!({
        "person": person_json(&p),
        "account": account.as_ref().map(account_json),
        "cards": cards,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonPatch {
    name: Option<String>,
    department: Option<String>,
    kind: Option<String>,
}

async fn update_person(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let target = format!("person:{id}");
    let actor = auth!(s, headers, Permission::Persons, "person.update", target);
    let key = key!(headers, "person.update", target, "", body);
    s.mutate(actor, "person.update", target, key, move |l, call| async move {
        let b: PersonPatch = json_body(&body)?;
        let kind = b.kind.as_deref().map(parse_kind).transpose()?;
        let describe = |r: &(Person, Account, Person, Account)| {
            (
                json!({ "person": person_json(&r.0), "account": account_json(&r.1) }).to_string(),
                json!({ "person": person_json(&r.2), "account": account_json(&r.3) }).to_string(),
            )
        };
        let answer = |r: &(Person, Account, Person, Account)| {
            json!({ "person": person_json(&r.2), "account": account_json(&r.3) }).to_string()
        };
        let (_, _, pa, aa) = l
            .update_person(
                &call.by(StatusCode::OK, &describe, &answer),
                &id,
                b.name,
                b.department,
                kind,
            )
            .await?;
        let after = json!({ "person": person_json(&pa), "account": account_json(&aa) });
        Ok(Done::ok(Value::Null, Value::Null, after))
    })
    .await
}

async fn get_account(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    auth!(s, headers, Permission::Persons, "account.get", format!("account:{id}"));
    let id = tryr!(parse_id(&id, "account"));
    let Some(a) = s.ledger.account(id) else {
        return ApiError::new(StatusCode::NOT_FOUND, format!("account {id} not found")).into_response();
    };
    let cards: Vec<Value> = s.ledger.cards_of(id).iter().map(card_json).collect();
    axum::Json(json!({
        "account": account_json(&a),
        "person": s.ledger.person_of_account(id).as_ref().map(person_json),
        "cards": cards,
    }))
    .into_response()
}

// ---- money --------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountBody {
    amount: String,
    #[serde(default)]
    reason: String,
}

async fn money_op(s: AdminState, headers: HeaderMap, id: String, body: Bytes, action: &'static str) -> Response {
    let target = format!("account:{id}");
    let actor = auth!(s, headers, Permission::Money, action, target);
    let key = key!(headers, action, target, "", body);
    s.mutate(actor, action, target, key, move |l, call| async move {
        let id = parse_id(&id, "account")?;
        let by = call.by(StatusCode::OK, &money_audit, &money_answer);
        let r = match action {
            "money.fee" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct FeeBody {
                    fee: String,
                    method: String,
                }
                let b: FeeBody = json_body(&body)?;
                let kind = FeeKind::parse(&b.fee)
                    .ok_or_else(|| ApiError::unprocessable("fee must be replacement or temporary_card"))?;
                let method = PayMethod::parse(&b.method)
                    .ok_or_else(|| ApiError::unprocessable("method must be cash or balance"))?;
                l.fee(&by, id, kind, method).await?
            }
            _ => {
                let b: AmountBody = json_body(&body)?;
                let amount = parse_amount(&b.amount)?;
                match action {
                    "money.topup" => l.top_up(&by, id, amount).await?,
                    "money.refund" => l.refund(&by, id, amount, &b.reason).await?,
                    _ => l.adjust(&by, id, amount, &b.reason).await?,
                }
            }
        };
        Ok(money_done(r))
    })
    .await
}

async fn top_up(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Response {
    money_op(s, headers, id, body, "money.topup").await
}

async fn refund(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Response {
    money_op(s, headers, id, body, "money.refund").await
}

async fn fee(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Response {
    money_op(s, headers, id, body, "money.fee").await
}

async fn adjust(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Response {
    money_op(s, headers, id, body, "money.adjust").await
}

// ---- cards ----------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    card_no: String,
    account: Option<u64>,
    person_id: Option<String>,
    /// A temporary card: expires at the end of this local date.
    expires: Option<String>,
    /// Charge the temporary-card fee: "cash" or "balance".
    fee: Option<String>,
}

async fn issue_card(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(s, headers, Permission::Cards, "card.issue", String::from("cards"));
    let tz = s.tz_offset_minutes;
    let key = key!(headers, "card.issue", "cards", "", body);
    s.mutate(actor, "card.issue", "cards".into(), key, move |l, call| async move {
        let b: IssueBody = json_body(&body)?;
        let no = parse_card(&b.card_no)?;
        let account = match (b.account, &b.person_id) {
            (Some(a), None) => a,
            (None, Some(p)) => {
                l.person(p)
                    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("person {p} not found")))?
                    .account
            }
            _ => return Err(ApiError::unprocessable("name exactly one of account and person_id")),
        };
        let expires_ms = match &b.expires {
            None => None,
            Some(d) => Some(
                parse_local_date(d, tz)
                    .ok_or_else(|| ApiError::bad_request(format!("expires {d:?} is not YYYY-MM-DD")))?
                    + 86_400_000,
            ),
        };
        let fee = match &b.fee {
            None => None,
            Some(m) => Some((
                FeeKind::TemporaryCard,
                PayMethod::parse(m).ok_or_else(|| ApiError::unprocessable("fee must be cash or balance"))?,
            )),
        };
        let r = l
            .issue_card_desk(
                &call.by(StatusCode::CREATED, &card_audit, &card_answer),
                account,
                no,
                expires_ms,
                fee,
            )
            .await?;
        let mut d = card_done(r);
        d.status = StatusCode::CREATED;
        Ok(d)
    })
    .await
}

async fn get_card(State(s): State<AdminState>, headers: HeaderMap, Path(no): Path<String>) -> Response {
    auth!(s, headers, Permission::Cards, "card.get", format!("card:{no}"));
    let no = tryr!(parse_card(&no));
    match s.ledger.card(no) {
        None => ApiError::new(StatusCode::NOT_FOUND, format!("card {} not found", no.0)).into_response(),
        Some(c) => axum::Json(json!({
            "card": card_json(&c),
            "blacklisted": s.ledger.blacklist().contains(no),
            "account": s.ledger.account(c.account).as_ref().map(account_json),
            "person": s.ledger.person_of_account(c.account).as_ref().map(person_json),
        }))
        .into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplaceBody {
    new_card_no: String,
    fee: Option<String>,
}

async fn card_action(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((no, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let target = format!("card:{no}");
    let (act, name) = match action.as_str() {
        "lost" => (CardAction::Lost, "card.lost"),
        "unfreeze" => (CardAction::Unfreeze, "card.unfreeze"),
        "freeze" => (CardAction::Freeze, "card.freeze"),
        "bad" => (CardAction::Bad, "card.bad"),
        "replace" => (CardAction::Replace, "card.replace"),
        "cancel" => (CardAction::Cancel, "card.cancel"),
        other => {
            return ApiError::new(StatusCode::NOT_FOUND, format!("no card action {other:?}")).into_response();
        }
    };
    let actor = auth!(s, headers, Permission::Cards, name, target);
    let key = key!(headers, name, target, "", body);
    s.mutate(actor, name, target, key, move |l, call| async move {
        let no = parse_card(&no)?;
        let by = call.by(StatusCode::OK, &card_audit, &card_answer);
        let r = match act {
            CardAction::Replace => {
                let b: ReplaceBody = json_body(&body)?;
                let new = parse_card(&b.new_card_no)?;
                let fee = match &b.fee {
                    None => None,
                    Some(m) => Some(
                        PayMethod::parse(m).ok_or_else(|| ApiError::unprocessable("fee must be cash or balance"))?,
                    ),
                };
                l.replace_card(&by, no, new, fee).await?
            }
            CardAction::Cancel => l.cancel_card(&by, no).await?,
            other => l.card_status(&by, no, other).await?,
        };
        Ok(card_done(r))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBatchBody {
    batch_id: String,
    #[serde(default)]
    person_ids: Vec<String>,
    /// Every person of this department (a graduating class).
    department: Option<String>,
}

async fn cancel_batch(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(
        s,
        headers,
        Permission::Cards,
        "card.cancel_batch",
        String::from("cancellations")
    );
    let key = key!(headers, "card.cancel_batch", "cancellations", "", body);
    s.mutate(
        actor,
        "card.cancel_batch",
        "cancellations".into(),
        key,
        move |l, call| async move {
            let b: CancelBatchBody = json_body(&body)?;
            // One or the other: a department beside a list of ids closes every account
            // of both, which is never what a desk that typed both meant.
            let ids = match (b.department, b.person_ids.is_empty()) {
                (Some(_), false) => {
                    return Err(ApiError::unprocessable(
                        "name either person_ids or a department, not both",
                    ));
                }
                (Some(d), true) => l.persons_in_department(&d).into_iter().map(|p| p.id).collect(),
                (None, _) => b.person_ids,
            };
            if ids.is_empty() {
                return Err(ApiError::unprocessable("name person_ids or a department with persons"));
            }
            // Each cancellation is audited under its card and account as it is made; the
            // call itself once it ends (below, as `Done`).
            let unused = |_: &_| (String::new(), String::new());
            let no_answer = |_: &_| String::new();
            let by = call.by(StatusCode::OK, &unused, &no_answer);
            let (report, results) = l.cancel_batch(&by, &b.batch_id, &ids).await?;
            let body = json!({
                "report": report,
                "refunds": results.iter().filter_map(|r| r.change.money.as_ref()).map(money_json).collect::<Vec<_>>(),
            });
            Ok(Done::ok(
                json!({ "persons": ids.len() }),
                json!({ "report": report }),
                body,
            ))
        },
    )
    .await
}

// ---- grants, import, fees, history ------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantItemBody {
    account: Option<u64>,
    person_id: Option<String>,
    amount: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    batch_id: String,
    items: Vec<GrantItemBody>,
}

async fn grants(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(s, headers, Permission::Grants, "grant.batch", String::from("grants"));
    let key = key!(headers, "grant.batch", "grants", "", body);
    s.mutate(actor, "grant.batch", "grants".into(), key, move |l, call| async move {
        let b: GrantBody = json_body(&body)?;
        let mut items = Vec::with_capacity(b.items.len());
        for (i, it) in b.items.iter().enumerate() {
            let account = match (it.account, &it.person_id) {
                (Some(a), None) => a,
                (None, Some(p)) => {
                    l.person(p)
                        .ok_or_else(|| {
                            // As an unknown account is: an id that names nothing is 404.
                            ApiError::new(StatusCode::NOT_FOUND, format!("item {i}: person {p} not found"))
                        })?
                        .account
                }
                _ => {
                    return Err(ApiError::unprocessable(format!(
                        "item {i}: name exactly one of account and person_id"
                    )));
                }
            };
            let amount =
                parse_amount(&it.amount).map_err(|e| ApiError::new(e.status, format!("item {i}: {}", e.message)))?;
            items.push((account, amount));
        }
        // Each grant is audited under its account as it is made; the call itself once it
        // ends (below, as `Done`).
        let unused = |_: &_| (String::new(), String::new());
        let no_answer = |_: &_| String::new();
        let report = l
            .grant_batch(&call.by(StatusCode::OK, &unused, &no_answer), &b.batch_id, &items)
            .await?;
        let body = json!({ "report": report, "total": yuan(report.total_fen) });
        Ok(Done::ok(Value::Null, body.clone(), body))
    })
    .await
}

async fn import(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let actor = auth!(s, headers, Permission::Import, "import.csv", String::from("imports"));
    // A misspelt `dry_run` ignored would import for real.
    tryr!(only_params(&q, &["dry_run", "charset"]));
    let dry_run = tryr!(parse_flag(&q, "dry_run")).unwrap_or(false);
    // The file's encoding, for files with no byte order mark that are not UTF-8
    // (e.g. charset=gb18030); an unknown one is refused with 422.
    let charset = q.get("charset").cloned();
    let extra = format!("dry_run={dry_run} charset={}", charset.as_deref().unwrap_or(""));
    let key = key!(headers, "import.csv", "imports", &extra, body);
    s.mutate(actor, "import.csv", "imports".into(), key, move |l, call| async move {
        let started = std::time::Instant::now();
        let describe = |r: &ImportReport| (String::new(), import_summary(r).to_string());
        let answer = |r: &ImportReport| import_body(r, dry_run).to_string();
        let report = l
            .import_csv_with_charset(
                &call.by(StatusCode::OK, &describe, &answer),
                &body,
                charset.as_deref(),
                dry_run,
            )
            .await?;
        // How long it took is in the first answer only: a retry gets what was kept.
        let mut body = import_body(&report, dry_run);
        body["millis"] = json!(started.elapsed().as_millis() as u64);
        if report.error_count > 0 {
            // The whole file is refused, with every reason by line: nothing changed.
            return Ok(Done {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                before: Value::Null,
                after: json!({ "applied": false, "error_count": report.error_count }),
                body,
            });
        }
        Ok(Done::ok(Value::Null, import_summary(&report), body))
    })
    .await
}

fn import_body(r: &ImportReport, dry_run: bool) -> Value {
    let mut body = serde_json::to_value(r).unwrap_or(Value::Null);
    body["dry_run"] = json!(dry_run);
    body
}

/// The import's audit record: its counts, and how many changed persons its targets do
/// not name (beyond `AUDIT_TARGET_PERSONS_MAX`; found by the import's id instead).
fn import_summary(r: &ImportReport) -> Value {
    json!({
        "import_id": r.import_id, "rows": r.rows, "added": r.added,
        "updated": r.updated, "kind_changed": r.kind_changed, "unchanged": r.unchanged,
        "applied": r.applied, "persons_not_named_in_targets": r.touched_beyond,
    })
}

/// The first columns of a desk list's CSV row: `time,tx_id,account,person_id,name`.
fn desk_csv_row(s: &AdminState, time_ms: i64, tx_id: u64, account: u64) -> String {
    let p = s.ledger.person_of_account(account);
    format!(
        "{},{},{},{},{}",
        format_local(time_ms, s.tz_offset_minutes),
        tx_id,
        account,
        csv_field(p.as_ref().map(|p| p.id.as_str()).unwrap_or("")),
        csv_field(p.as_ref().map(|p| p.name.as_str()).unwrap_or(""))
    )
}

/// The same, as the start of a JSON row.
fn desk_json_row(s: &AdminState, time_ms: i64, tx_id: u64, account: u64) -> Value {
    let p = s.ledger.person_of_account(account);
    json!({
        "time": format_local(time_ms, s.tz_offset_minutes), "time_ms": time_ms, "tx_id": tx_id,
        "account": account,
        "person_id": p.as_ref().map(|p| p.id.clone()),
        "name": p.as_ref().map(|p| p.name.clone()),
    })
}

/// The business day a desk list covers: `day` (YYYY-MM-DD), or today.
fn desk_day(s: &AdminState, q: &HashMap<String, String>) -> Result<(i64, i64), ApiError> {
    let tz = s.tz_offset_minutes;
    let from = match q.get("day") {
        Some(d) => {
            parse_local_date(d, tz).ok_or_else(|| ApiError::bad_request(format!("day {d:?} is not YYYY-MM-DD")))?
        }
        None => i64::from(s.ledger.today()) * 86_400_000 - i64::from(tz) * 60_000,
    };
    Ok((from, from + 86_400_000))
}

/// `GET /cash?day=`: the day's cash at the desk, for counting the drawers: every top-up,
/// fee taken in cash, refund and cancellation payout, and the totals in, out and net,
/// per operator (each counts their own drawer) and in all.
async fn cash_book(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(s, headers, Permission::Fees, "cash.list", String::from("cash"));
    tryr!(only_params(&q, &["day", "format"]));
    let csv = tryr!(wants_csv(&q, &headers));
    let (from, to) = tryr!(desk_day(&s, &q));
    let l = s.ledger.clone();
    let result = tokio::task::spawn_blocking(move || l.cash_book(from, to)).await;
    let (rows, complete) = match result {
        Ok(r) => tryr!(r),
        Err(_) => return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cash book failed").into_response(),
    };
    let cash_in: i64 = rows.iter().map(|r| r.cash_fen.max(0)).sum();
    let cash_out: i64 = rows.iter().map(|r| (-r.cash_fen).max(0)).sum();
    let mut by_operator: std::collections::BTreeMap<&str, (i64, i64)> = std::collections::BTreeMap::new();
    for r in &rows {
        let t = by_operator.entry(r.operator.as_str()).or_default();
        t.0 += r.cash_fen.max(0);
        t.1 += (-r.cash_fen).max(0);
    }
    if csv {
        let mut out = String::from("time,tx_id,account,person_id,name,kind,cash_in,cash_out,operator\n");
        for r in &rows {
            out.push_str(&format!(
                "{},{},{},{},{}\n",
                desk_csv_row(&s, r.time_ms, r.tx_id, r.account),
                r.kind,
                if r.cash_fen > 0 {
                    yuan(r.cash_fen)
                } else {
                    String::new()
                },
                if r.cash_fen < 0 {
                    yuan(-r.cash_fen)
                } else {
                    String::new()
                },
                csv_field(&r.operator)
            ));
        }
        for (operator, (i, o)) in &by_operator {
            out.push_str(&format!(
                "total {},,,,,,{},{},{}\n",
                csv_field(operator),
                yuan(*i),
                yuan(*o),
                csv_field(operator)
            ));
        }
        out.push_str(&format!("total,,,,,,{},{},\n", yuan(cash_in), yuan(cash_out)));
        return csv_search_response(out, complete);
    }
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = desk_json_row(&s, r.time_ms, r.tx_id, r.account);
            v["kind"] = json!(r.kind);
            v["cash"] = json!(yuan(r.cash_fen));
            v["operator"] = json!(r.operator);
            v
        })
        .collect();
    let operators: Vec<Value> = by_operator
        .iter()
        .map(|(o, (i, out))| json!({ "operator": o, "in": yuan(*i), "out": yuan(*out), "net": yuan(i - out) }))
        .collect();
    axum::Json(json!({
        "from_ms": from, "to_ms": to, "complete": complete,
        "in": yuan(cash_in), "out": yuan(cash_out), "net": yuan(cash_in - cash_out),
        "operators": operators, "moves": list,
    }))
    .into_response()
}

async fn fee_list(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(s, headers, Permission::Fees, "fees.list", String::from("fees"));
    tryr!(only_params(&q, &["day", "format"]));
    let csv = tryr!(wants_csv(&q, &headers));
    let (from, to) = tryr!(desk_day(&s, &q));
    let l = s.ledger.clone();
    let result = tokio::task::spawn_blocking(move || l.fee_list(from, to)).await;
    let (rows, complete) = match result {
        Ok(r) => tryr!(r),
        Err(_) => return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "fee list failed").into_response(),
    };
    let total: i64 = rows.iter().map(|r| r.amount_fen).sum();
    if csv {
        let mut out = String::from("time,tx_id,account,person_id,name,fee,amount,method,operator\n");
        for r in &rows {
            out.push_str(&format!(
                "{},{},{},{},{}\n",
                desk_csv_row(&s, r.time_ms, r.tx_id, r.account),
                r.fee,
                yuan(r.amount_fen),
                r.method,
                csv_field(&r.operator)
            ));
        }
        out.push_str(&format!("total,,,,,,{},,\n", yuan(total)));
        return csv_search_response(out, complete);
    }
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = desk_json_row(&s, r.time_ms, r.tx_id, r.account);
            v["fee"] = json!(r.fee);
            v["amount"] = json!(yuan(r.amount_fen));
            v["method"] = json!(r.method);
            v["operator"] = json!(r.operator);
            v
        })
        .collect();
    axum::Json(json!({ "from_ms": from, "to_ms": to, "complete": complete, "total": yuan(total), "fees": rows }))
        .into_response()
}

async fn history(
    s: AdminState,
    headers: HeaderMap,
    q: HashMap<String, String>,
    query: HistoryQuery,
    target: String,
) -> Response {
    auth!(s, headers, Permission::History, "history.get", target);
    tryr!(only_params(&q, &["from", "to", "format"]));
    let csv = tryr!(wants_csv(&q, &headers));
    match (query.account, query.card) {
        (Some(a), _) if s.ledger.account(a).is_none() => {
            return ApiError::new(StatusCode::NOT_FOUND, format!("account {a} not found")).into_response();
        }
        (_, Some(c)) if s.ledger.card(c).is_none() => {
            return ApiError::new(StatusCode::NOT_FOUND, format!("card {} not found", c.0)).into_response();
        }
        _ => {}
    }
    let tz = s.tz_offset_minutes;
    let now = s.ledger.now_ms();
    let from = tryr!(time_bound(&q, "from", tz, false)).unwrap_or(now - 30 * 86_400_000);
    let to = tryr!(time_bound(&q, "to", tz, true)).unwrap_or(now + 1);
    if to <= from {
        return ApiError::bad_request("to must be after from").into_response();
    }
    let l = s.ledger.clone();
    let hq = HistoryQuery {
        from_ms: from,
        to_ms: to,
        ..query
    };
    let h = match tokio::task::spawn_blocking(move || l.history(hq)).await {
        Ok(r) => tryr!(r),
        Err(_) => return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "history failed").into_response(),
    };
    if csv {
        let mut out = String::from(
            "time,kind,outcome,decline_reason,amount,balance_change,balance_after,card,account,tx_id,terminal,\
             merchant,seq,original_seq,blacklist_version,single_limit,daily_limit,spent_today_after,operator,reason\n",
        );
        for r in &h.rows {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                format_local(r.time_ms, tz),
                r.kind,
                r.outcome,
                r.decline_reason.unwrap_or(""),
                yuan(r.amount_fen),
                yuan(r.balance_change_fen),
                r.balance_after_fen.map(yuan).unwrap_or_default(),
                if r.card == 0 { String::new() } else { r.card.to_string() },
                r.account,
                r.tx_id,
                r.terminal,
                r.merchant,
                r.seq,
                r.original_seq,
                r.blacklist_version,
                yuan(r.single_limit_fen),
                yuan(r.daily_limit_fen),
                yuan(r.spent_today_after_fen),
                csv_field(&r.operator),
                csv_field(&r.reason)
            ));
        }
        return csv_search_response(out, h.complete);
    }
    let rows: Vec<Value> = h
        .rows
        .iter()
        .map(|r| {
            // Money as signed yuan strings, as everywhere else in the API.
            json!({
                "entry_id": r.entry_id,
                "time": format_local(r.time_ms, tz),
                "time_ms": r.time_ms,
                "kind": r.kind,
                "outcome": r.outcome,
                "decline_reason": r.decline_reason,
                "amount": yuan(r.amount_fen),
                "balance_change": yuan(r.balance_change_fen),
                "balance_after": r.balance_after_fen.map(yuan),
                "tx_id": r.tx_id,
                "card": if r.card == 0 { String::new() } else { r.card.to_string() },
                "account": r.account,
                "terminal": r.terminal,
                "merchant": r.merchant,
                "seq": r.seq,
                "original_seq": r.original_seq,
                "terminal_time_ms": r.terminal_time_ms,
                "blacklist_version": r.blacklist_version,
                "single_limit": yuan(r.single_limit_fen),
                "daily_limit": yuan(r.daily_limit_fen),
                "spent_today_after": yuan(r.spent_today_after_fen),
                "operator": r.operator,
                "reason": r.reason,
            })
        })
        .collect();
    axum::Json(json!({
        "from_ms": from, "to_ms": to, "complete": h.complete,
        "journal_starts_ms": h.journal_starts_ms, "rows": rows,
    }))
    .into_response()
}

async fn account_history(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let target = format!("account:{id}");
    let account = match parse_id(&id, "account") {
        Ok(a) => a,
        Err(e) => {
            auth!(s, headers, Permission::History, "history.get", target);
            return e.into_response();
        }
    };
    let query = HistoryQuery {
        account: Some(account),
        ..Default::default()
    };
    history(s, headers, q, query, target).await
}

async fn card_history(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(no): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let target = format!("card:{no}");
    let card = match parse_card(&no) {
        Ok(c) => c,
        Err(e) => {
            auth!(s, headers, Permission::History, "history.get", target);
            return e.into_response();
        }
    };
    let query = HistoryQuery {
        card: Some(card),
        ..Default::default()
    };
    history(s, headers, q, query, target).await
}

// ---- parameters -------------------------------------------------------------------------

fn params_json(p: &Params) -> Value {
    let mut out = serde_json::Map::new();
    for k in AccountKind::ALL {
        let kp = p.for_kind(k);
        out.insert(
            k.as_str().into(),
            json!({
                "single_payment_max": dec(kp.limits.single_payment_max),
                "daily_max": dec(kp.limits.daily_max),
                "replacement_fee": dec(kp.replacement_fee),
                "temporary_card_fee": dec(kp.temporary_card_fee),
            }),
        );
    }
    Value::Object(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KindParamsBody {
    single_payment_max: String,
    daily_max: String,
    replacement_fee: String,
    temporary_card_fee: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamsBody {
    student: KindParamsBody,
    staff: KindParamsBody,
    temporary: KindParamsBody,
}

async fn get_params(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    auth!(s, headers, Permission::Params, "params.get", String::from("params"));
    axum::Json(params_json(&s.ledger.params())).into_response()
}

async fn put_params(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(s, headers, Permission::Params, "params.set", String::from("params"));
    let key = key!(headers, "params.set", "params", "", body);
    s.mutate(actor, "params.set", "params".into(), key, move |l, call| async move {
        let b: ParamsBody = json_body(&body)?;
        let kp = |k: &KindParamsBody| -> Result<KindParams, ApiError> {
            Ok(KindParams {
                limits: Limits {
                    single_payment_max: from_fen(parse_amount(&k.single_payment_max)?),
                    daily_max: from_fen(parse_amount(&k.daily_max)?),
                },
                replacement_fee: from_fen(parse_amount(&k.replacement_fee)?),
                temporary_card_fee: from_fen(parse_amount(&k.temporary_card_fee)?),
            })
        };
        let params = Params {
            kinds: [kp(&b.student)?, kp(&b.staff)?, kp(&b.temporary)?],
        };
        let describe = |r: &(Params, Params)| (params_json(&r.0).to_string(), params_json(&r.1).to_string());
        let answer = |r: &(Params, Params)| params_json(&r.1).to_string();
        let (_, after) = l
            .change_params(&call.by(StatusCode::OK, &describe, &answer), params)
            .await?;
        Ok(Done::ok(Value::Null, Value::Null, params_json(&after)))
    })
    .await
}

// ---- operators, audit ---------------------------------------------------------------------

async fn list_operators(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    auth!(
        s,
        headers,
        Permission::Operators,
        "operator.list",
        String::from("operators")
    );
    let ops: Vec<Value> = s.ledger.operators().iter().map(operator_json).collect();
    axum::Json(json!({ "operators": ops })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorBody {
    name: String,
    role: String,
}

async fn add_operator(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(
        s,
        headers,
        Permission::Operators,
        "operator.add",
        String::from("operators")
    );
    let key = key!(headers, "operator.add", "operators", "", body);
    s.mutate(
        actor,
        "operator.add",
        "operators".into(),
        key,
        move |l, call| async move {
            let b: OperatorBody = json_body(&body)?;
            let role = Role::parse(&b.role).ok_or_else(|| {
                let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                ApiError::unprocessable(format!("role must be one of {}", all.join(", ")))
            })?;
            if role == Role::Director && call.actor.role != Role::Director {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "only a director may add a director",
                ));
            }
            // The token goes to the caller only, never into the audit trail.
            let describe = |o: &Operator| (String::new(), operator_json(o).to_string());
            // A retry gets the operator without its token, which is shown once.
            let answer = |o: &Operator| json!({ "operator": operator_json(o), "token": null }).to_string();
            let (op, token) = l
                .add_operator(&call.by(StatusCode::CREATED, &describe, &answer), &b.name, role)
                .await?;
            Ok(Done {
                status: StatusCode::CREATED,
                before: Value::Null,
                after: Value::Null,
                body: json!({ "operator": operator_json(&op), "token": token }),
            })
        },
    )
    .await
}

async fn disable_operator(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let target = format!("operator:{id}");
    let actor = auth!(s, headers, Permission::Operators, "operator.disable", target);
    let key = key!(headers, "operator.disable", target, "", Bytes::new());
    s.mutate(actor, "operator.disable", target, key, move |l, call| async move {
        let id = parse_id(&id, "operator")?;
        if l.operators().iter().any(|o| o.id == id && o.role == Role::Director) && call.actor.role != Role::Director {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "only a director may disable a director",
            ));
        }
        let describe = |r: &(Operator, Operator)| (operator_json(&r.0).to_string(), operator_json(&r.1).to_string());
        let answer = |r: &(Operator, Operator)| operator_json(&r.1).to_string();
        let (_, after) = l
            .disable_operator(&call.by(StatusCode::OK, &describe, &answer), id)
            .await?;
        Ok(Done::ok(Value::Null, Value::Null, operator_json(&after)))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
    /// The caller's present password, when it changes its own and has one.
    current: Option<String>,
}

/// Sets an operator's console password. Every operator may change its own (giving the
/// present one); setting another's is a reset, which needs the operators permission
/// (only a director resets a director's) and makes its owner choose a new one at the
/// next sign-in. Either way the operator's other console sessions end. The password is
/// in no audit record and no kept answer.
async fn set_password(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let target = format!("operator:{id}");
    let token = super::bearer_token(&headers).map(str::to_string);
    let caller = token.as_deref().and_then(|t| s.operator_of(t));
    let own = caller.as_ref().is_some_and(|op| op.id.to_string() == id);
    let (actor, action) = match caller {
        Some(op) if own => {
            metrics::counter!("cardgate_admin_requests_total", "group" => "self").increment(1);
            // Refusals it decides (a wrong present password) count under the
            // operators group, like those of a reset.
            let authed = super::Authed {
                actor: cardgate_domain::operator::Actor::of(&op),
                group: Permission::Operators,
            };
            (authed, "operator.password")
        }
        _ => (
            auth!(s, headers, Permission::Operators, "operator.password_reset", target),
            "operator.password_reset",
        ),
    };
    let key = key!(headers, action, target, "", body);
    let sessions = s.clone();
    s.mutate(actor, action, target, key, move |l, call| async move {
        let id = parse_id(&id, "operator")?;
        let b: PasswordBody = json_body(&body)?;
        cardgate_domain::operator::validate_password(&b.password).map_err(|e| ApiError::unprocessable(e.0))?;
        let Some(op) = l.operator(id) else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("operator {id} not found")));
        };
        if own && l.has_password(id) {
            // Guesses at the present password count toward the name's lock-out, as
            // sign-ins do: a session left open is no way to find the password.
            let now = l.now_ms();
            if let Some(until) = sessions.console_locked_until(&op.name, now) {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "too many wrong passwords; locked until {}",
                        format_local(until, sessions.tz_offset_minutes)
                    ),
                ));
            }
            let current = b.current.as_deref().unwrap_or("");
            if !matches!(l.check_password(&op.name, current).await?, SignIn::Valid { .. }) {
                sessions.console_failed(&op.name, now);
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "the current password is not right",
                ));
            }
        }
        if !own && op.role == Role::Director && call.actor.role != Role::Director {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "only a director may reset a director's password",
            ));
        }
        let describe = |r: &PasswordChanged| {
            (
                json!({ "password": if r.first { "none" } else { "set" } }).to_string(),
                json!({ "password": "set", "must_change": r.must_change }).to_string(),
            )
        };
        let answer = |r: &PasswordChanged| {
            json!({ "operator": operator_json(&r.operator), "must_change": r.must_change }).to_string()
        };
        let r = l
            .set_password(&call.by(StatusCode::OK, &describe, &answer), id, &b.password, !own)
            .await?;
        sessions.end_console_sessions(id, if own { token.as_deref() } else { None });
        Ok(Done::ok(
            Value::Null,
            Value::Null,
            json!({ "operator": operator_json(&r.operator), "must_change": r.must_change }),
        ))
    })
    .await
}

async fn audit(State(s): State<AdminState>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    auth!(s, headers, Permission::Audit, "audit.list", String::from("audit"));
    tryr!(only_params(&q, &["from", "to", "operator", "target", "limit"]));
    let tz = s.tz_offset_minutes;
    let query = AuditQuery {
        from_ms: tryr!(time_bound(&q, "from", tz, false)),
        to_ms: tryr!(time_bound(&q, "to", tz, true)),
        operator: q.get("operator").cloned(),
        target: q.get("target").cloned(),
        limit: match q.get("limit") {
            Some(v) => tryr!(
                v.parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| ApiError::bad_request(format!("limit={v:?}: a number of records, 1 or more")))
            ),
            None => 1000,
        },
    };
    // An empty answer to a reversed range would read as "nothing happened then".
    if let (Some(from), Some(to)) = (query.from_ms, query.to_ms)
        && from >= to
    {
        return ApiError::bad_request("to must be after from").into_response();
    }
    let records: Vec<Value> = s
        .ledger
        .audit_list(&query)
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "time": format_local(r.time_ms, tz),
                "time_ms": r.time_ms,
                "operator": r.actor.as_ref().map(|a| a.name.clone()),
                "operator_id": r.actor.as_ref().map(|a| a.operator_id),
                "role": r.actor.as_ref().map(|a| a.role.as_str()),
                "action": r.action,
                "target": r.target,
                "targets": r.target.split(' ').filter(|t| !t.is_empty()).collect::<Vec<_>>(),
                "status": r.status,
                "before": serde_json::from_str::<Value>(&r.before).unwrap_or(Value::Null),
                "after": serde_json::from_str::<Value>(&r.after).unwrap_or(Value::Null),
                "detail": r.detail,
            })
        })
        .collect();
    axum::Json(json!({ "records": records })).into_response()
}

// ---- exceptions -----------------------------------------------------------------------------

fn exception_json(e: &cardgate_domain::model::Exception, tz: i32) -> Value {
    json!({
        "id": e.id,
        "time": format_local(e.time_ms, tz),
        "time_ms": e.time_ms,
        "kind": e.kind.as_str(),
        "account": e.account,
        "card_no": e.card.0.to_string(),
        "terminal": e.terminal,
        "seq": e.seq,
        "tx_id": e.tx_id,
        "amount": yuan(e.amount_fen),
        "detail": e.detail,
        "resolved": e.resolved.as_ref().map(|r| json!({
            "operator": r.actor.name, "time": format_local(r.time_ms, tz), "note": r.note,
        })),
    })
}

async fn list_exceptions(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(
        s,
        headers,
        Permission::Money,
        "exceptions.list",
        String::from("exceptions")
    );
    let open_only = match q.get("state").map(String::as_str) {
        None | Some("open") => true,
        Some("all") => false,
        Some(other) => {
            return ApiError::bad_request(format!("state={other:?}: open (the default) or all")).into_response();
        }
    };
    let tz = s.tz_offset_minutes;
    let list: Vec<Value> = s
        .ledger
        .exceptions(open_only)
        .iter()
        .map(|e| exception_json(e, tz))
        .collect();
    axum::Json(json!({ "exceptions": list })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    note: String,
}

async fn resolve_exception(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let target = format!("exception:{id}");
    let actor = auth!(s, headers, Permission::Money, "exception.resolve", target);
    let key = key!(headers, "exception.resolve", target, "", body);
    let tz = s.tz_offset_minutes;
    s.mutate(actor, "exception.resolve", target, key, move |l, call| async move {
        let id = parse_id(&id, "exception")?;
        let b: ResolveBody = json_body(&body)?;
        type Pair = (cardgate_domain::model::Exception, cardgate_domain::model::Exception);
        let describe = |r: &Pair| {
            (
                exception_json(&r.0, tz).to_string(),
                exception_json(&r.1, tz).to_string(),
            )
        };
        let answer = |r: &Pair| exception_json(&r.1, tz).to_string();
        let (_, after) = l
            .resolve_exception(&call.by(StatusCode::OK, &describe, &answer), id, &b.note)
            .await?;
        Ok(Done::ok(Value::Null, Value::Null, exception_json(&after, tz)))
    })
    .await
}

// ---- blacklist, roadmap groups --------------------------------------------------------------

async fn blacklist(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    auth!(
        s,
        headers,
        Permission::Blacklist,
        "blacklist.status",
        String::from("blacklist")
    );
    axum::Json(serde_json::to_value(s.ledger.blacklist_lag()).unwrap_or(Value::Null)).into_response()
}

async fn blacklist_changes(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(
        s,
        headers,
        Permission::Blacklist,
        "blacklist.changes",
        String::from("blacklist")
    );
    let since = match q.get("since") {
        Some(v) => tryr!(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request("since is not a number"))
        ),
        None => 0,
    };
    match s.ledger.blacklist().changes_since(since) {
        Some((added, removed, version)) => axum::Json(json!({
            "since": since,
            "version": version,
            "added": added.iter().map(u64::to_string).collect::<Vec<_>>(),
            "removed": removed.iter().map(u64::to_string).collect::<Vec<_>>(),
        }))
        .into_response(),
        None => ApiError::new(
            StatusCode::GONE,
            format!(
                "version {since} is outside the change log (from {}); fetch the full list from a terminal sync",
                s.ledger.blacklist().delta_floor()
            ),
        )
        .into_response(),
    }
}

// ---- backups and the integrity check ------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    /// An absolute directory on the gateway's machine; `backup.dir` when absent.
    dir: Option<String>,
}

fn backup_error(e: cardgate_ledger::backup::BackupError) -> ApiError {
    use cardgate_ledger::backup::BackupError as E;
    match e {
        E::NoKey => ApiError::unprocessable(e.to_string()),
        E::Io { .. } | E::Store(_) => {
            tracing::error!(error = %e, "backup failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

async fn create_backup(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(
        s,
        headers,
        Permission::Backups,
        "backup.create",
        String::from("backups")
    );
    let key = key!(headers, "backup.create", "backups", "", body);
    let durability = s.durability.clone();
    s.mutate(
        actor,
        "backup.create",
        "backups".into(),
        key,
        move |l, _call| async move {
            let b: BackupBody = if body.is_empty() {
                BackupBody::default()
            } else {
                json_body(&body)?
            };
            let named = b.dir.is_some();
            let dir = match (b.dir, &durability.backup_dir) {
                (Some(d), _) => std::path::PathBuf::from(d),
                (None, Some(d)) => d.clone(),
                (None, None) => {
                    return Err(ApiError::unprocessable(
                        "name a directory ({\"dir\": \"/path\"}) or set backup.dir in the configuration",
                    ));
                }
            };
            if !dir.is_absolute() {
                return Err(ApiError::unprocessable(format!(
                    "{} is not an absolute path on the gateway's machine",
                    dir.display()
                )));
            }
            // A directory named in the call must be there: a typo would otherwise become
            // a new tree no one looks in, or a 500 from deep in the copy. (`backup.dir` is
            // made on first use, as the scheduled backups do.)
            if named && !dir.is_dir() {
                return Err(ApiError::unprocessable(format!(
                    "{} is not a directory on the gateway's machine: make it (mounted, writable) first",
                    dir.display()
                )));
            }
            let _one = durability.backing_up.lock().await;
            let done = l.backup(&dir).await.map_err(backup_error)?;
            let m = &done.manifest;
            let summary = json!({
                "path": done.path.display().to_string(),
                "entry_id": m.entry_id,
                "entry_hash": m.entry_hash,
                "entries": m.entries,
                "records": m.records,
            });
            Ok(Done::ok(
                Value::Null,
                summary.clone(),
                json!({ "backup": summary, "manifest": serde_json::to_value(m).unwrap_or(Value::Null) }),
            ))
        },
    )
    .await
}

async fn run_check(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(
        s,
        headers,
        Permission::Integrity,
        "integrity.check",
        String::from("integrity")
    );
    let key = key!(headers, "integrity.check", "integrity", "", body);
    let durability = s.durability.clone();
    s.mutate(
        actor,
        "integrity.check",
        "integrity".into(),
        key,
        move |l, _call| async move {
            let report = durability
                .check(&l)
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let after = json!({ "ok": report.ok, "summary": report.summary(), "counts": report.counts });
            Ok(Done::ok(Value::Null, after, report.json()))
        },
    )
    .await
}

async fn last_check(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    auth!(
        s,
        headers,
        Permission::Integrity,
        "integrity.last",
        String::from("integrity")
    );
    let last = s.durability.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match last {
        Some(r) => axum::Json(r.json()).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no integrity check has run since the gateway started",
        )
        .into_response(),
    }
}
