//! The write-ahead store: sled, behind a small interface of our own so that the
//! committer can be tested with injected faults.
//!
//! Everything lives in one sled tree under one-byte key prefixes, so that a group commit
//! is one `apply_batch`, atomic across journal entries and the state records they change.
//! The journal owns two prefixes:
//!
//! ```text
//! 'J' first id (u64 BE)   journal segment: consecutive entries from that id
//! 'M' name                meta values (next entry id, checkpoint id, the chain's
//!                         anchors, the user's marks)
//! ```
//!
//! Every other prefix is the schema's.

use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;

use crate::layout::{ChainPoint, Hash};
pub use crate::layout::{PREFIX_JOURNAL, PREFIX_META, StoreError, id_of_key, key_meta, key_segment, key_u64, meta};
use crate::record::decode_record;
use crate::segment::{self, Framed};

/// sled's page cache. sled's default (1 GiB) alone would break the gateway's memory
/// target; the hot state lives in the ledger's maps, so sled needs little cache. Its
/// own count undercounts what its pages take: at 64 MiB a million-account gateway
/// reached 1,056 MiB after a load following a `kill -9` restart, at 32 MiB 879 MiB,
/// with no loss of speed (docs/PERFORMANCE.md 5.3).
pub const SLED_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// A committed entry, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry<E> {
    pub id: u64,
    pub record: E,
    /// Its chain hash; `None` for an entry written before the chain.
    pub hash: Option<Hash>,
}

/// What one `Db::prune_journal` call removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub segments: usize,
    pub entries: u64,
    /// The last entry id removed (0 when nothing was).
    pub through_id: u64,
}

/// What the committer needs from durable storage. One implementation is sled; tests wrap
/// it to inject faults.
pub trait Store: Send + 'static {
    /// Applies one batch atomically (not yet durable).
    fn apply(&mut self, batch: sled::Batch) -> Result<(), StoreError>;
    /// Makes everything applied so far durable, including through the disk's write
    /// cache. Nothing may be acknowledged before this returns `Ok`.
    fn sync(&mut self) -> Result<(), StoreError>;
}

/// The sled database of one gateway.
#[derive(Clone)]
pub struct Db {
    pub db: sled::Db,
    pub tree: sled::Tree,
    dir: PathBuf,
    shared: Arc<Shared>,
}

/// What every user of one open database shares: who may write a checkpoint, and who
/// holds pruning off.
#[derive(Default)]
struct Shared {
    /// Held while a checkpoint's records and its id are written, and by whoever needs the
    /// records exactly as of the checkpoint id (a backup, the integrity check).
    checkpoint_gate: Mutex<()>,
    /// Pruning removes nothing while any hold is out (a backup reading the journal).
    prune_holds: AtomicUsize,
}

/// Keeps pruning off while alive.
pub struct PruneHold(Arc<Shared>);

impl Drop for PruneHold {
    fn drop(&mut self) {
        self.0.prune_holds.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Db {
    pub fn open(dir: &Path) -> Result<Db, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            // Only the committer flushes: sled's own background flusher would be a second
            // concurrent flusher, and it is no durability guarantee anyway.
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("cardgate")?;
        Ok(Db {
            db,
            tree,
            dir: dir.to_path_buf(),
            shared: Arc::default(),
        })
    }

    /// Waits for a checkpoint being written, then keeps the next from starting: the state
    /// records stay exactly as of `meta::CHECKPOINT_ID` while the guard lives. The
    /// committer goes on committing; checkpoints wait.
    pub fn checkpoint_gate(&self) -> MutexGuard<'_, ()> {
        // The gate guards no data of its own: a panic while it was held leaves nothing
        // half-done that the next holder could see.
        self.shared
            .checkpoint_gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps pruning from removing anything until the hold is dropped.
    pub fn hold_pruning(&self) -> PruneHold {
        self.shared.prune_holds.fetch_add(1, Ordering::AcqRel);
        PruneHold(self.shared.clone())
    }

    /// A chain point kept as a meta value, if any.
    pub fn get_meta_point(&self, name: &str) -> Result<Option<ChainPoint>, StoreError> {
        Ok(self.get_meta(name)?.and_then(|v| ChainPoint::decode(&v)))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get_meta(&self, name: &str) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.tree.get(key_meta(name))?)
    }

    pub fn get_meta_u64(&self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .get_meta(name)?
            .and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?))))
    }

    /// Writes a meta value outside any commit: it becomes durable with the committer's
    /// next sync, and a crash before it may bring back the old value. Only for values
    /// whose loss costs a re-read (a cursor that another store holds authoritatively).
    pub fn put_meta_u64_lazily(&self, name: &str, value: u64) -> Result<(), StoreError> {
        self.tree.insert(key_meta(name), value.to_be_bytes().to_vec())?;
        Ok(())
    }

    /// Every record under `prefix`, decoded, in key order.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> impl Iterator<Item = Result<T, StoreError>> + '_ {
        self.tree.scan_prefix(prefix).map(|kv| {
            let (k, v) = kv?;
            decode_record(&k, &v)
        })
    }

    pub fn get_record<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.tree.get(key)? {
            Some(v) => Ok(Some(decode_record(key, &v)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` committed entries with ids above `after`, in id order, decoded by
    /// `decode`. Only entries the committer has applied are visible; callers that need
    /// durable ones bound `after` by `JournalStats::durable_entry_id`.
    pub fn read_entries<E, D: std::fmt::Display>(
        &self,
        after: u64,
        limit: usize,
        decode: impl Fn(&[u8]) -> Result<E, D>,
    ) -> Result<Vec<JournalEntry<E>>, StoreError> {
        let mut out = Vec::new();
        // The segment holding `after + 1` starts at or before it.
        let start = match self.tree.range(..=key_segment(after + 1)).next_back() {
            Some(kv) => {
                let (k, _) = kv?;
                if k.first() == Some(&PREFIX_JOURNAL) {
                    id_of_key(&k).unwrap_or(0)
                } else {
                    0
                }
            }
            None => 0,
        };
        for kv in self.tree.range(key_segment(start)..) {
            let (k, v) = kv?;
            if k.first() != Some(&PREFIX_JOURNAL) {
                break;
            }
            let first = id_of_key(&k).unwrap_or(0);
            for Framed { id, hash, bytes } in segment::entries(first, &v)? {
                if id > after {
                    let record = decode(bytes).map_err(|e| StoreError::Corrupt {
                        key: k.to_vec(),
                        reason: format!("entry {id}: {e}"),
                    })?;
                    out.push(JournalEntry {
                        id,
                        record,
                        hash: hash.copied(),
                    });
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Visits the entries below `before_id`, newest first, as raw bytes, until `f`
    /// breaks or the journal's start is reached. (The segment that holds `before_id`
    /// starts below it, so the range up to its key covers it.)
    pub fn entries_back(
        &self,
        before_id: u64,
        mut f: impl FnMut(u64, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.framed_back(before_id, |e| f(e.id, e.bytes))
    }

    /// As `entries_back`, with each entry's hash.
    pub fn framed_back(
        &self,
        before_id: u64,
        mut f: impl FnMut(Framed<'_>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        for kv in self.tree.range(..key_segment(before_id)).rev() {
            let (k, v) = kv?;
            if k.first() != Some(&PREFIX_JOURNAL) {
                break;
            }
            let first = id_of_key(&k).unwrap_or(0);
            for e in segment::entries(first, &v)?.into_iter().rev() {
                if e.id < before_id && f(e).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The chain hash of entry `id`: from the journal, or from the pruning anchor when
    /// `id` is the last entry pruned. `None` when neither holds it or it has no hash.
    pub fn entry_hash(&self, id: u64) -> Result<Option<Hash>, StoreError> {
        if id == 0 {
            return Ok(None);
        }
        let mut found = None;
        self.framed_back(id + 1, |e| {
            if e.id == id {
                found = e.hash.copied();
            }
            ControlFlow::Break(())
        })?;
        if found.is_none()
            && let Some(base) = self.get_meta_point(meta::CHAIN_BASE)?
            && base.id == id
        {
            found = Some(base.hash);
        }
        Ok(found)
    }

    /// The first entry id the journal holds, if any.
    pub fn first_entry_id(&self) -> Result<Option<u64>, StoreError> {
        match self.tree.scan_prefix([PREFIX_JOURNAL]).next() {
            Some(kv) => Ok(id_of_key(&kv?.0)),
            None => Ok(None),
        }
    }

    /// Removes whole journal segments, oldest first, while a segment's last entry id is
    /// at most `through_id` and its last entry (timed by `time_ms`) was decided before
    /// `before_ms`; at most `segments_max` per call. Stops at the first segment that does
    /// not qualify, so what is left is always one contiguous run of entries.
    ///
    /// Plain removes, not a batch: `apply_batch` takes a tree-wide lock that would stall
    /// the committer. The removes become durable with the committer's next flush; a crash
    /// before it brings some back, which is harmless (nothing reads below the cursor).
    pub fn prune_journal(
        &self,
        through_id: u64,
        before_ms: i64,
        segments_max: usize,
        time_ms: impl Fn(&[u8]) -> Option<i64>,
    ) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        if self.shared.prune_holds.load(Ordering::Acquire) > 0 {
            return Ok(pruned);
        }
        for kv in self.tree.range(key_segment(0)..key_segment(u64::MAX)) {
            if pruned.segments >= segments_max {
                break;
            }
            let (k, v) = kv?;
            let first = id_of_key(&k).unwrap_or(0);
            let entries = segment::entries(first, &v)?;
            let last = *entries.last().expect("segments are never empty");
            let last_id = last.id;
            let last_time_ms = time_ms(last.bytes).ok_or_else(|| StoreError::Corrupt {
                key: k.to_vec(),
                reason: format!("entry {last_id} has no readable time"),
            })?;
            if last_id > through_id || last_time_ms >= before_ms {
                break;
            }
            // The anchor first: sled recovers a prefix of its operations, so after a
            // crash the anchor is never older than what was removed.
            if let Some(hash) = last.hash {
                let anchor = ChainPoint {
                    id: last_id,
                    hash: *hash,
                };
                self.tree.insert(key_meta(meta::CHAIN_BASE), anchor.encode().to_vec())?;
            }
            self.tree.remove(&k)?;
            pruned.segments += 1;
            pruned.entries += last_id + 1 - first;
            pruned.through_id = last_id;
        }
        Ok(pruned)
    }

    /// The sled store the committer writes through.
    pub fn store(&self) -> Result<SledStore, StoreError> {
        // sled 0.34 keeps its log in the file `db`; its `flush` ends in sync_file_range,
        // which does not empty the disk's write cache (sled #1452), so we fdatasync it.
        let path = self.dir.join("db");
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(SledStore {
            db: self.clone(),
            log: file,
            log_path: path,
        })
    }
}

pub struct SledStore {
    db: Db,
    log: File,
    log_path: PathBuf,
}

impl Store for SledStore {
    fn apply(&mut self, batch: sled::Batch) -> Result<(), StoreError> {
        Ok(self.db.tree.apply_batch(batch)?)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.db.db.flush()?;
        self.log.sync_data().map_err(|source| StoreError::Io {
            path: self.log_path.clone(),
            source,
        })
    }
}

/// Fault injection for tests: wraps a store and fails `apply` or `sync` on demand.
#[derive(Clone, Default)]
pub struct FaultSwitch(Arc<AtomicU8>);

impl FaultSwitch {
    pub const NONE: u8 = 0;
    pub const FAIL_APPLY: u8 = 1;
    pub const FAIL_SYNC: u8 = 2;

    pub fn set(&self, mode: u8) {
        self.0.store(mode, Ordering::SeqCst);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct FaultyStore<S> {
    pub inner: S,
    pub switch: FaultSwitch,
}

impl<S: Store> Store for FaultyStore<S> {
    fn apply(&mut self, batch: sled::Batch) -> Result<(), StoreError> {
        if self.switch.get() == FaultSwitch::FAIL_APPLY {
            return Err(StoreError::Injected("apply"));
        }
        self.inner.apply(batch)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if self.switch.get() == FaultSwitch::FAIL_SYNC {
            return Err(StoreError::Injected("sync"));
        }
        self.inner.sync()
    }
}
