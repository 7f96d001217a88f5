//! `cardgate serve`: start-up and shutdown order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cardgate_central::flusher::JournalSource;
use cardgate_central::{CentralStore, Flusher, FlusherStatus};
use cardgate_ledger::demo::{DemoCampus, ensure_demo};
use cardgate_ledger::{Ledger, LedgerConfig, SystemClock};
use tokio_util::sync::CancellationToken;

use cardgate_domain::clock::business_day;
use cardgate_domain::model::AuditRecord;

use crate::config::{Config, parse_time_of_day};
use crate::integrity::Durability;

/// How long the committer gets to finish after the last connection closed.
const COMMITTER_JOIN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ServeOptions {
    pub demo: bool,
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub async fn serve(config: Config, opts: ServeOptions) -> anyhow::Result<()> {
    config.validate()?;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    let prometheus = crate::metrics::install()?;
    let shutdown = CancellationToken::new();

    let ledger_config = LedgerConfig {
        tz_offset_minutes: config.tz_offset_minutes,
        terminal_key: config.terminal_key(opts.demo)?,
        ..LedgerConfig::default()
    };
    let data_dir = config.data_dir.clone();
    let (ledger, committer, stats) =
        tokio::task::spawn_blocking(move || Ledger::open(&data_dir, ledger_config, Arc::new(SystemClock)))
            .await?
            .with_context(|| format!("opening the ledger in {}", config.data_dir.display()))?;
    let locked = ledger.locked_terminals();
    if locked > 0 {
        anyhow::bail!(
            "{locked} terminals' keys are sealed in {} and no terminal key is configured: set \
             CARDGATE_TERMINAL_KEY or terminal_key_file (the key they were sealed with)",
            config.data_dir.display()
        );
    }
    tracing::info!(
        checkpoint_id = stats.checkpoint_id,
        replayed = stats.replayed,
        accounts = stats.accounts,
        cards = stats.cards,
        terminals = stats.terminals,
        next_entry_id = stats.next_entry_id,
        millis = stats.millis as u64,
        data_dir = %config.data_dir.display(),
        "recovered"
    );
    crate::integrity::register_metrics();
    if let Some(note) = ledger.take_restore_note().context("reading the restore note")? {
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
            .await?;
    }
    if opts.demo {
        let campus = DemoCampus {
            accounts: config.demo.accounts,
            pos_terminals: config.demo.pos_terminals,
            balance_fen: config.demo.balance_fen,
        };
        if ensure_demo(&ledger, &campus).await? {
            tracing::info!(
                accounts = campus.accounts,
                pos_terminals = campus.pos_terminals,
                "created the demo campus"
            );
        }
    }

    // The central store is opened without connecting: terminals are served whether or
    // not it is up, and the flusher connects (and migrates the schema) when it can.
    let open_central = || match &config.central.url {
        Some(url) => CentralStore::open(url).context("the central store URL"),
        None => Ok(CentralStore::open_sqlite_file(&config.data_dir.join("central.db"))),
    };
    let central = open_central()?;
    // The integrity check reads the store over connections of its own, so that a long
    // check never holds the flusher's.
    let durability = Arc::new(Durability {
        backup_dir: config.backup.dir.clone(),
        central: Some(Arc::new(open_central()?)),
        ..Durability::default()
    });
    tracing::info!(backend = central.backend(), store = %central.describe(), "central store");
    // The flusher gets a runtime and a thread of its own: building a batch of thousands
    // of rows is milliseconds of CPU, and on the terminals' two runtime workers it held
    // up every connection scheduled behind it (p99 of terminals' answers measured ~10×
    // p50 with the flusher there). On its own thread the kernel time-slices it instead.
    let central_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cardgate-central")
        .enable_all()
        .build()
        .context("starting the central store's runtime")?;
    let flusher = {
        let _on_its_runtime = central_runtime.enter();
        let source = JournalSource {
            db: ledger.db().clone(),
            stats: ledger.journal().stats.clone(),
            gateway_id: ledger.gateway_id(),
            clock: ledger.clock(),
        };
        Flusher::start(source, central, config.central.flusher())
            .context("reading the central store cursor from sled")?
    };

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener on {addr}"))?;
        tracing::info!(kind = "metrics", addr = %listener.local_addr()?, "listening");
        tasks.spawn(crate::metrics::serve(listener, prometheus, shutdown.clone()));
    }
    tasks.spawn(sample_gauges(ledger.clone(), flusher.status.clone(), shutdown.clone()));
    tasks.spawn(durability_schedule(
        ledger.clone(),
        durability.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    // Before the terminal listener, so that whoever waits for "terminals" in the log
    // (the e2e harness) has seen every other listener by then.
    if let Some(addr) = config.admin_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin listener on {addr}"))?;
        tracing::info!(kind = "admin", addr = %listener.local_addr()?, "listening");
        let state =
            crate::admin::AdminState::new(ledger.clone(), config.tz_offset_minutes).with_durability(durability.clone());
        tasks.spawn(crate::admin::serve(listener, state, shutdown.clone()));
    }

    let listener = crate::server::bind(config.listen, config.limits.listen_backlog)
        .with_context(|| format!("binding the terminal listener on {}", config.listen))?;
    tracing::info!(kind = "terminals", addr = %listener.local_addr()?, "listening");
    let server = tokio::spawn(crate::server::run(
        listener,
        ledger.clone(),
        Arc::new(config.limits.clone()),
        shutdown.clone(),
    ));

    wait_for_signal().await;
    tracing::info!("shutting down: no new connections; answering what is in flight");
    shutdown.cancel();
    server.await?;
    while tasks.join_next().await.is_some() {}
    // Every answer is durable; one last, bounded attempt to ship it all.
    let unshipped = flusher
        .shutdown(Duration::from_millis(config.central.shutdown_flush_ms))
        .await;
    if unshipped > 0 {
        tracing::warn!(
            entries = unshipped,
            "central store: entries not shipped at shutdown; they stay in the journal and ship after the next start"
        );
    }
    central_runtime.shutdown_background();
    // Every connection is gone; dropping the last ledger handle lets the committer
    // drain its queue and exit.
    drop(ledger);
    let joined = tokio::task::spawn_blocking(move || committer.join());
    if tokio::time::timeout(COMMITTER_JOIN_TIMEOUT, joined).await.is_err() {
        anyhow::bail!("the committer did not finish within {COMMITTER_JOIN_TIMEOUT:?}");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Gauges that are cheaper to sample than to keep current.
async fn sample_gauges(ledger: Arc<Ledger>, central: Arc<FlusherStatus>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let j = ledger.journal();
        metrics::gauge!("cardgate_journal_queue_depth").set(j.queue_len() as f64);
        metrics::gauge!("cardgate_journal_durable_entry_id")
            .set(j.stats.durable_entry_id.load(std::sync::atomic::Ordering::Relaxed) as f64);
        metrics::gauge!("cardgate_journal_poisoned").set(if j.is_poisoned() { 1.0 } else { 0.0 });
        let (accounts, cards, terminals) = ledger.counts();
        metrics::gauge!("cardgate_accounts").set(accounts as f64);
        metrics::gauge!("cardgate_cards").set(cards as f64);
        metrics::gauge!("cardgate_terminals").set(terminals as f64);
        let lag = ledger.blacklist_lag();
        metrics::gauge!("cardgate_blacklist_version").set(lag.version as f64);
        metrics::gauge!("cardgate_blacklist_published_version").set(lag.published as f64);
        metrics::gauge!("cardgate_blacklist_cards").set(lag.listed as f64);
        metrics::gauge!("cardgate_blacklist_terminals_connected").set(lag.connected_terminals as f64);
        metrics::gauge!("cardgate_blacklist_terminals_behind").set(lag.behind as f64);
        metrics::gauge!("cardgate_blacklist_max_versions_behind").set(lag.max_versions_behind as f64);
        for (bucket, n) in ["1", "2-10", "11-100", "101+"].iter().zip(lag.behind_by) {
            metrics::gauge!("cardgate_blacklist_terminals_behind_by", "versions" => *bucket).set(n as f64);
        }
        central.record_gauges(&j.stats, ledger.now_ms());
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
