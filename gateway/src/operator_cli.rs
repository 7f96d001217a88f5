//! `cardgate operator add|password|list`: the first operator comes from the command
//! line, on the gateway machine. With the daemon stopped the command opens the data
//! directory itself; while the daemon runs (it holds sled's lock) the command asks it
//! through the control socket in the data directory (`control.rs`). Later operators can
//! also come from the admin API or the console.
//!
//! A console password is never an argument: arguments are visible to every user of the
//! machine (`ps`, /proc) and stay in shell histories. It is read from a file (`-` is
//! standard input, for a secret store piping it in) or typed at a prompt that does not
//! echo.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use cardgate_domain::operator::{PASSWORD_BYTES_MAX, validate_password};
use cardgate_ledger::{Ledger, LedgerConfig, LedgerError, SystemClock};

use crate::control::{self, OperatorLine, Reply, Request};

/// Where a console password comes from.
#[derive(Clone, Debug)]
pub enum PasswordFrom {
    /// The first line of a file; `-` is standard input.
    File(PathBuf),
    /// Typed twice at a prompt without echo.
    Prompt,
}

pub enum Cmd {
    Add {
        name: String,
        role: String,
        data_dir: PathBuf,
        password: Option<PasswordFrom>,
    },
    /// Sets (or resets) an operator's console password; its owner is asked for a new
    /// one at the next sign-in.
    Password {
        name: String,
        data_dir: PathBuf,
        from: PasswordFrom,
    },
    List {
        data_dir: PathBuf,
    },
}

/// Reads a password, before the data directory is opened, so that a typo in the prompt
/// costs nothing.
fn read_password(from: &PasswordFrom) -> anyhow::Result<String> {
    let password = match from {
        PasswordFrom::File(path) => {
            let mut raw = String::new();
            if path.as_os_str() == "-" {
                std::io::stdin()
                    .take(PASSWORD_BYTES_MAX as u64 + 2)
                    .read_to_string(&mut raw)
                    .context("reading the password from standard input")?;
            } else {
                std::fs::File::open(path)
                    .and_then(|f| f.take(PASSWORD_BYTES_MAX as u64 + 2).read_to_string(&mut raw))
                    .with_context(|| format!("reading the password from {}", path.display()))?;
            }
            // One line: the newline a file or `echo` ends it with is not part of it.
            raw.lines().next().unwrap_or("").to_string()
        }
        PasswordFrom::Prompt => {
            let first = rpassword::prompt_password("console password: ").context("reading the password")?;
            let again = rpassword::prompt_password("again: ").context("reading the password")?;
            if first != again {
                bail!("the two passwords differ; nothing changed");
            }
            first
        }
    };
    validate_password(&password).map_err(|e| anyhow::anyhow!("{}; nothing changed", e.0))?;
    Ok(password)
}

/// The data directory, opened by us or held by a running daemon.
enum Opened {
    Here(Arc<Ledger>, cardgate_journal::CommitterHandle),
    InUse,
}

/// sled's own files: a directory holding neither was never a gateway's.
const SLED_FILES: [&str; 2] = ["conf", "db"];

/// Whether `dir` may be opened: `create` allows a missing or empty directory (a first
/// operator before a first start); otherwise it must be a gateway's data directory, so
/// that a mistyped `--data-dir` is an error and not a new, empty gateway.
fn check_data_dir(dir: &Path, create: bool) -> anyhow::Result<()> {
    let hint = "is --data-dir right? `cardgate serve` or `cardgate operator add` creates one";
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if create {
                return Ok(());
            }
            bail!("no data directory at {} ({hint})", dir.display());
        }
        Err(e) => bail!("cannot read the data directory {}: {e}", dir.display()),
        Ok(m) if !m.is_dir() => bail!("{} is not a directory", dir.display()),
        Ok(_) => {}
    }
    if SLED_FILES.iter().any(|f| dir.join(f).exists()) {
        return Ok(());
    }
    let empty = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .next()
        .is_none();
    if empty && create {
        return Ok(());
    }
    bail!("{} is not a cardgate data directory ({hint})", dir.display())
}

fn open(data_dir: &Path) -> anyhow::Result<Opened> {
    match Ledger::open(data_dir, LedgerConfig::default(), Arc::new(SystemClock)) {
        Ok((l, c, _)) => Ok(Opened::Here(l, c)),
        Err(LedgerError::Store(e)) if is_lock_error(&e) => Ok(Opened::InUse),
        Err(e) => Err(e).with_context(|| format!("opening {}", data_dir.display())),
    }
}

fn is_lock_error(e: &cardgate_journal::StoreError) -> bool {
    let s = e.to_string().to_lowercase();
    s.contains("lock") || s.contains("resource temporarily unavailable") || s.contains("would block")
}

/// Asks the daemon holding `data_dir`.
async fn ask(data_dir: &Path, req: Request) -> anyhow::Result<Reply> {
    match control::call(data_dir, &req).await {
        Ok(Reply::Refused { error }) => bail!("{error}"),
        Ok(reply) => Ok(reply),
        Err(e) => bail!(
            "{} is in use by a running cardgate, and {e}; stop it first, or add the operator through the admin API \
             (POST /api/v1/operators)",
            data_dir.display()
        ),
    }
}

async fn close(ledger: Arc<Ledger>, committer: cardgate_journal::CommitterHandle) -> anyhow::Result<()> {
    drop(ledger);
    tokio::task::spawn_blocking(move || committer.join())
        .await
        .context("waiting for the journal to close")
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Add {
            name,
            role,
            data_dir,
            password,
        } => {
            control::parse_role(&role).map_err(anyhow::Error::msg)?;
            let password = password.as_ref().map(read_password).transpose()?;
            check_data_dir(&data_dir, true)?;
            let (op, token) = match open(&data_dir)? {
                Opened::Here(ledger, committer) => {
                    let added = control::add_operator(&ledger, &name, &role, password.as_deref()).await;
                    close(ledger, committer).await?;
                    let (op, token) = added.map_err(anyhow::Error::msg)?;
                    (OperatorLine::new(&op, password.is_some()), token)
                }
                Opened::InUse => match ask(&data_dir, Request::OperatorAdd { name, role, password }).await? {
                    Reply::Added { operator, token } => (operator, token),
                    other => bail!("unexpected answer from the running gateway: {other:?}"),
                },
            };
            eprintln!(
                "operator {} (id {}, role {}) added{}; its token is shown only now:",
                op.name,
                op.id,
                op.role,
                if op.password {
                    " with a console password (to be changed at the first sign-in)"
                } else {
                    ""
                }
            );
            println!("{token}");
        }
        Cmd::Password { name, data_dir, from } => {
            let password = read_password(&from)?;
            check_data_dir(&data_dir, false)?;
            let op = match open(&data_dir)? {
                Opened::Here(ledger, committer) => {
                    let set = control::set_password(&ledger, &name, &password).await;
                    close(ledger, committer).await?;
                    OperatorLine::new(&set.map_err(anyhow::Error::msg)?, true)
                }
                Opened::InUse => match ask(&data_dir, Request::OperatorPassword { name, password }).await? {
                    Reply::PasswordSet { operator } => operator,
                    other => bail!("unexpected answer from the running gateway: {other:?}"),
                },
            };
            eprintln!(
                "console password of {} (id {}) set; they choose a new one at their next sign-in",
                op.name, op.id
            );
        }
        Cmd::List { data_dir } => {
            check_data_dir(&data_dir, false)?;
            let operators = match open(&data_dir)? {
                Opened::Here(ledger, committer) => {
                    let ops: Vec<OperatorLine> = control::operator_lines(&ledger);
                    close(ledger, committer).await?;
                    ops
                }
                Opened::InUse => match ask(&data_dir, Request::OperatorList).await? {
                    Reply::Operators { operators } => operators,
                    other => bail!("unexpected answer from the running gateway: {other:?}"),
                },
            };
            for o in operators {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    o.id,
                    o.name,
                    o.role,
                    if o.enabled { "enabled" } else { "disabled" },
                    if o.password { "console password" } else { "token only" }
                );
            }
        }
    }
    Ok(())
}
