//! `cardgate operator add|list`: the first operator comes from the command line, on the
//! gateway machine, with the daemon stopped (sled lets one process open a data
//! directory; the daemon holds it while it runs). Later ones can come from the API.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use cardgate_domain::operator::{Actor, Role};
use cardgate_ledger::desk::By;
use cardgate_ledger::{Ledger, LedgerConfig, LedgerError, SystemClock};

pub enum Cmd {
    Add {
        name: String,
        role: String,
        data_dir: PathBuf,
    },
    List {
        data_dir: PathBuf,
    },
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
        Cmd::Add { name, role, data_dir } => {
            let Some(role) = Role::parse(&role) else {
                let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                bail!("unknown role {role:?}; one of {}", all.join(", "));
            };
            let (ledger, committer) = open(&data_dir)?;
            let added = ledger.add_operator(&By::actor(&Actor::cli()), &name, role).await;
            drop(ledger);
            tokio::task::spawn_blocking(move || committer.join()).await?;
            let (op, token) = added?;
            eprintln!(
                "operator {} (id {}, role {}) added; its token is shown only now:",
                op.name,
                op.id,
                op.role.as_str()
            );
            println!("{token}");
        }
        Cmd::List { data_dir } => {
            let (ledger, committer) = open(&data_dir)?;
            for o in ledger.operators() {
                println!(
                    "{}\t{}\t{}\t{}",
                    o.id,
                    o.name,
                    o.role.as_str(),
                    if o.enabled { "enabled" } else { "disabled" }
                );
            }
            drop(ledger);
            tokio::task::spawn_blocking(move || committer.join()).await?;
        }
    }
    Ok(())
}
