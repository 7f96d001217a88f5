//! What the journal looks like on disk, beneath everything that reads or writes it: the
//! key prefixes and keys, the meta names, the chain's hash and anchor point, and the one
//! error every layer of the store returns. The store, the segments and the chain all
//! build on these and on nothing of each other's here.

use std::path::PathBuf;

pub const PREFIX_JOURNAL: u8 = b'J';
pub const PREFIX_META: u8 = b'M';

/// The journal's own meta keys. The user's live beside them under names of its own.
pub mod meta {
    /// The id the committer gives the next entry (u64 BE). Kept because pruning may
    /// leave the journal empty.
    pub const NEXT_ENTRY_ID: &str = "next_entry_id";
    /// The highest mark any committed submission carried (u64 BE): an id the user hands
    /// out with entries and must never hand out twice (the ledger's tx ids, hence the
    /// name, which data directories already hold).
    pub const MARK: &str = "tx_id_mark";
    /// The last entry id the checkpointed state records reflect (u64 BE).
    pub const CHECKPOINT_ID: &str = "checkpoint_id";
    /// The first entry with a chain hash (u64 BE): entries before it were written by a
    /// build without the chain. Written with that entry's commit.
    pub const CHAIN_START: &str = "chain_start";
    /// The newest entry and its hash (`ChainPoint`), written with every commit: where the
    /// chain goes on after a restart, even if pruning emptied the journal.
    pub const CHAIN_HEAD: &str = "chain_head";
    /// The entry a checkpoint reflects and its hash (`ChainPoint`), written before
    /// `CHECKPOINT_ID`.
    pub const CHECKPOINT_CHAIN: &str = "checkpoint_chain";
    /// The last entry pruning removed and its hash (`ChainPoint`), written before the
    /// removal: the anchor the first entry left is checked against.
    pub const CHAIN_BASE: &str = "chain_base";
}

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

pub const HASH_BYTES: usize = 32;

/// One entry's chain hash.
pub type Hash = [u8; HASH_BYTES];

/// What the first hashed entry links to.
pub const GENESIS: Hash = [0; HASH_BYTES];

/// An entry id and its hash, as the chain's meta values keep them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainPoint {
    pub id: u64,
    pub hash: Hash,
}

impl ChainPoint {
    pub const BYTES: usize = 8 + HASH_BYTES;

    pub fn encode(&self) -> [u8; ChainPoint::BYTES] {
        let mut out = [0u8; ChainPoint::BYTES];
        out[..8].copy_from_slice(&self.id.to_be_bytes());
        out[8..].copy_from_slice(&self.hash);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<ChainPoint> {
        let (id, hash) = bytes.split_first_chunk::<8>()?;
        Some(ChainPoint {
            id: u64::from_be_bytes(*id),
            hash: hash.try_into().ok()?,
        })
    }
}
