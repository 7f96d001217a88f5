//! Backups, restore, day closes and the journal's integrity check, on the ledger alone:
//! a backup taken while purchases go on restores to exactly its point; a damaged,
//! partial or forged backup is refused and changes nothing; no terminal secret is in a
//! backup in clear; a day closes with its last entry's hash; and the check finds a
//! balance changed even by someone who recomputed every hash after it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cardgate_codec::{CardNo, Message, Purchase};
use cardgate_domain::entry::{EntryBody, EntryRecord};
use cardgate_domain::model::Outcome;
use cardgate_journal::chain::{self, ChainPoint, GENESIS};
use cardgate_journal::segment;
use cardgate_journal::store::{PREFIX_JOURNAL, id_of_key, key_meta, meta};
use cardgate_ledger::backup::{self, BackupError};
use cardgate_ledger::keys::TerminalKey;
use cardgate_ledger::{Ledger, LedgerConfig, ManualClock};
use common::*;

fn key() -> TerminalKey {
    TerminalKey::new([7; 32])
}

fn config() -> LedgerConfig {
    LedgerConfig {
        terminal_key: Some(key()),
        ..LedgerConfig::default()
    }
}

/// Buys one fen at a time from accounts 1..=5 on `terminal` until told to stop.
async fn buy_until(ledger: Arc<Ledger>, terminal: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut seq = ledger.sign_on_secrets(terminal).unwrap().last_seq;
    let mut approved = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let p = Purchase {
            tx_seq: seq,
            card: CardNo(101 + seq % 5),
            amount_fen: 1,
            terminal_time_ms: 0,
        };
        if let Message::Approved(_) = ledger.purchase(terminal, &p).await.resolve().await {
            approved += 1;
        }
        tokio::task::yield_now().await;
    }
    approved
}

/// Every account's balance and every terminal's last sequence number as of entry
/// `through`, from a journal that holds everything from entry 1.
fn state_at(db: &cardgate_journal::Db, through: u64) -> (BTreeMap<u64, i64>, BTreeMap<u64, u64>) {
    let mut balances: BTreeMap<u64, i64> = (1..=5).map(|a| (a, 100_00)).collect();
    let mut seqs = BTreeMap::new();
    for e in db.read_entries(0, usize::MAX, EntryRecord::decode).unwrap() {
        if e.id > through {
            break;
        }
        if let EntryBody::Tx(t) = &e.record.body {
            let s = seqs.entry(t.terminal).or_insert(0);
            *s = (*s).max(t.seq);
            if let Outcome::Approved { balance_after_fen, .. } = t.outcome {
                balances.insert(t.account, balance_after_fen);
            }
        }
    }
    (balances, seqs)
}

fn open_db(dir: &Path) -> cardgate_journal::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match cardgate_journal::Db::open(dir) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("open: {e}"),
        }
    }
}

fn open_restored(dir: &Path) -> (Arc<Ledger>, cardgate_journal::CommitterHandle) {
    let (l, c, _) = reopen(|| Ledger::open(dir, config(), Arc::new(ManualClock::new(LUNCH_MS))));
    (l, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_to_exactly_its_point() {
    let f = Fixture::with_config(config()).await;
    let backups = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let buyers: Vec<_> = [POS, POS_2]
        .into_iter()
        .map(|t| tokio::spawn(buy_until(f.ledger.clone(), t, stop.clone())))
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let done = f.ledger.backup(backups.path()).await.expect("backup");
    // More purchases after the backup point.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut approved = 0;
    for b in buyers {
        approved += b.await.unwrap();
    }
    assert!(approved > 20, "the load ran: {approved} purchases");
    let m = &done.manifest;
    let durable_after = f.ledger.journal().stats.durable_entry_id.load(Ordering::Acquire);
    assert!(
        m.entry_id > 1 && durable_after > m.entry_id,
        "purchases before and after the point"
    );
    assert!(
        done.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with(&format!("-{}", m.entry_id))
    );

    let (expected, expected_seqs) = state_at(f.ledger.db(), m.entry_id);
    let (after, _) = state_at(f.ledger.db(), durable_after);
    assert_ne!(expected, after, "the state moved on after the backup");

    let data = tempfile::tempdir().unwrap();
    let target = data.path().join("restored");
    let r = backup::restore(&done.path, &target, &key(), false, LUNCH_MS).expect("restore");
    assert_eq!(r.replaced, None);
    let (l, c) = open_restored(&target);
    for (account, fen) in &expected {
        let got = cardgate_domain::money::to_fen(l.account(*account).unwrap().balance).unwrap();
        assert_eq!(got, *fen, "account {account} as of entry {}", m.entry_id);
    }
    for (terminal, seq) in &expected_seqs {
        assert_eq!(
            l.sign_on_secrets(*terminal).unwrap().last_seq,
            *seq,
            "terminal {terminal}'s last sequence number"
        );
    }
    assert_eq!(l.gateway_id(), f.ledger.gateway_id());
    assert_eq!(
        l.db().get_meta_u64(meta::NEXT_ENTRY_ID).unwrap(),
        Some(m.entry_id + 1),
        "the journal goes on right after the backup point"
    );
    assert!(l.take_restore_note().unwrap().unwrap().contains(&m.entry_hash));
    assert_eq!(l.take_restore_note().unwrap(), None, "the note is taken once");
    // It keeps working, and the chain links across the restore.
    let next = expected_seqs.get(&POS).copied().unwrap_or(0) + 1;
    let p = Purchase {
        tx_seq: next,
        card: CardNo(101),
        amount_fen: 1,
        terminal_time_ms: 0,
    };
    assert!(matches!(
        l.purchase(POS, &p).await.resolve().await,
        Message::Approved(_)
    ));
    let report = chain::verify(l.db(), u64::MAX).unwrap();
    assert_eq!(report.faults, vec![], "{report:?}");
    assert_eq!(report.last_entry_id, Some(m.entry_id + 1));
    drop(l);
    c.join();
}

/// A backup of a ledger with some history, and a place to restore it.
async fn a_backup() -> (Fixture, tempfile::TempDir, std::path::PathBuf) {
    let f = Fixture::with_config(config()).await;
    for seq in 1..=20 {
        f.buy(POS, seq, 101 + seq % 5, 1_00).await;
    }
    let backups = tempfile::tempdir().unwrap();
    let done = f.ledger.backup(backups.path()).await.unwrap();
    (f, backups, done.path)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn refused(b: &Path) -> BackupError {
    let data = tempfile::tempdir().unwrap();
    let target = data.path().join("data");
    let e = backup::restore(b, &target, &key(), false, 0).expect_err("a damaged backup is refused");
    assert!(!target.exists(), "nothing was created: {e}");
    assert_eq!(
        std::fs::read_dir(data.path()).unwrap().count(),
        0,
        "nothing left beside it either: {e}"
    );
    e
}

#[tokio::test]
async fn a_damaged_partial_or_forged_backup_is_refused_and_changes_nothing() {
    let (_f, backups, good) = a_backup().await;
    let case = |name: &str| {
        let p = backups.path().join(name);
        copy_dir(&good, &p);
        p
    };

    let flipped = case("flipped");
    let mut bytes = std::fs::read(flipped.join(backup::JOURNAL_FILE)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(flipped.join(backup::JOURNAL_FILE), &bytes).unwrap();
    let e = refused(&flipped);
    assert!(
        matches!(&e, BackupError::Checksum { file, .. } if file == backup::JOURNAL_FILE),
        "{e}"
    );

    let missing = case("missing");
    std::fs::remove_file(missing.join(backup::STATE_FILE)).unwrap();
    let e = refused(&missing);
    assert!(matches!(e, BackupError::Incomplete(..)), "{e}");
    assert!(e.to_string().contains("state.cgb is missing"), "{e}");

    let partial = case("partial");
    std::fs::remove_file(partial.join(backup::MANIFEST_FILE)).unwrap();
    let e = refused(&partial);
    assert!(e.to_string().contains("manifest.json is missing"), "{e}");

    let bad_manifest = case("bad-manifest");
    let text = std::fs::read_to_string(bad_manifest.join(backup::MANIFEST_FILE)).unwrap();
    std::fs::write(bad_manifest.join(backup::MANIFEST_FILE), &text[..text.len() / 2]).unwrap();
    assert!(matches!(refused(&bad_manifest), BackupError::Manifest(_)));

    // Someone changed a file and wrote its new sum into the manifest: the frames, sealed
    // with a key they do not have, still give it away.
    let forged = case("forged");
    let mut bytes = std::fs::read(forged.join(backup::STATE_FILE)).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x01;
    std::fs::write(forged.join(backup::STATE_FILE), &bytes).unwrap();
    let mut m = backup::read_manifest(&forged).unwrap();
    let sha = {
        use sha2::Digest;
        chain::to_hex(&sha2::Sha256::digest(&bytes).into())
    };
    m.files
        .iter_mut()
        .find(|f| f.name == backup::STATE_FILE)
        .unwrap()
        .sha256 = sha;
    std::fs::write(forged.join(backup::MANIFEST_FILE), serde_json::to_string(&m).unwrap()).unwrap();
    let e = refused(&forged);
    assert!(
        matches!(&e, BackupError::Sealed { file, .. } if file == backup::STATE_FILE),
        "{e}"
    );

    // The manifest claims more than the files hold.
    let short = case("short");
    let mut m = backup::read_manifest(&short).unwrap();
    m.entries += 1;
    std::fs::write(short.join(backup::MANIFEST_FILE), serde_json::to_string(&m).unwrap()).unwrap();
    assert!(matches!(refused(&short), BackupError::Content(_)));

    let data = tempfile::tempdir().unwrap();
    let e = backup::restore(&good, &data.path().join("d"), &TerminalKey::new([8; 32]), false, 0).unwrap_err();
    assert!(matches!(e, BackupError::WrongKey), "{e}");
}

#[tokio::test]
async fn restore_refuses_a_data_directory_in_use_or_holding_a_database_unless_forced() {
    let (f, _backups, good) = a_backup().await;
    // In use: the fixture's ledger has its directory open.
    let e = backup::restore(&good, f.path(), &key(), true, 0).unwrap_err();
    assert!(matches!(e, BackupError::InUse(_)), "{e}");

    let other = Fixture::with_config(config()).await.stop();
    let dir = other.path().to_path_buf();
    // sled's threads may hold the stopped database's lock for a moment.
    drop(open_db(&dir));
    std::fs::write(dir.join("central.db"), b"not sled's").unwrap();
    let before: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let e = backup::restore(&good, &dir, &key(), false, 0).unwrap_err();
    assert!(matches!(e, BackupError::NotEmpty(_)), "{e}");
    let after: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "refused: nothing moved");

    let done = backup::restore(&good, &dir, &key(), true, 42).unwrap();
    let aside = done.replaced.expect("the old database was moved aside");
    assert!(aside.join("db").is_file() && aside.join("conf").is_file());
    assert_eq!(
        std::fs::read(dir.join("central.db")).unwrap(),
        b"not sled's",
        "what is not sled's stays"
    );
    let (l, c) = open_restored(&dir);
    assert_eq!(
        l.gateway_id(),
        f.ledger.gateway_id(),
        "the backup's gateway, not the one replaced"
    );
    drop(l);
    c.join();
    drop(other);
}

#[tokio::test]
async fn no_terminal_secret_is_in_a_backup_in_clear() {
    let (f, _backups, good) = a_backup().await;
    // The fixture registers terminals the old way: their secrets are in its journal.
    let secret = [POS as u8; 32];
    let contains = |bytes: &[u8]| bytes.windows(32).any(|w| w == secret);
    let sled_log = std::fs::read(f.path().join("db")).unwrap();
    assert!(
        contains(&sled_log),
        "the data directory holds terminal 1's secret (the test would see it)"
    );
    for e in std::fs::read_dir(&good).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!contains(&bytes), "a backup file holds a terminal secret in clear");
        assert!(!bytes.windows(4).any(|w| w == b"POS "), "names are sealed too");
    }
}

#[tokio::test]
async fn a_business_day_closes_with_its_last_entry_and_hash_once() {
    let f = Fixture::with_config(config()).await;
    for seq in 1..=3 {
        f.buy(POS, seq, 101, 2_00).await;
    }
    assert!(f.ledger.close_days().await.unwrap().is_empty(), "the day has not ended");
    let last_of_day = f.ledger.journal().stats.durable_entry_id.load(Ordering::Acquire);
    // Past midnight and the grace: the next day's purchase first, then the close.
    f.clock.set(LUNCH_MS + 12 * 3_600_000);
    f.buy(POS, 4, 102, 1_00).await;
    let closes = f.ledger.close_days().await.unwrap();
    assert_eq!(closes.len(), 1, "{closes:?}");
    let c = &closes[0];
    assert_eq!(cardgate_ledger::days::day_str(c.day), "2026-11-28");
    assert_eq!((c.first_entry_id, c.last_entry_id), (1, last_of_day));
    assert_eq!(Some(c.hash), f.ledger.db().entry_hash(last_of_day).unwrap());
    assert_eq!(
        (c.transactions, c.transactions_fen),
        (3, -6_00),
        "only the day's own purchases"
    );
    assert!(c.complete);
    assert!(f.ledger.close_days().await.unwrap().is_empty(), "a day closes once");
    let audit = f.ledger.audit_list(&cardgate_ledger::audit::AuditQuery {
        target: Some("day:2026-11-28".into()),
        limit: 10,
        ..Default::default()
    });
    assert_eq!(audit.len(), 1);
    assert!(audit[0].after.contains(&chain::to_hex(&c.hash)));
    let f = f.restart();
    assert_eq!(
        f.ledger.last_day_close().as_ref(),
        Some(c),
        "the close survives a restart"
    );
}

/// Rewrites the whole journal with every hash recomputed (and the anchors that hold
/// them), after `change` altered one entry: what someone who knows the chain would do.
fn rewrite_with_fresh_hashes(db: &cardgate_journal::Db, mut change: impl FnMut(u64, &mut Vec<u8>)) {
    let mut prev = GENESIS;
    let mut last = None;
    let segments: Vec<_> = db.tree.scan_prefix([PREFIX_JOURNAL]).map(|kv| kv.unwrap()).collect();
    for (k, v) in segments {
        let first = id_of_key(&k).unwrap();
        let mut seg = Vec::new();
        for e in segment::entries(first, &v).unwrap() {
            let mut bytes = e.bytes.to_vec();
            change(e.id, &mut bytes);
            prev = chain::link(&prev, e.id, &bytes);
            segment::push(&mut seg, &bytes, Some(&prev));
            last = Some(ChainPoint { id: e.id, hash: prev });
        }
        db.tree.insert(k, seg).unwrap();
    }
    let last = last.unwrap();
    db.tree
        .insert(key_meta(meta::CHAIN_HEAD), last.encode().to_vec())
        .unwrap();
    db.tree
        .insert(key_meta(meta::CHECKPOINT_CHAIN), last.encode().to_vec())
        .unwrap();
}

#[tokio::test]
async fn the_check_finds_a_balance_changed_even_behind_recomputed_hashes() {
    let f = Fixture::with_config(config()).await;
    for seq in 1..=6 {
        f.buy(POS, seq, 101, 1_00).await;
    }
    let tz = f.ledger.tz_offset_minutes();
    let clean = f.ledger.check_journal(None).await.unwrap();
    assert!(clean.mismatches.is_empty(), "{:?}", clean.mismatches);
    assert_eq!(clean.balances.get(&1), Some(&94_00));
    assert_eq!(clean.movements, 6);
    let dir = f.stop();
    let db = open_db(dir.path());
    let through = db.get_meta_u64(meta::NEXT_ENTRY_ID).unwrap().unwrap() - 1;
    // The third purchase's balance after, 97.00, made 98.00: a fen-level forgery.
    let mut forged_id = 0;
    let mut seen = 0;
    rewrite_with_fresh_hashes(&db, |id, bytes| {
        let Ok(mut rec) = EntryRecord::decode(bytes) else {
            return;
        };
        if let EntryBody::Tx(t) = &mut rec.body {
            seen += 1;
            if seen == 3 {
                if let Outcome::Approved { balance_after_fen, .. } = &mut t.outcome {
                    *balance_after_fen += 1_00;
                }
                forged_id = id;
                *bytes = rec.encode();
            }
        }
    });
    let check = cardgate_ledger::integrity::check_journal(&db, through, tz, None).unwrap();
    assert_eq!(
        check.chain.faults,
        vec![],
        "the chain was recomputed: it alone cannot tell"
    );
    let balance: Vec<_> = check.mismatches.iter().filter(|m| m.check == "balance").collect();
    assert_eq!(balance.len(), 2, "{balance:?}");
    assert_eq!(
        (
            balance[0].entry_id,
            balance[0].account,
            balance[0].expected.as_str(),
            balance[0].found.as_str()
        ),
        (Some(forged_id), Some(1), "9700", "9800")
    );
    assert_eq!(
        (
            balance[1].entry_id,
            balance[1].expected.as_str(),
            balance[1].found.as_str()
        ),
        (Some(forged_id + 1), "9700", "9600"),
        "the next purchase does not follow on from the forged balance either"
    );
}
