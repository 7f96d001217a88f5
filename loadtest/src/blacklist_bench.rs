//! `cardgate-blacklist-bench`: how long a loss report takes to reach every connected
//! terminal, and how long a large CSV import takes, against a running demo gateway.
//!
//! Propagation: N demo terminals sign on and sync their blacklist; each then waits for a
//! BLACKLIST_PUSH, syncs the delta and acknowledges, as a real terminal would. The tool
//! reports a card lost (or unfreezes it, alternately) through the admin API and times,
//! from just before the HTTP request, until each terminal holds the new version. It
//! prints percentiles over every terminal of every report and of the last terminal of
//! each report.
//!
//! Import: a generated CSV of `--import-rows` new persons and cards, posted once (all
//! added) and once more (all unchanged), timed from request to answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cardgate_ledger::demo::{demo_card, demo_secret};
use cardgate_loadtest::client::TerminalClient;
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc, watch};

#[derive(Parser, Debug)]
#[command(name = "cardgate-blacklist-bench")]
struct Args {
    /// Gateway terminal address.
    #[arg(long)]
    target: SocketAddr,
    /// Admin API address.
    #[arg(long)]
    admin: SocketAddr,
    /// A card_desk (or director) token for the loss reports; a data_admin or director
    /// token for the import.
    #[arg(long, env = "CARDGATE_TOKEN")]
    token: String,
    /// Connected terminals (demo terminals from --first-terminal on).
    #[arg(long, default_value_t = 1000)]
    terminals: u64,
    #[arg(long, default_value_t = 1)]
    first_terminal: u64,
    /// Loss reports to time (alternating lost/unfreeze of one demo card).
    #[arg(long, default_value_t = 20)]
    reports: u32,
    /// The demo account whose card is reported.
    #[arg(long, default_value_t = 1)]
    account: u64,
    /// Rows of the import to time; 0 skips it.
    #[arg(long, default_value_t = 0)]
    import_rows: u64,
    /// Give up on a report after this long.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    ctype: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, rest.to_string()))
}

fn pct(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    if args.reports > 0 && args.terminals > 0 {
        propagation(&args).await?;
    }
    if args.import_rows > 0 {
        import(&args).await?;
    }
    Ok(())
}

async fn propagation(args: &Args) -> anyhow::Result<()> {
    let (applied_tx, mut applied_rx) = mpsc::channel::<(usize, u64, Instant)>(64 * 1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::new();
    let connected_at = Instant::now();
    for i in 0..args.terminals as usize {
        let id = args.first_terminal + i as u64;
        let target = args.target;
        let applied = applied_tx.clone();
        let mut stop = stop_rx.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = {
                let _permit = gate.acquire().await.ok()?;
                let mut t = TerminalClient::connect(target, id, &demo_secret(id)).await.ok()?;
                t.blacklist_sync().await.ok()?;
                let _ = applied.send((i, t.blacklist_version, Instant::now())).await;
                t
            };
            loop {
                let have = t.blacklist_version;
                tokio::select! {
                    pushed = t.wait_push(have) => { pushed.ok()?; }
                    _ = stop.changed() => return Some(()),
                }
                t.blacklist_sync().await.ok()?;
                let _ = applied.send((i, t.blacklist_version, Instant::now())).await;
            }
        }));
    }
    drop(applied_tx);
    let n = args.terminals as usize;
    let mut version = vec![0u64; n];
    let mut synced = vec![false; n];
    let mut ready = 0;
    while ready < n {
        let (i, v, _) = tokio::time::timeout(Duration::from_secs(120), applied_rx.recv())
            .await
            .context("terminals did not all sign on and sync")?
            .context("terminal tasks ended")?;
        if !synced[i] {
            synced[i] = true;
            ready += 1;
        }
        version[i] = version[i].max(v);
    }
    println!("{n} terminals signed on and synced in {:?}", connected_at.elapsed());

    let card = demo_card(args.account).0;
    let mut every = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut last = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut api = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    // Start from the card's status, so that runs can follow each other.
    let (admin, token) = (args.admin, args.token.clone());
    let (st, body) = tokio::task::spawn_blocking(move || {
        http(
            admin,
            "GET",
            &format!("/api/v1/cards/{card}"),
            &token,
            "application/json",
            b"",
        )
    })
    .await??;
    if st != 200 {
        bail!("card {card}: {st} {body}");
    }
    let first = match serde_json::from_str::<serde_json::Value>(&body)?["card"]["status"].as_str() {
        Some("active") => 0,
        Some("lost") | Some("frozen") => 1,
        other => bail!("card {card} is {other:?}; pick another --account"),
    };
    for r in 0..args.reports {
        let action = if (r + first) % 2 == 0 { "lost" } else { "unfreeze" };
        let (admin, token) = (args.admin, args.token.clone());
        let t0 = Instant::now();
        let (st, body) = tokio::task::spawn_blocking(move || {
            http(
                admin,
                "POST",
                &format!("/api/v1/cards/{card}/{action}"),
                &token,
                "application/json",
                b"",
            )
        })
        .await??;
        let answered = t0.elapsed();
        if st != 200 {
            bail!("{action}: {st} {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let target = v["blacklist_version"].as_u64().context("no blacklist_version")?;
        api.record(answered.as_micros() as u64)?;
        let mut pending: usize = version.iter().filter(|v| **v < target).count();
        let mut slowest = Duration::ZERO;
        let deadline = t0 + Duration::from_millis(args.timeout_ms);
        while pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some((i, v, at))) = tokio::time::timeout(left, applied_rx.recv()).await else {
                bail!(
                    "report {r}: {pending} terminals still below version {target} after {} ms",
                    args.timeout_ms
                );
            };
            if version[i] < target && v >= target {
                pending -= 1;
                let took = at.saturating_duration_since(t0);
                slowest = slowest.max(took);
                every.record(took.as_micros().max(1) as u64)?;
            }
            version[i] = version[i].max(v);
        }
        last.record(slowest.as_micros().max(1) as u64)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    println!("loss report answered by the API: {}", pct(&api));
    println!("report → each terminal holds the new version: {}", pct(&every));
    println!("report → the last of {n} terminals holds it:   {}", pct(&last));
    Ok(())
}

async fn import(args: &Args) -> anyhow::Result<()> {
    let run = std::process::id() as u64 % 1000;
    let mut csv = String::from("person_id,name,department,kind,card_no\n");
    for i in 0..args.import_rows {
        csv.push_str(&format!(
            "B{run:03}{i:07},Name {i},Dept {},student,{}\n",
            i % 40,
            7_000_000_000_000u64 + run * 10_000_000 + i
        ));
    }
    let bytes = csv.into_bytes();
    println!("import: {} rows, {} bytes", args.import_rows, bytes.len());
    for pass in ["first (all added)", "again (all unchanged)"] {
        let (admin, token, body) = (args.admin, args.token.clone(), bytes.clone());
        let t0 = Instant::now();
        let (st, answer) =
            tokio::task::spawn_blocking(move || http(admin, "POST", "/api/v1/imports", &token, "text/csv", &body))
                .await??;
        let took = t0.elapsed();
        if st != 200 {
            bail!("import: {st} {answer}");
        }
        let v: serde_json::Value = serde_json::from_str(&answer)?;
        println!(
            "import {pass}: {:.2} s (server {} ms): added {}, updated {}, unchanged {}",
            took.as_secs_f64(),
            v["millis"],
            v["added"],
            v["updated"],
            v["unchanged"]
        );
    }
    Ok(())
}
