//! `cardgate serve`: start-up and shutdown order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cardgate_central::flusher::JournalSource;
use cardgate_central::{CentralStore, Flusher, FlusherMonitor};
use cardgate_ledger::demo::{DemoCampus, ensure_demo};
use cardgate_ledger::{Ledger, LedgerConfig, SystemClock};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

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
    let central = match &config.central.url {
        Some(url) => CentralStore::open(url).context("the central store URL")?,
        None => CentralStore::open_sqlite_file(&config.data_dir.join("central.db")),
    };
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
    tasks.spawn(sample_gauges(ledger.clone(), flusher.monitor(), shutdown.clone()));
    // Before the terminal listener, so that whoever waits for "terminals" in the log
    // (the e2e harness) has seen every other listener by then.
    if let Some(addr) = config.admin_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin listener on {addr}"))?;
        tracing::info!(kind = "admin", addr = %listener.local_addr()?, "listening");
        let state = crate::admin::AdminState::new(ledger.clone(), config.tz_offset_minutes);
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
async fn sample_gauges(ledger: Arc<Ledger>, central: FlusherMonitor, shutdown: CancellationToken) {
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
        central.record_gauges();
    }
}
