//! Durability: what a restart recovers, with and without checkpoints; injected storage
//! faults; and a model-based test that compares the ledger with a plain map across
//! restarts.

mod common;

use std::collections::HashMap;

use cardgate_codec::{DeclineReason, Message};
use cardgate_journal::CheckpointPolicy;
use cardgate_journal::{FaultSwitch, FaultyStore};
use cardgate_ledger::{LedgerConfig, ManualClock};
use common::*;
use proptest::prelude::*;

fn config(checkpoints: CheckpointPolicy) -> LedgerConfig {
    LedgerConfig {
        checkpoints,
        ..LedgerConfig::default()
    }
}

/// Checkpoints after every commit but none at shutdown: what a crash leaves behind.
fn crashy() -> CheckpointPolicy {
    CheckpointPolicy {
        interval: std::time::Duration::ZERO,
        entries_max: 1,
        records_max: 1,
        enabled: true,
        on_shutdown: false,
    }
}

fn replay_only() -> CheckpointPolicy {
    CheckpointPolicy {
        enabled: false,
        ..CheckpointPolicy::default()
    }
}

async fn activity(f: &Fixture) -> Vec<Message> {
    let mut answers = Vec::new();
    for seq in 1..=20u64 {
        answers.push(f.buy(POS, seq, 100 + (seq % 5) + 1, 3_00 + seq as i64).await);
    }
    answers.push(f.reverse(POS, 21, 20, 101, 3_20).await);
    answers.push(f.buy(POS_2, 1, 105, 99_99).await);
    answers.push(f.buy(POS_2, 2, 105, 99_99).await);
    answers
}

async fn recovers_everything(policy: CheckpointPolicy) {
    let f = Fixture::with_config(config(policy)).await;
    let answers = activity(&f).await;
    let balances: Vec<_> = (1..=5).map(|a| f.balance_fen(a)).collect();
    let f = f.restart();
    let after: Vec<_> = (1..=5).map(|a| f.balance_fen(a)).collect();
    assert_eq!(balances, after);
    // Retries after the restart get the first answers, and apply nothing.
    assert_eq!(f.buy(POS, 20, 101, 3_20).await, answers[19]);
    assert_eq!(f.reverse(POS, 21, 20, 101, 3_20).await, answers[20]);
    assert_eq!(f.buy(POS_2, 2, 105, 99_99).await, answers[22]);
    let Message::Declined(d) = f.reverse(POS, 22, 20, 101, 3_20).await else {
        panic!()
    };
    assert_eq!(d.reason, DeclineReason::AlreadyReversed);
    assert_eq!(balances, (1..=5).map(|a| f.balance_fen(a)).collect::<Vec<_>>());
    // New numbers continue above the old ones; tx ids are never reused.
    let Message::Approved(a) = f.buy(POS, 23, 101, 1).await else {
        panic!()
    };
    let old_max = answers
        .iter()
        .filter_map(|m| {
            if let Message::Approved(a) = m {
                Some(a.tx_id)
            } else {
                None
            }
        })
        .max()
        .unwrap();
    assert!(a.tx_id > old_max);
}

#[tokio::test]
async fn a_clean_restart_recovers_from_the_final_checkpoint() {
    recovers_everything(CheckpointPolicy::default()).await;
}

#[tokio::test]
async fn a_restart_without_checkpoints_recovers_by_replay() {
    recovers_everything(replay_only()).await;
}

#[tokio::test]
async fn a_restart_after_a_crash_recovers_checkpoint_plus_replay() {
    recovers_everything(crashy()).await;
}

/// With no time or entry trigger in sight, a checkpoint is still taken once enough
/// distinct records wait for one (what bounds their memory), and a crash after it
/// recovers from it.
#[tokio::test]
async fn enough_waiting_records_trigger_a_checkpoint() {
    let policy = |records_max| CheckpointPolicy {
        interval: std::time::Duration::from_secs(3600),
        entries_max: u64::MAX,
        records_max,
        enabled: true,
        on_shutdown: false,
    };
    let checkpoints = |f: &Fixture| {
        f.ledger
            .journal()
            .stats
            .checkpoints
            .load(std::sync::atomic::Ordering::Acquire)
    };
    // The fixture's campus is 14 records; the requests below add remembered outcomes,
    // which wait as one record per terminal: 2 more (the accounts they touch are
    // already waiting).
    let patient = Fixture::with_config(LedgerConfig {
        checkpoints: policy(1_000),
        ..LedgerConfig::default()
    })
    .await;
    let _ = activity(&patient).await;
    assert_eq!(
        checkpoints(&patient),
        0,
        "below the record limit nothing is checkpointed"
    );

    let f = Fixture::with_config(LedgerConfig {
        checkpoints: policy(16),
        ..LedgerConfig::default()
    })
    .await;
    let answers = activity(&f).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while checkpoints(&f) == 0 {
        assert!(std::time::Instant::now() < deadline, "no checkpoint was taken");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let balances: Vec<i64> = (1..=5).map(|a| f.balance_fen(a)).collect();
    let f = f.restart();
    assert_eq!((1..=5).map(|a| f.balance_fen(a)).collect::<Vec<_>>(), balances);
    // Every purchase is remembered: retries get the first answers again.
    for (seq, first) in (1..=20u64).zip(&answers) {
        let again = f.buy(POS, seq, 100 + (seq % 5) + 1, 3_00 + seq as i64).await;
        assert_eq!(&again, first, "retry of seq {seq}");
    }
}

/// One POS terminal and one account with 100.00, over a store whose faults the test
/// switches on.
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

#[tokio::test]
async fn a_failed_write_answers_system_error_and_applies_nothing() {
    let (f, switch) = faulty().await;
    assert!(matches!(f.buy(POS, 1, 101, 10_00).await, Message::Approved(_)));
    switch.set(FaultSwitch::FAIL_APPLY);
    let Message::Declined(d) = f.buy(POS, 2, 101, 10_00).await else {
        panic!()
    };
    assert_eq!(d.reason, DeclineReason::SystemError);
    // The journal stays refused even after the disk "recovers": memory may be ahead.
    switch.set(FaultSwitch::NONE);
    let Message::Declined(d) = f.buy(POS, 3, 101, 10_00).await else {
        panic!()
    };
    assert_eq!(d.reason, DeclineReason::SystemError);
    assert!(f.ledger.journal().is_poisoned());

    let f = f.restart();
    assert_eq!(f.balance_fen(1), 90_00, "only the acknowledged purchase survived");
    // The terminal retries with the same number and gets a real answer, once.
    let Message::Approved(a) = f.buy(POS, 2, 101, 10_00).await else {
        panic!()
    };
    assert_eq!(a.balance_fen, 80_00);
    assert_eq!(f.buy(POS, 2, 101, 10_00).await, Message::Approved(a));
}

#[tokio::test]
async fn a_failed_sync_is_never_answered_as_approved() {
    let (f, switch) = faulty().await;
    switch.set(FaultSwitch::FAIL_SYNC);
    let Message::Declined(d) = f.buy(POS, 1, 101, 10_00).await else {
        panic!()
    };
    assert_eq!(d.reason, DeclineReason::SystemError);
    let Message::Declined(d) = f.ledger.balance(POS, cardgate_codec::CardNo(101)).await.resolve().await else {
        panic!()
    };
    assert_eq!(d.reason, DeclineReason::SystemError);
}

// ---- model-based ----------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Buy { terminal: u64, account: u64, amount: i64 },
    Retry { terminal: u64, back: usize },
    Reverse { terminal: u64, back: usize },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1..=2u64, 1..=3u64, 1..=40_00i64).prop_map(|(terminal, account, amount)| Op::Buy { terminal, account, amount }),
        2 => (1..=2u64, 0..6usize).prop_map(|(terminal, back)| Op::Retry { terminal, back }),
        2 => (1..=2u64, 0..6usize).prop_map(|(terminal, back)| Op::Reverse { terminal, back }),
        1 => Just(Op::Restart),
    ]
}

/// What one request was and what the ledger answered.
#[derive(Clone, Debug)]
struct Sent {
    seq: u64,
    reversal_of: Option<u64>,
    card: u64,
    amount: i64,
    answer: Message,
}

async fn run_model(ops: Vec<Op>, policy: CheckpointPolicy) {
    let mut f = Fixture::open(tempfile::tempdir().unwrap(), config(policy), ManualClock::new(LUNCH_MS));
    let accounts: Vec<_> = (1..=3).map(|a| generous(account(a, 100_00))).collect();
    let cards: Vec<_> = (1..=3).map(|a| card(100 + a, a)).collect();
    f.ledger
        .bulk_create(vec![pos(1), pos(2)], &accounts, &cards)
        .await
        .unwrap();
    let mut model: HashMap<u64, i64> = (1..=3).map(|a| (a, 100_00)).collect();
    let mut sent: HashMap<u64, Vec<Sent>> = HashMap::new();
    let mut reversed: std::collections::HashSet<(u64, u64)> = Default::default();
    for op in ops {
        match op {
            Op::Buy {
                terminal,
                account,
                amount,
            } => {
                let log = sent.entry(terminal).or_default();
                let seq = log.last().map(|s| s.seq).unwrap_or(0) + 1;
                let answer = f.buy(terminal, seq, 100 + account, amount).await;
                let bal = model[&account];
                if bal >= amount {
                    let Message::Approved(a) = answer else {
                        panic!("model approves: {answer:?}")
                    };
                    assert_eq!(a.balance_fen, bal - amount);
                    model.insert(account, bal - amount);
                } else {
                    let Message::Declined(d) = answer else {
                        panic!("model declines: {answer:?}")
                    };
                    assert_eq!(d.reason, DeclineReason::InsufficientFunds);
                }
                log.push(Sent {
                    seq,
                    reversal_of: None,
                    card: 100 + account,
                    amount,
                    answer,
                });
            }
            Op::Retry { terminal, back } => {
                let Some(log) = sent.get(&terminal) else { continue };
                let Some(s) = log.iter().rev().nth(back).cloned() else {
                    continue;
                };
                let again = match s.reversal_of {
                    None => f.buy(terminal, s.seq, s.card, s.amount).await,
                    Some(o) => f.reverse(terminal, s.seq, o, s.card, s.amount).await,
                };
                assert_eq!(again, s.answer, "a retry gets the first answer");
            }
            Op::Reverse { terminal, back } => {
                let log = sent.entry(terminal).or_default();
                let Some(orig) = log.iter().rev().nth(back).cloned() else {
                    continue;
                };
                let seq = log.last().map(|s| s.seq).unwrap_or(0) + 1;
                let answer = f.reverse(terminal, seq, orig.seq, orig.card, orig.amount).await;
                let reversible = orig.reversal_of.is_none() && matches!(orig.answer, Message::Approved(_));
                match (reversible, reversed.contains(&(terminal, orig.seq))) {
                    (true, false) => {
                        let Message::Approved(_) = answer else {
                            panic!("model reverses: {answer:?}")
                        };
                        let account = orig.card - 100;
                        *model.get_mut(&account).unwrap() += orig.amount;
                        reversed.insert((terminal, orig.seq));
                    }
                    (true, true) => {
                        let Message::Declined(d) = answer else { panic!() };
                        assert_eq!(d.reason, DeclineReason::AlreadyReversed);
                    }
                    (false, _) => {
                        let Message::Declined(d) = answer else { panic!() };
                        assert_eq!(d.reason, DeclineReason::OriginalNotFound);
                    }
                }
                log.push(Sent {
                    seq,
                    reversal_of: Some(orig.seq),
                    card: orig.card,
                    amount: orig.amount,
                    answer,
                });
            }
            Op::Restart => f = f.restart(),
        }
        for (a, bal) in &model {
            assert_eq!(f.balance_fen(*a), *bal, "account {a}");
        }
    }
    let f = f.restart();
    for (a, bal) in &model {
        assert_eq!(f.balance_fen(*a), *bal, "account {a} after the last restart");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_matches_a_plain_map_across_restarts(ops in proptest::collection::vec(op(), 1..60), crash in any::<bool>()) {
        let policy = if crash { crashy() } else { CheckpointPolicy::default() };
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run_model(ops, policy));
    }
}
/// Replayed state must reach the next checkpoint: a later checkpoint names a later
/// entry id, and the entries that produced the replayed state are then skipped.
#[tokio::test]
async fn replayed_state_survives_later_checkpoints() {
    for round in 0..10 {
        let mut f = Fixture::open(
            tempfile::tempdir().unwrap(),
            config(crashy()),
            ManualClock::new(LUNCH_MS),
        );
        let accounts: Vec<_> = (1..=3).map(|a| generous(account(a, 100_00))).collect();
        let cards: Vec<_> = (1..=3).map(|a| card(100 + a, a)).collect();
        f.ledger
            .bulk_create(vec![pos(1), pos(2)], &accounts, &cards)
            .await
            .unwrap();
        let mut seq = 0;
        let mut answers = vec![];
        for i in 0..6 {
            for _ in 0..3 {
                seq += 1;
                answers.push((seq, f.buy(2, seq, 102, 100).await));
            }
            let bal = f.balance_fen(2);
            f = f.restart();
            assert_eq!(f.balance_fen(2), bal, "round {round} restart {i}");
            for (s, a) in &answers {
                assert_eq!(&f.buy(2, *s, 102, 100).await, a, "round {round} restart {i} seq {s}");
            }
        }
    }
}

/// The central store prunes shipped entries that a checkpoint covers: recovery after
/// that rebuilds the same state from the checkpoint and the entries left, and ids carry
/// on above the pruned ones.
#[tokio::test]
async fn recovery_after_pruning_rebuilds_the_same_state() {
    let f = Fixture::new().await;
    let answers = activity(&f).await;
    // A clean restart: a checkpoint through every entry so far.
    let f = f.restart();
    let through = f
        .ledger
        .journal()
        .stats
        .durable_checkpoint_id
        .load(std::sync::atomic::Ordering::Acquire);
    assert!(through > 20);
    // Entries after the checkpoint, which pruning must leave.
    let later = f.buy(POS, 30, 102, 1_00).await;
    let pruned = f
        .ledger
        .db()
        .prune_journal(
            through,
            i64::MAX,
            usize::MAX,
            cardgate_domain::entry::EntryRecord::time_of,
        )
        .unwrap();
    assert!(pruned.entries > 0 && pruned.through_id <= through, "{pruned:?}");
    let balances: Vec<_> = (1..=5).map(|a| f.balance_fen(a)).collect();
    let f = f.restart();
    assert_eq!((1..=5).map(|a| f.balance_fen(a)).collect::<Vec<_>>(), balances);
    assert_eq!(f.buy(POS, 30, 102, 1_00).await, later, "a retry still finds its answer");
    let Message::Approved(next) = f.buy(POS, 31, 102, 1).await else {
        panic!("approved")
    };
    let old_max = answers
        .iter()
        .chain([&later])
        .filter_map(|m| match m {
            Message::Approved(a) => Some(a.tx_id),
            _ => None,
        })
        .max()
        .unwrap();
    assert!(next.tx_id > old_max, "tx ids are never reused");
}

/// Recovery hands what it replayed to the checkpointer as the start-up's first
/// checkpoint, written beside the first requests instead of before the listener opens:
/// it carries the replayed records (a later recovery from it alone has them), and a crash
/// before or after it recovers the same state.
#[tokio::test]
async fn what_replay_changed_is_checkpointed_after_start_up_and_a_crash_around_it_loses_nothing() {
    let rare = CheckpointPolicy {
        interval: std::time::Duration::from_secs(3_600),
        entries_max: u64::MAX,
        records_max: usize::MAX,
        enabled: true,
        on_shutdown: false,
    };
    let checkpoint_of = |f: &Fixture| {
        f.ledger
            .journal()
            .stats
            .durable_checkpoint_id
            .load(std::sync::atomic::Ordering::Acquire)
    };
    let mut f = Fixture::open(tempfile::tempdir().unwrap(), config(rare), ManualClock::new(LUNCH_MS));
    let accounts: Vec<_> = (1..=3).map(|a| generous(account(a, 100_00))).collect();
    let cards: Vec<_> = (1..=3).map(|a| card(100 + a, a)).collect();
    f.ledger.bulk_create(vec![pos(1)], &accounts, &cards).await.unwrap();
    let mut answers = vec![];
    for seq in 1..=5 {
        answers.push(f.buy(1, seq, 101 + seq % 3, 1_00 * seq as i64).await);
    }
    let balances = |f: &Fixture| (1..=3).map(|a| f.balance_fen(a)).collect::<Vec<_>>();
    let expected = balances(&f);
    let first = checkpoint_of(&f);
    // A crash with no checkpoint since the campus: the restart replays it all, and
    // checkpoints it without a commit of its own; a crash right after changes nothing.
    for round in 0..2 {
        f = f.restart();
        assert_eq!(balances(&f), expected, "round {round}");
        for (seq, a) in (1..=5).zip(&answers) {
            assert_eq!(
                &f.buy(1, seq, 101 + seq % 3, 1_00 * seq as i64).await,
                a,
                "round {round}"
            );
        }
    }
    for _ in 0..500 {
        if checkpoint_of(&f) > first {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(checkpoint_of(&f) > first, "the replayed state was checkpointed");
    // Recovery from that checkpoint alone: the replayed records are in it.
    let dir = f.stop();
    let f = Fixture::open(dir, config(replay_only()), ManualClock::new(LUNCH_MS));
    assert_eq!(balances(&f), expected);
}
