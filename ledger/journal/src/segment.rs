//! Segments: consecutive entries stored under one sled key.
//!
//! A segment is a run of framed entries; its entries have consecutive ids from the id in
//! its key (`'J' first id`, big-endian, so that sled's key order is id order). sled costs
//! ~10 µs per key, and one key per decision capped the gateway near 25,000 decisions/s;
//! a few keys per group commit do not.
//!
//! An entry's frame is its length (u32 LE), then, when the length's top bit is set, the
//! entry's chain hash (32 bytes, `chain.rs`), then its bytes:
//!
//! ```text
//! [len u32 LE]                    [entry bytes]    written before the hash chain
//! [len | HASHED u32 LE][hash 32]  [entry bytes]    every entry since
//! ```
//!
//! The flag lives in the length because an entry is far below 2 GiB, and because the
//! entries of a journal written before the chain then read back unchanged, beside
//! hashed ones, without a format switch per segment.

use crate::layout::{HASH_BYTES, Hash, StoreError, key_segment};

/// The largest segment value. sled stores a tree node above 128 KiB (a quarter of its
/// 512 KiB segment) as a separate blob file that it never fsyncs; a leaf holds up to ~16
/// keys before it splits, so values this small keep every node inline in the log file
/// that the committer `fdatasync`s.
pub const SEGMENT_BYTES_MAX: usize = 4 * 1024;

/// Bytes in front of each entry: its length.
pub const ENTRY_LEN_BYTES: usize = 4;

/// The length's flag for an entry followed by its chain hash.
pub const HASHED: u32 = 1 << 31;

/// One entry of a segment as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framed<'a> {
    pub id: u64,
    /// Its chain hash; `None` for an entry written before the chain.
    pub hash: Option<&'a Hash>,
    pub bytes: &'a [u8],
}

/// Splits a segment into its entries, checking that it is well formed.
pub fn entries(first_id: u64, bytes: &[u8]) -> Result<Vec<Framed<'_>>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key_segment(first_id).to_vec(),
        reason,
    };
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut id = first_id;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<ENTRY_LEN_BYTES>() else {
            return Err(corrupt(format!("entry {id}: truncated length")));
        };
        let len = u32::from_le_bytes(*len);
        let (hash, tail) = if len & HASHED != 0 {
            match tail.split_first_chunk::<HASH_BYTES>() {
                Some((h, tail)) => (Some(h), tail),
                None => return Err(corrupt(format!("entry {id}: truncated hash"))),
            }
        } else {
            (None, tail)
        };
        let len = (len & !HASHED) as usize;
        if tail.len() < len {
            return Err(corrupt(format!("entry {id} runs past the segment")));
        }
        let (body, tail) = tail.split_at(len);
        out.push(Framed { id, hash, bytes: body });
        id += 1;
        rest = tail;
    }
    if out.is_empty() {
        return Err(corrupt("empty segment".into()));
    }
    Ok(out)
}

/// The bytes `push` adds for an entry of `len` bytes.
pub fn framed_len(len: usize, hashed: bool) -> usize {
    ENTRY_LEN_BYTES + if hashed { HASH_BYTES } else { 0 } + len
}

/// Appends one entry's frame to a segment being filled.
pub fn push(segment: &mut Vec<u8>, entry: &[u8], hash: Option<&Hash>) {
    let len = u32::try_from(entry.len()).expect("an entry is far below 2 GiB");
    assert!(len & HASHED == 0, "an entry is far below 2 GiB");
    match hash {
        Some(h) => {
            segment.extend_from_slice(&(len | HASHED).to_le_bytes());
            segment.extend_from_slice(h);
        }
        None => segment.extend_from_slice(&len.to_le_bytes()),
    }
    segment.extend_from_slice(entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(e: &[Framed<'_>]) -> Vec<(u64, Vec<u8>)> {
        e.iter().map(|f| (f.id, f.bytes.to_vec())).collect()
    }

    #[test]
    fn a_segment_gives_back_its_entries_with_consecutive_ids() {
        let mut s = Vec::new();
        push(&mut s, b"one", None);
        push(&mut s, b"", Some(&[7; 32]));
        push(&mut s, b"three", Some(&[9; 32]));
        let e = entries(41, &s).unwrap();
        assert_eq!(
            plain(&e),
            vec![(41, b"one".to_vec()), (42, Vec::new()), (43, b"three".to_vec())]
        );
        assert_eq!(e[0].hash, None, "an entry from before the chain");
        assert_eq!(e[1].hash, Some(&[7; 32]));
        assert_eq!(e[2].hash, Some(&[9; 32]));
        assert_eq!(
            s.len(),
            framed_len(3, false) + framed_len(0, true) + framed_len(5, true)
        );
        assert!(entries(41, &s[..s.len() - 1]).is_err(), "a cut entry is corruption");
        assert!(entries(41, &s[..2]).is_err(), "a cut length is corruption");
        assert!(entries(41, &s[..s.len() - 20]).is_err(), "a cut hash is corruption");
        assert!(entries(41, &[]).is_err(), "an empty segment is never written");
    }
}
