//! The door admin's pages (门禁管理员): doors, schedules, the holiday calendar,
//! permissions (list, grant, revoke) and security's access-event search with its CSV;
//! and the attendance admin's sheet (考勤管理员), a day or a range, with its CSV.
//!
//! Every page reads and acts through the door API (`/api/v1/doors` and its
//! neighbours), so the roles, the refusals and the audit records (a search of the
//! access events is itself one) are the API's.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use cardgate_domain::clock::{civil_from_days, days_from_civil, parse_local_date};
use cardgate_domain::operator::Permission;
use cardgate_ledger::days::day_str;
use maud::{Markup, html};
use serde_json::{Map, Value, json};

use super::desk::{csv_download, qs, today_str};
use super::sessions::random_hex;
use super::view::{Ctx, Lang, local_time, notice, page, urlencode};
use super::{Answer, Console, Fields, Signed, html_page};

/// Doors one page lists (the demo campus has 500).
const DOOR_ROWS_MAX: usize = 2000;
/// Permissions one page lists.
const PERMISSION_ROWS_MAX: usize = 2000;
/// Days one attendance page covers: one API call each.
const SHEET_DAYS_MAX: i64 = 31;

pub fn routes() -> Router<Console> {
    Router::new()
        .route("/console/doors", get(doors_page))
        .route("/console/doors/schedules", get(schedules_page))
        .route("/console/doors/holidays", get(holidays_page))
        .route("/console/doors/permissions", get(permissions_page).post(grant_post))
        .route("/console/doors/permissions/{id}/revoke", post(revoke_post))
        .route("/console/doors/events", get(events_page))
        .route("/console/doors/events.csv", get(events_csv))
        .route("/console/attendance", get(attendance_page))
        .route("/console/attendance.csv", get(attendance_csv))
}

/// The door pages' own navigation.
fn tabs(ctx: &Ctx) -> Markup {
    const TABS: [(&str, &str, &str); 5] = [
        ("/console/doors", "门禁点", "Doors"),
        ("/console/doors/schedules", "时段", "Schedules"),
        ("/console/doors/holidays", "节假日", "Holidays"),
        ("/console/doors/permissions", "权限", "Permissions"),
        ("/console/doors/events", "出入记录", "Access events"),
    ];
    let path = ctx.here.split('?').next().unwrap_or("");
    html! {
        p.tabs {
            @for (i, (p, zh, en)) in TABS.into_iter().enumerate() {
                @if i > 0 { " · " }
                @if path == p { strong { (ctx.t(zh, en)) } } @else { a href=(p) { (ctx.t(zh, en)) } }
            }
        }
    }
}

fn get_str<'a>(q: &'a HashMap<String, String>, k: &str) -> &'a str {
    q.get(k).map_or("", |v| v.trim())
}

/// The API query of the page's fields that are set.
fn api_query(q: &HashMap<String, String>, keys: &[&str]) -> Vec<String> {
    keys.iter()
        .filter(|k| !get_str(q, k).is_empty())
        .map(|k| format!("{k}={}", urlencode(get_str(q, k))))
        .collect()
}

/// An API answer that is not a success: a refused role gets the refusal page; anything
/// else (a typo in a person id, a bad date) the page again with the API's error on it
/// and the API's status, so that the operator can correct the form.
fn failed(c: &Console, signed: &Signed, a: &Answer, title: &str, form: Markup) -> Response {
    if matches!(a.status, StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED) {
        return c.refusal(signed, a.status, &a.error());
    }
    let ctx = signed.ctx();
    html_page(
        a.status,
        page(&ctx, title, html! { (notice("error", &a.error())) (form) }),
    )
}

fn direction(lang: Lang, d: &str) -> &'static str {
    match d {
        "in" => lang.t("进", "in"),
        "out" => lang.t("出", "out"),
        "both" => lang.t("双向", "both"),
        _ => "",
    }
}

fn weekday(lang: Lang, d: u64) -> &'static str {
    const ZH: [&str; 7] = ["一", "二", "三", "四", "五", "六", "日"];
    const EN: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let i = (d.clamp(1, 7) - 1) as usize;
    lang.t(ZH[i], EN[i])
}

/// The names by id of the records an API list gives under `key`; empty if the API
/// refuses them.
async fn names(c: &Console, signed: &Signed, uri: &str, key: &str) -> BTreeMap<u64, String> {
    let a = c.get(signed, uri).await;
    a.json()[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["id"].as_u64()?, r["name"].as_str().unwrap_or("").to_string())))
        .collect()
}

/// The door groups by id, for names.
async fn groups(c: &Console, signed: &Signed) -> BTreeMap<u64, String> {
    names(c, signed, "/api/v1/door-groups", "door_groups").await
}

/// The schedules by id, for names and the grant form.
async fn schedules(c: &Console, signed: &Signed) -> BTreeMap<u64, String> {
    names(c, signed, "/api/v1/door-schedules", "schedules").await
}

fn named(map: &BTreeMap<u64, String>, id: &Value) -> String {
    match id.as_u64() {
        Some(i) => match map.get(&i) {
            Some(n) if !n.is_empty() => format!("{i} {n}"),
            _ => i.to_string(),
        },
        None => String::new(),
    }
}

fn group_select(ctx: &Ctx, groups: &BTreeMap<u64, String>, chosen: &str, any: bool) -> Markup {
    html! {
        select #door-group name="door_group" {
            @if any { option value="" { (ctx.t("全部", "All")) } }
            @for (id, name) in groups {
                @let v = id.to_string();
                option value=(v) selected[v == chosen] { (id) " " (name) }
            }
        }
    }
}

// ---- doors ----------------------------------------------------------------------------------

async fn doors_page(State(c): State<Console>, signed: Signed, Query(q): Query<HashMap<String, String>>) -> Response {
    let ctx = signed.ctx();
    let title = ctx.t("门禁点", "Doors");
    let chosen = get_str(&q, "door_group").to_string();
    let uri = match api_query(&q, &["door_group"]) {
        v if v.is_empty() => "/api/v1/doors".to_string(),
        v => format!("/api/v1/doors?{}", v.join("&")),
    };
    let a = c.get(&signed, &uri).await;
    let groups = groups(&c, &signed).await;
    let form = html! {
        (tabs(&ctx))
        form #doors-form method="get" action="/console/doors" {
            label { (ctx.t("门组", "Door group")) " " (group_select(&ctx, &groups, &chosen, true)) }
            button type="submit" { (ctx.t("筛选", "Filter")) }
        }
    };
    if !a.ok() {
        return failed(&c, &signed, &a, title, form);
    }
    let list = a.json()["doors"].as_array().cloned().unwrap_or_default();
    let body = html! {
        (form)
        p.muted { (list.len()) " " (ctx.t("个门禁点", "doors")) }
        table #doors {
            tr {
                th.num { "ID" } th { (ctx.t("名称", "Name")) } th { (ctx.t("位置", "Place")) } th { (ctx.t("门组", "Door group")) }
                th.num { (ctx.t("控制器", "Controller")) } th { (ctx.t("方向", "Direction")) } th { (ctx.t("启用", "Enabled")) }
            }
            @for d in list.iter().take(DOOR_ROWS_MAX) {
                tr {
                    td.num { (d["id"]) }
                    td { (d["name"].as_str().unwrap_or("")) }
                    td { (d["place"].as_str().unwrap_or("")) }
                    td { a href=(format!("/console/doors?door_group={}", d["door_group"])) { (named(&groups, &d["door_group"])) } }
                    td.num { @if d["controller"] == 0 { span.muted { "—" } } @else { (d["controller"]) } }
                    td { (direction(ctx.lang, d["direction"].as_str().unwrap_or(""))) }
                    td { @if d["enabled"] == true { span.status-active { (ctx.t("是", "yes")) } } @else { span.status-frozen { (ctx.t("停用", "disabled")) } } }
                }
            }
        }
        @if list.len() > DOOR_ROWS_MAX {
            p.muted { (ctx.t("只列出前 2000 个；请按门组筛选。", "The first 2,000 only; filter by group.")) }
        }
    };
    html_page(StatusCode::OK, page(&ctx, title, body))
}

// ---- schedules, holidays --------------------------------------------------------------------

/// A schedule's windows, the days that share a time together ("一二三四五 07:30–12:00").
fn windows_text(lang: Lang, windows: &Value) -> Vec<String> {
    let mut by_time: Vec<((String, String, bool), Vec<u64>)> = Vec::new();
    for w in windows.as_array().into_iter().flatten() {
        let key = (
            w["start"].as_str().unwrap_or("").to_string(),
            w["end"].as_str().unwrap_or("").to_string(),
            w["overnight"] == true,
        );
        let day = w["weekday"].as_u64().unwrap_or(1);
        match by_time.iter_mut().find(|(k, _)| *k == key) {
            Some((_, days)) => days.push(day),
            None => by_time.push((key, vec![day])),
        }
    }
    by_time
        .into_iter()
        .map(|((start, end, overnight), mut days)| {
            days.sort_unstable();
            let names: Vec<&str> = days.iter().map(|d| weekday(lang, *d)).collect();
            let sep = if lang == Lang::Zh { "" } else { " " };
            let night = if overnight {
                lang.t("（跨夜）", " (overnight)")
            } else {
                ""
            };
            format!("{} {start}–{end}{night}", names.join(sep))
        })
        .collect()
}

async fn schedules_page(State(c): State<Console>, signed: Signed) -> Response {
    let ctx = signed.ctx();
    let title = ctx.t("时段", "Schedules");
    let a = c.get(&signed, "/api/v1/door-schedules").await;
    if !a.ok() {
        return failed(&c, &signed, &a, title, tabs(&ctx));
    }
    let list = a.json()["schedules"].as_array().cloned().unwrap_or_default();
    let body = html! {
        (tabs(&ctx))
        table #schedules {
            tr { th.num { "ID" } th { (ctx.t("名称", "Name")) } th { (ctx.t("每周时段", "Weekly windows")) } th { (ctx.t("节假日", "Holidays")) } }
            @for s in &list {
                tr {
                    td.num { (s["id"]) }
                    td { (s["name"].as_str().unwrap_or("")) }
                    td { @for w in windows_text(ctx.lang, &s["windows"]) { div { (w) } } }
                    td {
                        @match s["holidays"].as_str().unwrap_or("") {
                            "closed" => { (ctx.t("关闭", "closed")) },
                            "ignore" => { (ctx.t("照常（不看日历）", "as usual (calendar ignored)")) },
                            "windows" => {
                                (ctx.t("节假日时段：", "holiday windows:"))
                                @for w in &s["holiday_windows"].as_array().cloned().unwrap_or_default() {
                                    div { (w["start"].as_str().unwrap_or("")) "–" (w["end"].as_str().unwrap_or("")) }
                                }
                            },
                            other => { (other) },
                        }
                    }
                }
            }
        }
        p.muted { (ctx.t(
            "时段的新增与修改请用 API（docs/OPERATIONS.md「门禁 / 考勤」）。",
            "Schedules are added and changed through the API (docs/OPERATIONS.md, door and attendance admins)."
        )) }
    };
    html_page(StatusCode::OK, page(&ctx, title, body))
}

/// A month of the calendar, Monday first, its holidays marked.
fn month_table(ctx: &Ctx, y: i64, m: u32, holidays: &[i64]) -> Markup {
    let first = days_from_civil(y, m, 1);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let len = days_from_civil(ny, nm, 1) - first;
    // 1970-01-01, day 0, was a Thursday: Monday is 0 here.
    let lead = (first + 3).rem_euclid(7);
    let cells: Vec<Option<i64>> = (0..lead)
        .map(|_| None)
        .chain((0..len).map(|d| Some(first + d)))
        .collect();
    html! {
        table.cal {
            caption { (format!("{y:04}-{m:02}")) }
            tr { @for d in 1..=7 { th { (weekday(ctx.lang, d)) } } }
            @for week in cells.chunks(7) {
                tr {
                    @for cell in week {
                        @match cell {
                            Some(day) => {
                                @let (_, _, dd) = civil_from_days(*day);
                                @if holidays.contains(day) { td.holiday { (dd) } } @else { td { (dd) } }
                            },
                            None => { td {} },
                        }
                    }
                }
            }
        }
    }
}

async fn holidays_page(State(c): State<Console>, signed: Signed) -> Response {
    let ctx = signed.ctx();
    let title = ctx.t("节假日", "Holiday calendar");
    let a = c.get(&signed, "/api/v1/holidays").await;
    if !a.ok() {
        return failed(&c, &signed, &a, title, tabs(&ctx));
    }
    let dates: Vec<String> = a.json()["dates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    let days: Vec<i64> = dates
        .iter()
        .filter_map(|d| parse_local_date(d, 0).map(|ms| ms.div_euclid(86_400_000)))
        .collect();
    let mut months: Vec<(i64, u32)> = days
        .iter()
        .map(|d| {
            let (y, m, _) = civil_from_days(*d);
            (y, m)
        })
        .collect();
    months.sort_unstable();
    months.dedup();
    let body = html! {
        (tabs(&ctx))
        p #holiday-count { (dates.len()) " " (ctx.t("个节假日", "holidays")) }
        div.months {
            @for (y, m) in &months { (month_table(&ctx, *y, *m, &days)) }
        }
        p #holidays.mono { (dates.join(" ")) }
        p.muted { (ctx.t(
            "节假日当天，各时段按其节假日规则（关闭、照常或节假日时段）。日历整体用 API 设置（PUT /api/v1/holidays）。",
            "On these dates each schedule follows its holiday rule (closed, as usual, or its holiday windows). The calendar is set whole through the API (PUT /api/v1/holidays)."
        )) }
    };
    html_page(StatusCode::OK, page(&ctx, title, body))
}

// ---- permissions ----------------------------------------------------------------------------

fn subject_text(lang: Lang, s: &Value) -> String {
    if let Some(a) = s["account"].as_u64() {
        format!("{} {a}", lang.t("账户", "account"))
    } else if let Some(d) = s["department"].as_str() {
        format!("{} {d}", lang.t("部门", "department"))
    } else if let Some(k) = s["account_kind"].as_str() {
        format!("{} {}", lang.t("类别", "kind"), lang.kind(k))
    } else {
        s.to_string()
    }
}

/// The subject kinds a grant may name, as the API names them.
const SUBJECTS: [(&str, &str, &str); 4] = [
    ("person", "学号/工号", "Person id"),
    ("card", "卡号", "Card number"),
    ("department", "部门", "Department"),
    (
        "account_kind",
        "类别（student / staff / temporary）",
        "Account kind (student / staff / temporary)",
    ),
];

fn grant_form(
    ctx: &Ctx,
    groups: &BTreeMap<u64, String>,
    schedules: &BTreeMap<u64, String>,
    f: &HashMap<String, String>,
    today: &str,
) -> Markup {
    let val = |k: &str| f.get(k).cloned().unwrap_or_default();
    let by = f.get("by").map_or("person", String::as_str);
    let from = f.get("valid_from").cloned().unwrap_or_else(|| today.to_string());
    html! {
        h2 { (ctx.t("授权", "Grant a permission")) }
        form.card #grant method="post" action="/console/doors/permissions" {
            (ctx.csrf_field())
            input type="hidden" name="idem" value=(random_hex());
            p {
                label { (ctx.t("对象", "Who")) " " select name="by" {
                    @for (k, zh, en) in SUBJECTS { option value=(k) selected[k == by] { (ctx.t(zh, en)) } }
                } }
                input #grant-who type="text" name="who" value=(val("who")) required;
            }
            p {
                label { (ctx.t("门组", "Door group")) " " (group_select(ctx, groups, &val("door_group"), false)) }
                label { (ctx.t("时段", "Schedule")) " " select #grant-schedule name="schedule" {
                    @for (id, name) in schedules {
                        @let v = id.to_string();
                        option value=(v) selected[v == val("schedule")] { (id) " " (name) }
                    }
                } }
            }
            p {
                label { (ctx.t("生效日期", "Valid from")) " " input type="date" name="valid_from" value=(from) required; }
                label { (ctx.t("截止日期（含，可空）", "Valid to (inclusive, optional)")) " " input type="date" name="valid_to" value=(val("valid_to")); }
            }
            p { label { (ctx.t("备注", "Note")) " " input type="text" name="note" value=(val("note")) size="40"; } }
            button #grant-button type="submit" { (ctx.t("授权", "Grant")) }
        }
    }
}

/// The permissions page: the filters, the list, the grant form; `message` above them,
/// `form` the grant form's values to show again (after a refused grant).
async fn permissions_view(
    c: &Console,
    signed: &Signed,
    q: &HashMap<String, String>,
    status: StatusCode,
    message: Option<Markup>,
    form: &HashMap<String, String>,
) -> Response {
    let ctx = signed.ctx();
    let title = ctx.t("门禁权限", "Door permissions");
    let state = match get_str(q, "state") {
        "" => "live",
        s => s,
    };
    let mut query = api_query(q, &["door_group", "person"]);
    match state {
        "live" => query.push("revoked=false".into()),
        "revoked" => query.push("revoked=true".into()),
        _ => query.push("revoked=all".into()),
    }
    let a = c
        .get(signed, &format!("/api/v1/door-permissions?{}", query.join("&")))
        .await;
    let groups = groups(c, signed).await;
    let schedules = schedules(c, signed).await;
    let filters = html! {
        (tabs(&ctx))
        @if let Some(m) = &message { (m) }
        form #permissions-form method="get" action="/console/doors/permissions" {
            label { (ctx.t("门组", "Door group")) " " (group_select(&ctx, &groups, get_str(q, "door_group"), true)) }
            label { (ctx.t("学号/工号", "Person id")) " " input #permissions-person type="text" name="person" value=(get_str(q, "person")) size="12"; }
            label { (ctx.t("状态", "State")) " " select name="state" {
                option value="live" selected[state == "live"] { (ctx.t("有效", "live")) }
                option value="revoked" selected[state == "revoked"] { (ctx.t("已撤销", "revoked")) }
                option value="all" selected[state == "all"] { (ctx.t("全部", "all")) }
            } }
            button type="submit" { (ctx.t("筛选", "Filter")) }
        }
    };
    let today = today_str(c);
    // A new grant is most often for the group on screen.
    let mut form = form.clone();
    if !form.contains_key("door_group") && !get_str(q, "door_group").is_empty() {
        form.insert("door_group".into(), get_str(q, "door_group").to_string());
    }
    let form = &form;
    if !a.ok() {
        let form = html! { (filters) (grant_form(&ctx, &groups, &schedules, form, &today)) };
        return failed(c, signed, &a, title, form);
    }
    let list = a.json()["permissions"].as_array().cloned().unwrap_or_default();
    let body = html! {
        (filters)
        p.muted { (list.len()) " " (ctx.t("条权限", "permissions")) }
        table #permissions {
            tr {
                th.num { "ID" } th { (ctx.t("对象", "Who")) } th { (ctx.t("门组", "Door group")) } th { (ctx.t("时段", "Schedule")) }
                th { (ctx.t("生效", "From")) } th { (ctx.t("截止", "To")) } th { (ctx.t("备注", "Note")) } th { (ctx.t("状态", "State")) } th { (ctx.t("操作", "Actions")) }
            }
            @for p in list.iter().take(PERMISSION_ROWS_MAX) {
                @let id = p["id"].as_u64().unwrap_or(0);
                @let revoked = p["revoked"] == true;
                tr id=(format!("permission-{id}")) {
                    td.num { (id) }
                    td { (subject_text(ctx.lang, &p["subject"])) }
                    td { (named(&groups, &p["door_group"])) }
                    td { (named(&schedules, &p["schedule"])) }
                    td { (p["valid_from"].as_str().unwrap_or("")) }
                    td { (p["valid_to"].as_str().unwrap_or("—")) }
                    td { (p["note"].as_str().unwrap_or("")) }
                    td { @if revoked { span.status-cancelled { (ctx.t("已撤销", "revoked")) } } @else { span.status-active { (ctx.t("有效", "live")) } } }
                    td.actions {
                        @if !revoked {
                            form.inline method="post" action=(format!("/console/doors/permissions/{id}/revoke")) {
                                (ctx.csrf_field())
                                input type="hidden" name="step" value="review";
                                button.secondary type="submit" { (ctx.t("撤销", "Revoke")) }
                            }
                        }
                    }
                }
            }
        }
        @if list.len() > PERMISSION_ROWS_MAX {
            p.muted { (ctx.t("只列出前 2000 条；请按门组或人员筛选。", "The first 2,000 only; filter by group or person.")) }
        }
        (grant_form(&ctx, &groups, &schedules, form, &today))
        p.muted { (ctx.t(
            "按人员筛选只列出授予此人本人（按学号/工号或其卡）的权限；其部门或类别的权限按门组查看。撤销立即对在线检查生效，离线控制器同步后生效。",
            "A person filter lists the permissions granted to that person (by id or by one of their cards); those of their department or kind are under their group. A revocation refuses at once online, and on an offline controller once it has synced."
        )) }
    };
    html_page(status, page(&ctx, title, body))
}

async fn permissions_page(
    State(c): State<Console>,
    signed: Signed,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    permissions_view(&c, &signed, &q, StatusCode::OK, None, &HashMap::new()).await
}

async fn grant_post(State(c): State<Console>, signed: Signed, f: Fields) -> Response {
    let ctx = signed.ctx();
    let mut body = Map::new();
    let by = match f.get("by") {
        b @ ("person" | "card" | "department" | "account_kind") => b,
        _ => "person",
    };
    body.insert(by.into(), Value::from(f.get("who").trim()));
    // The numbers go as the API expects them; a field that is not one goes as text, and
    // the API's refusal names it.
    for k in ["door_group", "schedule"] {
        let v = f.get(k).trim();
        body.insert(k.into(), v.parse::<u64>().map_or_else(|_| Value::from(v), Value::from));
    }
    body.insert("valid_from".into(), Value::from(f.get("valid_from").trim()));
    if !f.get("valid_to").trim().is_empty() {
        body.insert("valid_to".into(), Value::from(f.get("valid_to").trim()));
    }
    body.insert("note".into(), Value::from(f.get("note").trim()));
    let a = c
        .post_json(
            &signed,
            Method::POST,
            "/api/v1/door-permissions",
            &Value::Object(body),
            f.get("idem"),
        )
        .await;
    if matches!(a.status, StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED) {
        return c.refusal(&signed, a.status, &a.error());
    }
    let q: HashMap<String, String> = [("door_group".to_string(), f.get("door_group").to_string())].into();
    if !a.ok() {
        let message = notice("error", &format!("{} {}", ctx.t("未授权：", "Not granted:"), a.error()));
        return permissions_view(&c, &signed, &q, a.status, Some(message), &f.0).await;
    }
    let r = a.json();
    let message = html! {
        p #granted class="notice ok" {
            (ctx.t("已授权，权限号", "Granted: permission")) " " (r["permission"]["id"]) " · "
            (subject_text(ctx.lang, &r["permission"]["subject"])) " · "
            (ctx.t("门组缓存版本", "group cache version")) " " (r["cache_version"])
            @if a.replayed { " " (ctx.t("（重复提交，未再次授权）", "(sent again: granted once)")) }
        }
    };
    permissions_view(&c, &signed, &q, StatusCode::OK, Some(message), &HashMap::new()).await
}

async fn revoke_post(State(c): State<Console>, signed: Signed, Path(id): Path<String>, f: Fields) -> Response {
    let ctx = signed.ctx();
    let title = ctx.t("撤销权限", "Revoke a permission");
    if f.get("step") != "confirm" {
        let a = c
            .get(&signed, &format!("/api/v1/door-permissions/{}", urlencode(&id)))
            .await;
        if !a.ok() {
            return c.refusal(&signed, a.status, &a.error());
        }
        let p = &a.json()["permission"];
        let groups = groups(&c, &signed).await;
        let schedules = schedules(&c, &signed).await;
        let body = html! {
            dl.facts #revoke-facts {
                dt { (ctx.t("权限号", "Permission")) } dd { (p["id"]) }
                dt { (ctx.t("对象", "Who")) } dd { (subject_text(ctx.lang, &p["subject"])) }
                dt { (ctx.t("门组", "Door group")) } dd { (named(&groups, &p["door_group"])) }
                dt { (ctx.t("时段", "Schedule")) } dd { (named(&schedules, &p["schedule"])) }
                dt { (ctx.t("有效期", "Valid")) } dd { (p["valid_from"].as_str().unwrap_or("")) " – " (p["valid_to"].as_str().unwrap_or("")) }
                dt { (ctx.t("备注", "Note")) } dd { (p["note"].as_str().unwrap_or("")) }
            }
            p { (ctx.t(
                "撤销后在线检查立即拒绝；控制器收到推送并同步后离线也拒绝。撤销不能恢复（需重新授权）。",
                "Once revoked, online checks refuse at once; controllers refuse offline too once they have synced. A revocation is final (grant anew instead)."
            )) }
            form.card #confirm method="post" action=(format!("/console/doors/permissions/{}/revoke", urlencode(&id))) {
                (ctx.csrf_field())
                input type="hidden" name="step" value="confirm";
                input type="hidden" name="idem" value=(random_hex());
                button.danger #confirm-button type="submit" { (ctx.t("确认撤销", "Revoke")) }
            }
            p { a href="/console/doors/permissions" { (ctx.t("取消", "Cancel")) } }
        };
        return html_page(StatusCode::OK, page(&ctx, title, body));
    }
    let uri = format!("/api/v1/door-permissions/{}/revoke", urlencode(&id));
    let a = c.post_empty(&signed, &uri, f.get("idem")).await;
    if !a.ok() {
        return c.refusal(&signed, a.status, &a.error());
    }
    let r = a.json();
    let message = html! {
        p #revoked class="notice ok" {
            (ctx.t("已撤销权限", "Revoked permission")) " " (r["permission"]["id"]) " · "
            (ctx.t("门组缓存版本", "group cache version")) " " (r["cache_version"])
        }
    };
    let q: HashMap<String, String> = [("door_group".to_string(), r["permission"]["door_group"].to_string())].into();
    permissions_view(&c, &signed, &q, StatusCode::OK, Some(message), &HashMap::new()).await
}

// ---- access events --------------------------------------------------------------------------

const EVENT_KEYS: [&str; 8] = [
    "door",
    "door_group",
    "person",
    "card",
    "granted",
    "flagged",
    "from",
    "to",
];

fn events_uri(q: &HashMap<String, String>, csv: bool) -> String {
    let mut query = api_query(q, &EVENT_KEYS);
    query.push(format!("format={}", if csv { "csv" } else { "json" }));
    format!("/api/v1/access-events?{}", query.join("&"))
}

async fn events_page(
    State(c): State<Console>,
    signed: Signed,
    Query(mut q): Query<HashMap<String, String>>,
) -> Response {
    let ctx = signed.ctx();
    let title = ctx.t("出入记录查询", "Access events");
    let searched = !q.is_empty();
    q.entry("from".into()).or_insert_with(|| today_str(&c));
    q.entry("to".into()).or_insert_with(|| today_str(&c));
    let field = |k: &str| get_str(&q, k).to_string();
    let form = html! {
        (tabs(&ctx))
        form #events-form method="get" action="/console/doors/events" {
            label { (ctx.t("门", "Door")) " " input type="text" name="door" value=(field("door")) size="6"; }
            label { (ctx.t("门组", "Door group")) " " input type="text" name="door_group" value=(field("door_group")) size="4"; }
            label { (ctx.t("学号/工号", "Person id")) " " input #events-person type="text" name="person" value=(field("person")) size="12"; }
            label { (ctx.t("卡号", "Card")) " " input type="text" name="card" value=(field("card")) size="16"; }
            label { (ctx.t("从", "From")) " " input type="date" name="from" value=(field("from")); }
            label { (ctx.t("到", "To")) " " input type="date" name="to" value=(field("to")); }
            label { (ctx.t("结果", "Result")) " "
                select name="granted" {
                    option value="" selected[field("granted").is_empty()] { (ctx.t("全部", "any")) }
                    option value="true" selected[field("granted") == "true"] { (ctx.t("通过", "granted")) }
                    option value="false" selected[field("granted") == "false"] { (ctx.t("拒绝", "denied")) }
                }
            }
            label { input type="checkbox" name="flagged" value="true" checked[field("flagged") == "true"];
                " " (ctx.t("仅离线可疑记录", "flagged offline decisions only")) }
            button type="submit" { (ctx.t("查询", "Search")) }
        }
        p.muted { (ctx.t(
            "每次查询（含下载）都记入审计日志：谁查询了谁、返回多少条。",
            "Every search (and download) is in the audit trail: who looked, at whom, and how many events it returned."
        )) }
    };
    if !searched {
        // Nothing asked yet: the form only, after the API's own permission check.
        if let Err(r) = c
            .allow(&signed, Permission::Doors, "access_events.page", "access_events")
            .await
        {
            return r;
        }
        return html_page(StatusCode::OK, page(&ctx, title, form));
    }
    let a = c.get(&signed, &events_uri(&q, false)).await;
    if !a.ok() {
        return failed(&c, &signed, &a, title, form);
    }
    let r = a.json();
    let rows = r["events"].as_array().cloned().unwrap_or_default();
    let tz = c.tz();
    let body = html! {
        (form)
        @if r["complete"] == false {
            (notice("warn", ctx.t(
                "结果不完整：超过 10000 条被截断，或时间段早于网关日志保留的范围（含尚未结束的时间段）；更早的记录在中心库。",
                "Not complete: cut at 10,000 events, or the range reaches back before the gateway's journal (or into the future); the central store has the older records."
            )))
        }
        p { a #events-csv href=(format!("/console/doors/events.csv?{}", qs(&q))) { (ctx.t("下载 CSV", "Download CSV")) } " · " span #events-count { (rows.len()) } " " (ctx.t("条", "events")) }
        table #events {
            tr {
                th { (ctx.t("时间", "Time")) } th { (ctx.t("门", "Door")) } th.num { (ctx.t("门组", "Group")) } th { (ctx.t("方向", "Direction")) }
                th { (ctx.t("卡号", "Card")) } th { (ctx.t("学号/工号", "Person id")) } th { (ctx.t("姓名", "Name")) }
                th { (ctx.t("结果", "Result")) } th { (ctx.t("原因", "Reason")) } th { (ctx.t("来源", "Source")) } th.num { (ctx.t("控制器", "Controller")) }
            }
            @for e in &rows {
                tr {
                    td { (local_time(e["event_time_ms"].as_i64().unwrap_or(0), tz)) }
                    td { (e["door"]) " " (e["door_name"].as_str().unwrap_or("")) }
                    td.num { (e["door_group"]) }
                    td { (direction(ctx.lang, e["direction"].as_str().unwrap_or(""))) }
                    td.mono { (e["card"]) }
                    td { (e["person_id"].as_str().unwrap_or("")) }
                    td { (e["person_name"].as_str().unwrap_or("")) }
                    td { @if e["granted"] == true { span.status-active { (ctx.t("通过", "granted")) } } @else { span.status-frozen { (ctx.t("拒绝", "denied")) } } }
                    td.mono { (e["reason"].as_str().unwrap_or("")) }
                    td { (e["source"].as_str().unwrap_or(""))
                        @if e["flagged"] == true { " " span.status-frozen title=(ctx.t("离线决定与网关规则不符", "decided offline against the gateway's rules")) { (ctx.t("可疑", "flagged")) } } }
                    td.num { (e["terminal"]) }
                }
            }
        }
    };
    html_page(StatusCode::OK, page(&ctx, title, body))
}

/// A file name of ASCII letters, digits, dashes and dots.
fn file_name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .collect()
}

async fn events_csv(State(c): State<Console>, signed: Signed, Query(q): Query<HashMap<String, String>>) -> Response {
    let a = c.get(&signed, &events_uri(&q, true)).await;
    let name = file_name(&format!("access-{}-{}.csv", get_str(&q, "from"), get_str(&q, "to")));
    csv_download(&c, &signed, a, &name)
}

// ---- attendance -----------------------------------------------------------------------------

fn attendance_status(lang: Lang, s: &str) -> String {
    let t = match s {
        "present" => lang.t("正常", "present"),
        "late" => lang.t("迟到", "late"),
        "early_leave" => lang.t("早退", "left early"),
        "late_and_early_leave" => lang.t("迟到且早退", "late and left early"),
        "absent" => lang.t("缺勤", "absent"),
        "day_off" => lang.t("休息日", "day off"),
        "not_yet" => lang.t("未到日期", "not yet"),
        other => return other.to_string(),
    };
    t.to_string()
}

/// The sheet's API query without its date, and its days (`from` to `to` inclusive), or
/// why the page's fields do not name one.
fn sheet_of(c: &Console, lang: Lang, q: &HashMap<String, String>) -> Result<(String, Vec<String>), String> {
    let who = match (get_str(q, "person"), get_str(q, "department")) {
        ("", "") => {
            return Err(lang
                .t("请填写学号/工号或部门。", "Name a person or a department.")
                .into());
        }
        (p, "") => format!("person={}", urlencode(p)),
        ("", d) => format!("department={}", urlencode(d)),
        _ => {
            return Err(lang
                .t("学号/工号与部门只填一个。", "Name a person or a department, not both.")
                .into());
        }
    };
    let today = today_str(c);
    let from = match get_str(q, "from") {
        "" => today.clone(),
        f => f.to_string(),
    };
    let to = match get_str(q, "to") {
        "" => from.clone(),
        t => t.to_string(),
    };
    let day = |s: &str| {
        parse_local_date(s, 0)
            .map(|ms| ms.div_euclid(86_400_000))
            .ok_or_else(|| format!("{s:?}: {}", lang.t("不是日期（YYYY-MM-DD）", "not a date (YYYY-MM-DD)")))
    };
    let (first, last) = (day(&from)?, day(&to)?);
    if last < first {
        return Err(lang.t("结束日期早于开始日期。", "The end is before the start.").into());
    }
    if last - first >= SHEET_DAYS_MAX {
        return Err(lang.t("一次最多 31 天。", "At most 31 days at a time.").into());
    }
    // Within 31 days of a parsed date: far inside an i32 of days.
    let days = (first..=last).map(|d| day_str(d as i32)).collect();
    Ok((who, days))
}

async fn attendance_page(
    State(c): State<Console>,
    signed: Signed,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ctx = signed.ctx();
    let title = ctx.t("考勤表", "Attendance sheet");
    let field = |k: &str| get_str(&q, k).to_string();
    let today = today_str(&c);
    let form = html! {
        form #attendance-form method="get" action="/console/attendance" {
            label { (ctx.t("学号/工号", "Person id")) " " input #attendance-person type="text" name="person" value=(field("person")) size="12"; }
            label { (ctx.t("或部门", "or department")) " " input #attendance-department type="text" name="department" value=(field("department")) size="14"; }
            label { (ctx.t("从", "From")) " " input type="date" name="from" value=(if field("from").is_empty() { today.clone() } else { field("from") }); }
            label { (ctx.t("到", "To")) " " input type="date" name="to" value=(field("to")); }
            button type="submit" { (ctx.t("查询", "Show")) }
        }
    };
    if q.is_empty() {
        if let Err(r) = c
            .allow(&signed, Permission::Attendance, "attendance.page", "attendance")
            .await
        {
            return r;
        }
        return html_page(StatusCode::OK, page(&ctx, title, form));
    }
    let (who, days) = match sheet_of(&c, ctx.lang, &q) {
        Ok(x) => x,
        Err(e) => {
            let a = Answer {
                status: StatusCode::BAD_REQUEST,
                body: json!({ "error": e }).to_string().into(),
                replayed: false,
            };
            return failed(&c, &signed, &a, title, form);
        }
    };
    let mut rows = Vec::new();
    let mut complete = true;
    for day in &days {
        let a = c.get(&signed, &format!("/api/v1/attendance?{who}&date={day}")).await;
        if !a.ok() {
            return failed(&c, &signed, &a, title, form);
        }
        let j = a.json();
        complete &= j["complete"] != false;
        rows.extend(j["rows"].as_array().cloned().unwrap_or_default());
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        *counts
            .entry(r["status"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    let tz = c.tz();
    let t = |v: &Value| {
        v.as_i64()
            .map_or_else(String::new, |ms| local_time(ms, tz)[11..].to_string())
    };
    let mut csv_q = q.clone();
    csv_q.insert("from".into(), days.first().cloned().unwrap_or_default());
    csv_q.insert("to".into(), days.last().cloned().unwrap_or_default());
    let body = html! {
        (form)
        @if !complete {
            (notice("warn", ctx.t(
                "部分日期的打卡记录已超出网关日志保留的范围，表中可能缺少打卡；请在中心库核对。",
                "Some days reach back before the gateway's journal: punches may be missing; check against the central store."
            )))
        }
        p {
            a #attendance-csv href=(format!("/console/attendance.csv?{}", qs(&csv_q))) { (ctx.t("下载 CSV", "Download CSV")) }
            " · " span #attendance-count { (rows.len()) } " " (ctx.t("行", "rows"))
            @for (s, n) in &counts { " · " (attendance_status(ctx.lang, s)) " " (n) }
        }
        table #attendance {
            tr {
                th { (ctx.t("日期", "Date")) } th { (ctx.t("学号/工号", "Person id")) } th { (ctx.t("姓名", "Name")) } th { (ctx.t("部门", "Department")) }
                th { (ctx.t("首次打卡", "First in")) } th { (ctx.t("末次打卡", "Last out")) } th.num { (ctx.t("打卡次数", "Punches")) }
                th.num { (ctx.t("迟到分钟", "Late min")) } th.num { (ctx.t("早退分钟", "Early min")) } th { (ctx.t("状态", "Status")) }
            }
            @for r in &rows {
                tr {
                    td { (r["date"].as_str().unwrap_or("")) }
                    td { (r["person_id"].as_str().unwrap_or("")) }
                    td { (r["name"].as_str().unwrap_or("")) }
                    td { (r["department"].as_str().unwrap_or("")) }
                    td { (t(&r["first_in_ms"])) }
                    td { (t(&r["last_out_ms"])) }
                    td.num { (r["punches"]) }
                    td.num { (r["late_min"]) }
                    td.num { (r["early_min"]) }
                    td { (attendance_status(ctx.lang, r["status"].as_str().unwrap_or(""))) }
                }
            }
        }
    };
    html_page(StatusCode::OK, page(&ctx, title, body))
}

async fn attendance_csv(
    State(c): State<Console>,
    signed: Signed,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (who, days) = match sheet_of(&c, signed.lang, &q) {
        Ok(x) => x,
        Err(e) => return c.refusal(&signed, StatusCode::BAD_REQUEST, &e),
    };
    // One file: the first day's header, then every day's rows.
    let mut out: Vec<u8> = Vec::new();
    for day in &days {
        let a = c
            .get(&signed, &format!("/api/v1/attendance?{who}&date={day}&format=csv"))
            .await;
        if !a.ok() {
            return csv_download(&c, &signed, a, "");
        }
        let text = &a.body[..];
        let rows = if out.is_empty() {
            text
        } else {
            text.iter()
                .position(|b| *b == b'\n')
                .map_or(&text[..0], |i| &text[i + 1..])
        };
        out.extend_from_slice(rows);
    }
    let name = file_name(&format!(
        "attendance-{}-{}-{}.csv",
        if get_str(&q, "person").is_empty() {
            "department"
        } else {
            get_str(&q, "person")
        },
        days.first().map_or("", String::as_str),
        days.last().map_or("", String::as_str),
    ));
    let a = Answer {
        status: StatusCode::OK,
        body: out.into(),
        replayed: false,
    };
    csv_download(&c, &signed, a, &name)
}
