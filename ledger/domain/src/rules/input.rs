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

/// Why a money string was refused: unreadable (not the form `12.50`) or readable but
/// out of bounds (a third decimal, more than `AMOUNT_FEN_MAX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YuanRefusal {
    Unreadable(Refusal),
    OutOfBounds(Refusal),
}

impl YuanRefusal {
    pub fn into_refusal(self) -> Refusal {
        match self {
            YuanRefusal::Unreadable(r) | YuanRefusal::OutOfBounds(r) => r,
        }
    }
}

/// A money string as operators send it, in fen: digits, optionally a point and one or
/// two decimals, optionally a leading minus (signed adjustments; callers that need a
/// positive amount say so with `check_amount`). Nothing else: no exponent, sign `+`,
/// spaces, digit separators or bare point, which a general decimal parser takes and an
/// operator did not mean (`"1e2"` is not one yuan and two).
pub fn parse_yuan(s: &str) -> Result<i64, YuanRefusal> {
    let unreadable = || {
        YuanRefusal::Unreadable(Refusal(format!(
            "amount {s:?} is not a number of yuan: digits with at most two decimals, e.g. \"12.50\""
        )))
    };
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, places) = match unsigned.split_once('.') {
        Some((w, p)) => (w, p),
        None => (unsigned, ""),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (unsigned.contains('.') && !digits(places)) {
        return Err(unreadable());
    }
    if places.len() > 2 {
        return Err(YuanRefusal::OutOfBounds(Refusal(format!(
            "amount {s:?} has more than two decimal places"
        ))));
    }
    let too_large = || {
        YuanRefusal::OutOfBounds(Refusal(format!(
            "amount {s:?} is more than {} yuan",
            from_fen(AMOUNT_FEN_MAX)
        )))
    };
    // Leading zeros carry no value; the rest is bounded before it is summed.
    let whole = whole.trim_start_matches('0');
    if whole.len() > 10 {
        return Err(too_large());
    }
    let yuan: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| unreadable())?
    };
    let cents: i64 = match places.len() {
        0 => 0,
        1 => places.parse::<i64>().map_err(|_| unreadable())? * 10,
        _ => places.parse().map_err(|_| unreadable())?,
    };
    let fen = yuan * 100 + cents;
    if fen > AMOUNT_FEN_MAX {
        return Err(too_large());
    }
    Ok(if negative { -fen } else { fen })
}

pub fn check_text(what: &str, value: &str, max: usize, required: bool) -> Result<(), Refusal> {
    if required && value.trim().is_empty() {
        return Err(Refusal(format!("{what} is required")));
    }
    if value.len() > max {
        return Err(Refusal(format!("{what} is longer than {max} bytes")));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        let cause = if c == '\n' || c == '\r' {
            "a line break".to_string()
        } else {
            describe_char(c)
        };
        return Err(Refusal(format!("{what} holds {cause}")));
    }
    Ok(())
}

/// A person id is 1 to `PERSON_ID_BYTES_MAX` ASCII letters, digits, '-' or '_'. The
/// refusal names what is wrong with this one.
pub fn check_person_id(id: &str) -> Result<(), Refusal> {
    if id.is_empty() {
        return Err(Refusal("person id is required".into()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(Refusal(format!(
            "person id holds {}: only letters A-Z and a-z, digits, '-' and '_' may be in one",
            describe_char(c)
        )));
    }
    if id.len() > PERSON_ID_BYTES_MAX {
        return Err(Refusal(format!(
            "person id has {} characters: at most {PERSON_ID_BYTES_MAX}",
            id.len()
        )));
    }
    Ok(())
}

/// Parses a card number as printed: 8 to 19 decimal digits, no leading zero. The
/// refusal names what is wrong with this one.
pub fn parse_card_no(s: &str) -> Result<CardNo, Refusal> {
    let rule = format!("card numbers have {CARD_DIGITS_MIN} to {CARD_DIGITS_MAX} digits and no leading zero");
    if s.is_empty() {
        return Err(Refusal("card number is required".into()));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_digit()) {
        return Err(Refusal(format!("card number holds {}: {rule}", describe_char(c))));
    }
    if !(CARD_DIGITS_MIN..=CARD_DIGITS_MAX).contains(&s.len()) {
        return Err(Refusal(format!("card number has {} digits: {rule}", s.len())));
    }
    if s.starts_with('0') {
        return Err(Refusal(format!("card number starts with 0: {rule}")));
    }
    // 19 digits always fit a u64; the error arm is for the compiler, not for input.
    s.parse::<u64>()
        .map(CardNo)
        .map_err(|_| Refusal(format!("card number is out of range: {rule}")))
}

/// A character as an operator can find it in a file: itself where it is visible, and
/// always its code point (a full-width digit and an ASCII one look alike).
fn describe_char(c: char) -> String {
    if c == ' ' {
        "a space".into()
    } else if c.is_whitespace() || c.is_control() || INVISIBLE.contains(&c) {
        format!("the invisible character U+{:04X}", c as u32)
    } else {
        format!("'{c}' (U+{:04X})", c as u32)
    }
}

/// Full-width forms of ASCII '!' to '~' (U+FF01 to U+FF5E), which Chinese input methods
/// type in full-width mode: each lies `FULL_WIDTH_OFFSET` above its ASCII counterpart.
const FULL_WIDTH_FIRST: char = '\u{FF01}';
const FULL_WIDTH_LAST: char = '\u{FF5E}';
const FULL_WIDTH_OFFSET: u32 = 0xFEE0;

/// Invisible characters that copying from a web page or a word processor leaves in a
/// cell (zero width space, non-joiner, joiner, word joiner, byte order mark). None of
/// them can be meant as part of an identifier, and none can be seen to be deleted.
const INVISIBLE: [char; 5] = ['\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}'];

/// An identifier (person id, card number) as a spreadsheet or an input method may have
/// left it, in the ASCII form the rules check: full-width letters, digits and signs
/// become ASCII ('２０２４' is '2024'), every Unicode space that is not a control
/// character (U+3000 ideographic space, U+00A0 no-break space, ...) becomes ' ',
/// invisible characters go, and the ends are trimmed. A space left inside stays, for
/// the check to refuse: "2024 0012" may be two ids run together.
pub fn normalize_identifier(s: &str) -> String {
    let mapped: String = s
        .chars()
        .filter(|c| !INVISIBLE.contains(c))
        .map(|c| {
            if (FULL_WIDTH_FIRST..=FULL_WIDTH_LAST).contains(&c) {
                char::from_u32(c as u32 - FULL_WIDTH_OFFSET).unwrap_or(c)
            } else if c.is_whitespace() && !c.is_control() {
                ' '
            } else {
                c
            }
        })
        .collect();
    mapped.trim().to_string()
}

/// What a spreadsheet did to a number typed in a column not formatted as text, if this
/// identifier shows it: the cause in words a data admin can act on. Only shapes no
/// identifier has: a person id is letters, digits, '-' and '_', so '.', '+' and ','
/// tell. ("2E10" is a plausible id; Excel always writes the exponent's sign.)
pub fn spreadsheet_mangling(s: &str) -> Option<&'static str> {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if let Some((mantissa, exponent)) = s.split_once(['E', 'e']) {
        let mantissa_ok = match mantissa.split_once('.') {
            Some((whole, fraction)) => digits(whole) && digits(fraction),
            None => digits(mantissa),
        };
        let exponent_ok = exponent.strip_prefix(['+', '-']).is_some_and(digits);
        if mantissa_ok && exponent_ok {
            return Some(
                "the spreadsheet turned this number into scientific notation, which loses its last digits: \
                 format the column as text and enter the numbers again",
            );
        }
    }
    if let Some((whole, fraction)) = s.split_once('.')
        && digits(whole)
        && !fraction.is_empty()
        && fraction.bytes().all(|b| b == b'0')
    {
        return Some("the spreadsheet turned this number into a decimal: format the column as text, without decimals");
    }
    let mut groups = s.split(',');
    if s.contains(',')
        && groups.next().is_some_and(|g| digits(g) && g.len() <= 3)
        && groups.all(|g| g.len() == 3 && digits(g))
    {
        return Some(
            "the spreadsheet wrote this number with thousands separators: format the column as text, without separators",
        );
    }
    None
}

/// A person id without its leading zeros: what is left of "0099000300" when a
/// spreadsheet takes it for a number ("99000300"). Two ids with the same such form are
/// one person written two ways far more often than two persons.
pub fn without_leading_zeros(id: &str) -> &str {
    id.trim_start_matches('0')
}

/// Every other person id of at most `PERSON_ID_BYTES_MAX` bytes that differs from `id`
/// only by leading zeros: at most that many look-ups tell whether one exists, with no
/// index kept for it.
pub fn ids_differing_by_leading_zeros(id: &str) -> impl Iterator<Item = String> + '_ {
    let bare = without_leading_zeros(id);
    // An id of zeros alone has no bare form: "0" is the shortest other spelling.
    let fewest = usize::from(bare.is_empty());
    (fewest..=PERSON_ID_BYTES_MAX.saturating_sub(bare.len()))
        .map(move |zeros| format!("{}{bare}", "0".repeat(zeros)))
        .filter(move |other| other != id)
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
    fn refusals_name_the_cause() {
        let msg = |r: Result<CardNo, Refusal>| r.unwrap_err().0;
        assert!(msg(parse_card_no("1000000")).contains("has 7 digits"));
        assert!(msg(parse_card_no("01000000")).contains("starts with 0"));
        assert!(msg(parse_card_no("1234567a")).contains("'a' (U+0061)"));
        assert!(msg(parse_card_no("")).contains("required"));
        let msg = |id: &str| check_person_id(id).unwrap_err().0;
        assert!(msg("2024 001").contains("a space"), "{}", msg("2024 001"));
        assert!(msg("2024\u{3000}001").contains("U+3000"));
        assert!(msg("２０２４").contains("'２' (U+FF12)"), "{}", msg("２０２４"));
        assert!(msg(&"9".repeat(PERSON_ID_BYTES_MAX + 1)).contains("33 characters"));
        assert!(msg("").contains("required"));
        assert!(check_person_id(&"9".repeat(PERSON_ID_BYTES_MAX)).is_ok());
        assert_eq!(
            check_text("name", "Zhang\r\nSan", NAME_BYTES_MAX, true).unwrap_err().0,
            "name holds a line break"
        );
    }

    #[test]
    fn identifiers_come_to_ascii_and_lose_their_surrounding_spaces() {
        assert_eq!(normalize_identifier("２０２４００１２３４"), "2024001234");
        assert_eq!(normalize_identifier("\u{3000}Ｔ００４２\u{a0}"), "T0042");
        assert_eq!(normalize_identifier(" \u{200b}2024001234\u{feff} "), "2024001234");
        assert_eq!(normalize_identifier("６２２２－０１＿x"), "6222-01_x");
        // A space inside stays, for the check to refuse.
        assert_eq!(normalize_identifier("2024\u{3000}0012"), "2024 0012");
        // Chinese characters are not full-width ASCII: left for the check to name.
        assert_eq!(normalize_identifier("张三"), "张三");
        for id in ["２０２４００１２３４", "\u{3000}Ｔ００４２\u{a0}"] {
            assert!(check_person_id(&normalize_identifier(id)).is_ok(), "{id}");
        }
    }

    #[test]
    fn spreadsheet_manglings_are_recognised_and_plain_ids_are_not() {
        for s in [
            "4.40E+17",
            "6.22E+15",
            "1E+10",
            "4.4e-3",
            "62220000100001.0",
            "2024001234.00",
            "62,220,000,100,001",
        ] {
            assert!(spreadsheet_mangling(s).is_some(), "{s}");
        }
        assert!(
            spreadsheet_mangling("4.40E+17")
                .unwrap()
                .contains("scientific notation")
        );
        assert!(spreadsheet_mangling("1.0").unwrap().contains("decimal"));
        assert!(spreadsheet_mangling("1,000").unwrap().contains("thousands"));
        for s in [
            "2E10",
            "2024001234",
            "T0042",
            "E+10",
            "4.40E+",
            "1.5",
            "1,00",
            "12345,678",
            "",
            "4.40E+17x",
        ] {
            assert_eq!(spreadsheet_mangling(s), None, "{s}");
        }
    }

    #[test]
    fn ids_that_differ_only_by_leading_zeros() {
        assert_eq!(without_leading_zeros("0099000300"), "99000300");
        assert_eq!(without_leading_zeros("T0042"), "T0042");
        let others: Vec<String> = ids_differing_by_leading_zeros("0099000300").collect();
        assert!(others.contains(&"99000300".to_string()));
        assert!(others.contains(&"099000300".to_string()));
        assert!(others.contains(&"00099000300".to_string()));
        assert!(!others.contains(&"0099000300".to_string()), "not itself");
        assert!(others.iter().all(|o| o.len() <= PERSON_ID_BYTES_MAX));
        assert_eq!(others.len(), PERSON_ID_BYTES_MAX - "99000300".len());
        let zeros: Vec<String> = ids_differing_by_leading_zeros("00").collect();
        assert!(zeros.contains(&"0".to_string()) && !zeros.contains(&String::new()));
        let max: Vec<String> = ids_differing_by_leading_zeros(&"9".repeat(PERSON_ID_BYTES_MAX)).collect();
        assert!(max.is_empty());
    }

    #[test]
    fn money_strings_are_digits_and_two_places_at_most() {
        for (s, fen) in [
            ("12.50", 1250),
            ("12.5", 1250),
            ("12", 1200),
            ("0.01", 1),
            ("0", 0),
            ("007.00", 700),
            ("-5.00", -500),
            ("10000000.00", AMOUNT_FEN_MAX),
        ] {
            assert_eq!(parse_yuan(s), Ok(fen), "{s}");
        }
        for s in [
            "1e2", "1E2", "1.2345e2", "1e-2", "1_0.00", " 5.00", "5.00 ", "+5.00", "5.", ".5", "", "-", "--5", "5.0.0",
            "1,000.00", "¥5", "５", "NaN", "inf", "0x10",
        ] {
            assert!(matches!(parse_yuan(s), Err(YuanRefusal::Unreadable(_))), "{s:?}");
        }
        for s in [
            "1.234",
            "10000000.01",
            "99999999999999999.00",
            "99999999999999999999999999999",
        ] {
            assert!(matches!(parse_yuan(s), Err(YuanRefusal::OutOfBounds(_))), "{s:?}");
        }
        let Err(YuanRefusal::OutOfBounds(r)) = parse_yuan("99999999999999999.00") else {
            panic!("too large");
        };
        assert!(r.0.contains("more than 10000000.00 yuan"), "{}", r.0);
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
