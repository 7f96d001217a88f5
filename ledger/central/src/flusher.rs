//! The flusher: ships every durable journal entry to the central store exactly once, in
//! batches, on its own task, and prunes what the central store holds from sled.
//!
//! It reads entries after its cursor (never beyond `durable_entry_id`: nothing that could
//! still vanish in a crash leaves the gateway), turns them into rows (`schema::Batch`),
//! and writes them in one SQL transaction that also moves the gateway's cursor in the
//! central store. Only after that commit does its own cursor move; it is then written to
//! sled through the journal (`meta::CENTRAL_CURSOR`), where it bounds pruning across
//! restarts. A crash at any line leaves either the old cursor in the central store (the
//! batch rolled back, and is shipped again) or the new one (the batch is there; the
//! flusher starts from the central store's cursor after a restart).
//!
//! Nothing here can slow a terminal down: the committer never waits for the flusher,
//! and the flusher only talks to the journal like any submitter (one cursor write per
//! batch). While the central store is down the flusher retries with capped exponential
//! backoff, the backlog stays in sled (pruning never passes the central cursor), and the
//! backlog and the age of its oldest entry are on `/metrics` and in `FlusherHealth`.
//!
//! What a backlog costs the gateway, however long the store is slower or away: memory,
//! one batch (at most `batch_entries_max` entries read and turned into rows at a time;
//! the backlog itself is never held in memory); disk, the journal's entries behind the
//! central cursor, which pruning cannot remove (about 100 bytes per purchase; bounded
//! only by the disk, hence `cardgate_journal_size_bytes`); start-up time, nothing
//! (recovery replays from the last checkpoint, not from the cursor).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use std::ops::ControlFlow;

use cardgate_domain::Clock;
use cardgate_domain::entry::{EntryBody, EntryRecord, ImportCommitted, ImportItem};
use cardgate_journal::{Db, JournalStats, StoreError};

use super::priority::BackgroundRuntime;
use super::schema::{Batch, BatchError, JournalEntry};
use super::{CentralError, CentralStore};

/// The last entry id the central store confirmed it holds (u64 BE, a meta value in the
/// journal's sled tree): a lower bound of the central store's own cursor, so pruning may
/// rely on it even while the central store is unreachable.
pub const META_CENTRAL_CURSOR: &str = "central_cursor";

/// How far back from an import's commit entry the flusher looks for its chunks. They
/// are submitted back to back just before the commit, so only the traffic of the
/// import's own seconds lies in between; the bound stops a damaged journal from being
/// read end to end.
pub const CHUNK_SEARCH_ENTRIES_MAX: u64 = 10_000_000;

/// What the flusher reads: one gateway's journal.
#[derive(Clone)]
pub struct JournalSource {
    pub db: Db,
    pub stats: Arc<JournalStats>,
    /// Identifies the gateway's rows in the store.
    pub gateway_id: u64,
    pub clock: Arc<dyn Clock>,
}

/// Default entries per batch. A batch's cost is mostly pages written, and a batch of
/// purchases touches nearly every page of `accounts` and of the by-account and by-card
/// indexes whatever its size, so larger batches cost less per entry: from 4,000 to
/// 16,000 the per-entry cost fell by half on both back ends (docs/PERFORMANCE.md). A
/// flusher that falls behind ships full batches back to back, so it gets cheaper per
/// entry exactly when it must catch up; a quiet gateway ships small batches after
/// `batch_wait`. 16,000 entries are ~5 MB of rows in memory.
pub const BATCH_ENTRIES_DEFAULT: usize = 16_000;
/// The most entries any configuration may put in one batch: bounds the memory of a
/// batch (~300 bytes of rows per entry) and the length of one central transaction.
pub const BATCH_ENTRIES_LIMIT: usize = 50_000;
/// Default longest time an entry waits for its batch to fill: bounds how far the central
/// store lags behind a quiet gateway.
pub const BATCH_WAIT_DEFAULT: Duration = Duration::from_millis(200);
/// First retry after a failure; doubles on each failure after it...
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// ...up to this (default): an outage of hours costs one attempt every few seconds, and
/// the backlog starts draining within seconds of the store's return.
pub const RETRY_BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(5);
/// A batch not committed within this long is abandoned (the transaction rolls back) and
/// retried: a half-open connection must not stall the flusher forever.
pub const BATCH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default time shipped entries stay in sled: if the central store has to be restored
/// from a backup up to three days old (a nightly backup and a long weekend), the gateway
/// still holds everything since and ships it again.
pub const JOURNAL_RETENTION_DEFAULT: Duration = Duration::from_secs(72 * 3600);
/// How often pruning looks for segments to remove.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Segments removed per pruning pass (one blocking-pool job): ~10 µs each, so a pass
/// stays well under a second; a larger backlog takes several passes.
pub const PRUNE_SEGMENTS_MAX: usize = 20_000;
/// How often an idle flusher looks for newly durable entries.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// During an outage, how often the still-failing warning is repeated; while the store
/// is reachable but behind, how often the flusher says so.
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Default age of the oldest unshipped entry beyond which the flusher counts as behind
/// (a warning once a minute, `FlusherHealth::keeping_up` false). A healthy flusher ships
/// within `batch_wait` plus one batch's write: well under a second.
pub const LAG_WARN_DEFAULT: Duration = Duration::from_secs(10);
/// Default age of the oldest entry of a batch below which a SQLite store's work yields
/// the CPU to the terminals (`priority.rs`): the batch is read, built and written on a
/// runtime at a background priority, and the store's writer thread is lowered too
/// (`CentralStore::set_background`). A store that keeps up ships an entry within
/// `batch_wait` plus one batch's write; one older than this is falling behind, and gets
/// the normal priority until it is back within half of this.
/// At 1 s, a 60 s full-speed load beside a process keeping one core busy saw the
/// oldest unshipped entry reach 2.56 s (section 2.2's bound is 2 s); at 500 ms, 1.14 s,
/// for the same p99 at 20,000/s (docs/PERFORMANCE.md 5.11).
pub const YIELD_BELOW_DEFAULT: Duration = Duration::from_millis(500);

const _: () = assert!(BATCH_ENTRIES_DEFAULT <= BATCH_ENTRIES_LIMIT);
const _: () = assert!(RETRY_BACKOFF_MIN.as_millis() <= RETRY_BACKOFF_MAX_DEFAULT.as_millis());

#[derive(Clone, Debug)]
pub struct FlusherConfig {
    pub batch_entries_max: usize,
    pub batch_wait: Duration,
    pub retry_backoff_max: Duration,
    pub batch_timeout: Duration,
    /// Shipped entries younger than this stay in sled.
    pub journal_retention: Duration,
    pub prune_interval: Duration,
    /// The oldest unshipped entry older than this: the flusher is behind.
    pub lag_warn: Duration,
    /// While the batches' oldest entries are younger than this, a SQLite store's batches
    /// (the flusher's work and the writer thread) run at a background priority (zero:
    /// never).
    pub yield_below: Duration,
}

impl Default for FlusherConfig {
    fn default() -> FlusherConfig {
        FlusherConfig {
            batch_entries_max: BATCH_ENTRIES_DEFAULT,
            batch_wait: BATCH_WAIT_DEFAULT,
            retry_backoff_max: RETRY_BACKOFF_MAX_DEFAULT,
            batch_timeout: BATCH_TIMEOUT_DEFAULT,
            journal_retention: JOURNAL_RETENTION_DEFAULT,
            prune_interval: PRUNE_INTERVAL,
            lag_warn: LAG_WARN_DEFAULT,
            yield_below: YIELD_BELOW_DEFAULT,
        }
    }
}

/// A flusher setting out of its bounds: which field (so that a caller can name it as
/// its own configuration does), and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {rule}")]
pub struct BadSetting {
    pub field: &'static str,
    pub rule: String,
}

impl FlusherConfig {
    pub fn validate(&self) -> Result<(), BadSetting> {
        let bad = |field, rule: String| Err(BadSetting { field, rule });
        if !(1..=BATCH_ENTRIES_LIMIT).contains(&self.batch_entries_max) {
            return bad("batch_entries_max", format!("must be 1..={BATCH_ENTRIES_LIMIT}"));
        }
        if self.retry_backoff_max < RETRY_BACKOFF_MIN {
            return bad(
                "retry_backoff_max",
                format!("must be at least {} ms", RETRY_BACKOFF_MIN.as_millis()),
            );
        }
        for (field, d) in [
            ("batch_timeout", self.batch_timeout),
            ("prune_interval", self.prune_interval),
            ("lag_warn", self.lag_warn),
        ] {
            if d.is_zero() {
                return bad(field, "must be above 0".into());
            }
        }
        Ok(())
    }
}

/// What the flusher has done, readable from any thread (metrics, tests, shutdown).
#[derive(Debug, Default)]
pub struct FlusherStatus {
    /// The last entry id the central store is known to hold.
    pub cursor: AtomicU64,
    /// True once the central store's own cursor was read in this run.
    pub confirmed: AtomicBool,
    /// True while the store answers: its last attempt succeeded, or the store itself
    /// refused it (an entry it will not take, a schema or history that does not fit). A
    /// store that could not be reached, was locked by another writer, or did not answer
    /// in time, is down.
    pub up: AtomicBool,
    /// Decision time of the oldest entry not yet shipped (0: none known).
    pub oldest_unshipped_ms: AtomicI64,
    pub shipped_entries: AtomicU64,
    pub batches: AtomicU64,
    pub errors: AtomicU64,
    pub pruned_entries: AtomicU64,
    /// The entry the store refuses, if one does: shipping waits on it.
    pub stuck: std::sync::Mutex<Option<StuckEntry>>,
}

/// An entry the central store refuses (a constraint, a trigger): exactly once must not
/// mean silently stuck, so it is named wherever an operator looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckEntry {
    pub entry_id: u64,
    pub kind: &'static str,
    pub error: String,
}

impl FlusherStatus {
    /// The entry the store refuses, if any.
    pub fn stuck(&self) -> Option<StuckEntry> {
        match self.stuck.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_stuck(&self, stuck: Option<StuckEntry>) {
        let id = stuck.as_ref().map_or(0, |s| s.entry_id);
        match self.stuck.lock() {
            Ok(mut s) => *s = stuck,
            Err(poisoned) => *poisoned.into_inner() = stuck,
        }
        metrics::gauge!("cardgate_central_stuck_entry_id").set(id as f64);
    }
}

impl FlusherStatus {
    /// Entries durable in sled and not yet in the central store.
    pub fn backlog(&self, journal: &JournalStats) -> u64 {
        journal
            .durable_entry_id
            .load(Ordering::Acquire)
            .saturating_sub(self.cursor.load(Ordering::Acquire))
    }

    /// How long the oldest unshipped entry has waited at `now_ms` (zero when none).
    fn oldest_age(&self, backlog: u64, now_ms: i64) -> Duration {
        let oldest = self.oldest_unshipped_ms.load(Ordering::Acquire);
        if backlog > 0 && oldest > 0 {
            age(oldest, now_ms)
        } else {
            Duration::ZERO
        }
    }
}

/// How long an entry decided at `decided_ms` has waited at `now_ms` (zero if the clock
/// reads earlier).
fn age(decided_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_ms - decided_ms).unwrap_or(0))
}

/// The flusher's state as the daemon's readiness check, an operator or a test reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlusherHealth {
    /// Entries durable in the journal and not yet in the central store.
    pub backlog: u64,
    /// How long the oldest of them has waited (zero when there are none). The lag the
    /// university's reports see: alert on this, not on the count.
    pub oldest_age: Duration,
    /// The store answered the flusher's last attempt, taking it or refusing what it was
    /// given (false from start-up until it answered; false while it cannot be reached).
    pub reachable: bool,
    /// The entry the store refuses, if one does: nothing after it ships until it does.
    pub stuck: Option<StuckEntry>,
    /// The age beyond which the flusher counts as behind (`central.lag_warn_s`).
    pub lag_warn: Duration,
}

impl FlusherHealth {
    /// The central store keeps up: reachable, refusing nothing, and the oldest unshipped
    /// entry younger than `lag_warn`. Terminals are served either way (the gateway never
    /// waits for the store); this says whether the university's copy is current.
    pub fn keeping_up(&self) -> bool {
        self.reachable && self.stuck.is_none() && self.oldest_age <= self.lag_warn
    }
}

/// Reads the flusher's state from any thread: atomics only.
#[derive(Clone)]
pub struct FlusherMonitor {
    pub status: Arc<FlusherStatus>,
    journal: Arc<JournalStats>,
    clock: Arc<dyn Clock>,
    lag_warn: Duration,
}

impl FlusherMonitor {
    /// A reader of `status` against `journal`'s durable entries; the flusher makes one
    /// when it starts (`FlusherHandle::monitor`).
    pub fn new(
        status: Arc<FlusherStatus>,
        journal: Arc<JournalStats>,
        clock: Arc<dyn Clock>,
        lag_warn: Duration,
    ) -> FlusherMonitor {
        FlusherMonitor {
            status,
            journal,
            clock,
            lag_warn,
        }
    }

    pub fn health(&self) -> FlusherHealth {
        let backlog = self.status.backlog(&self.journal);
        FlusherHealth {
            backlog,
            oldest_age: self.status.oldest_age(backlog, self.clock.now_ms()),
            reachable: self.status.up.load(Ordering::Acquire),
            stuck: self.status.stuck(),
            lag_warn: self.lag_warn,
        }
    }

    /// Sets the backlog gauges; sampled by the daemon rather than kept current, so that
    /// they move even while a batch hangs.
    pub fn record_gauges(&self) {
        let h = self.health();
        metrics::gauge!("cardgate_central_backlog_entries").set(h.backlog as f64);
        metrics::gauge!("cardgate_central_oldest_unshipped_seconds").set(h.oldest_age.as_secs_f64());
        metrics::gauge!("cardgate_central_shipped_entry_id").set(self.status.cursor.load(Ordering::Acquire) as f64);
        metrics::gauge!("cardgate_central_up").set(if h.reachable { 1.0 } else { 0.0 });
        metrics::gauge!("cardgate_central_keeping_up").set(if h.keeping_up() { 1.0 } else { 0.0 });
    }
}

/// Why one step of the flusher failed.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error(transparent)]
    Central(#[from] CentralError),
    #[error("the central store did not commit the batch within {0:?}")]
    Timeout(Duration),
    /// sled could not be read: ours.
    #[error("reading the journal: {0}")]
    Journal(#[from] StoreError),
    /// The journal no longer holds the entries after the cursor (pruned past it, which
    /// the pruning rule forbids, or the central store lost what it had).
    #[error("the journal has no entry {wanted}; the first it has after the cursor is {found:?}")]
    JournalGap { wanted: u64, found: Option<u64> },
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// A batch's work on the background runtime panicked or was cancelled.
    #[error("the batch's work ended without a result: {0}")]
    Task(String),
}

impl FlushError {
    /// A short stable label for `cardgate_central_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            FlushError::Central(e) => e.kind(),
            FlushError::Timeout(_) => "timeout",
            FlushError::Journal(_) => "journal",
            FlushError::JournalGap { .. } => "journal_gap",
            FlushError::Batch(_) => "batch",
            FlushError::Task(_) => "task",
        }
    }

    /// Whether the store answered the attempt that failed: `Some(false)` when it could not
    /// be reached or did not answer in time, `Some(true)` when it answered and refused,
    /// `None` when the attempt failed on the gateway's side before the store was asked.
    fn store_answered(&self) -> Option<bool> {
        match self {
            FlushError::Central(e) => Some(e.store_answered()),
            FlushError::Timeout(_) => Some(false),
            FlushError::Journal(_) | FlushError::JournalGap { .. } | FlushError::Batch(_) | FlushError::Task(_) => None,
        }
    }

    /// True when the outage is expected to pass by itself (a warning, not an error).
    fn is_transient(&self) -> bool {
        match self {
            FlushError::Central(e) => e.is_transient(),
            FlushError::Timeout(_) => true,
            _ => false,
        }
    }
}

/// Runs the flusher; dropping the handle does not stop it, `shutdown` does.
pub struct FlusherHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    pub status: Arc<FlusherStatus>,
    journal: Arc<JournalStats>,
    monitor: FlusherMonitor,
}

impl FlusherHandle {
    /// Stops the flusher after one last attempt to ship everything durable now, giving
    /// it at most `limit`. Returns the entries left unshipped (they ship after restart).
    pub async fn shutdown(mut self, limit: Duration) -> u64 {
        let _ = self.stop.send(true);
        if tokio::time::timeout(limit, &mut self.task).await.is_err() {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
        self.status.backlog(&self.journal)
    }

    pub fn backlog(&self) -> u64 {
        self.status.backlog(&self.journal)
    }

    /// A reader of the flusher's state for metrics and readiness, cheap to clone.
    pub fn monitor(&self) -> FlusherMonitor {
        self.monitor.clone()
    }

    pub fn health(&self) -> FlusherHealth {
        self.monitor.health()
    }
}

pub struct Flusher {
    source: JournalSource,
    store: Arc<CentralStore>,
    config: FlusherConfig,
    status: Arc<FlusherStatus>,
    cursor: u64,
    backoff: Duration,
    failing_since: Option<Instant>,
    last_outage_log: Option<Instant>,
    /// The kind of the last failure logged: a different lasting one is logged at once.
    last_failure_kind: Option<&'static str>,
    next_prune: Instant,
    /// While the store refuses a batch: the size of the next one, halved at each refusal
    /// until the one entry it refuses is found.
    probe: Option<usize>,
    /// Since when the oldest unshipped entry has been older than `lag_warn` (while the
    /// store takes batches: an outage logs itself), when that was last logged, and the
    /// shipped count then (for the rate in the next line).
    behind_since: Option<Instant>,
    last_behind_log: Option<Instant>,
    shipped_at_behind_log: u64,
    /// Whether the batches' work runs at the background priority (`yield_below`).
    yielding: bool,
    /// Where it runs then: none when `yield_below` is zero, the store is not SQLite, or
    /// the threads could not be started (the batches then stay on this task's thread).
    background: Option<BackgroundRuntime>,
}

impl Flusher {
    /// Starts the flusher on the current tokio runtime. Its cursor starts at the one
    /// last written to sled and is replaced by the central store's own on first contact.
    pub fn start(
        source: JournalSource,
        store: CentralStore,
        config: FlusherConfig,
    ) -> Result<FlusherHandle, StoreError> {
        let cursor = source.db.get_meta_u64(META_CENTRAL_CURSOR)?.unwrap_or(0);
        let status = Arc::new(FlusherStatus::default());
        status.cursor.store(cursor, Ordering::Release);
        let journal = source.stats.clone();
        let monitor = FlusherMonitor::new(status.clone(), journal.clone(), source.clock.clone(), config.lag_warn);
        let (stop, stopped) = watch::channel(false);
        // Only where the store's own work runs in this process (SQLite): with PostgreSQL
        // the flusher's part is small, and a batch begun at the background priority under
        // a competing load could not change it halfway (2 of 4 runs saw the oldest entry
        // 2.2 s behind in the load's second second; docs/PERFORMANCE.md 5.12).
        let background = if config.yield_below.is_zero() || !store.yields() {
            None
        } else {
            match BackgroundRuntime::start() {
                Ok(rt) => Some(rt),
                Err(e) => {
                    tracing::warn!(error = %e, "central store: no background threads; batches run at the normal priority");
                    None
                }
            }
        };
        let flusher = Flusher {
            source,
            store: Arc::new(store),
            config,
            status: status.clone(),
            cursor,
            backoff: RETRY_BACKOFF_MIN,
            failing_since: None,
            last_outage_log: None,
            last_failure_kind: None,
            next_prune: Instant::now(),
            probe: None,
            behind_since: None,
            last_behind_log: None,
            shipped_at_behind_log: 0,
            yielding: false,
            background,
        };
        let task = tokio::spawn(flusher.run(stopped));
        Ok(FlusherHandle {
            stop,
            task,
            status,
            journal,
            monitor,
        })
    }

    fn durable(&self) -> u64 {
        self.source.stats.durable_entry_id.load(Ordering::Acquire)
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut confirmed = false;
        // When the oldest entry of the forming batch was first seen.
        let mut forming: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                self.last_flush(confirmed).await;
                break;
            }
            if !confirmed {
                match self.confirm_cursor().await {
                    Ok(()) => {
                        confirmed = true;
                        self.recovered();
                    }
                    Err(e) => {
                        self.failed(&e);
                        if self.durable() > self.cursor {
                            self.peek_oldest().await;
                        }
                        pause(&mut stop, self.next_backoff()).await;
                        continue;
                    }
                }
            }
            self.maybe_prune().await;
            self.watch_lag();
            let durable = self.durable();
            if durable <= self.cursor {
                forming = None;
                self.status.oldest_unshipped_ms.store(0, Ordering::Release);
                pause(&mut stop, POLL_INTERVAL).await;
                continue;
            }
            let since = match forming {
                Some(t) => t,
                None => {
                    self.peek_oldest().await;
                    *forming.insert(Instant::now())
                }
            };
            let waited = since.elapsed();
            if durable - self.cursor < self.config.batch_entries_max as u64 && waited < self.config.batch_wait {
                pause(&mut stop, POLL_INTERVAL.min(self.config.batch_wait - waited)).await;
                continue;
            }
            match self.ship_one(durable).await {
                Ok(()) => {
                    self.recovered();
                    // Whatever is left has been waiting since at least now.
                    forming = (self.durable() > self.cursor).then(Instant::now);
                    if forming.is_some() {
                        self.peek_oldest().await;
                    }
                }
                Err(e) => {
                    if matches!(
                        e,
                        FlushError::Central(
                            CentralError::Gap { .. } | CentralError::Ahead { .. } | CentralError::Diverged { .. }
                        )
                    ) {
                        // The store's cursor is not where we thought: read it again.
                        confirmed = false;
                    }
                    self.failed(&e);
                    // Looking for the one entry the store refuses is not an outage: the
                    // next, smaller batch goes at once.
                    let searching =
                        matches!(e, FlushError::Central(CentralError::Refused(_))) && self.status.stuck().is_none();
                    if !searching {
                        pause(&mut stop, self.next_backoff()).await;
                    }
                }
            }
        }
        self.store.close().await;
    }

    /// On shutdown: ship what is durable now, one attempt per batch, no waiting for a
    /// batch to fill. The caller bounds the time.
    async fn last_flush(&mut self, confirmed: bool) {
        if !confirmed && let Err(e) = self.confirm_cursor().await {
            self.failed(&e);
            return;
        }
        let target = self.durable();
        while self.cursor < target {
            if let Err(e) = self.ship_one(target).await {
                self.failed(&e);
                return;
            }
        }
        tracing::debug!(cursor = self.cursor, "central store: caught up at shutdown");
    }

    /// Migrates the schema and adopts the central store's cursor for this gateway.
    async fn confirm_cursor(&mut self) -> Result<(), FlushError> {
        let found = self.store.migrate().await?;
        if found < super::SCHEMA_VERSION {
            tracing::info!(
                from = found,
                to = super::SCHEMA_VERSION,
                store = %self.store.describe(),
                "central store schema migrated"
            );
        }
        let central = self.store.cursor(self.source.gateway_id).await?;
        let durable = self.durable();
        if central > durable {
            return Err(CentralError::Ahead { central, durable }.into());
        }
        // The store's last entry must be this journal's: otherwise its cursor says
        // nothing about what this journal shipped, and must bound neither shipping nor
        // pruning (a data directory restored from a backup while the store went on).
        let db = self.source.db.clone();
        let ours = tokio::task::spawn_blocking(move || db.entry_hash(central))
            .await
            .map_err(reader_panicked)??;
        if let Some(ours) = ours
            && let Some(theirs) = self.store.entry_hash(self.source.gateway_id, central).await?
            && theirs != ours
        {
            let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
            return Err(CentralError::Diverged {
                entry_id: central,
                central: hex(&theirs),
                journal: hex(&ours),
            }
            .into());
        }
        if central < self.cursor {
            tracing::warn!(
                central,
                local = self.cursor,
                "the central store holds fewer of this gateway's entries than it had confirmed; shipping again from \
                 its cursor"
            );
        }
        self.cursor = central;
        self.status.cursor.store(central, Ordering::Release);
        self.status.confirmed.store(true, Ordering::Release);
        tracing::info!(
            store = %self.store.describe(),
            cursor = central,
            backlog = durable - central,
            "central store connected"
        );
        Ok(())
    }

    /// Learns the decision time of the oldest unshipped entry, for the age gauge.
    async fn peek_oldest(&self) {
        let db = self.source.db.clone();
        let after = self.cursor;
        if let Ok(Ok(first)) = tokio::task::spawn_blocking(move || db.read_entries(after, 1, EntryRecord::decode)).await
            && let Some(e) = first.first()
        {
            self.status
                .oldest_unshipped_ms
                .store(e.record.time_ms, Ordering::Release);
        }
    }

    /// A SQLite store's work (the batches here, its writer thread) yields the CPU to the
    /// terminals while the store keeps up (the batch's oldest entry younger than
    /// `yield_below`), and stops yielding until it is back within half of that: a store
    /// that yielded under a machine kept busy by other work would fall further behind
    /// for every second of it.
    async fn choose_priority(&mut self, oldest_ms: i64) {
        if self.config.yield_below.is_zero() || !self.store.yields() {
            return;
        }
        let waited = age(oldest_ms, self.source.clock.now_ms());
        let bound = if self.yielding {
            self.config.yield_below
        } else {
            self.config.yield_below / 2
        };
        self.yielding = waited < bound;
        self.store.set_background(self.yielding).await;
    }

    /// Runs `work` where the batches' work runs now: on the background runtime while
    /// yielding, here otherwise.
    async fn placed<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, FlushError> {
        match &self.background {
            Some(rt) if self.yielding => rt.run(work).await.map_err(|e| FlushError::Task(e.to_string())),
            _ => Ok(work.await),
        }
    }

    /// Ships the next batch of entries up to `durable`. It is read and built where the
    /// last batch's priority put it, and written where this batch's age puts it.
    async fn ship_one(&mut self, durable: u64) -> Result<(), FlushError> {
        let preparing = Instant::now();
        let size = self.probe.unwrap_or(self.config.batch_entries_max);
        let limit = (durable - self.cursor).min(size as u64) as usize;
        let prepare = prepare_batch(
            self.source.db.clone(),
            self.source.gateway_id,
            self.cursor,
            limit,
            durable,
        );
        let Prepared {
            batch,
            oldest_ms,
            first_kind,
        } = self.placed(prepare).await??;
        self.status.oldest_unshipped_ms.store(oldest_ms, Ordering::Release);
        self.choose_priority(oldest_ms).await;
        metrics::histogram!("cardgate_central_prepare_seconds").record(preparing.elapsed().as_secs_f64());
        let started = Instant::now();
        let store = self.store.clone();
        let now_ms = self.source.clock.now_ms();
        let (batch, written) = tokio::time::timeout(
            self.config.batch_timeout,
            self.placed(async move {
                let written = store.write(&batch, now_ms).await;
                (batch, written)
            }),
        )
        .await
        .map_err(|_| FlushError::Timeout(self.config.batch_timeout))??;
        let written = match written {
            Err(CentralError::Refused(e)) => {
                let n = batch.entries() as usize;
                if n <= 1 {
                    let found = StuckEntry {
                        entry_id: batch.first_entry_id,
                        kind: first_kind,
                        error: e.to_string(),
                    };
                    // Logged by `failed`, with the backlog: once now, then once a minute.
                    if self.status.stuck().is_none_or(|s| s.entry_id != found.entry_id) {
                        metrics::counter!("cardgate_central_refused_entries_total").increment(1);
                    }
                    self.status.set_stuck(Some(found));
                } else {
                    // Somewhere in these n entries is one the store refuses: ship the
                    // first half, then the first half of what fails, down to one.
                    self.probe = Some(n / 2);
                }
                return Err(CentralError::Refused(e).into());
            }
            other => other?,
        };
        if let Some(stuck) = self.status.stuck()
            && written >= stuck.entry_id
        {
            tracing::info!(
                entry_id = stuck.entry_id,
                kind = stuck.kind,
                "central store: the refused entry is shipped; shipping goes on"
            );
            self.status.set_stuck(None);
            self.probe = None;
        } else if self.probe.is_some() && self.status.stuck().is_none() {
            // This half shipped: the refused entry is in what follows.
            self.probe = None;
        }
        let took = started.elapsed();
        if written > durable {
            return Err(CentralError::Ahead {
                central: written,
                durable,
            }
            .into());
        }
        let shipped = written.saturating_sub(self.cursor);
        self.cursor = written;
        self.status.cursor.store(written, Ordering::Release);
        self.status.shipped_entries.fetch_add(shipped, Ordering::Relaxed);
        self.status.batches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cardgate_central_entries_shipped_total").increment(shipped);
        metrics::counter!("cardgate_central_batches_total").increment(1);
        metrics::histogram!("cardgate_central_batch_entries").record(batch.entries() as f64);
        metrics::histogram!("cardgate_central_batch_seconds").record(took.as_secs_f64());
        // Debug only: with a timestamp, lines up a batch with a latency timeline.
        tracing::debug!(
            entries = batch.entries(),
            micros = took.as_micros() as u64,
            through_id = written,
            "batch shipped"
        );
        self.save_cursor().await;
        Ok(())
    }

    /// Writes the cursor to sled, where it bounds pruning after a restart. Not through
    /// the journal: it becomes durable with the committer's next sync, and losing it
    /// costs only a re-read, since the central store's own cursor is the authority.
    async fn save_cursor(&self) {
        if let Err(e) = self.source.db.put_meta_u64_lazily(META_CENTRAL_CURSOR, self.cursor) {
            tracing::debug!(error = %e, "could not record the central cursor in sled");
            metrics::counter!("cardgate_central_errors_total", "kind" => "cursor_save").increment(1);
        }
    }

    /// Removes segments the central store holds, that no recovery needs, and that are
    /// older than the retention.
    async fn maybe_prune(&mut self) {
        if Instant::now() < self.next_prune {
            return;
        }
        self.next_prune = Instant::now() + self.config.prune_interval;
        let checkpoint = self.source.stats.durable_checkpoint_id.load(Ordering::Acquire);
        let through = self.cursor.min(checkpoint);
        let retention_ms = i64::try_from(self.config.journal_retention.as_millis()).unwrap_or(i64::MAX);
        let before_ms = self.source.clock.now_ms().saturating_sub(retention_ms);
        let db = self.source.db.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            db.prune_journal(through, before_ms, PRUNE_SEGMENTS_MAX, EntryRecord::time_of)
        });
        match pruned.await {
            Ok(Ok(p)) => {
                if p.segments > 0 {
                    self.status.pruned_entries.fetch_add(p.entries, Ordering::Relaxed);
                    metrics::counter!("cardgate_central_pruned_entries_total").increment(p.entries);
                    tracing::debug!(segments = p.segments, through_id = p.through_id, "journal pruned");
                }
                if p.segments >= PRUNE_SEGMENTS_MAX {
                    // More to do: come back soon rather than after a whole interval.
                    self.next_prune = Instant::now() + POLL_INTERVAL;
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "pruning the journal failed");
                metrics::counter!("cardgate_central_errors_total", "kind" => "prune").increment(1);
            }
            Err(e) => tracing::error!(error = %e, "pruning task failed"),
        }
    }

    /// Says, once a minute and not per batch, that the store takes batches but lags
    /// (the oldest unshipped entry older than `lag_warn`), and once when it caught up.
    fn watch_lag(&mut self) {
        let backlog = self.durable().saturating_sub(self.cursor);
        let age = self.status.oldest_age(backlog, self.source.clock.now_ms());
        let now = Instant::now();
        // While the store is down or refuses an entry, its own line says so once a minute.
        if age > self.config.lag_warn && self.failing_since.is_none() && self.status.stuck().is_none() {
            let since = *self.behind_since.get_or_insert(now);
            if self
                .last_behind_log
                .is_none_or(|t| now.duration_since(t) >= OUTAGE_LOG_INTERVAL)
            {
                let shipped = self.status.shipped_entries.load(Ordering::Relaxed);
                let rate = match self.last_behind_log {
                    Some(t) => (shipped - self.shipped_at_behind_log) as f64 / now.duration_since(t).as_secs_f64(),
                    None => 0.0,
                };
                tracing::warn!(
                    backlog,
                    oldest_s = age.as_secs(),
                    behind_s = now.duration_since(since).as_secs(),
                    shipped_per_s = rate.round() as u64,
                    "central store behind the gateway (see OPERATIONS.md, \"The central store is behind or down\")"
                );
                self.last_behind_log = Some(now);
                self.shipped_at_behind_log = shipped;
            }
        } else if age <= self.config.lag_warn
            && let Some(since) = self.behind_since.take()
            && self.last_behind_log.take().is_some()
        {
            tracing::info!(
                behind_s = now.duration_since(since).as_secs(),
                backlog,
                "central store caught up"
            );
        }
    }

    fn failed(&mut self, e: &FlushError) {
        // `cardgate_central_up` and its alert say "cannot reach the store": a store that
        // answers with a refusal is up, and the stuck-entry gauge says what it refuses.
        if let Some(answered) = e.store_answered() {
            self.status.up.store(answered, Ordering::Release);
        }
        self.status.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cardgate_central_errors_total", "kind" => e.kind()).increment(1);
        // A refusal while the one refused entry is still being looked for is a step of
        // that search (halving batches, each half shipped or refused within moments),
        // not an outage: the entry, once found, is logged and repeated as stuck.
        if matches!(e, FlushError::Central(CentralError::Refused(_))) && self.status.stuck().is_none() {
            tracing::debug!(error = %e, "central store refused a batch; looking for the entry");
            return;
        }
        let now = Instant::now();
        let first = self.failing_since.is_none();
        let since = *self.failing_since.get_or_insert(now);
        let due = self
            .last_outage_log
            .is_none_or(|t| now.duration_since(t) >= OUTAGE_LOG_INTERVAL);
        // A different problem that will not pass by itself (a store now ahead, a diverged
        // history) is news; flapping between outage kinds is not.
        let changed = !e.is_transient() && self.last_failure_kind != Some(e.kind());
        if first || due || changed {
            self.last_outage_log = Some(now);
            self.last_failure_kind = Some(e.kind());
            let backlog = self.durable().saturating_sub(self.cursor);
            let failing_s = now.duration_since(since).as_secs();
            let oldest_s = self.status.oldest_age(backlog, self.source.clock.now_ms()).as_secs();
            if let Some(stuck) = self.status.stuck() {
                tracing::error!(
                    entry_id = stuck.entry_id,
                    kind = stuck.kind,
                    error = %stuck.error,
                    backlog,
                    failing_s,
                    "central store refuses an entry; nothing after it is shipped until the store accepts it \
                     (see OPERATIONS.md, \"The central store refuses an entry\")"
                );
            } else if e.is_transient() {
                tracing::warn!(error = %e, kind = e.kind(), backlog, oldest_s, failing_s, "central store unavailable; retrying");
            } else {
                tracing::error!(error = %e, kind = e.kind(), backlog, oldest_s, failing_s, "central store flush failing; retrying");
            }
        } else {
            tracing::debug!(error = %e, kind = e.kind(), "central store flush failed");
        }
    }

    fn recovered(&mut self) {
        self.status.up.store(true, Ordering::Release);
        self.backoff = RETRY_BACKOFF_MIN;
        if let Some(since) = self.failing_since.take() {
            let backlog = self.durable().saturating_sub(self.cursor);
            // After a refused entry its own line ("the refused entry is shipped") has
            // said it: the store was answering all along.
            if self.last_failure_kind != Some("refused") {
                tracing::info!(
                    outage_s = since.elapsed().as_secs(),
                    backlog,
                    "central store flushing again"
                );
            }
            self.last_outage_log = None;
            self.last_failure_kind = None;
            // A store left behind has been behind since the failure began, and the line
            // above said so with the backlog: the drain is reported from here
            // (`watch_lag`), a minute on with the rate it ships at and once it has caught
            // up, not at once with a rate it has had no time to show.
            if self.status.oldest_age(backlog, self.source.clock.now_ms()) > self.config.lag_warn {
                self.behind_since = Some(since);
                self.last_behind_log = Some(Instant::now());
                self.shipped_at_behind_log = self.status.shipped_entries.load(Ordering::Relaxed);
            }
        }
    }

    fn next_backoff(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(self.config.retry_backoff_max);
        wait
    }
}

/// A batch ready to write, and what the flusher needs of its entries afterwards.
struct Prepared {
    batch: Batch,
    oldest_ms: i64,
    first_kind: &'static str,
}

/// Reads the entries after `after` (up to `limit`, none beyond `durable`) and turns them
/// into a batch. Owns everything it uses, so that it can run on the background runtime.
async fn prepare_batch(
    db: Db,
    gateway_id: u64,
    after: u64,
    limit: usize,
    durable: u64,
) -> Result<Prepared, FlushError> {
    let reader = db.clone();
    let (mut entries, prev_hash): (Vec<JournalEntry>, _) =
        tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            // The hash the store must hold for our cursor's entry (`integrity.rs`).
            let prev = reader.entry_hash(after)?;
            Ok((reader.read_entries(after, limit, EntryRecord::decode)?, prev))
        })
        .await
        .map_err(reader_panicked)??;
    entries.retain(|e| e.id <= durable);
    let oldest_ms = match entries.first() {
        Some(e) if e.id == after + 1 => e.record.time_ms,
        first => {
            return Err(FlushError::JournalGap {
                wanted: after + 1,
                found: first.map(|e| e.id),
            });
        }
    };
    // An import's commit applies chunks journaled before it, maybe in an earlier batch:
    // read them back (off the runtime: it is a journal scan).
    let commits: Vec<(u64, ImportCommitted)> = entries
        .iter()
        .filter_map(|e| match &e.record.body {
            EntryBody::ImportCommitted(c) => Some((e.id, (**c).clone())),
            _ => None,
        })
        .collect();
    let mut staged: HashMap<u64, Vec<ImportItem>> = HashMap::new();
    if !commits.is_empty() {
        staged = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let mut out = HashMap::new();
            for (id, c) in &commits {
                if let Some(items) = staged_items_in_journal(&db, *id, c)? {
                    out.insert(c.import_id, items);
                }
            }
            Ok(out)
        })
        .await
        .map_err(reader_panicked)??;
    }
    let mut batch = Batch::build_with(gateway_id, &entries, |c| staged.remove(&c.import_id))?;
    batch.prev_hash = prev_hash;
    let first_kind = entries.first().map(|e| e.record.body.kind_str()).unwrap_or("none");
    Ok(Prepared {
        batch,
        oldest_ms,
        first_kind,
    })
}

fn reader_panicked(e: tokio::task::JoinError) -> FlushError {
    FlushError::Journal(StoreError::Corrupt {
        key: Vec::new(),
        reason: format!("journal reader panicked: {e}"),
    })
}

/// Sleeps for `d` or until told to stop; true when stopping.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
    }
}

/// The items an import committed at entry `commit_entry_id` staged, read back from the
/// journal (the batch needs them to write the master data the commit applies). `None`
/// when a chunk is not found within `CHUNK_SEARCH_ENTRIES_MAX` entries.
pub fn staged_items_in_journal(
    db: &Db,
    commit_entry_id: u64,
    commit: &ImportCommitted,
) -> Result<Option<Vec<ImportItem>>, StoreError> {
    if commit.chunks == 0 {
        return Ok(Some(Vec::new()));
    }
    let mut found: std::collections::BTreeMap<u32, Vec<ImportItem>> = Default::default();
    let mut scanned = 0u64;
    let mut bad: Option<StoreError> = None;
    db.entries_back(commit_entry_id, |id, bytes| {
        scanned += 1;
        if scanned > CHUNK_SEARCH_ENTRIES_MAX {
            return ControlFlow::Break(());
        }
        match EntryRecord::decode(bytes) {
            Ok(EntryRecord {
                body: EntryBody::ImportChunk(c),
                ..
            }) if c.import_id == commit.import_id => {
                found.insert(c.index, c.items);
                if found.len() as u32 == commit.chunks {
                    return ControlFlow::Break(());
                }
            }
            Ok(_) => {}
            Err(e) => {
                bad = Some(StoreError::Corrupt {
                    key: id.to_be_bytes().to_vec(),
                    reason: format!("entry {id}: {e}"),
                });
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = bad {
        return Err(e);
    }
    Ok((found.len() as u32 == commit.chunks).then(|| found.into_values().flatten().collect()))
}
