//! The admin HTTP API (axum) on its own listener: JSON in and out, CSV where a desk
//! hands a file to someone (consumption details, fee lists) or receives one (imports).
//!
//! Every call presents `Authorization: Bearer <token>`. No valid token is 401; a role
//! without the endpoint group's permission is 403; both are counted and audited. Every
//! mutating call runs in its own task, so that a client hanging up cannot cut it between
//! its commit and its audit record, and answers only after both are durable. Bad input
//! is 400 (unreadable) or 422 (a rule says no), with a message, and changes nothing.

mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cardgate_domain::model::AuditRecord;
use cardgate_domain::operator::{Actor, Permission};
use cardgate_ledger::desk::{Audit, By, IdempotencyKey};
use cardgate_ledger::{Ledger, LedgerError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The largest request body: a CSV import of a whole campus with long names.
pub const ADMIN_BODY_BYTES_MAX: usize = cardgate_ledger::import::IMPORT_BYTES_MAX;

/// Refusals of callers without a valid token that are journaled per second. Anyone who
/// can reach the listener can cause them, so beyond this they are only counted
/// (`cardgate_admin_auth_refusals_unaudited_total`): a flood of bad tokens must not
/// become a flood of journal writes. Refusals of known operators (403) are always
/// audited: they are bounded by the operators' own calls.
pub const UNAUTHENTICATED_AUDITS_PER_SECOND_MAX: u64 = 50;

/// The header a client names a state-changing call with, so that a retry after a lost
/// answer gets the first answer instead of moving money twice (as payment APIs do).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

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
    /// Backups and integrity checks.
    pub durability: Arc<crate::integrity::Durability>,
}

type KeyLocks = std::collections::HashMap<(u64, String), Arc<tokio::sync::Mutex<()>>>;

impl AdminState {
    pub fn new(ledger: Arc<Ledger>, tz_offset_minutes: i32) -> AdminState {
        AdminState {
            ledger,
            tz_offset_minutes,
            unauthenticated_audits: Arc::new(std::sync::Mutex::new((0, 0))),
            key_locks: Arc::new(std::sync::Mutex::new(KeyLocks::new())),
            durability: Arc::default(),
        }
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
            LedgerError::NotFound { .. } => StatusCode::NOT_FOUND,
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

impl AdminState {
    /// The operator behind the request, if its role may use `permission`. Refusals are
    /// counted and audited before they are answered.
    pub async fn auth(
        &self,
        headers: &HeaderMap,
        permission: Permission,
        action: &str,
        target: &str,
    ) -> Result<Actor, ApiError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let op = token.and_then(|t| self.ledger.authenticate(t));
        let (status, actor, message) = match op {
            None => (StatusCode::UNAUTHORIZED, None, "a valid bearer token is required"),
            Some(op) if !op.role.allows(permission) => {
                (StatusCode::FORBIDDEN, Some(Actor::of(&op)), "this role may not do that")
            }
            Some(op) => {
                metrics::counter!("cardgate_admin_requests_total", "group" => permission.as_str()).increment(1);
                return Ok(Actor::of(&op));
            }
        };
        metrics::counter!(
            "cardgate_admin_auth_refusals_total",
            "status" => status.as_u16().to_string(),
            "group" => permission.as_str()
        )
        .increment(1);
        if status == StatusCode::UNAUTHORIZED && !self.may_audit_unauthenticated() {
            metrics::counter!("cardgate_admin_auth_refusals_unaudited_total").increment(1);
            return Err(ApiError::new(status, message));
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
            detail: format!("refused: {message} ({})", permission.as_str()),
        };
        if let Err(e) = self.ledger.audit(rec).await {
            tracing::error!(error = %e, "could not audit a refused admin call");
        }
        Err(ApiError::new(status, message))
    }

    /// Runs a mutating operation in its own task and answers once it and its audit
    /// record are durable. An operation that changes state carries its record (and the
    /// answer kept under the call's idempotency key) in its own journal submission
    /// (`Call::by`); one that changed nothing (refused, a dry run, nothing to do) or a
    /// batch is recorded here. A call repeated with the same idempotency key and request
    /// gets the first answer and changes nothing; with another request, 422.
    pub async fn mutate<F, Fut>(
        &self,
        actor: Actor,
        action: &'static str,
        target: String,
        key: Option<IdempotencyKey>,
        op: F,
    ) -> Response
    where
        F: FnOnce(Arc<Ledger>, Arc<Call>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Done, ApiError>> + Send + 'static,
    {
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

/// Serves the admin API until shutdown.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let app = routes::router(state);
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin listener failed");
    }
}
