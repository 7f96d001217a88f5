//! `cardgate serve`: start-up and shutdown order.
//!
//! Start-up: bind every listener, make sure the data directory is usable, parse the
//! central store's URL (`startup.rs`: any failure is one line and nothing is left
//! behind), then recover the ledger, start the flusher, and only then serve. Shutdown:
//! the phases of `shutdown.rs`, driven by `Running` below.

use std::sync::Arc;
use std::time::Duration;

use cardgate_central::flusher::JournalSource;
use cardgate_central::{Flusher, FlusherHandle, FlusherStatus};
use cardgate_journal::CommitterHandle;
use cardgate_ledger::demo::{DemoCampus, ensure_demo};
use cardgate_ledger::{Ledger, LedgerConfig, SystemClock};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
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
    let listeners = startup::bind_listeners(&config)?;
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
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        tz_offset_minutes = config.tz_offset_minutes,
        "starting; log times are in the business day's zone (tz_offset_minutes), offset written"
    );

    let ledger_config = LedgerConfig {
        tz_offset_minutes: config.tz_offset_minutes,
        terminal_key,
        ..LedgerConfig::default()
    };
    let data_dir = config.data_dir.clone();
    let opened = tokio::task::spawn_blocking(move || Ledger::open(&data_dir, ledger_config, Arc::new(SystemClock)))
        .await
        .map_err(|e| StartError::Other(format!("recovery task: {e}")))?;
    let (ledger, committer, stats) = opened.map_err(|e| StartError::Ledger {
        path: config.data_dir.clone(),
        reason: e.to_string(),
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
        data_dir = %config.data_dir.display(),
        "recovered"
    );
    // From here on the ledger is open: every return goes through `Running`'s shutdown,
    // or drops the ledger and its committer, which finish on their own.
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

    // Metrics outlive every phase, so that `cardgate_shutdown_phase` can be scraped
    // while the gateway stops.
    let metrics_stop = CancellationToken::new();
    let mut metrics_task = None;
    if let Some(listener) = listeners.metrics {
        log_listening(ListenerKind::Metrics, &listener);
        metrics_task = Some(tokio::spawn(crate::metrics::serve(
            listener,
            prometheus,
            metrics_stop.clone(),
        )));
    }
    tasks.spawn(sample_gauges(ledger.clone(), flusher.status.clone(), shutdown.clone()));
    // Before the terminal listener, so that whoever waits for "terminals" in the log
    // (the e2e harness) has seen every other listener by then.
    if let Some(listener) = listeners.admin {
        log_listening(ListenerKind::Admin, &listener);
        let state = crate::admin::AdminState::new(ledger.clone(), config.tz_offset_minutes);
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
