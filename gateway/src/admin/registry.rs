//! The system admin's registry (merchants, door groups, terminals and their keys), the
//! director's key handout records, and the card desk's blank card stock.
//!
//! A terminal's key is in the answer that issued it (registration, rekey, an inventory
//! sheet) and nowhere else: not in its audit record, not in the answer kept under an
//! idempotency key (a retry is told the key was issued and is not shown again), not in
//! any log line. The answer carries it twice: `key` (hex) and `key_file`, the text an
//! installer's tool loads (docs/PROTOCOL.md, "Loading a terminal's key").

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cardgate_codec::CardNo;
use cardgate_domain::clock::format_local;
use cardgate_domain::model::{
    DoorGroup, InventoryStatus, KeyHandout, Merchant, MerchantKind, StockBatch, StockRemoval, TerminalKind,
    TerminalRecord,
};
use cardgate_domain::operator::Permission;
use cardgate_domain::rules::registry::{REKEY_OVERLAP_DEFAULT_MS, REKEY_OVERLAP_MAX_MS};
use cardgate_ledger::inventory::{INVENTORY_COLUMNS, InventoryReport, IssuedKey};
use cardgate_ledger::registry::{MerchantPatch, NewMerchant, NewTerminal, TerminalPatch, TerminalView};
use cardgate_ledger::stock::{CountResult, StockReport};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{csv_field, csv_response, json_body, only_params, parse_card, parse_flag, parse_id, wants_csv};
use super::{AdminState, ApiError, Done, idempotency_key};

/// The registry's routes with small bodies.
pub fn api() -> Router<AdminState> {
    Router::new()
        .route("/api/v1/merchants", get(list_merchants).post(create_merchant))
        .route("/api/v1/merchants/{id}", get(get_merchant).patch(change_merchant))
        .route("/api/v1/door-groups", get(list_door_groups).post(create_door_group))
        .route("/api/v1/terminals", get(inventory).post(register_terminal))
        .route("/api/v1/terminals/{id}", get(get_terminal).patch(change_terminal))
        .route("/api/v1/terminals/{id}/enable", post(enable_terminal))
        .route("/api/v1/terminals/{id}/disable", post(disable_terminal))
        .route("/api/v1/terminals/{id}/retire", post(retire_terminal))
        .route("/api/v1/terminals/{id}/rekey", post(rekey_terminal))
        .route("/api/v1/key-handouts", get(key_handouts))
        .route("/api/v1/stock", get(stock))
        .route("/api/v1/stock/batches", post(receive_stock))
}

/// The registry's routes that take a whole file or a cupboard's card numbers.
pub fn bulk() -> Router<AdminState> {
    Router::new()
        .route("/api/v1/terminals/import", post(import_inventory))
        .route("/api/v1/stock/spoiled", post(spoil_stock))
        .route("/api/v1/stock/returned", post(return_stock))
        .route("/api/v1/stock/counts", get(stock_counts).post(count_stock))
}

// ---- JSON -------------------------------------------------------------------------------

fn merchant_json(m: &Merchant) -> Value {
    json!({
        "id": m.id,
        "name": m.name,
        "kind": m.kind.as_str(),
        "place": m.place,
        "contact": m.contact,
        "fee_rate_bp": m.fee_rate_bp,
        "enabled": m.enabled,
        "created_ms": m.created_ms,
    })
}

fn door_group_json(g: &DoorGroup) -> Value {
    json!({ "id": g.id, "name": g.name, "place": g.place, "created_ms": g.created_ms })
}

/// A terminal's record without its key.
fn record_json(r: &TerminalRecord) -> Value {
    json!({
        "id": r.id,
        "kind": r.kind.as_str(),
        "merchant_id": r.merchant_id,
        "door_group": r.door_group,
        "name": r.name,
        "place": r.place,
        "serial": r.serial,
        "responsible": r.responsible,
        "installed": r.installed,
        "status": r.status.as_str(),
        "enabled": r.enabled,
        "key_generation": r.key_generation,
        "previous_key_until_ms": r.previous_until_ms,
        "updated_ms": r.updated_ms,
    })
}

fn handout_json(h: &KeyHandout, tz: i32) -> Value {
    json!({
        "terminal": h.terminal,
        "key_generation": h.key_generation,
        "issued_by": h.issued_by.name,
        "issued_by_id": h.issued_by.operator_id,
        "handed_to": h.handed_to,
        "time_ms": h.time_ms,
        "time": format_local(h.time_ms, tz),
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The installer's key file (docs/PROTOCOL.md, "Loading a terminal's key").
fn key_file(terminal: u64, generation: u32, secret: &[u8; 32]) -> String {
    format!(
        "# cardgate terminal key. Load it into terminal {terminal}, then destroy this file:\n\
         # the gateway keeps the key only sealed and cannot show it again.\n\
         terminal_id = {terminal}\n\
         key_generation = {generation}\n\
         secret = {}\n",
        hex(secret)
    )
}

/// The answer that shows a key, the one time it is shown.
fn issued_json(record: &TerminalRecord, secret: &[u8; 32]) -> Value {
    json!({
        "terminal": record_json(record),
        "key": hex(secret),
        "key_file": key_file(record.id, record.key_generation, secret),
    })
}

/// What a retry of a key-issuing call gets instead.
fn issued_again_json(record: &TerminalRecord) -> Value {
    json!({
        "terminal": record_json(record),
        "key": null,
        "key_file": null,
        "note": "the key was issued by the first call and is not shown again; rekey the terminal for a new one",
    })
}

fn pair_audit(r: &(TerminalRecord, TerminalRecord)) -> (String, String) {
    (record_json(&r.0).to_string(), record_json(&r.1).to_string())
}

fn pair_answer(r: &(TerminalRecord, TerminalRecord)) -> String {
    json!({ "terminal": record_json(&r.1) }).to_string()
}

/// `"24h"`, `"90m"`, `"30s"`, `"2d"`, or a number of seconds.
fn parse_overlap(s: &str) -> Result<i64, ApiError> {
    let s = s.trim();
    let (n, unit_ms) = match s.char_indices().last() {
        Some((i, 'd')) => (&s[..i], 86_400_000),
        Some((i, 'h')) => (&s[..i], 3_600_000),
        Some((i, 'm')) => (&s[..i], 60_000),
        Some((i, 's')) => (&s[..i], 1_000),
        _ => (s, 1_000),
    };
    let n: i64 = n
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_request(format!("overlap {s:?} is not a duration such as 24h, 90m or 30s")))?;
    let ms = n
        .checked_mul(unit_ms)
        .filter(|ms| (0..=REKEY_OVERLAP_MAX_MS).contains(ms));
    ms.ok_or_else(|| {
        ApiError::unprocessable(format!(
            "overlap {s:?} is outside 0s..={}h",
            REKEY_OVERLAP_MAX_MS / 3_600_000
        ))
    })
}

// ---- merchants --------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MerchantBody {
    name: String,
    kind: String,
    #[serde(default)]
    place: String,
    #[serde(default)]
    contact: String,
    #[serde(default)]
    fee_rate_bp: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MerchantPatchBody {
    name: Option<String>,
    kind: Option<String>,
    place: Option<String>,
    contact: Option<String>,
    fee_rate_bp: Option<u32>,
    enabled: Option<bool>,
}

fn merchant_kind(s: &str) -> Result<MerchantKind, ApiError> {
    MerchantKind::parse(s).ok_or_else(|| {
        let all: Vec<&str> = MerchantKind::ALL.iter().map(|k| k.as_str()).collect();
        ApiError::unprocessable(format!("merchant kind {s:?} is not one of {}", all.join(", ")))
    })
}

/// A merchant with the ids of its terminals.
fn merchant_with_terminals(m: &Merchant, terminals: &[TerminalView]) -> Value {
    let mut v = merchant_json(m);
    v["terminals"] = json!(
        terminals
            .iter()
            .filter(|t| t.merchant_id == m.id)
            .map(|t| t.id)
            .collect::<Vec<_>>()
    );
    v
}

async fn list_merchants(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    auth!(
        s,
        headers,
        Permission::Terminals,
        "merchants.list",
        String::from("merchants")
    );
    let terminals = s.ledger.terminal_inventory();
    let list: Vec<Value> = s
        .ledger
        .merchants()
        .iter()
        .map(|m| merchant_with_terminals(m, &terminals))
        .collect();
    axum::Json(json!({ "merchants": list })).into_response()
}

async fn get_merchant(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let target = format!("merchant:{id}");
    auth!(s, headers, Permission::Terminals, "merchant.get", target);
    let id = match parse_id(&id, "merchant") {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    match s.ledger.merchant(id) {
        Some(m) => axum::Json(merchant_with_terminals(&m, &s.ledger.terminal_inventory())).into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("merchant {id} not found")).into_response(),
    }
}

async fn create_merchant(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(
        s,
        headers,
        Permission::Terminals,
        "merchant.create",
        String::from("merchants")
    );
    let key = key!(headers, "merchant.create", "merchants", "", body);
    s.mutate(
        actor,
        "merchant.create",
        "merchants".into(),
        key,
        move |l, call| async move {
            let b: MerchantBody = json_body(&body)?;
            let m = NewMerchant {
                name: b.name,
                kind: merchant_kind(&b.kind)?,
                place: b.place,
                contact: b.contact,
                fee_rate_bp: b.fee_rate_bp,
            };
            let describe = |m: &Merchant| (String::new(), merchant_json(m).to_string());
            let answer = |m: &Merchant| json!({ "merchant": merchant_json(m) }).to_string();
            let m = l
                .create_merchant(&call.by(StatusCode::CREATED, &describe, &answer), m)
                .await?;
            Ok(Done {
                status: StatusCode::CREATED,
                before: Value::Null,
                after: Value::Null,
                body: json!({ "merchant": merchant_json(&m) }),
            })
        },
    )
    .await
}

async fn change_merchant(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let target = format!("merchant:{id}");
    let actor = auth!(s, headers, Permission::Terminals, "merchant.change", target);
    let key = key!(headers, "merchant.change", target, "", body);
    s.mutate(actor, "merchant.change", target, key, move |l, call| async move {
        let id = parse_id(&id, "merchant")?;
        let b: MerchantPatchBody = json_body(&body)?;
        let patch = MerchantPatch {
            name: b.name,
            kind: b.kind.as_deref().map(merchant_kind).transpose()?,
            place: b.place,
            contact: b.contact,
            fee_rate_bp: b.fee_rate_bp,
            enabled: b.enabled,
        };
        let describe = |r: &(Merchant, Merchant)| (merchant_json(&r.0).to_string(), merchant_json(&r.1).to_string());
        let answer = |r: &(Merchant, Merchant)| json!({ "merchant": merchant_json(&r.1) }).to_string();
        let (_, after) = l
            .change_merchant(&call.by(StatusCode::OK, &describe, &answer), id, patch)
            .await?;
        Ok(Done::ok(
            Value::Null,
            Value::Null,
            json!({ "merchant": merchant_json(&after) }),
        ))
    })
    .await
}

// ---- door groups ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DoorGroupBody {
    name: String,
    #[serde(default)]
    place: String,
}

/// The door admin reads the groups too: permissions and doors name them.
async fn list_door_groups(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(e) = s
        .auth_any(&headers, &READ_DOORS, "door_groups.list", "door_groups")
        .await
    {
        return e.into_response();
    }
    if let Err(e) = only_params(&q, &[]) {
        return e.into_response();
    }
    let list: Vec<Value> = s.ledger.door_groups().iter().map(door_group_json).collect();
    axum::Json(json!({ "door_groups": list })).into_response()
}

async fn create_door_group(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(
        s,
        headers,
        Permission::Terminals,
        "door_group.create",
        String::from("door_groups")
    );
    let key = key!(headers, "door_group.create", "door_groups", "", body);
    s.mutate(
        actor,
        "door_group.create",
        "door_groups".into(),
        key,
        move |l, call| async move {
            let b: DoorGroupBody = json_body(&body)?;
            let describe = |g: &DoorGroup| (String::new(), door_group_json(g).to_string());
            let answer = |g: &DoorGroup| json!({ "door_group": door_group_json(g) }).to_string();
            let g = l
                .create_door_group(&call.by(StatusCode::CREATED, &describe, &answer), &b.name, &b.place)
                .await?;
            Ok(Done {
                status: StatusCode::CREATED,
                before: Value::Null,
                after: Value::Null,
                body: json!({ "door_group": door_group_json(&g) }),
            })
        },
    )
    .await
}

// ---- terminals --------------------------------------------------------------------------

/// Who may read door groups and terminals: the registry's keepers, and the door admin
/// (its doors name a group and a controller), who sees only door controllers and
/// attendance clocks.
const READ_DOORS: [Permission; 2] = [Permission::Terminals, Permission::Doors];

/// Whether a reader let in by `group` sees terminal `t`: the door admin sees only the
/// door controllers and attendance clocks, never the POS terminals or kiosks.
fn sees(group: Permission, t: &TerminalView) -> bool {
    group == Permission::Terminals
        || t.kind == TerminalKind::Door.as_str()
        || t.kind == TerminalKind::Attendance.as_str()
}

/// The inventory report: every terminal, filtered by `kind`, `place` (a part of it),
/// `merchant`, `door_group`, `status`, `enabled` and `connected`; JSON or CSV.
async fn inventory(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let group = match s.auth_any(&headers, &READ_DOORS, "terminals.list", "terminals").await {
        Ok(a) => a.group,
        Err(e) => return e.into_response(),
    };
    let csv = match wants_csv(&q, &headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let filter = match InventoryFilter::from_query(&q) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let list: Vec<TerminalView> = s
        .ledger
        .terminal_inventory()
        .into_iter()
        .filter(|t| sees(group, t) && filter.admits(t))
        .collect();
    if csv {
        return csv_response(inventory_csv(&list, s.tz_offset_minutes));
    }
    let mut by_status: HashMap<&str, usize> = HashMap::new();
    let mut by_kind: HashMap<&str, usize> = HashMap::new();
    for t in &list {
        *by_status.entry(t.status).or_default() += 1;
        *by_kind.entry(t.kind).or_default() += 1;
    }
    axum::Json(json!({
        "count": list.len(),
        "by_status": by_status,
        "by_kind": by_kind,
        "terminals": list,
    }))
    .into_response()
}

#[derive(Default)]
struct InventoryFilter {
    kind: Option<TerminalKind>,
    place: Option<String>,
    merchant: Option<u64>,
    door_group: Option<u64>,
    status: Option<InventoryStatus>,
    enabled: Option<bool>,
    connected: Option<bool>,
    /// Door controllers whose cache is (or is not) behind their group's.
    behind: Option<bool>,
}

impl InventoryFilter {
    fn from_query(q: &HashMap<String, String>) -> Result<InventoryFilter, ApiError> {
        let mut f = InventoryFilter::default();
        for (k, v) in q {
            match k.as_str() {
                "format" => {}
                "kind" => {
                    f.kind =
                        Some(TerminalKind::parse(v).ok_or_else(|| {
                            ApiError::bad_request(format!("kind={v:?}: pos, door, attendance or kiosk"))
                        })?)
                }
                "place" => f.place = Some(v.clone()),
                "merchant" => f.merchant = Some(parse_id(v, "merchant")?),
                "door_group" => f.door_group = Some(parse_id(v, "door group")?),
                "status" => {
                    f.status = Some(InventoryStatus::parse(v).ok_or_else(|| {
                        ApiError::bad_request(format!("status={v:?}: in_stock, installed, under_repair or retired"))
                    })?)
                }
                "enabled" | "connected" | "behind" => {
                    let b = parse_flag(q, k)?.unwrap_or_default();
                    match k.as_str() {
                        "enabled" => f.enabled = Some(b),
                        "connected" => f.connected = Some(b),
                        _ => f.behind = Some(b),
                    }
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown filter {other:?}: kind, place, merchant, door_group, status, enabled, connected, behind, format"
                    )));
                }
            }
        }
        Ok(f)
    }

    fn admits(&self, t: &TerminalView) -> bool {
        self.kind.is_none_or(|k| k.as_str() == t.kind)
            && self.place.as_ref().is_none_or(|p| t.place.contains(p.as_str()))
            && self.merchant.is_none_or(|m| m == t.merchant_id)
            && self.door_group.is_none_or(|g| g == t.door_group)
            && self.status.is_none_or(|s| s.as_str() == t.status)
            && self.enabled.is_none_or(|e| e == t.enabled)
            && self.connected.is_none_or(|c| c == t.connected)
            && self.behind.is_none_or(|b| t.door_cache.is_some_and(|d| d.behind == b))
    }
}

fn inventory_csv(list: &[TerminalView], tz: i32) -> String {
    let mut out = String::from(
        "id,kind,merchant,door_group,name,place,serial,responsible,installed,status,enabled,key_generation,\
         connected,last_seen,blacklist_version,door_cache_acknowledged,door_cache_current,door_cache_behind,drift_ms\n",
    );
    for t in list {
        let last_seen = if t.last_seen_ms > 0 {
            format_local(t.last_seen_ms, tz)
        } else {
            String::new()
        };
        let fields = [
            t.id.to_string(),
            t.kind.to_string(),
            t.merchant_id.to_string(),
            t.door_group.to_string(),
            csv_field(&t.name),
            csv_field(&t.place),
            csv_field(&t.serial),
            csv_field(&t.responsible),
            t.installed.clone(),
            t.status.to_string(),
            t.enabled.to_string(),
            t.key_generation.to_string(),
            t.connected.to_string(),
            last_seen,
            t.blacklist_version.to_string(),
            t.door_cache.map_or_else(String::new, |c| c.acknowledged.to_string()),
            t.door_cache.map_or_else(String::new, |c| c.current.to_string()),
            t.door_cache.map_or_else(String::new, |c| c.behind.to_string()),
            t.drift_ms.to_string(),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

async fn get_terminal(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let target = format!("terminal:{id}");
    let group = match s.auth_any(&headers, &READ_DOORS, "terminal.get", &target).await {
        Ok(a) => a.group,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = only_params(&q, &[]) {
        return e.into_response();
    }
    let id = match parse_id(&id, "terminal") {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    // A terminal the reader may not see is as unknown to it as one that does not exist.
    match s
        .ledger
        .terminal_inventory()
        .into_iter()
        .find(|t| t.id == id && sees(group, t))
    {
        Some(t) => axum::Json(json!({ "terminal": t })).into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("terminal {id} not found")).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TerminalBody {
    id: u64,
    kind: String,
    #[serde(default)]
    merchant_id: u64,
    #[serde(default)]
    door_group: u64,
    name: String,
    #[serde(default)]
    place: String,
    serial: String,
    #[serde(default)]
    responsible: String,
    #[serde(default)]
    installed: String,
    status: Option<String>,
    /// The installer who receives the key.
    handed_to: String,
}

fn terminal_kind(s: &str) -> Result<TerminalKind, ApiError> {
    TerminalKind::parse(s)
        .ok_or_else(|| ApiError::unprocessable(format!("kind {s:?} is not one of pos, door, attendance, kiosk")))
}

fn inventory_status(s: &str) -> Result<InventoryStatus, ApiError> {
    InventoryStatus::parse(s).ok_or_else(|| {
        ApiError::unprocessable(format!(
            "status {s:?} is not one of in_stock, installed, under_repair, retired"
        ))
    })
}

async fn register_terminal(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(
        s,
        headers,
        Permission::Terminals,
        "terminal.register",
        String::from("terminals")
    );
    let key = key!(headers, "terminal.register", "terminals", "", body);
    s.mutate(
        actor,
        "terminal.register",
        "terminals".into(),
        key,
        move |l, call| async move {
            let b: TerminalBody = json_body(&body)?;
            let t = NewTerminal {
                id: b.id,
                kind: terminal_kind(&b.kind)?,
                merchant_id: b.merchant_id,
                door_group: b.door_group,
                name: b.name,
                place: b.place,
                serial: b.serial,
                responsible: b.responsible,
                installed: b.installed,
                status: b
                    .status
                    .as_deref()
                    .map(inventory_status)
                    .transpose()?
                    .unwrap_or(InventoryStatus::Installed),
                handed_to: b.handed_to,
            };
            // The key goes to this caller only: the audit record and a retry's answer show
            // the record without it.
            let describe = |r: &TerminalRecord| (String::new(), record_json(r).to_string());
            let answer = |r: &TerminalRecord| issued_again_json(r).to_string();
            let issued = l
                .register_terminal_new(&call.by(StatusCode::CREATED, &describe, &answer), t)
                .await?;
            Ok(Done {
                status: StatusCode::CREATED,
                before: Value::Null,
                after: Value::Null,
                body: issued_json(&issued.terminal, &issued.secret),
            })
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TerminalPatchBody {
    merchant_id: Option<u64>,
    door_group: Option<u64>,
    name: Option<String>,
    place: Option<String>,
    serial: Option<String>,
    responsible: Option<String>,
    installed: Option<String>,
    status: Option<String>,
    #[serde(default)]
    retire_with_missing: bool,
}

async fn change_terminal(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let target = format!("terminal:{id}");
    let actor = auth!(s, headers, Permission::Terminals, "terminal.change", target);
    let key = key!(headers, "terminal.change", target, "", body);
    s.mutate(actor, "terminal.change", target, key, move |l, call| async move {
        let id = parse_id(&id, "terminal")?;
        let b: TerminalPatchBody = json_body(&body)?;
        let patch = TerminalPatch {
            merchant_id: b.merchant_id,
            door_group: b.door_group,
            name: b.name,
            place: b.place,
            serial: b.serial,
            responsible: b.responsible,
            installed: b.installed,
            status: b.status.as_deref().map(inventory_status).transpose()?,
            retire_with_missing: b.retire_with_missing,
        };
        let (_, after) = l
            .change_terminal(&call.by(StatusCode::OK, &pair_audit, &pair_answer), id, patch)
            .await?;
        Ok(Done::ok(
            Value::Null,
            Value::Null,
            json!({ "terminal": record_json(&after) }),
        ))
    })
    .await
}

async fn set_enabled(s: AdminState, headers: HeaderMap, id: String, enabled: bool) -> Response {
    let target = format!("terminal:{id}");
    let action = if enabled { "terminal.enable" } else { "terminal.disable" };
    let actor = auth!(s, headers, Permission::Terminals, action, target);
    let key = key!(headers, action, target, "", Bytes::new());
    s.mutate(actor, action, target, key, move |l, call| async move {
        let id = parse_id(&id, "terminal")?;
        let (_, after) = l
            .set_terminal_enabled(&call.by(StatusCode::OK, &pair_audit, &pair_answer), id, enabled)
            .await?;
        Ok(Done::ok(
            Value::Null,
            Value::Null,
            json!({ "terminal": record_json(&after) }),
        ))
    })
    .await
}

async fn enable_terminal(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    set_enabled(s, headers, id, true).await
}

async fn disable_terminal(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    set_enabled(s, headers, id, false).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetireBody {
    /// Retire even though sequence numbers never arrived (offline sales it may hold).
    #[serde(default)]
    retire_with_missing: bool,
}

async fn retire_terminal(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let target = format!("terminal:{id}");
    let actor = auth!(s, headers, Permission::Terminals, "terminal.retire", target);
    let key = key!(headers, "terminal.retire", target, "", body);
    s.mutate(actor, "terminal.retire", target, key, move |l, call| async move {
        let id = parse_id(&id, "terminal")?;
        let b: RetireBody = if body.is_empty() {
            RetireBody::default()
        } else {
            json_body(&body)?
        };
        let patch = TerminalPatch {
            status: Some(InventoryStatus::Retired),
            retire_with_missing: b.retire_with_missing,
            ..TerminalPatch::default()
        };
        let (_, after) = l
            .change_terminal(&call.by(StatusCode::OK, &pair_audit, &pair_answer), id, patch)
            .await?;
        Ok(Done::ok(
            Value::Null,
            Value::Null,
            json!({ "terminal": record_json(&after) }),
        ))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RekeyBody {
    /// How long the old key still signs on: `24h` (the default), `90m`, `30s`, `0s`.
    overlap: Option<String>,
    handed_to: String,
}

async fn rekey_terminal(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let target = format!("terminal:{id}");
    let actor = auth!(s, headers, Permission::Terminals, "terminal.rekey", target);
    let key = key!(headers, "terminal.rekey", target, "", body);
    s.mutate(actor, "terminal.rekey", target, key, move |l, call| async move {
        let id = parse_id(&id, "terminal")?;
        let b: RekeyBody = json_body(&body)?;
        let overlap_ms = match &b.overlap {
            Some(o) => parse_overlap(o)?,
            None => REKEY_OVERLAP_DEFAULT_MS,
        };
        let answer = |r: &(TerminalRecord, TerminalRecord)| issued_again_json(&r.1).to_string();
        let (_, issued) = l
            .rekey_terminal(
                &call.by(StatusCode::OK, &pair_audit, &answer),
                id,
                overlap_ms,
                &b.handed_to,
            )
            .await?;
        Ok(Done::ok(
            Value::Null,
            Value::Null,
            issued_json(&issued.terminal, &issued.secret),
        ))
    })
    .await
}

/// `POST /api/v1/terminals/import?dry_run=true&charset=gb18030`: an inventory sheet.
async fn import_inventory(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let actor = auth!(
        s,
        headers,
        Permission::Terminals,
        "terminals.import",
        String::from("terminals")
    );
    // A misspelt `dry_run` ignored would import for real.
    tryr!(only_params(&q, &["dry_run", "charset"]));
    let dry_run = tryr!(parse_flag(&q, "dry_run")).unwrap_or(false);
    let charset = q.get("charset").cloned();
    let extra = format!("dry_run={dry_run} charset={}", charset.as_deref().unwrap_or(""));
    let key = key!(headers, "terminals.import", "terminals", &extra, body);
    s.mutate(
        actor,
        "terminals.import",
        "terminals".into(),
        key,
        move |l, call| async move {
            let describe = |r: &InventoryReport| (String::new(), inventory_summary(r).to_string());
            let answer = |r: &InventoryReport| {
                let mut body = inventory_body(r, dry_run, &[]);
                body["keys"] = Value::Null;
                body["note"] = json!("the keys were issued by the first call and are not shown again");
                body.to_string()
            };
            let (report, keys) = l
                .import_inventory(
                    &call.by(StatusCode::OK, &describe, &answer),
                    &body,
                    charset.as_deref(),
                    dry_run,
                )
                .await?;
            let body = inventory_body(&report, dry_run, &keys);
            if report.error_count > 0 {
                return Ok(Done {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    before: Value::Null,
                    after: json!({ "applied": false, "error_count": report.error_count }),
                    body,
                });
            }
            Ok(Done::ok(Value::Null, inventory_summary(&report), body))
        },
    )
    .await
}

fn inventory_body(r: &InventoryReport, dry_run: bool, keys: &[IssuedKey]) -> Value {
    let mut body = serde_json::to_value(r).unwrap_or(Value::Null);
    body["dry_run"] = json!(dry_run);
    body["columns"] = json!(INVENTORY_COLUMNS);
    body["keys"] = json!(
        keys.iter()
            .map(|k| json!({
                "terminal": k.terminal,
                "key_generation": k.key_generation,
                "key": hex(&k.secret),
                "key_file": key_file(k.terminal, k.key_generation, &k.secret),
            }))
            .collect::<Vec<_>>()
    );
    body
}

fn inventory_summary(r: &InventoryReport) -> Value {
    json!({
        "rows": r.rows, "added": r.added, "updated": r.updated, "unchanged": r.unchanged,
        "applied": r.applied, "registered": r.registered,
    })
}

/// The director's record of who received which terminal's key, when and from whom;
/// `terminal=` narrows it to one.
async fn key_handouts(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(
        s,
        headers,
        Permission::KeyRecords,
        "key_handouts.list",
        String::from("key_handouts")
    );
    let terminal = match q.get("terminal").map(|t| parse_id(t, "terminal")).transpose() {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let list: Vec<Value> = s
        .ledger
        .key_handouts()
        .iter()
        .filter(|h| terminal.is_none_or(|t| t == h.terminal))
        .map(|h| handout_json(h, s.tz_offset_minutes))
        .collect();
    axum::Json(json!({ "key_handouts": list })).into_response()
}

// ---- card stock -------------------------------------------------------------------------

fn batch_json(b: &StockBatch) -> Value {
    json!({
        "id": b.id,
        "first": b.first.0.to_string(),
        "last": b.last.0.to_string(),
        "cards": b.size(),
        "received": b.received,
        "supplier": b.supplier,
        "received_by": b.received_by.name,
        "time_ms": b.time_ms,
    })
}

async fn stock(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    auth!(s, headers, Permission::Stock, "stock.report", String::from("stock"));
    let batches: Vec<Value> = s.ledger.stock_batches().iter().map(batch_json).collect();
    axum::Json(json!({
        "report": s.ledger.stock_report(),
        "batches": batches,
        "counts": s.ledger.stock_counts(),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    first: String,
    last: String,
    /// The local date received, `YYYY-MM-DD`.
    received: String,
    supplier: String,
}

async fn receive_stock(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(s, headers, Permission::Stock, "stock.receive", String::from("stock"));
    let key = key!(headers, "stock.receive", "stock", "", body);
    s.mutate(actor, "stock.receive", "stock".into(), key, move |l, call| async move {
        let b: BatchBody = json_body(&body)?;
        let (first, last) = (parse_card(&b.first)?, parse_card(&b.last)?);
        let describe = |b: &StockBatch| (String::new(), batch_json(b).to_string());
        let answer = |b: &StockBatch| json!({ "batch": batch_json(b) }).to_string();
        let batch = l
            .receive_stock(
                &call.by(StatusCode::CREATED, &describe, &answer),
                first,
                last,
                &b.received,
                &b.supplier,
            )
            .await?;
        Ok(Done {
            status: StatusCode::CREATED,
            before: Value::Null,
            after: Value::Null,
            body: json!({ "batch": batch_json(&batch) }),
        })
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemovalBody {
    cards: Vec<String>,
    note: String,
}

async fn remove_stock(s: AdminState, headers: HeaderMap, body: Bytes, how: StockRemoval) -> Response {
    let action = match how {
        StockRemoval::Spoiled => "stock.spoiled",
        StockRemoval::Returned => "stock.returned",
    };
    let actor = auth!(s, headers, Permission::Stock, action, String::from("stock"));
    let key = key!(headers, action, "stock", "", body);
    s.mutate(actor, action, "stock".into(), key, move |l, call| async move {
        let b: RemovalBody = json_body(&body)?;
        let cards = b
            .cards
            .iter()
            .map(|c| parse_card(c))
            .collect::<Result<Vec<CardNo>, _>>()?;
        let describe = |r: &StockReport| (String::new(), json!(r).to_string());
        let answer = |r: &StockReport| json!({ "report": r }).to_string();
        let report = l
            .remove_stock(&call.by(StatusCode::OK, &describe, &answer), how, &cards, &b.note)
            .await?;
        Ok(Done::ok(Value::Null, Value::Null, json!({ "report": report })))
    })
    .await
}

async fn spoil_stock(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    remove_stock(s, headers, body, StockRemoval::Spoiled).await
}

async fn return_stock(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    remove_stock(s, headers, body, StockRemoval::Returned).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountBody {
    /// The local date of the count, `YYYY-MM-DD`.
    date: String,
    counted: u64,
    /// The card numbers counted, when the desk lists them: the differences are then
    /// named card by card.
    #[serde(default)]
    cards: Vec<String>,
}

async fn count_stock(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let actor = auth!(s, headers, Permission::Stock, "stock.count", String::from("stock"));
    let key = key!(headers, "stock.count", "stock", "", body);
    s.mutate(actor, "stock.count", "stock".into(), key, move |l, call| async move {
        let b: CountBody = json_body(&body)?;
        let cards = b
            .cards
            .iter()
            .map(|c| parse_card(c))
            .collect::<Result<Vec<CardNo>, _>>()?;
        let describe = |r: &CountResult| {
            (
                String::new(),
                json!({
                    "count": r.count, "discrepancy": r.discrepancy,
                    "missing": r.missing.len(), "unexpected": r.unexpected.len(),
                })
                .to_string(),
            )
        };
        let answer = |r: &CountResult| json!(r).to_string();
        let result = l
            .count_stock(
                &call.by(StatusCode::CREATED, &describe, &answer),
                &b.date,
                b.counted,
                &cards,
            )
            .await?;
        Ok(Done {
            status: StatusCode::CREATED,
            before: Value::Null,
            after: Value::Null,
            body: json!(result),
        })
    })
    .await
}

async fn stock_counts(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    auth!(s, headers, Permission::Stock, "stock.counts", String::from("stock"));
    axum::Json(json!({ "counts": s.ledger.stock_counts() })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_read_as_an_operator_writes_them() {
        assert_eq!(parse_overlap("24h").ok(), Some(86_400_000));
        assert_eq!(parse_overlap("90m").ok(), Some(5_400_000));
        assert_eq!(parse_overlap("3s").ok(), Some(3_000));
        assert_eq!(parse_overlap("0s").ok(), Some(0));
        assert_eq!(parse_overlap("120").ok(), Some(120_000));
        assert_eq!(parse_overlap("7d").ok(), Some(REKEY_OVERLAP_MAX_MS));
        assert_eq!(
            parse_overlap("8d").map_err(|e| e.status).err(),
            Some(StatusCode::UNPROCESSABLE_ENTITY)
        );
        assert_eq!(
            parse_overlap("-1h").map_err(|e| e.status).err(),
            Some(StatusCode::UNPROCESSABLE_ENTITY)
        );
        assert_eq!(
            parse_overlap("soon").map_err(|e| e.status).err(),
            Some(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn a_key_file_names_its_terminal_and_generation() {
        let f = key_file(42, 3, &[0xab; 32]);
        assert!(f.contains("terminal_id = 42\n"));
        assert!(f.contains("key_generation = 3\n"));
        assert!(f.contains(&format!("secret = {}\n", "ab".repeat(32))));
    }
}
