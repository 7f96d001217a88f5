//! The door admin's and the attendance admin's API: doors, weekly schedules, the holiday
//! calendar, permissions (grant, change, revoke), anti-passback per door group
//! (permission `doors`, role `door_admin`); security's access-event search and CSV
//! export (`doors`, audited: every search is an audit record naming whom it looked at);
//! the daily attendance sheet (`attendance`, role `attendance_admin`).
//!
//! Dates are local `YYYY-MM-DD` (the business time zone); window times `HH:MM`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use cardgate_domain::access::{
    AntiPassback, Door, DoorDirection, GroupAccess, HolidayRule, Holidays, Permission, Schedule, Subject, Window,
};
use cardgate_domain::clock::{business_day, civil_from_days, format_local, parse_local_date};
use cardgate_domain::model::{AccountKind, AuditRecord};
use cardgate_domain::operator::Permission as ApiPermission;
use cardgate_domain::rules::access::{fmt_window, window};
use cardgate_ledger::doors::{AccessQuery, DoorInput, PermissionChange, PermissionInput, ScheduleInput, SheetOf};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{
    csv_field, csv_search_response, json_body, only_params, parse_card, parse_flag, parse_id, wants_csv,
};
use super::{AdminState, ApiError, Done, idempotency_key};

pub fn api() -> Router<AdminState> {
    Router::new()
        .route("/api/v1/doors", get(list_doors).post(create_door))
        .route("/api/v1/doors/{id}", get(get_door).put(replace_door))
        .route("/api/v1/door-schedules", get(list_schedules).post(create_schedule))
        .route("/api/v1/door-schedules/{id}", put(replace_schedule))
        .route("/api/v1/holidays", get(get_holidays).put(put_holidays))
        .route("/api/v1/door-permissions", get(list_permissions).post(grant))
        .route("/api/v1/door-permissions/{id}", get(get_permission).put(change))
        .route("/api/v1/door-permissions/{id}/revoke", post(revoke))
        .route(
            "/api/v1/door-groups/{id}/access",
            get(get_group_access).put(put_group_access),
        )
        .route("/api/v1/access-events", get(access_events))
        .route("/api/v1/attendance", get(attendance))
}

/// A local date as a business day number.
fn parse_day(s: &str, what: &str) -> Result<i32, ApiError> {
    parse_local_date(s, 0)
        .map(|ms| (ms / 86_400_000) as i32)
        .ok_or_else(|| ApiError::bad_request(format!("{what} {s:?} is not a date (YYYY-MM-DD)")))
}

/// A date in a query, as every search and sheet of this section takes it: a local
/// `YYYY-MM-DD` (`Day`, its start in unix ms) or unix ms (`Ms`).
enum QueryDate {
    Day(i64),
    Ms(i64),
}

fn query_date(q: &HashMap<String, String>, key: &str, tz: i32) -> Result<Option<QueryDate>, ApiError> {
    let Some(v) = q.get(key) else { return Ok(None) };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(QueryDate::Ms(ms)));
    }
    parse_local_date(v, tz)
        .map(|start| Some(QueryDate::Day(start)))
        .ok_or_else(|| ApiError::bad_request(format!("{key}={v:?} is neither YYYY-MM-DD nor unix ms")))
}

/// A name of this section (a schedule's, a door's): spaces around it would make two
/// names that read alike, so they are refused rather than trimmed unseen.
fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if name.trim() != name {
        return Err(ApiError::unprocessable(format!(
            "{what} {name:?} begins or ends with a space: send it without"
        )));
    }
    Ok(())
}

/// Refuses a door group that does not exist (404), as every unknown id of this section.
fn known_group(s: &AdminState, group: u64) -> Result<(), ApiError> {
    if s.ledger.door_groups().iter().any(|g| g.id == group) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("door group {group} not found"),
        ))
    }
}

fn fmt_day(day: i32) -> String {
    let (y, m, d) = civil_from_days(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

fn parse_hhmm(s: &str) -> Result<u16, ApiError> {
    let bad = || ApiError::bad_request(format!("{s:?} is not a time (HH:MM, 00:00 to 24:00)"));
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) || s.len() != 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn door_json(d: &Door) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "place": d.place,
        "door_group": d.group,
        "controller": d.controller,
        "direction": d.direction.as_str(),
        "enabled": d.enabled,
        "updated_ms": d.updated_ms,
    })
}

fn window_json(w: &Window) -> Value {
    json!({
        "weekday": w.weekday + 1,
        "start": fmt_window(w)[..5],
        "end": fmt_window(w)[6..],
        "overnight": w.crosses_midnight() && !(w.start_min == 0 && w.end_min == 0),
    })
}

fn schedule_json(s: &Schedule) -> Value {
    let (rule, windows) = match &s.holidays {
        HolidayRule::Windows(ws) => ("windows", ws.iter().map(window_json).collect()),
        r => (r.as_str(), Vec::new()),
    };
    json!({
        "id": s.id,
        "name": s.name,
        "windows": s.windows.iter().map(window_json).collect::<Vec<_>>(),
        "holidays": rule,
        "holiday_windows": windows,
        "updated_ms": s.updated_ms,
    })
}

fn subject_json(s: &Subject) -> Value {
    match s {
        Subject::Person(a) => json!({ "account": a }),
        Subject::Department(d) => json!({ "department": d }),
        Subject::Kind(k) => json!({ "account_kind": k.as_str() }),
    }
}

fn permission_json(p: &Permission) -> Value {
    json!({
        "id": p.id,
        "subject": subject_json(&p.subject),
        "door_group": p.door_group,
        "schedule": p.schedule,
        "valid_from": fmt_day(p.valid_from_day),
        "valid_to": p.valid_to_day.map(fmt_day),
        "revoked": p.revoked,
        "note": p.note,
        "updated_ms": p.updated_ms,
    })
}

/// `cache_version` is what the group's controllers hold once synced (the composite of
/// PROTOCOL.md 11.3, `blacklist` its low half); `group_version` the group's own count.
fn group_access_json(g: &GroupAccess, blacklist: u64) -> Value {
    let minutes = match g.anti_passback {
        AntiPassback::Timed { minutes } => Some(minutes),
        _ => None,
    };
    json!({
        "door_group": g.group,
        "anti_passback": g.anti_passback.as_str(),
        "anti_passback_minutes": minutes,
        "cache_version": cardgate_ledger::doors::cache_version(g.cache_version, blacklist),
        "group_version": g.cache_version,
    })
}

/// A permission change's answer: the permission, and the cache version its group's
/// controllers are brought to by this change (`blacklist`: the published blacklist
/// version, read once per call so that the answer kept under an idempotency key and the
/// one sent are the same).
fn permission_answer(c: &PermissionChange, blacklist: u64) -> Value {
    json!({
        "permission": permission_json(&c.permission),
        "cache_version": cardgate_ledger::doors::cache_version(c.access.cache_version, blacklist),
        "group_version": c.access.cache_version,
    })
}

// ---- doors --------------------------------------------------------------------------------

/// Every door, or those of one `door_group`.
async fn list_doors(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(s, headers, ApiPermission::Doors, "doors.list", String::from("doors"));
    tryr!(only_params(&q, &["door_group"]));
    let group = tryr!(q.get("door_group").map(|g| parse_id(g, "door_group")).transpose());
    if let Some(g) = group {
        tryr!(known_group(&s, g));
    }
    let list: Vec<Value> = s
        .ledger
        .doors()
        .iter()
        .filter(|d| group.is_none_or(|g| g == d.group))
        .map(door_json)
        .collect();
    axum::Json(json!({ "doors": list })).into_response()
}

async fn get_door(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(s, headers, ApiPermission::Doors, "doors.get", format!("door:{id}"));
    tryr!(only_params(&q, &[]));
    let id = tryr!(parse_id(&id, "door"));
    match s.ledger.door(id) {
        Some(d) => axum::Json(json!({ "door": door_json(&d) })).into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("door {id} not found")).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DoorBody {
    /// For a create: the id the controller's firmware uses (else the next free one).
    id: Option<u64>,
    name: String,
    #[serde(default)]
    place: String,
    door_group: u64,
    #[serde(default)]
    controller: u64,
    #[serde(default = "both")]
    direction: String,
    #[serde(default = "yes")]
    enabled: bool,
}

fn both() -> String {
    "both".into()
}

fn yes() -> bool {
    true
}

impl DoorBody {
    fn input(self, id: Option<u64>) -> Result<DoorInput, ApiError> {
        if let (Some(path), Some(body)) = (id, self.id)
            && path != body
        {
            // Taking either would change a door the operator did not mean.
            return Err(ApiError::unprocessable(format!(
                "the body's id {body} is not the door of the path ({path}): a door's id is not changed"
            )));
        }
        check_name("name", &self.name)?;
        let direction = DoorDirection::parse(&self.direction)
            .ok_or_else(|| ApiError::bad_request(format!("direction {:?}: in, out or both", self.direction)))?;
        Ok(DoorInput {
            id: id.or(self.id),
            name: self.name,
            place: self.place,
            group: self.door_group,
            controller: self.controller,
            direction,
            enabled: self.enabled,
        })
    }
}

async fn create_door(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    set_door(s, headers, body, None, "door.create", StatusCode::CREATED).await
}

async fn replace_door(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let target = format!("door:{id}");
    let actor = auth!(s, headers, ApiPermission::Doors, "door.replace", target);
    let id = tryr!(parse_id(&id, "door"));
    if s.ledger.door(id).is_none() {
        return ApiError::new(StatusCode::NOT_FOUND, format!("door {id} not found")).into_response();
    }
    drop(actor);
    set_door(s, headers, body, Some(id), "door.replace", StatusCode::OK).await
}

async fn set_door(
    s: AdminState,
    headers: HeaderMap,
    body: Bytes,
    id: Option<u64>,
    action: &'static str,
    status: StatusCode,
) -> Response {
    let target = id.map_or_else(|| "doors".to_string(), |id| format!("door:{id}"));
    let actor = auth!(s, headers, ApiPermission::Doors, action, target);
    let key = key!(headers, action, target, "", body);
    s.mutate(actor, action, target, key, move |l, call| async move {
        let b: DoorBody = json_body(&body)?;
        let input = b.input(id)?;
        let previous = input.id.and_then(|i| l.door(i));
        if action == "door.create"
            && let Some(d) = &previous
        {
            // A create names a new door: replacing one is PUT /doors/{id}, so that a
            // typo in an id never moves an existing door to another group silently.
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("door {} exists; change it with PUT /api/v1/doors/{}", d.id, d.id),
            ));
        }
        let before = previous.as_ref().map_or(Value::Null, door_json);
        let before_s = audit_before(&before);
        let describe = move |d: &Door| (before_s.clone(), door_json(d).to_string());
        let answer = |d: &Door| json!({ "door": door_json(d) }).to_string();
        let d = l.set_door(&call.by(status, &describe, &answer), input).await?;
        Ok(Done {
            status,
            before,
            after: Value::Null,
            body: json!({ "door": door_json(&d) }),
        })
    })
    .await
}

/// The audit record's `before`: the record as it was, or empty for a new one.
fn audit_before(before: &Value) -> String {
    if before.is_null() {
        String::new()
    } else {
        before.to_string()
    }
}

// ---- schedules and the calendar ------------------------------------------------------------

async fn list_schedules(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(
        s,
        headers,
        ApiPermission::Doors,
        "door_schedules.list",
        String::from("door_schedules")
    );
    tryr!(only_params(&q, &[]));
    let list: Vec<Value> = s.ledger.schedules().iter().map(schedule_json).collect();
    axum::Json(json!({ "schedules": list })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowBody {
    /// 1 = Monday .. 7 = Sunday; a list gives the same window on each day.
    #[serde(default)]
    weekday: Option<u8>,
    #[serde(default)]
    weekdays: Vec<u8>,
    start: String,
    end: String,
    /// Required for a window that ends at or before it starts (22:00–06:00).
    #[serde(default)]
    overnight: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    name: String,
    windows: Vec<WindowBody>,
    /// `ignore` (holidays are ordinary days), `closed` (the default), or `windows`.
    #[serde(default)]
    holidays: Option<String>,
    #[serde(default)]
    holiday_windows: Vec<WindowBody>,
}

fn windows_of(list: Vec<WindowBody>, holiday: bool) -> Result<Vec<Window>, ApiError> {
    let mut out = Vec::new();
    for w in list {
        let (start, end) = (parse_hhmm(&w.start)?, parse_hhmm(&w.end)?);
        if start == 24 * 60 {
            return Err(ApiError::unprocessable(format!(
                "window {}–{}: a window starts at 00:00 to 23:59 (24:00 is only an end)",
                w.start, w.end
            )));
        }
        if w.weekday.is_some() && !w.weekdays.is_empty() {
            // Merging the two would open days the operator may not have meant.
            return Err(ApiError::bad_request(format!(
                "window {}–{}: give weekday or weekdays, not both",
                w.start, w.end
            )));
        }
        let mut days = w.weekdays.clone();
        days.extend(w.weekday);
        if holiday {
            days = vec![1];
        }
        if days.is_empty() {
            return Err(ApiError::bad_request(
                "a window needs weekday (1 = Monday .. 7 = Sunday) or weekdays",
            ));
        }
        for d in days {
            if !(1..=7).contains(&d) {
                return Err(ApiError::bad_request(format!("weekday {d}: 1 (Monday) to 7 (Sunday)")));
            }
            out.push(window(d - 1, start, end, w.overnight).map_err(|r| ApiError::unprocessable(r.0))?);
        }
    }
    Ok(out)
}

impl ScheduleBody {
    fn input(self, id: Option<u64>) -> Result<ScheduleInput, ApiError> {
        check_name("name", &self.name)?;
        let windows = windows_of(self.windows, false)?;
        let rule = self.holidays.as_deref().unwrap_or("closed");
        if rule != "windows" && !self.holiday_windows.is_empty() {
            // They would be dropped unread: refused, so that nobody believes them in force.
            return Err(ApiError::unprocessable(format!(
                "holiday_windows are used only with \"holidays\": \"windows\" (this schedule's holidays are {rule:?})"
            )));
        }
        let holidays = match rule {
            "ignore" => HolidayRule::Ignore,
            "closed" => HolidayRule::Closed,
            "windows" => HolidayRule::Windows(windows_of(self.holiday_windows, true)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "holidays {other:?}: ignore, closed or windows"
                )));
            }
        };
        Ok(ScheduleInput {
            id,
            name: self.name,
            windows,
            holidays,
        })
    }
}

async fn create_schedule(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    set_schedule(s, headers, body, None).await
}

async fn replace_schedule(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let id = match parse_id(&id, "schedule") {
        Ok(id) => id,
        Err(e) => {
            auth!(
                s,
                headers,
                ApiPermission::Doors,
                "door_schedule.replace",
                format!("schedule:{id}")
            );
            return e.into_response();
        }
    };
    set_schedule(s, headers, body, Some(id)).await
}

async fn set_schedule(s: AdminState, headers: HeaderMap, body: Bytes, id: Option<u64>) -> Response {
    let (action, target, status) = match id {
        None => (
            "door_schedule.create",
            "door_schedules".to_string(),
            StatusCode::CREATED,
        ),
        Some(id) => ("door_schedule.replace", format!("schedule:{id}"), StatusCode::OK),
    };
    let actor = auth!(s, headers, ApiPermission::Doors, action, target);
    if let Some(id) = id
        && !s.ledger.schedules().iter().any(|x| x.id == id)
    {
        return ApiError::new(StatusCode::NOT_FOUND, format!("schedule {id} not found")).into_response();
    }
    let key = key!(headers, action, target, "", body);
    s.mutate(actor, action, target, key, move |l, call| async move {
        let b: ScheduleBody = json_body(&body)?;
        let input = b.input(id)?;
        let before_s = id
            .and_then(|i| l.schedules().into_iter().find(|x| x.id == i))
            .map_or(String::new(), |x| schedule_json(&x).to_string());
        let describe = move |x: &Schedule| (before_s.clone(), schedule_json(x).to_string());
        let answer = |x: &Schedule| json!({ "schedule": schedule_json(x) }).to_string();
        let x = l.set_schedule(&call.by(status, &describe, &answer), input).await?;
        Ok(Done {
            status,
            before: Value::Null,
            after: Value::Null,
            body: json!({ "schedule": schedule_json(&x) }),
        })
    })
    .await
}

async fn get_holidays(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(
        s,
        headers,
        ApiPermission::Doors,
        "holidays.get",
        String::from("holidays")
    );
    tryr!(only_params(&q, &[]));
    let h = s.ledger.holidays();
    axum::Json(json!({ "dates": h.days.iter().map(|d| fmt_day(*d)).collect::<Vec<_>>() })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HolidaysBody {
    dates: Vec<String>,
}

async fn put_holidays(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let action = "holidays.set";
    let target = String::from("holidays");
    let actor = auth!(s, headers, ApiPermission::Doors, action, target);
    let key = key!(headers, action, target, "", body);
    s.mutate(actor, action, target, key, move |l, call| async move {
        let b: HolidaysBody = json_body(&body)?;
        let days = b
            .dates
            .iter()
            .map(|d| parse_day(d, "date"))
            .collect::<Result<Vec<_>, _>>()?;
        let dates = |h: &Holidays| json!({ "dates": h.days.iter().map(|d| fmt_day(*d)).collect::<Vec<_>>() });
        let before_s = dates(&l.holidays()).to_string();
        let describe = move |h: &Holidays| (before_s.clone(), dates(h).to_string());
        let answer = |h: &Holidays| dates(h).to_string();
        let h = l
            .set_holidays(&call.by(StatusCode::OK, &describe, &answer), &days)
            .await?;
        Ok(Done {
            status: StatusCode::OK,
            before: Value::Null,
            after: Value::Null,
            body: dates(&h),
        })
    })
    .await
}

// ---- permissions --------------------------------------------------------------------------

async fn list_permissions(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(
        s,
        headers,
        ApiPermission::Doors,
        "door_permissions.list",
        String::from("door_permissions")
    );
    tryr!(only_params(&q, &["door_group", "person", "revoked"]));
    let group = tryr!(q.get("door_group").map(|g| parse_id(g, "door_group")).transpose());
    if let Some(g) = group {
        tryr!(known_group(&s, g));
    }
    // Absent or `false`: the live ones (what a door admin works with, and what the list
    // always gave); `true` only the revoked; `all` both.
    let revoked = match q.get("revoked").map(String::as_str) {
        None | Some("false") => Some(false),
        Some("true") => Some(true),
        Some("all") => None,
        Some(v) => return ApiError::bad_request(format!("revoked={v:?}: true, false or all")).into_response(),
    };
    // A person's own permissions (granted by person id or by one of their cards: both
    // are kept by the account); those of their department or kind are not theirs alone.
    let account = match q.get("person") {
        Some(p) => match s.ledger.person(p) {
            Some(person) => Some(person.account),
            None => return ApiError::new(StatusCode::NOT_FOUND, format!("person {p:?} not found")).into_response(),
        },
        None => None,
    };
    let list: Vec<Value> = s
        .ledger
        .permissions()
        .iter()
        .filter(|p| group.is_none_or(|g| g == p.door_group))
        .filter(|p| revoked.is_none_or(|r| r == p.revoked))
        .filter(|p| account.is_none_or(|a| p.subject == Subject::Person(a)))
        .map(permission_json)
        .collect();
    axum::Json(json!({ "permissions": list })).into_response()
}

async fn get_permission(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(
        s,
        headers,
        ApiPermission::Doors,
        "door_permission.get",
        format!("permission:{id}")
    );
    tryr!(only_params(&q, &[]));
    let id = tryr!(parse_id(&id, "permission"));
    match s.ledger.permission(id) {
        Some(p) => axum::Json(json!({ "permission": permission_json(&p) })).into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("permission {id} not found")).into_response(),
    }
}

/// Exactly one of `person`, `card`, `department`, `account_kind` names the subject.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionBody {
    person: Option<String>,
    card: Option<String>,
    department: Option<String>,
    account_kind: Option<String>,
    door_group: u64,
    schedule: u64,
    valid_from: String,
    valid_to: Option<String>,
    #[serde(default)]
    note: String,
}

impl PermissionBody {
    fn input(self, l: &cardgate_ledger::Ledger) -> Result<PermissionInput, ApiError> {
        let named = [
            self.person.is_some(),
            self.card.is_some(),
            self.department.is_some(),
            self.account_kind.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if named != 1 {
            return Err(ApiError::bad_request(
                "name exactly one of person, card, department, account_kind",
            ));
        }
        let subject = if let Some(p) = &self.person {
            let person = l
                .person(p)
                .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("person {p:?} not found")))?;
            Subject::Person(person.account)
        } else if let Some(c) = &self.card {
            Subject::Person(l.account_for_permission(parse_card(c)?)?)
        } else if let Some(d) = self.department {
            Subject::Department(d)
        } else {
            let k = self.account_kind.unwrap_or_default();
            Subject::Kind(
                AccountKind::parse(&k)
                    .ok_or_else(|| ApiError::bad_request(format!("account_kind {k:?}: student, staff or temporary")))?,
            )
        };
        Ok(PermissionInput {
            subject,
            door_group: self.door_group,
            schedule: self.schedule,
            valid_from_day: parse_day(&self.valid_from, "valid_from")?,
            valid_to_day: self.valid_to.as_deref().map(|d| parse_day(d, "valid_to")).transpose()?,
            note: self.note,
        })
    }
}

async fn grant(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    put_permission(s, headers, body, None).await
}

async fn change(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Response {
    let id = match parse_id(&id, "permission") {
        Ok(id) => id,
        Err(e) => {
            auth!(
                s,
                headers,
                ApiPermission::Doors,
                "door_permission.change",
                format!("permission:{id}")
            );
            return e.into_response();
        }
    };
    put_permission(s, headers, body, Some(id)).await
}

async fn put_permission(s: AdminState, headers: HeaderMap, body: Bytes, id: Option<u64>) -> Response {
    let (action, target, status) = match id {
        None => (
            "door_permission.grant",
            "door_permissions".to_string(),
            StatusCode::CREATED,
        ),
        Some(id) => ("door_permission.change", format!("permission:{id}"), StatusCode::OK),
    };
    let actor = auth!(s, headers, ApiPermission::Doors, action, target);
    let key = key!(headers, action, target, "", body);
    s.mutate(actor, action, target, key, move |l, call| async move {
        let b: PermissionBody = json_body(&body)?;
        let input = b.input(&l)?;
        let before = id
            .and_then(|i| l.permission(i))
            .map_or(Value::Null, |p| permission_json(&p));
        let before_s = audit_before(&before);
        let describe = move |c: &PermissionChange| (before_s.clone(), permission_json(&c.permission).to_string());
        let blacklist = l.blacklist().published();
        let answer = |c: &PermissionChange| permission_answer(c, blacklist).to_string();
        let by = call.by(status, &describe, &answer);
        let c = match id {
            None => l.grant_permission(&by, input).await?,
            Some(id) => l.change_permission(&by, id, input).await?,
        };
        Ok(Done {
            status,
            before,
            after: Value::Null,
            body: permission_answer(&c, blacklist),
        })
    })
    .await
}

/// A revocation's body, which may be empty: why, kept in its audit record.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    reason: Option<String>,
}

/// Longest revocation reason kept, in bytes.
const REVOKE_REASON_BYTES_MAX: usize = 256;

async fn revoke(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Response {
    let action = "door_permission.revoke";
    let target = format!("permission:{id}");
    let actor = auth!(s, headers, ApiPermission::Doors, action, target);
    let id = tryr!(parse_id(&id, "permission"));
    let key = key!(headers, action, target, "", body);
    s.mutate(actor, action, target, key, move |l, call| async move {
        let b: RevokeBody = if body.iter().all(u8::is_ascii_whitespace) {
            RevokeBody::default()
        } else {
            json_body(&body)?
        };
        if let Some(r) = &b.reason {
            cardgate_domain::rules::input::check_text("reason", r, REVOKE_REASON_BYTES_MAX, true)
                .map_err(|e| ApiError::unprocessable(e.0))?;
        }
        let before_s = l
            .permission(id)
            .map_or(String::new(), |p| permission_json(&p).to_string());
        // The audit record's after: the permission as revoked, and why when the
        // operator said so.
        let reason = b.reason;
        let describe = move |c: &PermissionChange| {
            let mut after = permission_json(&c.permission);
            if let (Some(r), Some(o)) = (&reason, after.as_object_mut()) {
                o.insert("revoke_reason".into(), Value::from(r.as_str()));
            }
            (before_s.clone(), after.to_string())
        };
        let blacklist = l.blacklist().published();
        let answer = |c: &PermissionChange| permission_answer(c, blacklist).to_string();
        let c = l
            .revoke_permission(&call.by(StatusCode::OK, &describe, &answer), id)
            .await?;
        Ok(Done {
            status: StatusCode::OK,
            before: Value::Null,
            after: Value::Null,
            body: permission_answer(&c, blacklist),
        })
    })
    .await
}

// ---- anti-passback --------------------------------------------------------------------------

async fn get_group_access(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    auth!(
        s,
        headers,
        ApiPermission::Doors,
        "door_group_access.get",
        format!("door_group:{id}")
    );
    tryr!(only_params(&q, &[]));
    let id = tryr!(parse_id(&id, "door group"));
    if !s.ledger.door_groups().iter().any(|g| g.id == id) {
        return ApiError::new(StatusCode::NOT_FOUND, format!("door group {id} not found")).into_response();
    }
    let published = s.ledger.blacklist().published();
    axum::Json(json!({ "access": group_access_json(&s.ledger.group_access(id), published) })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupAccessBody {
    /// `off`, `strict` or `timed`.
    anti_passback: String,
    minutes: Option<u32>,
}

async fn put_group_access(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let action = "door_group_access.set";
    let target = format!("door_group:{id}");
    let actor = auth!(s, headers, ApiPermission::Doors, action, target);
    let id = tryr!(parse_id(&id, "door group"));
    let key = key!(headers, action, target, "", body);
    s.mutate(actor, action, target, key, move |l, call| async move {
        let b: GroupAccessBody = json_body(&body)?;
        let rule = match (b.anti_passback.as_str(), b.minutes) {
            ("off", None) => AntiPassback::Off,
            ("strict", None) => AntiPassback::Strict,
            ("timed", Some(minutes)) => AntiPassback::Timed { minutes },
            _ => {
                return Err(ApiError::bad_request(
                    "anti_passback: off, strict, or timed with minutes",
                ));
            }
        };
        let published = l.blacklist().published();
        let before_s = group_access_json(&l.group_access(id), published).to_string();
        let describe = move |g: &GroupAccess| (before_s.clone(), group_access_json(g, published).to_string());
        let answer = |g: &GroupAccess| json!({ "access": group_access_json(g, published) }).to_string();
        let g = l
            .set_anti_passback(&call.by(StatusCode::OK, &describe, &answer), id, rule)
            .await?;
        Ok(Done {
            status: StatusCode::OK,
            before: Value::Null,
            after: Value::Null,
            body: json!({ "access": group_access_json(&g, published) }),
        })
    })
    .await
}

// ---- security's search, the attendance sheet ------------------------------------------------

/// `from`/`to`: local dates (`to` inclusive) or unix ms; the last 24 hours by default.
fn range(s: &AdminState, q: &HashMap<String, String>) -> Result<(i64, i64), ApiError> {
    let tz = s.tz_offset_minutes;
    let bound = |key: &str, end: bool| -> Result<Option<i64>, ApiError> {
        Ok(query_date(q, key, tz)?.map(|d| match d {
            QueryDate::Ms(ms) => ms,
            QueryDate::Day(start) if end => start + 86_400_000,
            QueryDate::Day(start) => start,
        }))
    };
    let now = s.ledger.now_ms();
    let from = bound("from", false)?.unwrap_or(now - 86_400_000);
    let to = bound("to", true)?.unwrap_or(now + 1);
    if to <= from {
        return Err(ApiError::bad_request("to must be after from"));
    }
    Ok((from, to))
}

/// What security's search takes; anything else is refused.
const ACCESS_EVENT_PARAMS: [&str; 9] = [
    "door",
    "door_group",
    "person",
    "card",
    "from",
    "to",
    "granted",
    "flagged",
    "format",
];

/// Access events by `door`, `door_group`, `person`, `card`, time, result and whether an
/// offline decision was flagged; JSON or CSV. Every
/// search is audited with whom it looked at (the person, card, door or group asked for)
/// and how many events it returned.
async fn access_events(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut targets = Vec::new();
    for k in ["door", "door_group", "person", "card"] {
        if let Some(v) = q.get(k) {
            targets.push(format!("{k}:{v}"));
        }
    }
    let target = if targets.is_empty() {
        "access_events".to_string()
    } else {
        targets.join(" ")
    };
    let actor = auth!(s, headers, ApiPermission::Doors, "access_events.search", target);
    tryr!(only_params(&q, &ACCESS_EVENT_PARAMS));
    let csv = tryr!(wants_csv(&q, &headers));
    // Every filter as asked, for the audit record: what was looked at, not only at whom.
    let mut filters: Vec<String> = ACCESS_EVENT_PARAMS
        .iter()
        .filter(|k| !matches!(**k, "from" | "to" | "format"))
        .filter_map(|k| q.get(*k).map(|v| format!("{k}={v}")))
        .collect();
    if filters.is_empty() {
        filters.push("none".into());
    }
    let granted = tryr!(parse_flag(&q, "granted"));
    let flagged = tryr!(parse_flag(&q, "flagged"));
    let (from, to) = tryr!(range(&s, &q));
    let num = |k: &str| q.get(k).map(|v| parse_id(v, k)).transpose();
    let door = tryr!(num("door"));
    let door_group = tryr!(num("door_group"));
    let card = tryr!(q.get("card").map(|c| parse_card(c)).transpose());
    let account = match q.get("person") {
        Some(p) => match s.ledger.person(p) {
            Some(person) => Some(person.account),
            None => return ApiError::new(StatusCode::NOT_FOUND, format!("person {p:?} not found")).into_response(),
        },
        None => None,
    };
    let query = AccessQuery {
        door,
        door_group,
        account,
        card,
        granted,
        flagged,
        from_ms: from,
        to_ms: to,
    };
    let l = s.ledger.clone();
    let found = match tokio::task::spawn_blocking(move || l.access_events(query)).await {
        Ok(r) => tryr!(r),
        Err(_) => return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "search failed").into_response(),
    };
    let tz = s.tz_offset_minutes;
    let record = AuditRecord {
        id: 0,
        time_ms: 0,
        actor: Some(actor.actor.clone()),
        action: "access_events.search".into(),
        target: target.clone(),
        status: 200,
        before: String::new(),
        after: String::new(),
        detail: format!(
            "{} events from {} to before {}; filters: {}{}",
            found.rows.len(),
            format_local(from, tz),
            format_local(to, tz),
            filters.join(" "),
            if csv { " (csv)" } else { "" }
        ),
    };
    if let Err(e) = s.ledger.audit(record).await {
        return ApiError::from(e).into_response();
    }
    if csv {
        let mut out = String::from(
            "time,door,door_name,door_group,direction,card,person_id,person_name,account,granted,reason,source,terminal,event_seq,recorded,flagged,drift_ms\n",
        );
        for r in &found.rows {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                format_local(r.event_time_ms, tz),
                r.door,
                csv_field(&r.door_name),
                r.door_group,
                r.direction,
                r.card,
                csv_field(&r.person_id),
                csv_field(&r.person_name),
                r.account,
                r.granted,
                r.reason,
                r.source,
                r.terminal,
                r.event_seq,
                format_local(r.recorded_ms, tz),
                r.flagged,
                r.drift_ms,
            ));
        }
        return csv_search_response(out, found.complete);
    }
    axum::Json(json!({
        "events": found.rows,
        "complete": found.complete,
        "from_ms": from,
        "to_ms": to,
    }))
    .into_response()
}

/// The attendance sheet of `date` (local, today by default) for `person` or
/// `department`; JSON or CSV.
async fn attendance(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let target = match (q.get("person"), q.get("department")) {
        (Some(p), _) => format!("person:{p}"),
        (None, Some(d)) => format!("department:{d}"),
        _ => "attendance".to_string(),
    };
    auth!(s, headers, ApiPermission::Attendance, "attendance.sheet", target);
    tryr!(only_params(&q, &["person", "department", "date", "format"]));
    let csv = tryr!(wants_csv(&q, &headers));
    let tz = s.tz_offset_minutes;
    let day = match tryr!(query_date(&q, "date", tz)) {
        Some(QueryDate::Ms(ms)) => business_day(ms, tz),
        Some(QueryDate::Day(start)) => business_day(start, tz),
        None => business_day(s.ledger.now_ms(), tz),
    };
    let of = match (q.get("person"), q.get("department")) {
        (Some(p), None) => match s.ledger.person(p) {
            Some(person) => SheetOf::Account(person.account),
            None => return ApiError::new(StatusCode::NOT_FOUND, format!("person {p:?} not found")).into_response(),
        },
        (None, Some(d)) => SheetOf::Department(d.clone()),
        _ => return ApiError::bad_request("name one of person or department").into_response(),
    };
    let hours = s.work_hours;
    let l = s.ledger.clone();
    let (rows, complete) = match tokio::task::spawn_blocking(move || l.attendance_sheet(&of, day, &hours)).await {
        Ok(r) => tryr!(r),
        Err(_) => return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "sheet failed").into_response(),
    };
    let t = |ms: Option<i64>| ms.map(|m| format_local(m, tz)).unwrap_or_default();
    if csv {
        let mut out =
            String::from("date,person_id,name,department,first_in,last_out,punches,late_min,early_min,status\n");
        for r in &rows {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                r.date,
                csv_field(&r.person_id),
                csv_field(&r.name),
                csv_field(&r.department),
                t(r.first_in_ms),
                t(r.last_out_ms),
                r.punches,
                r.late_min,
                r.early_min,
                r.status,
            ));
        }
        return csv_search_response(out, complete);
    }
    // What the statuses were judged against: the attendance admin cannot read the
    // configuration or the door calendar.
    let hm = |min: u16| format!("{:02}:{:02}", min / 60, min % 60);
    let workdays: Vec<usize> = (0..7).filter(|d| hours.workdays[*d]).map(|d| d + 1).collect();
    axum::Json(json!({
        "date": fmt_day(day),
        "rows": rows,
        "complete": complete,
        "work_hours": {
            "work_start": hm(hours.start_min),
            "work_end": hm(hours.end_min),
            "late_grace_min": hours.late_grace_min,
            "workdays": workdays,
        },
        "holiday": s.ledger.is_holiday(day),
    }))
    .into_response()
}
