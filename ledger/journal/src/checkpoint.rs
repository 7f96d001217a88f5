//! Checkpoints: the state records committed entries left, written off the committer's
//! thread together with the id of the last entry they reflect (`meta::CHECKPOINT_ID`).
//!
//! Recovery loads them and replays the entries after that id. This is correct even when
//! a crash cut a checkpoint short, provided the schema keeps one rule: an entry carries
//! the values it leaves, never a delta, so replaying it onto a newer record converges.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::chain::ChainPoint;
use crate::store::{Db, key_meta, meta};
use crate::submission::{DirtyMap, JournalStats, Submission};
use crate::{Schema, Write};

/// A checkpoint is handed off at least this often while state changes...
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// ...or after this many entries, whichever comes first. Together they bound what
/// recovery replays (and so start-up time)...
pub const CHECKPOINT_ENTRIES_MAX: u64 = 300_000;
/// ...or once this many distinct records wait, which bounds the memory they take (~140
/// bytes each, twice over while one checkpoint is written and the next collects). With
/// a million accounts, purchases touch a new account nearly every time; a small campus
/// never gets near it. A schema may merge several parts of one stored value into one
/// waiting record (`Schema::absorb`): the ledger's terminal outcomes, up to 32 per
/// terminal (~3 KiB), whose number the terminals bound rather than this.
pub const CHECKPOINT_RECORDS_MAX: usize = 100_000;

/// A checkpoint is written at most this many records a second, in chunks of
/// `CHECKPOINT_CHUNK_RECORDS`, sleeping between chunks while ahead of that pace; and at
/// least fast enough to finish within half the time its records took to collect, so
/// that the checkpointer never falls behind the records arriving for the next one (a
/// million accounts at full speed reach `CHECKPOINT_RECORDS_MAX` in seconds). Written
/// flat out, a checkpoint of ~75,000 records took a core for 150-550 ms on two cores
/// shared with the sessions, and its slots held half of the answers slower than 5 ms
/// (docs/PERFORMANCE.md 5.4). At 40,000
/// a second, a campus's checkpoint every 10 s still took ~0.6 s, and the 100 ms slots in
/// which it overlapped a central-store batch had a third of their answers slower than
/// 5 ms; at 10,000 a second it is spread over the ~2 s it may take (5.7). The
/// half-collection-time bound, which the pace never slows, is unchanged, and so is the
/// work.
pub const CHECKPOINT_PACE_RECORDS_PER_S: u32 = 10_000;
pub const CHECKPOINT_CHUNK_RECORDS: usize = 256;

/// How long into writing a checkpoint of `total` records, collected over `collected`,
/// the `written`-th may start. Zero for records collected in no time (what recovery
/// replayed, handed over at start-up): those are written flat out.
pub fn checkpoint_pace(written: usize, total: usize, collected: Duration) -> Duration {
    let at_pace = Duration::from_secs(1) / CHECKPOINT_PACE_RECORDS_PER_S;
    let keeping_up = collected / u32::try_from(total.max(1).saturating_mul(2)).unwrap_or(u32::MAX);
    at_pace.min(keeping_up) * u32::try_from(written).unwrap_or(u32::MAX)
}

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

/// State records reflecting every entry up to `through_id`.
pub(crate) struct Checkpoint<S: Schema> {
    pub(crate) records: DirtyMap<S>,
    pub(crate) through_id: u64,
    /// How long its records took to collect: bounds how slowly it may be written.
    pub(crate) collected: Duration,
    /// The chain's hash at `through_id`: pruning the journal behind the checkpoint
    /// keeps the chain checkable from it on. `None` before the chain starts.
    pub(crate) chain: Option<ChainPoint>,
}

/// Adds writes to a batch.
pub fn add_writes(batch: &mut sled::Batch, writes: Vec<Write>) {
    for (k, v) in writes {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
}

/// Adds a checkpoint's id, and before it the chain point it records.
pub fn add_checkpoint_id(batch: &mut sled::Batch, through_id: u64, chain: Option<ChainPoint>) {
    match chain {
        Some(p) => batch.insert(key_meta(meta::CHECKPOINT_CHAIN), p.encode().to_vec()),
        None => batch.remove(key_meta(meta::CHECKPOINT_CHAIN)),
    }
    batch.insert(key_meta(meta::CHECKPOINT_ID), through_id.to_be_bytes().to_vec());
}

/// Writes a checkpoint in one atomic, durable batch, on the caller's thread, before any
/// committer runs: recovery uses it for the state it replayed. Reads the checkpoint id
/// back, so that a store that did not keep it is found here rather than at the next start.
pub fn write_now<S: Schema>(
    db: &Db,
    store: &mut dyn crate::Store,
    records: &[S::Record],
    through_id: u64,
) -> Result<(), crate::StoreError> {
    let chain = db
        .entry_hash(through_id)?
        .map(|hash| ChainPoint { id: through_id, hash });
    let _gate = db.checkpoint_gate();
    let mut batch = sled::Batch::default();
    add_writes(&mut batch, S::checkpoint_writes(&db.tree, records.iter())?);
    add_checkpoint_id(&mut batch, through_id, chain);
    store.apply(batch)?;
    store.sync()?;
    let back = db.get_meta_u64(meta::CHECKPOINT_ID)?;
    assert_eq!(back, Some(through_id), "the checkpoint id reads back as written");
    Ok(())
}

/// Writes checkpoints handed off by the committer, off its thread: a checkpoint can be
/// tens of thousands of records, and commits must not wait for it.
pub(crate) struct Checkpointer<S: Schema> {
    pub(crate) db: Db,
    pub(crate) journal: mpsc::WeakSender<Submission<S>>,
    pub(crate) stats: Arc<JournalStats>,
}

impl<S: Schema> Checkpointer<S> {
    pub(crate) fn run(self, checkpoints: std::sync::mpsc::Receiver<Checkpoint<S>>) {
        while let Ok(c) = checkpoints.recv() {
            let started = Instant::now();
            // Record by record rather than one batch: sled's apply_batch holds a
            // tree-wide write lock, and a checkpoint-sized batch would stall the
            // committer's commits for as long as it takes. A checkpoint cut short by a
            // crash is harmless: `checkpoint_id` still names the previous one, and
            // replaying from there onto newer records converges.
            let tree = &self.db.tree;
            // Whoever needs the records exactly as of the checkpoint id (a backup, the
            // integrity check) holds the gate; this checkpoint waits for them.
            let gate = self.db.checkpoint_gate();
            let written = S::checkpoint_writes(tree, c.records.values()).and_then(|writes| {
                // On a schedule rather than a fixed pause per chunk: time the writes
                // themselves took, or lost to a busy machine, counts towards it.
                let total = c.records.len();
                let writing = Instant::now();
                for (i, (k, v)) in writes.into_iter().enumerate() {
                    if i > 0 && i % CHECKPOINT_CHUNK_RECORDS == 0 {
                        let due = checkpoint_pace(i, total, c.collected);
                        let spent = writing.elapsed();
                        if spent < due {
                            std::thread::sleep(due - spent);
                        }
                    }
                    match v {
                        Some(v) => tree.insert(k, v)?,
                        None => tree.remove(k)?,
                    };
                }
                match c.chain {
                    Some(p) => tree.insert(key_meta(meta::CHECKPOINT_CHAIN), p.encode().to_vec())?,
                    None => tree.remove(key_meta(meta::CHECKPOINT_CHAIN))?,
                };
                tree.insert(key_meta(meta::CHECKPOINT_ID), c.through_id.to_be_bytes().to_vec())?;
                Ok(())
            });
            drop(gate);
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
                    let mut sub = Submission::<S>::barrier(done);
                    sub.force_sync = true;
                    tx.blocking_send(sub).is_ok() && matches!(wait.blocking_recv(), Ok(Ok(_)))
                }
                // Shutting down: the committer's final sync covers this batch.
                None => false,
            };
            if durable {
                let before = self.stats.durable_checkpoint_id.swap(c.through_id, Ordering::AcqRel);
                assert!(before <= c.through_id, "checkpoints move forward");
            }
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("cardgate_checkpoints_total").increment(1);
            metrics::histogram!("cardgate_checkpoint_seconds").record(started.elapsed().as_secs_f64());
            metrics::histogram!("cardgate_checkpoint_records").record(c.records.len() as f64);
            // Debug only: with a timestamp, lines up a checkpoint with a latency timeline.
            tracing::debug!(
                records = c.records.len(),
                micros = started.elapsed().as_micros() as u64,
                through_id = c.through_id,
                "checkpoint written"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_spread_at_the_pace_but_finishes_within_half_its_collection_time() {
        let ten_s = Duration::from_secs(10);
        assert_eq!(checkpoint_pace(0, 1_000, ten_s), Duration::ZERO);
        // A small campus's checkpoint, collected over the whole interval: the pace.
        assert_eq!(checkpoint_pace(10_000, 20_000, ten_s), Duration::from_secs(1));
        assert_eq!(checkpoint_pace(256, 20_000, ten_s), Duration::from_micros(25_600));
        // A larger one over the interval: within half of it, however slow the pace.
        assert_eq!(checkpoint_pace(62_500, 62_500, ten_s), Duration::from_secs(5));
        // At the record bound after 4 s: faster than the pace, done within 2 s.
        assert_eq!(
            checkpoint_pace(50_000, 100_000, Duration::from_secs(4)),
            Duration::from_secs(1)
        );
        for (total, collected) in [(100_000, Duration::from_secs(4)), (300_000, Duration::from_millis(900))] {
            assert!(checkpoint_pace(total, total, collected) <= collected / 2);
        }
        // Replayed at start-up: flat out.
        assert_eq!(checkpoint_pace(50_000, 100_000, Duration::ZERO), Duration::ZERO);
    }
}
