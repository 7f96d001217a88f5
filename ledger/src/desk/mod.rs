//! The card desk's operations, by concern: persons and their accounts (`persons.rs`),
//! the card lifecycle (`cards.rs`), desk money and batch grants (`money.rs`), operators
//! and parameters (`operators.rs`), operators' console passwords (`passwords.rs`).
//!
//! Every operation follows the one write protocol (`txn.rs`): the journal slot before
//! any lock; the rule (`cardgate_domain::rules`); the entry carrying the values it
//! leaves and the operator who acted; the operation's audit record in the same
//! submission; the state records it changed; and the answer only once durable.
//! `recovery.rs` rebuilds exactly the same state. A change becomes visible in memory
//! only once its submission is queued, so nothing can use it before the journal has it.

mod cards;
mod exceptions;
mod money;
mod operators;
mod passwords;
mod persons;

pub use passwords::{PASSWORD_HASHES_AT_ONCE_MAX, PasswordChanged, SignIn};

pub(crate) use persons::new_account;

use std::sync::atomic::{AtomicBool, Ordering};

use cardgate_domain::entry::{CardChange, EntryBody, EntryRecord, MoneyMove};
use cardgate_domain::model::{Account, AccountKind, AuditRecord, Card, Exception, IdempotentAnswer, Params, Person};
use cardgate_domain::operator::{Actor, Operator, TOKEN_BYTES, TOKEN_PREFIX, TokenHash, hash_token};
use serde::Serialize;
use smallvec::{SmallVec, smallvec};

use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes, answer_key};
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
    /// The answer's JSON body, from the operation's result: kept under the call's
    /// idempotency key, in the same submission, when it has one.
    pub answer: &'a (dyn Fn(&T) -> String + Send + Sync),
    pub idempotency: Option<&'a IdempotencyKey>,
}

/// The records that travel with an operation's entry in its submission.
#[derive(Default)]
pub(crate) struct Extras {
    pub(crate) audit: Option<AuditRecord>,
    pub(crate) answer: Option<IdempotentAnswer>,
}

/// The idempotency key a client sent with a state-changing call, and a hash of the
/// request it came with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: [u8; 32],
}

/// How long an answer is kept under its idempotency key: a client retries within
/// seconds or minutes; a day also covers a desk that retries the next morning.
pub const IDEMPOTENCY_KEEP_MS: i64 = 24 * 3_600_000;

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

/// The records an operation's result changed, as audit targets (`card:N`,
/// `account:N`, ...), so that "who changed this card / this account" finds it.
pub trait Targets {
    fn targets(&self) -> Vec<String>;
}

impl Targets for CardResult {
    fn targets(&self) -> Vec<String> {
        let mut t: Vec<String> = self.change.cards.iter().map(|c| format!("card:{}", c.no.0)).collect();
        let accounts = self
            .change
            .cards
            .iter()
            .map(|c| c.account)
            .chain(self.change.account.map(|a| a.id))
            .chain(self.change.money.as_ref().map(|m| m.account))
            .chain(self.account_before.map(|a| a.id));
        t.extend(accounts.map(|a| format!("account:{a}")));
        t
    }
}

impl Targets for MoneyResult {
    fn targets(&self) -> Vec<String> {
        vec![format!("account:{}", self.movement.account)]
    }
}

impl Targets for (Person, Account) {
    fn targets(&self) -> Vec<String> {
        vec![format!("person:{}", self.0.id), format!("account:{}", self.1.id)]
    }
}

impl Targets for (Person, Account, Person, Account) {
    fn targets(&self) -> Vec<String> {
        vec![format!("person:{}", self.2.id), format!("account:{}", self.3.id)]
    }
}

impl Targets for Operator {
    fn targets(&self) -> Vec<String> {
        vec![format!("operator:{}", self.id)]
    }
}

impl Targets for (Operator, Operator) {
    fn targets(&self) -> Vec<String> {
        vec![format!("operator:{}", self.1.id)]
    }
}

impl Targets for (Params, Params) {
    fn targets(&self) -> Vec<String> {
        vec!["params".into()]
    }
}

impl Targets for (Exception, Exception) {
    fn targets(&self) -> Vec<String> {
        let e = &self.1;
        vec![
            format!("exception:{}", e.id),
            format!("account:{}", e.account),
            format!("card:{}", e.card.0),
        ]
    }
}

/// `first`, then every other target once, space separated.
fn join_targets(first: &str, more: Vec<String>) -> String {
    let mut out: Vec<String> = Vec::with_capacity(more.len() + 1);
    for t in std::iter::once(first.to_string()).chain(more) {
        if !t.is_empty() && !out.contains(&t) {
            out.push(t);
        }
    }
    out.join(" ")
}

impl Ledger {
    /// The audit record of an operation that produced `result`, if it is audited; its
    /// id is taken now, so call it just before sending.
    fn audit_record<T: Targets>(&self, by: &By<'_, T>, result: &T, now_ms: i64) -> Option<AuditRecord> {
        let audit = by.audit.as_ref()?;
        let (before, after) = (audit.describe)(result);
        audit.written.store(true, Ordering::Release);
        Some(AuditRecord {
            id: self.state.new_audit_id(),
            time_ms: now_ms,
            actor: Some(by.actor.clone()),
            action: audit.action.to_string(),
            target: join_targets(audit.target, result.targets()),
            status: audit.status,
            before,
            after,
            detail: String::new(),
        })
    }

    /// The audit record of one item of a batch call (a grant to one account, one
    /// cancellation), so that each record a batch changes is found by its own target;
    /// the call itself is recorded once it ends. Nothing when the call is not audited.
    fn audit_item_record<T, R: Targets>(
        &self,
        by: &By<'_, T>,
        action: &str,
        item: &R,
        (before, after): (String, String),
        detail: String,
        now_ms: i64,
    ) -> Option<AuditRecord> {
        by.audit.as_ref()?;
        Some(AuditRecord {
            id: self.state.new_audit_id(),
            time_ms: now_ms,
            actor: Some(by.actor.clone()),
            action: action.to_string(),
            target: join_targets("", item.targets()),
            status: 200,
            before,
            after,
            detail,
        })
    }

    /// The answer kept under the call's idempotency key, if it has one.
    fn answer_record<T>(&self, by: &By<'_, T>, result: &T, now_ms: i64) -> Option<IdempotentAnswer> {
        let audit = by.audit.as_ref()?;
        let key = audit.idempotency?;
        Some(IdempotentAnswer {
            operator_id: by.actor.operator_id,
            key: key.key.clone(),
            request_hash: key.request_hash,
            status: audit.status,
            body: (audit.answer)(result),
            time_ms: now_ms,
        })
    }

    /// The answer a call with this key got, if it is still kept.
    pub fn idempotent_answer(&self, operator_id: u64, key: &str) -> Option<IdempotentAnswer> {
        self.state
            .answer(operator_id, key)
            .filter(|a| a.time_ms + IDEMPOTENCY_KEEP_MS > self.now_ms())
    }

    /// Keeps the answer of a call that changed nothing (a refusal) or whose changes were
    /// journaled without it (a batch), under its idempotency key.
    pub async fn remember_answer(
        &self,
        actor: &Actor,
        key: &IdempotencyKey,
        status: u16,
        body: String,
    ) -> Result<(), crate::LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        let now = self.now_ms();
        let answer = IdempotentAnswer {
            operator_id: actor.operator_id,
            key: key.key.clone(),
            request_hash: key.request_hash,
            status,
            body,
            time_ms: now,
        };
        let mut records = self.forget_expired_answers(now);
        records.push(StateWrite::Answer(Box::new(answer.clone())));
        let sent = txn.send(
            (),
            now,
            EntryBody::IdempotentAnswer(Box::new(answer.clone())),
            records,
            0,
        );
        self.state.put_answer(answer);
        sent.durable().await?;
        Ok(())
    }

    /// Drops expired answers from memory; the removals of their records, to send with
    /// the next submission.
    fn forget_expired_answers(&self, now_ms: i64) -> Writes {
        self.state
            .take_answers_before(now_ms - IDEMPOTENCY_KEEP_MS)
            .into_iter()
            .map(|a| StateWrite::Staged(answer_key(a.operator_id, &a.key), None))
            .collect()
    }

    /// What travels with an operation: its audit record and its idempotent answer.
    pub(crate) fn extras<T: Targets>(&self, by: &By<'_, T>, result: &T, now_ms: i64) -> Extras {
        Extras {
            audit: self.audit_record(by, result, now_ms),
            answer: self.answer_record(by, result, now_ms),
        }
    }

    /// Sends a desk operation's entry and its audit record in one submission, under the
    /// caller's locks; `result` is released once both are durable.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_desk<T: Targets>(
        &self,
        txn: Txn<'_>,
        by: &By<'_, T>,
        result: T,
        now_ms: i64,
        body: EntryBody,
        records: Writes,
        tx_id: u64,
    ) -> Durable<T> {
        self.send_desk_more(txn, by, result, now_ms, body, SmallVec::new(), records, tx_id)
    }

    /// As `send_desk`, with more entries the change made (the door caches it moved),
    /// all in one submission.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_desk_more<T: Targets>(
        &self,
        txn: Txn<'_>,
        by: &By<'_, T>,
        result: T,
        now_ms: i64,
        body: EntryBody,
        more: SmallVec<[EntryRecord; 1]>,
        records: Writes,
        tx_id: u64,
    ) -> Durable<T> {
        let extras = self.extras(by, &result, now_ms);
        self.send_entries(txn, result, now_ms, body, more, records, tx_id, extras)
    }

    /// Sends an entry with what travels with it, in one submission.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_with<R>(
        &self,
        txn: Txn<'_>,
        value: R,
        now_ms: i64,
        body: EntryBody,
        records: Writes,
        tx_id: u64,
        extras: Extras,
    ) -> Durable<R> {
        self.send_entries(txn, value, now_ms, body, SmallVec::new(), records, tx_id, extras)
    }

    /// As `send_with`, with more entries the operation made (a merchant's terminals
    /// disabled with it), all in one submission.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_with_more<R>(
        &self,
        txn: Txn<'_>,
        value: R,
        now_ms: i64,
        body: EntryBody,
        more: SmallVec<[EntryRecord; 1]>,
        records: Writes,
        extras: Extras,
    ) -> Durable<R> {
        self.send_entries(txn, value, now_ms, body, more, records, 0, extras)
    }

    #[allow(clippy::too_many_arguments)]
    fn send_entries<R>(
        &self,
        txn: Txn<'_>,
        value: R,
        now_ms: i64,
        body: EntryBody,
        more: SmallVec<[EntryRecord; 1]>,
        mut records: Writes,
        tx_id: u64,
        extras: Extras,
    ) -> Durable<R> {
        let mut entries: SmallVec<[EntryRecord; 1]> = smallvec![EntryRecord { time_ms: now_ms, body }];
        entries.extend(more);
        if let Some(a) = &extras.audit {
            records.push(StateWrite::Audit(Box::new(a.clone())));
            entries.push(EntryRecord {
                time_ms: now_ms,
                body: EntryBody::Audit(Box::new(a.clone())),
            });
        }
        if let Some(a) = &extras.answer {
            records.extend(self.forget_expired_answers(now_ms));
            records.push(StateWrite::Answer(Box::new(a.clone())));
            entries.push(EntryRecord {
                time_ms: now_ms,
                body: EntryBody::IdempotentAnswer(Box::new(a.clone())),
            });
        }
        let sent = txn.send_all(value, entries, records, tx_id);
        if let Some(a) = extras.audit {
            self.state.audit().insert(a);
            metrics::counter!("cardgate_audit_records_total").increment(1);
        }
        if let Some(a) = extras.answer {
            self.state.put_answer(a);
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
