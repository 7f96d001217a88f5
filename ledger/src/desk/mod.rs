//! The card desk's operations, by concern: persons and their accounts (`persons.rs`),
//! the card lifecycle (`cards.rs`), desk money and batch grants (`money.rs`), operators
//! and parameters (`operators.rs`).
//!
//! Every operation follows the one write protocol (`txn.rs`): the journal slot before
//! any lock; the rule (`cardgate_domain::rules`); the entry carrying the values it
//! leaves and the operator who acted; the operation's audit record in the same
//! submission; the state records it changed; and the answer only once durable.
//! `recovery.rs` rebuilds exactly the same state. A change becomes visible in memory
//! only once its submission is queued, so nothing can use it before the journal has it.

mod cards;
mod money;
mod operators;
mod persons;

pub(crate) use persons::new_account;

use std::sync::atomic::{AtomicBool, Ordering};

use cardgate_domain::entry::{CardChange, EntryBody, MoneyMove};
use cardgate_domain::model::{Account, AccountKind, AuditRecord, Card};
use cardgate_domain::operator::{Actor, TOKEN_BYTES, TOKEN_PREFIX, TokenHash, hash_token};
use serde::Serialize;

use crate::ledger::Ledger;
use crate::records::Writes;
use crate::txn::{Durable, Txn};

/// How the audit trail records a desk operation. The record travels in the operation's
/// own submission, so that a crash never leaves an operation without its record.
pub struct Audit<'a, T> {
    /// e.g. `card.lost`.
    pub action: &'a str,
    /// e.g. `card:6222000012345678`.
    pub target: &'a str,
    /// The status the caller answers a success with (HTTP 200 or 201).
    pub status: u16,
    /// Before and after, as the caller shows them, from the operation's result.
    pub describe: &'a (dyn Fn(&T) -> (String, String) + Send + Sync),
    /// Set once the record went into the journal with the operation; a call that ends
    /// without it (refused, or nothing to change) is the caller's to record.
    pub written: &'a AtomicBool,
}

/// Who asked for a desk operation, and how it is audited.
pub struct By<'a, T> {
    pub actor: &'a Actor,
    pub audit: Option<Audit<'a, T>>,
}

impl<'a, T> By<'a, T> {
    /// An operation on behalf of `actor` without an audit record (tests, the command
    /// line on the gateway machine).
    pub fn actor(actor: &'a Actor) -> By<'a, T> {
        By { actor, audit: None }
    }

    pub fn audited(actor: &'a Actor, audit: Audit<'a, T>) -> By<'a, T> {
        By {
            actor,
            audit: Some(audit),
        }
    }
}

impl Ledger {
    /// The audit record of an operation that produced `result`, if it is audited; its
    /// id is taken now, so call it just before sending.
    fn audit_record<T>(&self, by: &By<'_, T>, result: &T, now_ms: i64) -> Option<AuditRecord> {
        let audit = by.audit.as_ref()?;
        let (before, after) = (audit.describe)(result);
        audit.written.store(true, Ordering::Release);
        Some(AuditRecord {
            id: self.state.new_audit_id(),
            time_ms: now_ms,
            actor: Some(by.actor.clone()),
            action: audit.action.to_string(),
            target: audit.target.to_string(),
            status: audit.status,
            before,
            after,
            detail: String::new(),
        })
    }

    /// Sends a desk operation's entry and its audit record in one submission, under the
    /// caller's locks; `result` is released once both are durable.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_desk<T>(
        &self,
        txn: Txn<'_>,
        by: &By<'_, T>,
        result: T,
        now_ms: i64,
        body: EntryBody,
        records: Writes,
        tx_id: u64,
    ) -> Durable<T> {
        let audit = self.audit_record(by, &result, now_ms);
        let sent = txn.send_audited(result, now_ms, body, records, tx_id, audit.clone());
        if let Some(a) = audit {
            self.state.audit().insert(a);
            metrics::counter!("cardgate_audit_records_total").increment(1);
        }
        sent
    }
}

/// What a card operation did, for the API's answer and its audit record.
#[derive(Clone, Debug)]
pub struct CardResult {
    pub entry_id: u64,
    pub before: Vec<Card>,
    pub change: CardChange,
    pub account_before: Option<Account>,
    pub blacklist_version: u64,
}

/// What a desk money operation did.
#[derive(Clone, Debug)]
pub struct MoneyResult {
    pub entry_id: u64,
    pub before: Account,
    pub movement: MoneyMove,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BatchReport {
    pub batch_id: String,
    /// Items applied by this call.
    pub applied: usize,
    /// Items an earlier call with the same batch id already applied (or, for a
    /// cancellation, accounts already closed).
    pub already_done: usize,
    /// Items skipped because their account was closed meanwhile.
    pub skipped: usize,
    pub total_fen: i64,
    pub blacklist_version: u64,
}

/// Input for opening a person and account.
#[derive(Clone, Debug)]
pub struct NewPerson {
    pub id: String,
    pub name: String,
    pub department: String,
    pub kind: AccountKind,
}

/// A new random operator token and its hash; the token is shown once.
pub fn new_token() -> (String, TokenHash) {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
    token.push_str(TOKEN_PREFIX);
    for b in bytes {
        token.push_str(&format!("{b:02x}"));
    }
    let hash = hash_token(&token);
    (token, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_hash_matches() {
        let (a, ha) = new_token();
        let (b, hb) = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a), ha);
        assert_ne!(ha, hb);
    }
}
