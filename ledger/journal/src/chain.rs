//! The hash chain: every entry carries `H(hash of the entry before ‖ id ‖ entry bytes)`,
//! so that an entry changed, removed or moved is found by anyone who recomputes the
//! chain, and an entry cannot be changed without changing every hash after it, which
//! other places hold (the checkpoint, the pruning anchor, the central store's copy of
//! every hash, the day closes in the audit trail).
//!
//! The hash is SHA-256: the workspace already builds it (`sha2`, RustCrypto, for tokens
//! and MACs), it is the hash an auditor can recompute with any tool (`sha256sum`, SQL's
//! `digest`), and an entry of ~100 bytes is two SHA-256 blocks on the committer's thread
//! (its cost on the commit path is not yet measured in docs/PERFORMANCE.md). BLAKE3 is
//! faster per byte, which entries this short gain little from, and would be one more
//! crate to keep.
//!
//! The committer computes the chain where it gives out ids, so the chain follows the
//! durable order exactly. Where it starts and how it is anchored is kept in meta values
//! (`store::meta`): `chain_start` (the first hashed entry: a journal written by a build
//! before the chain has entries without a hash, and the chain begins after them),
//! `chain_head` (the newest entry, so that the chain goes on after a restart even when
//! pruning emptied the journal), `checkpoint_chain` (the hash at the checkpoint's entry)
//! and `chain_base` (the last entry pruning removed, the anchor of the first one left).
//! `verify` checks all of it.

use std::ops::ControlFlow;

use sha2::{Digest, Sha256};

use crate::layout::StoreError;
pub use crate::layout::{ChainPoint, GENESIS, HASH_BYTES, Hash};
use crate::segment;
use crate::store::{Db, PREFIX_JOURNAL, id_of_key, key_segment, meta};

/// Removed entries `verify` looks for behind an entry that does not link: one deleted
/// entry shifts the ids of the rest of its segment, and saying which one is gone beats
/// calling every entry after it changed.
const SHIFT_SEARCH_MAX: u64 = 64;

/// The faults `verify` reports in detail; beyond it, it counts them.
pub const FAULTS_LISTED_MAX: usize = 1000;

/// The hash of entry `id` whose stored bytes are `entry`, after the entry hashed `prev`.
pub fn link(prev: &Hash, id: u64, entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(id.to_be_bytes());
    h.update(entry);
    h.finalize().into()
}

/// Lower-case hex, as logs, reports and the central store's readers show a hash.
pub fn to_hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(s: &str) -> Option<Hash> {
    let s = s.trim();
    if s.len() != 2 * HASH_BYTES {
        return None;
    }
    let mut out = [0u8; HASH_BYTES];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Where the committer takes the chain up at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The hash the next entry links to.
    pub prev: Hash,
    /// The first hashed entry's id.
    pub start: u64,
    /// The chain starts with the next entry: `chain_start` is written with its commit.
    pub new: bool,
}

/// How the chain goes on at entry `next_entry_id`: after the newest entry's hash, or,
/// for a journal that has none, from `GENESIS` at `next_entry_id`.
pub fn resume(db: &Db, next_entry_id: u64) -> Result<Resume, StoreError> {
    let start = db.get_meta_u64(meta::CHAIN_START)?;
    let last = next_entry_id - 1;
    let head = match db.get_meta_point(meta::CHAIN_HEAD)? {
        Some(p) if p.id == last => Some(p.hash),
        _ => db.entry_hash(last)?,
    };
    Ok(match (start, head) {
        (Some(start), Some(prev)) if start <= last => Resume {
            prev,
            start,
            new: false,
        },
        (Some(start), _) if start == next_entry_id => Resume {
            prev: GENESIS,
            start,
            new: false,
        },
        (Some(start), _) => {
            // The chain was begun, but the entry before the next is gone or has no
            // hash: someone removed entries. Go on (terminals must be served); the
            // integrity check reports the break at this id.
            tracing::error!(
                chain_start = start,
                next_entry_id,
                "the journal's hash chain has no head: entries before {next_entry_id} are missing or changed; run \
                 the integrity check"
            );
            Resume {
                prev: GENESIS,
                start,
                new: false,
            }
        }
        (None, _) => Resume {
            prev: GENESIS,
            start: next_entry_id,
            new: true,
        },
    })
}

/// One thing wrong with the chain, at one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainFault {
    pub entry_id: u64,
    /// `changed` (its bytes or its stored hash differ from what the chain says),
    /// `missing` (entries absent: `entry_id..=last`), `extra` (an id twice), `unhashed`
    /// (no hash after the chain's start), `unreadable` (a segment does not parse),
    /// `checkpoint`, `anchor` or `head` (a recorded hash differs from the journal's).
    pub kind: &'static str,
    /// For `missing`: the last id missing.
    pub last_id: u64,
    /// What the chain says the hash is (hex), where it knows.
    pub expected: String,
    /// What is stored (hex), where something is.
    pub found: String,
    pub detail: String,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub chain_start: Option<u64>,
    pub first_entry_id: Option<u64>,
    pub last_entry_id: Option<u64>,
    /// Entries read, and of them, entries from before the chain.
    pub entries: u64,
    pub unhashed: u64,
    /// The id the check started from with a known hash (0: the chain's genesis); `None`
    /// when the first entry left has nothing to be checked against.
    pub anchored_at: Option<u64>,
    /// The last hashed entry checked.
    pub head: Option<ChainPoint>,
    /// The checkpoint's recorded point, when it was checked against the journal.
    pub checkpoint: Option<ChainPoint>,
    pub faults: Vec<ChainFault>,
    /// Faults beyond `FAULTS_LISTED_MAX`, counted only.
    pub faults_unlisted: u64,
}

impl ChainReport {
    fn fault(&mut self, f: ChainFault) {
        if self.faults.len() < FAULTS_LISTED_MAX {
            self.faults.push(f);
        } else {
            self.faults_unlisted += 1;
        }
    }

    pub fn fault_count(&self) -> u64 {
        self.faults.len() as u64 + self.faults_unlisted
    }
}

/// What the entry before links the next one to.
#[derive(Clone, Copy)]
enum Prev {
    /// Nothing to check the next entry against (the start of what is left, or after a
    /// break): its stored hash is taken as given.
    Unknown,
    Known(Hash),
    /// After an entry that did not link: its recomputed hash (its stored hash was
    /// changed) or its stored one (its bytes were). The next entry says which.
    Either {
        computed: Hash,
        stored: Hash,
    },
}

fn fault(
    entry_id: u64,
    kind: &'static str,
    expected: Option<&Hash>,
    found: Option<&Hash>,
    detail: String,
) -> ChainFault {
    ChainFault {
        entry_id,
        kind,
        last_id: entry_id,
        expected: expected.map(to_hex).unwrap_or_default(),
        found: found.map(to_hex).unwrap_or_default(),
        detail,
    }
}

/// Recomputes the chain over every entry up to `through` and checks it against the
/// stored hashes and the recorded anchors. Reads only; for a running gateway, call it
/// holding `Db::checkpoint_gate` so that the checkpoint's point does not move.
pub fn verify(db: &Db, through: u64) -> Result<ChainReport, StoreError> {
    let mut r = ChainReport {
        chain_start: db.get_meta_u64(meta::CHAIN_START)?,
        ..ChainReport::default()
    };
    let base = db.get_meta_point(meta::CHAIN_BASE)?;
    let checkpoint_id = db.get_meta_u64(meta::CHECKPOINT_ID)?;
    let checkpoint = db
        .get_meta_point(meta::CHECKPOINT_CHAIN)?
        .filter(|p| Some(p.id) == checkpoint_id);
    let head_meta = db.get_meta_point(meta::CHAIN_HEAD)?;
    let next_entry_id = db.get_meta_u64(meta::NEXT_ENTRY_ID)?.unwrap_or(1);
    let start = r.chain_start;

    let mut expected_id: Option<u64> = None;
    let mut prev = Prev::Unknown;
    // The fault whose kind the next entry settles (`Prev::Either`).
    let mut open_fault: Option<usize> = None;
    let mut accepted_at_checkpoint: Option<Hash> = None;
    let mut accepted_at_base: Option<Hash> = None;
    let mut done = false;

    for kv in db.tree.range(key_segment(0)..key_segment(u64::MAX)) {
        let (k, v) = kv?;
        if k.first() != Some(&PREFIX_JOURNAL) {
            break;
        }
        let first = id_of_key(&k).unwrap_or(0);
        if first > through {
            break;
        }
        if r.first_entry_id.is_none() {
            r.first_entry_id = Some(first);
            prev = match (base, start) {
                (Some(b), _) if b.id + 1 == first => {
                    r.anchored_at = Some(b.id);
                    Prev::Known(b.hash)
                }
                (_, Some(s)) if s == first => {
                    r.anchored_at = Some(0);
                    Prev::Known(GENESIS)
                }
                _ => Prev::Unknown,
            };
        }
        match expected_id {
            Some(exp) if first > exp => {
                let mut f = fault(
                    exp,
                    "missing",
                    None,
                    None,
                    format!("entries {exp}..={} are not in the journal", first - 1),
                );
                f.last_id = first - 1;
                r.fault(f);
                prev = Prev::Unknown;
            }
            Some(exp) if first < exp => {
                r.fault(fault(
                    first,
                    "extra",
                    None,
                    None,
                    format!("a segment starts at {first}, but the one before ran to {}", exp - 1),
                ));
                prev = Prev::Unknown;
            }
            _ => {}
        }
        let entries = match segment::entries(first, &v) {
            Ok(e) => e,
            Err(e) => {
                r.fault(fault(
                    first,
                    "unreadable",
                    None,
                    None,
                    format!("the segment at {first}: {e}"),
                ));
                expected_id = None;
                prev = Prev::Unknown;
                continue;
            }
        };
        let mut shift = 0u64;
        for e in entries {
            let id = e.id + shift;
            if id > through {
                done = true;
                break;
            }
            r.entries += 1;
            r.last_entry_id = Some(id);
            expected_id = Some(id + 1);
            let before_chain = start.is_none_or(|s| id < s);
            let Some(stored) = e.hash else {
                if before_chain {
                    r.unhashed += 1;
                    prev = if start == Some(id + 1) {
                        r.anchored_at.get_or_insert(0);
                        Prev::Known(GENESIS)
                    } else {
                        Prev::Unknown
                    };
                } else {
                    r.fault(fault(
                        id,
                        "unhashed",
                        None,
                        None,
                        format!("entry {id} has no hash, but the chain starts at {}", start.unwrap_or(0)),
                    ));
                    prev = Prev::Unknown;
                }
                continue;
            };
            if before_chain {
                r.fault(fault(
                    id,
                    "unhashed",
                    None,
                    Some(stored),
                    format!(
                        "entry {id} has a hash, but the chain is recorded to start at {}",
                        start.map_or("no entry".to_string(), |s| s.to_string())
                    ),
                ));
            }
            let candidates: &[Hash] = match &prev {
                Prev::Unknown => &[],
                Prev::Known(h) => std::slice::from_ref(h),
                Prev::Either { computed, stored } => &[*computed, *stored],
            };
            let links = |at: u64| candidates.iter().position(|p| link(p, at, e.bytes) == *stored);
            let accepted: Hash;
            if candidates.is_empty() {
                accepted = *stored;
            } else if let Some(which) = links(id) {
                settle(&mut r, &mut open_fault, &prev, which);
                accepted = *stored;
            } else if let (Prev::Either { stored: before, .. }, Some(i)) = (&prev, open_fault)
                && let Some(k) = (1..=SHIFT_SEARCH_MAX).find(|k| link(before, id + k, e.bytes) == *stored)
            {
                // The entry before did not link, but this one links to its stored hash
                // once ids move up by `k`: the entry before is intact and sits where
                // removed entries were.
                open_fault = None;
                let removed = id - 1;
                if let Some(f) = r.faults.get_mut(i) {
                    *f = fault(
                        removed,
                        "missing",
                        None,
                        None,
                        format!(
                            "entry {} was removed: the entry stored in its place hashes as entry {}",
                            if k == 1 {
                                removed.to_string()
                            } else {
                                format!("{removed}..={}", removed + k - 1)
                            },
                            removed + k
                        ),
                    );
                    f.last_id = removed + k - 1;
                }
                note(
                    removed + k,
                    before,
                    checkpoint,
                    base,
                    &mut accepted_at_checkpoint,
                    &mut accepted_at_base,
                );
                shift += k;
                let id = id + k;
                r.last_entry_id = Some(id);
                expected_id = Some(id + 1);
                accepted = *stored;
                note(
                    id,
                    &accepted,
                    checkpoint,
                    base,
                    &mut accepted_at_checkpoint,
                    &mut accepted_at_base,
                );
                r.head = Some(ChainPoint { id, hash: accepted });
                prev = Prev::Known(accepted);
                continue;
            } else {
                settle(&mut r, &mut open_fault, &prev, 0);
                let computed = link(&candidates[0], id, e.bytes);
                r.fault(fault(
                    id,
                    "changed",
                    Some(&computed),
                    Some(stored),
                    format!("entry {id} does not link to the entry before it: its bytes or its hash were changed"),
                ));
                open_fault = Some(r.faults.len().saturating_sub(1));
                note(
                    id,
                    stored,
                    checkpoint,
                    base,
                    &mut accepted_at_checkpoint,
                    &mut accepted_at_base,
                );
                r.head = Some(ChainPoint { id, hash: *stored });
                prev = Prev::Either {
                    computed,
                    stored: *stored,
                };
                continue;
            }
            note(
                id,
                &accepted,
                checkpoint,
                base,
                &mut accepted_at_checkpoint,
                &mut accepted_at_base,
            );
            r.head = Some(ChainPoint { id, hash: accepted });
            prev = Prev::Known(accepted);
        }
        if done {
            break;
        }
    }

    // Anchors against what the journal says.
    if let (Some(c), Some(found)) = (checkpoint, accepted_at_checkpoint) {
        r.checkpoint = Some(c);
        if c.hash != found {
            r.fault(fault(
                c.id,
                "checkpoint",
                Some(&found),
                Some(&c.hash),
                format!("the checkpoint recorded another hash for entry {}", c.id),
            ));
        }
    } else if let (Some(c), Some(b)) = (checkpoint, base)
        && c.id == b.id
    {
        r.checkpoint = Some(c);
        if c.hash != b.hash {
            r.fault(fault(
                c.id,
                "checkpoint",
                Some(&b.hash),
                Some(&c.hash),
                format!("the checkpoint and the pruning anchor disagree on entry {}", c.id),
            ));
        }
    } else if checkpoint_id.is_some_and(|c| start.is_some_and(|s| c >= s) && c <= through) && checkpoint.is_none() {
        let c = checkpoint_id.unwrap_or(0);
        r.fault(fault(
            c,
            "checkpoint",
            None,
            None,
            format!("the checkpoint at entry {c} has no recorded hash"),
        ));
    }
    if let (Some(b), Some(found)) = (base, accepted_at_base)
        && b.hash != found
    {
        r.fault(fault(
            b.id,
            "anchor",
            Some(&found),
            Some(&b.hash),
            format!("pruning recorded another hash for entry {}", b.id),
        ));
    }
    // The newest entries: nothing after the last one read may be missing.
    let newest = next_entry_id.saturating_sub(1).min(through);
    let last = r.last_entry_id.unwrap_or_else(|| base.map_or(0, |b| b.id));
    if newest > last && r.first_entry_id.is_some() {
        let mut f = fault(
            last + 1,
            "missing",
            None,
            None,
            format!(
                "entries {}..={newest} were committed but are not in the journal",
                last + 1
            ),
        );
        f.last_id = newest;
        r.fault(f);
    } else if let (Some(h), Some(mine)) = (head_meta, r.head)
        && h.id == mine.id
        && h.hash != mine.hash
        && h.id <= through
    {
        r.fault(fault(
            h.id,
            "head",
            Some(&mine.hash),
            Some(&h.hash),
            format!("the recorded head disagrees with entry {}", h.id),
        ));
    }
    Ok(r)
}

/// The next entry linked from one of `prev`'s candidates: say which kind of change the
/// open fault was.
fn settle(r: &mut ChainReport, open: &mut Option<usize>, prev: &Prev, which: usize) {
    let Some(i) = open.take() else { return };
    if let (Prev::Either { .. }, Some(f)) = (prev, r.faults.get_mut(i)) {
        f.detail = if which == 0 {
            format!(
                "entry {}'s stored hash was changed (its bytes hash as the chain says)",
                f.entry_id
            )
        } else {
            format!(
                "entry {}'s bytes were changed (they no longer hash to its stored hash)",
                f.entry_id
            )
        };
    }
}

fn note(
    id: u64,
    hash: &Hash,
    checkpoint: Option<ChainPoint>,
    base: Option<ChainPoint>,
    at_checkpoint: &mut Option<Hash>,
    at_base: &mut Option<Hash>,
) {
    if checkpoint.is_some_and(|c| c.id == id) {
        *at_checkpoint = Some(*hash);
    }
    if base.is_some_and(|b| b.id == id) {
        *at_base = Some(*hash);
    }
}

/// The hash of the last entry at or before `id` whose bytes `pick` accepts, scanning
/// back from `before_id` (exclusive). For the day closes: the last entry of a day.
pub fn last_where(
    db: &Db,
    before_id: u64,
    mut pick: impl FnMut(&[u8]) -> bool,
) -> Result<Option<(u64, Option<Hash>)>, StoreError> {
    let mut found = None;
    db.framed_back(before_id, |e| {
        if pick(e.bytes) {
            found = Some((e.id, e.hash.copied()));
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_depends_on_the_hash_before_the_id_and_the_bytes() {
        let a = link(&GENESIS, 1, b"entry");
        assert_ne!(
            a,
            link(&GENESIS, 2, b"entry"),
            "the id is hashed: a moved entry does not link"
        );
        assert_ne!(a, link(&[1; 32], 1, b"entry"), "the hash before is hashed");
        assert_ne!(a, link(&GENESIS, 1, b"entrz"));
        assert_eq!(a, link(&GENESIS, 1, b"entry"));
        assert_eq!(from_hex(&to_hex(&a)), Some(a));
        assert_eq!(from_hex("zz"), None);
        let p = ChainPoint { id: 77, hash: a };
        assert_eq!(ChainPoint::decode(&p.encode()), Some(p));
        assert_eq!(ChainPoint::decode(&p.encode()[..39]), None);
    }

    /// The envelope's bytes do not change: the first entry of a new journal, hashed from
    /// the genesis, and framed in its segment.
    #[test]
    fn the_chain_and_its_frame_keep_their_bytes() {
        let h = link(&GENESIS, 1, b"\x01entry");
        assert_eq!(
            to_hex(&h),
            "4497e52f68cb57e269902270ca08d2082ad3441f070796fc83ca42f853b70994"
        );
        let mut seg = Vec::new();
        segment::push(&mut seg, b"\x01entry", Some(&h));
        assert_eq!(&seg[..4], &[6, 0, 0, 0x80], "length 6 with the hashed flag");
        assert_eq!(&seg[4..36], &h);
        assert_eq!(&seg[36..], b"\x01entry");
    }
}
