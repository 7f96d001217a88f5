//! `cardgate-central-drain`: what shipping one journal entry to the central store costs,
//! with no gateway running. Two steps, so that a profiler (`valgrind --tool=callgrind`)
//! sees only the second:
//!
//! ```sh
//! cardgate-central-drain prepare DIR [--entries 200000] [--accounts 20000] [--decline-pct 25]
//! cardgate-central-drain drain DIR --store URL [--server-pid PID]
//! ```
//!
//! `prepare` writes a sled journal as the gateway would after a lunch rush: the accounts'
//! openings, then purchases over them in random order, a share declined. `drain` ships
//! the openings first (not measured), then runs the gateway's flusher with its default
//! configuration over the purchases and prints the wall time, the rate, and the CPU time
//! this process used per entry; with `--server-pid` (a PostgreSQL postmaster) also the CPU
//! time of that server's processes. CPU time per entry, unlike the rate, hardly moves when
//! other work shares the machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cardgate_central::flusher::JournalSource;
use cardgate_central::{CentralStore, Flusher, FlusherConfig};
use cardgate_codec::{CardNo, DeclineReason};
use cardgate_domain::entry::{EntryBody, EntryRecord, TxEntry};
use cardgate_domain::model::{Account, AccountKind, AccountStatus, Outcome, TxKind};
use cardgate_domain::money::from_fen;
use cardgate_domain::{Clock, SystemClock};
use cardgate_journal::{CheckpointPolicy, Db, JournalStats};
use cardgate_ledger::records::{Journal, Submission};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The gateway id the prepared journal ships under.
const GATEWAY_ID: u64 = 0x0D5A_1A00;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: cardgate-central-drain prepare DIR [--entries N] [--accounts N] [--decline-pct P]\n       \
                 cardgate-central-drain drain DIR --store URL [--server-pid PID]";
    let (Some(step), Some(dir)) = (args.first(), args.get(1)) else {
        bail!("{usage}");
    };
    let flag = |name: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let number = |name: &str, default: u64| -> anyhow::Result<u64> {
        flag(name).map_or(Ok(default), |v| v.parse().with_context(|| format!("{name} {v}")))
    };
    let dir = PathBuf::from(dir);
    match step.as_str() {
        "prepare" => prepare(
            &dir,
            number("--entries", 200_000)?,
            number("--accounts", 20_000)?,
            number("--decline-pct", 25)?,
        ),
        "drain" => {
            let store = flag("--store").context("drain needs --store URL")?;
            let server = flag("--server-pid").map(str::parse::<u32>).transpose()?;
            drain(&dir, store, server)
        }
        _ => bail!("{usage}"),
    }
}

fn prepare(dir: &Path, entries: u64, accounts: u64, decline_pct: u64) -> anyhow::Result<()> {
    if accounts == 0 {
        bail!("--accounts must be at least 1");
    }
    std::fs::create_dir_all(dir)?;
    let db = Db::open(dir)?;
    let store = db.store()?;
    let policy = CheckpointPolicy {
        enabled: false,
        ..CheckpointPolicy::default()
    };
    let (journal, committer) = Journal::start(db.clone(), Box::new(store), 1, 0, policy)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let now = SystemClock.now_ms();
    let mut rng = StdRng::seed_from_u64(15);
    let mut balances = vec![1_000_00i64; accounts as usize + 1];
    rt.block_on(async {
        let mut last = None;
        for id in 1..=accounts {
            let body = EntryBody::AccountOpened(Account {
                id,
                kind: AccountKind::Student,
                status: AccountStatus::Active,
                balance: from_fen(1_000_00),
                limits: None,
                day: 0,
                spent_today: from_fen(0),
            });
            last = Some(submit(&journal, now, body).await?);
        }
        for i in 0..entries {
            let account = rng.random_range(1..=accounts);
            let amount_fen = rng.random_range(1_00..=15_00);
            let declined = rng.random_range(0..100) < decline_pct;
            let balance = &mut balances[account as usize];
            let outcome = if declined {
                Outcome::Declined {
                    reason: DeclineReason::InsufficientFunds.code(),
                    balance_fen: *balance,
                }
            } else {
                *balance -= amount_fen;
                Outcome::Approved {
                    tx_id: i + 1,
                    balance_after_fen: *balance,
                }
            };
            let terminal = i % 1_000 + 1;
            let body = EntryBody::Tx(TxEntry {
                kind: TxKind::Purchase,
                tx_id: if declined { 0 } else { i + 1 },
                terminal,
                merchant_id: terminal / 50 + 1,
                seq: i / 1_000 + 1,
                original_seq: 0,
                original_tx_id: 0,
                card: CardNo(1_000_000_000 + account),
                account,
                amount_fen,
                outcome,
                terminal_time_ms: now,
                single_limit_fen: 200_00,
                daily_limit_fen: 600_00,
                spent_today_after_fen: amount_fen,
                blacklist_version: 0,
            });
            last = Some(submit(&journal, now + (i / 30) as i64, body).await?);
        }
        if let Some(last) = last {
            last.await.context("the committer stopped")??;
        }
        anyhow::Ok(())
    })?;
    drop(journal);
    committer.join();
    std::fs::write(dir.join("accounts"), accounts.to_string())?;
    println!(
        "prepared {} entries ({accounts} accounts opened, {entries} purchases) in {}",
        accounts + entries,
        dir.display()
    );
    Ok(())
}

type Done = tokio::sync::oneshot::Receiver<cardgate_journal::CommitResult>;

async fn submit(journal: &Journal, time_ms: i64, body: EntryBody) -> anyhow::Result<Done> {
    let (done, wait) = tokio::sync::oneshot::channel();
    journal.reserve().await?.send(Submission {
        entries: smallvec::smallvec![EntryRecord { time_ms, body }],
        records: Default::default(),
        mark: 0,
        force_sync: false,
        done: Some(done),
    });
    Ok(wait)
}

fn drain(dir: &Path, url: &str, server: Option<u32>) -> anyhow::Result<()> {
    let accounts: u64 = std::fs::read_to_string(dir.join("accounts"))
        .context("run `prepare` first")?
        .trim()
        .parse()?;
    let db = Db::open(dir)?;
    let durable = db
        .get_meta_u64(cardgate_journal::store::meta::NEXT_ENTRY_ID)?
        .context("an empty journal")?
        - 1;
    // The flusher gets a runtime and a thread of its own, as in the gateway.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cardgate-central")
        .enable_all()
        .build()?;
    let stats = Arc::new(JournalStats::default());
    let source = JournalSource {
        db: db.clone(),
        stats: stats.clone(),
        gateway_id: GATEWAY_ID,
        clock: Arc::new(SystemClock),
    };
    let config = FlusherConfig {
        // Nothing is pruned: the journal is shipped again by the next run.
        journal_retention: Duration::from_secs(365 * 24 * 3600),
        ..FlusherConfig::default()
    };
    let run = |through: u64| -> anyhow::Result<Option<(Duration, u64)>> {
        stats.durable_entry_id.store(through, Ordering::Release);
        let _on = rt.enter();
        let store = CentralStore::open(url)?;
        let handle = Flusher::start(source.clone(), store, config.clone())?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(3600);
        while !(handle.status.confirmed.load(Ordering::Acquire) && handle.backlog() == 0) {
            if Instant::now() > deadline {
                bail!("not drained within an hour");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let took = started.elapsed();
        let batches = handle.status.batches.load(Ordering::Relaxed);
        rt.block_on(handle.shutdown(Duration::from_secs(10)));
        Ok(Some((took, batches)))
    };
    // The accounts first, so that the measured part is purchases against existing rows.
    run(accounts)?;
    let cpu0 = cpu_seconds(std::process::id(), false);
    let server0 = server.map(|p| cpu_seconds(p, true));
    let Some((took, batches)) = run(durable)? else {
        return Ok(());
    };
    let cpu = cpu_seconds(std::process::id(), false) - cpu0;
    let n = durable - accounts;
    println!(
        "store {}: {n} entries in {:.2} s = {:.0} entries/s, {batches} batches; this process {:.2} s CPU = {:.2} µs/entry",
        cardgate_central::redact(url),
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        cpu,
        cpu * 1e6 / n as f64,
    );
    if let (Some(pid), Some(before)) = (server, server0) {
        let used = cpu_seconds(pid, true) - before;
        println!(
            "server (pid {pid} and its children): {used:.2} s CPU = {:.2} µs/entry",
            used * 1e6 / n as f64
        );
    }
    Ok(())
}

/// CPU time (user + system) of `pid`; with `children`, also of every process whose
/// parent it is (a PostgreSQL server's backends and workers): those alive from /proc,
/// those gone in the parent's own tally of the children it reaped.
fn cpu_seconds(pid: u32, children: bool) -> f64 {
    // Clock ticks per second: 100 on every Linux this runs on (USER_HZ).
    const TICKS: f64 = 100.0;
    // (parent, own CPU, reaped children's CPU)
    let fields = |p: &str| -> Option<(u32, f64, f64)> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        // The command name may hold spaces; the fields after its ')' do not.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<f64> = rest.split(' ').map(|x| x.parse().unwrap_or(0.0)).collect();
        Some((
            *f.get(1)? as u32,
            (f.get(11)? + f.get(12)?) / TICKS,
            (f.get(13)? + f.get(14)?) / TICKS,
        ))
    };
    let Some((_, own, reaped)) = fields(&pid.to_string()) else {
        return 0.0;
    };
    if !children {
        return own;
    }
    let mut total = own + reaped;
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let name = p.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.bytes().all(|b| b.is_ascii_digit())
                && let Some((ppid, t, _)) = fields(name)
                && ppid == pid
            {
                total += t;
            }
        }
    }
    total
}
