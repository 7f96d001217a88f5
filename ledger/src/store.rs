//! The write-ahead store: sled, behind a small interface of our own so that the
//! committer can be tested with injected faults.
//!
//! Everything lives in one sled tree under one-byte key prefixes, so that a group commit
//! is one `apply_batch`, atomic across journal entries and the state records they change:
//!
//! ```text
//! 'J' first id(u64 BE)             journal segment: consecutive entries from that id
//! 'A' account(u64 BE)               Account      } checkpointed state, as of the
//! 'C' card(u64 BE)                  Card         } entry id in meta `checkpoint_id`
//! 'T' terminal(u64 BE)              Terminal     }
//! 'S' terminal(u64 BE)              [SeqRecord]  } (a terminal's remembered outcomes)
//! 'M' name                          meta values (next entry id, tx id mark, params, ...)
//! 'P' account(u64 BE)               Person       } checkpointed, card desk (issue 4)
//! 'O' operator(u64 BE)              Operator     }
//! 'B' version % log max(u64 BE)     BlacklistChange } (a bounded ring, like 'S')
//! 'U' audit id % kept(u64 BE)       AuditRecord  } (a bounded ring)
//! 'G' batch hash(8) account(u64 BE) GrantMark    }
//! 'Z' import(u64 BE) chunk(u32 BE)  staged import chunk, written with its commit
//! ```
//!
//! A segment is `([len u32 LE][entry record])*`; its entries have consecutive ids
//! starting at the id in its key. Big-endian ids keep sled's key order equal to
//! numeric order, which the flusher and recovery rely on.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;

use crate::entry::{EntryRecord, JournalEntry};
use serde::de::DeserializeOwned;

pub const PREFIX_JOURNAL: u8 = b'J';
pub const PREFIX_ACCOUNT: u8 = b'A';
pub const PREFIX_CARD: u8 = b'C';
pub const PREFIX_TERMINAL: u8 = b'T';
pub const PREFIX_SEQ: u8 = b'S';
pub const PREFIX_META: u8 = b'M';
pub const PREFIX_PERSON: u8 = b'P';
pub const PREFIX_OPERATOR: u8 = b'O';
pub const PREFIX_BLACKLIST: u8 = b'B';
pub const PREFIX_AUDIT: u8 = b'U';
pub const PREFIX_GRANT: u8 = b'G';
pub const PREFIX_STAGED: u8 = b'Z';

/// The version byte that starts every state record.
pub const RECORD_FORMAT: u8 = 1;

/// Meta keys.
pub mod meta {
    /// The id the committer gives the next entry (u64 BE). Kept because pruning may
    /// leave the journal empty.
    pub const NEXT_ENTRY_ID: &str = "next_entry_id";
    /// The highest tx id any committed entry used (u64 BE).
    pub const TX_ID_MARK: &str = "tx_id_mark";
    pub const PARAMS: &str = "params";
    /// The last entry id the checkpointed state records reflect (u64 BE).
    pub const CHECKPOINT_ID: &str = "checkpoint_id";
    /// Set once the demo campus exists.
    pub const DEMO: &str = "demo";
    /// Identifies this gateway in the central store (u64 BE), chosen at first start.
    pub const GATEWAY_ID: &str = "gateway_id";
    /// The last entry id the central store confirmed it holds (u64 BE): written by the
    /// flusher after each central commit. A lower bound of the central store's own
    /// cursor, so pruning may rely on it even while the central store is unreachable.
    pub const CENTRAL_CURSOR: &str = "central_cursor";
}

/// sled's page cache. sled's default (1 GiB) alone would break the gateway's memory
/// target; the hot state lives in the ledger's maps, so sled needs little cache.
pub const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("i/o on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("record under key {key:?} does not decode: {reason}")]
    Corrupt { key: Vec<u8>, reason: String },
    #[error("injected fault: {0}")]
    Injected(&'static str),
}

pub fn key_u64(prefix: u8, id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

pub fn key_segment(first_id: u64) -> [u8; 9] {
    key_u64(PREFIX_JOURNAL, first_id)
}

pub fn key_meta(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(PREFIX_META);
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn id_of_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

pub fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(RECORD_FORMAT);
    postcard::to_io(value, &mut out).expect("records serialize");
    out
}

pub fn decode_record<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_vec(),
        reason,
    };
    match bytes.split_first() {
        Some((&RECORD_FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string())),
        Some((v, _)) => Err(corrupt(format!("unknown record format {v}"))),
        None => Err(corrupt("empty record".into())),
    }
}

/// Splits a journal segment into its entries.
pub fn decode_segment(first_id: u64, bytes: &[u8]) -> Result<Vec<JournalEntry>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key_segment(first_id).to_vec(),
        reason,
    };
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut id = first_id;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt("truncated entry length".into()));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(corrupt(format!("entry {id} runs past the segment")));
        }
        let (body, tail) = tail.split_at(len);
        let record = EntryRecord::decode(body).map_err(|e| corrupt(format!("entry {id}: {e}")))?;
        out.push(JournalEntry { id, record });
        id += 1;
        rest = tail;
    }
    Ok(out)
}

/// The id and decision time of a segment's last entry, decoding only that entry.
pub fn segment_last(first_id: u64, bytes: &[u8]) -> Result<(u64, i64), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key_segment(first_id).to_vec(),
        reason,
    };
    let mut rest = bytes;
    let mut id = first_id;
    let mut last: Option<&[u8]> = None;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt("truncated entry length".into()));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(corrupt(format!("entry {id} runs past the segment")));
        }
        let (body, tail) = tail.split_at(len);
        if last.is_some() {
            id += 1;
        }
        last = Some(body);
        rest = tail;
    }
    let body = last.ok_or_else(|| corrupt("empty segment".into()))?;
    let record = EntryRecord::decode(body).map_err(|e| corrupt(format!("entry {id}: {e}")))?;
    Ok((id, record.time_ms))
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
        })
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

    /// Every record under `prefix`, decoded, in key order.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> impl Iterator<Item = Result<T, StoreError>> + '_ {
        self.tree.scan_prefix(prefix).map(|kv| {
            let (k, v) = kv?;
            decode_record(&k, &v)
        })
    }

    /// Up to `limit` committed entries with ids above `after`, in id order. Only
    /// entries the committer has applied are visible; callers that need durable ones
    /// bound `after` by `JournalStats::durable_entry_id`.
    pub fn read_entries(&self, after: u64, limit: usize) -> Result<Vec<JournalEntry>, StoreError> {
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
            for e in decode_segment(first, &v)? {
                if e.id > after {
                    out.push(e);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes whole journal segments, oldest first, while a segment's last entry id is
    /// at most `through_id` and its last entry was decided before `before_ms`; at most
    /// `segments_max` per call. Stops at the first segment that does not qualify, so what
    /// is left is always one contiguous run of entries.
    ///
    /// Plain removes, not a batch: `apply_batch` takes a tree-wide lock that would stall
    /// the committer. The removes become durable with the committer's next flush; a crash
    /// before it brings some back, which is harmless (nothing reads below the cursor).
    pub fn prune_journal(&self, through_id: u64, before_ms: i64, segments_max: usize) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        for kv in self.tree.range(key_segment(0)..key_segment(u64::MAX)) {
            if pruned.segments >= segments_max {
                break;
            }
            let (k, v) = kv?;
            let first = id_of_key(&k).unwrap_or(0);
            let (last_id, last_time_ms) = segment_last(first, &v)?;
            if last_id > through_id || last_time_ms >= before_ms {
                break;
            }
            self.tree.remove(&k)?;
            pruned.segments += 1;
            pruned.entries += last_id + 1 - first;
            pruned.through_id = last_id;
        }
        Ok(pruned)
    }

    pub fn get_record<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.tree.get(key)? {
            Some(v) => Ok(Some(decode_record(key, &v)?)),
            None => Ok(None),
        }
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
