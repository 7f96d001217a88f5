//! The central store and its flusher against real databases: SQLite always, PostgreSQL
//! when `CARDGATE_TEST_PG` names one (each test in a schema of its own, dropped at the
//! end, so tests run in parallel and can be re-run).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use cardgate_codec::Message;
use cardgate_ledger::central::{Batch, CentralError, CentralStore, Flusher, FlusherConfig, FlusherHandle};
use cardgate_ledger::store::meta;
use common::*;

/// A central store for one test, and how to clean it up.
struct Target {
    name: &'static str,
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

impl Target {
    fn store(&self) -> CentralStore {
        CentralStore::open(&self.url).expect("test URL parses")
    }

    async fn cleanup(self) {
        if let Some((admin_url, schema)) = &self.pg_schema {
            drop_schema(admin_url, schema).await;
        }
    }
}

async fn drop_schema(admin_url: &str, schema: &str) {
    let pool = sqlx::PgPool::connect(admin_url)
        .await
        .expect("connect to CARDGATE_TEST_PG");
    let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .expect("drop test schema");
    pool.close().await;
}

/// SQLite in a temp dir, and PostgreSQL in a fresh schema when `CARDGATE_TEST_PG` is set.
async fn targets(test: &str) -> Vec<Target> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = vec![Target {
        name: "sqlite",
        url: format!("sqlite://{}", dir.path().join("central.db").display()),
        _dir: Some(dir),
        pg_schema: None,
    }];
    match std::env::var("CARDGATE_TEST_PG") {
        Ok(admin_url) if !admin_url.is_empty() => {
            // Unique per test and per run: only lowercase letters, digits and '_'.
            let schema = format!("cg_{}_{}_{:x}", test, std::process::id(), rand::random::<u32>());
            let pool = sqlx::PgPool::connect(&admin_url)
                .await
                .expect("connect to CARDGATE_TEST_PG");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&pool)
                .await
                .expect("create test schema");
            pool.close().await;
            let sep = if admin_url.contains('?') { '&' } else { '?' };
            out.push(Target {
                name: "postgres",
                url: format!("{admin_url}{sep}options=-c%20search_path%3D{schema}"),
                _dir: None,
                pg_schema: Some((admin_url, schema)),
            });
        }
        _ => eprintln!("{test}: CARDGATE_TEST_PG is not set; PostgreSQL part skipped (SQLite only)"),
    }
    out
}

fn quick() -> FlusherConfig {
    FlusherConfig {
        batch_entries_max: 7,
        batch_wait: Duration::ZERO,
        retry_backoff_max: Duration::from_millis(200),
        prune_interval: Duration::from_millis(20),
        ..FlusherConfig::default()
    }
}

/// Polls `cond` until it holds; fails the test after a generous deadline (this waits for
/// work to happen, it does not measure how fast).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn durable(f: &Fixture) -> u64 {
    f.ledger.journal().stats.durable_entry_id.load(Ordering::Acquire)
}

async fn caught_up(f: &Fixture, h: &FlusherHandle) {
    until("the flusher to catch up", || {
        h.status.confirmed.load(Ordering::Acquire) && h.backlog() == 0
    })
    .await;
    assert_eq!(h.status.cursor.load(Ordering::Acquire), durable(f));
}

/// Purchases (some declined), and one reversal; returns the tx ids approved.
async fn business(f: &Fixture, first_seq: u64) -> Vec<u64> {
    let mut approved = Vec::new();
    for i in 0..20u64 {
        let account = 1 + i % 5;
        // Every seventh asks for more than the balance and is declined.
        let amount = if i % 7 == 6 { 1_000_00 } else { 1_00 + i as i64 };
        if let Message::Approved(a) = f.buy(POS, first_seq + i, 100 + account, amount).await {
            approved.push(a.tx_id);
        }
    }
    let Message::Approved(r) = f.reverse(POS, first_seq + 20, first_seq, 101, 1_00).await else {
        panic!("the reversal of the first purchase is approved")
    };
    approved.push(r.tx_id);
    approved
}

/// The central store agrees with the ledger: every entry once, every approved
/// transaction once, and every account's balance and transaction sum.
async fn assert_mirrors(f: &Fixture, store: &CentralStore, approved: &[u64]) {
    let gw = f.ledger.gateway_id();
    let ids = store.entry_ids(gw).await.unwrap();
    let expected: Vec<u64> = (1..=durable(f)).collect();
    assert_eq!(ids, expected, "every entry exactly once, none missing");
    let txs = store.transactions(gw).await.unwrap();
    let mut got: Vec<u64> = txs.iter().map(|t| t.tx_id).collect();
    let mut want = approved.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "exactly the approved transactions");
    for t in store.account_totals(gw).await.unwrap() {
        let balance = f.balance_fen(t.account);
        assert_eq!(t.balance_fen, balance, "account {} balance", t.account);
        assert_eq!(
            t.opening_balance_fen + t.transactions_fen,
            balance,
            "account {}: opening + transactions = balance",
            t.account
        );
    }
}

#[tokio::test]
async fn the_flusher_ships_every_entry_once_and_the_sums_match_the_ledger() {
    for target in targets("ships").await {
        let f = Fixture::new().await;
        let approved = business(&f, 1).await;
        let h = Flusher::start(f.ledger.clone(), target.store(), quick()).unwrap();
        caught_up(&f, &h).await;
        assert!(
            h.status.batches.load(Ordering::Relaxed) > 1,
            "{}: batches of 7",
            target.name
        );
        let reader = target.store();
        assert_mirrors(&f, &reader, &approved).await;

        // The cursor reached sled through the journal.
        let left = h.shutdown(Duration::from_secs(10)).await;
        assert_eq!(left, 0);
        let saved = f.ledger.db().get_meta_u64(meta::CENTRAL_CURSOR).unwrap();
        assert_eq!(saved, Some(durable(&f)), "{}", target.name);

        // After a restart the flusher carries on from the central store's cursor.
        let f = f.restart();
        let mut approved = approved;
        approved.extend(business(&f, 100).await);
        let h = Flusher::start(f.ledger.clone(), target.store(), quick()).unwrap();
        caught_up(&f, &h).await;
        assert_mirrors(&f, &reader, &approved).await;
        h.shutdown(Duration::from_secs(10)).await;
        reader.close().await;
        target.cleanup().await;
    }
}

#[tokio::test]
async fn a_batch_shipped_twice_inserts_nothing_twice_and_a_gap_is_refused() {
    for target in targets("twice").await {
        let f = Fixture::new().await;
        let approved = business(&f, 1).await;
        let gw = f.ledger.gateway_id();
        let entries = f.ledger.db().read_entries(0, usize::MAX).unwrap();
        let n = entries.len() as u64;
        assert_eq!(n, durable(&f));
        let store = target.store();
        store.migrate().await.unwrap();
        let all = Batch::build(gw, &entries).unwrap();
        assert_eq!(store.write(&all, 1).await.unwrap(), n);
        // The same batch again, as after a lost acknowledgement.
        assert_eq!(store.write(&all, 2).await.unwrap(), n, "{}", target.name);
        // A batch overlapping what is there, as after a crash before the cursor moved.
        let half = Batch::build(gw, &entries[(n / 2) as usize..]).unwrap();
        assert_eq!(store.write(&half, 3).await.unwrap(), n);
        assert_mirrors(&f, &store, &approved).await;

        // A fresh gateway id in the same store: a batch that starts after a gap is
        // refused and writes nothing.
        let other = gw ^ 1;
        let tail = Batch::build(other, &entries[5..]).unwrap();
        match store.write(&tail, 4).await {
            Err(CentralError::Gap { central: 0, first: 6 }) => {}
            r => panic!("{}: expected a gap, got {r:?}", target.name),
        }
        assert_eq!(store.entry_ids(other).await.unwrap(), Vec::<u64>::new());
        assert_eq!(store.cursor(other).await.unwrap(), 0);
        // Migrating again finds the current version and changes nothing.
        assert_eq!(store.migrate().await.unwrap(), cardgate_ledger::central::SCHEMA_VERSION);
        store.close().await;
        target.cleanup().await;
    }
}

/// One batch that touches more accounts than one SQLite statement can bind: the
/// statements are cut so that every one stays under SQLite's parameter limit, trailing
/// parameters included (a 10,000-terminal load once made the balance update one over).
#[tokio::test]
async fn a_batch_touching_thousands_of_accounts_fits_sqlites_parameter_limit() {
    const N: u64 = 6_000;
    for target in targets("wide").await {
        let f = Fixture::new().await;
        let accounts: Vec<_> = (1_000..1_000 + N).map(|id| account(id, 100_00)).collect();
        let cards: Vec<_> = (1_000..1_000 + N).map(|id| card(1_000_000 + id, id)).collect();
        f.ledger.bulk_create(vec![], &accounts, &cards).await.unwrap();
        let mut pending = Vec::with_capacity(N as usize);
        for (i, id) in (1_000..1_000 + N).enumerate() {
            let p = cardgate_codec::Purchase {
                tx_seq: 1 + i as u64,
                card: cardgate_codec::CardNo(1_000_000 + id),
                amount_fen: 1_00,
                terminal_time_ms: 0,
            };
            pending.push(f.ledger.purchase(POS, &p).await);
        }
        let mut approved = Vec::with_capacity(N as usize);
        for p in pending {
            match p.resolve().await {
                Message::Approved(a) => approved.push(a.tx_id),
                m => panic!("purchase answered {m:?}"),
            }
        }
        // The accounts are created in one batch and debited in the next, so that the
        // second updates thousands of balances rather than inserting accounts.
        let entries = f.ledger.db().read_entries(0, usize::MAX).unwrap();
        let split = entries.len() - N as usize;
        let gw = f.ledger.gateway_id();
        let store = target.store();
        store.migrate().await.unwrap();
        let created = Batch::build(gw, &entries[..split]).unwrap();
        assert_eq!(store.write(&created, 1).await.unwrap(), split as u64);
        let debits = Batch::build(gw, &entries[split..]).unwrap();
        let written = store.write(&debits, 2).await;
        assert_eq!(written.unwrap(), durable(&f), "{}", target.name);
        assert_mirrors(&f, &store, &approved).await;
        store.close().await;
        target.cleanup().await;
    }
}

#[tokio::test]
async fn a_locked_sqlite_store_delays_shipping_but_loses_and_doubles_nothing() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("central.db");
    let url = format!("sqlite://{}", path.display());
    let f = Fixture::new().await;
    let mut approved = business(&f, 1).await;
    let h = Flusher::start(f.ledger.clone(), CentralStore::open(&url).unwrap(), quick()).unwrap();
    caught_up(&f, &h).await;

    // Another process takes the write lock and keeps it.
    let mut locker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE; INSERT INTO schema_version VALUES (999, 0);")
        .execute(&mut locker)
        .await
        .unwrap();
    let errors_before = h.status.errors.load(Ordering::Relaxed);
    let cursor_before = h.status.cursor.load(Ordering::Acquire);
    approved.extend(business(&f, 100).await);
    until("a failed attempt", || {
        h.status.errors.load(Ordering::Relaxed) > errors_before
    })
    .await;
    assert_eq!(
        h.status.cursor.load(Ordering::Acquire),
        cursor_before,
        "nothing shipped"
    );
    assert!(h.backlog() > 0);
    assert!(!h.status.up.load(Ordering::Acquire));
    // Terminals are served meanwhile.
    approved.extend(business(&f, 200).await);

    sqlx::raw_sql("ROLLBACK").execute(&mut locker).await.unwrap();
    locker.close().await.unwrap();
    caught_up(&f, &h).await;
    assert!(h.status.up.load(Ordering::Acquire));
    let reader = CentralStore::open(&url).unwrap();
    assert_mirrors(&f, &reader, &approved).await;
    h.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn pruning_waits_for_the_central_store_the_checkpoint_and_the_retention() {
    let f = Fixture::new().await;
    let approved = business(&f, 1).await;
    // A clean restart writes a checkpoint covering every entry.
    let f = f.restart();
    let last = durable(&f);
    assert_eq!(
        f.ledger.journal().stats.durable_checkpoint_id.load(Ordering::Acquire),
        last
    );
    let config = FlusherConfig {
        journal_retention: Duration::from_secs(3600),
        ..quick()
    };

    // The central store cannot be reached (its directory does not exist): nothing is
    // pruned, however old.
    let nowhere = f.path().join("missing").join("central.db");
    let down = Flusher::start(
        f.ledger.clone(),
        CentralStore::open(&format!("sqlite://{}", nowhere.display())).unwrap(),
        config.clone(),
    )
    .unwrap();
    f.clock.advance(2 * 3_600_000);
    until("failed attempts", || down.status.errors.load(Ordering::Relaxed) >= 3).await;
    assert_eq!(down.shutdown(Duration::from_secs(5)).await, last);
    assert_eq!(f.ledger.db().read_entries(0, usize::MAX).unwrap().len() as u64, last);

    // Reachable: everything ships; entries younger than the retention stay.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("central.db").display());
    f.clock.set(LUNCH_MS);
    let h = Flusher::start(f.ledger.clone(), CentralStore::open(&url).unwrap(), config.clone()).unwrap();
    caught_up(&f, &h).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        h.status.pruned_entries.load(Ordering::Relaxed),
        0,
        "younger than the retention"
    );
    // New entries are past the checkpoint: when the old ones age out, only they go.
    let mut approved = approved;
    f.clock.advance(2 * 3_600_000);
    approved.extend(business(&f, 100).await);
    until("pruning", || h.status.pruned_entries.load(Ordering::Relaxed) > 0).await;
    let pruned = h.status.pruned_entries.load(Ordering::Relaxed);
    assert!(pruned <= last, "never past the checkpoint");
    let left = f.ledger.db().read_entries(0, usize::MAX).unwrap();
    assert_eq!(
        left.first().map(|e| e.id),
        Some(pruned + 1),
        "a contiguous tail is left"
    );
    assert_eq!(left.last().map(|e| e.id), Some(durable(&f)));
    caught_up(&f, &h).await;
    h.shutdown(Duration::from_secs(10)).await;

    // Recovery after pruning: same balances, ids carry on, the central store agrees.
    let balances: Vec<i64> = (1..=5).map(|a| f.balance_fen(a)).collect();
    let f = f.restart();
    assert_eq!((1..=5).map(|a| f.balance_fen(a)).collect::<Vec<_>>(), balances);
    approved.extend(business(&f, 200).await);
    let h = Flusher::start(f.ledger.clone(), CentralStore::open(&url).unwrap(), quick()).unwrap();
    caught_up(&f, &h).await;
    let reader = CentralStore::open(&url).unwrap();
    assert_mirrors(&f, &reader, &approved).await;
    h.shutdown(Duration::from_secs(10)).await;
}

/// Card desk operations reach the central store as master data, transactions and events:
/// persons opened at the desk and by a CSV import (whose chunks the flusher reads back
/// from the journal at the commit), top-ups, fees, a replacement, a cancellation with its
/// refund; and no operator token hash leaves the gateway.
#[tokio::test]
async fn card_desk_operations_reach_the_central_store() {
    use cardgate_codec::CardNo;
    use cardgate_ledger::desk::{FeeKind, NewPerson, PayMethod};
    use cardgate_ledger::model::AccountKind;
    use cardgate_ledger::operators::{Actor, Role};

    for target in targets("desk").await {
        let f = Fixture::new().await;
        let me = Actor::cli();
        let (_, token) = f.ledger.add_operator(&me, "desk1", Role::CardDesk).await.unwrap();
        let (person, account) = f
            .ledger
            .open_person(
                &me,
                NewPerson {
                    id: "2026000001".into(),
                    name: "张三".into(),
                    department: "计算机学院".into(),
                    kind: AccountKind::Student,
                },
            )
            .await
            .unwrap();
        let old = CardNo(6_222_000_000_000_001);
        let new = CardNo(6_222_000_000_000_002);
        f.ledger
            .issue_card_desk(&me, account.id, old, None, None)
            .await
            .unwrap();
        f.ledger.top_up(&me, account.id, 300_00).await.unwrap();
        f.ledger
            .fee(&me, account.id, FeeKind::TemporaryCard, PayMethod::Cash)
            .await
            .unwrap();
        f.ledger
            .replace_card(&me, old, new, Some(PayMethod::Balance))
            .await
            .unwrap();
        let csv = "person_id,name,department,kind,card_no\n\
                   2026000002,李四,数学学院,staff,6222000000000003\n\
                   2026000003,王五,数学学院,student,6222000000000004\n";
        let report = f.ledger.import_csv(&me, csv.as_bytes(), false).await.unwrap();
        assert_eq!(report.added, 2);
        f.ledger.cancel_card(&me, new).await.unwrap();
        assert_eq!(f.balance_fen(account.id), 0, "cancellation paid the balance out");

        let h = Flusher::start(f.ledger.clone(), target.store(), quick()).unwrap();
        caught_up(&f, &h).await;
        let store = target.store();
        let gw = f.ledger.gateway_id();
        let totals = store.account_totals(gw).await.unwrap();
        for t in &totals {
            assert_eq!(
                t.balance_fen,
                f.balance_fen(t.account),
                "{}: account {}",
                target.name,
                t.account
            );
            assert_eq!(t.opening_balance_fen + t.transactions_fen, t.balance_fen);
        }
        let imported: Vec<u64> = ["2026000002", "2026000003"]
            .iter()
            .map(|id| f.ledger.person(id).expect("imported").account)
            .collect();
        for a in imported.iter().chain([&person.account]) {
            assert!(
                totals.iter().any(|t| t.account == *a),
                "{}: account {a} is central master data",
                target.name
            );
        }
        let kinds: Vec<String> = store
            .transactions(gw)
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.account == account.id)
            .map(|t| t.kind)
            .collect();
        assert_eq!(
            kinds,
            ["topup", "fee_temporary_card", "fee_replacement", "cancel_refund"],
            "{}",
            target.name
        );
        assert!(
            !store
                .event_payloads(gw)
                .await
                .unwrap()
                .iter()
                .any(|p| p.contains(&token) || p.contains("token_hash")),
            "{}: no operator token reaches the central store",
            target.name
        );
        h.shutdown(Duration::from_secs(10)).await;
        store.close().await;
        target.cleanup().await;
    }
}
