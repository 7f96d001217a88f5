//! Backups, restore and the integrity check against the real daemon: a backup taken
//! through the API while terminals buy, more purchases, a restore with the command line,
//! and the gateway back at exactly the backup's balances, refusing to ship its new
//! history on top of the central store's newer one; damaged backups refused by the
//! command line with nothing changed; the integrity check clean after a run, and
//! finding, precisely, a changed central-store row (SQLite, and PostgreSQL when
//! `CARDGATE_TEST_PG` is set), a flipped byte in a journal entry and a deleted entry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cardgate_central::CentralStore;
use cardgate_codec::Message;
use cardgate_journal::segment;
use cardgate_journal::store::{PREFIX_JOURNAL, id_of_key};
use cardgate_loadtest::client::TerminalClient;
use serde_json::{Value, json};

use crate::central::PgSchema;
use crate::harness::*;

/// Terminals buying at once.
const BUYERS: u64 = 8;

fn demo_key_hex() -> String {
    cardgate_ledger::keys::DEMO_TERMINAL_KEY
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `cardgate ARGS...` with the demo terminal key: (success, stdout, stderr).
fn cli(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cardgate"))
        .args(args)
        .env("CARDGATE_TERMINAL_KEY", demo_key_hex())
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cardgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn v(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A data admin made on the command line, then the demo daemon.
fn start(dir: &Path, extra: &[&str]) -> (Daemon, String) {
    let token = operator_add(dir, "li", "data_admin").expect("operator add");
    (Daemon::start_with(dir, extra), token)
}

/// Terminal `id` buys from pseudo-random demo accounts until `stop`.
async fn buy(addr: SocketAddr, id: u64, stop: Arc<AtomicBool>) -> u64 {
    let Ok(mut t) = TerminalClient::connect(addr, id, &secret(id)).await else {
        return 0;
    };
    let mut seq = t.sign_on.last_tx_seq;
    let mut approved = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let account = 1 + (id * 7919 + seq * 104_729) % DEMO_ACCOUNTS;
        match t.purchase(seq, card(account), 1_00 + (seq as i64 % 5) * 25).await {
            Ok(Message::Approved(_)) => approved += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    approved
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<u64>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for id in 1..=BUYERS {
            tasks.spawn(buy(addr, id, stop.clone()));
        }
        Load { stop, tasks }
    }

    async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut n = 0;
        while let Some(r) = self.tasks.join_next().await {
            n += r.expect("a buyer panicked");
        }
        n
    }
}

fn metric(d: &Daemon, series: &str) -> f64 {
    d.metric(series).unwrap_or(0.0)
}

/// Waits until the central store holds every durable entry.
async fn caught_up(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let durable = metric(d, "cardgate_journal_durable_entry_id");
        if durable > 0.0 && metric(d, "cardgate_central_shipped_entry_id") >= durable {
            return;
        }
        assert!(Instant::now() < deadline, "the central store did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Yuan as the API gives it ("12.50") → fen.
fn fen(yuan: &str) -> i64 {
    let d: rust_decimal::Decimal = yuan.parse().expect("a decimal");
    (d * rust_decimal::Decimal::from(100)).try_into().expect("whole fen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_to_exactly_its_state_and_the_central_store_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backups = dir.path().join("backups");
    let (d, admin) = start(&data, &[]);
    let load = Load::start(d.terminal_addr());
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A directory named in the call must exist: a typo is refused, not created.
    let (st, body) = d.api(
        "POST",
        "/api/v1/backups",
        Some(&admin),
        Some(&json!({ "dir": backups.display().to_string() }).to_string()),
    );
    assert_eq!(st, 422, "{body}");
    assert!(!backups.exists(), "nothing made for a refused call");
    std::fs::create_dir_all(&backups).unwrap();
    let (st, body) = d.api(
        "POST",
        "/api/v1/backups",
        Some(&admin),
        Some(&json!({ "dir": backups.display().to_string() }).to_string()),
    );
    assert_eq!(st, 200, "{body}");
    let answer = v(&body);
    let point = answer["backup"]["entry_id"].as_u64().unwrap();
    let path = answer["backup"]["path"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let approved = load.stop().await;
    assert!(approved > 50, "the load ran: {approved} purchases");
    caught_up(&d).await;
    let (st, body) = d.api("GET", "/api/v1/audit?target=backups", Some(&admin), None);
    assert_eq!(st, 200);
    assert!(
        body.contains("backup.create"),
        "the backup is on the audit trail: {body}"
    );
    d.terminate();

    // What the backup must bring back, from the central store, which has everything:
    // each account's opening balance plus its transactions up to the backup point.
    let store = CentralStore::open_sqlite_file(&data.join("central.db"));
    let gateway = store.gateways().await.unwrap()[0].0;
    let mut expected: BTreeMap<u64, i64> = (1..=DEMO_ACCOUNTS).map(|a| (a, DEMO_BALANCE_FEN)).collect();
    let mut after_point = 0;
    for t in store.transactions(gateway).await.unwrap() {
        if t.entry_id <= point {
            *expected.get_mut(&t.account).unwrap() += t.amount_fen;
        } else {
            after_point += 1;
        }
    }
    let central_cursor = store.cursor(gateway).await.unwrap();
    store.close().await;
    assert!(
        after_point > 0 && central_cursor > point,
        "purchases after the backup point"
    );

    // Restore in place of the data directory, as an operator would after losing it.
    let (ok, _, err) = cli(&["restore", &path, "--data-dir", data.to_str().unwrap()], &[]);
    assert!(!ok, "a directory holding a database is not overwritten without --force");
    assert!(err.contains("--force"), "{err}");
    let (ok, _, err) = cli(
        &["restore", &path, "--data-dir", data.to_str().unwrap(), "--force"],
        &[],
    );
    assert!(ok, "{err}");
    assert!(err.contains(&format!("to entry {point}")), "{err}");

    let d = Daemon::start(&data);
    for (account, want) in &expected {
        let (st, body) = d.api("GET", &format!("/api/v1/accounts/{account}"), Some(&admin), None);
        assert_eq!(st, 200, "{body}");
        assert_eq!(
            fen(v(&body)["account"]["balance"].as_str().unwrap()),
            *want,
            "account {account}: the balance at the backup point"
        );
    }
    let (_, body) = d.api("GET", "/api/v1/audit?target=data", Some(&admin), None);
    assert!(
        body.contains("data.restore"),
        "the restore is on the audit trail: {body}"
    );

    // The central store still holds the entries after the point that this gateway no
    // longer has: it is ahead, and nothing is shipped over it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&d, "cardgate_central_errors_total{kind=\"ahead\"}") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the store ahead of the journal is not reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New purchases take the journal past the store's cursor: still nothing is shipped,
    // because the store's hash of its last entry is not this journal's.
    let load = Load::start(d.terminal_addr());
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&d, "cardgate_journal_durable_entry_id") <= central_cursor as f64 + 10.0 {
        assert!(Instant::now() < deadline, "the load did not pass the store's cursor");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load.stop().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&d, "cardgate_central_errors_total{kind=\"diverged\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the diverged history is not reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        d.log().iter().any(|l| l.contains("another history")),
        "the log says why nothing ships"
    );
    d.terminate();
    let store = CentralStore::open_sqlite_file(&data.join("central.db"));
    assert_eq!(
        store.cursor(gateway).await.unwrap(),
        central_cursor,
        "the store's history was not written over"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_is_refused_by_restore_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backups = dir.path().join("backups");
    let (d, admin) = start(&data, &[]);
    {
        let mut t = d.terminal(1).await;
        for seq in 1..=20 {
            t.purchase(seq, card(seq), 1_00).await.unwrap();
        }
    }
    let url = format!("http://{}", d.admin_addr());
    let backup = || {
        cli(
            &["backup", backups.to_str().unwrap(), "--admin-url", &url],
            &[("CARDGATE_TOKEN", &admin)],
        )
    };
    // A directory that is not there is refused, one line saying so, nothing made.
    let (ok, _, err) = backup();
    assert!(!ok && err.contains("is not a directory"), "{err}");
    assert!(!backups.exists());
    std::fs::create_dir_all(&backups).unwrap();
    let (ok, out, err) = backup();
    assert!(ok, "{err}");
    let good = std::path::PathBuf::from(out.trim());
    assert!(good.join("manifest.json").is_file(), "{out}");
    d.terminate();
    let sums = std::fs::read_to_string(good.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 3, "every file has its sum: {sums}");

    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    };
    let target = dir.path().join("restored");
    let refused = |b: &Path, why: &str| {
        let (ok, _, err) = cli(
            &["restore", b.to_str().unwrap(), "--data-dir", target.to_str().unwrap()],
            &[],
        );
        assert!(!ok, "{why}: restored");
        assert!(err.contains(why), "{why}: {err}");
        assert!(!target.exists(), "{why}: the data directory was created");
    };

    let flipped = copy("flipped");
    let mut bytes = std::fs::read(flipped.join("journal.cgb")).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(flipped.join("journal.cgb"), bytes).unwrap();
    refused(&flipped, "journal.cgb is damaged");

    let deleted = copy("deleted");
    std::fs::remove_file(deleted.join("state.cgb")).unwrap();
    refused(&deleted, "state.cgb is missing");

    let (ok, _, err) = cli(
        &[
            "restore",
            good.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "the good one restores: {err}");
}

/// One stored entry: (id, bytes, hash).
type Stored = (u64, Vec<u8>, Option<[u8; 32]>);

/// The data directory's journal: (segment key, its entries).
type Segments = Vec<(Vec<u8>, Vec<Stored>)>;

fn segments(db: &cardgate_journal::Db) -> Segments {
    db.tree
        .scan_prefix([PREFIX_JOURNAL])
        .map(|kv| {
            let (k, v) = kv.unwrap();
            let first = id_of_key(&k).unwrap();
            let entries = segment::entries(first, &v)
                .unwrap()
                .into_iter()
                .map(|e| (e.id, e.bytes.to_vec(), e.hash.copied()))
                .collect();
            (k.to_vec(), entries)
        })
        .collect()
}

fn write_segment(db: &cardgate_journal::Db, key: &[u8], entries: &[Stored]) {
    let mut seg = Vec::new();
    for (_, bytes, hash) in entries {
        segment::push(&mut seg, bytes, hash.as_ref());
    }
    db.tree.insert(key, seg).unwrap();
    db.db.flush().unwrap();
}

fn open_db(path: &Path) -> cardgate_journal::Db {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cardgate_journal::Db::open(path) {
            Ok(db) => return db,
            Err(e) if Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("open {}: {e}", path.display()),
        }
    }
}

/// `cardgate check` on a stopped data directory: (clean, report).
fn check_stopped(data: &Path, central: Option<&str>) -> (bool, Value) {
    let mut args = vec!["check", "--data-dir", data.to_str().unwrap()];
    if let Some(c) = central {
        args.extend(["--central", c]);
    }
    let (ok, out, err) = cli(&args, &[]);
    assert!(!out.is_empty(), "no report: {err}");
    (ok, v(&out))
}

fn findings(report: &Value, check: &str) -> Vec<Value> {
    report["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["check"] == check)
        .cloned()
        .collect()
}

async fn the_integrity_check(test: &str, pg: Option<&PgSchema>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let central_url = pg.map(|p| p.url(None));
    let extra: Vec<&str> = match &central_url {
        Some(u) => vec!["--central", u.as_str()],
        None => Vec::new(),
    };
    let (d, admin) = start(&data, &extra);
    let load = Load::start(d.terminal_addr());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(load.stop().await > 20, "{test}: the load ran");
    caught_up(&d).await;

    // Clean.
    let (st, body) = d.api("POST", "/api/v1/integrity/checks", Some(&admin), None);
    assert_eq!(st, 200, "{body}");
    let report = v(&body);
    assert_eq!(report["ok"], true, "{test}: a clean run is clean: {report:#}");
    // The one line the CLI prints on stderr, in either mode.
    assert!(
        report["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("clean: chain through entry")),
        "{report:#}"
    );
    assert!(report["hashes_checked"].as_u64().unwrap() > 20, "{report:#}");
    assert!(report["movements_checked"].as_u64().unwrap() > 20, "{report:#}");
    assert_eq!(metric(&d, "cardgate_integrity_runs_total{result=\"ok\"}"), 1.0);
    assert_eq!(
        metric(&d, "cardgate_integrity_mismatches{check=\"central_account\"}"),
        0.0
    );
    let (st, body) = d.api("GET", "/api/v1/audit?target=integrity", Some(&admin), None);
    assert_eq!(st, 200);
    assert!(
        body.contains("integrity.check") && body.contains("clean"),
        "audited: {body}"
    );

    // One central-store row changed: one purchase made a fen cheaper.
    let store = match &central_url {
        Some(u) => CentralStore::open(u).unwrap(),
        None => CentralStore::open_sqlite_file(&data.join("central.db")),
    };
    let gateway = store.gateways().await.unwrap()[0].0;
    let victim = store
        .transactions(gateway)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.kind == "purchase")
        .expect("a purchase");
    store.close().await;
    store_sql(
        central_url.as_deref(),
        &data,
        "UPDATE transactions SET amount = amount + 0.01 WHERE gateway_id = $1 AND entry_id = $2",
        "UPDATE transactions SET amount_fen = amount_fen + 1 WHERE gateway_id = ? AND entry_id = ?",
        &[gateway as i64, victim.entry_id as i64],
    )
    .await;
    let (st, body) = d.api("POST", "/api/v1/integrity/checks", Some(&admin), None);
    assert_eq!(st, 200, "{body}");
    let report = v(&body);
    assert_eq!(report["ok"], false, "{test}: {report:#}");
    let account = findings(&report, "central_account");
    assert_eq!(account.len(), 1, "{test}: {report:#}");
    assert_eq!(account[0]["account"], victim.account);
    assert_eq!(
        fen_diff(&account[0]),
        -1,
        "{test}: the store's balance is a fen more than the gateway's: {:#}",
        account[0]
    );
    let internal = findings(&report, "central_internal");
    assert_eq!(internal.len(), 1, "{test}: {report:#}");
    assert_eq!(internal[0]["account"], victim.account);
    let day = findings(&report, "central_day");
    assert_eq!(day.len(), 1, "{test}: the purchase's business day: {report:#}");
    assert_eq!(report["counts"]["chain"], 0);
    assert_eq!(report["counts"]["central_hash"], 0, "the entries themselves are intact");
    assert_eq!(
        metric(&d, "cardgate_integrity_mismatches{check=\"central_account\"}"),
        1.0
    );
    assert_eq!(metric(&d, "cardgate_integrity_last_run_ok"), 0.0);
    d.terminate();

    // The journal: one flipped byte in one entry, checked on the stopped directory.
    let (victim_id, flipped_at) = {
        let db = open_db(&data);
        let segs = segments(&db);
        // An entry in the middle of the journal, flipping the low bit of its last byte
        // (a purchase's blacklist version: it still decodes, only the chain can tell).
        let (key, mut entries) = segs[segs.len() / 2].clone();
        let i = entries.len() / 2;
        let last = entries[i].1.len() - 1;
        entries[i].1[last] ^= 0x01;
        write_segment(&db, &key, &entries);
        (entries[i].0, last)
    };
    let (clean, report) = check_stopped(&data, central_url.as_deref());
    assert!(!clean, "{test}: {report:#}");
    let chain = findings(&report, "chain");
    assert_eq!(chain.len(), 1, "{test}: exactly one chain finding: {report:#}");
    assert_eq!(
        chain[0]["entry_id"], victim_id,
        "{test}: at the flipped entry (byte {flipped_at})"
    );
    assert!(
        chain[0]["detail"].as_str().unwrap().contains("bytes were changed"),
        "{:#}",
        chain[0]
    );
    // Put it back: clean again, the central row aside.
    {
        let db = open_db(&data);
        let segs = segments(&db);
        let (key, mut entries) = segs
            .into_iter()
            .find(|(_, e)| e.iter().any(|x| x.0 == victim_id))
            .unwrap();
        let i = entries.iter().position(|x| x.0 == victim_id).unwrap();
        let last = entries[i].1.len() - 1;
        entries[i].1[last] ^= 0x01;
        write_segment(&db, &key, &entries);
    }
    let (_, report) = check_stopped(&data, central_url.as_deref());
    assert_eq!(report["counts"]["chain"], 0, "{test}: {report:#}");

    // The central store not answering is a check not made, not a mismatch: nothing is
    // counted against the records (no page as for tampering), the report says what was
    // not checked, and the command exits 2, not 1.
    let out = Command::new(env!("CARGO_BIN_EXE_cardgate"))
        .args(["check", "--data-dir", data.to_str().unwrap()])
        .args(["--central", "postgres://postgres@127.0.0.1:1/nowhere"])
        .env("CARDGATE_TERMINAL_KEY", demo_key_hex())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cardgate");
    let report = v(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(2), "{test}: {report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    assert!(
        report["counts"].as_object().unwrap().values().all(|n| n == 0),
        "{test}: {report:#}"
    );
    assert!(
        report["central_unchecked"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{report:#}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("INCOMPLETE"),
        "the summary says so"
    );

    // A store that holds more of this gateway than its journal (as after a restore of
    // the data directory from an older backup) is a finding, not a clean run.
    let move_cursor = async |by: i64| {
        store_sql(
            central_url.as_deref(),
            &data,
            "UPDATE gateways SET shipped_entry_id = shipped_entry_id + $1",
            "UPDATE gateways SET shipped_entry_id = shipped_entry_id + ?",
            &[by],
        )
        .await
    };
    move_cursor(3).await;
    let (clean, report) = check_stopped(&data, central_url.as_deref());
    assert!(!clean, "{test}: {report:#}");
    assert!(
        findings(&report, "central_hash")
            .iter()
            .any(|m| m["detail"].as_str().unwrap().contains("beyond this journal")),
        "{test}: the store ahead of the journal is reported: {report:#}"
    );
    move_cursor(-3).await;

    // A gateway whose store is PostgreSQL, checked without saying so: nothing to compare
    // with, said plainly (exit 2), and no empty SQLite store made in its data directory.
    if central_url.is_some() {
        let out = Command::new(env!("CARGO_BIN_EXE_cardgate"))
            .args(["check", "--data-dir", data.to_str().unwrap()])
            .env("CARDGATE_TERMINAL_KEY", demo_key_hex())
            .env_remove("CARDGATE_CENTRAL")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run cardgate");
        assert_eq!(out.status.code(), Some(2), "{test}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no central store to compare with"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!data.join("central.db").exists(), "{test}: nothing created");
    }

    // One deleted entry: the last of a segment in the middle.
    let deleted = {
        let db = open_db(&data);
        let segs = segments(&db);
        let (key, mut entries) = segs[segs.len() / 2].clone();
        let gone = entries.pop().unwrap();
        assert!(!entries.is_empty() || segs.len() > 2);
        if entries.is_empty() {
            db.tree.remove(&key).unwrap();
            db.db.flush().unwrap();
        } else {
            write_segment(&db, &key, &entries);
        }
        gone.0
    };
    let (clean, report) = check_stopped(&data, central_url.as_deref());
    assert!(!clean);
    let chain = findings(&report, "chain");
    assert_eq!(chain.len(), 1, "{test}: exactly one chain finding: {report:#}");
    assert_eq!(
        (
            chain[0]["entry_id"].as_u64(),
            chain[0]["detail"].as_str().unwrap().contains("not in the journal")
        ),
        (Some(deleted), true),
        "{test}: {:#}",
        chain[0]
    );
}

/// Changes the central store behind the gateway's back, as someone with access to it
/// would: `pg` on PostgreSQL (`central`), else `sqlite` on the data directory's file.
async fn store_sql(central: Option<&str>, data: &Path, pg: &str, sqlite: &str, args: &[i64]) {
    use sqlx::Connection;
    match central {
        Some(u) => {
            let mut c = sqlx::PgConnection::connect(u).await.unwrap();
            let mut q = sqlx::query(sqlx::AssertSqlSafe(pg.to_string()));
            for a in args {
                q = q.bind(*a);
            }
            q.execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
        None => {
            let url = format!("sqlite://{}", data.join("central.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sqlite.to_string()));
            for a in args {
                q = q.bind(*a);
            }
            q.execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
    }
}

/// expected − found of a mismatch in fen.
fn fen_diff(m: &Value) -> i64 {
    let n = |k: &str| m[k].as_str().unwrap().parse::<i64>().unwrap();
    n("expected") - n("found")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_integrity_check_is_clean_after_a_run_and_finds_each_change_precisely_sqlite() {
    the_integrity_check("sqlite", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_integrity_check_is_clean_after_a_run_and_finds_each_change_precisely_postgres() {
    let Some(pg) = PgSchema::create("integrity").await else {
        return;
    };
    the_integrity_check("postgres", Some(&pg)).await;
    pg.drop().await;
}
