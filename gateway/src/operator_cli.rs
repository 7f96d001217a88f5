//! `cardgate operator add|password|list`: the first operator comes from the command
//! line, on the gateway machine, with the daemon stopped (sled lets one process open a
//! data directory; the daemon holds it while it runs). Later ones can come from the API
//! or the console.
//!
//! A console password is never an argument: arguments are visible to every user of the
//! machine (`ps`, /proc) and stay in shell histories. It is read from a file (`-` is
//! standard input, for a secret store piping it in) or typed at a prompt that does not
//! echo.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use cardgate_domain::operator::{Actor, PASSWORD_BYTES_MAX, Role, validate_password};
use cardgate_ledger::desk::By;
use cardgate_ledger::{Ledger, LedgerConfig, LedgerError, SystemClock};

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

fn open(data_dir: &std::path::Path) -> anyhow::Result<(Arc<Ledger>, cardgate_journal::CommitterHandle)> {
    match Ledger::open(data_dir, LedgerConfig::default(), Arc::new(SystemClock)) {
        Ok((l, c, _)) => Ok((l, c)),
        Err(LedgerError::Store(e)) if is_lock_error(&e) => bail!(
            "{} is in use by a running cardgate; stop it first, or add the operator through the admin API \
             (POST /api/v1/operators)",
            data_dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("opening {}", data_dir.display())),
    }
}

fn is_lock_error(e: &cardgate_journal::StoreError) -> bool {
    let s = e.to_string().to_lowercase();
    s.contains("lock") || s.contains("resource temporarily unavailable") || s.contains("would block")
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Add {
            name,
            role,
            data_dir,
            password,
        } => {
            let Some(role) = Role::parse(&role) else {
                let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                bail!("unknown role {role:?}; one of {}", all.join(", "));
            };
            let password = password.as_ref().map(read_password).transpose()?;
            let (ledger, committer) = open(&data_dir)?;
            let cli = Actor::cli();
            let added = async {
                let (op, token) = ledger.add_operator(&By::actor(&cli), &name, role).await?;
                if let Some(p) = &password {
                    // Chosen by whoever set the operator up: its owner picks their own
                    // at the first sign-in.
                    ledger.set_password(&By::actor(&cli), op.id, p, true).await?;
                }
                Ok::<_, LedgerError>((op, token))
            }
            .await;
            drop(ledger);
            tokio::task::spawn_blocking(move || committer.join()).await?;
            let (op, token) = added?;
            eprintln!(
                "operator {} (id {}, role {}) added{}; its token is shown only now:",
                op.name,
                op.id,
                op.role.as_str(),
                if password.is_some() {
                    " with a console password (to be changed at the first sign-in)"
                } else {
                    ""
                }
            );
            println!("{token}");
        }
        Cmd::Password { name, data_dir, from } => {
            let password = read_password(&from)?;
            let (ledger, committer) = open(&data_dir)?;
            let set = async {
                let op = ledger
                    .operators()
                    .into_iter()
                    .find(|o| o.name == name)
                    .ok_or_else(|| LedgerError::Invalid(format!("no operator named {name}")))?;
                ledger
                    .set_password(&By::actor(&Actor::cli()), op.id, &password, true)
                    .await
            }
            .await;
            drop(ledger);
            tokio::task::spawn_blocking(move || committer.join()).await?;
            let set = set?;
            eprintln!(
                "console password of {} (id {}) set; they choose a new one at their next sign-in",
                set.operator.name, set.operator.id
            );
        }
        Cmd::List { data_dir } => {
            let (ledger, committer) = open(&data_dir)?;
            for o in ledger.operators() {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    o.id,
                    o.name,
                    o.role.as_str(),
                    if o.enabled { "enabled" } else { "disabled" },
                    if ledger.has_password(o.id) {
                        "console password"
                    } else {
                        "token only"
                    }
                );
            }
            drop(ledger);
            tokio::task::spawn_blocking(move || committer.join()).await?;
        }
    }
    Ok(())
}
