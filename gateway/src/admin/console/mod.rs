//! The operator console: HTML pages for the card desk, the data admin, the system admin,
//! the door admin, the attendance admin and the director, served by the admin listener from the binary alone (templates
//! compiled in, one stylesheet compiled in, no script, nothing fetched).
//!
//! The console is a client of the admin API inside the process. Every action a page
//! takes is an API call through the API's own router (`Console::call`), presented with
//! the signed-in session's API key as its bearer token: the same roles, the same 403s
//! counted and audited, the same ledger operations, audit records and idempotency. Each
//! confirmation form carries a fresh idempotency key, so a form sent twice (a double
//! click, a reload of the result) answers the first result again and moves no money
//! twice. Pages that only read call the ledger after the same permission check
//! (`Console::allow`). A button the role may not use is not drawn, and the server
//! refuses it anyway.
//!
//! Sign-in is by operator name and password (argon2id, `cardgate_ledger::desk`); a
//! session is a cookie (HttpOnly, SameSite=Strict, Secure behind TLS), ends when idle,
//! and every form carries its session's CSRF token. Names that fail too often are
//! locked out for a while. Sign-ins, failures and sign-outs are in the audit trail.

mod data;
mod desk;
mod doors;
mod sessions;
mod system;
mod view;

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use cardgate_domain::model::AuditRecord;
use cardgate_domain::operator::{Actor, OPERATOR_NAME_BYTES_MAX, Operator, PASSWORD_BYTES_MAX, Permission};
use cardgate_ledger::desk::SignIn;
use cookie::{Cookie, SameSite};
use maud::{Markup, html};
use serde_json::Value;
use tower::ServiceExt;

pub use sessions::Sessions;
use sessions::{Gate, SESSION_KEY_PREFIX, Session, random_hex, same_secret};
use view::{Ctx, Lang, Who, notice, page};

use super::AdminState;

/// The largest form the console takes, except a CSV upload and a grants list.
pub const FORM_BYTES_MAX: usize = 64 * 1024;
/// A CSV upload: the import's own limit and room for the multipart framing.
pub const UPLOAD_BYTES_MAX: usize = cardgate_ledger::import::IMPORT_BYTES_MAX + 64 * 1024;
/// The largest API answer the console reads back (a long history or audit search).
const ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;

const SESSION_COOKIE: &str = "cg_session";
const LANG_COOKIE: &str = "cg_lang";
/// The sign-in form's CSRF token travels in this cookie and in the form (double
/// submit): there is no session yet to hold it.
const SIGN_IN_COOKIE: &str = "cg_signin";

impl AdminState {
    /// The enabled operator behind a bearer token: an operator's own token, or the API
    /// key of a live console session (which never leaves the process).
    pub(super) fn operator_of(&self, token: &str) -> Option<Operator> {
        if token.starts_with(SESSION_KEY_PREFIX) {
            let id = self.console.operator_of_key(token, self.ledger.now_ms())?;
            return self.ledger.operator(id).filter(|o| o.enabled);
        }
        self.ledger.authenticate(token)
    }

    /// A password changed (or its operator was disabled): the operator's other console
    /// sessions end. `token` is the caller's bearer token; its session stays.
    pub(super) fn end_console_sessions(&self, operator_id: u64, token: Option<&str>) {
        self.console.end_operator_except_key(operator_id, token);
    }

    /// Until when `name` is locked out of password checks, if it is.
    pub(super) fn console_locked_until(&self, name: &str, now_ms: i64) -> Option<i64> {
        match self.console.gate(name, now_ms) {
            Gate::Locked(until) => Some(until),
            Gate::Open => None,
        }
    }

    /// Counts a wrong password for `name` toward its lock-out.
    pub(super) fn console_failed(&self, name: &str, now_ms: i64) {
        self.console.failed(name, now_ms);
    }
}

/// The console's state: the admin API's state and its router, called in-process.
#[derive(Clone)]
pub struct Console {
    admin: AdminState,
    api: Router,
}

/// The signed-in operator of a request, put there by `require_session`.
#[derive(Clone)]
pub struct Signed {
    cookie: String,
    session: Session,
    operator: Operator,
    lang: Lang,
    here: String,
}

pub fn router(admin: AdminState) -> Router {
    let c = Console {
        api: super::routes::router(admin.clone()),
        admin,
    };
    let signed = Router::new()
        .route("/console/sign-out", post(sign_out))
        .route("/console/password", get(password_page).post(change_password))
        .merge(desk::routes())
        .merge(data::routes())
        .merge(system::routes())
        .merge(doors::routes())
        .route_layer(middleware::from_fn_with_state(c.clone(), require_session));
    Router::new()
        .route("/console", get(root))
        .route("/console/", get(root))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/lang", get(set_lang))
        .route("/console/assets/console.css", get(css))
        .merge(signed)
        .layer(DefaultBodyLimit::max(FORM_BYTES_MAX))
        .layer(middleware::map_response(security_headers))
        .with_state(c)
}

/// Pages hold card numbers and balances: never cached, never framed, nothing loaded
/// from elsewhere, no referrer sent on.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let css = h
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/css"));
    if !css {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        view::CSS,
    )
        .into_response()
}

// ---- cookies, language ------------------------------------------------------------------

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

fn lang_of(headers: &HeaderMap) -> Lang {
    cookie_value(headers, LANG_COOKIE)
        .and_then(|v| Lang::parse(&v))
        .unwrap_or(Lang::Zh)
}

/// Served over TLS: the proxy in front says so. Trusting the header can only make the
/// cookie stricter (Secure), never looser.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(
    headers: &HeaderMap,
    name: &'static str,
    value: String,
    max_age_s: Option<i64>,
    http_only: bool,
) -> HeaderValue {
    let mut c = Cookie::build((name, value))
        .path("/console")
        .http_only(http_only)
        .same_site(SameSite::Strict)
        .secure(over_tls(headers));
    if let Some(s) = max_age_s {
        c = c.max_age(cookie::time::Duration::seconds(s));
    }
    HeaderValue::from_str(&c.build().to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Only a console path of ours, so that a link cannot send a signed-in operator
/// elsewhere.
fn safe_back(back: Option<&String>) -> String {
    match back {
        Some(b) if b.starts_with("/console") && !b.starts_with("//") && !b.contains('\\') => b.clone(),
        _ => "/console".into(),
    }
}

async fn set_lang(headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let lang = q.get("to").and_then(|l| Lang::parse(l)).unwrap_or(Lang::Zh);
    let mut r = Redirect::to(&safe_back(q.get("back"))).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&headers, LANG_COOKIE, lang.code().into(), Some(365 * 86_400), false),
    );
    r
}

// ---- sessions ---------------------------------------------------------------------------

fn here_of(req: &Request) -> String {
    req.uri()
        .path_and_query()
        .map_or_else(|| "/console".to_string(), |p| p.as_str().to_string())
}

/// Finds the request's session, or sends the browser to sign in. Runs before any
/// handler reads a body, so nobody without a session gets a form or a file read.
async fn require_session(State(c): State<Console>, mut req: Request, next: Next) -> Response {
    let here = here_of(&req);
    let lang = lang_of(req.headers());
    let now = c.admin.ledger.now_ms();
    let cookie = cookie_value(req.headers(), SESSION_COOKIE);
    let found = cookie.as_deref().and_then(|k| {
        let s = c.admin.console.touch(k, now)?;
        Some((k.to_string(), s))
    });
    let Some((cookie, session)) = found else {
        let to = format!("/console/sign-in?next={}", view::urlencode(&here));
        return Redirect::to(&to).into_response();
    };
    // Disabled, or its password set anew since this session signed in (a reset from the
    // API, the console or the command line): the session is over.
    let operator = c
        .admin
        .ledger
        .operator(session.operator_id)
        .filter(|o| o.enabled && c.admin.ledger.password_set_ms(o.id) == session.password_set_ms);
    let Some(operator) = operator else {
        c.admin.console.end(&cookie);
        return Redirect::to("/console/sign-in").into_response();
    };
    let path = req.uri().path();
    if session.must_change && path != "/console/password" && path != "/console/sign-out" {
        return Redirect::to("/console/password").into_response();
    }
    req.extensions_mut().insert(Signed {
        cookie,
        session,
        operator,
        lang,
        here,
    });
    next.run(req).await
}

impl Signed {
    fn ctx(&self) -> Ctx {
        Ctx {
            lang: self.lang,
            who: Some(Who {
                operator: self.operator.clone(),
                csrf: self.session.csrf.clone(),
                must_change: self.session.must_change,
            }),
            here: self.here.clone(),
        }
    }

    /// The headers an API call for this session carries.
    fn api_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", self.session.api_key)) {
            h.insert(header::AUTHORIZATION, v);
        }
        h
    }
}

impl axum::extract::FromRequestParts<Console> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &Console) -> Result<Signed, Response> {
        parts
            .extensions
            .get::<Signed>()
            .cloned()
            .ok_or_else(|| Redirect::to("/console/sign-in").into_response())
    }
}

/// A form's fields, its CSRF token checked against the session's: a form posted from
/// anywhere but a page this session was given is refused before anything is read from
/// it.
pub struct Fields(pub HashMap<String, String>);

impl Fields {
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", |v| v.as_str())
    }
}

impl FromRequest<Console> for Fields {
    type Rejection = Response;

    async fn from_request(req: Request, c: &Console) -> Result<Fields, Response> {
        let signed = req.extensions().get::<Signed>().cloned();
        let axum::Form(fields) = axum::Form::<HashMap<String, String>>::from_request(req, c)
            .await
            .map_err(IntoResponse::into_response)?;
        let Some(signed) = signed else {
            return Err(Redirect::to("/console/sign-in").into_response());
        };
        let sent = fields.get("csrf").map_or("", |v| v.as_str());
        if !same_secret(sent, &signed.session.csrf) {
            return Err(csrf_refused(&signed.ctx()));
        }
        Ok(Fields(fields))
    }
}

pub fn csrf_refused(ctx: &Ctx) -> Response {
    metrics::counter!("cardgate_console_csrf_refusals_total").increment(1);
    html_page(
        StatusCode::FORBIDDEN,
        page(
            ctx,
            ctx.t("表单无效", "Form refused"),
            notice(
                "error",
                ctx.t(
                    "表单缺少有效的安全令牌（可能已过期），未做任何更改。请回到页面重新操作。",
                    "The form lacks a valid security token (it may have expired); nothing was changed. Go back to the page and try again.",
                ),
            ),
        ),
    )
}

pub fn html_page(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// An API answer, read back.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    /// The answer is the one kept under the call's idempotency key (the form was sent
    /// before).
    pub replayed: bool,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The API's error message.
    pub fn error(&self) -> String {
        match self.json().get("error").and_then(Value::as_str) {
            Some(e) => e.to_string(),
            None => format!("HTTP {}", self.status.as_u16()),
        }
    }
}

impl Console {
    fn tz(&self) -> i32 {
        self.admin.tz_offset_minutes
    }

    /// Calls the admin API for the signed-in operator, through the API's own router.
    /// `idem` names the intended operation (a confirmation form's key).
    pub async fn call(
        &self,
        signed: &Signed,
        method: Method,
        uri: &str,
        content_type: &str,
        body: impl Into<Body>,
        idem: Option<&str>,
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(uri);
        for (k, v) in signed.api_headers().iter() {
            builder = builder.header(k, v);
        }
        builder = builder.header(header::CONTENT_TYPE, content_type);
        if let Some(k) = idem.filter(|k| !k.is_empty()) {
            builder = builder.header(super::IDEMPOTENCY_HEADER, format!("console-{k}"));
        }
        let mut req = match builder.body(body.into()) {
            Ok(r) => r,
            Err(e) => {
                return Answer {
                    status: StatusCode::BAD_REQUEST,
                    body: Bytes::from(serde_json::json!({ "error": e.to_string() }).to_string()),
                    replayed: false,
                };
            }
        };
        // Layers of the API that look at the peer see the console's loopback call.
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 0))));
        let resp = match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let replayed = resp.headers().contains_key("idempotent-replayed");
        let body = axum::body::to_bytes(resp.into_body(), ANSWER_BYTES_MAX)
            .await
            .unwrap_or_default();
        Answer { status, body, replayed }
    }

    pub async fn get(&self, signed: &Signed, uri: &str) -> Answer {
        self.call(signed, Method::GET, uri, "application/json", Body::empty(), None)
            .await
    }

    /// A POST without a body (an action named by its URI: revoke, disable, report lost).
    pub async fn post_empty(&self, signed: &Signed, uri: &str, idem: &str) -> Answer {
        self.call(signed, Method::POST, uri, "application/json", Body::empty(), Some(idem))
            .await
    }

    pub async fn post_json(&self, signed: &Signed, method: Method, uri: &str, body: &Value, idem: &str) -> Answer {
        self.call(signed, method, uri, "application/json", body.to_string(), Some(idem))
            .await
    }

    /// The permission check of a page that reads the ledger itself: the API's own
    /// check, so a refusal is counted and audited the same way. The refusal page if
    /// the role may not.
    pub async fn allow(&self, signed: &Signed, p: Permission, action: &str, target: &str) -> Result<Actor, Response> {
        self.admin
            .auth(&signed.api_headers(), p, action, target)
            .await
            .map(|a| a.actor)
            .map_err(|e| self.refusal(signed, e.status, &e.message))
    }

    /// A refusal or failure as a page, with the API's status.
    pub fn refusal(&self, signed: &Signed, status: StatusCode, message: &str) -> Response {
        let ctx = signed.ctx();
        let title = match status {
            StatusCode::FORBIDDEN => ctx.t("无权访问", "Not allowed"),
            StatusCode::NOT_FOUND => ctx.t("未找到", "Not found"),
            s if s.is_server_error() => ctx.t("系统错误", "System error"),
            _ => ctx.t("操作未完成", "Not done"),
        };
        let explain = match status {
            StatusCode::FORBIDDEN => ctx.t(
                "您的角色不能使用此功能。此次访问已记入审计日志。",
                "Your role may not use this. The attempt is in the audit trail.",
            ),
            _ => "",
        };
        html_page(
            status,
            page(
                &ctx,
                title,
                html! {
                    (notice("error", message))
                    @if !explain.is_empty() { p { (explain) } }
                    p { a href=(view::home_of(signed.operator.role)) { (ctx.t("返回首页", "Back to start")) } }
                },
            ),
        )
    }

    /// Audits a sign-in event. Records nobody in particular can cause (unknown names,
    /// locked names) share the unauthenticated budget, so a flood is counted, not
    /// journaled.
    async fn audit_sign_in(&self, actor: Option<Actor>, action: &str, target: String, status: u16, detail: String) {
        if actor.is_none() && !self.admin.may_audit_unauthenticated() {
            metrics::counter!("cardgate_admin_auth_refusals_unaudited_total").increment(1);
            return;
        }
        let rec = AuditRecord {
            id: 0,
            time_ms: 0,
            actor,
            action: action.to_string(),
            target,
            status,
            before: String::new(),
            after: String::new(),
            detail,
        };
        if let Err(e) = self.admin.ledger.audit(rec).await {
            tracing::error!(error = %e, action, "could not audit a console sign-in");
        }
    }
}

// ---- sign-in, sign-out, password --------------------------------------------------------

async fn root(State(c): State<Console>, headers: HeaderMap) -> Response {
    let now = c.admin.ledger.now_ms();
    let signed_in = cookie_value(&headers, SESSION_COOKIE)
        .and_then(|k| c.admin.console.touch(&k, now))
        .and_then(|s| c.admin.ledger.operator(s.operator_id));
    match signed_in {
        Some(op) => Redirect::to(view::home_of(op.role)).into_response(),
        None => Redirect::to("/console/sign-in").into_response(),
    }
}

fn sign_in_form(
    headers: &HeaderMap,
    status: StatusCode,
    next: &str,
    name: &str,
    message: Option<(&str, String)>,
) -> Response {
    let lang = lang_of(headers);
    let ctx = Ctx {
        lang,
        who: None,
        here: format!("/console/sign-in?next={}", view::urlencode(next)),
    };
    let token = random_hex();
    let markup = page(
        &ctx,
        ctx.t("登录", "Sign in"),
        html! {
            @if let Some((kind, text)) = &message { (notice(kind, text)) }
            form.card #sign-in method="post" action="/console/sign-in" {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="next" value=(next);
                p { label { (ctx.t("操作员", "Operator")) " " input #name type="text" name="name" value=(name) autocomplete="username" required; } }
                p { label { (ctx.t("密码", "Password")) " " input #password type="password" name="password" autocomplete="current-password" required; } }
                p { button #sign-in-button type="submit" { (ctx.t("登录", "Sign in")) } }
            }
            p.muted { (ctx.t(
                "脚本请继续使用 API 令牌（Authorization: Bearer）。",
                "Scripts keep using their API token (Authorization: Bearer)."
            )) }
        },
    );
    let mut r = html_page(status, markup);
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(headers, SIGN_IN_COOKIE, token, Some(3600), true),
    );
    r
}

async fn sign_in_page(headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let next = safe_back(q.get("next"));
    let message = q
        .get("bye")
        .map(|_| ("ok", lang_of(&headers).t("已退出。", "Signed out.").to_string()));
    sign_in_form(&headers, StatusCode::OK, &next, "", message)
}

async fn sign_in(
    State(c): State<Console>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<HashMap<String, String>>,
) -> Response {
    let lang = lang_of(&headers);
    let field = |k: &str| f.get(k).map_or("", |v| v.as_str()).to_string();
    let (name, password, next) = (field("name"), field("password"), safe_back(f.get("next")));
    let expected = cookie_value(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_secret(&field("csrf"), &expected) {
        metrics::counter!("cardgate_console_csrf_refusals_total").increment(1);
        let text = lang.t(
            "登录表单已过期，请重新登录。",
            "The sign-in form expired; please sign in again.",
        );
        return sign_in_form(
            &headers,
            StatusCode::FORBIDDEN,
            &next,
            &name,
            Some(("error", text.into())),
        );
    }
    let now = c.admin.ledger.now_ms();
    let tz = c.tz();
    let wrong = lang.t("操作员或密码错误。", "Wrong operator name or password.");
    if name.is_empty() || name.len() > OPERATOR_NAME_BYTES_MAX || password.len() > PASSWORD_BYTES_MAX {
        return sign_in_form(
            &headers,
            StatusCode::UNAUTHORIZED,
            &next,
            "",
            Some(("error", wrong.into())),
        );
    }
    let known = c.admin.ledger.operators().into_iter().find(|o| o.name == name);
    let target = known
        .as_ref()
        .map_or_else(String::new, |o| format!("operator:{}", o.id));
    if let Gate::Locked(until) = c.admin.console.gate(&name, now) {
        metrics::counter!("cardgate_console_sign_ins_total", "outcome" => "locked").increment(1);
        c.audit_sign_in(
            None,
            "console.sign_in",
            target,
            StatusCode::TOO_MANY_REQUESTS.as_u16(),
            format!(
                "refused: the name {name:?} is locked out until {}",
                view::local_time(until, tz)
            ),
        )
        .await;
        let text = format!(
            "{} {}",
            lang.t(
                "失败次数过多，此操作员已被暂时锁定，解锁时间：",
                "Too many failed sign-ins: this name is locked until"
            ),
            view::local_time(until, tz)
        );
        return sign_in_form(
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            &name,
            Some(("error", text)),
        );
    }
    let verdict = match c.admin.ledger.check_password(&name, &password).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "console sign-in could not check a password");
            let text = lang.t("系统错误，请稍后再试。", "System error; try again shortly.");
            return sign_in_form(
                &headers,
                StatusCode::INTERNAL_SERVER_ERROR,
                &next,
                &name,
                Some(("error", text.into())),
            );
        }
    };
    match verdict {
        SignIn::Valid { operator, must_change } => {
            c.admin.console.succeeded(&name);
            metrics::counter!("cardgate_console_sign_ins_total", "outcome" => "ok").increment(1);
            let set_ms = c.admin.ledger.password_set_ms(operator.id);
            let cookie = c.admin.console.create(&operator, must_change, set_ms, now);
            c.audit_sign_in(
                Some(Actor::of(&operator)),
                "console.sign_in",
                format!("operator:{}", operator.id),
                200,
                if must_change {
                    "must choose a new password".into()
                } else {
                    String::new()
                },
            )
            .await;
            let to = if must_change {
                "/console/password".to_string()
            } else if next == "/console" {
                view::home_of(operator.role).to_string()
            } else {
                next
            };
            let mut r = Redirect::to(&to).into_response();
            let h = r.headers_mut();
            h.append(
                header::SET_COOKIE,
                set_cookie(&headers, SESSION_COOKIE, cookie, None, true),
            );
            h.append(
                header::SET_COOKIE,
                set_cookie(&headers, SIGN_IN_COOKIE, String::new(), Some(0), true),
            );
            r
        }
        SignIn::Invalid => {
            let locked = c.admin.console.failed(&name, now);
            metrics::counter!("cardgate_console_sign_ins_total", "outcome" => "failed").increment(1);
            let detail = match locked {
                Some(until) => format!(
                    "wrong name or password for {name:?}; the name is now locked out until {}",
                    view::local_time(until, tz)
                ),
                None => format!("wrong name or password for {name:?}"),
            };
            c.audit_sign_in(known.as_ref().map(Actor::of), "console.sign_in", target, 401, detail)
                .await;
            sign_in_form(
                &headers,
                StatusCode::UNAUTHORIZED,
                &next,
                &name,
                Some(("error", wrong.into())),
            )
        }
    }
}

async fn sign_out(State(c): State<Console>, signed: Signed, headers: HeaderMap, _f: Fields) -> Response {
    c.admin.console.end(&signed.cookie);
    c.audit_sign_in(
        Some(Actor::of(&signed.operator)),
        "console.sign_out",
        format!("operator:{}", signed.operator.id),
        200,
        String::new(),
    )
    .await;
    let mut r = Redirect::to("/console/sign-in?bye=1").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, String::new(), Some(0), true),
    );
    r
}

fn password_form(c: &Console, signed: &Signed, status: StatusCode, message: Option<(&str, String)>) -> Response {
    let ctx = signed.ctx();
    let has = c.admin.ledger.has_password(signed.operator.id);
    html_page(
        status,
        page(
            &ctx,
            ctx.t("修改密码", "Change password"),
            html! {
                @if signed.session.must_change {
                    (notice("warn", ctx.t(
                        "此密码由他人设置，请先设置您自己的新密码。",
                        "This password was set by someone else: choose your own before going on."
                    )))
                }
                @if let Some((kind, text)) = &message { (notice(kind, text)) }
                form.card method="post" action="/console/password" {
                    (ctx.csrf_field())
                    @if has {
                        p { label { (ctx.t("当前密码", "Current password")) " " input type="password" name="current" autocomplete="current-password" required; } }
                    }
                    p { label { (ctx.t("新密码", "New password")) " " input type="password" name="password" autocomplete="new-password" required; } }
                    p { label { (ctx.t("再次输入", "Repeat")) " " input type="password" name="repeat" autocomplete="new-password" required; } }
                    p.muted { (ctx.t("至少 8 个字符。", "At least 8 characters.")) }
                    p { button type="submit" { (ctx.t("保存", "Save")) } }
                }
            },
        ),
    )
}

async fn password_page(State(c): State<Console>, signed: Signed) -> Response {
    password_form(&c, &signed, StatusCode::OK, None)
}

async fn change_password(State(c): State<Console>, signed: Signed, f: Fields) -> Response {
    let lang = signed.lang;
    if f.get("password") != f.get("repeat") {
        let text = lang.t("两次输入的新密码不一致。", "The two new passwords differ.");
        return password_form(
            &c,
            &signed,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(("error", text.into())),
        );
    }
    let mut body = serde_json::json!({ "password": f.get("password") });
    if !f.get("current").is_empty() {
        body["current"] = Value::from(f.get("current"));
    }
    let uri = format!("/api/v1/operators/{}/password", signed.operator.id);
    let a = c.post_json(&signed, Method::POST, &uri, &body, &random_hex()).await;
    if !a.ok() {
        return password_form(&c, &signed, a.status, Some(("error", a.error())));
    }
    c.admin
        .console
        .password_changed(&signed.cookie, c.admin.ledger.password_set_ms(signed.operator.id));
    let mut signed = signed;
    signed.session.must_change = false;
    let text = lang.t(
        "密码已修改；您在其他地方的登录已退出。",
        "Password changed; your sessions elsewhere were signed out.",
    );
    password_form(&c, &signed, StatusCode::OK, Some(("ok", text.into())))
}
