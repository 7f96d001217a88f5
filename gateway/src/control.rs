//! The control socket: how `cardgate operator add|list` reaches a running daemon.
//!
//! sled lets one process hold a data directory, so while the daemon runs the command
//! line cannot open it; and the admin API needs a token, which the first operator does
//! not have yet. The daemon therefore listens on a Unix socket inside its data
//! directory (`control.sock`, mode 0600) and accepts a connection only from the user
//! who owns the data directory, or root: exactly who could open the directory with the
//! daemon stopped. It speaks one JSON line each way, for the two operator commands
//! only; everything else belongs to the admin API.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cardgate_domain::operator::{Actor, Operator, Role};
use cardgate_ledger::Ledger;
use cardgate_ledger::desk::By;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The socket's name inside the data directory.
pub const SOCKET_FILE: &str = "control.sock";

/// A request is one line naming an operator and a role; 4 KiB is far beyond any, and it
/// bounds what a local client can make the daemon buffer.
const REQUEST_BYTES_MAX: usize = 4096;

/// How long a client gets to send its request and the daemon to answer it: adding an
/// operator is one group commit; a client that connects and says nothing must not hold
/// a task until shutdown.
const EXCHANGE_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    OperatorAdd { name: String, role: String },
    OperatorList,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Added { operator: OperatorLine, token: String },
    Operators { operators: Vec<OperatorLine> },
    Refused { error: String },
}

/// An operator as the command line prints it.
#[derive(Debug, Serialize, Deserialize)]
pub struct OperatorLine {
    pub id: u64,
    pub name: String,
    pub role: String,
    pub enabled: bool,
}

impl From<&Operator> for OperatorLine {
    fn from(o: &Operator) -> OperatorLine {
        OperatorLine {
            id: o.id,
            name: o.name.clone(),
            role: o.role.as_str().to_string(),
            enabled: o.enabled,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the running gateway through {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to the running gateway: {0}")]
    Io(#[from] io::Error),
    #[error("the running gateway did not answer within {EXCHANGE_TIMEOUT_MS} ms")]
    Timeout,
    #[error("the running gateway answered something unreadable: {0}")]
    Reply(String),
}

/// Adds an operator on behalf of the command line: shared by the daemon (over the
/// socket) and the command line (data directory opened directly).
pub async fn add_operator(ledger: &Ledger, name: &str, role: &str) -> Result<(Operator, String), String> {
    let role = parse_role(role)?;
    ledger
        .add_operator(&By::actor(&Actor::cli()), name, role)
        .await
        .map_err(|e| e.to_string())
}

/// A role by name, or a message listing them all.
pub fn parse_role(role: &str) -> Result<Role, String> {
    Role::parse(role).ok_or_else(|| {
        let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("unknown role {role:?}; one of {}", all.join(", "))
    })
}

/// Binds the socket in `data_dir`. Call only once the ledger is open: holding sled's
/// lock is what makes removing a socket left by a killed daemon safe.
pub fn bind(data_dir: &Path) -> io::Result<(UnixListener, PathBuf)> {
    let path = data_dir.join(SOCKET_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, path))
}

/// Serves the socket until `shutdown`, then waits for the exchanges in progress and
/// removes the socket file.
pub async fn serve(listener: UnixListener, path: PathBuf, ledger: Arc<Ledger>, shutdown: CancellationToken) {
    // The socket's mode already keeps other users out; checking the peer also closes
    // the moment between bind and chmod.
    let owner = std::fs::metadata(path.parent().unwrap_or(Path::new("."))).map(|m| m.uid());
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "control socket accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let allowed = match (stream.peer_cred(), &owner) {
            (Ok(peer), Ok(owner)) => peer.uid() == 0 || peer.uid() == *owner,
            _ => false,
        };
        if !allowed {
            tracing::warn!("control socket: refused a connection from a user who does not own the data directory");
            continue;
        }
        let ledger = ledger.clone();
        tracker.spawn(async move {
            let limit = Duration::from_millis(EXCHANGE_TIMEOUT_MS);
            if tokio::time::timeout(limit, exchange(stream, &ledger)).await.is_err() {
                tracing::debug!("control socket: exchange timed out");
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    let _ = std::fs::remove_file(&path);
}

async fn exchange(stream: UnixStream, ledger: &Ledger) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut read = BufReader::new(read).take(REQUEST_BYTES_MAX as u64);
    let reply = match read.read_until(b'\n', &mut line).await {
        Err(e) => Reply::Refused { error: e.to_string() },
        Ok(_) if !line.ends_with(b"\n") => Reply::Refused {
            error: format!("a request is one line of at most {REQUEST_BYTES_MAX} bytes"),
        },
        Ok(_) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => Reply::Refused { error: e.to_string() },
            Ok(req) => answer(req, ledger).await,
        },
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    let _ = write.write_all(&out).await;
    let _ = write.shutdown().await;
}

async fn answer(req: Request, ledger: &Ledger) -> Reply {
    match req {
        Request::OperatorAdd { name, role } => match add_operator(ledger, &name, &role).await {
            Ok((op, token)) => {
                tracing::info!(operator = %op.name, role = op.role.as_str(), "operator added from the command line");
                Reply::Added {
                    operator: OperatorLine::from(&op),
                    token,
                }
            }
            Err(error) => Reply::Refused { error },
        },
        Request::OperatorList => Reply::Operators {
            operators: ledger.operators().iter().map(OperatorLine::from).collect(),
        },
    }
}

/// Sends one request to the daemon running in `data_dir`.
pub async fn call(data_dir: &Path, req: &Request) -> Result<Reply, ControlError> {
    let path = data_dir.join(SOCKET_FILE);
    let exchange = async {
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| ControlError::Connect {
                path: path.clone(),
                source,
            })?;
        let (read, mut write) = stream.into_split();
        let mut out = serde_json::to_vec(req).map_err(|e| ControlError::Reply(e.to_string()))?;
        out.push(b'\n');
        write.write_all(&out).await?;
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        serde_json::from_str(&line).map_err(|e| ControlError::Reply(format!("{e}: {line:?}")))
    };
    tokio::time::timeout(Duration::from_millis(EXCHANGE_TIMEOUT_MS), exchange)
        .await
        .map_err(|_| ControlError::Timeout)?
}
