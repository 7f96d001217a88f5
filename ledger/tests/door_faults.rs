//! A door controller is never told "granted" for a decision the journal could not keep:
//! when the disk fails, an access check is answered `system_error` (the controller then
//! decides from its cache, docs/PROTOCOL.md 11.4) and a punch an ERROR; after a restart
//! the same event number is decided again, once.

mod common;

use cardgate_codec::{AccessReason, ErrorCode, Message};
use cardgate_journal::{FaultSwitch, FaultyStore};
use cardgate_ledger::demo::demo_card;
use cardgate_ledger::keys::TerminalKey;
use cardgate_ledger::{LedgerConfig, ManualClock};
use common::*;

#[tokio::test]
async fn a_failed_sync_answers_door_checks_system_error_never_granted() {
    let switch = FaultSwitch::default();
    let s = switch.clone();
    let config = LedgerConfig {
        terminal_key: Some(TerminalKey::demo()),
        ..LedgerConfig::default()
    };
    let f = Fixture::open_with(
        tempfile::tempdir().unwrap(),
        config,
        ManualClock::new(LUNCH_MS),
        move |store| {
            Box::new(FaultyStore {
                inner: store,
                switch: s,
            })
        },
    );
    f.demo_doors().await;
    assert_eq!(f.demo_door_check(1).await, AccessReason::Granted);

    switch.set(FaultSwitch::FAIL_SYNC);
    assert_eq!(f.demo_door_check(2).await, AccessReason::SystemError);
    let punch = f.demo_punch(1, demo_card(1)).await;
    assert!(
        matches!(punch, Message::Error(ref e) if e.code == ErrorCode::ServerError),
        "a punch the journal could not keep is an ERROR: {punch:?}"
    );
    // A blacklist sync then is ERROR server_error too, never a page of no version or a
    // DECLINED read as one, and never nothing to wait on.
    let pages = f.ledger.blacklist_sync(0, 0).await;
    assert_eq!(pages.len(), 1);
    let first = pages.into_iter().next().unwrap().resolve().await;
    assert!(
        matches!(first, Message::Error(ref e) if e.code == ErrorCode::ServerError),
        "{first:?}"
    );
    // The journal stays refused after the disk "recovers": memory may be ahead of it.
    switch.set(FaultSwitch::NONE);
    assert_eq!(f.demo_door_check(3).await, AccessReason::SystemError);

    let f = f.restart_with(|s| Box::new(s));
    assert_eq!(
        f.demo_door_check(2).await,
        AccessReason::Granted,
        "the unanswered event is decided again after the restart"
    );
    assert_eq!(f.demo_door_check(4).await, AccessReason::Granted);
}
