//! The system admin's pages (系统管理员): terminals as the ledger sees them (connected,
//! last seen, how far behind the blacklist), operators and their roles and passwords;
//! and the director's audit trail search (主任).

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use cardgate_domain::operator::{Permission, Role};
use maud::html;
use serde_json::{Value, json};

use super::sessions::random_hex;
use super::view::{local_time, notice, page, urlencode};
use super::{Console, Fields, Signed, html_page};

/// Audit records one search shows.
const AUDIT_ROWS_MAX: usize = 500;
/// Terminals one page lists.
const TERMINAL_ROWS_MAX: usize = 1000;

pub fn routes() -> Router<Console> {
    Router::new()
        .route("/console/terminals", get(terminals))
        .route("/console/operators", get(operators).post(add_operator))
        .route("/console/operators/{id}/disable", post(disable_operator))
        .route("/console/operators/{id}/password", post(reset_password))
        .route("/console/audit", get(audit))
}

// ---- terminals ------------------------------------------------------------------------------

async fn terminals(State(c): State<Console>, signed: Signed, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Err(r) = c
        .allow(&signed, Permission::Terminals, "terminal.list", "terminals")
        .await
    {
        return r;
    }
    let ctx = signed.ctx();
    let tz = c.tz();
    let l = &c.admin.ledger;
    let version = l.blacklist_version();
    let all = l.terminal_inventory();
    let show = q.get("show").map_or("all", String::as_str);
    let behind = |t: &cardgate_ledger::registry::TerminalView| version.saturating_sub(t.blacklist_version);
    let connected = all.iter().filter(|t| t.connected).count();
    let lagging = all.iter().filter(|t| t.enabled && behind(t) > 0).count();
    let gapped = all.iter().filter(|t| t.missing > 0).count();
    let now = l.now_ms();
    // Minutes since the last session ended, for a terminal without one.
    let offline_minutes = |t: &cardgate_ledger::registry::TerminalView| {
        t.offline_since_ms
            .filter(|_| !t.connected)
            .map(|since| (now - since).max(0) / 60_000)
    };
    let listed: Vec<_> = all
        .iter()
        .filter(|t| match show {
            "offline" => !t.connected && t.enabled,
            "behind" => t.enabled && behind(t) > 0,
            "gaps" => t.missing > 0,
            _ => true,
        })
        .take(TERMINAL_ROWS_MAX)
        .collect();
    let body = html! {
        dl.facts #terminal-summary {
            dt { (ctx.t("终端", "Terminals")) } dd { (all.len()) }
            dt { (ctx.t("在线", "Connected")) } dd #connected { (connected) }
            dt { (ctx.t("黑名单落后", "Behind the blacklist")) } dd { (lagging) }
            dt { (ctx.t("当前黑名单版本", "Blacklist version")) } dd { (version) }
            dt { (ctx.t("有序号缺口", "With sequence gaps")) } dd #gapped { (gapped) }
        }
        p {
            a href="/console/terminals" { (ctx.t("全部", "All")) } " · "
            a href="/console/terminals?show=offline" { (ctx.t("离线", "Offline")) } " · "
            a href="/console/terminals?show=behind" { (ctx.t("黑名单落后", "Behind")) } " · "
            a href="/console/terminals?show=gaps" { (ctx.t("序号缺口", "Sequence gaps")) }
        }
        table #terminals {
            tr {
                th.num { "ID" } th { (ctx.t("名称", "Name")) } th { (ctx.t("位置", "Place")) } th { (ctx.t("类型", "Kind")) }
                th { (ctx.t("启用", "Enabled")) } th { (ctx.t("连接", "Connection")) } th { (ctx.t("最后通讯", "Last seen")) }
                th.num { (ctx.t("已确认版本", "Acked version")) } th.num { (ctx.t("落后", "Behind")) }
                th.num { (ctx.t("离线分钟", "Offline min")) } th.num { (ctx.t("缺失序号", "Missing seq")) }
                th.num { (ctx.t("时钟偏差秒", "Clock drift s")) }
            }
            @for t in &listed {
                tr {
                    td.num { (t.id) } td { (t.name) } td { (t.place) } td { (t.kind) }
                    td { @if t.enabled { (ctx.t("是", "yes")) } @else { span.status-frozen { (ctx.t("停用", "disabled")) } } }
                    td { @if t.connected { span.status-active { (ctx.t("在线", "connected")) } } @else { span.muted { (ctx.t("离线", "offline")) } } }
                    td { @if t.last_seen_ms > 0 { (local_time(t.last_seen_ms, tz)) } @else { "—" } }
                    td.num { (t.blacklist_version) }
                    td.num { (behind(t)) }
                    td.num { @if let Some(m) = offline_minutes(t) { (m) } @else { "—" } }
                    td.num title=(format!("{:?}", t.open_gaps)) { (t.missing) }
                    td.num { @if t.last_seen_ms > 0 { (format!("{:.1}", t.drift_ms as f64 / 1000.0)) } @else { "—" } }
                }
            }
        }
        @if listed.len() == TERMINAL_ROWS_MAX {
            p.muted { (ctx.t("只列出前 1000 台。", "The first 1,000 only.")) }
        }
        p.muted { (ctx.t(
            "离线分钟：自最后一次会话结束起（本网关启动以来）。缺失序号：从未收到的交易序号（可能是尚未上传的脱机交易）；每日完整性报告列出确切范围。",
            "Offline minutes: since its last session ended (since this gateway started). Missing seq: sequence numbers never received (offline sales not uploaded yet, perhaps); the daily completeness report lists the exact ranges."
        )) }
    };
    html_page(StatusCode::OK, page(&ctx, ctx.t("终端", "Terminals"), body))
}

// ---- operators ------------------------------------------------------------------------------

async fn operators_page(c: &Console, signed: &Signed, message: Option<maud::Markup>) -> Response {
    let ctx = signed.ctx();
    let a = c.get(signed, "/api/v1/operators").await;
    if !a.ok() {
        return c.refusal(signed, a.status, &a.error());
    }
    let tz = c.tz();
    let list = a.json();
    let body = html! {
        @if let Some(m) = message { (m) }
        table #operators {
            tr { th.num { "ID" } th { (ctx.t("名称", "Name")) } th { (ctx.t("角色", "Role")) } th { (ctx.t("状态", "Status")) } th { (ctx.t("控制台密码", "Console password")) } th { (ctx.t("创建时间", "Created")) } th { (ctx.t("操作", "Actions")) } }
            @for o in list["operators"].as_array().into_iter().flatten() {
                @let id = o["id"].as_u64().unwrap_or(0);
                @let role = o["role"].as_str().and_then(Role::parse);
                @let enabled = o["enabled"].as_bool().unwrap_or(false);
                tr {
                    td.num { (id) }
                    td { (o["name"].as_str().unwrap_or("")) }
                    td { (role.map_or("", |r| ctx.lang.role(r))) }
                    td { @if enabled { span.status-active { (ctx.t("启用", "enabled")) } } @else { span.status-frozen { (ctx.t("停用", "disabled")) } } }
                    td { @if c.admin.ledger.has_password(id) { (ctx.t("已设置", "set")) } @else { span.muted { (ctx.t("未设置", "none")) } } }
                    td { (local_time(o["created_ms"].as_i64().unwrap_or(0), tz)) }
                    td.actions {
                        @if enabled {
                            form.inline method="post" action=(format!("/console/operators/{id}/password")) {
                                (ctx.csrf_field())
                                input type="hidden" name="step" value="review";
                                button.secondary type="submit" { (ctx.t("重置密码", "Reset password")) }
                            }
                            " "
                            form.inline method="post" action=(format!("/console/operators/{id}/disable")) {
                                (ctx.csrf_field())
                                input type="hidden" name="step" value="review";
                                button.secondary type="submit" { (ctx.t("停用", "Disable")) }
                            }
                        }
                    }
                }
            }
        }
        h2 { (ctx.t("新增操作员", "Add an operator")) }
        form.card #add-operator method="post" action="/console/operators" {
            (ctx.csrf_field())
            input type="hidden" name="idem" value=(random_hex());
            p { label { (ctx.t("名称", "Name")) " " input type="text" name="name" required; } }
            p { label { (ctx.t("角色", "Role")) " " select name="role" {
                @for r in Role::ALL { option value=(r.as_str()) selected[r == Role::CardDesk] { (ctx.lang.role(r)) } }
            } } }
            p { label { (ctx.t("初始控制台密码（可选，首次登录须修改）", "First console password (optional; changed at the first sign-in)")) " "
                input type="password" name="password" autocomplete="new-password"; } }
            button type="submit" { (ctx.t("新增", "Add")) }
        }
        p.muted { (ctx.t(
            "新操作员的 API 令牌只显示一次。只有主任可以新增或停用主任。",
            "A new operator's API token is shown once. Only a director may add or disable a director."
        )) }
    };
    html_page(StatusCode::OK, page(&ctx, ctx.t("操作员", "Operators"), body))
}

async fn operators(State(c): State<Console>, signed: Signed) -> Response {
    operators_page(&c, &signed, None).await
}

async fn add_operator(State(c): State<Console>, signed: Signed, f: Fields) -> Response {
    let ctx = signed.ctx();
    let body = json!({ "name": f.get("name").trim(), "role": f.get("role") });
    let a = c
        .post_json(&signed, Method::POST, "/api/v1/operators", &body, f.get("idem"))
        .await;
    if !a.ok() {
        return c.refusal(&signed, a.status, &a.error());
    }
    let r = a.json();
    let id = r["operator"]["id"].as_u64().unwrap_or(0);
    let mut password_note = None;
    if !f.get("password").is_empty() {
        let p = c
            .post_json(
                &signed,
                Method::POST,
                &format!("/api/v1/operators/{id}/password"),
                &json!({ "password": f.get("password") }),
                &format!("{}-password", f.get("idem")),
            )
            .await;
        password_note = Some(if p.ok() {
            notice("ok", ctx.t("初始密码已设置。", "First password set."))
        } else {
            notice(
                "error",
                &format!("{} {}", ctx.t("密码未设置：", "Password not set:"), p.error()),
            )
        });
    }
    let message = html! {
        (notice("ok", &format!("{} {}", ctx.t("已新增操作员", "Added operator"), r["operator"]["name"].as_str().unwrap_or(""))))
        @if let Some(t) = r["token"].as_str() {
            p { (ctx.t("API 令牌（只显示这一次）：", "API token (shown only now):")) " " code #new-token { (t) } }
        }
        @if let Some(n) = password_note { (n) }
    };
    operators_page(&c, &signed, Some(message)).await
}

fn operator_name(c: &Console, id: &str) -> String {
    id.parse()
        .ok()
        .and_then(|id| c.admin.ledger.operator(id))
        .map_or_else(|| id.to_string(), |o| o.name)
}

async fn disable_operator(State(c): State<Console>, signed: Signed, Path(id): Path<String>, f: Fields) -> Response {
    let ctx = signed.ctx();
    if f.get("step") != "confirm" {
        if let Err(r) = c
            .allow(&signed, Permission::Operators, "operator.list", "operators")
            .await
        {
            return r;
        }
        let body = html! {
            p { (ctx.t("停用后，此操作员的 API 令牌和控制台登录立即失效。", "Once disabled, the operator's API token and console sessions stop at once.")) }
            form.card #confirm method="post" action=(format!("/console/operators/{}/disable", urlencode(&id))) {
                (ctx.csrf_field())
                input type="hidden" name="step" value="confirm";
                input type="hidden" name="idem" value=(random_hex());
                button.danger #confirm-button type="submit" { (ctx.t("确认停用", "Disable")) " " (operator_name(&c, &id)) }
            }
            p { a href="/console/operators" { (ctx.t("取消", "Cancel")) } }
        };
        return html_page(
            StatusCode::OK,
            page(&ctx, ctx.t("停用操作员", "Disable an operator"), body),
        );
    }
    let uri = format!("/api/v1/operators/{}/disable", urlencode(&id));
    let a = c.post_empty(&signed, &uri, f.get("idem")).await;
    if !a.ok() {
        return c.refusal(&signed, a.status, &a.error());
    }
    operators_page(&c, &signed, Some(notice("ok", ctx.t("已停用。", "Disabled.")))).await
}

async fn reset_password(State(c): State<Console>, signed: Signed, Path(id): Path<String>, f: Fields) -> Response {
    let ctx = signed.ctx();
    if f.get("step") != "confirm" {
        if let Err(r) = c
            .allow(&signed, Permission::Operators, "operator.list", "operators")
            .await
        {
            return r;
        }
        let body = html! {
            p { (ctx.t(
                "设置一个临时密码交给本人；其首次登录时必须改为自己的密码。其现有的控制台登录将退出。",
                "Set a temporary password to hand to its owner, who must choose their own at the next sign-in. Their console sessions end."
            )) }
            form.card #confirm method="post" action=(format!("/console/operators/{}/password", urlencode(&id))) {
                (ctx.csrf_field())
                input type="hidden" name="step" value="confirm";
                input type="hidden" name="idem" value=(random_hex());
                p { label { (ctx.t("临时密码", "Temporary password")) " " input type="password" name="password" autocomplete="new-password" required; } }
                button.danger #confirm-button type="submit" { (ctx.t("重置密码", "Reset the password of")) " " (operator_name(&c, &id)) }
            }
            p { a href="/console/operators" { (ctx.t("取消", "Cancel")) } }
        };
        return html_page(StatusCode::OK, page(&ctx, ctx.t("重置密码", "Reset a password"), body));
    }
    let uri = format!("/api/v1/operators/{}/password", urlencode(&id));
    let a = c
        .post_json(
            &signed,
            Method::POST,
            &uri,
            &json!({ "password": f.get("password") }),
            f.get("idem"),
        )
        .await;
    if !a.ok() {
        return c.refusal(&signed, a.status, &a.error());
    }
    operators_page(
        &c,
        &signed,
        Some(notice("ok", ctx.t("密码已重置。", "Password reset."))),
    )
    .await
}

// ---- audit trail ----------------------------------------------------------------------------

async fn audit(State(c): State<Console>, signed: Signed, Query(q): Query<HashMap<String, String>>) -> Response {
    let ctx = signed.ctx();
    let get = |k: &str| q.get(k).map_or("", |v| v.trim()).to_string();
    let mut query = vec![format!("limit={AUDIT_ROWS_MAX}")];
    for k in ["operator", "target", "from", "to"] {
        let v = get(k);
        if !v.is_empty() {
            query.push(format!("{k}={}", urlencode(&v)));
        }
    }
    let a = c.get(&signed, &format!("/api/v1/audit?{}", query.join("&"))).await;
    if !a.ok() {
        return c.refusal(&signed, a.status, &a.error());
    }
    // The API gives the newest records, oldest first; a desk reads the newest first.
    let mut records = a.json()["records"].as_array().cloned().unwrap_or_default();
    records.reverse();
    let body = html! {
        form #audit-form method="get" action="/console/audit" {
            label { (ctx.t("操作员", "Operator")) " " input type="text" name="operator" value=(get("operator")) size="10"; }
            label { (ctx.t("对象", "Target")) " " input type="text" name="target" value=(get("target")) size="24" placeholder="card:62220000100001"; }
            label { (ctx.t("从", "From")) " " input type="date" name="from" value=(get("from")); }
            label { (ctx.t("到", "To")) " " input type="date" name="to" value=(get("to")); }
            button type="submit" { (ctx.t("查询", "Search")) }
        }
        p.muted { (records.len()) " " (ctx.t("条（最新的 500 条以内，最新在前）", "records (the newest 500 at most, newest first)")) }
        table #audit {
            tr { th { (ctx.t("时间", "Time")) } th { (ctx.t("操作员", "Operator")) } th { (ctx.t("操作", "Action")) } th { (ctx.t("对象", "Target")) } th.num { (ctx.t("状态", "Status")) } th { (ctx.t("详情", "Detail")) } }
            @for r in &records {
                tr {
                    td { (r["time"].as_str().map_or("", |t| &t[..t.len().min(19)])) }
                    td { (r["operator"].as_str().unwrap_or("—")) " " span.muted { (r["role"].as_str().unwrap_or("")) } }
                    td.mono { (r["action"].as_str().unwrap_or("")) }
                    td.mono { (r["target"].as_str().unwrap_or("")) }
                    td.num { (r["status"]) }
                    td {
                        (r["detail"].as_str().unwrap_or(""))
                        @if !r["before"].is_null() || !r["after"].is_null() {
                            details {
                                summary { (ctx.t("修改前后", "Before / after")) }
                                @if !r["before"].is_null() { div.mono { (ctx.t("前：", "before: ")) (compact(&r["before"])) } }
                                @if !r["after"].is_null() { div.mono { (ctx.t("后：", "after: ")) (compact(&r["after"])) } }
                            }
                        }
                    }
                }
            }
        }
    };
    html_page(StatusCode::OK, page(&ctx, ctx.t("审计日志", "Audit trail"), body))
}

fn compact(v: &Value) -> String {
    v.to_string()
}
