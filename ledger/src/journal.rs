//! The journal: one committer thread owns every durable write and makes one flush cover
//! every submission that arrived while the previous flush ran (group commit).
//!
//! Submissions arrive through a bounded channel; the decision side reserves a slot
//! before it decides, so a decision is never made that cannot be queued, and a full queue
//! pushes back on the connections instead of growing. The committer gives entries ids in
//! arrival order, packs them into segments (a few sled keys per commit, not one per
//! decision: sled costs ~10 µs per key, which would cap the gateway far below its
//! target), applies them, flushes, `fdatasync`s, and only then completes each reply.
//! sled 0.34's `flush_async` can deadlock with concurrent callers (spacejam/sled #1308
//! and others), so nothing else ever flushes.
//!
//! State records (accounts, cards, terminals, remembered outcomes) are not written per
//! decision. The committer collects each committed submission's records, newest wins,
//! and every `CHECKPOINT_INTERVAL` hands them to a checkpointer thread that writes them in
//! one atomic batch together with the id of the last entry they reflect. Recovery loads
//! the checkpoint and replays the entries after it, so the checkpoint only ever holds
//! state that the journal already made durable.
//!
//! A failed apply or sync poisons the journal: every later submission fails at once and
//! the decision side answers "system error" until the gateway is restarted and recovers
//! the durable state. In-memory state may be ahead of sled after a failure; refusing
//! everything is what keeps it from being acted on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};

use crate::audit::{AuditRecord, audit_slot};
use crate::blacklist::{BLACKLIST_LOG_MAX, BlacklistChange};
use crate::desk::{GrantMark, Person, grant_key};
use crate::entry::{EntryBody, EntryRecord};
use crate::ledger::{SEQ_SLOTS, seq_slot};
use crate::model::{Account, Card, Params, SeqRecord, Terminal};
use crate::operators::Operator;
use crate::store::{
    Db, PREFIX_ACCOUNT, PREFIX_AUDIT, PREFIX_BLACKLIST, PREFIX_CARD, PREFIX_GRANT, PREFIX_OPERATOR, PREFIX_PERSON,
    PREFIX_SEQ, PREFIX_TERMINAL, Store, StoreError, decode_record, encode_record, key_meta, key_segment, key_u64, meta,
};

/// Submissions that may wait for the committer. At ~30,000 decisions/s and a few ms per
/// flush, one flush covers a few hundred; this leaves room for a slow disk's hiccup
/// before connections are pushed back, and bounds what a crash can discard unanswered.
pub const QUEUE_DEPTH_MAX: usize = 16 * 1024;

/// The most submissions one group commit takes. Bounds the latency one flush adds.
pub const BATCH_ENTRIES_MAX: usize = 4096;

/// The largest journal segment value. sled stores a tree node above 128 KiB (a quarter
/// of its 512 KiB segment) as a separate blob file that it never fsyncs; a leaf holds up
/// to ~16 keys before it splits, so values this small keep every node inline in the log
/// file that we `fdatasync`.
pub const SEGMENT_BYTES_MAX: usize = 4 * 1024;

/// A checkpoint is handed off at least this often while state changes...
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// ...or after this many entries, whichever comes first. Together they bound what
/// recovery replays (and so start-up time)...
pub const CHECKPOINT_ENTRIES_MAX: u64 = 300_000;
/// ...or once this many distinct records wait, which bounds the memory they take (~140
/// bytes each, twice over while one checkpoint is written and the next collects). With
/// a million accounts, purchases touch a new account nearly every time; a small campus
/// never gets near it.
pub const CHECKPOINT_RECORDS_MAX: usize = 100_000;

const _: () = assert!(BATCH_ENTRIES_MAX <= QUEUE_DEPTH_MAX);

/// When checkpoints are taken. Tests shorten or disable them to exercise replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    pub interval: Duration,
    pub entries_max: u64,
    pub records_max: usize,
    /// `false`: never checkpoint, not even at shutdown, so every start replays the whole
    /// journal (tests only: start-up time grows without bound).
    pub enabled: bool,
    /// `false`: skip the final checkpoint at shutdown, leaving recovery the state a
    /// crash would (tests only).
    pub on_shutdown: bool,
}

impl Default for CheckpointPolicy {
    fn default() -> CheckpointPolicy {
        CheckpointPolicy {
            interval: CHECKPOINT_INTERVAL,
            entries_max: CHECKPOINT_ENTRIES_MAX,
            records_max: CHECKPOINT_RECORDS_MAX,
            enabled: true,
            on_shutdown: true,
        }
    }
}

/// A state record changed by a submission's entry. Meta values are written with the
/// commit itself; everything else goes to the next checkpoint.
#[derive(Clone, Debug)]
pub enum StateWrite {
    Account(Account),
    Card(Card),
    Terminal(Box<Terminal>),
    /// A remembered outcome, stored in its terminal's slot `seq % SEQ_SLOTS`.
    Seq(SeqRecord),
    /// Boxed: at 192 bytes it would set the size of every record waiting for a
    /// checkpoint, and parameters change a few times a year.
    Params(Box<Params>),
    Meta(&'static str, Vec<u8>),
    Person(Box<Person>),
    Operator(Box<Operator>),
    /// A blacklist change, stored in slot `version % BLACKLIST_LOG_MAX`.
    Blacklist(BlacklistChange),
    /// An audit record, stored in slot `id % AUDIT_KEPT`.
    Audit(Box<AuditRecord>),
    Grant(Box<GrantMark>),
    /// Written with its commit like `Meta`, never by a checkpoint; `None` removes the
    /// key. Holds data replay may need whatever the checkpoint (staged imports).
    Staged(Vec<u8>, Option<Vec<u8>>),
}

/// Where a state write lands, so that a later write to the same record replaces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum StateKey {
    Account(u64),
    Card(u64),
    Terminal(u64),
    Seq(u64, u8),
    Params,
    Person(u64),
    Operator(u64),
    Blacklist(u64),
    Audit(u64),
    Grant(u64, u64),
}

impl StateWrite {
    fn key(&self) -> Option<StateKey> {
        Some(match self {
            StateWrite::Account(a) => StateKey::Account(a.id),
            StateWrite::Card(c) => StateKey::Card(c.no.0),
            StateWrite::Terminal(t) => StateKey::Terminal(t.id),
            StateWrite::Seq(s) => StateKey::Seq(s.terminal, crate::ledger::seq_slot(s.seq)),
            StateWrite::Params(_) => StateKey::Params,
            StateWrite::Meta(..) | StateWrite::Staged(..) => return None,
            StateWrite::Person(p) => StateKey::Person(p.account),
            StateWrite::Operator(o) => StateKey::Operator(o.id),
            StateWrite::Blacklist(c) => StateKey::Blacklist(c.version % BLACKLIST_LOG_MAX),
            StateWrite::Audit(a) => StateKey::Audit(audit_slot(a.id)),
            StateWrite::Grant(g) => {
                let (h, a) = grant_key(&g.batch_id, g.account);
                StateKey::Grant(h, a)
            }
        })
    }

    pub(crate) fn add_to(&self, batch: &mut sled::Batch) {
        if let StateWrite::Staged(key, None) = self {
            batch.remove(key.as_slice());
            return;
        }
        let (key, value) = self.encode();
        batch.insert(key, value);
    }

    fn encode(&self) -> (sled::IVec, Vec<u8>) {
        match self {
            StateWrite::Account(a) => (key_u64(PREFIX_ACCOUNT, a.id).as_ref().into(), encode_record(a)),
            StateWrite::Card(c) => (key_u64(PREFIX_CARD, c.no.0).as_ref().into(), encode_record(c)),
            StateWrite::Terminal(t) => (
                key_u64(PREFIX_TERMINAL, t.id).as_ref().into(),
                encode_record(t.as_ref()),
            ),
            StateWrite::Seq(_) => unreachable!("remembered outcomes are written per terminal by checkpoint_ops"),
            StateWrite::Params(p) => (key_meta(meta::PARAMS).into(), encode_record(p.as_ref())),
            StateWrite::Meta(name, v) => (key_meta(name).into(), v.clone()),
            StateWrite::Person(p) => (
                key_u64(PREFIX_PERSON, p.account).as_ref().into(),
                encode_record(p.as_ref()),
            ),
            StateWrite::Operator(o) => (
                key_u64(PREFIX_OPERATOR, o.id).as_ref().into(),
                encode_record(o.as_ref()),
            ),
            StateWrite::Blacklist(c) => (
                key_u64(PREFIX_BLACKLIST, c.version % BLACKLIST_LOG_MAX).as_ref().into(),
                encode_record(c),
            ),
            StateWrite::Audit(a) => (
                key_u64(PREFIX_AUDIT, audit_slot(a.id)).as_ref().into(),
                encode_record(a.as_ref()),
            ),
            StateWrite::Grant(g) => {
                let (h, a) = grant_key(&g.batch_id, g.account);
                let mut k = Vec::with_capacity(17);
                k.push(PREFIX_GRANT);
                k.extend_from_slice(&h.to_be_bytes());
                k.extend_from_slice(&a.to_be_bytes());
                (k.into(), encode_record(g.as_ref()))
            }
            StateWrite::Staged(k, v) => (k.as_slice().into(), v.clone().unwrap_or_default()),
        }
    }
}

/// A key and its new value, or `None` to remove it.
pub(crate) type CheckpointOp = (sled::IVec, Option<Vec<u8>>);

/// What a checkpoint writes: each record under its own key, except a terminal's
/// remembered outcomes, which are merged into one record per terminal (`'S' terminal`).
/// One key per slot made a checkpoint at 10,000 terminals some 300,000 sled inserts, most
/// of the checkpointer's CPU; per terminal it is one read and one insert.
pub(crate) fn checkpoint_ops<'a>(
    tree: &sled::Tree,
    writes: impl IntoIterator<Item = &'a StateWrite>,
) -> Result<Vec<CheckpointOp>, StoreError> {
    let mut out = Vec::new();
    let mut slots: HashMap<u64, Vec<SeqRecord>, foldhash::fast::RandomState> = HashMap::default();
    for w in writes {
        match w {
            StateWrite::Seq(s) => slots.entry(s.terminal).or_default().push(*s),
            StateWrite::Staged(key, None) => out.push((key.as_slice().into(), None)),
            other => {
                let (k, v) = other.encode();
                out.push((k, Some(v)));
            }
        }
    }
    for (terminal, changed) in slots {
        let key = key_u64(PREFIX_SEQ, terminal);
        let mut all: [Option<SeqRecord>; SEQ_SLOTS] = [None; SEQ_SLOTS];
        if let Some(old) = tree.get(key)? {
            for r in decode_record::<Vec<SeqRecord>>(&key, &old)? {
                all[usize::from(seq_slot(r.seq))] = Some(r);
            }
        }
        for r in changed {
            all[usize::from(seq_slot(r.seq))] = Some(r);
        }
        let records: Vec<SeqRecord> = all.into_iter().flatten().collect();
        out.push((key.as_ref().into(), Some(encode_record(&records))));
    }
    Ok(out)
}

/// Adds checkpoint operations to a batch.
pub(crate) fn add_ops(batch: &mut sled::Batch, ops: Vec<CheckpointOp>) {
    for (k, v) in ops {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
}

pub type Writes = SmallVec<[StateWrite; 3]>;

/// What the committer tells a submitter: the entry's id, or 0 when it carried no entry.
pub type CommitResult = Result<u64, JournalError>;

/// One unit of work for the committer: at most one journal entry, the state records it
/// changed, and who to tell when it is durable. A submission without an entry or writes
/// is a barrier: it completes when everything submitted before it is durable.
pub struct Submission {
    pub entry: Option<(i64, EntryBody)>,
    pub writes: Writes,
    /// The tx id the entry used, so that recovery never hands it out again.
    pub tx_id: u64,
    /// Sync even if this batch wrote nothing (makes a checkpoint durable).
    pub force_sync: bool,
    pub done: Option<oneshot::Sender<CommitResult>>,
}

impl Submission {
    pub fn barrier(done: oneshot::Sender<CommitResult>) -> Submission {
        Submission {
            entry: None,
            writes: Writes::new(),
            tx_id: 0,
            force_sync: false,
            done: Some(done),
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the journal failed earlier and refuses writes until restart: {0}")]
    Poisoned(Arc<str>),
    #[error("the journal is shut down")]
    Closed,
}

/// Counters the committer keeps, for metrics and the performance report.
#[derive(Default, Debug)]
pub struct JournalStats {
    pub commits: AtomicU64,
    pub submissions: AtomicU64,
    pub entries: AtomicU64,
    /// The last entry id that is durable.
    pub durable_entry_id: AtomicU64,
    /// The last entry id reflected by a durable checkpoint: entries up to it are not
    /// needed by recovery.
    pub durable_checkpoint_id: AtomicU64,
    pub checkpoints: AtomicU64,
}

/// The submitting side of the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Submission>,
    poisoned: Arc<AtomicBool>,
    pub stats: Arc<JournalStats>,
}

/// Owns the committer thread; joining it waits until everything submitted is durable
/// and a final checkpoint is written.
pub struct CommitterHandle {
    thread: Option<JoinHandle<()>>,
}

impl CommitterHandle {
    /// Waits for the committer to drain and exit. It exits once every `Journal` clone is
    /// dropped, after committing and answering everything that was queued.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Journal {
    /// Starts the committer (and its checkpointer) over `store`. The ids come from
    /// recovery.
    pub fn start(
        db: Db,
        store: Box<dyn Store>,
        next_entry_id: u64,
        checkpoint_id: u64,
        policy: CheckpointPolicy,
    ) -> (Journal, CommitterHandle) {
        assert!(next_entry_id >= 1, "entry ids start at 1");
        assert!(
            checkpoint_id < next_entry_id,
            "a checkpoint cannot be ahead of the journal"
        );
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH_MAX);
        let poisoned = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(JournalStats::default());
        stats.durable_entry_id.store(next_entry_id - 1, Ordering::Relaxed);
        stats.durable_checkpoint_id.store(checkpoint_id, Ordering::Relaxed);

        let (to_checkpointer, checkpoints) = std::sync::mpsc::sync_channel::<Checkpoint>(1);
        let db_tree = db.tree.clone();
        let checkpointer = Checkpointer {
            db,
            journal: tx.downgrade(),
            stats: stats.clone(),
        };
        let checkpointer = std::thread::Builder::new()
            .name("cardgate-checkpoint".into())
            .spawn(move || checkpointer.run(checkpoints))
            .expect("spawn checkpointer thread");
        let committer = Committer {
            store,
            db_tree,
            rx,
            next_entry_id,
            poisoned: poisoned.clone(),
            poison_reason: None,
            stats: stats.clone(),
            dirty: DirtyMap::default(),
            dirty_since: Instant::now(),
            dirty_entries: 0,
            to_checkpointer: Some(to_checkpointer),
            checkpointer: Some(checkpointer),
            segment: Vec::with_capacity(SEGMENT_BYTES_MAX),
            scratch: Vec::with_capacity(256),
            policy,
        };
        let thread = std::thread::Builder::new()
            .name("cardgate-committer".into())
            .spawn(move || committer.run())
            .expect("spawn committer thread");
        (
            Journal { tx, poisoned, stats },
            CommitterHandle { thread: Some(thread) },
        )
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Reserves a queue slot; waits while the queue is full.
    pub async fn reserve(&self) -> Result<mpsc::Permit<'_, Submission>, JournalError> {
        if self.is_poisoned() {
            return Err(JournalError::Poisoned("see the first journal error in the log".into()));
        }
        self.tx.reserve().await.map_err(|_| JournalError::Closed)
    }

    /// Waits until everything submitted before this call is durable.
    pub async fn barrier(&self) -> Result<(), JournalError> {
        let (done, wait) = oneshot::channel();
        self.reserve().await?.send(Submission::barrier(done));
        wait.await.map_err(|_| JournalError::Closed)?.map(|_| ())
    }

    /// Submits and waits until durable; returns the entry id (0 without an entry).
    pub async fn commit(&self, entry: Option<(i64, EntryBody)>, writes: Writes) -> CommitResult {
        let (done, wait) = oneshot::channel();
        self.reserve().await?.send(Submission {
            entry,
            writes,
            tx_id: 0,
            force_sync: false,
            done: Some(done),
        });
        wait.await.map_err(|_| JournalError::Closed)?
    }

    /// Queue occupancy, for metrics.
    pub fn queue_len(&self) -> usize {
        QUEUE_DEPTH_MAX - self.tx.capacity()
    }
}

/// Records changed since the last checkpoint, newest wins; one insert per committed
/// submission on the committer's thread, hence foldhash rather than SipHash.
type DirtyMap = HashMap<StateKey, StateWrite, foldhash::fast::RandomState>;

/// State records reflecting every entry up to `through_id`.
struct Checkpoint {
    writes: DirtyMap,
    through_id: u64,
}

struct Committer {
    store: Box<dyn Store>,
    /// For reading the records a final checkpoint merges into (see `checkpoint_ops`).
    db_tree: sled::Tree,
    rx: mpsc::Receiver<Submission>,
    next_entry_id: u64,
    poisoned: Arc<AtomicBool>,
    poison_reason: Option<Arc<str>>,
    stats: Arc<JournalStats>,
    /// Records changed by committed entries since the last checkpoint hand-off.
    dirty: DirtyMap,
    dirty_since: Instant,
    dirty_entries: u64,
    to_checkpointer: Option<std::sync::mpsc::SyncSender<Checkpoint>>,
    checkpointer: Option<JoinHandle<()>>,
    /// The segment being filled, and one entry's encoding; reused across commits.
    segment: Vec<u8>,
    scratch: Vec<u8>,
    policy: CheckpointPolicy,
}

impl Committer {
    fn run(mut self) {
        let mut batch: Vec<Submission> = Vec::with_capacity(BATCH_ENTRIES_MAX);
        let mut ids: Vec<u64> = Vec::with_capacity(BATCH_ENTRIES_MAX);
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < BATCH_ENTRIES_MAX {
                match self.rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            let result = self.commit(&batch, &mut ids);
            for (i, sub) in batch.drain(..).enumerate() {
                if result.is_ok() {
                    for w in sub.writes {
                        if let Some(key) = w.key() {
                            self.dirty.insert(key, w);
                        }
                    }
                }
                if let Some(done) = sub.done {
                    // The submitter may have gone (connection closed); the entry is
                    // durable all the same and a retry will find it.
                    let _ = done.send(result.clone().map(|()| ids.get(i).copied().unwrap_or(0)));
                }
            }
            ids.clear();
            self.maybe_checkpoint();
        }
        self.final_checkpoint();
        tracing::debug!("committer: all submitters gone, exiting");
    }

    /// Packs the batch's entries into segments, applies them with the batch's meta
    /// writes, and syncs. `ids[i]` is the entry id given to `batch[i]` (0 for none).
    fn commit(&mut self, batch: &[Submission], ids: &mut Vec<u64>) -> Result<(), JournalError> {
        if let Some(reason) = &self.poison_reason {
            return Err(JournalError::Poisoned(reason.clone()));
        }
        let started = Instant::now();
        let mut sled_batch = sled::Batch::default();
        let mut entries = 0u64;
        let mut tx_mark = 0u64;
        let mut force_sync = false;
        let mut wrote_meta = false;
        let mut segment_first = 0u64;
        self.segment.clear();
        for sub in batch {
            force_sync |= sub.force_sync;
            match &sub.entry {
                Some((time_ms, body)) => {
                    let id = self.next_entry_id;
                    self.next_entry_id += 1;
                    self.scratch.clear();
                    EntryRecord::encode_into(*time_ms, body, &mut self.scratch);
                    let encoded = &self.scratch;
                    if !self.segment.is_empty() && self.segment.len() + 4 + encoded.len() > SEGMENT_BYTES_MAX {
                        sled_batch.insert(&key_segment(segment_first), self.segment.as_slice());
                        self.segment.clear();
                    }
                    if self.segment.is_empty() {
                        segment_first = id;
                    }
                    self.segment.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
                    self.segment.extend_from_slice(encoded);
                    ids.push(id);
                    entries += 1;
                }
                None => {
                    debug_assert!(
                        sub.writes.iter().all(|w| w.key().is_none()),
                        "state changes must come with an entry, or recovery cannot replay them"
                    );
                    ids.push(0);
                }
            }
            for w in &sub.writes {
                if w.key().is_none() {
                    w.add_to(&mut sled_batch);
                    wrote_meta = true;
                }
            }
            tx_mark = tx_mark.max(sub.tx_id);
        }
        if !self.segment.is_empty() {
            sled_batch.insert(&key_segment(segment_first), self.segment.as_slice());
        }
        let wrote = entries > 0 || wrote_meta;
        if wrote {
            sled_batch.insert(key_meta(meta::NEXT_ENTRY_ID), self.next_entry_id.to_be_bytes().to_vec());
            if tx_mark > 0 {
                sled_batch.insert(key_meta(meta::TX_ID_MARK), tx_mark.to_be_bytes().to_vec());
            }
            if let Err(e) = self.store.apply(sled_batch) {
                return Err(self.poison("apply", e));
            }
        }
        if wrote || force_sync {
            let applied = Instant::now();
            if let Err(e) = self.store.sync() {
                return Err(self.poison("sync", e));
            }
            metrics::histogram!("cardgate_journal_apply_seconds").record((applied - started).as_secs_f64());
            metrics::histogram!("cardgate_journal_sync_seconds").record(applied.elapsed().as_secs_f64());
            metrics::histogram!("cardgate_journal_commit_seconds").record(started.elapsed().as_secs_f64());
            metrics::histogram!("cardgate_journal_batch_submissions").record(batch.len() as f64);
            metrics::counter!("cardgate_journal_commits_total").increment(1);
            metrics::counter!("cardgate_journal_entries_total").increment(entries);
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.stats.entries.fetch_add(entries, Ordering::Relaxed);
        }
        self.dirty_entries += entries;
        self.stats.submissions.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.stats
            .durable_entry_id
            .store(self.next_entry_id - 1, Ordering::Release);
        Ok(())
    }

    fn maybe_checkpoint(&mut self) {
        if self.dirty.is_empty() || self.poison_reason.is_some() || !self.policy.enabled {
            return;
        }
        if self.dirty_since.elapsed() < self.policy.interval
            && self.dirty_entries < self.policy.entries_max
            && self.dirty.len() < self.policy.records_max
        {
            return;
        }
        let Some(to) = &self.to_checkpointer else { return };
        let records = self.dirty.len();
        let checkpoint = Checkpoint {
            writes: std::mem::take(&mut self.dirty),
            through_id: self.next_entry_id - 1,
        };
        match to.try_send(checkpoint) {
            Ok(()) => {
                // Sized like the last one, so that the committer does not rehash a
                // growing map (a copy of megabytes) in the middle of a commit.
                self.dirty = DirtyMap::with_capacity_and_hasher(records, Default::default());
                self.dirty_since = Instant::now();
                self.dirty_entries = 0;
            }
            // The previous checkpoint is still being written: keep collecting.
            Err(std::sync::mpsc::TrySendError::Full(c)) | Err(std::sync::mpsc::TrySendError::Disconnected(c)) => {
                self.dirty = c.writes;
            }
        }
    }

    /// On shutdown: let the checkpointer finish, then write what is left ourselves, so
    /// that the next start replays nothing.
    fn final_checkpoint(&mut self) {
        drop(self.to_checkpointer.take());
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
        if self.poison_reason.is_some() || !self.policy.enabled || !self.policy.on_shutdown {
            return;
        }
        let mut batch = sled::Batch::default();
        let result = checkpoint_ops(&self.db_tree, self.dirty.values()).and_then(|ops| {
            add_ops(&mut batch, ops);
            batch.insert(
                key_meta(meta::CHECKPOINT_ID),
                (self.next_entry_id - 1).to_be_bytes().to_vec(),
            );
            self.store.apply(batch)?;
            self.store.sync()
        });
        match result {
            Ok(()) => {
                self.stats
                    .durable_checkpoint_id
                    .store(self.next_entry_id - 1, Ordering::Release);
                tracing::debug!(through_id = self.next_entry_id - 1, "final checkpoint written");
            }
            Err(e) => tracing::error!(error = %e, "final checkpoint failed; the next start replays the journal"),
        }
    }

    fn poison(&mut self, step: &'static str, e: StoreError) -> JournalError {
        tracing::error!(error = %e, step, "journal write failed; refusing all decisions until restart");
        metrics::counter!("cardgate_journal_failures_total", "step" => step).increment(1);
        let reason: Arc<str> = format!("{step}: {e}").into();
        self.poison_reason = Some(reason.clone());
        self.poisoned.store(true, Ordering::Release);
        JournalError::Poisoned(reason)
    }
}

/// Writes checkpoints handed off by the committer, off its thread: a checkpoint can be
/// tens of thousands of records, and commits must not wait for it.
struct Checkpointer {
    db: Db,
    journal: mpsc::WeakSender<Submission>,
    stats: Arc<JournalStats>,
}

impl Checkpointer {
    fn run(self, checkpoints: std::sync::mpsc::Receiver<Checkpoint>) {
        while let Ok(c) = checkpoints.recv() {
            let started = Instant::now();
            // Record by record rather than one batch: sled's apply_batch holds a
            // tree-wide write lock, and a checkpoint-sized batch would stall the
            // committer's commits for as long as it takes. A checkpoint cut short by a
            // crash is harmless: `checkpoint_id` still names the previous one, and
            // replaying from there onto newer records converges, because every entry
            // carries the values it leaves (see ledger.rs).
            let tree = &self.db.tree;
            let written = checkpoint_ops(tree, c.writes.values()).and_then(|ops| {
                for (k, v) in ops {
                    match v {
                        Some(v) => tree.insert(k, v)?,
                        None => tree.remove(k)?,
                    };
                }
                tree.insert(key_meta(meta::CHECKPOINT_ID), c.through_id.to_be_bytes().to_vec())?;
                Ok(())
            });
            if let Err(e) = written {
                // Not fatal: the journal still holds every entry the checkpoint would
                // have covered. Stop advancing (pruning waits) and say so loudly.
                tracing::error!(error = %e, "checkpoint write failed");
                metrics::counter!("cardgate_checkpoint_failures_total").increment(1);
                return;
            }
            // Only the committer syncs: ask it to, and wait.
            let durable = match self.journal.upgrade() {
                Some(tx) => {
                    let (done, wait) = oneshot::channel();
                    let mut sub = Submission::barrier(done);
                    sub.force_sync = true;
                    tx.blocking_send(sub).is_ok() && matches!(wait.blocking_recv(), Ok(Ok(_)))
                }
                // Shutting down: the committer's final sync covers this batch.
                None => false,
            };
            if durable {
                self.stats.durable_checkpoint_id.store(c.through_id, Ordering::Release);
            }
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("cardgate_checkpoints_total").increment(1);
            metrics::histogram!("cardgate_checkpoint_seconds").record(started.elapsed().as_secs_f64());
            metrics::histogram!("cardgate_checkpoint_records").record(c.writes.len() as f64);
        }
    }
}
