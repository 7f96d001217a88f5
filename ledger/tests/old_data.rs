//! A data directory written by an older build (commit afc51b8: a few hundred entries of
//! every kind, a checkpoint through entry 201, entries 202..=293 after it; see
//! `examples/write_old_data.rs`) recovers to exactly the state that build had, balance
//! for balance, and keeps working.

mod common;

use std::path::Path;
use std::sync::Arc;

use cardgate_codec::{CardNo, Message, Purchase};
use cardgate_ledger::{Ledger, LedgerConfig, ManualClock};
use common::dump::{Scope, dump};
use serde_json::Value;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/afc51b8");

fn scope() -> Scope {
    Scope {
        accounts: 1..=30,
        cards: (101..=120)
            .chain([
                62_220_000_000_001,
                62_220_000_000_002,
                62_220_000_000_003,
                62_220_000_000_004,
                62_220_000_000_005,
                62_220_000_000_006,
                62_220_000_000_011,
                62_220_000_000_012,
                62_220_000_000_013,
            ])
            .collect(),
        terminals: vec![1, 2, 3, 4, 10],
        persons: [
            "2024000001",
            "2024000002",
            "2024000003",
            "2024000011",
            "2024000012",
            "2024000013",
        ]
        .map(String::from)
        .to_vec(),
    }
}

/// A copy of the committed directory, so that the test never changes it.
fn copy_of_old_data() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(DATA).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if e.file_type().unwrap().is_file() && name != "expected.json" {
            std::fs::copy(e.path(), dir.path().join(&name)).unwrap();
        }
    }
    std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
    dir
}

fn open(path: &Path) -> (Arc<Ledger>, cardgate_journal::CommitterHandle, u64) {
    // The clock of the run that wrote it, an hour and more after its lunch.
    let clock = ManualClock::new(1_795_853_100_000 + 2 * 3_600_000);
    let (l, c, stats) = common::reopen(|| Ledger::open(path, LedgerConfig::default(), Arc::new(clock.clone())));
    (l, c, stats.replayed)
}

#[tokio::test]
async fn a_data_directory_of_the_older_build_recovers_to_its_state() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(DATA).join("expected.json")).unwrap()).unwrap();
    let dir = copy_of_old_data();
    let (l, committer, replayed) = open(dir.path());
    assert_eq!(
        replayed, 92,
        "entries 202..=293 come from the journal, the rest from the checkpoint"
    );
    let got = dump(&l, &scope());
    for (key, want) in expected.as_object().unwrap() {
        assert_eq!(&got[key], want, "{key} differs from what the older build had");
    }
    assert_eq!(got, expected);

    // It keeps working: a purchase on the next sequence number, and again after a restart.
    let last = l.sign_on_secrets(2).unwrap().last_seq;
    let before = l.account(1).unwrap().balance;
    let p = Purchase {
        tx_seq: last + 1,
        card: CardNo(101),
        amount_fen: 1_00,
        terminal_time_ms: 0,
    };
    assert!(matches!(l.purchase(2, &p).await.resolve().await, Message::Approved(_)));
    drop(l);
    committer.join();
    let (l, committer, _) = open(dir.path());
    assert_eq!(l.account(1).unwrap().balance, before - rust_decimal::Decimal::ONE);

    // Its entries have no hash: the chain begins with the first entry this build wrote,
    // and that start is recorded, so the check tells old entries from stripped ones.
    let db = l.db().clone();
    let chain = cardgate_journal::chain::verify(&db, u64::MAX).unwrap();
    assert_eq!(chain.faults, vec![], "{chain:?}");
    assert_eq!(chain.chain_start, Some(294), "the first entry after 293");
    assert_eq!(chain.unhashed, 293, "every entry the older build wrote");
    assert_eq!(chain.last_entry_id, Some(294));
    assert_eq!(
        chain.anchored_at,
        Some(0),
        "the first hashed entry links to the genesis"
    );
    drop(l);
    committer.join();
}
