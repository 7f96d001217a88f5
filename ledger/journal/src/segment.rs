//! Segments: consecutive entries stored under one sled key.
//!
//! A segment is `([len u32 LE][entry bytes])*`; its entries have consecutive ids from
//! the id in its key (`'J' first id`, big-endian, so that sled's key order is id order).
//! sled costs ~10 µs per key, and one key per decision capped the gateway near 25,000
//! decisions/s; a few keys per group commit do not.

use crate::StoreError;
use crate::store::key_segment;

/// The largest segment value. sled stores a tree node above 128 KiB (a quarter of its
/// 512 KiB segment) as a separate blob file that it never fsyncs; a leaf holds up to ~16
/// keys before it splits, so values this small keep every node inline in the log file
/// that the committer `fdatasync`s.
pub const SEGMENT_BYTES_MAX: usize = 4 * 1024;

/// Bytes in front of each entry: its length.
pub const ENTRY_LEN_BYTES: usize = 4;

/// Splits a segment into `(id, entry bytes)`, checking that it is well formed.
pub fn entries(first_id: u64, bytes: &[u8]) -> Result<Vec<(u64, &[u8])>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key_segment(first_id).to_vec(),
        reason,
    };
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut id = first_id;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<ENTRY_LEN_BYTES>() else {
            return Err(corrupt("truncated entry length".into()));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(corrupt(format!("entry {id} runs past the segment")));
        }
        let (body, tail) = tail.split_at(len);
        out.push((id, body));
        id += 1;
        rest = tail;
    }
    if out.is_empty() {
        return Err(corrupt("empty segment".into()));
    }
    Ok(out)
}

/// Appends one entry's length and bytes to a segment being filled.
pub fn push(segment: &mut Vec<u8>, entry: &[u8]) {
    let len = u32::try_from(entry.len()).expect("an entry is far below 4 GiB");
    segment.extend_from_slice(&len.to_le_bytes());
    segment.extend_from_slice(entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_gives_back_its_entries_with_consecutive_ids() {
        let mut s = Vec::new();
        push(&mut s, b"one");
        push(&mut s, b"");
        push(&mut s, b"three");
        let e = entries(41, &s).unwrap();
        assert_eq!(e, vec![(41, &b"one"[..]), (42, &b""[..]), (43, &b"three"[..])]);
        assert!(entries(41, &s[..s.len() - 1]).is_err(), "a cut entry is corruption");
        assert!(entries(41, &s[..2]).is_err(), "a cut length is corruption");
        assert!(entries(41, &[]).is_err(), "an empty segment is never written");
    }
}
