//! State records as stored: a format byte, then postcard. The schema's records go
//! through here; the journal's own meta values are plain big-endian integers.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StoreError;

/// The version byte that starts every state record.
pub const RECORD_FORMAT: u8 = 1;

pub fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(RECORD_FORMAT);
    // Plain data into a Vec cannot fail to serialize.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_behind_their_format_byte() {
        let bytes = encode_record(&(7u64, String::from("x")));
        assert_eq!(bytes[0], RECORD_FORMAT);
        assert_eq!(decode_record::<(u64, String)>(b"k", &bytes).unwrap(), (7, "x".into()));
        let mut future = bytes.clone();
        future[0] = 2;
        assert!(matches!(
            decode_record::<(u64, String)>(b"k", &future),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
