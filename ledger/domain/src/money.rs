//! Money is `Decimal` with two places inside the gateway and integer fen everywhere it
//! leaves it (wire, sled records, SQLite). These are the only two conversions.

use rust_decimal::Decimal;

/// Fen in one yuan: money has exactly two decimal places.
pub const MONEY_SCALE: u32 = 2;

/// The largest single amount any request may carry: 10,000,000.00 yuan. Far above any
/// real payment or top-up, far below where `i64` fen or `Decimal` could overflow when a
/// balance accumulates many of them.
pub const AMOUNT_FEN_MAX: i64 = 1_000_000_000;

pub fn from_fen(fen: i64) -> Decimal {
    Decimal::new(fen, MONEY_SCALE)
}

/// Exact conversion back to fen; `None` when the value has more than two places or does
/// not fit, which for values the ledger computed is a broken invariant.
pub fn to_fen(value: Decimal) -> Option<i64> {
    let mut v = value;
    v.rescale(MONEY_SCALE);
    if v != value {
        return None;
    }
    i64::try_from(v.mantissa()).ok()
}

/// `serde(with = "crate::money::fen")`: a `Decimal` stored as integer fen.
pub mod fen {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        let fen =
            super::to_fen(*v).ok_or_else(|| serde::ser::Error::custom(format!("{v} is not a whole number of fen")))?;
        s.serialize_i64(fen)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        Ok(super::from_fen(i64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fen_round_trips_exactly() {
        for fen in [
            0,
            1,
            -1,
            99,
            100,
            12_345,
            AMOUNT_FEN_MAX,
            -AMOUNT_FEN_MAX,
            i64::MAX / 1000,
        ] {
            assert_eq!(to_fen(from_fen(fen)), Some(fen));
        }
        assert_eq!(from_fen(1234).to_string(), "12.34");
    }

    #[test]
    fn sub_fen_values_are_refused() {
        assert_eq!(to_fen(Decimal::new(1, 3)), None);
        assert_eq!(to_fen(Decimal::new(10, 3)), Some(1));
    }
}
