//! The admin HTTP API (axum) on its own listener: JSON in and out, CSV where a desk
//! hands a file to someone (consumption details, fee lists) or receives one (imports).
//!
//! Every call presents `Authorization: Bearer <token>` (the scheme in any case). No
//! valid token is 401; a role without the endpoint group's permission is 403; both are
//! counted, and audited as `UNAUTHENTICATED_AUDITS_PER_SECOND_MAX` says. Every mutating
//! call runs in its own task, so that a client hanging up cannot cut it between its
//! commit and its audit record, and answers only after both are durable. Bad input is
//! 400 (unreadable) or 422 (a rule says no), with a message, and changes nothing.
//!
//! The listener is guarded before any handler runs: a request without a valid token
//! never has its body read (`guard`), bodies are capped per route (`with_body_limit`),
//! and connections are capped (`CappedListener`), so that whoever can reach the port
//! cannot make the gateway buffer or hold more than those bounds. The console's pages
//! (`console/`) share the listener but not `guard`: a browser brings a session cookie,
//! not a token, and the console checks it before it reads any body.

// The endpoints' shared steps; defined before the modules that use them.
macro_rules! auth {
    ($s:expr, $h:expr, $perm:expr, $action:expr, $target:expr) => {
        match $s.auth(&$h, $perm, $action, &$target).await {
            Ok(actor) => actor,
            Err(e) => return e.into_response(),
        }
    };
}

/// The call's idempotency key (or none), or its refusal as the answer.
macro_rules! key {
    ($h:expr, $action:expr, $target:expr, $extra:expr, $body:expr) => {
        match idempotency_key(&$h, $action, &$target, $extra, &$body) {
            Ok(k) => k,
            Err(e) => return e.into_response(),
        }
    };
}

macro_rules! tryr {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return ApiError::from(e).into_response(),
        }
    };
}

mod console;
mod doors;
mod http;
mod registry;
mod reports;
pub(crate) mod routes;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cardgate_domain::model::AuditRecord;
use cardgate_domain::operator::{Actor, Operator, Permission};
use cardgate_ledger::desk::{Audit, By, IdempotencyKey};
use cardgate_ledger::{Ledger, LedgerError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The largest request body on every route but imports. The API's JSON bodies are a
/// person, a card, an amount, a grant batch: a grant of a few hundred items is ~30 KiB,
/// so 64 KiB fits every real call while a caller cannot make a connection buffer more.
pub const ADMIN_BODY_BYTES_MAX: usize = 64 * 1024;

/// The largest body on the bulk routes: imports, grants and batch cancellations. It is
/// the import's own limit (a whole campus's CSV with long names), which also holds a
/// grant or cancellation of the most items a batch may name (`BATCH_ITEMS_MAX`, a whole
/// campus) at up to 100 bytes an item. Only an authenticated caller gets to send it.
pub const BULK_BODY_BYTES_MAX: usize = cardgate_ledger::import::IMPORT_BYTES_MAX;

/// The most bytes one item of a grant or cancellation batch takes in JSON, for the
/// bound above: `{"person_id": "...", "amount": "150.00"},` with a long person id.
const BATCH_ITEM_BYTES_MAX: usize = 100;

const _: () = assert!(cardgate_domain::rules::input::BATCH_ITEMS_MAX * BATCH_ITEM_BYTES_MAX <= BULK_BODY_BYTES_MAX);

/// Refusals of callers without a valid token that are journaled per second. Anyone who
/// can reach the listener can cause them, so beyond this they are only counted
/// (`cardgate_admin_auth_refusals_unaudited_total`): a flood of bad tokens must not
/// become a flood of journal writes. Refusals of known operators (403) are always
/// audited: they are bounded by the operators' own calls.
pub const UNAUTHENTICATED_AUDITS_PER_SECOND_MAX: u64 = 50;

/// The header a client names a state-changing call with, so that a retry after a lost
/// answer gets the first answer instead of moving money twice (as payment APIs do).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Pause after an accept error that means we are out of a resource (file descriptors,
/// memory): long enough not to spin, short enough that the loop never parks.
const ACCEPT_RESOURCE_BACKOFF_MS: u64 = 20;

/// The one message every 401 carries.
const UNAUTHENTICATED: &str = "a valid bearer token is required";

/// The bearer token of a request. Auth schemes are case-insensitive (RFC 7235, 2.1), so
/// `bearer` and `BEARER` are `Bearer`.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AdminState {
    pub ledger: Arc<Ledger>,
    pub tz_offset_minutes: i32,
    /// (second, audits in it) for unauthenticated refusals.
    pub unauthenticated_audits: Arc<std::sync::Mutex<(i64, u64)>>,
    /// One lock per (operator, idempotency key) while its call runs, so that two copies
    /// of one request sent at once are applied once: the second waits, then finds the
    /// first's answer.
    key_locks: Arc<std::sync::Mutex<KeyLocks>>,
    /// The operator console's sessions (`console/`).
    console: console::Sessions,
    /// Backups and integrity checks.
    pub durability: Arc<crate::integrity::Durability>,
    /// What the attendance sheet judges against (`[attendance]`).
    pub work_hours: cardgate_domain::rules::attendance::WorkHours,
}

type KeyLocks = std::collections::HashMap<(u64, String), Arc<tokio::sync::Mutex<()>>>;

impl AdminState {
    pub fn new(ledger: Arc<Ledger>, tz_offset_minutes: i32) -> AdminState {
        AdminState {
            ledger,
            tz_offset_minutes,
            unauthenticated_audits: Arc::new(std::sync::Mutex::new((0, 0))),
            key_locks: Arc::new(std::sync::Mutex::new(KeyLocks::new())),
            console: console::Sessions::default(),
            durability: Arc::default(),
            work_hours: Default::default(),
        }
    }

    pub fn with_work_hours(mut self, hours: cardgate_domain::rules::attendance::WorkHours) -> AdminState {
        self.work_hours = hours;
        self
    }

    pub fn with_durability(mut self, durability: Arc<crate::integrity::Durability>) -> AdminState {
        self.durability = durability;
        self
    }

    fn key_lock(&self, operator_id: u64, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.key_locks.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.entry((operator_id, key.to_string())).or_default().clone()
    }

    fn release_key_lock(&self, operator_id: u64, key: &str) {
        let mut locks = match self.key_locks.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        let k = (operator_id, key.to_string());
        // Only the map holds it: nobody waits for this key.
        if locks.get(&k).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(&k);
        }
    }

    /// Whether one more unauthenticated refusal may be journaled this second.
    fn may_audit_unauthenticated(&self) -> bool {
        let second = self.ledger.now_ms() / 1000;
        let mut w = match self.unauthenticated_audits.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        if w.0 != second {
            *w = (second, 0);
        }
        w.1 += 1;
        w.1 <= UNAUTHENTICATED_AUDITS_PER_SECOND_MAX
    }
}

/// An error answer: a status and a message, as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> ApiError {
        let status = match &e {
            LedgerError::NotFound { .. } | LedgerError::NotFoundNamed { .. } => StatusCode::NOT_FOUND,
            LedgerError::Exists { .. } => StatusCode::CONFLICT,
            LedgerError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            LedgerError::Journal(_) => StatusCode::SERVICE_UNAVAILABLE,
            LedgerError::Store(_) | LedgerError::Io(..) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if !e.is_caller_fault() {
            tracing::error!(error = %e, "admin operation failed");
        }
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// What a mutating operation answers with and records in its audit record.
pub struct Done {
    pub status: StatusCode,
    pub before: Value,
    pub after: Value,
    pub body: Value,
}

impl Done {
    pub fn ok(before: Value, after: Value, body: Value) -> Done {
        Done {
            status: StatusCode::OK,
            before,
            after,
            body,
        }
    }
}

/// An operator the request authenticated as, and the endpoint group it was let into
/// (for counting refusals a handler decides later, like "only a director may add a
/// director").
pub struct Authed {
    pub actor: Actor,
    pub group: Permission,
}

impl AdminState {
    /// The operator behind the request, if its role may use `permission`. Refusals are
    /// counted and audited before they are answered.
    pub async fn auth(
        &self,
        headers: &HeaderMap,
        permission: Permission,
        action: &str,
        target: &str,
    ) -> Result<Authed, ApiError> {
        let group = permission.as_str();
        match bearer_token(headers).and_then(|t| self.operator_of(t)) {
            None => Err(self
                .refuse(StatusCode::UNAUTHORIZED, group, None, action, target, UNAUTHENTICATED)
                .await),
            Some(op) if !op.role.allows(permission) => Err(self
                .refuse(
                    StatusCode::FORBIDDEN,
                    group,
                    Some(Actor::of(&op)),
                    action,
                    target,
                    "this role may not do that",
                )
                .await),
            Some(op) => {
                metrics::counter!("cardgate_admin_requests_total", "group" => group).increment(1);
                Ok(Authed {
                    actor: Actor::of(&op),
                    group: permission,
                })
            }
        }
    }

    /// Like `auth`, for a read more than one endpoint group may make (the door admin
    /// reads the registry's door groups and controllers). `Authed::group` is the first
    /// of `permissions` the role has, so that the handler can narrow what it shows; a
    /// refusal is counted and audited under the first.
    pub async fn auth_any(
        &self,
        headers: &HeaderMap,
        permissions: &[Permission],
        action: &str,
        target: &str,
    ) -> Result<Authed, ApiError> {
        let Some(&first) = permissions.first() else {
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no permission named"));
        };
        let allowed = bearer_token(headers)
            .and_then(|t| self.operator_of(t))
            .and_then(|op| permissions.iter().copied().find(|p| op.role.allows(*p)));
        self.auth(headers, allowed.unwrap_or(first), action, target).await
    }

    /// The operator behind the request, whatever its role (`whoami`). Its refusals are
    /// counted under their own group, `whoami`, not under any endpoint group.
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Operator, ApiError> {
        match bearer_token(headers).and_then(|t| self.operator_of(t)) {
            Some(op) => {
                metrics::counter!("cardgate_admin_requests_total", "group" => "whoami").increment(1);
                Ok(op)
            }
            None => Err(self
                .refuse(StatusCode::UNAUTHORIZED, "whoami", None, "whoami", "", UNAUTHENTICATED)
                .await),
        }
    }

    /// Counts and audits a refusal at the door (401, 403) and returns its answer.
    async fn refuse(
        &self,
        status: StatusCode,
        group: &'static str,
        actor: Option<Actor>,
        action: &str,
        target: &str,
        message: &str,
    ) -> ApiError {
        count_refusal(status, group);
        if status == StatusCode::UNAUTHORIZED && !self.may_audit_unauthenticated() {
            metrics::counter!("cardgate_admin_auth_refusals_unaudited_total").increment(1);
            return ApiError::new(status, message);
        }
        let rec = AuditRecord {
            id: 0,
            time_ms: 0,
            actor,
            action: action.to_string(),
            target: target.to_string(),
            status: status.as_u16(),
            before: String::new(),
            after: String::new(),
            detail: format!("refused: {message} ({group})"),
        };
        if let Err(e) = self.ledger.audit(rec).await {
            tracing::error!(error = %e, "could not audit a refused admin call");
        }
        ApiError::new(status, message)
    }

    /// Runs a mutating operation in its own task and answers once it and its audit
    /// record are durable. An operation that changes state carries its record (and the
    /// answer kept under the call's idempotency key) in its own journal submission
    /// (`Call::by`); one that changed nothing (refused, a dry run, nothing to do) or a
    /// batch is recorded here. A call repeated with the same idempotency key and request
    /// gets the first answer and changes nothing; with another request, 422.
    pub async fn mutate<F, Fut>(
        &self,
        authed: Authed,
        action: &'static str,
        target: String,
        key: Option<IdempotencyKey>,
        op: F,
    ) -> Response
    where
        F: FnOnce(Arc<Ledger>, Arc<Call>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Done, ApiError>> + Send + 'static,
    {
        let Authed { actor, group } = authed;
        let operator_id = actor.operator_id;
        let lock = key.as_ref().map(|k| self.key_lock(operator_id, &k.key));
        let _held = match &lock {
            Some(l) => Some(l.clone().lock_owned().await),
            None => None,
        };
        if let Some(k) = &key
            && let Some(first) = self.ledger.idempotent_answer(operator_id, &k.key)
        {
            drop(_held);
            drop(lock);
            self.release_key_lock(operator_id, &k.key);
            if first.request_hash != k.request_hash {
                return ApiError::unprocessable(format!(
                    "Idempotency-Key {:?} was used for a different request; use a new key for a new request",
                    k.key
                ))
                .into_response();
            }
            metrics::counter!("cardgate_admin_idempotent_replays_total").increment(1);
            let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK);
            let body = serde_json::from_str::<Value>(&first.body).unwrap_or(Value::Null);
            return (status, [("idempotent-replayed", "true")], Json(body)).into_response();
        }
        let ledger = self.ledger.clone();
        let task_key = key.clone();
        let task = tokio::spawn(async move {
            let call = Arc::new(Call {
                actor,
                action,
                target,
                key: task_key,
                written: AtomicBool::new(false),
            });
            let result = op(ledger.clone(), call.clone()).await;
            let status = match &result {
                Ok(d) => d.status,
                Err(e) => e.status,
            };
            metrics::counter!("cardgate_admin_mutations_total", "action" => action, "status" => status.as_u16().to_string())
                .increment(1);
            // A refusal the operation itself decided ("only a director may add a
            // director") is a refusal like one at the door; its audit record follows.
            if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
                count_refusal(status, group.as_str());
            }
            if result.is_ok() && call.written.load(Ordering::Acquire) {
                return result;
            }
            let (before, after, detail) = match &result {
                Ok(d) => (text(&d.before), text(&d.after), String::new()),
                Err(e) => (String::new(), String::new(), e.message.clone()),
            };
            let rec = AuditRecord {
                id: 0,
                time_ms: 0,
                actor: Some(call.actor.clone()),
                action: action.to_string(),
                target: call.target.clone(),
                status: status.as_u16(),
                before,
                after,
                detail,
            };
            if let Err(e) = ledger.audit(rec).await {
                tracing::error!(error = %e, action, "could not write the audit record");
                return Err(ApiError::from(e));
            }
            // Our own failures are not kept: a retry may succeed.
            if let Some(k) = &call.key
                && !status.is_server_error()
            {
                let body = match &result {
                    Ok(d) => d.body.to_string(),
                    Err(e) => json!({ "error": e.message }).to_string(),
                };
                if let Err(e) = ledger.remember_answer(&call.actor, k, status.as_u16(), body).await {
                    tracing::error!(error = %e, action, "could not keep the answer under its idempotency key");
                    return Err(ApiError::from(e));
                }
            }
            result
        });
        let answer = match task.await {
            Ok(Ok(done)) => (done.status, Json(done.body)).into_response(),
            Ok(Err(e)) => e.into_response(),
            Err(e) => {
                tracing::error!(error = %e, action, "admin operation task failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        };
        drop(_held);
        drop(lock);
        if let Some(k) = &key {
            self.release_key_lock(operator_id, &k.key);
        }
        answer
    }
}

/// The idempotency key of a state-changing call, if it sent one, with a hash of the
/// request (`action`, `target`, anything else that selects what it does, and the body).
pub fn idempotency_key(
    headers: &HeaderMap,
    action: &str,
    target: &str,
    extra: &str,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| ApiError::bad_request("the Idempotency-Key header is not printable ASCII"))?
        .to_string();
    cardgate_domain::rules::input::check_idempotency_key(&key).map_err(|e| ApiError::bad_request(e.0))?;
    let mut h = Sha256::new();
    for part in [action.as_bytes(), target.as_bytes(), extra.as_bytes(), body] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Ok(Some(IdempotencyKey {
        key,
        request_hash: h.finalize().into(),
    }))
}

/// JSON as an audit record keeps it: nothing for null.
pub fn text(v: &Value) -> String {
    if v.is_null() { String::new() } else { v.to_string() }
}

/// One mutating call: who made it, on what, under which idempotency key, and whether
/// its record is written.
pub struct Call {
    pub actor: Actor,
    pub action: &'static str,
    pub target: String,
    pub key: Option<IdempotencyKey>,
    written: AtomicBool,
}

impl Call {
    /// The operator and audit record for a ledger operation whose success answers
    /// `status` with the body `answer` gives, and whose before and after `describe`
    /// gives; both from the operation's result.
    pub fn by<'a, T>(
        &'a self,
        status: StatusCode,
        describe: &'a (dyn Fn(&T) -> (String, String) + Send + Sync),
        answer: &'a (dyn Fn(&T) -> String + Send + Sync),
    ) -> By<'a, T> {
        By::audited(
            &self.actor,
            Audit {
                action: self.action,
                target: &self.target,
                status: status.as_u16(),
                describe,
                written: &self.written,
                answer,
                idempotency: self.key.as_ref(),
            },
        )
    }
}

fn count_refusal(status: StatusCode, group: &'static str) {
    metrics::counter!(
        "cardgate_admin_auth_refusals_total",
        "status" => status.as_u16().to_string(),
        "group" => group
    )
    .increment(1);
}

/// Runs before routing, for every request: one without a valid token goes on with an
/// empty body, so the handler's own `auth` answers 401 (counted and audited with its
/// endpoint group) and the body the caller sent is never read. Checking only that
/// *some* operator holds the token is enough here; the role is the handler's business.
pub async fn guard(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let known = bearer_token(req.headers()).is_some_and(|t| state.operator_of(t).is_some());
    if known {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    // Dropping the body unread: hyper then closes the connection after the answer
    // instead of reading the rest of it.
    drop(body);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    next.run(Request::from_parts(parts, Body::empty())).await
}

/// Refuses, for every endpoint on the listener, a query that names a parameter twice: 400
/// naming it. Handlers read a map with one value per name, and a repeated filter would
/// silently keep its last value (an export of door 2 asked for as doors 1 and 2). A
/// request to the API without a valid token goes on to its handler's 401, which is
/// counted and audited, without its query: the refusal's record names none of it.
pub async fn single_params(State(state): State<AdminState>, mut req: Request, next: Next) -> Response {
    let repeated = req.uri().query().and_then(self::http::repeated_param);
    let Some(name) = repeated else {
        return next.run(req).await;
    };
    let api = req.uri().path().starts_with("/api/");
    let known = bearer_token(req.headers()).is_some_and(|t| state.operator_of(t).is_some());
    if api
        && !known
        && let Ok(bare) = req.uri().path().parse()
    {
        *req.uri_mut() = bare;
        return next.run(req).await;
    }
    ApiError::bad_request(format!(
        "parameter {name:?} is given more than once: give each parameter once"
    ))
    .into_response()
}

/// `router`'s routes accept bodies of at most `max` bytes: a declared length above it is
/// refused before anything is read, a streamed body when it passes `max`; both 413 with
/// a JSON error.
pub fn with_body_limit<S: Clone + Send + Sync + 'static>(router: Router<S>, max: usize) -> Router<S> {
    router
        .layer(DefaultBodyLimit::max(max))
        .layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            limit_body(max, req, next)
        }))
}

async fn limit_body(max: usize, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than this endpoint takes ({max} bytes)"),
        )
        .into_response()
    };
    if declared.is_some_and(|n| n > max as u64) {
        return too_large();
    }
    let response = next.run(req).await;
    // axum's own refusal of a streamed body past the limit is plain text.
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return too_large();
    }
    response
}

/// The admin listener with a cap on connections held at once. A slot is taken before
/// accept, so at the cap new connections wait in the kernel's backlog and cost nothing
/// here; it is given back when the connection closes.
pub struct CappedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    open: Arc<AtomicUsize>,
}

impl CappedListener {
    pub fn new(inner: TcpListener, connections_max: usize) -> CappedListener {
        CappedListener {
            inner,
            slots: Arc::new(Semaphore::new(connections_max)),
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        let Ok(permit) = self.slots.clone().acquire_owned().await else {
            // The semaphore is never closed; if it were, accepting nothing is right.
            return std::future::pending().await;
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
                    metrics::gauge!("cardgate_admin_connections").set(open as f64);
                    return (
                        CappedStream {
                            inner: stream,
                            open: self.open.clone(),
                            _slot: permit,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    metrics::counter!("cardgate_admin_accept_errors_total").increment(1);
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) {
                        tracing::warn!(error = %e, "admin accept failed: out of resources; backing off");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_RESOURCE_BACKOFF_MS)).await;
                    } else {
                        tracing::debug!(error = %e, "admin accept failed");
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An admin connection holding its slot until it is dropped.
pub struct CappedStream {
    inner: TcpStream,
    open: Arc<AtomicUsize>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for CappedStream {
    fn drop(&mut self) {
        let open = self.open.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        metrics::gauge!("cardgate_admin_connections").set(open as f64);
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves the admin API until shutdown, holding at most `connections_max` connections;
/// on shutdown it stops accepting and waits for the calls in flight.
pub async fn serve(listener: TcpListener, state: AdminState, connections_max: usize, shutdown: CancellationToken) {
    let app = routes::router(state.clone())
        .merge(console::router(state.clone()))
        .layer(axum::middleware::from_fn_with_state(state, single_params))
        .layer(axum::middleware::from_fn(crate::metrics::track_admin_http));
    let listener = CappedListener::new(listener, connections_max);
    let served = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin listener failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_must_be_there() {
        for v in [
            "Bearer cg_1",
            "bearer cg_1",
            "BEARER cg_1",
            "bEaReR   cg_1 ",
            "  Bearer cg_1",
        ] {
            assert_eq!(bearer_token(&with_auth(v)), Some("cg_1"), "{v:?}");
        }
        for v in ["Basic cg_1", "Bearer", "Bearer   ", "Bearercg_1", "cg_1"] {
            assert_eq!(bearer_token(&with_auth(v)), None, "{v:?}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    /// What OPERATIONS.md tells operators about the listener's limits must be what the
    /// code does.
    #[test]
    fn operations_doc_states_the_limits_the_code_enforces() {
        let doc = include_str!("../../../docs/OPERATIONS.md");
        assert!(
            doc.contains(&format!("{UNAUTHENTICATED_AUDITS_PER_SECOND_MAX} per second")),
            "the audit cap for 401s"
        );
        assert!(
            doc.contains(&format!("{} KiB", ADMIN_BODY_BYTES_MAX / 1024)),
            "the body limit"
        );
        assert!(
            doc.contains(&format!("{} MiB", BULK_BODY_BYTES_MAX / (1024 * 1024))),
            "the bulk body limit"
        );
        assert!(
            doc.contains(&format!(
                "`limits.admin_connections_max` ({})",
                crate::config::ADMIN_CONNECTIONS_DEFAULT_MAX
            )),
            "the connection cap"
        );
        assert!(!doc.contains("Both are counted (`cardgate_admin_auth_refusals_total{status,group}`) and written"));
    }
}
