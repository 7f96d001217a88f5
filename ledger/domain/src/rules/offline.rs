//! What becomes of a sale a POS terminal made offline, when it is uploaded. The food was
//! eaten: a sale is posted whatever happened, and what should not have happened is
//! flagged for the card desk (an exception each). Only two sales are not posted, because
//! there is nothing to debit: an unknown card, and a closed account (money never leaves
//! a closed account). Both are exceptions too; nothing is dropped silently.

use cardgate_codec::{DeclineReason, OfflineLimits};
use rust_decimal::Decimal;
use smallvec::SmallVec;

use crate::model::{Account, AccountStatus, Card, ExceptionKind};
use crate::money::from_fen;

/// Sales one OFFLINE_BATCH may carry: a batch is checked whole before any is posted.
pub const OFFLINE_BATCH_MAX: u16 = 64;

/// How far ahead of the gateway's clock a sale may be dated before its time is suspect.
pub const CLOCK_AHEAD_TOLERANCE_MS: i64 = 5 * 60_000;

/// What an uploaded sale comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaleVerdict {
    /// Debit the account; raise an exception for each flag.
    Post {
        balance_after: Decimal,
        flags: SmallVec<[ExceptionKind; 2]>,
    },
    /// Nothing to debit; raise this exception.
    Refuse(ExceptionKind),
}

/// What is known about the sale and its card when it is uploaded.
#[derive(Clone, Copy, Debug)]
pub struct SaleFacts<'a> {
    pub card: Option<&'a Card>,
    pub account: Option<&'a Account>,
    /// When the card joined the blacklist, if it is on it now (`None` when not, or
    /// `Some(i64::MIN)` when it is and the time is not known: before the records kept it).
    pub listed_since_ms: Option<i64>,
    pub amount_fen: i64,
    pub sale_time_ms: i64,
    pub upload_ms: i64,
    /// What this card had already spent offline on this terminal on the sale's day, in
    /// the uploads the gateway has seen.
    pub card_day_before_fen: i64,
}

/// Whether the sale's time can be taken as it is.
pub fn plausible_time(limits: &OfflineLimits, sale_time_ms: i64, upload_ms: i64) -> bool {
    let oldest = upload_ms.saturating_sub(i64::from(limits.offline_minutes_max).saturating_mul(60_000));
    sale_time_ms <= upload_ms.saturating_add(CLOCK_AHEAD_TOLERANCE_MS) && sale_time_ms >= oldest
}

/// The verdict on one uploaded sale.
pub fn offline_sale(limits: &OfflineLimits, f: &SaleFacts<'_>) -> SaleVerdict {
    let (Some(card), Some(account)) = (f.card, f.account) else {
        return SaleVerdict::Refuse(ExceptionKind::OfflineUnknownCard);
    };
    if account.status == AccountStatus::Closed {
        return SaleVerdict::Refuse(ExceptionKind::OfflineClosedAccount);
    }
    let mut flags = SmallVec::new();
    let blocked_then = match card.refusal(f.sale_time_ms) {
        None => false,
        Some(DeclineReason::CardExpired) => true,
        // The status is today's: it blocked the sale only if it was set before it.
        Some(_) => f.listed_since_ms.is_none_or(|since| since <= f.sale_time_ms),
    };
    if blocked_then || account.status == AccountStatus::Frozen {
        flags.push(ExceptionKind::OfflineCardBlocked);
    }
    let over_sale = f.amount_fen > limits.sale_max_fen;
    let over_day = f.card_day_before_fen.saturating_add(f.amount_fen) > limits.card_day_max_fen;
    if over_sale || over_day {
        flags.push(ExceptionKind::OfflineOverLimit);
    }
    if !plausible_time(limits, f.sale_time_ms, f.upload_ms) {
        flags.push(ExceptionKind::OfflineClockSuspect);
    }
    let balance_after = account.balance - from_fen(f.amount_fen);
    if balance_after < Decimal::ZERO {
        flags.push(ExceptionKind::OfflineOverdraft);
    }
    SaleVerdict::Post { balance_after, flags }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccountKind, CardStatus};
    use cardgate_codec::CardNo;

    const NOW: i64 = 1_800_000_000_000;

    fn limits() -> OfflineLimits {
        OfflineLimits {
            sale_max_fen: 50_00,
            card_day_max_fen: 100_00,
            terminal_total_max_fen: 5_000_00,
            offline_minutes_max: 24 * 60,
            sales_max: 1000,
            batch_max: OFFLINE_BATCH_MAX,
        }
    }

    fn card(status: CardStatus) -> Card {
        Card {
            no: CardNo(1_000_000_001),
            account: 1,
            status,
            expires_ms: None,
            issued_ms: 0,
        }
    }

    fn account(balance_fen: i64) -> Account {
        Account {
            id: 1,
            kind: AccountKind::Student,
            status: AccountStatus::Active,
            balance: from_fen(balance_fen),
            limits: None,
            day: 0,
            spent_today: Decimal::ZERO,
        }
    }

    fn facts<'a>(c: &'a Card, a: &'a Account, amount_fen: i64) -> SaleFacts<'a> {
        SaleFacts {
            card: Some(c),
            account: Some(a),
            listed_since_ms: None,
            amount_fen,
            sale_time_ms: NOW - 3_600_000,
            upload_ms: NOW,
            card_day_before_fen: 0,
        }
    }

    fn flags(v: &SaleVerdict) -> Vec<ExceptionKind> {
        match v {
            SaleVerdict::Post { flags, .. } => flags.to_vec(),
            SaleVerdict::Refuse(k) => vec![*k],
        }
    }

    #[test]
    fn an_ordinary_sale_is_posted_without_a_flag() {
        let (c, a) = (card(CardStatus::Active), account(100_00));
        let v = offline_sale(&limits(), &facts(&c, &a, 12_50));
        assert_eq!(
            v,
            SaleVerdict::Post {
                balance_after: from_fen(87_50),
                flags: SmallVec::new()
            }
        );
    }

    #[test]
    fn an_overdraft_is_posted_and_flagged() {
        let (c, a) = (card(CardStatus::Active), account(5_00));
        let v = offline_sale(&limits(), &facts(&c, &a, 12_50));
        assert_eq!(flags(&v), vec![ExceptionKind::OfflineOverdraft]);
        let SaleVerdict::Post { balance_after, .. } = v else {
            panic!()
        };
        assert_eq!(balance_after, from_fen(-7_50));
    }

    #[test]
    fn a_card_lost_before_the_sale_is_flagged_and_one_lost_after_is_not() {
        let (c, a) = (card(CardStatus::Lost), account(100_00));
        let mut f = facts(&c, &a, 10_00);
        f.listed_since_ms = Some(f.sale_time_ms - 1);
        assert_eq!(
            flags(&offline_sale(&limits(), &f)),
            vec![ExceptionKind::OfflineCardBlocked]
        );
        f.listed_since_ms = Some(f.sale_time_ms + 1);
        assert_eq!(flags(&offline_sale(&limits(), &f)), vec![]);
        // Listed at a time the records do not know: assume before.
        f.listed_since_ms = Some(i64::MIN);
        assert_eq!(
            flags(&offline_sale(&limits(), &f)),
            vec![ExceptionKind::OfflineCardBlocked]
        );
    }

    #[test]
    fn limits_and_clock_are_flagged() {
        let (c, a) = (card(CardStatus::Active), account(1_000_00));
        let mut f = facts(&c, &a, 60_00);
        assert_eq!(
            flags(&offline_sale(&limits(), &f)),
            vec![ExceptionKind::OfflineOverLimit]
        );
        f.amount_fen = 30_00;
        f.card_day_before_fen = 80_00;
        assert_eq!(
            flags(&offline_sale(&limits(), &f)),
            vec![ExceptionKind::OfflineOverLimit]
        );
        f.card_day_before_fen = 0;
        f.sale_time_ms = NOW + CLOCK_AHEAD_TOLERANCE_MS + 1;
        assert_eq!(
            flags(&offline_sale(&limits(), &f)),
            vec![ExceptionKind::OfflineClockSuspect]
        );
        f.sale_time_ms = NOW - 25 * 3_600_000;
        assert_eq!(
            flags(&offline_sale(&limits(), &f)),
            vec![ExceptionKind::OfflineClockSuspect]
        );
    }

    #[test]
    fn nothing_is_debited_without_an_account_or_from_a_closed_one() {
        let c = card(CardStatus::Cancelled);
        let mut a = account(0);
        a.status = AccountStatus::Closed;
        assert_eq!(
            offline_sale(&limits(), &facts(&c, &a, 1_00)),
            SaleVerdict::Refuse(ExceptionKind::OfflineClosedAccount)
        );
        let mut f = facts(&c, &a, 1_00);
        f.card = None;
        assert_eq!(
            offline_sale(&limits(), &f),
            SaleVerdict::Refuse(ExceptionKind::OfflineUnknownCard)
        );
    }
}
