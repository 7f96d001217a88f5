//! A controller that did not get its answer sends the same event number again and must get
//! the answer recorded the first time, even when the gateway restarted in between and would
//! decide differently now: a door that opened is not reported as refused, nor a punch
//! refused as recorded. Across a restart from a checkpoint and one from replay alone.

mod common;

use std::collections::BTreeMap;

use cardgate_codec::{AccessReason, CardNo, Message, PunchStatus};
use cardgate_domain::access::{AccessRecord, RememberedAnswer};
use cardgate_domain::operator::{Actor, Role};
use cardgate_journal::CheckpointPolicy;
use cardgate_journal::record::{decode_record, encode_record};
use cardgate_ledger::demo::demo_card;
use cardgate_ledger::desk::By;
use cardgate_ledger::keys::TerminalKey;
use cardgate_ledger::{LedgerConfig, ManualClock};
use common::*;

async fn punch(f: &Fixture, seq: u64, card: CardNo) -> PunchStatus {
    match f.demo_punch(seq, card).await {
        Message::PunchResult(r) => r.status,
        other => panic!("expected PUNCH_RESULT, got {other:?}"),
    }
}

fn demo_config(checkpoints: CheckpointPolicy) -> LedgerConfig {
    LedgerConfig {
        terminal_key: Some(TerminalKey::demo()),
        checkpoints,
        ..LedgerConfig::default()
    }
}

/// The door admin revokes every permission: every card is refused from now on.
async fn revoke_every_permission(f: &Fixture) {
    let admin = Actor {
        operator_id: 7,
        name: "wang".into(),
        role: Role::DoorAdmin,
    };
    for p in f.ledger.permissions() {
        f.ledger.revoke_permission(&By::actor(&admin), p.id).await.unwrap();
    }
}

async fn first_answers_survive_a_restart(checkpoints: CheckpointPolicy) {
    let config = demo_config(checkpoints);
    let f = Fixture::open(tempfile::tempdir().unwrap(), config, ManualClock::new(LUNCH_MS));
    f.demo_doors().await;

    assert_eq!(f.demo_door_check(1).await, AccessReason::Granted);
    assert_eq!(punch(&f, 1, demo_card(1)).await, PunchStatus::Recorded);
    assert_eq!(punch(&f, 2, CardNo(9_999_999_999_999)).await, PunchStatus::UnknownCard);
    // Then every permission goes: the same card is refused from now on.
    revoke_every_permission(&f).await;
    assert_eq!(f.demo_door_check(2).await, AccessReason::NoPermission);

    let f = f.restart();
    assert_eq!(
        f.demo_door_check(1).await,
        AccessReason::Granted,
        "the door opened the first time: the retry is told so, not decided again"
    );
    assert_eq!(f.demo_door_check(2).await, AccessReason::NoPermission);
    assert_eq!(
        f.demo_door_check_of(1, demo_card(2)).await,
        AccessReason::EventReused,
        "the restart kept what 1 answered: another card under it is no retry"
    );
    assert_eq!(
        punch(&f, 1, demo_card(3)).await,
        PunchStatus::EventReused,
        "nor another card under a recorded punch's number"
    );
    assert_eq!(
        f.demo_door_check(4).await,
        AccessReason::NoPermission,
        "a new number is decided now"
    );
    assert_eq!(punch(&f, 2, CardNo(9_999_999_999_999)).await, PunchStatus::UnknownCard);
    assert_eq!(punch(&f, 1, demo_card(1)).await, PunchStatus::Duplicate);

    // And once more: what the restart brought back is kept by the next one too.
    let f = f.restart();
    assert_eq!(f.demo_door_check(1).await, AccessReason::Granted);
    assert_eq!(f.demo_door_check(4).await, AccessReason::NoPermission);

    // The answers of the last 64 numbers are kept: once 65 is answered, 1 is no longer
    // remembered, and a check sent under it again is decided nowhere (PROTOCOL.md 11.2):
    // decided afresh, a grant would open the door with no record.
    for seq in 5..=64 {
        assert_eq!(f.demo_door_check(seq).await, AccessReason::NoPermission);
    }
    assert_eq!(
        f.demo_door_check(1).await,
        AccessReason::Granted,
        "64 numbers, 1 among them"
    );
    assert_eq!(f.demo_door_check(65).await, AccessReason::NoPermission);
    assert_eq!(
        f.demo_door_check(1).await,
        AccessReason::EventReused,
        "1 is 65 numbers back"
    );
}

#[tokio::test]
async fn a_retry_after_a_restart_from_a_checkpoint_gets_the_first_answer() {
    // A checkpoint after every commit and none at shutdown: what a crash leaves, with
    // nothing left to replay.
    first_answers_survive_a_restart(CheckpointPolicy {
        interval: std::time::Duration::ZERO,
        entries_max: 1,
        records_max: 1,
        enabled: true,
        on_shutdown: false,
    })
    .await;
}

#[tokio::test]
async fn a_retry_after_a_restart_from_replay_gets_the_first_answer() {
    first_answers_survive_a_restart(CheckpointPolicy {
        enabled: false,
        ..CheckpointPolicy::default()
    })
    .await;
}

/// Each controller's remembered answers as stored: its `'I' 'R'` record, and how many
/// keys hold one answer each (`'I' 'r'`, what builds before `AccessRecord::Answers`
/// wrote).
fn stored_answers(dir: &std::path::Path) -> (BTreeMap<u64, Vec<(u64, u16)>>, usize) {
    let db = cardgate_journal::Db::open(dir).expect("the ledger has stopped");
    let mut merged = BTreeMap::new();
    for kv in db.tree.scan_prefix(b"IR") {
        let (k, v) = kv.unwrap();
        match decode_record::<AccessRecord>(&k, &v).unwrap() {
            AccessRecord::CheckedAnswers(a) => {
                assert_eq!(k[2..10], a.terminal.to_be_bytes(), "keyed by its controller");
                let answers = a.answers.iter().map(|&(s, r, _)| (s, r)).collect();
                assert!(merged.insert(a.terminal, answers).is_none());
            }
            other => panic!("'I' 'R' holds {other:?}"),
        }
    }
    (merged, db.tree.scan_prefix(b"Ir").count())
}

#[tokio::test]
async fn answers_are_stored_one_record_per_controller_and_an_older_builds_slots_are_rewritten() {
    let config = demo_config(CheckpointPolicy::default());
    let clock = ManualClock::new(LUNCH_MS);
    let f = Fixture::open(tempfile::tempdir().unwrap(), config.clone(), clock.clone());
    f.demo_doors().await;
    assert_eq!(f.demo_door_check(1).await, AccessReason::Granted);
    assert_eq!(punch(&f, 1, demo_card(1)).await, PunchStatus::Recorded);
    revoke_every_permission(&f).await;
    assert_eq!(f.demo_door_check(2).await, AccessReason::NoPermission);
    // 66 is in 2's slot and newer: it keeps the slot.
    assert_eq!(f.demo_door_check(66).await, AccessReason::NoPermission);
    let dir = f.stop();

    let door = cardgate_ledger::demo::DEMO_DOOR_TERMINAL_BASE + 1;
    let clock_terminal = cardgate_ledger::demo::DEMO_CLOCK_TERMINAL_BASE + 1;
    let expected = BTreeMap::from([
        (
            door,
            vec![
                (1, AccessReason::Granted.code()),
                (66, AccessReason::NoPermission.code()),
            ],
        ),
        (clock_terminal, vec![(1, u16::from(PunchStatus::Recorded as u8))]),
    ]);
    assert_eq!(stored_answers(dir.path()), (expected.clone(), 0));

    // What a build before `Answers` left: one key per slot, 'I' 'r' controller slot.
    {
        let db = cardgate_journal::Db::open(dir.path()).unwrap();
        for (terminal, answers) in &expected {
            let mut merged_key = b"IR".to_vec();
            merged_key.extend_from_slice(&terminal.to_be_bytes());
            merged_key.extend_from_slice(&0u64.to_be_bytes());
            db.tree.remove(merged_key).unwrap().expect("stored");
            for &(event_seq, answer) in answers {
                let mut key = b"Ir".to_vec();
                key.extend_from_slice(&terminal.to_be_bytes());
                key.extend_from_slice(&(event_seq % 64).to_be_bytes());
                let record = AccessRecord::Answer(RememberedAnswer {
                    terminal: *terminal,
                    event_seq,
                    answer,
                });
                db.tree.insert(key, encode_record(&record)).unwrap();
            }
        }
        db.tree.flush().unwrap();
    }
    assert_eq!(stored_answers(dir.path()), (BTreeMap::new(), 3));

    let f = Fixture::open(dir, config, clock);
    assert_eq!(
        f.demo_door_check(1).await,
        AccessReason::Granted,
        "the older build's answer is kept"
    );
    assert_eq!(f.demo_door_check(66).await, AccessReason::NoPermission);
    assert_eq!(punch(&f, 1, demo_card(1)).await, PunchStatus::Duplicate);
    let dir = f.stop();
    assert_eq!(
        stored_answers(dir.path()),
        (expected, 0),
        "rewritten one record per controller at start-up, the slots' keys gone"
    );
}
