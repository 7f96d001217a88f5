//! `cardgate serve`: start-up and shutdown order.
//!
//! Start-up: bind every listener, make sure the data directory is usable, parse the
//! central store's URL (`startup.rs`: any failure is one line and nothing is left
//! behind), then recover the ledger, start the flusher, and only then serve. Shutdown:
//! the phases of `shutdown.rs`, driven by `Running` below.

use std::sync::Arc;
use std::time::Duration;

use cardgate_central::flusher::JournalSource;
use cardgate_central::{Flusher, FlusherHandle};
use cardgate_journal::CommitterHandle;
use cardgate_ledger::demo::{DemoCampus, ensure_demo};
use cardgate_ledger::{Ledger, LedgerConfig, SystemClock};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use cardgate_domain::clock::business_day;
use cardgate_domain::model::AuditRecord;

use crate::config::{Config, parse_time_of_day};
use crate::integrity::Durability;
use crate::shutdown::{Deadlines, Phase, PhaseCell, Stages};
use crate::startup::{self, ListenerKind, StartError};

pub struct ServeOptions {
    pub demo: bool,
}

/// How the daemon ended, when it did not end well.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start: {0}")]
    Start(#[from] StartError),
    #[error(
        "the committer did not finish within its {}-ms deadline: the final checkpoint may be missing (the next \
         start replays the journal instead)",
        crate::shutdown::COMMITTER_JOIN_MS
    )]
    CommitterStuck,
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub async fn serve(config: Config, opts: ServeOptions) -> Result<(), ServeError> {
    let phase = PhaseCell::default();
    let signals = Signals::install();
    config.validate().map_err(StartError::from)?;
    let mut listeners = startup::bind_listeners(&config)?;
    // Parsing the URL opens nothing, so a bad one also leaves no data directory behind.
    let central = startup::central_store(&config)?;
    let terminal_key = config.terminal_key(opts.demo).map_err(StartError::from)?;
    startup::prepare_data_dir(&config.data_dir)?;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    let prometheus = crate::metrics::install().map_err(|e| StartError::Other(format!("metrics: {e}")))?;
    phase.set(Phase::Running);
    // Said once every start-up check passed: a start that fails says only why.
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("CARDGATE_GIT_COMMIT"),
        business_time_zone = %format!("UTC{}", crate::logging::utc_offset(config.tz_offset_minutes)),
        "cardgate starting; log times are in the business time zone, offset written"
    );
    // Served before recovery: /healthz answers and /readyz says "recovering" while it
    // runs. It outlives every shutdown phase, so that `cardgate_shutdown_phase` can be
    // scraped while the gateway stops.
    let readiness = crate::health::Readiness::new(config.health.central_backlog_entries_max);
    let metrics_stop = CancellationToken::new();
    let mut metrics_task = None;
    if let Some(listener) = listeners.metrics.take() {
        log_listening(ListenerKind::Metrics, &listener);
        metrics_task = Some(tokio::spawn(crate::health::serve(
            listener,
            prometheus,
            readiness.clone(),
            metrics_stop.clone(),
        )));
    }

    let ledger_config = LedgerConfig {
        tz_offset_minutes: config.tz_offset_minutes,
        terminal_key,
        offline: config.offline.limits(),
        ..LedgerConfig::default()
    };
    let data_dir = config.data_dir.clone();
    let opened = tokio::task::spawn_blocking(move || Ledger::open(&data_dir, ledger_config, Arc::new(SystemClock)))
        .await
        .map_err(|e| StartError::Other(format!("recovery task: {e}")))?;
    let (ledger, committer, stats) = opened.map_err(|e| {
        // sled's own words ("could not acquire lock ... WouldBlock") say nothing to an
        // operator who started a second gateway on the same directory.
        let reason = if e.to_string().contains("could not acquire lock") {
            "it is in use by a running cardgate (one gateway per data directory): stop that one first".to_string()
        } else {
            e.to_string()
        };
        StartError::Ledger {
            path: config.data_dir.clone(),
            reason,
        }
    })?;
    let locked = ledger.locked_terminals();
    if locked > 0 {
        return Err(StartError::Other(format!(
            "{locked} terminals' keys are sealed in {} and no terminal key is configured: set \
             CARDGATE_TERMINAL_KEY or terminal_key_file (the key they were sealed with)",
            config.data_dir.display()
        ))
        .into());
    }
    tracing::info!(
        checkpoint_id = stats.checkpoint_id,
        replayed = stats.replayed,
        accounts = stats.accounts,
        cards = stats.cards,
        terminals = stats.terminals,
        next_entry_id = stats.next_entry_id,
        millis = stats.millis as u64,
        load_millis = stats.load_millis as u64,
        replay_millis = stats.replay_millis as u64,
        data_dir = %config.data_dir.display(),
        "recovered"
    );
    readiness.recovered(&ledger);
    let started_ms = ledger.now_ms();
    // From here on the ledger is open: every return goes through `Running`'s shutdown,
    // or drops the ledger and its committer, which finish on their own.
    crate::integrity::register_metrics();
    let restore_note = ledger
        .take_restore_note()
        .map_err(|e| StartError::Other(format!("reading the restore note: {e}")))?;
    if let Some(note) = restore_note {
        // The first start after `cardgate restore`: on the record before anything else.
        tracing::warn!(restore = %note, "this data directory was restored from a backup");
        ledger
            .audit(AuditRecord {
                id: 0,
                time_ms: 0,
                actor: None,
                action: "data.restore".into(),
                target: "data".into(),
                status: 200,
                before: String::new(),
                after: note,
                detail: format!("restored into {}", config.data_dir.display()),
            })
            .await
            .map_err(|e| StartError::Other(format!("recording the restore in the audit trail: {e}")))?;
    }
    ledger.set_door_clock_drift_max_ms(config.doors.clock_drift_max_ms);
    if opts.demo {
        let campus = DemoCampus {
            accounts: config.demo.accounts,
            pos_terminals: config.demo.pos_terminals,
            balance_fen: config.demo.balance_fen,
        };
        let created = ensure_demo(&ledger, &campus)
            .await
            .map_err(|e| StartError::Other(format!("creating the demo campus: {e}")))?;
        if created {
            tracing::info!(
                accounts = campus.accounts,
                pos_terminals = campus.pos_terminals,
                "created the demo campus"
            );
        }
        let doors = cardgate_ledger::demo::ensure_demo_doors(
            &ledger,
            config.demo.door_controllers,
            config.demo.attendance_clocks,
        )
        .await
        .map_err(|e| StartError::Other(format!("creating the demo campus's doors: {e}")))?;
        if doors {
            tracing::info!(
                door_controllers = config.demo.door_controllers,
                attendance_clocks = config.demo.attendance_clocks,
                "created the demo campus's doors"
            );
        }
    }

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let control = match crate::control::bind(&config.data_dir) {
        Ok((listener, path)) => {
            tasks.spawn(crate::control::serve(listener, path, ledger.clone(), shutdown.clone()));
            true
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "no control socket in the data directory: `cardgate operator` commands need the gateway stopped"
            );
            false
        }
    };
    if ledger.operators().is_empty() && config.admin_listen.is_some() {
        tracing::info!(
            "no operators yet: create the first with `cardgate operator add NAME --role director --data-dir {}`{}; it \
             prints the token the admin API wants as `Authorization: Bearer TOKEN`",
            config.data_dir.display(),
            if control {
                " (works while the gateway runs)"
            } else {
                " with the gateway stopped"
            }
        );
    }

    let central_runtime = CentralRuntime::start()?;
    {
        let url = config.central.url.clone();
        let store = central.describe();
        central_runtime.spawn(async move {
            let found = startup::probe_central(url.as_deref()).await;
            startup::log_probe(&store, &found);
        });
    }
    // The integrity check (and the business-day reports) read the store over connections
    // of their own, so that a long check never holds the flusher's.
    let durability = Arc::new(Durability {
        backup_dir: config.backup.dir.clone(),
        central: Some(Arc::new(startup::central_store(&config)?)),
        ..Durability::default()
    });
    tracing::info!(backend = central.backend(), store = %central.describe(), "central store");
    let flusher = {
        let _on_its_runtime = central_runtime.enter();
        let source = JournalSource {
            db: ledger.db().clone(),
            stats: ledger.journal().stats.clone(),
            gateway_id: ledger.gateway_id(),
            clock: ledger.clock(),
        };
        Flusher::start(source, central, config.central.flusher())
            .map_err(|e| StartError::Other(format!("reading the central store cursor from sled: {e}")))?
    };

    readiness.central_started(flusher.monitor());
    let sampled = crate::metrics::Sampled {
        ledger: ledger.clone(),
        central: flusher.monitor(),
        data_dir: config.data_dir.clone(),
        started_ms,
        terminal_offline_after: Duration::from_secs(config.health.terminal_offline_after_s),
    };
    tasks.spawn(crate::metrics::sample(sampled, shutdown.clone()));
    tasks.spawn(durability_schedule(
        ledger.clone(),
        durability.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    // Before the terminal listener, so that whoever waits for "terminals" in the log
    // (the e2e harness) has seen every other listener by then.
    if let Some(listener) = listeners.admin {
        log_listening(ListenerKind::Admin, &listener);
        let state = crate::admin::AdminState::new(ledger.clone(), config.tz_offset_minutes)
            .with_durability(durability.clone())
            .with_work_hours(config.attendance.work_hours().unwrap_or_default());
        tasks.spawn(crate::admin::serve(
            listener,
            state,
            config.limits.admin_connections_max,
            shutdown.clone(),
        ));
    }
    log_listening(ListenerKind::Terminals, &listeners.terminals);
    let server = tokio::spawn(crate::server::run(
        listeners.terminals,
        ledger.clone(),
        Arc::new(config.limits.clone()),
        shutdown.clone(),
    ));

    signals.wait().await;
    let mut running = Running {
        shutdown,
        server: Some(server),
        tasks,
        flusher: Some(flusher),
        central_runtime,
        ledger: Some(ledger),
        committer: Some(committer),
    };
    let outcome = crate::shutdown::run(&mut running, Deadlines::of(&config), &phase).await;
    metrics_stop.cancel();
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    if outcome.committer_finished {
        Ok(())
    } else {
        Err(ServeError::CommitterStuck)
    }
}

fn log_listening(kind: ListenerKind, listener: &tokio::net::TcpListener) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(kind = kind.name(), addr = %addr, "listening"),
        Err(e) => tracing::info!(kind = kind.name(), error = %e, "listening"),
    }
}

/// The central store's runtime, shut down without blocking whenever it is dropped: a
/// runtime dropped inside another's async context panics ("Cannot drop a runtime in a
/// context where blocking is not allowed"), which is how a failed start used to end.
struct CentralRuntime(Option<tokio::runtime::Runtime>);

impl CentralRuntime {
    /// The flusher gets a runtime and a thread of its own: building a batch of
    /// thousands of rows is milliseconds of CPU, and on the terminals' two runtime
    /// workers it held up every connection scheduled behind it (p99 of terminals'
    /// answers measured ~10× p50 with the flusher there). On its own thread the kernel
    /// time-slices it instead.
    fn start() -> Result<CentralRuntime, StartError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cardgate-central")
            .enable_all()
            .build()
            .map(|rt| CentralRuntime(Some(rt)))
            .map_err(|e| StartError::Other(format!("starting the central store's runtime: {e}")))
    }

    fn enter(&self) -> Option<tokio::runtime::EnterGuard<'_>> {
        self.0.as_ref().map(|rt| rt.enter())
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(rt) = &self.0 {
            rt.spawn(f);
        }
    }

    fn stop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for CentralRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Everything a running daemon must stop, phase by phase.
struct Running {
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    /// Admin listener, control socket, gauge sampler: each holds a ledger handle.
    tasks: JoinSet<()>,
    flusher: Option<FlusherHandle>,
    central_runtime: CentralRuntime,
    ledger: Option<Arc<Ledger>>,
    committer: Option<CommitterHandle>,
}

impl Stages for Running {
    fn stop_accepting(&mut self) {
        self.shutdown.cancel();
    }

    async fn drain_sessions(&mut self, deadline: Duration) -> bool {
        // server::run waits for its own connections, bounded by the same grace.
        let server = self.server.take();
        let tasks = &mut self.tasks;
        let all = async {
            if let Some(s) = server {
                let _ = s.await;
            }
            while tasks.join_next().await.is_some() {}
        };
        let drained = tokio::time::timeout(deadline, all).await.is_ok();
        if !drained {
            // Their ledger handles would keep the committer from finishing.
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        drained
    }

    async fn central_flush(&mut self, deadline: Duration) -> u64 {
        let unshipped = match self.flusher.take() {
            Some(f) => f.shutdown(deadline).await,
            None => 0,
        };
        self.central_runtime.stop();
        unshipped
    }

    async fn committer(&mut self, deadline: Duration) -> bool {
        // Every connection is gone; dropping the last ledger handle lets the committer
        // drain its queue, write the final checkpoint and exit.
        drop(self.ledger.take());
        let Some(committer) = self.committer.take() else {
            return true;
        };
        let joined = tokio::task::spawn_blocking(move || committer.join());
        tokio::time::timeout(deadline, joined).await.is_ok()
    }
}

/// SIGTERM and SIGINT (Ctrl-C), caught from the start of `serve`: a signal that comes
/// during start-up (a test or a service manager stopping a daemon that just announced its
/// listeners) is held and starts the shutdown once start-up is done, instead of killing
/// the process with the default action.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let catch = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, signal = name, "cannot catch the signal");
                    None
                }
            };
            Signals {
                term: catch(SignalKind::terminate(), "SIGTERM"),
                int: catch(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.term) => {},
                _ = next(&mut self.int) => {},
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How often the schedule looks at the clock.
const SCHEDULE_TICK: Duration = Duration::from_secs(30);

/// The directory under `backup.dir` that scheduled backups go to (and that `backup.keep`
/// prunes); backups made by hand are never removed.
pub const SCHEDULED_BACKUPS: &str = "scheduled";

/// A daily job at a local time: due once a day, at the first tick at or after it. A job
/// whose time already passed today when the gateway starts waits for tomorrow.
struct Daily {
    at_minute: u32,
    done_day: i32,
}

impl Daily {
    /// `None` for no schedule (no time, or `"off"`).
    fn new(at: Option<&str>, now_ms: i64, tz: i32) -> Option<Daily> {
        let at_minute = parse_time_of_day(at?)?;
        let today = business_day(now_ms, tz);
        let passed = minute_of_day(now_ms, tz) >= at_minute;
        Some(Daily {
            at_minute,
            done_day: if passed { today } else { today - 1 },
        })
    }

    fn due(&mut self, now_ms: i64, tz: i32) -> bool {
        let today = business_day(now_ms, tz);
        if today > self.done_day && minute_of_day(now_ms, tz) >= self.at_minute {
            self.done_day = today;
            return true;
        }
        false
    }
}

fn minute_of_day(ms: i64, tz: i32) -> u32 {
    ((ms + i64::from(tz) * 60_000).rem_euclid(86_400_000) / 60_000) as u32
}

/// Closes business days, and runs the daily backup and integrity check when due.
async fn durability_schedule(
    ledger: Arc<Ledger>,
    durability: Arc<Durability>,
    config: Config,
    shutdown: CancellationToken,
) {
    let tz = config.tz_offset_minutes;
    let mut check = Daily::new(config.integrity.daily_at.as_deref(), ledger.now_ms(), tz);
    let mut backup = Daily::new(config.backup.daily_at.as_deref(), ledger.now_ms(), tz);
    let mut tick = tokio::time::interval(SCHEDULE_TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = ledger.close_days().await {
            tracing::error!(error = %e, "closing the business day failed; retrying");
        }
        let now = ledger.now_ms();
        if let (Some(b), Some(dir)) = (backup.as_mut(), &config.backup.dir)
            && b.due(now, tz)
        {
            scheduled_backup(&ledger, &durability, &dir.join(SCHEDULED_BACKUPS), config.backup.keep).await;
        }
        if let Some(c) = check.as_mut()
            && c.due(now, tz)
        {
            let (status, after, detail) = match durability.check(&ledger).await {
                Ok(r) => (
                    200,
                    serde_json::json!({ "ok": r.ok, "summary": r.summary(), "counts": r.counts }).to_string(),
                    "scheduled".to_string(),
                ),
                Err(e) => (500, String::new(), format!("scheduled: {e}")),
            };
            audit_scheduled(&ledger, "integrity.check", "integrity", status, after, detail).await;
        }
    }
}

async fn scheduled_backup(ledger: &Ledger, durability: &Durability, dir: &std::path::Path, keep: usize) {
    let _one = durability.backing_up.lock().await;
    let (status, after, detail) = match ledger.backup(dir).await {
        Ok(done) => {
            tracing::info!(path = %done.path.display(), entry_id = done.manifest.entry_id, "scheduled backup written");
            if keep > 0 {
                remove_old_backups(dir, keep);
            }
            (
                200,
                serde_json::json!({
                    "path": done.path.display().to_string(),
                    "entry_id": done.manifest.entry_id,
                    "entry_hash": done.manifest.entry_hash,
                })
                .to_string(),
                "scheduled".to_string(),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, dir = %dir.display(), "scheduled backup failed");
            (500, String::new(), format!("scheduled: {e}"))
        }
    };
    audit_scheduled(ledger, "backup.create", "backups", status, after, detail).await;
}

/// Keeps the newest `keep` complete backups in `dir` (their names sort by time).
fn remove_old_backups(dir: &std::path::Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut backups: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with("cardgate-backup-")
                && e.path().join(cardgate_ledger::backup::MANIFEST_FILE).is_file()
        })
        .map(|e| e.path())
        .collect();
    backups.sort();
    let old = backups.len().saturating_sub(keep);
    for p in backups.into_iter().take(old) {
        match std::fs::remove_dir_all(&p) {
            Ok(()) => tracing::info!(path = %p.display(), "old scheduled backup removed"),
            Err(e) => tracing::warn!(error = %e, path = %p.display(), "could not remove an old backup"),
        }
    }
}

async fn audit_scheduled(ledger: &Ledger, action: &str, target: &str, status: u16, after: String, detail: String) {
    let rec = AuditRecord {
        id: 0,
        time_ms: 0,
        actor: None,
        action: action.into(),
        target: target.into(),
        status,
        before: String::new(),
        after,
        detail,
    };
    if let Err(e) = ledger.audit(rec).await {
        tracing::error!(error = %e, action, "could not audit a scheduled run");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daily_job_runs_once_a_day_at_its_local_time() {
        // 2026-11-28 00:00 in UTC+8.
        let midnight = 1_795_881_600_000 - 86_400_000;
        let minute = 60_000;
        let mut d = Daily::new(Some("03:30"), midnight + 60 * minute, 480).unwrap();
        assert!(!d.due(midnight + 209 * minute, 480), "03:29");
        assert!(d.due(midnight + 210 * minute, 480), "03:30");
        assert!(!d.due(midnight + 211 * minute, 480), "once");
        assert!(!d.due(midnight + 1439 * minute, 480));
        assert!(
            d.due(midnight + 1440 * minute + 300 * minute, 480),
            "the next day, late"
        );
        // Started after today's time: tomorrow.
        let mut late = Daily::new(Some("03:30"), midnight + 600 * minute, 480).unwrap();
        assert!(!late.due(midnight + 601 * minute, 480));
        assert!(late.due(midnight + 1440 * minute + 210 * minute, 480));
        assert!(Daily::new(None, midnight, 480).is_none());
        assert!(Daily::new(Some("off"), midnight, 480).is_none());
    }
}
