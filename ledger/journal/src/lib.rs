//! The write-ahead journal: durable, ordered records over sled, and nothing about what
//! they mean. This crate owns the single committer thread that makes one sled flush and
//! one `fdatasync` cover every submission that arrived while the previous one ran (group
//! commit), the segments entries are packed into, the poisoning that refuses every write
//! after a failed one, the checkpointer that writes state records off the committer's
//! thread, and pruning. What an entry or a state record is, and how a checkpoint lays
//! records out, is the user's [`Schema`]: the ledger's, monomorphised, so the hot path
//! pays for no indirection.
//!
//! Every entry carries a hash chained to the one before it (`chain.rs`), computed by the
//! committer as it gives out ids, so that the durable order is the chain's order and a
//! changed, removed or moved entry is found (`chain::verify`).
//!
//! Keys in the one sled tree: `'J' first id (u64 BE)` for a segment, `'M' name` for meta
//! values. Every other prefix belongs to the schema's state records.
#![forbid(unsafe_code)]

pub mod chain;
pub mod checkpoint;
pub mod committer;
pub mod layout;
pub mod record;
pub mod segment;
pub mod store;
pub mod submission;

pub use chain::ChainPoint;
pub use checkpoint::CheckpointPolicy;
pub use committer::{
    BATCH_ENTRIES_MAX, CommitResult, CommitterHandle, Journal, JournalError, JournalStats, QUEUE_DEPTH_MAX, Submission,
};
/// The store underneath, for schemas that lay out their own records.
pub use sled;
pub use store::{Db, FaultSwitch, FaultyStore, JournalEntry, PruneHold, Pruned, SledStore, Store, StoreError};

use std::hash::Hash;

/// A write into sled: a key and its new value, or `None` to remove it.
pub type Write = (sled::IVec, Option<Vec<u8>>);

/// What the journal carries, defined by its user. The journal encodes entries as they
/// are committed and hands state records to the checkpointer; it never looks inside.
pub trait Schema: Send + Sync + 'static {
    /// One journal entry.
    type Entry: Send + 'static;
    /// A state record an entry left, kept for the next checkpoint.
    type Record: Send + 'static;
    /// Where a record lands: of the records waiting for a checkpoint, the newest with a
    /// key replaces the older ones.
    type Key: Copy + Eq + Hash + Send + 'static;

    /// Appends the entry's stored bytes to `out`.
    fn encode_entry(entry: &Self::Entry, out: &mut Vec<u8>);

    /// The record's checkpoint key; `None` for a record written with its own commit
    /// (meta values, data replay needs whatever the checkpoint).
    fn key(record: &Self::Record) -> Option<Self::Key>;

    /// The write of a record without a key, added to its commit's batch.
    fn commit_write(record: &Self::Record) -> Write;

    /// A newer record under the key of one waiting for the checkpoint: by default it
    /// replaces it. A schema whose key covers several parts of one stored value (a
    /// terminal's remembered outcomes, slot by slot) merges the newer into the waiting
    /// one instead, so that the waiting records, and the bound on them, count values
    /// rather than parts.
    fn absorb(waiting: &mut Self::Record, newer: Self::Record) {
        *waiting = newer;
    }

    /// The writes a checkpoint makes for `records` (one per key, newest). May read the
    /// tree, to merge records into what is stored.
    fn checkpoint_writes<'a>(
        tree: &sled::Tree,
        records: impl Iterator<Item = &'a Self::Record>,
    ) -> Result<Vec<Write>, StoreError>
    where
        Self::Record: 'a;
}
