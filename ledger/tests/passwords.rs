//! Console passwords on a real ledger: set, checked, changed, refused when they should
//! be, and the same after a clean restart (checkpoint) and after a crash (replay).

mod common;

use std::path::Path;
use std::sync::Arc;

use cardgate_domain::operator::{Actor, Role};
use cardgate_journal::{CommitterHandle, FaultSwitch, FaultyStore};
use cardgate_ledger::desk::{By, SignIn};
use cardgate_ledger::{Ledger, LedgerConfig, LedgerError, SystemClock};
use common::reopen;

fn open(dir: &Path, switch: &FaultSwitch) -> (Arc<Ledger>, CommitterHandle) {
    let (l, c, _) = reopen(|| {
        let s = switch.clone();
        Ledger::open_with_store(dir, LedgerConfig::default(), Arc::new(SystemClock), |st| {
            Box::new(FaultyStore { inner: st, switch: s })
        })
    });
    (l, c)
}

async fn close(l: Arc<Ledger>, c: CommitterHandle) {
    drop(l);
    tokio::task::spawn_blocking(move || c.join()).await.unwrap();
}

async fn signs_in(l: &Ledger, name: &str, password: &str) -> Option<bool> {
    match l.check_password(name, password).await.unwrap() {
        SignIn::Valid { operator, must_change } => {
            assert_eq!(operator.name, name);
            Some(must_change)
        }
        SignIn::Invalid => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn passwords_are_checked_changed_and_survive_a_restart_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let switch = FaultSwitch::default();
    let (l, c) = open(dir.path(), &switch);
    let cli = Actor::cli();
    let (wang, token) = l.add_operator(&By::actor(&cli), "wang", Role::CardDesk).await.unwrap();
    assert_eq!(signs_in(&l, "wang", "").await, None, "no password yet: no sign-in");
    assert!(!l.has_password(wang.id));

    // Set by someone else: valid, and its owner must choose another.
    let set = l
        .set_password(&By::actor(&cli), wang.id, "first-pass-1", true)
        .await
        .unwrap();
    assert!(set.first && set.must_change);
    assert_eq!(signs_in(&l, "wang", "first-pass-1").await, Some(true));
    assert_eq!(signs_in(&l, "wang", "first-pass-2").await, None);
    assert_eq!(signs_in(&l, "Wang", "first-pass-1").await, None, "names are exact");
    assert_eq!(signs_in(&l, "nobody", "first-pass-1").await, None);

    // Chosen by its owner.
    let me = Actor::of(&wang);
    let set = l
        .set_password(&By::actor(&me), wang.id, "my own secret", false)
        .await
        .unwrap();
    assert!(!set.first && !set.must_change);
    assert_eq!(signs_in(&l, "wang", "first-pass-1").await, None, "the old one is gone");
    assert_eq!(signs_in(&l, "wang", "my own secret").await, Some(false));
    assert_eq!(
        l.authenticate(&token).unwrap().id,
        wang.id,
        "the API token is untouched"
    );

    // Bad passwords change nothing.
    for bad in ["short", "with\na newline", &"x".repeat(300)] {
        assert!(matches!(
            l.set_password(&By::actor(&me), wang.id, bad, false).await,
            Err(LedgerError::Invalid(_))
        ));
    }
    assert!(matches!(
        l.set_password(&By::actor(&cli), 999, "long enough", false).await,
        Err(LedgerError::NotFound { .. })
    ));
    assert_eq!(signs_in(&l, "wang", "my own secret").await, Some(false));

    // A clean restart: from the checkpoint.
    close(l, c).await;
    let (l, c) = open(dir.path(), &switch);
    assert!(l.has_password(wang.id));
    assert_eq!(signs_in(&l, "wang", "my own secret").await, Some(false));

    // A crash: the change after the last checkpoint comes back by replay.
    l.set_password(&By::actor(&cli), wang.id, "reset by the admin", true)
        .await
        .unwrap();
    switch.set(FaultSwitch::FAIL_APPLY);
    assert!(
        l.set_password(&By::actor(&cli), wang.id, "never durable", false)
            .await
            .is_err(),
        "the journal failed"
    );
    close(l, c).await;
    switch.set(FaultSwitch::NONE);
    let (l, c) = open(dir.path(), &switch);
    assert_eq!(signs_in(&l, "wang", "reset by the admin").await, Some(true));
    assert_eq!(
        signs_in(&l, "wang", "never durable").await,
        None,
        "what the journal refused is not kept"
    );

    // A disabled operator never signs in, password or not.
    l.disable_operator(&By::actor(&cli), wang.id).await.unwrap();
    assert_eq!(signs_in(&l, "wang", "reset by the admin").await, None);
    close(l, c).await;
}
