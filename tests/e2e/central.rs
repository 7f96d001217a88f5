//! The central store end to end: the real daemon ships to SQLite (its default) or to
//! PostgreSQL (when `CARDGATE_TEST_PG` is set; each test in a schema of its own) while
//! terminals buy, through an outage of the store and through SIGKILLs in the middle of
//! flushing. Afterwards the store must hold every entry once, exactly the acknowledged
//! transactions, and per account the balances the gateway answers with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cardgate_central::CentralStore;
use cardgate_codec::{DeclineReason, Message};
use cardgate_loadtest::client::TerminalClient;
use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// Terminals buying at once.
const BUYERS: u64 = 16;
/// The terminal that asks for balances at the end; never buys.
const TELLER: u64 = DEMO_TERMINALS;

/// Approved purchases as the terminals were told them: tx id → (account, amount).
type Acks = Arc<Mutex<HashMap<u64, (u64, i64)>>>;

/// Terminal `id` buys from pseudo-random demo accounts until `stop` or until the
/// connection dies; records every approval it is told.
async fn buy(addr: SocketAddr, id: u64, stop: Arc<AtomicBool>, acks: Acks) {
    let Ok(mut t) = TerminalClient::connect(addr, id, &secret(id)).await else {
        return;
    };
    let mut seq = t.sign_on.last_tx_seq;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let account = 1 + (id * 7919 + seq * 104_729) % DEMO_ACCOUNTS;
        let amount = 1_00 + (seq as i64 % 5) * 25;
        match t.purchase(seq, card(account), amount).await {
            Ok(Message::Approved(a)) => {
                assert_eq!(a.amount_fen, amount);
                acks.lock().unwrap().insert(a.tx_id, (account, amount));
            }
            Ok(Message::Declined(d)) => assert_ne!(
                d.reason,
                DeclineReason::SystemError,
                "terminal {id}: the gateway failed while the central store was away"
            ),
            Ok(other) => panic!("terminal {id}: {other:?}"),
            Err(_) => return,
        }
    }
}

/// Buyers running against one daemon.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    fn start(d: &Daemon, acks: &Acks) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for id in 1..=BUYERS {
            tasks.spawn(buy(d.terminal_addr(), id, stop.clone(), acks.clone()));
        }
        Load { stop, tasks }
    }

    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(r) = self.tasks.join_next().await {
            r.expect("a buyer panicked");
        }
    }
}

fn metric_sum(d: &Daemon, name: &str) -> f64 {
    d.metrics()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Waits until the flusher has shipped everything durable. The gauges are sampled once
/// a second, so a sample taken before the caller's last request (the store caught up for
/// a moment under load) can show it caught up: it must show so, unchanged, in samples
/// over more than a second.
async fn wait_caught_up(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut since: Option<(Option<f64>, Instant)> = None;
    loop {
        let up = d.metric("cardgate_central_up") == Some(1.0);
        let backlog = d.metric("cardgate_central_backlog_entries");
        let durable = d.metric("cardgate_journal_durable_entry_id");
        let shipped = d.metric("cardgate_central_shipped_entry_id");
        if up && backlog == Some(0.0) && durable.is_some() && durable == shipped {
            match since {
                Some((seen, at)) if seen == durable => {
                    if at.elapsed() > Duration::from_millis(1500) {
                        return;
                    }
                }
                _ => since = Some((durable, Instant::now())),
            }
        } else {
            since = None;
        }
        assert!(
            Instant::now() < deadline,
            "the central store never caught up: up={up} backlog={backlog:?} durable={durable:?} shipped={shipped:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The central store mirrors the gateway: its one gateway's entries are exactly
/// `1..=durable`, each once; its transactions are the acknowledged ones (exactly, or at
/// least when a kill may have left decisions durable but unanswered); and per account,
/// opening balance + transactions = stored balance = what the gateway answers.
async fn assert_mirrors(d: &Daemon, store: &CentralStore, acks: &Acks, exactly: bool) {
    let gateways = store.gateways().await.unwrap();
    assert_eq!(gateways.len(), 1, "one gateway: {gateways:?}");
    let (gw, cursor) = gateways[0];
    let durable = d.metric("cardgate_journal_durable_entry_id").unwrap() as u64;
    assert_eq!(cursor, durable, "the store's cursor is the journal's end");
    let ids = store.entry_ids(gw).await.unwrap();
    assert_eq!(ids.len() as u64, durable, "no entry missing or doubled");
    assert!(ids.iter().copied().eq(1..=durable), "no gaps, no duplicates");

    let acks = acks.lock().unwrap().clone();
    let stored = store.transactions(gw).await.unwrap();
    let by_tx: HashMap<u64, _> = stored.iter().map(|t| (t.tx_id, t)).collect();
    assert_eq!(by_tx.len(), stored.len(), "each transaction once");
    for (tx_id, (account, amount)) in &acks {
        let t = by_tx
            .get(tx_id)
            .unwrap_or_else(|| panic!("acknowledged tx {tx_id} is not in the central store"));
        assert_eq!(
            (t.account, t.amount_fen, t.kind.as_str()),
            (*account, -amount, "purchase")
        );
    }
    if exactly {
        assert_eq!(stored.len(), acks.len(), "nothing but the acknowledged transactions");
    }

    let totals: HashMap<u64, _> = store
        .account_totals(gw)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.account, t))
        .collect();
    assert_eq!(totals.len() as u64, DEMO_ACCOUNTS);
    let mut teller = d.terminal(TELLER).await;
    for account in 1..=DEMO_ACCOUNTS {
        let Message::Balance(b) = teller.balance(card(account)).await.unwrap() else {
            panic!("balance of {account}")
        };
        let t = &totals[&account];
        assert_eq!(t.opening_balance_fen, DEMO_BALANCE_FEN);
        assert_eq!(t.balance_fen, b.balance_fen, "account {account}: stored balance");
        assert_eq!(
            t.opening_balance_fen + t.transactions_fen,
            b.balance_fen,
            "account {account}: opening + transactions"
        );
    }
}

/// Writes a config file that makes the flusher retry quickly and ship small batches
/// (so that a kill lands in the middle of one).
fn config(dir: &std::path::Path, batch_entries_max: usize) -> String {
    let path = dir.join("cardgate.toml");
    std::fs::write(
        &path,
        format!("[central]\nbatch_entries_max = {batch_entries_max}\nbatch_wait_ms = 0\nretry_backoff_max_ms = 300\n"),
    )
    .unwrap();
    path.display().to_string()
}

/// PostgreSQL for one test: a fresh schema, dropped at the end. `None` (with a note)
/// when `CARDGATE_TEST_PG` is unset.
pub(crate) struct PgSchema {
    admin_url: String,
    schema: String,
}

impl PgSchema {
    pub(crate) async fn create(test: &str) -> Option<PgSchema> {
        let Ok(admin_url) = std::env::var("CARDGATE_TEST_PG") else {
            eprintln!("{test}: CARDGATE_TEST_PG is not set; skipped");
            return None;
        };
        let schema = format!("cg_e2e_{test}_{}_{:x}", std::process::id(), rand::random::<u32>());
        let mut c = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to CARDGATE_TEST_PG");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        Some(PgSchema { admin_url, schema })
    }

    /// The URL of this schema, through `via` instead of the server's own address if given.
    pub(crate) fn url(&self, via: Option<SocketAddr>) -> String {
        let mut url = self.admin_url.clone();
        if let Some(addr) = via {
            let (scheme, rest) = url.split_once("://").expect("a URL");
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            let user = authority
                .rsplit_once('@')
                .map(|(u, _)| format!("{u}@"))
                .unwrap_or_default();
            url = format!("{scheme}://{user}{addr}{tail}");
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-c%20search_path%3D{}", self.schema)
    }

    /// Where the server listens.
    fn server_addr(&self) -> SocketAddr {
        let rest = self.admin_url.split_once("://").expect("a URL").1;
        let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host_port = if host_port.contains(':') {
            host_port.to_string()
        } else {
            format!("{host_port}:5432")
        };
        let host_port = host_port.replace("localhost", "127.0.0.1");
        host_port
            .parse()
            .expect("CARDGATE_TEST_PG names host:port numerically or localhost")
    }

    pub(crate) async fn drop(self) {
        let mut c = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.schema)))
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    }
}

/// A TCP proxy in front of PostgreSQL that the test can cut (every connection dropped,
/// new ones closed at once, as when the database host goes away) and restore.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = {
            let (cut, links) = (cut.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    links.lock().unwrap().push(link.abort_handle());
                }
            })
        };
        Proxy {
            addr,
            cut,
            links,
            accept,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for l in self.links.lock().unwrap().drain(..) {
            l.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Purchases under load while the store is away, then back: terminals are served all
/// along, the backlog and the errors show on /metrics, and after recovery the store
/// holds exactly what was acknowledged.
async fn outage_under_load(d: &Daemon, cut: impl AsyncFnOnce(), restore: impl AsyncFnOnce(), reader: &CentralStore) {
    wait_caught_up(d).await;
    let acks: Acks = Arc::default();
    let errors_before = metric_sum(d, "cardgate_central_errors_total");

    cut().await;
    let load = Load::start(d, &acks);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let served_during_outage = acks.lock().unwrap().len();
    assert!(
        served_during_outage > 0,
        "terminals were served while the store was away"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let backlog = d.metric("cardgate_central_backlog_entries").unwrap_or(0.0);
        let errors = metric_sum(d, "cardgate_central_errors_total");
        if backlog > 0.0 && errors > errors_before && d.metric("cardgate_central_up") == Some(0.0) {
            let age = d.metric("cardgate_central_oldest_unshipped_seconds").unwrap_or(0.0);
            assert!(age > 0.0, "the lag is visible");
            assert_eq!(
                d.metric("cardgate_central_keeping_up"),
                Some(0.0),
                "readiness sees the store away"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the outage never showed on /metrics");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    restore().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop().await;
    assert!(acks.lock().unwrap().len() > served_during_outage, "the load went on");
    wait_caught_up(d).await;
    assert!(
        d.log().iter().any(|l| l.contains("central store flushing again")),
        "the flusher saw the outage end"
    );
    assert_mirrors(d, reader, &acks, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_locked_under_load_then_released_holds_exactly_the_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 500);
    let d = Daemon::start_with(dir.path(), &["--config", &config]);
    let url = format!("sqlite://{}", dir.path().join("central.db").display());
    let reader = CentralStore::open(&url).unwrap();
    // Another process holds the file's write lock for the whole outage.
    let locker: Arc<tokio::sync::Mutex<Option<sqlx::SqliteConnection>>> = Arc::default();
    let (l1, l2) = (locker.clone(), locker.clone());
    outage_under_load(
        &d,
        async move || {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::raw_sql("BEGIN EXCLUSIVE; INSERT INTO schema_version VALUES (999, 0);")
                .execute(&mut c)
                .await
                .unwrap();
            *l1.lock().await = Some(c);
        },
        async move || {
            let mut c = l2.lock().await.take().expect("locked");
            sqlx::raw_sql("ROLLBACK").execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        },
        &reader,
    )
    .await;
    assert!(metric_sum(&d, "cardgate_central_errors_total{kind=\"busy\"}") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cut_off_under_load_then_back_holds_exactly_the_acknowledged() {
    let Some(pg) = PgSchema::create("outage").await else {
        return;
    };
    let proxy = Proxy::start(pg.server_addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 500);
    let d = Daemon::start_with(
        dir.path(),
        &["--config", &config, "--central", &pg.url(Some(proxy.addr))],
    );
    let reader = CentralStore::open(&pg.url(None)).unwrap();
    outage_under_load(&d, async || proxy.cut(), async || proxy.restore(), &reader).await;
    reader.close().await;
    drop(d);
    pg.drop().await;
}

/// A PostgreSQL that answers but lets nothing be stored (no such database, no such
/// role) is down to the operator: `cardgate_central_up` 0, as for a wrong port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_that_refuses_the_login_counts_as_down() {
    let Ok(admin_url) = std::env::var("CARDGATE_TEST_PG") else {
        eprintln!("a_postgres_that_refuses_the_login_counts_as_down: CARDGATE_TEST_PG is not set; skipped");
        return;
    };
    let (scheme, rest) = admin_url.split_once("://").expect("a URL");
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let db = rest[rest.find('/').expect("a database in CARDGATE_TEST_PG") + 1..]
        .split('?')
        .next()
        .unwrap_or("");
    for url in [
        format!("{scheme}://postgres@{host}/cg_no_such_database_{}", std::process::id()),
        format!("{scheme}://cg_no_such_role@{host}/{db}"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon::start_with(dir.path(), &["--central", &url]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.metric("cardgate_central_up") != Some(0.0) {
            assert!(
                Instant::now() < deadline,
                "{url}: cardgate_central_up {:?}",
                d.metric("cardgate_central_up")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(d);
    }
}

/// Kills the gateway with SIGKILL while it ships small batches under load, three times,
/// then lets it catch up: nothing doubled, nothing missing, every acknowledged purchase
/// there, sums equal to the gateway's balances.
async fn killed_while_flushing(central: Option<String>, reader: CentralStore) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 40);
    let mut args = vec!["--config".to_string(), config];
    if let Some(url) = central {
        args.extend(["--central".to_string(), url]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let acks: Acks = Arc::default();
    for round in 0..3u64 {
        let d = Daemon::start_with(dir.path(), &args);
        let load = Load::start(&d, &acks);
        // Long enough that many batches are shipped and one is in flight at the kill.
        tokio::time::sleep(Duration::from_millis(1200 + 300 * round)).await;
        let batches = metric_sum(&d, "cardgate_central_batches_total");
        assert!(batches > 0.0, "round {round}: the flusher was shipping");
        d.kill9();
        load.stop().await;
    }
    let d = Daemon::start_with(dir.path(), &args);
    wait_caught_up(&d).await;
    assert!(acks.lock().unwrap().len() as u64 > 3 * BUYERS, "the load ran");
    assert_mirrors(&d, &reader, &acks, false).await;
    reader.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_the_middle_of_flushing_to_sqlite_leaves_no_gap_and_no_duplicate() {
    // The reader opens the file lazily, after the first daemon created it.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("central.db").display());
    killed_while_flushing(Some(url.clone()), CentralStore::open(&url).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_the_middle_of_flushing_to_postgres_leaves_no_gap_and_no_duplicate() {
    let Some(pg) = PgSchema::create("sigkill").await else {
        return;
    };
    let reader = CentralStore::open(&pg.url(None)).unwrap();
    killed_while_flushing(Some(pg.url(None)), reader).await;
    pg.drop().await;
}
