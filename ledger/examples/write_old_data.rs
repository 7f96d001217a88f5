//! Writes the data directory that `tests/old_data.rs` recovers: a few hundred entries of
//! every kind, a checkpoint, and entries after it, as a gateway of this build leaves
//! them, plus `expected.json`, the ledger's state (through its public API) just before
//! it stopped.
//!
//! ```sh
//! cargo run -p cardgate-ledger --example write_old_data -- ledger/tests/data/afc51b8
//! ```
//!
//! The committed directory was written by commit afc51b8 (the last build before the
//! ledger became layered crates); running this again with a later build writes that
//! build's directory, which is not the point of the test.

// Amounts in fen are written yuan_fen (`12_50` is 12.50 yuan).
#![allow(clippy::inconsistent_digit_grouping)]

#[path = "../tests/common/dump.rs"]
mod dump;

use std::path::Path;
use std::sync::Arc;

use cardgate_codec::{CardNo, Purchase, Reversal};
use cardgate_domain::entry::{CardAction, FeeKind, PayMethod};
use cardgate_domain::model::{
    Account, AccountKind, AccountStatus, Card, CardStatus, Limits, Params, Terminal, TerminalKind,
};
use cardgate_domain::money::from_fen;
use cardgate_domain::operator::{Actor, Role};
use cardgate_journal::CheckpointPolicy;
use cardgate_ledger::desk::{By, NewPerson};
use cardgate_ledger::{Ledger, LedgerConfig, ManualClock};

/// 2026-11-28 12:05:00 in UTC+8.
const LUNCH_MS: i64 = 1_795_853_100_000;

fn scope() -> dump::Scope {
    dump::Scope {
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

fn open(dir: &Path, clock: &ManualClock, on_shutdown: bool) -> (Arc<Ledger>, cardgate_journal::CommitterHandle) {
    let config = LedgerConfig {
        tz_offset_minutes: 480,
        checkpoints: CheckpointPolicy {
            // Only the explicit ones: at shutdown in the first run.
            interval: std::time::Duration::from_secs(3600),
            entries_max: u64::MAX,
            records_max: usize::MAX,
            enabled: true,
            on_shutdown,
        },
        terminal_key: None,
        ..LedgerConfig::default()
    };
    let (l, c, _) = Ledger::open(dir, config, Arc::new(clock.clone())).expect("open the ledger");
    (l, c)
}

async fn buy(l: &Ledger, terminal: u64, seq: u64, card: u64, amount_fen: i64) {
    let p = Purchase {
        tx_seq: seq,
        card: CardNo(card),
        amount_fen,
        terminal_time_ms: LUNCH_MS - 100,
    };
    let _ = l.purchase(terminal, &p).await.resolve().await;
}

async fn reverse(l: &Ledger, terminal: u64, seq: u64, original: u64, card: u64, amount_fen: i64) {
    let r = Reversal {
        tx_seq: seq,
        original_tx_seq: original,
        card: CardNo(card),
        amount_fen,
        terminal_time_ms: LUNCH_MS - 100,
    };
    let _ = l.reversal(terminal, &r).await.resolve().await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = std::env::args().nth(1).expect("usage: write_old_data DIR");
    let dir = Path::new(&dir);
    assert!(!dir.join("db").exists(), "{} already holds a ledger", dir.display());
    std::fs::create_dir_all(dir).unwrap();
    let clock = ManualClock::new(LUNCH_MS);
    let desk = Actor {
        operator_id: 1,
        name: "王芳".into(),
        role: Role::CardDesk,
    };

    // First run: master data, purchases, every desk operation; a checkpoint at its end.
    let (l, committer) = open(dir, &clock, true);
    let terminals = (1..=4)
        .map(|id| Terminal {
            id,
            secret: [id as u8; 32],
            kind: TerminalKind::Pos,
            merchant_id: 7 + id % 2,
            enabled: id != 4,
            name: format!("POS {id}"),
            place: "二食堂".into(),
        })
        .chain([Terminal {
            id: 10,
            secret: [10; 32],
            kind: TerminalKind::Door,
            merchant_id: 0,
            enabled: true,
            name: "Library door".into(),
            place: "Library".into(),
        }])
        .collect();
    let accounts: Vec<Account> = (1..=20)
        .map(|id| Account {
            id,
            kind: if id % 5 == 0 {
                AccountKind::Staff
            } else {
                AccountKind::Student
            },
            status: AccountStatus::Active,
            balance: from_fen(100_00 + id as i64 * 10_00),
            limits: (id == 7).then_some(Limits {
                single_payment_max: from_fen(30_00),
                daily_max: from_fen(50_00),
            }),
            day: 0,
            spent_today: from_fen(0),
        })
        .collect();
    let cards: Vec<Card> = (1..=20)
        .map(|id| Card {
            no: CardNo(100 + id),
            account: id,
            status: CardStatus::Active,
            expires_ms: (id == 9).then_some(LUNCH_MS - 1),
            issued_ms: LUNCH_MS - 86_400_000,
        })
        .collect();
    l.bulk_create(terminals, &accounts, &cards).await.unwrap();
    let mut params = Params::default();
    params.kinds[0].limits.daily_max = from_fen(80_00);
    l.set_params(params).await.unwrap();

    let mut seq = [0u64; 11];
    for round in 0..120u64 {
        let t = 1 + round % 4;
        seq[t as usize] += 1;
        let card = 101 + (round * 7) % 21; // 121 is unknown
        let amount = 3_00 + (round as i64 * 137) % 28_00;
        buy(&l, t, seq[t as usize], card, amount).await;
        clock.advance(1_000);
        if round % 15 == 14 {
            seq[t as usize] += 1;
            reverse(&l, t, seq[t as usize], seq[t as usize] - 1, card, amount).await;
        }
    }
    l.add_operator(&By::actor(&Actor::cli()), "director", Role::Director)
        .await
        .unwrap();
    l.add_operator(&By::actor(&Actor::cli()), "王芳", Role::CardDesk)
        .await
        .unwrap();
    for (i, name) in ["李明", "赵丽", "孙强"].iter().enumerate() {
        l.open_person(
            &By::actor(&desk),
            NewPerson {
                id: format!("202400000{}", i + 1),
                name: (*name).into(),
                department: "计算机学院".into(),
                kind: AccountKind::Student,
            },
        )
        .await
        .unwrap();
    }
    let a21 = l.person("2024000001").unwrap().account;
    let a22 = l.person("2024000002").unwrap().account;
    let a23 = l.person("2024000003").unwrap().account;
    l.update_person(
        &By::actor(&desk),
        "2024000003",
        Some("孙强强".into()),
        None,
        Some(AccountKind::Staff),
    )
    .await
    .unwrap();
    l.issue_card_desk(&By::actor(&desk), a21, CardNo(62_220_000_000_001), None, None)
        .await
        .unwrap();
    l.issue_card_desk(&By::actor(&desk), a22, CardNo(62_220_000_000_002), None, None)
        .await
        .unwrap();
    l.issue_card_desk(
        &By::actor(&desk),
        a23,
        CardNo(62_220_000_000_003),
        Some(LUNCH_MS + 7 * 86_400_000),
        Some((FeeKind::TemporaryCard, PayMethod::Cash)),
    )
    .await
    .unwrap();
    l.top_up(&By::actor(&desk), a21, 200_00).await.unwrap();
    l.top_up(&By::actor(&desk), a22, 50_00).await.unwrap();
    l.refund(&By::actor(&desk), a21, 20_00, "overpaid").await.unwrap();
    l.fee(&By::actor(&desk), a22, FeeKind::Replacement, PayMethod::Balance)
        .await
        .unwrap();
    l.adjust(&By::actor(&desk), 3, -5_00, "double charge at window 3")
        .await
        .unwrap();
    l.card_status(&By::actor(&desk), CardNo(62_220_000_000_001), CardAction::Lost)
        .await
        .unwrap();
    l.card_status(&By::actor(&desk), CardNo(62_220_000_000_001), CardAction::Unfreeze)
        .await
        .unwrap();
    l.card_status(&By::actor(&desk), CardNo(105), CardAction::Freeze)
        .await
        .unwrap();
    l.card_status(&By::actor(&desk), CardNo(106), CardAction::Bad)
        .await
        .unwrap();
    l.replace_card(
        &By::actor(&desk),
        CardNo(62_220_000_000_002),
        CardNo(62_220_000_000_004),
        Some(PayMethod::Balance),
    )
    .await
    .unwrap();
    l.cancel_card(&By::actor(&desk), CardNo(108)).await.unwrap();
    l.grant_batch(
        &By::actor(&desk),
        "subsidy-2026-11",
        &[(1, 30_00), (2, 30_00), (a21, 45_00)],
    )
    .await
    .unwrap();
    let mut p2 = l.params();
    p2.kinds[1].replacement_fee = from_fen(25_00);
    l.change_params(&By::actor(&desk), p2).await.unwrap();
    let csv = "person_id,name,department,kind,card_no\n\
               2024000011,周一,物理学院,student,62220000000011\n\
               2024000012,吴二,物理学院,staff,62220000000012\n\
               2024000001,李明,数学学院,student,62220000000001\n";
    let report = l.import_csv(&By::actor(&desk), csv.as_bytes(), false).await.unwrap();
    assert!(report.applied && report.error_count == 0, "{report:?}");
    l.audit(cardgate_domain::model::AuditRecord {
        id: 0,
        time_ms: 0,
        actor: Some(desk.clone()),
        action: "card.lost".into(),
        target: "card:62220000000001".into(),
        status: 200,
        before: "{}".into(),
        after: "{}".into(),
        detail: String::new(),
    })
    .await
    .unwrap();
    drop(l);
    committer.join();

    // Second run: more of everything, and no checkpoint at the end, so these entries
    // are only in the journal.
    clock.advance(3_600_000);
    let (l, committer) = open(dir, &clock, false);
    for round in 0..80u64 {
        let t = 1 + round % 3;
        seq[t as usize] += 1;
        let card = 101 + (round * 3) % 20;
        buy(&l, t, seq[t as usize], card, 2_00 + (round as i64 * 53) % 9_00).await;
        clock.advance(500);
    }
    seq[1] += 1;
    reverse(&l, 1, seq[1], seq[1] - 1, 101 + (79 * 3) % 20, 2_00 + (79 * 53) % 9_00).await;
    l.add_operator(&By::actor(&Actor::cli()), "李数据", Role::DataAdmin)
        .await
        .unwrap();
    l.card_status(&By::actor(&desk), CardNo(62_220_000_000_004), CardAction::Lost)
        .await
        .unwrap();
    l.top_up(&By::actor(&desk), 1, 12_34).await.unwrap();
    l.grant_batch(&By::actor(&desk), "subsidy-2026-12", &[(4, 10_00), (a22, 10_00)])
        .await
        .unwrap();
    let csv = "person_id,name,department,kind,card_no\n2024000013,郑三,化学学院,temporary,62220000000013\n";
    l.import_csv(&By::actor(&desk), csv.as_bytes(), false).await.unwrap();
    l.cancel_card(&By::actor(&desk), CardNo(110)).await.unwrap();
    l.issue_card_desk(
        &By::actor(&desk),
        a21,
        CardNo(62_220_000_000_005),
        None,
        Some((FeeKind::TemporaryCard, PayMethod::Balance)),
    )
    .await
    .unwrap();
    l.open_person(
        &By::actor(&desk),
        NewPerson {
            id: "2024000014".into(),
            name: "王五".into(),
            department: String::new(),
            kind: AccountKind::Temporary,
        },
    )
    .await
    .unwrap();
    l.issue_card_desk(
        &By::actor(&desk),
        l.person("2024000014").unwrap().account,
        CardNo(62_220_000_000_006),
        None,
        None,
    )
    .await
    .unwrap();

    let expected = dump::dump(&l, &scope());
    std::fs::write(
        dir.join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
    let durable = l
        .journal()
        .stats
        .durable_entry_id
        .load(std::sync::atomic::Ordering::Acquire);
    let checkpoint = l
        .journal()
        .stats
        .durable_checkpoint_id
        .load(std::sync::atomic::Ordering::Acquire);
    println!("entries {durable}, checkpoint through {checkpoint}");
    drop(l);
    committer.join();
}
