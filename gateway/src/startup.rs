//! Start-up checks, in the order that keeps a failed start harmless: bind every listener
//! (a busy port is the commonest mistake, and finding it must not leave a data
//! directory behind), then make sure the data directory is usable, then parse the
//! central store's URL. Each failure is one `StartError` whose message names what to
//! fix; `main` prints it as one line and exits non-zero.
//!
//! The central store is probed, not required: the gateway serves terminals with the
//! store down (docs/ARCHITECTURE.md, "Outages"), so what the probe finds is one log line
//! at start-up that says whether the store answers and in which schema it will write.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use cardgate_central::CentralStore;
use sqlx::Connection;
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError, ListenAddr};

/// How long the start-up probe of the central store waits for an answer before saying
/// the store is unreachable. It runs beside the terminals, so it delays nothing; long
/// enough for a store across a campus network, short enough that the line comes while
/// the operator who started the gateway is still watching.
pub const CENTRAL_PROBE_MS: u64 = 5_000;

/// A file created and removed to learn whether the data directory is writable, before
/// sled is asked to open it (sled's own error says only "i/o").
const WRITE_CHECK_FILE: &str = ".cardgate-write-check";

/// Why the daemon could not start. Every message is complete in one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen for {listener} on {addr} (set `{key}` or --{flag}): {reason}")]
    Listen {
        listener: &'static str,
        key: &'static str,
        flag: &'static str,
        addr: String,
        reason: String,
    },
    #[error("data directory {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    /// The central store's own message, which names it.
    #[error("{0}")]
    Central(String),
    #[error("cannot open the ledger in {path}: {reason}")]
    Ledger { path: PathBuf, reason: String },
    #[error("{0}")]
    Other(String),
}

/// One of the daemon's TCP listeners, with the configuration key that sets it.
#[derive(Clone, Copy, Debug)]
pub enum ListenerKind {
    Terminals,
    Admin,
    Metrics,
}

impl ListenerKind {
    /// The word the `listening` log line uses (`kind="terminals"`).
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Terminals => "terminals",
            ListenerKind::Admin => "admin",
            ListenerKind::Metrics => "metrics",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ListenerKind::Terminals => "terminals",
            ListenerKind::Admin => "the admin API",
            ListenerKind::Metrics => "Prometheus metrics",
        }
    }

    fn key(self) -> &'static str {
        match self {
            ListenerKind::Terminals => "listen",
            ListenerKind::Admin => "admin_listen",
            ListenerKind::Metrics => "metrics_listen",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            ListenerKind::Terminals => "listen",
            ListenerKind::Admin => "admin-listen",
            ListenerKind::Metrics => "metrics-listen",
        }
    }
}

/// Every listener, bound and not yet serving: connections wait in the kernel's backlog
/// until recovery is done and the servers start.
pub struct Listeners {
    pub terminals: TcpListener,
    pub admin: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

/// Binds every configured listener. Call inside the runtime, before the data directory
/// is touched.
pub fn bind_listeners(config: &Config) -> Result<Listeners, StartError> {
    let backlog = config.limits.listen_backlog;
    let terminals = bind(ListenerKind::Terminals, &config.listen, |a| {
        crate::server::bind(a, backlog)
    })?;
    let admin = config
        .admin_listen
        .as_ref()
        .map(|addr| bind(ListenerKind::Admin, addr, bind_plain))
        .transpose()?;
    let metrics = config
        .metrics_listen
        .as_ref()
        .map(|addr| bind(ListenerKind::Metrics, addr, bind_plain))
        .transpose()?;
    Ok(Listeners {
        terminals,
        admin,
        metrics,
    })
}

fn bind_plain(addr: SocketAddr) -> io::Result<TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// Binds the first address `addr` resolves to. The next one is tried only when this
/// machine cannot have that address at all (`localhost` naming an IPv6 address on a
/// host without IPv6): a busy port is reported, never silently moved around.
fn bind<L>(
    kind: ListenerKind,
    addr: &ListenAddr,
    bind_one: impl Fn(SocketAddr) -> io::Result<L>,
) -> Result<L, StartError> {
    let fail = |reason: String| StartError::Listen {
        listener: kind.describe(),
        key: kind.key(),
        flag: kind.flag(),
        addr: addr.to_string(),
        reason,
    };
    let candidates = addr
        .resolve()
        .map_err(|e| fail(format!("the address does not resolve: {e}")))?;
    let mut last = None;
    for a in candidates {
        match bind_one(a) {
            Ok(l) => return Ok(l),
            Err(e) if is_unavailable_here(&e) => last = Some(e),
            Err(e) => return Err(fail(describe_bind_error(&e))),
        }
    }
    Err(fail(last.map_or_else(
        || "the address resolves to nothing".into(),
        |e| describe_bind_error(&e),
    )))
}

fn is_unavailable_here(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(libc::EAFNOSUPPORT)
}

fn describe_bind_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            format!("the address is already in use (another cardgate, or another program?): {e}")
        }
        io::ErrorKind::PermissionDenied => format!("not allowed to bind it (ports below 1024 need privileges): {e}"),
        io::ErrorKind::AddrNotAvailable => format!("this machine has no such address: {e}"),
        _ => e.to_string(),
    }
}

/// Makes sure `path` is a directory this process can write, creating it (and its
/// parents) on a first start.
pub fn prepare_data_dir(path: &Path) -> Result<(), StartError> {
    let fail = |reason: String| StartError::DataDir {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(fail("exists and is not a directory".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|e| fail(format!("cannot create it: {e}")))?;
        }
        Err(e) => return Err(fail(format!("cannot use it: {e}"))),
    }
    let check = path.join(WRITE_CHECK_FILE);
    std::fs::write(&check, b"").map_err(|e| fail(format!("is not writable: {e}")))?;
    std::fs::remove_file(&check).map_err(|e| fail(format!("is not writable: {e}")))?;
    Ok(())
}

/// The central store as configured, not yet connected. A URL that cannot be parsed is
/// a start-up error: it would never work.
pub fn central_store(config: &Config) -> Result<CentralStore, StartError> {
    match &config.central.url {
        Some(url) => CentralStore::open(url).map_err(|e| StartError::Central(e.to_string())),
        None => Ok(CentralStore::open_sqlite_file(&config.data_dir.join("central.db"))),
    }
}

/// What the start-up probe found.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// The store answers; PostgreSQL says which schema the tables go to.
    Ready { schema: Option<String> },
    /// No answer within the deadline, or the connection failed: the flusher keeps
    /// trying; entries wait in the journal.
    Unreachable(String),
    /// The store answers but cannot work as configured until someone fixes it.
    Misconfigured(String),
}

/// Looks at the central store once, without writing to it.
pub async fn probe_central(url: Option<&str>) -> Probe {
    let Some(url) = url else {
        // The default SQLite file lives in the data directory, which is writable.
        return Probe::Ready { schema: None };
    };
    let deadline = Duration::from_millis(CENTRAL_PROBE_MS);
    if url.starts_with("sqlite:") {
        return probe_sqlite(url);
    }
    match tokio::time::timeout(deadline, probe_postgres(url)).await {
        Ok(p) => p,
        Err(_) => Probe::Unreachable(format!("no answer within {CENTRAL_PROBE_MS} ms")),
    }
}

/// SQLite is only checked for its directory: opening the file here could race the
/// flusher's first connection, which switches the file to WAL and needs it alone.
fn probe_sqlite(url: &str) -> Probe {
    let options = match sqlx::sqlite::SqliteConnectOptions::from_str(url) {
        Ok(o) => o,
        Err(e) => return Probe::Misconfigured(e.to_string()),
    };
    let file = options.get_filename();
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if dir.is_dir() {
        Probe::Ready { schema: None }
    } else {
        Probe::Misconfigured(format!(
            "the directory {} of {} does not exist; create it or fix central.url",
            dir.display(),
            file.display()
        ))
    }
}

async fn probe_postgres(url: &str) -> Probe {
    let options = match sqlx::postgres::PgConnectOptions::from_str(url) {
        Ok(o) => o,
        Err(e) => return Probe::Misconfigured(e.to_string()),
    };
    let mut conn = match sqlx::postgres::PgConnection::connect_with(&options).await {
        Ok(c) => c,
        Err(e) => {
            // Class 28 (authentication) and 3D000 (no such database) will not pass by
            // themselves; anything else may be the network or a restarting server.
            let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
            return match code.as_deref() {
                Some(c) if c.starts_with("28") || c == "3D000" => Probe::Misconfigured(e.to_string()),
                _ => Probe::Unreachable(e.to_string()),
            };
        }
    };
    // NULL when no schema named in search_path exists: every CREATE TABLE would fail
    // with "no schema has been selected to create in".
    let schema: Result<Option<String>, sqlx::Error> = sqlx::query_scalar("SELECT current_schema()::TEXT")
        .fetch_one(&mut conn)
        .await;
    let _ = conn.close().await;
    match schema {
        Ok(Some(s)) => Probe::Ready { schema: Some(s) },
        Ok(None) => Probe::Misconfigured(format!(
            "no schema named in its search_path ({}) exists; create it (CREATE SCHEMA name) or fix the URL's \
             options=-c%20search_path%3Dname",
            search_path_of(&options).unwrap_or_else(|| "the server's default".into())
        )),
        Err(e) => Probe::Unreachable(e.to_string()),
    }
}

/// The `search_path` an URL's `options` set, if any (for the message above).
fn search_path_of(options: &sqlx::postgres::PgConnectOptions) -> Option<String> {
    let opts = options.get_options()?;
    let at = opts.find("search_path=")?;
    let rest = &opts[at + "search_path=".len()..];
    Some(rest.split(' ').next().unwrap_or(rest).to_string())
}

/// Logs what the probe found: one line, at the level of what it means.
pub fn log_probe(store: &str, probe: &Probe) {
    match probe {
        Probe::Ready { schema: Some(s) } => {
            tracing::info!(store, schema = %s, "central store answers")
        }
        Probe::Ready { schema: None } => tracing::info!(store, "central store ready"),
        Probe::Unreachable(why) => tracing::warn!(
            store,
            "central store unreachable at start-up ({why}); serving terminals anyway: entries wait in the \
             journal and ship when it answers"
        ),
        Probe::Misconfigured(why) => tracing::error!(
            store,
            "central store cannot be used as configured: {why}; serving terminals anyway: entries wait in the \
             journal until it is fixed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_port_names_the_listener_the_address_and_the_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: ListenAddr = taken.local_addr().unwrap().into();
        let err = bind(ListenerKind::Admin, &addr, std::net::TcpListener::bind).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("the admin API"), "{msg}");
        assert!(msg.contains(&addr.to_string()), "{msg}");
        assert!(msg.contains("admin_listen") && msg.contains("--admin-listen"), "{msg}");
        assert!(msg.contains("already in use"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn a_name_that_does_not_resolve_is_reported_as_such() {
        let addr: ListenAddr = "no-such-host.invalid:7700".parse().unwrap();
        let msg = bind(ListenerKind::Terminals, &addr, std::net::TcpListener::bind)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("does not resolve") && msg.contains("no-such-host.invalid:7700"),
            "{msg}"
        );
    }

    #[test]
    fn data_dir_that_is_a_file_or_under_a_file_is_refused_and_a_new_one_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let msg = prepare_data_dir(&file).unwrap_err().to_string();
        assert!(msg.contains("not a directory"), "{msg}");
        let msg = prepare_data_dir(&file.join("data")).unwrap_err().to_string();
        assert!(msg.contains("cannot use it"), "{msg}");
        let fresh = tmp.path().join("a/b/data");
        prepare_data_dir(&fresh).unwrap();
        assert!(fresh.is_dir());
        assert_eq!(
            std::fs::read_dir(&fresh).unwrap().count(),
            0,
            "the check leaves nothing"
        );
    }

    #[test]
    fn search_path_is_read_from_both_url_forms() {
        for url in [
            "postgres://u@h/db?options=-c%20search_path%3Dcampus",
            "postgres://u@h/db?options[search_path]=campus",
        ] {
            let o = sqlx::postgres::PgConnectOptions::from_str(url).unwrap();
            assert_eq!(search_path_of(&o).as_deref(), Some("campus"), "{url}");
        }
    }

    #[test]
    fn a_sqlite_store_in_a_missing_directory_is_misconfigured() {
        let missing = probe_sqlite("sqlite:///nonexistent-dir-for-cardgate/central.db");
        assert!(
            matches!(&missing, Probe::Misconfigured(m) if m.contains("does not exist")),
            "{missing:?}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/central.db", tmp.path().display());
        assert_eq!(probe_sqlite(&url), Probe::Ready { schema: None });
    }
}
