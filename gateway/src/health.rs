//! The metrics listener: `GET /metrics` (Prometheus), `GET /healthz` (the process is
//! alive and serving HTTP) and `GET /readyz` (it can take terminals' money: recovery is
//! done, the journal is writable, and the central store is reachable or its backlog is
//! within bound, with no entry stuck, as the flusher's `FlusherMonitor` reads them). One
//! port, so that one firewall rule and one scrape target cover all three. Bound before
//! recovery, so that /healthz answers and /readyz says "recovering" while a long journal
//! is replayed.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cardgate_central::FlusherMonitor;
use cardgate_ledger::Ledger;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What /readyz looks at; filled in as start-up gets there.
pub struct Readiness {
    /// Weak: at shutdown the last strong handle's drop is what lets the committer
    /// finish, and the listener must not hold it.
    ledger: OnceLock<Weak<Ledger>>,
    central: OnceLock<FlusherMonitor>,
    /// While the central store is unreachable, the most unshipped entries at which the
    /// gateway still calls itself ready (`health.central_backlog_entries_max`).
    central_backlog_entries_max: u64,
}

/// One check's verdict: `None` when it passes, else why not.
pub struct Check {
    pub name: &'static str,
    pub failure: Option<String>,
}

impl Readiness {
    pub fn new(central_backlog_entries_max: u64) -> Arc<Readiness> {
        Arc::new(Readiness {
            ledger: OnceLock::new(),
            central: OnceLock::new(),
            central_backlog_entries_max,
        })
    }

    /// Recovery is done: the ledger holds exactly the durable state.
    pub fn recovered(&self, ledger: &Arc<Ledger>) {
        let _ = self.ledger.set(Arc::downgrade(ledger));
    }

    /// The flusher runs.
    pub fn central_started(&self, monitor: FlusherMonitor) {
        let _ = self.central.set(monitor);
    }

    /// Every check, in order; each names its failure.
    pub fn checks(&self) -> Vec<Check> {
        let check = |name, failure| Check { name, failure };
        let Some(ledger) = self.ledger.get() else {
            return vec![check("recovery", Some("recovering: replaying the journal".to_string()))];
        };
        let Some(ledger) = ledger.upgrade() else {
            return vec![check("recovery", Some("shutting down".to_string()))];
        };
        let mut out = vec![check("recovery", None)];
        let journal = ledger.journal();
        out.push(check(
            "journal",
            journal.is_poisoned().then(|| {
                "the journal is poisoned (a write failed): every decision is refused until restart; see the log"
                    .to_string()
            }),
        ));
        let Some(monitor) = self.central.get() else {
            out.push(check(
                "central",
                Some("the central store flusher has not started".to_string()),
            ));
            return out;
        };
        // Whether the store keeps up (`FlusherHealth::keeping_up`) is not asked here:
        // terminals are served while it lags, and `cardgate_central_keeping_up` says it.
        let health = monitor.health();
        let backlog = health.backlog;
        out.push(check(
            "central",
            (!health.reachable && backlog > self.central_backlog_entries_max).then(|| {
                format!(
                    "the central store is unreachable and {backlog} entries are unshipped (bound {})",
                    self.central_backlog_entries_max
                )
            }),
        ));
        out.push(check(
            "central_stuck_entry",
            health.stuck.map(|s| {
                format!(
                    "the central store refuses entry {} ({}): {}",
                    s.entry_id, s.kind, s.error
                )
            }),
        ));
        out
    }
}

#[derive(Clone)]
struct Served {
    prometheus: PrometheusHandle,
    readiness: Arc<Readiness>,
}

/// Serves the three paths until shutdown; also runs the exporter's upkeep.
pub async fn serve(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    let upkeep = prometheus.clone();
    let upkeep_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => upkeep.run_upkeep(),
                _ = upkeep_shutdown.cancelled() => break,
            }
        }
    });
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .with_state(Served { prometheus, readiness });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "metrics listener failed");
    }
}

async fn metrics(State(s): State<Served>) -> Response {
    // /proc reads: off the runtime's workers.
    match tokio::task::spawn_blocking(move || crate::metrics::render(&s.prometheus)).await {
        Ok(text) => ([("content-type", "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

async fn readyz(State(s): State<Served>) -> Response {
    let checks = s.readiness.checks();
    let ready = checks.iter().all(|c| c.failure.is_none());
    let body = json!({
        "ready": ready,
        "checks": checks.iter().map(|c| json!({
            "name": c.name,
            "ok": c.failure.is_none(),
            "detail": c.failure.as_deref().unwrap_or("ok"),
        })).collect::<Vec<_>>(),
        "failing": checks.iter().filter(|c| c.failure.is_some()).map(|c| c.name).collect::<Vec<_>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cardgate_central::FlusherStatus;
    use cardgate_central::flusher::StuckEntry;
    use cardgate_domain::model::AuditRecord;
    use cardgate_journal::JournalStats;
    use cardgate_journal::{FaultSwitch, FaultyStore};
    use cardgate_ledger::{LedgerConfig, SystemClock};
    use std::sync::atomic::Ordering;

    fn failing(r: &Readiness) -> Vec<(&'static str, String)> {
        r.checks()
            .into_iter()
            .filter_map(|c| c.failure.map(|f| (c.name, f)))
            .collect()
    }

    #[tokio::test]
    async fn readiness_names_each_failing_check() {
        let r = Readiness::new(5);
        assert_eq!(failing(&r).iter().map(|f| f.0).collect::<Vec<_>>(), ["recovery"]);

        let dir = tempfile::tempdir().unwrap();
        let switch = FaultSwitch::default();
        let s = switch.clone();
        let (ledger, committer, _) = Ledger::open_with_store(
            dir.path(),
            LedgerConfig::default(),
            Arc::new(SystemClock),
            move |store| {
                Box::new(FaultyStore {
                    inner: store,
                    switch: s,
                })
            },
        )
        .unwrap();
        r.recovered(&ledger);
        assert_eq!(failing(&r).iter().map(|f| f.0).collect::<Vec<_>>(), ["central"]);

        let status = Arc::new(FlusherStatus::default());
        let journal = Arc::new(JournalStats::default());
        r.central_started(FlusherMonitor::new(
            status.clone(),
            journal.clone(),
            Arc::new(SystemClock),
            Duration::from_secs(10),
        ));
        assert!(failing(&r).is_empty(), "{:?}", failing(&r));

        // Unreachable with a backlog over the bound: not ready. Within it, or up: ready.
        journal.durable_entry_id.store(6, Ordering::Release);
        let f = failing(&r);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0, "central");
        assert!(f[0].1.contains("6 entries are unshipped (bound 5)"), "{}", f[0].1);
        status.cursor.store(1, Ordering::Release);
        assert!(failing(&r).is_empty(), "a backlog of 5 is within the bound");
        journal.durable_entry_id.store(100, Ordering::Release);
        status.up.store(true, Ordering::Release);
        assert!(failing(&r).is_empty(), "a reachable store may lag");

        *status.stuck.lock().unwrap() = Some(StuckEntry {
            entry_id: 42,
            kind: "purchase",
            error: "CHECK constraint failed".into(),
        });
        let f = failing(&r);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0, "central_stuck_entry");
        assert!(f[0].1.contains("entry 42 (purchase)"), "{}", f[0].1);
        *status.stuck.lock().unwrap() = None;

        // A journal write fails: the journal is poisoned and readiness says so.
        switch.set(FaultSwitch::FAIL_APPLY);
        let rec = AuditRecord {
            id: 0,
            time_ms: 0,
            actor: None,
            action: "test".into(),
            target: String::new(),
            status: 200,
            before: String::new(),
            after: String::new(),
            detail: String::new(),
        };
        assert!(ledger.audit(rec).await.is_err());
        let f = failing(&r);
        assert_eq!(f.iter().map(|f| f.0).collect::<Vec<_>>(), ["journal"]);
        assert!(f[0].1.contains("poisoned"), "{}", f[0].1);

        // The readiness does not keep the ledger: the committer finishes when the last
        // handle goes, as shutdown needs.
        drop(ledger);
        committer.join();
        assert_eq!(failing(&r)[0].1, "shutting down");
    }
}
