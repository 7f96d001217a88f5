//! What the journal's parts say to each other: a submission and its answer, the
//! counters, the map of records waiting for a checkpoint. The committer and the
//! checkpointer both use these; keeping them here lets neither import the other.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use smallvec::SmallVec;
use tokio::sync::oneshot;

use crate::Schema;

/// What the committer tells a submitter: the id of the submission's first entry, or 0
/// when it carried none.
pub type CommitResult = Result<u64, JournalError>;

/// One unit of work for the committer: its entries (usually one; an operation and its
/// audit record travel together, so that they are durable together or not at all), the
/// state records they left, and who to tell when it is durable. A submission without
/// entries or records is a barrier: it completes when everything submitted before it
/// is durable.
pub struct Submission<S: Schema> {
    pub entries: SmallVec<[S::Entry; 1]>,
    pub records: SmallVec<[S::Record; 3]>,
    /// An id the submitter handed out with these entries (a tx id); the highest ever
    /// committed is kept durable (`meta::MARK`), so that recovery never hands it out again.
    pub mark: u64,
    /// Sync even if this batch wrote nothing (makes a checkpoint durable).
    pub force_sync: bool,
    pub done: Option<oneshot::Sender<CommitResult>>,
}

impl<S: Schema> Submission<S> {
    pub fn barrier(done: oneshot::Sender<CommitResult>) -> Submission<S> {
        Submission {
            entries: SmallVec::new(),
            records: SmallVec::new(),
            mark: 0,
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

/// Records changed since the last checkpoint, newest wins; one insert per committed
/// record on the committer's thread, hence foldhash rather than SipHash.
pub(crate) type DirtyMap<S> = HashMap<<S as Schema>::Key, <S as Schema>::Record, foldhash::fast::RandomState>;

/// Puts a committed record with the ones waiting for the checkpoint (`Schema::absorb`
/// decides what a newer one under the same key does).
pub(crate) fn put_dirty<S: Schema>(dirty: &mut DirtyMap<S>, key: S::Key, record: S::Record) {
    match dirty.entry(key) {
        std::collections::hash_map::Entry::Occupied(mut waiting) => S::absorb(waiting.get_mut(), record),
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(record);
        }
    }
}
