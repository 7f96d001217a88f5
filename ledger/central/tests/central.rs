//! The central store and its flusher against real databases: SQLite always, PostgreSQL
//! when `CARDGATE_TEST_PG` names one (each test in a schema of its own, dropped at the
//! end, so tests run in parallel and can be re-run). The journal they ship is written by
//! hand (`common`): no ledger runs here.

// Amounts in fen are written yuan_fen (`12_50` is 12.50 yuan).
#![allow(clippy::inconsistent_digit_grouping)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use cardgate_central::flusher::META_CENTRAL_CURSOR;
use cardgate_central::{Batch, CentralError, CentralStore, Flusher, FlusherConfig, FlusherHandle};
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
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let schema = format!("cg_{}_{}_{:x}", test, std::process::id(), nanos);
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

async fn caught_up(f: &Fixture, h: &FlusherHandle) {
    until("the flusher to catch up", || {
        h.status.confirmed.load(Ordering::Acquire) && h.backlog() == 0
    })
    .await;
    assert_eq!(h.status.cursor.load(Ordering::Acquire), f.durable());
}

/// The central store agrees with the journal: every entry once, every approved
/// transaction once, and every account's balance and transaction sum.
async fn assert_mirrors(f: &Fixture, store: &CentralStore, approved: &[u64]) {
    let gw = f.gateway_id;
    let ids = store.entry_ids(gw).await.unwrap();
    let expected: Vec<u64> = (1..=f.durable()).collect();
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
        let mut f = Fixture::new().await;
        let approved = f.business().await;
        let h = Flusher::start(f.source(), target.store(), quick()).unwrap();
        caught_up(&f, &h).await;
        assert!(
            h.status.batches.load(Ordering::Relaxed) > 1,
            "{}: batches of 7",
            target.name
        );
        let reader = target.store();
        assert_mirrors(&f, &reader, &approved).await;

        // The cursor reached sled, where it bounds pruning.
        let left = h.shutdown(Duration::from_secs(10)).await;
        assert_eq!(left, 0);
        let saved = f.db.get_meta_u64(META_CENTRAL_CURSOR).unwrap();
        assert_eq!(saved, Some(f.durable()), "{}", target.name);

        // After a restart the flusher carries on from the central store's cursor.
        let mut f = f.restart();
        let mut approved = approved;
        approved.extend(f.business().await);
        let h = Flusher::start(f.source(), target.store(), quick()).unwrap();
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
        let mut f = Fixture::new().await;
        let approved = f.business().await;
        let gw = f.gateway_id;
        let entries = f.entries();
        let n = entries.len() as u64;
        assert_eq!(n, f.durable());
        let store = target.store();
        store.migrate().await.unwrap();
        // The first half, then everything: the second batch overlaps what the store holds
        // (as after a crash between the store's commit and sled hearing of it), and only
        // the rows of the entries after the store's cursor are written.
        let first_half = Batch::build(gw, &entries[..(n / 2) as usize]).unwrap();
        assert_eq!(store.write(&first_half, 1).await.unwrap(), n / 2);
        let all = Batch::build(gw, &entries).unwrap();
        assert_eq!(store.write(&all, 1).await.unwrap(), n, "{}", target.name);
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
        assert_eq!(store.migrate().await.unwrap(), cardgate_central::SCHEMA_VERSION);
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
        let mut f = Fixture::new().await;
        for id in 1_000..1_000 + N {
            f.open_account(id, 100_00).await;
        }
        let mut approved = Vec::with_capacity(N as usize);
        for id in 1_000..1_000 + N {
            approved.push(f.buy(id, 1_00).await.expect("covered"));
        }
        // The accounts are created in one batch and debited in the next, so that the
        // second updates thousands of balances rather than inserting accounts.
        let entries = f.entries();
        let split = entries.len() - N as usize;
        let gw = f.gateway_id;
        let store = target.store();
        store.migrate().await.unwrap();
        let created = Batch::build(gw, &entries[..split]).unwrap();
        assert_eq!(store.write(&created, 1).await.unwrap(), split as u64);
        let debits = Batch::build(gw, &entries[split..]).unwrap();
        let written = store.write(&debits, 2).await;
        assert_eq!(written.unwrap(), f.durable(), "{}", target.name);
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
    let mut f = Fixture::new().await;
    let mut approved = f.business().await;
    let h = Flusher::start(f.source(), CentralStore::open(&url).unwrap(), quick()).unwrap();
    caught_up(&f, &h).await;

    // Another process takes the write lock and keeps it.
    let mut locker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE; INSERT INTO schema_version VALUES (999, 0);")
        .execute(&mut locker)
        .await
        .unwrap();
    let errors_before = h.status.errors.load(Ordering::Relaxed);
    let cursor_before = h.status.cursor.load(Ordering::Acquire);
    approved.extend(f.business().await);
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
    // The journal keeps growing meanwhile.
    approved.extend(f.business().await);

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
    let mut f = Fixture::new().await;
    let approved = f.business().await;
    // A clean restart writes a checkpoint covering every entry.
    let mut f = f.restart();
    let last = f.durable();
    assert_eq!(f.checkpoint(), last);
    let config = FlusherConfig {
        journal_retention: Duration::from_secs(3600),
        ..quick()
    };

    // The central store cannot be reached (its directory does not exist): nothing is
    // pruned, however old.
    let nowhere = f.path().join("missing").join("central.db");
    let down = Flusher::start(
        f.source(),
        CentralStore::open(&format!("sqlite://{}", nowhere.display())).unwrap(),
        config.clone(),
    )
    .unwrap();
    f.clock.advance(2 * 3_600_000);
    until("failed attempts", || down.status.errors.load(Ordering::Relaxed) >= 3).await;
    assert_eq!(down.shutdown(Duration::from_secs(5)).await, last);
    assert_eq!(f.entries().len() as u64, last);

    // Reachable: everything ships; entries younger than the retention stay.
    let (_dir, url) = temp_sqlite();
    f.clock.set(LUNCH_MS);
    let h = Flusher::start(f.source(), CentralStore::open(&url).unwrap(), config.clone()).unwrap();
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
    approved.extend(f.business().await);
    until("pruning", || h.status.pruned_entries.load(Ordering::Relaxed) > 0).await;
    let pruned = h.status.pruned_entries.load(Ordering::Relaxed);
    assert!(pruned <= last, "never past the checkpoint");
    let left = f.entries();
    assert_eq!(
        left.first().map(|e| e.id),
        Some(pruned + 1),
        "a contiguous tail is left"
    );
    assert_eq!(left.last().map(|e| e.id), Some(f.durable()));
    caught_up(&f, &h).await;
    h.shutdown(Duration::from_secs(10)).await;

    // After a restart the entry ids carry on past the pruned ones, and the central
    // store agrees with everything.
    let mut f = f.restart();
    let before = f.durable();
    approved.extend(f.business().await);
    assert_eq!(f.entries().first().map(|e| e.id), Some(pruned + 1));
    assert!(f.durable() > before);
    let h = Flusher::start(f.source(), CentralStore::open(&url).unwrap(), quick()).unwrap();
    caught_up(&f, &h).await;
    let reader = CentralStore::open(&url).unwrap();
    assert_mirrors(&f, &reader, &approved).await;
    h.shutdown(Duration::from_secs(10)).await;
}

/// Card desk entries reach the central store as master data, transactions and events:
/// a person opened at the desk and two by a CSV import (whose chunks the flusher reads
/// back from the journal at the commit), a top-up, fees, a replacement, a cancellation
/// with its refund; and no operator token hash leaves the gateway.
#[tokio::test]
async fn card_desk_entries_reach_the_central_store() {
    use cardgate_codec::CardNo;
    use cardgate_domain::entry::{
        AccountLeft, CardAction, CardChange, EntryBody, FeeKind, ImportChunk, ImportCommitted, ImportItem, MoneyEntry,
        MoneyKind, MoneyMove, OperatorEntry, PasswordEntry, PayMethod, PersonOpened,
    };
    use cardgate_domain::model::{AccountStatus, BlacklistChange, Card, CardStatus, Person};
    use cardgate_domain::operator::{Actor, Operator, PasswordRecord, Role};

    let actor = Actor::cli();
    let person = |account: u64, id: &str| Person {
        account,
        id: id.into(),
        name: "张三".into(),
        department: "计算机学院".into(),
        created_ms: LUNCH_MS,
    };
    let card = |no: u64, account: u64, status: CardStatus| Card {
        no: CardNo(no),
        account,
        status,
        expires_ms: None,
        issued_ms: LUNCH_MS,
    };
    let money = |f: &mut Fixture, kind: MoneyKind, amount_fen: i64, delta_fen: i64, method: PayMethod| {
        let after = f.balance_fen(21) + delta_fen;
        f.set_balance(21, after);
        MoneyMove {
            kind,
            tx_id: f.new_tx_id(),
            account: 21,
            amount_fen,
            balance_delta_fen: delta_fen,
            balance_after_fen: after,
            method,
            reason: kind.as_str().into(),
        }
    };
    let change = |action, cards, account, money, blacklist| {
        EntryBody::CardChanged(Box::new(CardChange {
            actor: Actor::cli(),
            action,
            cards,
            account,
            money,
            blacklist,
            batch_id: None,
        }))
    };
    let (old, new) = (6_222_000_000_000_001, 6_222_000_000_000_002);

    for target in targets("desk").await {
        let mut f = Fixture::new().await;
        f.append(EntryBody::OperatorSet(Box::new(OperatorEntry {
            actor: actor.clone(),
            operator: Operator {
                id: 1,
                name: "desk1".into(),
                role: Role::CardDesk,
                token_hash: [0xAB; 32],
                enabled: true,
                created_ms: LUNCH_MS,
            },
        })))
        .await;
        f.append(EntryBody::PasswordSet(Box::new(PasswordEntry {
            actor: actor.clone(),
            password: PasswordRecord {
                operator_id: 1,
                phc: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$SECRETHASHSECRETHASH".into(),
                must_change: true,
                set_ms: LUNCH_MS,
            },
        })))
        .await;
        f.append(EntryBody::PersonOpened(Box::new(PersonOpened {
            actor: actor.clone(),
            person: person(21, "2026000001"),
            account: account(21, 0),
        })))
        .await;
        f.set_balance(21, 0);
        f.append(change(
            CardAction::Issue,
            vec![card(old, 21, CardStatus::Active)],
            None,
            None,
            vec![],
        ))
        .await;
        let topup = money(&mut f, MoneyKind::TopUp, 300_00, 300_00, PayMethod::Cash);
        let fee = money(
            &mut f,
            MoneyKind::Fee(FeeKind::TemporaryCard),
            10_00,
            0,
            PayMethod::Cash,
        );
        for m in [topup, fee] {
            f.append(EntryBody::Money(Box::new(MoneyEntry {
                actor: actor.clone(),
                movement: m,
                batch_id: None,
            })))
            .await;
        }
        let replaced = money(
            &mut f,
            MoneyKind::Fee(FeeKind::Replacement),
            20_00,
            -20_00,
            PayMethod::Balance,
        );
        f.append(change(
            CardAction::Replace,
            vec![card(old, 21, CardStatus::Replaced), card(new, 21, CardStatus::Active)],
            None,
            Some(replaced),
            vec![BlacklistChange {
                version: 1,
                card: CardNo(old),
                listed: true,
            }],
        ))
        .await;
        let items = vec![
            ImportItem::Add {
                person: person(22, "2026000002"),
                account: account(22, 0),
                card: card(6_222_000_000_000_003, 22, CardStatus::Active),
            },
            ImportItem::Add {
                person: person(23, "2026000003"),
                account: account(23, 0),
                card: card(6_222_000_000_000_004, 23, CardStatus::Active),
            },
        ];
        f.append(EntryBody::ImportChunk(Box::new(ImportChunk {
            import_id: 9,
            index: 0,
            items,
        })))
        .await;
        // Other traffic between an import's chunks and its commit.
        let mut approved = f.business().await;
        f.append(EntryBody::ImportCommitted(Box::new(ImportCommitted {
            actor: actor.clone(),
            import_id: 9,
            chunks: 1,
            rows: 2,
            added: 2,
            updated: 0,
            kind_changed: 0,
            unchanged: 0,
        })))
        .await;
        f.set_balance(22, 0);
        f.set_balance(23, 0);
        let balance = f.balance_fen(21);
        let refund = money(&mut f, MoneyKind::CancelRefund, balance, -balance, PayMethod::Cash);
        f.append(change(
            CardAction::Cancel,
            vec![card(new, 21, CardStatus::Cancelled)],
            Some(AccountLeft {
                id: 21,
                status: AccountStatus::Closed,
                balance_fen: 0,
            }),
            Some(refund),
            vec![],
        ))
        .await;
        assert_eq!(f.balance_fen(21), 0, "the cancellation paid the balance out");
        approved.clear();

        let h = Flusher::start(f.source(), target.store(), quick()).unwrap();
        caught_up(&f, &h).await;
        let store = target.store();
        let gw = f.gateway_id;
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
        for a in [21, 22, 23] {
            assert!(
                totals.iter().any(|t| t.account == a),
                "{}: account {a} is central master data",
                target.name
            );
        }
        let kinds: Vec<String> = store
            .transactions(gw)
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.account == 21)
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
                .any(|p| p.contains("token_hash")
                    || p.contains("abab")
                    || p.contains("171,171")
                    || p.contains("argon2")
                    || p.contains("SECRETHASH")),
            "{}: no operator token or password hash reaches the central store",
            target.name
        );
        h.shutdown(Duration::from_secs(10)).await;
        store.close().await;
        target.cleanup().await;
    }
}

/// Security's record and the controllers' cache moves are central data too: an online
/// check, an uploaded offline event, a punch and a door cache move, each read back from
/// the store's `events` with what security asks of it (card, door, result, reason).
#[tokio::test]
async fn door_events_reach_the_central_store() {
    use cardgate_codec::CardNo;
    use cardgate_domain::access::{
        AccessEvent, CacheCause, CacheChange, CacheLine, CacheMovedEntry, ControllerEvents, DoorEvents, EventSource,
        Passage, Punch,
    };
    use cardgate_domain::entry::EntryBody;

    let card = CardNo(6_222_000_012_345_678);
    let event = |seq: u64, granted: bool, reason: u16, source: EventSource| AccessEvent {
        terminal: 100_001,
        event_seq: seq,
        card,
        account: 17,
        door: 4_321,
        door_group: 3,
        direction: Passage::In,
        granted,
        reason,
        source,
        event_time_ms: LUNCH_MS,
        permission: 5,
        passback: None,
        drift_ms: -1_250,
        flagged: false,
    };
    let controller = ControllerEvents {
        terminal: 100_001,
        last: 2,
        gaps: vec![],
        abandoned: 0,
        drift_ms: -1_250,
    };
    for target in targets("doors").await {
        let f = Fixture::new().await;
        f.append(EntryBody::DoorEvents(Box::new(DoorEvents {
            events: vec![event(1, true, 0, EventSource::Online)],
            punches: vec![],
            controller: controller.clone(),
        })))
        .await;
        f.append(EntryBody::DoorEvents(Box::new(DoorEvents {
            events: vec![event(2, false, 3, EventSource::Offline)],
            punches: vec![Punch {
                terminal: 200_001,
                event_seq: 9,
                card,
                account: 17,
                status: 0,
                punch_time_ms: LUNCH_MS,
                drift_ms: 300,
            }],
            controller: controller.clone(),
        })))
        .await;
        f.append(EntryBody::DoorCacheMoved(Box::new(CacheMovedEntry {
            cause: CacheCause::CardIssued,
            account: 17,
            cache: vec![CacheChange {
                group: 3,
                version: 8,
                added: vec![CacheLine {
                    card,
                    schedule: 1,
                    valid_from_min: 0,
                    valid_to_min: u32::MAX,
                }],
                removed: vec![],
                all: false,
            }],
        })))
        .await;
        let h = Flusher::start(f.source(), target.store(), quick()).unwrap();
        caught_up(&f, &h).await;
        let store = target.store();
        let payloads = store.event_payloads(f.gateway_id).await.unwrap();
        let json: Vec<serde_json::Value> = payloads.iter().map(|p| serde_json::from_str(p).unwrap()).collect();
        let events: Vec<&serde_json::Value> = json
            .iter()
            .filter_map(|p| p.get("events").and_then(|e| e.as_array()))
            .flatten()
            .collect();
        assert_eq!(events.len(), 2, "{}: {payloads:?}", target.name);
        assert_eq!(events[0]["card"], serde_json::json!(card.0), "{}", target.name);
        assert_eq!(events[0]["door"], 4_321);
        assert_eq!(
            (&events[0]["granted"], &events[0]["reason"]),
            (&serde_json::json!(true), &serde_json::json!(0))
        );
        assert_eq!(
            (&events[1]["granted"], &events[1]["reason"]),
            (&serde_json::json!(false), &serde_json::json!(3))
        );
        assert_eq!(events[1]["source"], "Offline", "{}", target.name);
        let punches = json
            .iter()
            .filter_map(|p| p.get("punches").and_then(|e| e.as_array()))
            .flatten()
            .count();
        assert_eq!(punches, 1, "{}", target.name);
        assert!(
            json.iter()
                .any(|p| p["cause"] == "CardIssued" && p["cache"][0]["group"] == 3),
            "{}: the cache move is central: {payloads:?}",
            target.name
        );
        h.shutdown(Duration::from_secs(10)).await;
        store.close().await;
        target.cleanup().await;
    }
}

/// One entry the store refuses (here a trigger) must not stall shipping silently: the
/// flusher ships everything before it, finds the one entry, and names it with its kind
/// and the store's error; once the store accepts it, shipping goes on, nothing lost.
#[tokio::test]
async fn an_entry_the_store_refuses_is_found_and_named() {
    let (log, _guard) = capture_log();
    for target in targets("refused").await {
        let lines = |needle: &str| log.count(needle);
        let (refuses, again, caught_up_lines, failing) = (
            lines("central store refuses an entry"),
            lines("central store flushing again"),
            lines("central store caught up"),
            lines("central store flush failing"),
        );
        let mut f = Fixture::new().await;
        let mut approved = f.business().await;
        // The refused one, somewhere in the middle of a batch.
        let refused_tx = f.buy(3, 7_77).await.expect("covered");
        let refused_entry = f.durable();
        approved.push(refused_tx);
        approved.extend(f.business().await);
        let store = target.store();
        store.migrate().await.unwrap();
        let (create, drop) = match target.name {
            "sqlite" => (
                "CREATE TRIGGER refuse BEFORE INSERT ON transactions WHEN NEW.amount_fen = -777 \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
                "DROP TRIGGER refuse;",
            ),
            _ => (
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF NEW.amount = -7.77 THEN \
                 RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER refuse BEFORE INSERT ON transactions FOR EACH ROW EXECUTE FUNCTION refuse();",
                "DROP TRIGGER refuse ON transactions; DROP FUNCTION refuse();",
            ),
        };
        admin_sql(&target, create).await;
        let config = FlusherConfig {
            batch_entries_max: 1_000,
            ..quick()
        };
        let h = Flusher::start(f.source(), target.store(), config).unwrap();
        until("the refused entry to be named", || h.status.stuck().is_some()).await;
        let stuck = h.status.stuck().unwrap();
        assert_eq!(stuck.entry_id, refused_entry, "{}", target.name);
        assert_eq!(stuck.kind, "purchase");
        assert!(
            stuck.error.contains("refused by the test"),
            "{}: {}",
            target.name,
            stuck.error
        );
        assert_eq!(
            h.status.cursor.load(Ordering::Acquire),
            refused_entry - 1,
            "{}: everything before it shipped",
            target.name
        );
        // The store answers, with a refusal: it is up (its unreachable alert stays quiet)
        // and not keeping up (the stuck entry says why), through the retries that follow.
        let errors = h.status.errors.load(Ordering::Acquire);
        until("the refused entry to be tried again", || {
            h.status.errors.load(Ordering::Acquire) > errors
        })
        .await;
        let health = h.health();
        assert!(health.reachable, "{}: a refusing store is reachable", target.name);
        assert!(!health.keeping_up(), "{}", target.name);
        // The search for the entry is not an outage: one line names the entry, and
        // nothing says the store is flushing again or caught up while it refuses.
        assert_eq!(lines("central store refuses an entry") - refuses, 1, "{}", target.name);
        assert_eq!(lines("central store flush failing") - failing, 0, "{}", target.name);
        assert_eq!(lines("central store flushing again") - again, 0, "{}", target.name);
        assert_eq!(lines("central store caught up") - caught_up_lines, 0, "{}", target.name);
        admin_sql(&target, drop).await;
        caught_up(&f, &h).await;
        assert!(h.status.stuck().is_none());
        assert_eq!(
            lines("the refused entry is shipped"),
            1 + usize::from(target.name != "sqlite"),
            "{}",
            target.name
        );
        assert_eq!(
            lines("central store flushing again") - again,
            0,
            "{}: the store answered all along",
            target.name
        );
        assert_mirrors(&f, &target.store(), &approved).await;
        h.shutdown(Duration::from_secs(10)).await;
        store.close().await;
        target.cleanup().await;
    }
}

/// A row the flusher did not write, already in the store beyond its cursor (someone
/// else's insert, a botched restore): the store is not what the exactly-once rule says
/// it must be, so the entry is refused and named, not silently skipped; once the row is
/// gone shipping goes on, nothing lost or doubled.
#[tokio::test]
async fn a_row_already_beyond_the_cursor_is_refused_not_skipped() {
    for target in targets("planted").await {
        let mut f = Fixture::new().await;
        let mut approved = f.business().await;
        let planted_tx = f.buy(2, 3_33).await.expect("covered");
        let planted_entry = f.durable();
        approved.push(planted_tx);
        approved.extend(f.business().await);
        let store = target.store();
        store.migrate().await.unwrap();
        let money = if target.name == "sqlite" {
            "amount_fen, balance_after_fen"
        } else {
            "amount, balance_after"
        };
        admin_sql(
            &target,
            &format!(
                "INSERT INTO transactions (gateway_id, tx_id, entry_id, kind, account_id, {money}, time_ms) \
                 VALUES ({}, 999999, {planted_entry}, 'purchase', 2, 0, 0, 0)",
                f.gateway_id as i64
            ),
        )
        .await;
        let config = FlusherConfig {
            batch_entries_max: 1_000,
            ..quick()
        };
        let h = Flusher::start(f.source(), target.store(), config).unwrap();
        until("the planted entry to be named", || h.status.stuck().is_some()).await;
        assert_eq!(h.status.stuck().unwrap().entry_id, planted_entry, "{}", target.name);
        assert_eq!(h.status.cursor.load(Ordering::Acquire), planted_entry - 1);
        assert!(
            !h.health().keeping_up(),
            "{}: a stuck entry is not keeping up",
            target.name
        );
        admin_sql(&target, "DELETE FROM transactions WHERE tx_id = 999999").await;
        caught_up(&f, &h).await;
        assert_mirrors(&f, &target.store(), &approved).await;
        h.shutdown(Duration::from_secs(10)).await;
        store.close().await;
        target.cleanup().await;
    }
}

/// This test's log lines, captured for as long as the guard lives.
fn capture_log() -> (Captured, tracing::subscriber::DefaultGuard) {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    (log, tracing::subscriber::set_default(subscriber))
}

/// A lines-of-log sink for one test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// A store that takes every batch but lags (here: batches that wait long to fill while
/// the clock runs on): the health says so, and the log says so once a minute, not once
/// per look, then once that it caught up.
#[tokio::test]
async fn a_flusher_behind_says_so_once_a_minute_and_its_health_shows_it() {
    let (log, _guard) = capture_log();
    let (_dir, url) = temp_sqlite();
    let mut f = Fixture::new().await;
    let config = FlusherConfig {
        batch_entries_max: 50,
        batch_wait: Duration::from_secs(3600),
        lag_warn: Duration::from_secs(30),
        ..quick()
    };
    // 55 entries: one full batch ships at once, 5 wait for the next to fill.
    for _ in 0..50 {
        f.buy(1, 1).await;
    }
    let h = Flusher::start(f.source(), CentralStore::open(&url).unwrap(), config).unwrap();
    until("the first batch", || h.status.cursor.load(Ordering::Acquire) == 50).await;
    let health = h.health();
    assert_eq!(health.backlog, 5);
    assert!(health.reachable);
    assert!(health.keeping_up(), "{health:?}");

    // The five waiting entries grow old.
    f.clock.advance(45_000);
    until("the health to show the lag", || !h.health().keeping_up()).await;
    let health = h.health();
    assert_eq!(health.backlog, 5);
    assert!(health.oldest_age >= Duration::from_secs(45), "{health:?}");
    // The flusher looks every few milliseconds; it says so once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log.count("central store behind the gateway"), 1);

    // A full batch takes the old entries out.
    for _ in 0..50 {
        f.buy(1, 1).await;
    }
    until("the old entries shipped", || h.health().keeping_up()).await;
    until("the caught-up line", || log.count("central store caught up") == 1).await;
    assert_eq!(log.count("central store behind the gateway"), 1);
    h.shutdown(Duration::from_secs(10)).await;
}

/// Runs SQL on a target outside the flusher (an operator's change to the store).
async fn admin_sql(target: &Target, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    match &target.pg_schema {
        Some(_) => {
            let pool = sqlx::PgPool::connect(&target.url).await.expect("connect");
            sqlx::raw_sql(sql).execute(&pool).await.expect("admin SQL");
            pool.close().await;
        }
        None => {
            let pool = sqlx::SqlitePool::connect(&target.url).await.expect("connect");
            sqlx::raw_sql(sql).execute(&pool).await.expect("admin SQL");
            pool.close().await;
        }
    }
}

/// The store keeps every entry's chain hash and each day close, and refuses a batch
/// from a journal that is not the one it was fed (a data directory restored from a
/// backup while the store went on): neither right after its cursor nor overlapping it.
#[tokio::test]
async fn the_store_keeps_the_chain_and_refuses_a_journal_that_diverged_from_it() {
    for target in targets("diverged").await {
        let mut f = Fixture::new().await;
        f.business().await;
        let last = f.durable();
        let last_hash = f.db.entry_hash(last).unwrap().unwrap();
        f.append(cardgate_domain::entry::EntryBody::DayClosed(Box::new(
            cardgate_domain::entry::DayClose {
                day: cardgate_domain::clock::business_day(LUNCH_MS, 480),
                tz_offset_minutes: 480,
                first_entry_id: 1,
                last_entry_id: last,
                hash: last_hash,
                transactions: 3,
                transactions_fen: -12_34,
                complete: true,
            },
        )))
        .await;
        let gw = f.gateway_id;
        let entries = f.entries();
        let n = entries.len() as u64;
        assert!(entries.iter().all(|e| e.hash.is_some()), "every entry is hashed");
        let store = target.store();
        store.migrate().await.unwrap();
        let half = (n / 2) as usize;
        let mut first = Batch::build(gw, &entries[..half]).unwrap();
        first.prev_hash = None;
        store.write(&first, 1).await.unwrap();
        let held = store.entry_hashes(gw, 0, usize::MAX).await.unwrap();
        assert_eq!(held.len(), half, "{}", target.name);
        assert!(
            held.iter()
                .zip(&entries)
                .all(|((id, h), e)| *id == e.id && Some(*h) == e.hash)
        );

        // Another history from the store's cursor on: its hash of entry `half` differs.
        let mut forked: Vec<_> = entries[half..].to_vec();
        let mut next = Batch::build(gw, &forked).unwrap();
        next.prev_hash = Some([0xEE; 32]);
        match store.write(&next, 2).await {
            Err(CentralError::Diverged { entry_id, .. }) => assert_eq!(entry_id, half as u64, "{}", target.name),
            r => panic!("{}: expected Diverged, got {r:?}", target.name),
        }
        // Overlapping the store's cursor, with a different hash for its last entry.
        let mut overlap: Vec<_> = entries[half - 2..].to_vec();
        overlap[1].hash = Some([0xEF; 32]);
        let o = Batch::build(gw, &overlap).unwrap();
        assert!(
            matches!(store.write(&o, 3).await, Err(CentralError::Diverged { .. })),
            "{}",
            target.name
        );
        assert_eq!(
            store.cursor(gw).await.unwrap(),
            half as u64,
            "{}: nothing was written",
            target.name
        );

        // The journal's own continuation links and ships.
        forked = entries[half..].to_vec();
        let mut right = Batch::build(gw, &forked).unwrap();
        right.prev_hash = entries[half - 1].hash;

        // A hash beyond the store's cursor that no flusher of this journal wrote: refused
        // like any row there (`protocol.rs`), never kept beside the journal's own. It is
        // the batch's last entry, so the batch's other rows are written before the
        // refusal; the overlapping batch below can only succeed if none of them stayed.
        let planted = if target.name == "sqlite" {
            format!("X'{}'", "ee".repeat(32))
        } else {
            format!("'\\x{}'::BYTEA", "ee".repeat(32))
        };
        admin_sql(
            &target,
            &format!(
                "INSERT INTO entry_hashes (gateway_id, entry_id, hash) VALUES ({}, {}, {planted})",
                gw as i64, n
            ),
        )
        .await;
        assert!(
            matches!(store.write(&right, 4).await, Err(CentralError::Refused(_))),
            "{}",
            target.name
        );
        admin_sql(&target, &format!("DELETE FROM entry_hashes WHERE entry_id = {n}")).await;

        // Overlapping the two entries the store holds last: only the hashes after its
        // cursor are written, each entry's once.
        let mut overlapping = Batch::build(gw, &entries[half - 2..]).unwrap();
        overlapping.prev_hash = f.db.entry_hash(half as u64 - 2).unwrap();
        assert_eq!(store.write(&overlapping, 5).await.unwrap(), n, "{}", target.name);
        let held = store.entry_hashes(gw, 0, usize::MAX).await.unwrap();
        assert_eq!(held.len() as u64, n, "{}", target.name);
        assert!(
            held.iter()
                .zip(&entries)
                .all(|((id, h), e)| *id == e.id && Some(*h) == e.hash),
            "{}: the journal's hashes, in order",
            target.name
        );
        let closes = store.day_closes(gw).await.unwrap();
        assert_eq!(closes.len(), 1, "{}", target.name);
        assert_eq!(
            (
                closes[0].day.as_str(),
                closes[0].last_entry_id,
                closes[0].hash,
                closes[0].transactions_fen
            ),
            ("2026-11-28", last, last_hash, -12_34),
            "{}",
            target.name
        );
        assert_eq!(closes[0].entry_id, n, "the close's own entry");
        store.close().await;
        target.cleanup().await;
    }
}
