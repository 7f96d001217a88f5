//! Reading every demo card's balance through the terminal protocol, for the
//! conservation check: the sum before the run, minus the purchases the gateway approved,
//! plus the reversals it approved, must equal the sum after.
//!
//! It uses BALANCE_INQUIRY over a few connections, each pipelining up to the gateway's
//! `pipeline_depth_max`, so it needs nothing but terminal keys and works whether or not
//! the operator API exists. The sum is only meaningful if nothing else moves money on
//! the cards it reads while the run is on: see `docs/PERFORMANCE.md`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cardgate_codec::{BalanceInquiry, Message};
use cardgate_ledger::demo::{demo_card, demo_secret};

use crate::client::{ClientError, TerminalClient};
use crate::source::SourceAddrs;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("terminal {terminal}: {source}")]
    Client {
        terminal: u64,
        #[source]
        source: ClientError,
    },
    #[error("card {card} (account {account}) was answered {answer:?}; is --accounts larger than the campus?")]
    Refused {
        card: u64,
        account: u64,
        answer: Box<Message>,
    },
    #[error("no answer to a balance inquiry within {0:?}")]
    Timeout(Duration),
}

/// The balances of cards `1..=accounts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalanceSum {
    pub cards: u64,
    pub total_fen: i128,
}

/// Where to read from and how.
#[derive(Clone, Debug)]
pub struct ScanPlan {
    pub target: std::net::SocketAddr,
    /// Demo terminal ids `first_terminal..first_terminal + connections` sign on.
    pub first_terminal: u64,
    pub connections: u64,
    pub accounts: u64,
    pub answer_timeout: Duration,
}

/// Reads every balance; `done` counts cards read, for a progress bar.
pub async fn sum_balances(
    plan: &ScanPlan,
    sources: &Arc<SourceAddrs>,
    done: Arc<AtomicU64>,
) -> Result<BalanceSum, ScanError> {
    let connections = plan.connections.clamp(1, plan.accounts.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let plan = plan.clone();
        let sources = sources.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let terminal = plan.first_terminal + c;
            // Connection c reads accounts c+1, c+1+connections, ...
            let accounts = (c + 1..=plan.accounts).step_by(connections as usize);
            scan_one(&plan, &sources, terminal, accounts, &done).await
        });
    }
    let mut sum = BalanceSum::default();
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(part)) => {
                sum.cards += part.cards;
                sum.total_fen += part.total_fen;
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(sum),
    }
}

async fn scan_one(
    plan: &ScanPlan,
    sources: &SourceAddrs,
    terminal: u64,
    mut accounts: impl Iterator<Item = u64>,
    done: &AtomicU64,
) -> Result<BalanceSum, ScanError> {
    let client_err = |source| ScanError::Client { terminal, source };
    let (_, source) = sources.first(terminal);
    let mut client = TerminalClient::connect_from(plan.target, source, terminal, &demo_secret(terminal))
        .await
        .map_err(client_err)?;
    let depth = usize::from(client.sign_on.pipeline_depth_max.max(1));
    let mut sum = BalanceSum::default();
    let mut outstanding: VecDeque<(u32, u64)> = VecDeque::with_capacity(depth);
    let mut exhausted = false;
    loop {
        while !exhausted && outstanding.len() < depth {
            match accounts.next() {
                Some(account) => {
                    let card = demo_card(account);
                    let id = client
                        .feed(Message::BalanceInquiry(BalanceInquiry { card }))
                        .await
                        .map_err(client_err)?;
                    outstanding.push_back((id, account));
                }
                None => exhausted = true,
            }
        }
        if outstanding.is_empty() {
            break;
        }
        client.flush().await.map_err(client_err)?;
        let frame = tokio::time::timeout(plan.answer_timeout, client.recv())
            .await
            .map_err(|_| ScanError::Timeout(plan.answer_timeout))?
            .map_err(client_err)?;
        // Frames that answer nothing we asked (a pushed notice) are not ours to judge.
        let Some(pos) = outstanding.iter().position(|(id, _)| *id == frame.request_id) else {
            continue;
        };
        let Some((_, account)) = outstanding.remove(pos) else {
            continue;
        };
        let card = demo_card(account);
        match frame.message {
            Message::Balance(b) if b.card == card => {
                sum.cards += 1;
                sum.total_fen += i128::from(b.balance_fen);
                done.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                return Err(ScanError::Refused {
                    card: card.0,
                    account,
                    answer: Box::new(other),
                });
            }
        }
    }
    Ok(sum)
}
