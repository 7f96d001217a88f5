//! The ledger's decision rules, idempotency, reversals and concurrency, in process.

mod common;

use std::sync::Arc;

use cardgate_codec::{CardNo, DeclineReason, Message};
use cardgate_domain::model::{AccountStatus, CardStatus};
use common::*;

fn approved(m: &Message) -> &cardgate_codec::Approved {
    match m {
        Message::Approved(a) => a,
        other => panic!("expected an approval, got {other:?}"),
    }
}

fn declined(m: &Message) -> DeclineReason {
    match m {
        Message::Declined(d) => d.reason,
        other => panic!("expected a decline, got {other:?}"),
    }
}

#[tokio::test]
async fn a_purchase_debits_the_account_once() {
    let f = Fixture::new().await;
    let a = f.buy(POS, 1, 101, 12_50).await;
    let a = approved(&a);
    assert_eq!(a.balance_fen, 87_50);
    assert_eq!(a.amount_fen, 12_50);
    assert_eq!(f.balance_fen(1), 87_50);
    let b = f.buy(POS, 2, 101, 7_50).await;
    assert_ne!(approved(&b).tx_id, a.tx_id, "tx ids are unique");
    assert_eq!(f.balance_fen(1), 80_00);
}

#[tokio::test]
async fn every_card_state_that_must_not_pay_is_declined_with_its_reason() {
    let f = Fixture::new().await;
    let cases = [
        (CardStatus::Lost, DeclineReason::CardLost),
        (CardStatus::Frozen, DeclineReason::CardFrozen),
        (CardStatus::Cancelled, DeclineReason::CardCancelled),
        (CardStatus::Replaced, DeclineReason::CardReplaced),
        (CardStatus::Bad, DeclineReason::CardBad),
    ];
    for (i, (status, reason)) in cases.into_iter().enumerate() {
        let mut c = card(900 + i as u64, 1);
        c.status = status;
        f.ledger.issue_card(c).await.unwrap();
        assert_eq!(
            declined(&f.buy(POS, 1 + i as u64, c.no.0, 100).await),
            reason,
            "{status:?}"
        );
    }
    let mut expired = card(950, 1);
    expired.expires_ms = Some(LUNCH_MS - 1);
    f.ledger.issue_card(expired).await.unwrap();
    assert_eq!(declined(&f.buy(POS, 20, 950, 100).await), DeclineReason::CardExpired);
    assert_eq!(declined(&f.buy(POS, 21, 4242, 100).await), DeclineReason::UnknownCard);
    assert_eq!(f.balance_fen(1), 100_00, "no decline moved money");
}

#[tokio::test]
async fn amounts_limits_and_balance_are_checked() {
    let f = Fixture::new().await;
    assert_eq!(declined(&f.buy(POS, 1, 101, 0).await), DeclineReason::InvalidAmount);
    assert_eq!(declined(&f.buy(POS, 2, 101, -5).await), DeclineReason::InvalidAmount);
    assert_eq!(
        declined(&f.buy(POS, 3, 101, i64::MAX).await),
        DeclineReason::InvalidAmount
    );
    // Default student limits: 200.00 per payment, 600.00 per day; balance 100.00.
    assert_eq!(
        declined(&f.buy(POS, 4, 101, 200_01).await),
        DeclineReason::OverSingleLimit
    );
    assert_eq!(
        declined(&f.buy(POS, 5, 101, 100_01).await),
        DeclineReason::InsufficientFunds
    );
    approved(&f.buy(POS, 6, 101, 100_00).await);
    assert_eq!(f.balance_fen(1), 0);
    assert_eq!(declined(&f.buy(POS, 7, 101, 1).await), DeclineReason::InsufficientFunds);

    let mut rich = account(50, 10_000_00);
    rich.kind = cardgate_domain::model::AccountKind::Student;
    f.ledger.open_account(rich).await.unwrap();
    f.ledger.issue_card(card(150, 50)).await.unwrap();
    for seq in 10..13 {
        approved(&f.buy(POS, seq, 150, 200_00).await);
    }
    assert_eq!(declined(&f.buy(POS, 13, 150, 1).await), DeclineReason::OverDailyLimit);
    // The business day turns at local midnight (UTC+8), not at UTC midnight.
    f.clock.advance(12 * 3_600_000);
    approved(&f.buy(POS, 14, 150, 1).await);
}

#[tokio::test]
async fn only_enabled_pos_terminals_move_money_and_blocked_accounts_do_not_pay() {
    let f = Fixture::new().await;
    assert_eq!(
        declined(&f.buy(DOOR, 1, 101, 100).await),
        DeclineReason::TerminalNotAllowed
    );
    assert_eq!(
        declined(&f.buy(POS_DISABLED, 1, 101, 100).await),
        DeclineReason::TerminalNotAllowed
    );
    assert_eq!(
        declined(&f.buy(999, 1, 101, 100).await),
        DeclineReason::TerminalNotAllowed
    );
    let mut frozen = account(60, 50_00);
    frozen.status = AccountStatus::Frozen;
    f.ledger.open_account(frozen).await.unwrap();
    f.ledger.issue_card(card(160, 60)).await.unwrap();
    assert_eq!(declined(&f.buy(POS, 2, 160, 100).await), DeclineReason::AccountBlocked);
    assert_eq!(f.balance_fen(1), 100_00);
    assert_eq!(f.balance_fen(60), 50_00);
}

#[tokio::test]
async fn a_retry_gets_the_first_answer_and_never_debits_twice() {
    let f = Fixture::new().await;
    let first = f.buy(POS, 1, 101, 30_00).await;
    let again = f.buy(POS, 1, 101, 30_00).await;
    assert_eq!(first, again);
    assert_eq!(f.balance_fen(1), 70_00);
    // Same number, different content: a duplicate, nothing applied.
    assert_eq!(declined(&f.buy(POS, 1, 101, 31_00).await), DeclineReason::Duplicate);
    assert_eq!(declined(&f.buy(POS, 1, 102, 30_00).await), DeclineReason::Duplicate);
    assert_eq!(f.balance_fen(1), 70_00);
    assert_eq!(f.balance_fen(2), 100_00);
    // A declined request retried gets its decline again, even after money arrived.
    let d = f.buy(POS, 2, 101, 90_00).await;
    assert_eq!(declined(&d), DeclineReason::InsufficientFunds);
    assert_eq!(f.buy(POS, 2, 101, 90_00).await, d);
    // Sequence numbers are per terminal.
    approved(&f.buy(POS_2, 1, 101, 10_00).await);
    assert_eq!(f.balance_fen(1), 60_00);
}

#[tokio::test]
async fn numbers_no_longer_remembered_are_refused_not_applied() {
    let f = Fixture::new().await;
    assert_eq!(declined(&f.buy(POS, 0, 101, 100).await), DeclineReason::StaleSequence);
    for seq in 1..=40 {
        approved(&f.buy(POS, seq * 2, 102, 1).await);
    }
    // Seq 2 was overwritten in its slot by a later number.
    assert_eq!(declined(&f.buy(POS, 2, 102, 1).await), DeclineReason::StaleSequence);
    // An unused number below the last one is refused too: numbers only go up.
    assert_eq!(declined(&f.buy(POS, 79, 102, 1).await), DeclineReason::StaleSequence);
    assert_eq!(f.balance_fen(2), 100_00 - 40);
}

#[tokio::test]
async fn a_reversal_refunds_its_purchase_exactly_once() {
    let f = Fixture::new().await;
    approved(&f.buy(POS, 1, 101, 25_00).await);
    let r = f.reverse(POS, 2, 1, 101, 25_00).await;
    assert_eq!(approved(&r).balance_fen, 100_00);
    assert_eq!(f.balance_fen(1), 100_00);
    assert_eq!(f.ledger.account(1).unwrap().spent_today, rust_decimal::Decimal::ZERO);
    // Retrying the reversal gets the same answer; a second reversal is answered, not applied.
    assert_eq!(f.reverse(POS, 2, 1, 101, 25_00).await, r);
    assert_eq!(
        declined(&f.reverse(POS, 3, 1, 101, 25_00).await),
        DeclineReason::AlreadyReversed
    );
    assert_eq!(f.balance_fen(1), 100_00);
    // Unknown purchases, wrong amounts, other terminals' purchases, declined purchases.
    assert_eq!(
        declined(&f.reverse(POS, 4, 77, 101, 1).await),
        DeclineReason::OriginalNotFound
    );
    approved(&f.buy(POS, 5, 101, 10_00).await);
    assert_eq!(
        declined(&f.reverse(POS, 6, 5, 101, 9_99).await),
        DeclineReason::OriginalNotFound
    );
    assert_eq!(
        declined(&f.reverse(POS_2, 1, 5, 101, 10_00).await),
        DeclineReason::OriginalNotFound
    );
    assert_eq!(
        declined(&f.buy(POS, 7, 101, 500_00).await),
        DeclineReason::OverSingleLimit
    );
    assert_eq!(
        declined(&f.reverse(POS, 8, 7, 101, 500_00).await),
        DeclineReason::OriginalNotFound
    );
    // A reversal cannot name itself or a later number.
    assert_eq!(
        declined(&f.reverse(POS, 9, 9, 101, 10_00).await),
        DeclineReason::OriginalNotFound
    );
    assert_eq!(f.balance_fen(1), 90_00);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_terminals_paying_from_one_account_never_overdraw_it() {
    let f = Fixture::new().await;
    let terminals: Vec<_> = (1000..1100).map(pos).collect();
    f.ledger
        .bulk_create(terminals, &[generous(account(70, 500_00))], &[card(170, 70)])
        .await
        .unwrap();
    let ledger = f.ledger.clone();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 1000..1100u64 {
        let ledger = ledger.clone();
        tasks.spawn(async move {
            let p = cardgate_codec::Purchase {
                tx_seq: 1,
                card: CardNo(170),
                amount_fen: 10_00,
                terminal_time_ms: 0,
            };
            ledger.purchase(t, &p).await.resolve().await
        });
    }
    let mut approvals = 0;
    let mut balances = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Message::Approved(a) => {
                approvals += 1;
                assert!(a.balance_fen >= 0);
                balances.push(a.balance_fen);
            }
            Message::Declined(d) => assert_eq!(d.reason, DeclineReason::InsufficientFunds),
            other => panic!("{other:?}"),
        }
    }
    drop(ledger);
    assert_eq!(approvals, 50);
    assert_eq!(f.balance_fen(70), 0);
    // Every approval saw a different balance: the debits were serialized.
    balances.sort();
    balances.dedup();
    assert_eq!(balances.len(), 50);
}

#[tokio::test]
async fn inquiries_show_the_card_and_its_day() {
    let f = Fixture::new().await;
    approved(&f.buy(POS, 1, 103, 40_00).await);
    let m = f.ledger.balance(POS, CardNo(103)).await.resolve().await;
    let Message::Balance(b) = m else { panic!("{m:?}") };
    assert_eq!(b.balance_fen, 60_00);
    assert_eq!(b.spent_today_fen, 40_00);
    assert_eq!(b.daily_limit_fen, 600_00);
    let m = f.ledger.balance(POS, CardNo(4242)).await.resolve().await;
    assert_eq!(declined(&m), DeclineReason::UnknownCard);
    let _ = Arc::strong_count(&f.ledger);
}
