//! What the system admin's registry accepts: merchants, door groups, terminals and what
//! each kind of terminal must be attached to, and the card desk's blank card stock.

use cardgate_codec::CardNo;

use crate::Refusal;
use crate::model::{InventoryStatus, TerminalKind};
use crate::rules::input::{NAME_BYTES_MAX, check_text};

/// A fee rate is at most 100% (10,000 basis points).
pub const FEE_RATE_BP_MAX: u32 = 10_000;
/// Serial numbers as printed on a device's label.
pub const SERIAL_BYTES_MAX: usize = 64;
/// Blank cards one delivery may hold: a year's intake of a large campus, several times.
pub const STOCK_BATCH_CARDS_MAX: u64 = 1_000_000;
/// How long a replaced terminal key still signs on by default: time for an installer to
/// load the new key into a canteen's terminals during a working day.
pub const REKEY_OVERLAP_DEFAULT_MS: i64 = 24 * 3_600_000;
/// The longest overlap a rekey may ask for: a week, not a back door.
pub const REKEY_OVERLAP_MAX_MS: i64 = 7 * 24 * 3_600_000;

pub fn check_merchant(name: &str, place: &str, contact: &str, fee_rate_bp: u32) -> Result<(), Refusal> {
    check_text("name", name, NAME_BYTES_MAX, true)?;
    check_text("place", place, NAME_BYTES_MAX, false)?;
    check_text("contact", contact, NAME_BYTES_MAX, false)?;
    if fee_rate_bp > FEE_RATE_BP_MAX {
        return Err(Refusal(format!(
            "fee_rate_bp must be 0..={FEE_RATE_BP_MAX} (basis points: 50 is 0.50%)"
        )));
    }
    Ok(())
}

/// What a terminal of `kind` must be attached to: a POS terminal to a merchant and no
/// door group, a door controller to a door group and no merchant, anything else to
/// neither.
pub fn check_attachment(kind: TerminalKind, merchant_id: u64, door_group: u64) -> Result<(), Refusal> {
    match kind {
        TerminalKind::Pos if merchant_id == 0 => Err(Refusal("a POS terminal needs a merchant".into())),
        TerminalKind::Pos if door_group != 0 => Err(Refusal("a POS terminal cannot serve a door group".into())),
        TerminalKind::Door if door_group == 0 => Err(Refusal("a door controller needs a door group".into())),
        TerminalKind::Door if merchant_id != 0 => Err(Refusal("a door controller has no merchant".into())),
        TerminalKind::Attendance | TerminalKind::Kiosk if merchant_id != 0 || door_group != 0 => Err(Refusal(
            "an attendance clock or kiosk has neither a merchant nor a door group".into(),
        )),
        _ => Ok(()),
    }
}

pub fn check_terminal_text(name: &str, place: &str, serial: &str, responsible: &str) -> Result<(), Refusal> {
    check_text("name", name, NAME_BYTES_MAX, true)?;
    check_text("place", place, NAME_BYTES_MAX, false)?;
    check_text("serial", serial, SERIAL_BYTES_MAX, true)?;
    check_text("responsible", responsible, NAME_BYTES_MAX, false)
}

/// A retired terminal stays retired: it is kept for the records, never enabled again.
pub fn check_status_change(from: InventoryStatus, to: InventoryStatus) -> Result<(), Refusal> {
    if from == InventoryStatus::Retired && to != InventoryStatus::Retired {
        return Err(Refusal("a retired terminal stays retired; register a new one".into()));
    }
    Ok(())
}

/// A delivery of blank cards numbered `first..=last`.
pub fn check_stock_batch(first: CardNo, last: CardNo) -> Result<(), Refusal> {
    crate::rules::input::check_card_no(first)?;
    crate::rules::input::check_card_no(last)?;
    if last.0 < first.0 {
        return Err(Refusal("the batch's last card number is below its first".into()));
    }
    if last.0 - first.0 >= STOCK_BATCH_CARDS_MAX {
        return Err(Refusal(format!("a batch holds at most {STOCK_BATCH_CARDS_MAX} cards")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_attached_to_what_it_serves() {
        assert!(check_attachment(TerminalKind::Pos, 7, 0).is_ok());
        assert!(check_attachment(TerminalKind::Pos, 0, 0).is_err());
        assert!(
            check_attachment(TerminalKind::Pos, 7, 3).is_err(),
            "a POS terminal on a door group"
        );
        assert!(check_attachment(TerminalKind::Door, 0, 3).is_ok());
        assert!(check_attachment(TerminalKind::Door, 0, 0).is_err());
        assert!(check_attachment(TerminalKind::Door, 7, 3).is_err());
        assert!(check_attachment(TerminalKind::Attendance, 0, 0).is_ok());
        assert!(check_attachment(TerminalKind::Attendance, 7, 0).is_err());
    }

    #[test]
    fn fee_rates_and_stock_batches_are_bounded() {
        assert!(check_merchant("一食堂", "", "", 50).is_ok());
        assert!(check_merchant("一食堂", "", "", 10_001).is_err());
        assert!(check_merchant("", "", "", 0).is_err());
        assert!(check_stock_batch(CardNo(62_220_000_000_001), CardNo(62_220_000_000_100)).is_ok());
        assert!(check_stock_batch(CardNo(62_220_000_000_100), CardNo(62_220_000_000_001)).is_err());
        assert!(check_stock_batch(CardNo(62_220_000_000_001), CardNo(62_230_000_000_001)).is_err());
    }
}
