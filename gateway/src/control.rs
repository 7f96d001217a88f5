//! The control socket: how `cardgate operator add|list` reaches a running daemon.
//!
//! sled lets one process hold a data directory, so while the daemon runs the command
//! line cannot open it; and the admin API needs a token, which the first operator does
//! not have yet. The daemon therefore listens on a Unix socket inside its data
//! directory (`control.sock`, mode 0600) and accepts a connection only from the user
//! who owns the data directory, or root: exactly who could open the directory with the
//! daemon stopped. It speaks one JSON line each way, for the operator commands only
//! (add, list, set a console password); everything else belongs to the admin API.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use cardgate_domain::operator::{Actor, Operator, Role};
use cardgate_ledger::Ledger;
use cardgate_ledger::desk::{Audit, By, PasswordChanged};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The socket's name inside the data directory.
pub const SOCKET_FILE: &str = "control.sock";

/// A request is one line naming an operator, a role and perhaps a password (at most
/// `PASSWORD_BYTES_MAX`); 4 KiB is far beyond any, and it
/// bounds what a local client can make the daemon buffer.
const REQUEST_BYTES_MAX: usize = 4096;

/// How long a client gets to send its request and the daemon to answer it: adding an
/// operator is one group commit; a client that connects and says nothing must not hold
/// a task until shutdown.
const EXCHANGE_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    OperatorAdd {
        name: String,
        role: String,
        /// A first console password, to be changed at the first sign-in.
        #[serde(default)]
        password: Option<String>,
    },
    OperatorList,
    /// Sets (resets) a console password, to be changed at the next sign-in.
    OperatorPassword {
        name: String,
        password: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Added { operator: OperatorLine, token: String },
    Operators { operators: Vec<OperatorLine> },
    PasswordSet { operator: OperatorLine },
    Refused { error: String },
}

/// An operator as the command line prints it.
#[derive(Debug, Serialize, Deserialize)]
pub struct OperatorLine {
    pub id: u64,
    pub name: String,
    pub role: String,
    pub enabled: bool,
    /// It has a console password.
    #[serde(default)]
    pub password: bool,
}

impl OperatorLine {
    pub fn new(o: &Operator, password: bool) -> OperatorLine {
        OperatorLine {
            id: o.id,
            name: o.name.clone(),
            role: o.role.as_str().to_string(),
            enabled: o.enabled,
            password,
        }
    }
}

/// Every operator as the command line prints it.
pub fn operator_lines(ledger: &Ledger) -> Vec<OperatorLine> {
    ledger
        .operators()
        .iter()
        .map(|o| OperatorLine::new(o, ledger.has_password(o.id)))
        .collect()
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

/// Adds an operator on behalf of the command line, with a first console password if
/// one is given: shared by the daemon (over the socket) and the command line (data
/// directory opened directly).
pub async fn add_operator(
    ledger: &Ledger,
    name: &str,
    role: &str,
    password: Option<&str>,
) -> Result<(Operator, String), String> {
    let role = parse_role(role)?;
    if let Some(p) = password {
        // Checked before the operator exists, so that a bad one adds nothing.
        cardgate_domain::operator::validate_password(p).map_err(|e| format!("{}; nothing changed", e.0))?;
    }
    let cli = Actor::cli();
    // Audited as the API's calls are, by `cli` (the gateway machine's command line): a
    // director added there must be on the director's trail like any other.
    let describe = |o: &Operator| (String::new(), crate::admin::routes::operator_json(o).to_string());
    let no_answer = |_: &Operator| String::new();
    let written = AtomicBool::new(false);
    let audit = Audit {
        action: "operator.add",
        target: "operators",
        status: 201,
        describe: &describe,
        written: &written,
        answer: &no_answer,
        idempotency: None,
    };
    let (op, token) = ledger
        .add_operator(&By::audited(&cli, audit), name, role)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(p) = password {
        // Chosen by whoever set the operator up: its owner picks their own at the
        // first sign-in.
        set_password_of(ledger, &op, p).await?;
    }
    Ok((op, token))
}

/// An operator's console password set from the command line, audited as a reset.
async fn set_password_of(ledger: &Ledger, op: &Operator, password: &str) -> Result<Operator, String> {
    let cli = Actor::cli();
    let describe = |r: &PasswordChanged| {
        (
            serde_json::json!({ "password": if r.first { "none" } else { "set" } }).to_string(),
            serde_json::json!({ "password": "set", "must_change": r.must_change }).to_string(),
        )
    };
    let no_answer = |_: &PasswordChanged| String::new();
    let written = AtomicBool::new(false);
    let target = format!("operator:{}", op.id);
    let audit = Audit {
        action: "operator.password_reset",
        target: &target,
        status: 200,
        describe: &describe,
        written: &written,
        answer: &no_answer,
        idempotency: None,
    };
    ledger
        .set_password(&By::audited(&cli, audit), op.id, password, true)
        .await
        .map(|r| r.operator)
        .map_err(|e| e.to_string())
}

/// Sets an operator's console password on behalf of the command line; its owner
/// chooses a new one at the next sign-in.
pub async fn set_password(ledger: &Ledger, name: &str, password: &str) -> Result<Operator, String> {
    let op = ledger
        .operators()
        .into_iter()
        .find(|o| o.name == name)
        .ok_or_else(|| format!("no operator named {name}"))?;
    set_password_of(ledger, &op, password).await
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
        Request::OperatorAdd { name, role, password } => {
            match add_operator(ledger, &name, &role, password.as_deref()).await {
                Ok((op, token)) => {
                    tracing::info!(operator = %op.name, role = op.role.as_str(), "operator added from the command line");
                    Reply::Added {
                        operator: OperatorLine::new(&op, password.is_some()),
                        token,
                    }
                }
                Err(error) => Reply::Refused { error },
            }
        }
        Request::OperatorList => Reply::Operators {
            operators: operator_lines(ledger),
        },
        Request::OperatorPassword { name, password } => match set_password(ledger, &name, &password).await {
            Ok(op) => {
                tracing::info!(operator = %op.name, "console password set from the command line");
                Reply::PasswordSet {
                    operator: OperatorLine::new(&op, true),
                }
            }
            Err(error) => Reply::Refused { error },
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
