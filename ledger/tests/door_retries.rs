//! A controller that did not get its answer sends the same event number again and must get
//! the answer recorded the first time, even when the gateway restarted in between and would
//! decide differently now: a door that opened is not reported as refused, nor a punch
//! refused as recorded. Across a restart from a checkpoint and one from replay alone.

mod common;

use cardgate_codec::{AccessReason, CardNo, Message, PunchStatus};
use cardgate_domain::operator::{Actor, Role};
use cardgate_journal::CheckpointPolicy;
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

async fn first_answers_survive_a_restart(checkpoints: CheckpointPolicy) {
    let config = LedgerConfig {
        terminal_key: Some(TerminalKey::demo()),
        checkpoints,
        ..LedgerConfig::default()
    };
    let f = Fixture::open(tempfile::tempdir().unwrap(), config, ManualClock::new(LUNCH_MS));
    f.demo_doors().await;

    assert_eq!(f.demo_door_check(1).await, AccessReason::Granted);
    assert_eq!(punch(&f, 1, demo_card(1)).await, PunchStatus::Recorded);
    assert_eq!(punch(&f, 2, CardNo(9_999_999_999_999)).await, PunchStatus::UnknownCard);
    // Then every permission goes: the same card is refused from now on.
    let admin = Actor {
        operator_id: 7,
        name: "wang".into(),
        role: Role::DoorAdmin,
    };
    for p in f.ledger.permissions() {
        f.ledger.revoke_permission(&By::actor(&admin), p.id).await.unwrap();
    }
    assert_eq!(f.demo_door_check(2).await, AccessReason::NoPermission);

    let f = f.restart();
    assert_eq!(
        f.demo_door_check(1).await,
        AccessReason::Granted,
        "the door opened the first time: the retry is told so, not decided again"
    );
    assert_eq!(f.demo_door_check(2).await, AccessReason::NoPermission);
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
    // remembered and a retry of it is decided again (PROTOCOL.md 6.22).
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
        AccessReason::NoPermission,
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
