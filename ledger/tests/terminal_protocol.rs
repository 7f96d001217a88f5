//! What docs/PROTOCOL.md promises a terminal about its money requests, checked against
//! real decisions: which sequence numbers are answerable (section 8.2: a retry or a
//! reversal's original is remembered if and only if it is among the last 32 numbers),
//! across restarts that recover by checkpoint and by replay; and when a DECLINED
//! carries the balance (section 7.1).

mod common;

use cardgate_codec::{CardNo, DeclineReason, Message};
use cardgate_domain::model::{AccountStatus, CardStatus};
use cardgate_journal::{CheckpointPolicy, FaultSwitch, FaultyStore};
use cardgate_ledger::records::SEQ_SLOTS;
use cardgate_ledger::{LedgerConfig, ManualClock};
use common::*;

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

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

fn policies() -> [(&'static str, CheckpointPolicy); 2] {
    [
        ("checkpointed", CheckpointPolicy::default()),
        (
            "replayed",
            CheckpointPolicy {
                enabled: false,
                ..CheckpointPolicy::default()
            },
        ),
    ]
}

#[test]
fn the_documented_window_is_the_code_s() {
    assert_eq!(SEQ_SLOTS, 32);
    assert!(
        DOC.contains("`highest − 32 < s ≤ highest`"),
        "PROTOCOL.md 8.2 states the window"
    );
    assert!(
        DOC.contains("`tx_seq − 32 < original_tx_seq < tx_seq`"),
        "PROTOCOL.md 8.5 states the reversal window"
    );
}

/// Highest number 100: 69 (= 100 − 31) is answerable, 68 (= 100 − 32) is not, and 10,
/// whose slot no later number took, is not either. A reversal at 101 may name 70, not
/// 69, though 69's slot still holds it until 101 takes it.
#[tokio::test]
async fn a_number_is_answerable_exactly_while_among_the_last_32() {
    for (name, checkpoints) in policies() {
        let f = Fixture::with_config(LedgerConfig {
            checkpoints,
            ..LedgerConfig::default()
        })
        .await;
        let mut first = std::collections::BTreeMap::new();
        for seq in [10, 68, 69, 70, 71, 100] {
            first.insert(seq, f.buy(POS, seq, 101, 1_00).await);
            approved(&first[&seq]);
        }
        let f = f.restart();
        assert_eq!(f.ledger.sign_on_secrets(POS).map(|s| s.last_seq), Some(100), "{name}");
        for seq in [69, 70, 100] {
            assert_eq!(f.buy(POS, seq, 101, 1_00).await, first[&seq], "{name}: retry of {seq}");
        }
        for seq in [68, 10] {
            assert_eq!(
                declined(&f.buy(POS, seq, 101, 1_00).await),
                DeclineReason::StaleSequence,
                "{name}: retry of {seq} at highest 100"
            );
        }
        // Skipped numbers inside the window were never used: stale too.
        assert_eq!(
            declined(&f.buy(POS, 99, 101, 1_00).await),
            DeclineReason::StaleSequence,
            "{name}"
        );
        assert_eq!(f.balance_fen(1), 100_00 - 6_00, "{name}: no retry applied anything");

        // Reversals count their own number: at 101 the window is 70..=100.
        assert_eq!(
            declined(&f.reverse(POS, 101, 69, 101, 1_00).await),
            DeclineReason::OriginalNotFound,
            "{name}: 69 is 32 below 101"
        );
        let refund = f.reverse(POS, 102, 71, 101, 1_00).await;
        assert_eq!(
            approved(&refund).balance_fen,
            100_00 - 5_00,
            "{name}: 71 is 31 below 102"
        );
        assert_eq!(
            declined(&f.reverse(POS, 103, 71, 101, 1_00).await),
            DeclineReason::OriginalNotFound,
            "{name}: at 103, 71 is forgotten, reversed or not"
        );

        let f = f.restart();
        assert_eq!(f.ledger.sign_on_secrets(POS).map(|s| s.last_seq), Some(103), "{name}");
        assert_eq!(
            f.reverse(POS, 102, 71, 101, 1_00).await,
            refund,
            "{name}: reversal retried"
        );
        assert_eq!(
            declined(&f.buy(POS, 71, 101, 1_00).await),
            DeclineReason::StaleSequence,
            "{name}: 71 is 32 below 103"
        );
        // Purchases 6.00, one refunded 1.00, one more purchase of 1.00 under a new number.
        approved(&f.buy(POS, 104, 101, 1_00).await);
        assert_eq!(f.balance_fen(1), 100_00 - 6_00, "{name}");
    }
}

/// Every decline reason, produced by a real decision on an account that has money, and
/// whether its `balance_fen` is the balance or 0; compared with PROTOCOL.md 7.1 and with
/// `DeclineReason::shows_balance`.
#[tokio::test]
async fn a_decline_carries_the_balance_exactly_when_the_table_says() {
    let f = Fixture::new().await;
    // Account 1 (card 101) holds 100.00: a student, 200.00 a payment, 600.00 a day.
    let mut seen: Vec<(DeclineReason, i64)> = Vec::new();
    let mut note = |m: Message| {
        let Message::Declined(d) = m else {
            panic!("expected a decline, got {m:?}")
        };
        seen.push((d.reason, d.balance_fen));
    };
    note(f.buy(POS, 1, 4242, 1_00).await);
    for (i, status) in [
        CardStatus::Lost,
        CardStatus::Frozen,
        CardStatus::Cancelled,
        CardStatus::Replaced,
        CardStatus::Bad,
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = card(900 + i as u64, 1);
        c.status = status;
        f.ledger.issue_card(c).await.unwrap();
        note(f.buy(POS, 2 + i as u64, c.no.0, 1_00).await);
    }
    let mut expired = card(950, 1);
    expired.expires_ms = Some(LUNCH_MS - 1);
    f.ledger.issue_card(expired).await.unwrap();
    note(f.buy(POS, 10, 950, 1_00).await);
    note(f.buy(POS, 11, 101, 200_01).await); // over the single limit
    note(f.buy(POS, 12, 101, 100_01).await); // more than the balance
    note(f.buy(DOOR, 1, 101, 1_00).await);
    note(f.buy(POS, 13, 101, 0).await);
    approved(&f.buy(POS, 14, 101, 1_00).await);
    note(f.buy(POS, 14, 101, 2_00).await); // duplicate
    note(f.buy(POS, 0, 101, 1_00).await); // stale
    note(f.reverse(POS, 15, 77, 101, 1_00).await);
    approved(&f.reverse(POS, 16, 14, 101, 1_00).await);
    note(f.reverse(POS, 17, 14, 101, 1_00).await);
    let mut frozen = account(60, 50_00);
    frozen.status = AccountStatus::Frozen;
    f.ledger.open_account(frozen).await.unwrap();
    f.ledger.issue_card(card(160, 60)).await.unwrap();
    note(f.buy(POS, 18, 160, 1_00).await);
    // Over the daily limit: a student who has spent 599.00 today, with 1,000.00 left.
    let mut rich = account(62, 1_000_00);
    rich.spent_today = cardgate_domain::money::from_fen(599_00);
    rich.day = cardgate_domain::clock::business_day(LUNCH_MS, LedgerConfig::default().tz_offset_minutes);
    f.ledger.open_account(rich).await.unwrap();
    f.ledger.issue_card(card(162, 62)).await.unwrap();
    note(f.buy(POS, 19, 162, 2_00).await);
    // Balance inquiries decline with 0 too.
    for (terminal, card_no) in [(POS_DISABLED, 101), (POS, 4242)] {
        let inquiry = f.ledger.balance(terminal, CardNo(card_no)).await.resolve().await;
        assert_eq!(inquiry_balance(&inquiry), 0, "inquiry of {card_no} at {terminal}");
    }

    // system_error needs a disk that fails.
    let (faulty, switch) = faulty().await;
    switch.set(FaultSwitch::FAIL_APPLY);
    let m = faulty.buy(POS, 1, 101, 1_00).await;
    let Message::Declined(d) = m else { panic!("{m:?}") };
    seen.push((d.reason, d.balance_fen));

    let table = balance_table();
    for reason in DeclineReason::ALL {
        let got: Vec<i64> = seen.iter().filter(|(r, _)| *r == reason).map(|(_, b)| *b).collect();
        assert!(!got.is_empty(), "{reason:?} was not produced");
        let documented = table
            .iter()
            .find(|(name, _)| name == reason.as_str())
            .unwrap_or_else(|| panic!("{reason:?} is not in PROTOCOL.md 7.1"))
            .1;
        assert_eq!(
            documented,
            reason.shows_balance(),
            "{reason:?}: the doc and the code differ"
        );
        for b in got {
            if reason.shows_balance() {
                assert!(b > 0, "{reason:?} must carry the balance, got {b}");
            } else {
                assert_eq!(b, 0, "{reason:?} must carry 0");
            }
        }
    }
    // Where it is shown, it is the balance the decision saw.
    let balance_of = |reason| seen.iter().find(|(r, _)| *r == reason).map(|(_, b)| *b);
    assert_eq!(balance_of(DeclineReason::OverSingleLimit), Some(100_00));
    assert_eq!(balance_of(DeclineReason::InsufficientFunds), Some(100_00));
    assert_eq!(balance_of(DeclineReason::OverDailyLimit), Some(1_000_00));
}

fn inquiry_balance(m: &Message) -> i64 {
    match m {
        Message::Declined(d) => d.balance_fen,
        other => panic!("expected a decline, got {other:?}"),
    }
}

/// PROTOCOL.md 7.1: each reason's name and whether its `balance_fen` column says "the
/// balance" (else it must say 0).
fn balance_table() -> Vec<(String, bool)> {
    let marker = "<!-- check: decline-reasons -->";
    let start = DOC.find(marker).expect("PROTOCOL.md has the decline reason table");
    let rows: Vec<Vec<String>> = DOC[start + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .collect();
    let col = rows[0]
        .iter()
        .position(|h| h == "balance_fen")
        .expect("the table has a balance_fen column");
    rows[2..]
        .iter()
        .map(|r| {
            let shows = match r[col].as_str() {
                "0" => false,
                "the balance" => true,
                other => panic!("{}: balance_fen is `{other}`, expected 0 or the balance", r[1]),
            };
            (r[1].clone(), shows)
        })
        .collect()
}

async fn faulty() -> (Fixture, FaultSwitch) {
    let switch = FaultSwitch::default();
    let s = switch.clone();
    let f = Fixture::open_with(
        tempfile::tempdir().unwrap(),
        LedgerConfig::default(),
        ManualClock::new(LUNCH_MS),
        move |store| {
            Box::new(FaultyStore {
                inner: store,
                switch: s,
            })
        },
    );
    f.ledger
        .bulk_create(vec![pos(POS)], &[account(1, 100_00)], &[card(101, 1)])
        .await
        .unwrap();
    (f, switch)
}

/// A BLACKLIST_ACK (or HEARTBEAT) above every version the gateway issued is not
/// believed: the terminal is recorded as holding none of the gateway's lists.
#[tokio::test]
async fn an_acknowledged_version_never_issued_is_not_believed() {
    let f = Fixture::new().await;
    let v = f.ledger.blacklist().version();
    assert!(f.ledger.blacklist_ack(POS, v));
    assert_eq!(f.ledger.terminal_blacklist(POS).map(|(acked, _)| acked), Some(v));
    for future in [v + 1, v + 1_000, u64::MAX] {
        assert!(!f.ledger.blacklist_ack(POS, future), "{future}");
        assert_eq!(f.ledger.terminal_blacklist(POS).map(|(acked, _)| acked), Some(0));
    }
    assert!(f.ledger.blacklist_ack(POS, v), "a believable version is believed again");
    assert_eq!(f.ledger.terminal_blacklist(POS).map(|(acked, _)| acked), Some(v));
}
