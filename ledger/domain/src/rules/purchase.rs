//! The money rules of a terminal: may this terminal move money, may this card pay this
//! amount now, and what a reversal gives back. Every check is here, in the order it is
//! made, so that the one place to read (and to property-test) is this file.

use cardgate_codec::DeclineReason;
use rust_decimal::Decimal;

use crate::model::{Account, AccountStatus, Card, Limits, Outcome, Params, SeqRecord, TerminalKind, TxKind};
use crate::money::AMOUNT_FEN_MAX;

/// Why this terminal may not move money with an amount of `amount_fen`, if it may not:
/// only an enabled POS terminal pays, and only amounts within `1..=AMOUNT_FEN_MAX`.
pub fn terminal_refusal(kind: TerminalKind, enabled: bool, amount_fen: i64) -> Option<DeclineReason> {
    if kind != TerminalKind::Pos || !enabled {
        Some(DeclineReason::TerminalNotAllowed)
    } else if amount_fen <= 0 || amount_fen > AMOUNT_FEN_MAX {
        Some(DeclineReason::InvalidAmount)
    } else {
        None
    }
}

/// The spending that counts against `today`'s limit: the account's counter belongs to
/// the business day it was last written on, and a new day starts at zero. The balance
/// inquiry and the purchase both read it here, so they cannot disagree.
pub fn spent_today(account: &Account, today: i32) -> Decimal {
    if account.day == today {
        account.spent_today
    } else {
        Decimal::ZERO
    }
}

/// What a purchase decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Debit: the balance and the day's spending the purchase leaves.
    Approve {
        balance_after: Decimal,
        spent_today_after: Decimal,
        limits: Limits,
    },
    /// The card may not pay; the account was not looked at.
    CardRefused(DeclineReason),
    /// The account says no. `balance` is what the terminal may show (nothing for an
    /// account that is not active); `spent_today` is the day's spending as it stands.
    Decline {
        reason: DeclineReason,
        balance: Decimal,
        spent_today: Decimal,
        limits: Limits,
    },
}

/// A purchase of `amount` with `card` on its `account` at `now_ms`, business day
/// `today`. In this order: the card must be usable (not lost, frozen, cancelled,
/// replaced, bad or expired); the account active; the amount within the single-payment
/// limit; the day's spending after it within the daily limit; the balance must cover it.
pub fn purchase(card: &Card, account: &Account, params: &Params, now_ms: i64, today: i32, amount: Decimal) -> Verdict {
    if let Some(reason) = card.refusal(now_ms) {
        return Verdict::CardRefused(reason);
    }
    let limits = account.effective_limits(params);
    let spent = spent_today(account, today);
    let spent_after = spent.checked_add(amount);
    let reason = if account.status != AccountStatus::Active {
        Some(DeclineReason::AccountBlocked)
    } else if amount > limits.single_payment_max {
        Some(DeclineReason::OverSingleLimit)
    } else if spent_after.is_none_or(|s| s > limits.daily_max) {
        Some(DeclineReason::OverDailyLimit)
    } else if account.balance < amount {
        Some(DeclineReason::InsufficientFunds)
    } else {
        None
    };
    match (reason, spent_after) {
        (None, Some(spent_today_after)) => Verdict::Approve {
            balance_after: account.balance - amount,
            spent_today_after,
            limits,
        },
        (reason, _) => Verdict::Decline {
            reason: reason.unwrap_or(DeclineReason::OverDailyLimit),
            balance: if account.status == AccountStatus::Active {
                account.balance
            } else {
                Decimal::ZERO
            },
            spent_today: spent,
            limits,
        },
    }
}

/// The purchase a reversal undoes: the terminal's remembered outcome of
/// `original_seq`, which must be an approved purchase of the same card and amount that
/// was not reversed yet. Returns the purchase's tx id.
pub fn reversal_target(
    original: Option<&SeqRecord>,
    card: cardgate_codec::CardNo,
    amount_fen: i64,
) -> Result<u64, DeclineReason> {
    let original = original
        .filter(|o| {
            matches!(o.kind, TxKind::Purchase | TxKind::OfflinePurchase) && o.card == card && o.amount_fen == amount_fen
        })
        .ok_or(DeclineReason::OriginalNotFound)?;
    let Outcome::Approved { tx_id, .. } = original.outcome else {
        return Err(DeclineReason::OriginalNotFound);
    };
    if original.reversed_by.is_some() {
        return Err(DeclineReason::AlreadyReversed);
    }
    Ok(tx_id)
}

/// Whether money may be credited to the account: never to a closed one, whose balance
/// was paid out when it was closed (money must not appear in it by any path).
pub fn may_credit(account: &Account) -> Result<(), DeclineReason> {
    match account.status {
        AccountStatus::Closed => Err(DeclineReason::AccountBlocked),
        AccountStatus::Active | AccountStatus::Frozen => Ok(()),
    }
}

/// The balance and day's spending a reversal of `amount` leaves on `account` on
/// business day `today`; the purchase counted on `purchase_day`. The refund gives back
/// today's allowance only if the purchase was counted today.
pub fn refund(account: &Account, amount: Decimal, purchase_day: i32, today: i32) -> (Decimal, Decimal) {
    let spent = spent_today(account, today);
    let spent_after = if purchase_day == today {
        (spent - amount).max(Decimal::ZERO)
    } else {
        spent
    };
    (account.balance + amount, spent_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccountKind, CardStatus};
    use crate::money::from_fen;
    use cardgate_codec::CardNo;
    use proptest::prelude::*;

    const NOW: i64 = 1_795_853_100_000;
    const TODAY: i32 = 20_785;

    fn account(balance_fen: i64, spent_fen: i64) -> Account {
        Account {
            id: 1,
            kind: AccountKind::Student,
            status: AccountStatus::Active,
            balance: from_fen(balance_fen),
            limits: None,
            day: TODAY,
            spent_today: from_fen(spent_fen),
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

    fn verdict(a: &Account, c: &Card, amount_fen: i64) -> Verdict {
        purchase(c, a, &Params::default(), NOW, TODAY, from_fen(amount_fen))
    }

    #[test]
    fn the_checks_come_in_their_order() {
        let active = card(CardStatus::Active);
        // Student defaults: 200.00 a payment, 600.00 a day.
        assert!(matches!(
            verdict(&account(100_00, 0), &active, 12_50),
            Verdict::Approve { .. }
        ));
        assert!(matches!(
            verdict(&account(100_00, 0), &card(CardStatus::Lost), 12_50),
            Verdict::CardRefused(DeclineReason::CardLost)
        ));
        let mut frozen = account(100_00, 0);
        frozen.status = AccountStatus::Frozen;
        assert!(matches!(
            verdict(&frozen, &active, 12_50),
            Verdict::Decline { reason: DeclineReason::AccountBlocked, balance, .. } if balance.is_zero()
        ));
        // Over the single limit beats over the daily limit and insufficient funds.
        assert!(matches!(
            verdict(&account(10_00, 599_00), &active, 250_00),
            Verdict::Decline {
                reason: DeclineReason::OverSingleLimit,
                ..
            }
        ));
        assert!(matches!(
            verdict(&account(10_00, 590_00), &active, 20_00),
            Verdict::Decline {
                reason: DeclineReason::OverDailyLimit,
                ..
            }
        ));
        assert!(matches!(
            verdict(&account(10_00, 0), &active, 20_00),
            Verdict::Decline { reason: DeclineReason::InsufficientFunds, balance, .. } if balance == from_fen(10_00)
        ));
    }

    #[test]
    fn a_new_day_starts_the_spending_at_zero() {
        let mut a = account(1_000_00, 590_00);
        a.day = TODAY - 1;
        assert_eq!(spent_today(&a, TODAY), Decimal::ZERO);
        assert!(matches!(
            verdict(&a, &card(CardStatus::Active), 20_00),
            Verdict::Approve { spent_today_after, .. } if spent_today_after == from_fen(20_00)
        ));
    }

    #[test]
    fn a_reversal_gives_back_todays_allowance_only_for_todays_purchase() {
        let a = account(80_00, 20_00);
        assert_eq!(
            refund(&a, from_fen(20_00), TODAY, TODAY),
            (from_fen(100_00), Decimal::ZERO)
        );
        assert_eq!(
            refund(&a, from_fen(20_00), TODAY - 1, TODAY),
            (from_fen(100_00), from_fen(20_00))
        );
    }

    proptest! {
        /// An approval never overdraws, never passes a limit, and moves exactly the amount.
        #[test]
        fn an_approval_keeps_every_limit(balance in 0i64..2_000_00, spent in 0i64..700_00, amount in 1i64..300_00) {
            let a = account(balance, spent);
            if let Verdict::Approve { balance_after, spent_today_after, limits } =
                verdict(&a, &card(CardStatus::Active), amount)
            {
                prop_assert!(balance_after >= Decimal::ZERO);
                prop_assert_eq!(a.balance - balance_after, from_fen(amount));
                prop_assert!(from_fen(amount) <= limits.single_payment_max);
                prop_assert!(spent_today_after <= limits.daily_max);
                prop_assert_eq!(spent_today_after - from_fen(spent), from_fen(amount));
            }
        }
    }
}
