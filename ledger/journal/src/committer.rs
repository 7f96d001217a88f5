//! The committer: one thread owns every durable write and makes one flush cover every
//! submission that arrived while the previous flush ran (group commit).
//!
//! Submissions arrive through a bounded channel; the deciding side reserves a slot
//! before it decides, so a decision is never made that cannot be queued, and a full queue
//! pushes back on the connections instead of growing. The committer gives entries ids in
//! arrival order, packs them into segments, applies them, flushes, `fdatasync`s, and
//! only then completes each submission. sled 0.34's `flush_async` can deadlock with
//! concurrent callers (spacejam/sled #1308 and others), so nothing else ever flushes.
//!
//! State records are not written per decision. The committer collects each committed
//! submission's records, newest wins, and hands them to the checkpointer
//! (`checkpoint.rs`), which writes them together with the id of the last entry they
//! reflect. Recovery loads the checkpoint and replays the entries after it, so the
//! checkpoint only ever holds state the journal already made durable.
//!
//! The committer also computes the hash chain (`chain.rs`) as it gives out ids: each
//! entry's hash is framed with it in its segment, and the newest entry's hash is written
//! with every commit (`meta::CHAIN_HEAD`), so the chain is exactly the durable order.
//!
//! A failed apply or sync poisons the journal: every later submission fails at once and
//! the deciding side answers "system error" until the process is restarted and recovers
//! the durable state. Memory may be ahead of disk after a failure; refusing everything
//! is what keeps it from being acted on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::Schema;
use crate::chain::{self, ChainPoint, Hash};
use crate::checkpoint::{Checkpoint, CheckpointPolicy, Checkpointer, add_checkpoint_id, add_writes};
use crate::segment::{self, SEGMENT_BYTES_MAX};
use crate::store::{Db, Store, StoreError, key_meta, key_segment, meta};
pub use crate::submission::{CommitResult, JournalError, JournalStats, Submission};
use crate::submission::{DirtyMap, put_dirty};

/// Submissions that may wait for the committer. At ~30,000 decisions/s and a few ms per
/// flush, one flush covers a few hundred; this leaves room for a slow disk's hiccup
/// before connections are pushed back, and bounds what a crash can discard unanswered.
pub const QUEUE_DEPTH_MAX: usize = 16 * 1024;

/// The most submissions one group commit takes. Bounds the latency one flush adds.
pub const BATCH_ENTRIES_MAX: usize = 4096;

const _: () = assert!(BATCH_ENTRIES_MAX <= QUEUE_DEPTH_MAX);

/// The submitting side of the journal; cheap to clone.
pub struct Journal<S: Schema> {
    tx: mpsc::Sender<Submission<S>>,
    poisoned: Arc<AtomicBool>,
    pub stats: Arc<JournalStats>,
}

impl<S: Schema> Clone for Journal<S> {
    fn clone(&self) -> Journal<S> {
        Journal {
            tx: self.tx.clone(),
            poisoned: self.poisoned.clone(),
            stats: self.stats.clone(),
        }
    }
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

impl<S: Schema> Journal<S> {
    /// Starts the committer (and its checkpointer) over `store`. The ids come from
    /// recovery.
    pub fn start(
        db: Db,
        store: Box<dyn Store>,
        next_entry_id: u64,
        checkpoint_id: u64,
        policy: CheckpointPolicy,
    ) -> Result<(Journal<S>, CommitterHandle), StoreError> {
        Journal::start_after_replay(db, store, next_entry_id, checkpoint_id, policy, Vec::new(), 0)
    }

    /// As `start`, after a recovery replayed `replayed` entries past the checkpoint and
    /// left `pending`, the records they changed: those wait for the next checkpoint like
    /// any commit's, written by the checkpointer off the start-up path (until then the
    /// checkpoint id stays where it was, and a crash replays the same entries again).
    pub fn start_after_replay(
        db: Db,
        store: Box<dyn Store>,
        next_entry_id: u64,
        checkpoint_id: u64,
        policy: CheckpointPolicy,
        pending: Vec<S::Record>,
        replayed: u64,
    ) -> Result<(Journal<S>, CommitterHandle), StoreError> {
        assert!(next_entry_id >= 1, "entry ids start at 1");
        assert!(
            checkpoint_id < next_entry_id,
            "a checkpoint cannot be ahead of the journal"
        );
        let resume = chain::resume(&db, next_entry_id)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH_MAX);
        let poisoned = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(JournalStats::default());
        stats.durable_entry_id.store(next_entry_id - 1, Ordering::Relaxed);
        stats.durable_checkpoint_id.store(checkpoint_id, Ordering::Relaxed);

        let (to_checkpointer, checkpoints) = std::sync::mpsc::sync_channel::<Checkpoint<S>>(1);
        let checkpointer = Checkpointer::<S> {
            db: db.clone(),
            journal: tx.downgrade(),
            stats: stats.clone(),
        };
        let checkpointer = std::thread::Builder::new()
            .name("cardgate-checkpoint".into())
            .spawn(move || checkpointer.run(checkpoints))
            .expect("spawn checkpointer thread");
        // In replay order, so that of two records under one key the newer stays.
        let mut dirty = DirtyMap::<S>::with_capacity_and_hasher(pending.len(), Default::default());
        for r in pending {
            if let Some(key) = S::key(&r) {
                put_dirty::<S>(&mut dirty, key, r);
            }
        }
        let mut committer = Committer::<S> {
            store,
            db,
            rx,
            next_entry_id,
            poisoned: poisoned.clone(),
            poison_reason: None,
            stats: stats.clone(),
            dirty,
            dirty_since: Instant::now(),
            dirty_entries: replayed,
            to_checkpointer: Some(to_checkpointer),
            checkpointer: Some(checkpointer),
            segment: Vec::with_capacity(SEGMENT_BYTES_MAX),
            scratch: Vec::with_capacity(256),
            policy,
            chain_prev: resume.prev,
            chain_start: resume.start,
            chain_start_pending: resume.new,
        };
        // What replay changed is checkpointed at once, beside the first requests: waiting
        // for the policy's trigger would let the next commits' records pile onto it.
        if !committer.dirty.is_empty() && policy.enabled {
            committer.hand_off();
        }
        let thread = std::thread::Builder::new()
            .name("cardgate-committer".into())
            .spawn(move || committer.run())
            .expect("spawn committer thread");
        Ok((
            Journal { tx, poisoned, stats },
            CommitterHandle { thread: Some(thread) },
        ))
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Reserves a queue slot; waits while the queue is full.
    pub async fn reserve(&self) -> Result<mpsc::Permit<'_, Submission<S>>, JournalError> {
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

    /// Queue occupancy, for metrics.
    pub fn queue_len(&self) -> usize {
        QUEUE_DEPTH_MAX - self.tx.capacity()
    }
}

struct Committer<S: Schema> {
    store: Box<dyn Store>,
    /// For reading the records a final checkpoint merges into, and its gate.
    db: Db,
    rx: mpsc::Receiver<Submission<S>>,
    next_entry_id: u64,
    poisoned: Arc<AtomicBool>,
    poison_reason: Option<Arc<str>>,
    stats: Arc<JournalStats>,
    /// Records changed by committed entries since the last checkpoint hand-off.
    dirty: DirtyMap<S>,
    dirty_since: Instant,
    dirty_entries: u64,
    to_checkpointer: Option<std::sync::mpsc::SyncSender<Checkpoint<S>>>,
    checkpointer: Option<JoinHandle<()>>,
    /// The segment being filled, and one entry's encoding; reused across commits.
    segment: Vec<u8>,
    scratch: Vec<u8>,
    policy: CheckpointPolicy,
    /// The hash of the last entry given an id (`GENESIS` before the first).
    chain_prev: Hash,
    /// The first hashed entry's id.
    chain_start: u64,
    /// `meta::CHAIN_START` is still to be written, with the first hashed entry.
    chain_start_pending: bool,
}

impl<S: Schema> Committer<S> {
    /// The chain point a checkpoint through `through_id` records: none before the chain.
    fn chain_point(&self, through_id: u64) -> Option<ChainPoint> {
        (through_id >= self.chain_start && through_id == self.next_entry_id - 1).then_some(ChainPoint {
            id: through_id,
            hash: self.chain_prev,
        })
    }

    fn run(mut self) {
        let mut batch: Vec<Submission<S>> = Vec::with_capacity(BATCH_ENTRIES_MAX);
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
            assert_eq!(ids.len(), batch.len(), "one id per submission");
            // In place: a submission is several hundred bytes (its entry and records
            // inline), and moving each out of the batch, and its records out of it,
            // were copies of all of it per submission.
            for (sub, id) in batch.iter_mut().zip(ids.iter()) {
                if result.is_ok() {
                    for r in sub.records.drain(..) {
                        if let Some(key) = S::key(&r) {
                            put_dirty::<S>(&mut self.dirty, key, r);
                        }
                    }
                }
                if let Some(done) = sub.done.take() {
                    // The submitter may have gone (connection closed); the entry is
                    // durable all the same and a retry will find it.
                    let _ = done.send(result.clone().map(|()| *id));
                }
            }
            batch.clear();
            ids.clear();
            self.maybe_checkpoint();
        }
        self.final_checkpoint();
        tracing::debug!("committer: all submitters gone, exiting");
    }

    /// Packs the batch's entries into segments, applies them with the batch's direct
    /// writes, and syncs. `ids[i]` is the first entry id of `batch[i]` (0 for none).
    fn commit(&mut self, batch: &[Submission<S>], ids: &mut Vec<u64>) -> Result<(), JournalError> {
        if let Some(reason) = &self.poison_reason {
            ids.resize(batch.len(), 0);
            return Err(JournalError::Poisoned(reason.clone()));
        }
        let started = Instant::now();
        let first_id = self.next_entry_id;
        let mut sled_batch = sled::Batch::default();
        let mut entries = 0u64;
        let mut mark = 0u64;
        let mut force_sync = false;
        let mut wrote_direct = false;
        let mut segment_first = 0u64;
        self.segment.clear();
        for sub in batch {
            force_sync |= sub.force_sync;
            ids.push(if sub.entries.is_empty() { 0 } else { self.next_entry_id });
            debug_assert!(
                !sub.entries.is_empty() || sub.records.iter().all(|r| S::key(r).is_none()),
                "state changes must come with an entry, or recovery cannot replay them"
            );
            for entry in &sub.entries {
                let id = self.next_entry_id;
                self.next_entry_id += 1;
                self.scratch.clear();
                S::encode_entry(entry, &mut self.scratch);
                // The id is the durable order: the chain follows it exactly.
                self.chain_prev = chain::link(&self.chain_prev, id, &self.scratch);
                if !self.segment.is_empty()
                    && self.segment.len() + segment::framed_len(self.scratch.len(), true) > SEGMENT_BYTES_MAX
                {
                    sled_batch.insert(&key_segment(segment_first), self.segment.as_slice());
                    self.segment.clear();
                }
                if self.segment.is_empty() {
                    segment_first = id;
                }
                segment::push(&mut self.segment, &self.scratch, Some(&self.chain_prev));
                entries += 1;
            }
            for r in &sub.records {
                if S::key(r).is_none() {
                    let (k, v) = S::commit_write(r);
                    match v {
                        Some(v) => sled_batch.insert(k, v),
                        None => sled_batch.remove(k),
                    }
                    wrote_direct = true;
                }
            }
            mark = mark.max(sub.mark);
        }
        if !self.segment.is_empty() {
            sled_batch.insert(&key_segment(segment_first), self.segment.as_slice());
        }
        assert_eq!(
            self.next_entry_id - first_id,
            entries,
            "entry ids are consecutive and match the batch"
        );
        let wrote = entries > 0 || wrote_direct;
        if entries > 0 {
            let head = ChainPoint {
                id: self.next_entry_id - 1,
                hash: self.chain_prev,
            };
            sled_batch.insert(key_meta(meta::CHAIN_HEAD), head.encode().to_vec());
            if self.chain_start_pending {
                sled_batch.insert(key_meta(meta::CHAIN_START), self.chain_start.to_be_bytes().to_vec());
            }
        }
        if wrote {
            sled_batch.insert(key_meta(meta::NEXT_ENTRY_ID), self.next_entry_id.to_be_bytes().to_vec());
            if mark > 0 {
                sled_batch.insert(key_meta(meta::MARK), mark.to_be_bytes().to_vec());
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
            if entries > 0 {
                self.chain_start_pending = false;
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
        let durable = self.next_entry_id - 1;
        let before = self.stats.durable_entry_id.swap(durable, Ordering::AcqRel);
        assert!(before <= durable, "the durable entry id never goes back");
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
        self.hand_off();
    }

    /// Hands the waiting records to the checkpointer, unless it is still writing the
    /// previous checkpoint.
    fn hand_off(&mut self) {
        let Some(to) = &self.to_checkpointer else { return };
        let records = self.dirty.len();
        let through_id = self.next_entry_id - 1;
        let checkpoint = Checkpoint {
            records: std::mem::take(&mut self.dirty),
            through_id,
            collected: self.dirty_since.elapsed(),
            chain: self.chain_point(through_id),
        };
        match to.try_send(checkpoint) {
            Ok(()) => {
                // Sized like the last one, so that the committer does not rehash a
                // growing map (a copy of megabytes) in the middle of a commit; but no
                // larger than a checkpoint's usual size: after one that grew while the
                // checkpointer was busy (millions of records while a campus is created)
                // an empty map that large would be hundreds of MiB held for nothing.
                let capacity = records.min(self.policy.records_max);
                self.dirty = DirtyMap::<S>::with_capacity_and_hasher(capacity, Default::default());
                self.dirty_since = Instant::now();
                self.dirty_entries = 0;
            }
            // The previous checkpoint is still being written: keep collecting.
            Err(std::sync::mpsc::TrySendError::Full(c)) | Err(std::sync::mpsc::TrySendError::Disconnected(c)) => {
                self.dirty = c.records;
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
        let through_id = self.next_entry_id - 1;
        let chain = self.chain_point(through_id);
        let mut batch = sled::Batch::default();
        let _gate = self.db.checkpoint_gate();
        let result = S::checkpoint_writes(&self.db.tree, self.dirty.values()).and_then(|writes| {
            add_writes(&mut batch, writes);
            add_checkpoint_id(&mut batch, through_id, chain);
            self.store.apply(batch)?;
            self.store.sync()
        });
        match result {
            Ok(()) => {
                self.stats.durable_checkpoint_id.store(through_id, Ordering::Release);
                tracing::debug!(through_id, "final checkpoint written");
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
