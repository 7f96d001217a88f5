//! What an operator or a department may send: every limit on input has a name here.

use cardgate_codec::CardNo;

use crate::Refusal;
use crate::money::{AMOUNT_FEN_MAX, from_fen};

/// Person ids as departments send them (student or staff numbers).
pub const PERSON_ID_BYTES_MAX: usize = 32;
/// Names and departments: generous for Chinese names and department titles in UTF-8.
pub const NAME_BYTES_MAX: usize = 96;
/// Reasons for refunds and adjustments: one sentence, kept in the journal for ever.
pub const REASON_BYTES_MAX: usize = 256;
/// Batch ids (grants, cancellations).
pub const BATCH_ID_BYTES_MAX: usize = 64;
/// Items one batch grant or batch cancellation may name: a whole campus.
pub const BATCH_ITEMS_MAX: usize = 200_000;
/// Card numbers are decimal, 8 to 19 digits (fits `u64`), no leading zero: what the
/// campus card printer issues and what terminals read from the card.
pub const CARD_DIGITS_MIN: usize = 8;
pub const CARD_DIGITS_MAX: usize = 19;

/// An idempotency key as clients send them (a UUID is 36): bounded so that keys kept
/// for a day stay small.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// An `Idempotency-Key`: 1..=255 printable ASCII characters, no spaces.
pub fn check_idempotency_key(key: &str) -> Result<(), Refusal> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal(format!(
            "an Idempotency-Key is 1..={IDEMPOTENCY_KEY_BYTES_MAX} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// A positive amount within `AMOUNT_FEN_MAX`.
pub fn check_amount(amount_fen: i64) -> Result<(), Refusal> {
    if amount_fen <= 0 || amount_fen > AMOUNT_FEN_MAX {
        return Err(Refusal(format!(
            "amount must be above 0 and at most {} yuan",
            from_fen(AMOUNT_FEN_MAX)
        )));
    }
    Ok(())
}

pub fn check_text(what: &str, value: &str, max: usize, required: bool) -> Result<(), Refusal> {
    if required && value.trim().is_empty() {
        return Err(Refusal(format!("{what} is required")));
    }
    if value.len() > max {
        return Err(Refusal(format!("{what} is longer than {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(Refusal(format!("{what} holds control characters")));
    }
    Ok(())
}

pub fn check_person_id(id: &str) -> Result<(), Refusal> {
    if id.is_empty()
        || id.len() > PERSON_ID_BYTES_MAX
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Refusal(format!(
            "person id must be 1..={PERSON_ID_BYTES_MAX} letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

/// Parses a card number as printed: 8 to 19 decimal digits, no leading zero.
pub fn parse_card_no(s: &str) -> Result<CardNo, Refusal> {
    let ok = (CARD_DIGITS_MIN..=CARD_DIGITS_MAX).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_digit())
        && !s.starts_with('0');
    match (ok, s.parse::<u64>()) {
        (true, Ok(n)) => Ok(CardNo(n)),
        _ => Err(Refusal(format!(
            "card number must be {CARD_DIGITS_MIN} to {CARD_DIGITS_MAX} digits without a leading zero"
        ))),
    }
}

pub fn check_card_no(no: CardNo) -> Result<(), Refusal> {
    parse_card_no(&no.0.to_string()).map(|_| ())
}

pub fn check_batch_id(id: &str) -> Result<(), Refusal> {
    check_text("batch id", id, BATCH_ID_BYTES_MAX, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_eight_to_nineteen_digits_without_a_leading_zero() {
        assert_eq!(parse_card_no("10000000").unwrap(), CardNo(10_000_000));
        assert!(parse_card_no("1000000").is_err());
        assert!(parse_card_no("01000000").is_err());
        assert!(parse_card_no("99999999999999999999").is_err());
        assert!(parse_card_no("1234567a").is_err());
    }

    #[test]
    fn amounts_are_positive_and_bounded() {
        assert!(check_amount(1).is_ok());
        assert!(check_amount(AMOUNT_FEN_MAX).is_ok());
        assert!(check_amount(0).is_err());
        assert!(check_amount(-1).is_err());
        assert!(check_amount(AMOUNT_FEN_MAX + 1).is_err());
    }
}
