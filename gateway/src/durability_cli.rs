//! `cardgate backup`, `cardgate restore`, `cardgate check`: the operator's commands for
//! backups and the integrity check.
//!
//! sled lets one process open a data directory, and the running daemon holds it, so a
//! backup or check of a running gateway goes through its admin API (a `data_admin` or
//! `director` token); a stopped gateway's data directory is opened directly. Restore
//! works only on a stopped gateway's directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use cardgate_central::CentralStore;
use cardgate_journal::Db;
use cardgate_ledger::backup::{self, BackupOf};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::config::Config;
use crate::integrity::{Report, Source};

/// The environment variable the commands read an operator's token from.
pub const TOKEN_ENV: &str = "CARDGATE_TOKEN";

/// Where a command finds the gateway.
pub enum Target {
    /// A running daemon's admin API: `http://HOST:PORT`, and a token.
    Api { url: String, token: String },
    /// A stopped gateway's data directory, with its configuration (the terminal key, the
    /// time zone, the central store).
    Stopped { config: Box<Config> },
}

/// One request to the admin API; returns the status and the JSON body.
async fn call(url: &str, token: &str, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, Value)> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("admin URL {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("the admin URL must be http://HOST:PORT (put a TLS proxy in front of the listener, and call it locally)");
    }
    let authority = uri.authority().context("the admin URL names no host")?.to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .with_context(|| format!("connecting to the gateway's admin API at {authority}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, &authority)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = sender.send_request(req).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    drop(sender);
    let _ = conn.await;
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok((status, value))
}

fn api_error(status: u16, body: &Value) -> anyhow::Error {
    let msg = body
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    anyhow::anyhow!("the gateway answered {status}: {msg}")
}

/// Opens a stopped gateway's database, or says how to reach a running one.
fn open_stopped(data_dir: &Path) -> anyhow::Result<Db> {
    if !data_dir.join("db").is_file() {
        bail!("{} holds no gateway database", data_dir.display());
    }
    Db::open(data_dir).map_err(|e| {
        if e.to_string().contains("lock") {
            anyhow::anyhow!(
                "{} is in use by a running cardgate: ask it instead (--admin-url and a data_admin token in {TOKEN_ENV})",
                data_dir.display()
            )
        } else {
            anyhow::anyhow!("opening {}: {e}", data_dir.display())
        }
    })
}

/// `cardgate backup DIR`: a new backup directory inside `dir`.
pub async fn backup(dir: &Path, target: Target) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir).with_context(|| format!("{}", dir.display()))?;
    match target {
        Target::Api { url, token } => {
            let body = serde_json::json!({ "dir": dir.display().to_string() }).to_string();
            let (status, answer) = call(&url, &token, "POST", "/api/v1/backups", &body).await?;
            if status != 200 {
                return Err(api_error(status, &answer));
            }
            let b = &answer["backup"];
            eprintln!(
                "backup written at entry {} (hash {})",
                b["entry_id"],
                b["entry_hash"].as_str().unwrap_or("")
            );
            println!("{}", b["path"].as_str().unwrap_or(""));
        }
        Target::Stopped { config } => {
            // As through the API: the directory named must be there (a typo is not made
            // into a new tree).
            if !dir.is_dir() {
                bail!(
                    "{} is not a directory: make it (mounted, writable) first",
                    dir.display()
                );
            }
            let db = open_stopped(&config.data_dir)?;
            let key = config.terminal_key(false)?;
            let gateway_id = db
                .get_meta_u64(cardgate_ledger::records::meta::GATEWAY_ID)?
                .context("the data directory has no gateway id")?;
            let through = db
                .get_meta_u64(cardgate_journal::store::meta::NEXT_ENTRY_ID)?
                .unwrap_or(1)
                - 1;
            let now = cardgate_domain::Clock::now_ms(&cardgate_domain::SystemClock);
            let tz = config.tz_offset_minutes;
            let done = tokio::task::spawn_blocking(move || {
                let of = BackupOf {
                    db: &db,
                    gateway_id,
                    tz_offset_minutes: tz,
                    now_ms: now,
                    key: key.as_ref(),
                };
                backup::write_backup(&of, &dir, || through)
            })
            .await??;
            eprintln!(
                "backup written at entry {} (hash {})",
                done.manifest.entry_id, done.manifest.entry_hash
            );
            println!("{}", done.path.display());
        }
    }
    Ok(())
}

/// `cardgate restore BACKUP --data-dir DIR`.
pub async fn restore(from: &Path, config: &Config, force: bool) -> anyhow::Result<()> {
    let key = config.terminal_key(false)?.context(
        "restoring needs the terminal key the backup was sealed with: set CARDGATE_TERMINAL_KEY or terminal_key_file",
    )?;
    let from = from.to_path_buf();
    let data = config.data_dir.clone();
    let now = cardgate_domain::Clock::now_ms(&cardgate_domain::SystemClock);
    let done = tokio::task::spawn_blocking(move || backup::restore(&from, &data, &key, force, now))
        .await?
        .context("restore refused; nothing was changed")?;
    let m = &done.manifest;
    if let Some(aside) = &done.replaced {
        eprintln!("the database that was there is kept in {}", aside.display());
    }
    eprintln!(
        "restored {} to entry {} (hash {}), taken {}; start the gateway. If the central store received entries \
         after {}, the gateway will not ship to it until they are reconciled (OPERATIONS.md, \"Restore\").",
        config.data_dir.display(),
        m.entry_id,
        m.entry_hash,
        m.created_local,
        m.entry_id
    );
    Ok(())
}

fn print_report(r: &Value) {
    println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
}

/// What `cardgate check` found, and the exit code that says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Every part checked, nothing disagrees: exit 0.
    Clean,
    /// Records that disagree: exit 1.
    Mismatches,
    /// Nothing disagrees in what was checked, but the central store could not be read:
    /// exit 2 (check again when it answers).
    Incomplete,
}

impl CheckOutcome {
    /// From a report's JSON (`Report::json`), as the API answers it and the stopped
    /// check prints it: its `result`. Anything else is not a clean run.
    pub fn of(report: &Value) -> CheckOutcome {
        match report["result"].as_str() {
            Some("ok") => CheckOutcome::Clean,
            Some("mismatch") => CheckOutcome::Mismatches,
            _ => CheckOutcome::Incomplete,
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            CheckOutcome::Clean => 0,
            CheckOutcome::Mismatches => 1,
            CheckOutcome::Incomplete => 2,
        }
    }
}

/// `cardgate check`: prints the report and says what it found.
pub async fn check(target: Target) -> anyhow::Result<CheckOutcome> {
    match target {
        Target::Api { url, token } => {
            let (status, answer) = call(&url, &token, "POST", "/api/v1/integrity/checks", "").await?;
            if status != 200 {
                return Err(api_error(status, &answer));
            }
            // The same line on stderr as a stopped check prints: an exit status 2 with
            // nothing said is a riddle at 3 a.m.
            if let Some(summary) = answer["summary"].as_str() {
                eprintln!("{summary}");
            }
            print_report(&answer);
            Ok(CheckOutcome::of(&answer))
        }
        Target::Stopped { config } => {
            let db = open_stopped(&config.data_dir)?;
            let central = match &config.central.url {
                Some(url) => CentralStore::open(url)?,
                None => {
                    // Opening it would create an empty one, and then compare with that.
                    let file = config.data_dir.join("central.db");
                    anyhow::ensure!(
                        file.exists(),
                        "no central store to compare with: {} does not exist; give the gateway's store with \
                         --central URL (or CARDGATE_CENTRAL, or central.url in --config)",
                        file.display()
                    );
                    CentralStore::open_sqlite_file(&file)
                }
            };
            let central = Arc::new(central);
            let now = cardgate_domain::Clock::now_ms(&cardgate_domain::SystemClock);
            let report: Report = crate::integrity::run(
                Source::Stopped {
                    db: &db,
                    tz_offset_minutes: config.tz_offset_minutes,
                },
                Some(&central),
                now,
            )
            .await?;
            central.close().await;
            eprintln!("{}", report.summary());
            let json = report.json();
            print_report(&json);
            Ok(CheckOutcome::of(&json))
        }
    }
}

/// The target from the command line's flags.
pub fn target(
    admin_url: Option<String>,
    token: Option<String>,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    central: Option<String>,
) -> anyhow::Result<Target> {
    if let Some(url) = admin_url {
        let token = token
            .or_else(|| std::env::var(TOKEN_ENV).ok())
            .with_context(|| format!("a data_admin or director token is needed: --token or {TOKEN_ENV}"))?;
        return Ok(Target::Api { url, token });
    }
    let mut config = Config::load(config.as_deref())?;
    if let Some(d) = data_dir {
        config.data_dir = d;
    }
    if let Some(c) = central {
        config.central.url = Some(c);
    }
    Ok(Target::Stopped {
        config: Box::new(config),
    })
}
