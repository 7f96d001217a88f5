//! The card desk's operations on a real ledger (sled in a temp dir), and that a clean
//! restart (checkpoint) and a crash (replay) both rebuild exactly what they left.

mod common;

use std::path::Path;
use std::sync::Arc;

use cardgate_codec::{CardNo, DeclineReason, Message, Purchase};
use cardgate_domain::entry::{CardAction, FeeKind, PayMethod};
use cardgate_domain::model::AuditRecord;
use cardgate_domain::model::{AccountKind, AccountStatus, CardStatus, Terminal, TerminalKind};
use cardgate_domain::money::{from_fen, to_fen};
use cardgate_domain::operator::{Actor, Role};
use cardgate_journal::CommitterHandle;
use cardgate_journal::{FaultSwitch, FaultyStore};
use cardgate_ledger::audit::AuditQuery;
use cardgate_ledger::desk::{By, NewPerson};
use cardgate_ledger::{Ledger, LedgerConfig, SystemClock};
use common::reopen;

fn open(dir: &Path) -> (Arc<Ledger>, CommitterHandle) {
    let (l, c, _) = reopen(|| Ledger::open(dir, LedgerConfig::default(), Arc::new(SystemClock)));
    (l, c)
}

fn open_faulty(dir: &Path, switch: &FaultSwitch) -> (Arc<Ledger>, CommitterHandle) {
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

fn desk() -> Actor {
    Actor {
        operator_id: 7,
        name: "wang".into(),
        role: Role::CardDesk,
    }
}

fn person(id: &str) -> NewPerson {
    NewPerson {
        id: id.into(),
        name: format!("Person {id}"),
        department: "CS".into(),
        kind: AccountKind::Student,
    }
}

async fn pos(l: &Ledger) {
    l.register_terminal_unsealed(Terminal {
        id: 1,
        secret: [1; 32],
        kind: TerminalKind::Pos,
        merchant_id: 1,
        enabled: true,
        name: "POS 1".into(),
        place: "Canteen".into(),
    })
    .await
    .unwrap();
}

async fn buy(l: &Ledger, seq: u64, card: u64, fen: i64) -> Message {
    l.purchase(
        1,
        &Purchase {
            tx_seq: seq,
            card: CardNo(card),
            amount_fen: fen,
            terminal_time_ms: 0,
        },
    )
    .await
    .resolve()
    .await
}

fn balance(l: &Ledger, account: u64) -> i64 {
    to_fen(l.account(account).unwrap().balance).unwrap()
}

/// Everything the desk owns, printed in a stable order, to compare across restarts.
fn snapshot(l: &Ledger, persons: &[&str]) -> String {
    let mut out = String::new();
    for p in persons {
        let Some(person) = l.person(p) else {
            out.push_str(&format!("{p}: none\n"));
            continue;
        };
        out.push_str(&format!(
            "{person:?}\n{:?}\n{:?}\n",
            l.account(person.account),
            l.cards_of(person.account)
        ));
    }
    let ops: Vec<_> = l
        .operators()
        .into_iter()
        .map(|o| (o.id, o.name, o.role, o.enabled))
        .collect();
    out.push_str(&format!("{ops:?}\n"));
    out.push_str(&format!(
        "blacklist v{} n{} {:?}\n",
        l.blacklist_version(),
        l.blacklist().len(),
        l.blacklist().changes_since(0)
    ));
    let audit: Vec<AuditRecord> = l.audit_list(&AuditQuery {
        limit: 1000,
        ..Default::default()
    });
    out.push_str(&format!("{audit:?}\n{:?}\n", l.params()));
    out.push_str(&format!("{:?}\n", l.grant_mark("2025-06", 1)));
    out
}

/// A day at the desk; returns the person ids it used.
async fn a_day_at_the_desk(l: &Ledger) -> Vec<&'static str> {
    pos(l).await;
    let (p1, a1) = l.open_person(&By::actor(&desk()), person("S1")).await.unwrap();
    assert_eq!(a1.balance, from_fen(0));
    let (p2, _) = l.open_person(&By::actor(&desk()), person("S2")).await.unwrap();
    assert!(
        l.open_person(&By::actor(&desk()), person("S1")).await.is_err(),
        "person ids are unique"
    );
    l.issue_card_desk(&By::actor(&desk()), p1.account, CardNo(6_222_000_001), None, None)
        .await
        .unwrap();
    l.issue_card_desk(&By::actor(&desk()), p2.account, CardNo(6_222_000_002), None, None)
        .await
        .unwrap();
    l.top_up(&By::actor(&desk()), p1.account, 100_00).await.unwrap();
    l.top_up(&By::actor(&desk()), p2.account, 50_00).await.unwrap();
    assert!(matches!(buy(l, 1, 6_222_000_001, 10_00).await, Message::Approved(_)));
    assert_eq!(balance(l, p1.account), 90_00);

    // Lost: declined at once, with the reason; the version moves.
    let v0 = l.blacklist_version();
    let r = l
        .card_status(&By::actor(&desk()), CardNo(6_222_000_001), CardAction::Lost)
        .await
        .unwrap();
    assert_eq!(r.blacklist_version, v0 + 1);
    assert_eq!(l.blacklist().published(), v0 + 1, "published once durable");
    match buy(l, 2, 6_222_000_001, 1_00).await {
        Message::Declined(d) => assert_eq!(d.reason, DeclineReason::CardLost),
        other => panic!("{other:?}"),
    }
    assert!(
        l.card_status(&By::actor(&desk()), CardNo(6_222_000_001), CardAction::Lost)
            .await
            .is_err(),
        "lost twice"
    );
    // Unfreeze, then lost again and replaced: the balance carries over.
    l.card_status(&By::actor(&desk()), CardNo(6_222_000_001), CardAction::Unfreeze)
        .await
        .unwrap();
    assert!(matches!(buy(l, 3, 6_222_000_001, 1_00).await, Message::Approved(_)));
    l.card_status(&By::actor(&desk()), CardNo(6_222_000_001), CardAction::Lost)
        .await
        .unwrap();
    let r = l
        .replace_card(
            &By::actor(&desk()),
            CardNo(6_222_000_001),
            CardNo(6_222_000_011),
            Some(PayMethod::Balance),
        )
        .await
        .unwrap();
    let fee = to_fen(l.params().for_kind(AccountKind::Student).replacement_fee).unwrap();
    assert_eq!(r.change.money.as_ref().unwrap().amount_fen, fee);
    assert_eq!(balance(l, p1.account), 89_00 - fee);
    match buy(l, 4, 6_222_000_001, 1_00).await {
        Message::Declined(d) => assert_eq!(d.reason, DeclineReason::CardReplaced),
        other => panic!("{other:?}"),
    }
    match buy(l, 5, 6_222_000_011, 1_00).await {
        Message::Approved(a) => assert_eq!(a.balance_fen, 88_00 - fee),
        other => panic!("{other:?}"),
    }
    // Money: never below zero, reasons required.
    assert!(
        l.refund(&By::actor(&desk()), p2.account, 50_01, "leaving")
            .await
            .is_err()
    );
    assert!(l.refund(&By::actor(&desk()), p2.account, 10_00, " ").await.is_err());
    l.refund(&By::actor(&desk()), p2.account, 10_00, "cash back")
        .await
        .unwrap();
    assert!(l.adjust(&By::actor(&desk()), p2.account, -40_01, "fix").await.is_err());
    l.adjust(&By::actor(&desk()), p2.account, -5_00, "double top-up on 3 June")
        .await
        .unwrap();
    l.fee(&By::actor(&desk()), p2.account, FeeKind::TemporaryCard, PayMethod::Cash)
        .await
        .unwrap();
    assert_eq!(balance(l, p2.account), 35_00, "a cash fee leaves the balance");
    assert!(l.top_up(&By::actor(&desk()), p2.account, 0).await.is_err());
    assert!(l.top_up(&By::actor(&desk()), 999, 1).await.is_err());

    // Grants: once per batch and account.
    let items = [(p1.account, 20_00), (p2.account, 20_00)];
    let r = l.grant_batch(&By::actor(&desk()), "2025-06", &items).await.unwrap();
    assert_eq!((r.applied, r.already_done), (2, 0));
    let r = l.grant_batch(&By::actor(&desk()), "2025-06", &items).await.unwrap();
    assert_eq!((r.applied, r.already_done), (0, 2));
    assert!(
        l.grant_batch(&By::actor(&desk()), "2025-06", &[(p1.account, 30_00)])
            .await
            .is_err(),
        "a different amount under the same batch"
    );
    assert!(
        l.grant_batch(&By::actor(&desk()), "2025-07", &[(p1.account, 1_00), (999, 1_00)])
            .await
            .is_err(),
        "an unknown account refuses the whole batch"
    );
    assert_eq!(balance(l, p2.account), 55_00);
    assert!(
        l.grant_mark("2025-07", p1.account).is_none(),
        "nothing of a refused batch"
    );

    // Cancellation: refund recorded, account closed, cards refused.
    let before = balance(l, p2.account);
    let r = l.cancel_card(&By::actor(&desk()), CardNo(6_222_000_002)).await.unwrap();
    assert_eq!(r.change.money.as_ref().unwrap().amount_fen, before);
    assert_eq!(l.account(p2.account).unwrap().status, AccountStatus::Closed);
    assert_eq!(balance(l, p2.account), 0);
    assert_eq!(l.card(CardNo(6_222_000_002)).unwrap().status, CardStatus::Cancelled);
    assert!(l.top_up(&By::actor(&desk()), p2.account, 1_00).await.is_err(), "closed");

    // Batch cancellation: all or nothing on unknown ids; idempotent.
    let (p3, _) = l.open_person(&By::actor(&desk()), person("S3")).await.unwrap();
    l.issue_card_desk(&By::actor(&desk()), p3.account, CardNo(6_222_000_003), None, None)
        .await
        .unwrap();
    let err = l
        .cancel_batch(&By::actor(&desk()), "grad-2025", &["S3".into(), "NOBODY".into()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOBODY"));
    assert_eq!(l.account(p3.account).unwrap().status, AccountStatus::Active);
    let (r, _) = l
        .cancel_batch(&By::actor(&desk()), "grad-2025", &["S3".into(), "S2".into()])
        .await
        .unwrap();
    assert_eq!((r.applied, r.already_done), (1, 1));
    assert_eq!(l.card(CardNo(6_222_000_003)).unwrap().status, CardStatus::Cancelled);

    // Operators, parameters, audit.
    let (op, token) = l
        .add_operator(&By::actor(&Actor::cli()), "li", Role::DataAdmin)
        .await
        .unwrap();
    assert_eq!(l.authenticate(&token).unwrap().id, op.id);
    assert!(l.authenticate("cg_nope").is_none());
    l.disable_operator(&By::actor(&desk()), op.id).await.unwrap();
    assert!(l.authenticate(&token).is_none(), "disabled at once");
    let mut params = l.params();
    params.kinds[0].limits.single_payment_max = from_fen(5_00);
    l.change_params(&By::actor(&desk()), params).await.unwrap();
    match buy(l, 6, 6_222_000_011, 6_00).await {
        Message::Declined(d) => assert_eq!(d.reason, DeclineReason::OverSingleLimit),
        other => panic!("{other:?}"),
    }
    let mut bad = params;
    bad.kinds[1].limits.daily_max = from_fen(0);
    assert!(l.change_params(&By::actor(&desk()), bad).await.is_err());
    l.audit(AuditRecord {
        id: 0,
        time_ms: 0,
        actor: Some(desk()),
        action: "card.lost".into(),
        target: "card:6222000001".into(),
        status: 200,
        before: "{}".into(),
        after: "{}".into(),
        detail: String::new(),
    })
    .await
    .unwrap();
    let listed = l.audit_list(&AuditQuery {
        target: Some("card:*".into()),
        operator: Some("wang".into()),
        limit: 10,
        ..Default::default()
    });
    assert_eq!(listed.len(), 1);
    vec!["S1", "S2", "S3"]
}

#[tokio::test(flavor = "multi_thread")]
async fn desk_operations_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (l, c) = open(dir.path());
    let persons = a_day_at_the_desk(&l).await;
    let before = snapshot(&l, &persons);
    close(l, c).await;
    let (l, c) = open(dir.path());
    assert_eq!(snapshot(&l, &persons), before);
    assert_eq!(l.blacklist().published(), l.blacklist_version());
    close(l, c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn desk_operations_survive_a_crash_twice() {
    let dir = tempfile::tempdir().unwrap();
    let switch = FaultSwitch::default();
    let (l, c) = open_faulty(dir.path(), &switch);
    let persons = a_day_at_the_desk(&l).await;
    let before = snapshot(&l, &persons);
    // The journal fails: no final checkpoint, so the next start replays everything.
    switch.set(FaultSwitch::FAIL_APPLY);
    assert!(l.top_up(&By::actor(&desk()), 1, 1_00).await.is_err());
    close(l, c).await;
    let (l, c, stats) = reopen(|| Ledger::open(dir.path(), LedgerConfig::default(), Arc::new(SystemClock)));
    assert!(stats.replayed > 20, "replayed {}", stats.replayed);
    assert_eq!(snapshot(&l, &persons), before);
    close(l, c).await;
    let (l, c) = open(dir.path());
    assert_eq!(
        snapshot(&l, &persons),
        before,
        "and again after the replay's checkpoint"
    );
    close(l, c).await;
}

const CSV_OK: &str = "person_id,name,department,kind,card_no\n\
    2025001,Zhang San,CS,student,62220000100001\n\
    2025002,Li Si,CS,student,62220000100002\n\
    T001,Wang Wu,Physics,staff,62220000100003\n";

#[tokio::test(flavor = "multi_thread")]
async fn import_is_all_or_nothing_idempotent_and_reports_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (l, c) = open(dir.path());
    let admin = Actor {
        operator_id: 2,
        name: "li".into(),
        role: Role::DataAdmin,
    };
    // Bad rows: every one reported by line, nothing applied.
    let bad = "person_id,name,department,kind,card_no\n\
        2025001,Zhang San,CS,student,62220000100001\n\
        2025002,,CS,student,62220000100002\n\
        2025003,Li,CS,alien,62220000100003\n\
        2025004,Li,CS,student,0123\n\
        2025001,Again,CS,student,62220000100005\n\
        2025006,Dup card,CS,student,62220000100001\n";
    let r = l.import_csv(&By::actor(&admin), bad.as_bytes(), false).await.unwrap();
    assert!(!r.applied);
    let lines: Vec<u64> = r.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![3, 4, 5, 6, 7], "{:?}", r.errors);
    assert!(r.errors[1].message.contains("alien"), "{:?}", r.errors);
    assert!(l.person("2025001").is_none() && l.card(CardNo(62_220_000_100_001)).is_none());
    let r = l
        .import_csv(&By::actor(&admin), b"person_id,name\n1,x\n", false)
        .await
        .unwrap();
    assert!(!r.applied && r.errors[0].line == 1);

    // A good file; then the same file again changes nothing.
    let r = l
        .import_csv(&By::actor(&admin), CSV_OK.as_bytes(), false)
        .await
        .unwrap();
    assert!(r.applied);
    assert_eq!((r.added, r.updated, r.unchanged), (3, 0, 0));
    let p = l.person("T001").unwrap();
    assert_eq!(l.account(p.account).unwrap().kind, AccountKind::Staff);
    assert_eq!(l.card(CardNo(62_220_000_100_003)).unwrap().account, p.account);
    let entries = l.journal().stats.entries.load(std::sync::atomic::Ordering::Relaxed);
    let r = l
        .import_csv(&By::actor(&admin), CSV_OK.as_bytes(), false)
        .await
        .unwrap();
    assert_eq!((r.added, r.updated, r.unchanged), (0, 0, 3));
    assert_eq!(
        l.journal().stats.entries.load(std::sync::atomic::Ordering::Relaxed),
        entries,
        "a re-import writes nothing"
    );
    // A changed file: one renamed, one turned staff, one new; a card of another person.
    let changed = "person_id,name,department,kind,card_no\n\
        2025001,Zhang San,Maths,student,62220000100001\n\
        2025002,Li Si,CS,staff,62220000100002\n\
        T001,Wang Wu,Physics,staff,62220000100003\n\
        2025009,New One,CS,temporary,62220000100009\n";
    let r = l
        .import_csv(&By::actor(&admin), changed.as_bytes(), true)
        .await
        .unwrap();
    assert!(!r.applied, "dry run");
    assert_eq!((r.added, r.updated, r.kind_changed, r.unchanged), (1, 2, 1, 1));
    assert!(l.person("2025009").is_none());
    let r = l
        .import_csv(&By::actor(&admin), changed.as_bytes(), false)
        .await
        .unwrap();
    assert!(r.applied);
    assert_eq!(l.person("2025001").unwrap().department, "Maths");
    let p2 = l.person("2025002").unwrap();
    assert_eq!(l.account(p2.account).unwrap().kind, AccountKind::Staff);
    let stolen = "person_id,name,department,kind,card_no\n2025010,X,CS,student,62220000100001\n";
    let r = l
        .import_csv(&By::actor(&admin), stolen.as_bytes(), false)
        .await
        .unwrap();
    assert!(!r.applied && r.errors[0].message.contains("belongs to account"));
    let persons = ["2025001", "2025002", "T001", "2025009", "2025010"];
    let before = snapshot(&l, &persons);
    close(l, c).await;
    let (l, c) = open(dir.path());
    assert_eq!(snapshot(&l, &persons), before);
    close(l, c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_committed_import_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let switch = FaultSwitch::default();
    {
        let (l, c) = open_faulty(dir.path(), &switch);
        let rows: String = (0..2000)
            .map(|i| format!("P{i},Name {i},Dept,student,{}\n", 70_000_000_000u64 + i))
            .collect();
        let csv = format!("person_id,name,department,kind,card_no\n{rows}");
        let r = l
            .import_csv(&By::actor(&Actor::cli()), csv.as_bytes(), false)
            .await
            .unwrap();
        assert_eq!(r.added, 2000);
        switch.set(FaultSwitch::FAIL_APPLY);
        assert!(l.top_up(&By::actor(&desk()), 1, 1).await.is_err());
        close(l, c).await;
    }
    let (l, c) = open(dir.path());
    assert_eq!(l.persons_count(), 2000, "replayed from the chunks and the commit");
    assert!(l.card(CardNo(70_000_001_999)).is_some());
    // No staging keys remain after start-up.
    assert_eq!(l.db().tree.scan_prefix([b'Z']).count(), 0);
    close(l, c).await;
}

/// Staged chunks with no commit entry are never applied; a commit entry whose chunks
/// lie before the checkpoint finds them under their staging keys.
#[tokio::test(flavor = "multi_thread")]
async fn replay_applies_an_import_only_at_its_commit() {
    use cardgate_domain::entry::{EntryBody, EntryRecord, ImportChunk, ImportCommitted, ImportItem};
    use cardgate_domain::model::{Account, Card, Person};
    use cardgate_journal::record::encode_record;
    use cardgate_ledger::import::staged_key;
    use cardgate_ledger::records::{StateWrite, Submission, Writes};

    /// Writes entries straight into the journal, as a crash would have left them.
    async fn write(l: &Ledger, body: Option<EntryBody>, records: Writes) {
        let (done, wait) = tokio::sync::oneshot::channel();
        l.journal().reserve().await.unwrap().send(Submission {
            entries: body.map(|body| EntryRecord { time_ms: 0, body }).into_iter().collect(),
            records,
            mark: 0,
            force_sync: false,
            done: Some(done),
        });
        wait.await.unwrap().unwrap();
    }

    let item = |n: u64| {
        let person = Person {
            account: 100 + n,
            id: format!("X{n}"),
            name: "x".into(),
            department: String::new(),
            created_ms: 0,
        };
        ImportItem::Add {
            person,
            account: Account {
                id: 100 + n,
                kind: AccountKind::Student,
                status: AccountStatus::Active,
                balance: from_fen(0),
                limits: None,
                day: 0,
                spent_today: from_fen(0),
            },
            card: Card {
                no: CardNo(80_000_000_000 + n),
                account: 100 + n,
                status: CardStatus::Active,
                expires_ms: None,
                issued_ms: 0,
            },
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let switch = FaultSwitch::default();
    {
        let (l, c) = open_faulty(dir.path(), &switch);
        // Import 1: a chunk, no commit (a crash cut it short).
        let chunk = ImportChunk {
            import_id: 1,
            index: 0,
            items: vec![item(1)],
        };
        let mut w = Writes::new();
        w.push(StateWrite::Staged(
            staged_key(1, 0).to_vec(),
            Some(encode_record(&chunk.items)),
        ));
        write(&l, Some(EntryBody::ImportChunk(Box::new(chunk))), w).await;
        // Import 2: its chunk only under the staging key (as if before the checkpoint).
        let mut w = Writes::new();
        w.push(StateWrite::Staged(
            staged_key(2, 0).to_vec(),
            Some(encode_record(&vec![item(2)])),
        ));
        write(&l, None, w).await;
        let commit = ImportCommitted {
            actor: Actor::cli(),
            import_id: 2,
            chunks: 1,
            rows: 1,
            added: 1,
            updated: 0,
            kind_changed: 0,
            unchanged: 0,
        };
        write(&l, Some(EntryBody::ImportCommitted(Box::new(commit))), Writes::new()).await;
        switch.set(FaultSwitch::FAIL_APPLY);
        assert!(l.top_up(&By::actor(&desk()), 1, 1).await.is_err());
        close(l, c).await;
    }
    let (l, c) = open(dir.path());
    assert!(l.person("X1").is_none() && l.card(CardNo(80_000_000_001)).is_none());
    assert!(l.person("X2").is_some() && l.card(CardNo(80_000_000_002)).is_some());
    assert_eq!(l.db().tree.scan_prefix([b'Z']).count(), 0);
    close(l, c).await;
    let (l, c) = open(dir.path());
    assert!(l.person("X2").is_some(), "checkpointed by the replay");
    close(l, c).await;
}
