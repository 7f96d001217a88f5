//! The card desk's operations: persons and their accounts, the card lifecycle (issue,
//! lost, unfreeze, freeze, bad, replace, cancel), desk money (top-up, refund, fees,
//! adjustments, batch grants), operators, parameters and the audit trail.
//!
//! Every operation follows the ledger's rules: the journal slot is reserved before any
//! lock; the entry carries the values it leaves (card records, balance after, account
//! status after) and the operator who acted; it is sent while the records it changed are
//! still locked, with the state records they became; the caller gets its answer only
//! once the commit is durable; and `replay` below rebuilds exactly the same state.
//!
//! Locks, in order: `DeskState::batches` (async, held across the awaits of a whole batch
//! or import so that two never interleave), `DeskState::ops` (a short std-style mutex
//! that serializes desk changes to cards, persons and account status among themselves;
//! never held across `.await`), a card, an account, the blacklist. Purchases take only a
//! card (read) and an account, so they never wait for a desk lock. A desk change makes a
//! new record visible in memory only after its submission is queued, so that nothing can
//! use it before the journal has it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use cardgate_codec::CardNo;
use dashmap::DashMap;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::audit::{AuditLog, AuditQuery, AuditRecord};
use crate::blacklist::{Blacklist, BlacklistChange, listed};
use crate::entry::EntryBody;
use crate::error::LedgerError;
use crate::journal::{CommitResult, JournalError, StateWrite, Submission, Writes};
use crate::ledger::{Ledger, Recovered};
use crate::model::{Account, AccountKind, AccountStatus, Card, CardStatus, Params};
use crate::money::{AMOUNT_FEN_MAX, from_fen, to_fen};
use crate::operators::{Actor, Operator, Role, TokenHash, hash_token, new_token, validate_operator_name};

/// Person ids as departments send them (student or staff numbers).
pub const PERSON_ID_BYTES_MAX: usize = 32;
/// Names and departments: generous for Chinese names and department titles in UTF-8.
pub const NAME_BYTES_MAX: usize = 96;
/// Reasons for refunds and adjustments: one sentence, kept in the journal for ever.
pub const REASON_BYTES_MAX: usize = 256;
/// Batch ids (grants, cancellations).
pub const BATCH_ID_BYTES_MAX: usize = 64;
/// Items one batch grant or batch cancellation may name: a whole campus.
pub const BATCH_ITEMS_MAX: usize = 200_000;
/// Card numbers are decimal, 8 to 19 digits (fits `u64`), no leading zero: what the
/// campus card printer issues and what terminals read from the card.
pub const CARD_DIGITS_MIN: usize = 8;
pub const CARD_DIGITS_MAX: usize = 19;

/// A person (student, staff member, visitor) and the account their cards point at.
/// One account per person; the account's `kind` is the person's category.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub account: u64,
    pub id: String,
    pub name: String,
    pub department: String,
    pub created_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CardAction {
    Issue,
    Lost,
    Unfreeze,
    Freeze,
    Bad,
    Replace,
    Cancel,
}

impl CardAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CardAction::Issue => "issue",
            CardAction::Lost => "lost",
            CardAction::Unfreeze => "unfreeze",
            CardAction::Freeze => "freeze",
            CardAction::Bad => "bad",
            CardAction::Replace => "replace",
            CardAction::Cancel => "cancel",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FeeKind {
    Replacement,
    TemporaryCard,
}

impl FeeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FeeKind::Replacement => "replacement",
            FeeKind::TemporaryCard => "temporary_card",
        }
    }

    pub fn parse(s: &str) -> Option<FeeKind> {
        [FeeKind::Replacement, FeeKind::TemporaryCard]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    pub fn amount(self, params: &Params, kind: AccountKind) -> Decimal {
        let p = params.for_kind(kind);
        match self {
            FeeKind::Replacement => p.replacement_fee,
            FeeKind::TemporaryCard => p.temporary_card_fee,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MoneyKind {
    /// Cash paid in at the desk.
    TopUp,
    /// Balance paid out in cash at the desk (退款).
    Refund,
    Fee(FeeKind),
    /// A correction with a mandatory reason; either sign.
    Adjustment,
    /// A batch grant (补助).
    Grant,
    /// The remaining balance paid out when an account is cancelled (注销).
    CancelRefund,
}

impl MoneyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MoneyKind::TopUp => "topup",
            MoneyKind::Refund => "refund",
            MoneyKind::Fee(FeeKind::Replacement) => "fee_replacement",
            MoneyKind::Fee(FeeKind::TemporaryCard) => "fee_temporary_card",
            MoneyKind::Adjustment => "adjustment",
            MoneyKind::Grant => "grant",
            MoneyKind::CancelRefund => "cancel_refund",
        }
    }
}

/// How a fee is paid: cash at the desk (the balance is untouched) or from the balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PayMethod {
    Cash,
    Balance,
}

impl PayMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            PayMethod::Cash => "cash",
            PayMethod::Balance => "balance",
        }
    }

    pub fn parse(s: &str) -> Option<PayMethod> {
        [PayMethod::Cash, PayMethod::Balance]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A desk money movement: what moved and the balance it left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyMove {
    pub kind: MoneyKind,
    pub tx_id: u64,
    pub account: u64,
    /// The amount handled, always positive (a fee paid in cash is still money taken).
    pub amount_fen: i64,
    /// What it did to the balance: + credit, − debit, 0 for a fee paid in cash.
    pub balance_delta_fen: i64,
    pub balance_after_fen: i64,
    pub method: PayMethod,
    pub reason: String,
}

/// The account fields a card change leaves (cancellation closes and empties it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLeft {
    pub id: u64,
    pub status: AccountStatus,
    pub balance_fen: i64,
}

// ---- journal entries ----------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonOpened {
    pub actor: Actor,
    pub person: Person,
    pub account: Account,
}

/// A person's name, department or kind changed; `kind` is the account's kind after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonUpdated {
    pub actor: Actor,
    pub person: Person,
    pub kind: AccountKind,
    /// The import that made the change, 0 for the desk.
    pub import_id: u64,
}

/// A card lifecycle step: every card record it changed or issued, as left; the account
/// fields it left (cancellation); the money that moved with it (fee, refund); and the
/// blacklist changes it made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardChange {
    pub actor: Actor,
    pub action: CardAction,
    pub cards: Vec<Card>,
    pub account: Option<AccountLeft>,
    pub money: Option<MoneyMove>,
    pub blacklist: Vec<BlacklistChange>,
    pub batch_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyEntry {
    pub actor: Actor,
    pub movement: MoneyMove,
    /// The grant batch it belongs to.
    pub batch_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorEntry {
    pub actor: Actor,
    pub operator: Operator,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamsChange {
    pub actor: Actor,
    pub params: Params,
}

/// That `account` got `amount_fen` under grant batch `batch_id`; the idempotency record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantMark {
    pub batch_id: String,
    pub account: u64,
    pub amount_fen: i64,
    pub tx_id: u64,
}

/// The key a grant mark is checkpointed under: the batch id's hash and the account.
pub fn grant_key(batch_id: &str, account: u64) -> (u64, u64) {
    let h = hash_token(batch_id);
    (u64::from_be_bytes(h[..8].try_into().expect("8 bytes")), account)
}

// ---- state --------------------------------------------------------------------------

pub(crate) struct DeskState {
    /// By account id.
    pub(crate) persons: DashMap<u64, Person>,
    /// Person id → account id.
    pub(crate) person_ids: DashMap<String, u64>,
    pub(crate) operators: DashMap<u64, Operator>,
    pub(crate) tokens: DashMap<TokenHash, u64>,
    pub(crate) blacklist: Blacklist,
    pub(crate) audit: AuditLog,
    pub(crate) next_audit_id: AtomicU64,
    pub(crate) grants: DashMap<(String, u64), GrantMark>,
    pub(crate) next_account_id: AtomicU64,
    pub(crate) next_operator_id: AtomicU64,
    pub(crate) ops: parking_lot::Mutex<()>,
    pub(crate) batches: tokio::sync::Mutex<()>,
    /// Imports whose staging keys remain: (commit entry id, import id, chunks).
    pub(crate) staged_imports: parking_lot::Mutex<Vec<(u64, u64, u32)>>,
}

/// What recovery loads before replay.
#[derive(Default)]
pub(crate) struct DeskLoad {
    pub(crate) persons: Vec<Person>,
    pub(crate) operators: Vec<Operator>,
    pub(crate) blacklist: Vec<BlacklistChange>,
    pub(crate) audit: Vec<AuditRecord>,
    pub(crate) grants: Vec<GrantMark>,
}

impl DeskState {
    pub(crate) fn new(load: DeskLoad) -> DeskState {
        let persons = DashMap::new();
        let person_ids = DashMap::new();
        for p in load.persons {
            person_ids.insert(p.id.clone(), p.account);
            persons.insert(p.account, p);
        }
        let operators = DashMap::new();
        let tokens = DashMap::new();
        let mut next_operator_id = 1;
        for o in load.operators {
            next_operator_id = next_operator_id.max(o.id + 1);
            if o.enabled {
                tokens.insert(o.token_hash, o.id);
            }
            operators.insert(o.id, o);
        }
        let audit = AuditLog::new(load.audit);
        let next_audit_id = audit.last_id() + 1;
        let grants = DashMap::new();
        for g in load.grants {
            grants.insert((g.batch_id.clone(), g.account), g);
        }
        DeskState {
            persons,
            person_ids,
            operators,
            tokens,
            blacklist: Blacklist::new(load.blacklist),
            audit,
            next_audit_id: AtomicU64::new(next_audit_id),
            grants,
            next_account_id: AtomicU64::new(1),
            next_operator_id: AtomicU64::new(next_operator_id),
            ops: parking_lot::Mutex::new(()),
            batches: tokio::sync::Mutex::new(()),
            staged_imports: parking_lot::Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn put_person(&self, p: Person) {
        self.person_ids.insert(p.id.clone(), p.account);
        self.persons.insert(p.account, p);
    }

    fn put_operator(&self, o: Operator) {
        if let Some(old) = self.operators.get(&o.id) {
            self.tokens.remove(&old.token_hash);
        }
        if o.enabled {
            self.tokens.insert(o.token_hash, o.id);
        }
        self.operators.insert(o.id, o);
    }
}

// ---- helpers ------------------------------------------------------------------------

pub(crate) fn send_entry(
    permit: mpsc::Permit<'_, Submission>,
    body: EntryBody,
    writes: Writes,
    now: i64,
    tx_id: u64,
) -> oneshot::Receiver<CommitResult> {
    let (done, wait) = oneshot::channel();
    permit.send(Submission {
        entry: Some((now, body)),
        writes,
        tx_id,
        force_sync: false,
        done: Some(done),
    });
    wait
}

pub(crate) async fn durable(wait: oneshot::Receiver<CommitResult>) -> Result<u64, LedgerError> {
    Ok(wait.await.map_err(|_| JournalError::Closed)??)
}

fn fen(value: Decimal) -> i64 {
    to_fen(value).expect("ledger amounts are whole fen within i64")
}

fn invalid(msg: impl Into<String>) -> LedgerError {
    LedgerError::Invalid(msg.into())
}

/// A positive amount within `AMOUNT_FEN_MAX`.
pub fn check_amount(amount_fen: i64) -> Result<(), LedgerError> {
    if amount_fen <= 0 || amount_fen > AMOUNT_FEN_MAX {
        return Err(invalid(format!(
            "amount must be above 0 and at most {} yuan",
            from_fen(AMOUNT_FEN_MAX)
        )));
    }
    Ok(())
}

pub fn check_text(what: &str, value: &str, max: usize, required: bool) -> Result<(), LedgerError> {
    if required && value.trim().is_empty() {
        return Err(invalid(format!("{what} is required")));
    }
    if value.len() > max {
        return Err(invalid(format!("{what} is longer than {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(format!("{what} holds control characters")));
    }
    Ok(())
}

pub fn check_person_id(id: &str) -> Result<(), LedgerError> {
    if id.is_empty()
        || id.len() > PERSON_ID_BYTES_MAX
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(format!(
            "person id must be 1..={PERSON_ID_BYTES_MAX} letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

/// Parses a card number as printed: 8 to 19 decimal digits, no leading zero.
pub fn parse_card_no(s: &str) -> Result<CardNo, LedgerError> {
    let ok = (CARD_DIGITS_MIN..=CARD_DIGITS_MAX).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_digit())
        && !s.starts_with('0');
    match (ok, s.parse::<u64>()) {
        (true, Ok(n)) => Ok(CardNo(n)),
        _ => Err(invalid(format!(
            "card number must be {CARD_DIGITS_MIN} to {CARD_DIGITS_MAX} digits without a leading zero"
        ))),
    }
}

pub fn check_card_no(no: CardNo) -> Result<(), LedgerError> {
    parse_card_no(&no.0.to_string()).map(|_| ())
}

fn check_batch_id(id: &str) -> Result<(), LedgerError> {
    check_text("batch id", id, BATCH_ID_BYTES_MAX, true)
}

/// The status an action moves a card to, or why it may not.
fn transition(from: CardStatus, action: CardAction) -> Result<CardStatus, LedgerError> {
    use CardStatus::*;
    let to = match (action, from) {
        (CardAction::Lost, Active | Frozen) => Lost,
        (CardAction::Unfreeze, Lost | Frozen) => Active,
        (CardAction::Freeze, Active) => Frozen,
        (CardAction::Bad, Active | Lost | Frozen) => Bad,
        (CardAction::Replace, Active | Lost | Frozen | Bad) => Replaced,
        (CardAction::Cancel, Active | Lost | Frozen | Bad) => Cancelled,
        (action, from) => {
            return Err(invalid(format!(
                "a card that is {} cannot be {}",
                from.as_str(),
                match action {
                    CardAction::Lost => "reported lost",
                    CardAction::Unfreeze => "unfrozen",
                    CardAction::Freeze => "frozen",
                    CardAction::Bad => "recorded as bad",
                    CardAction::Replace => "replaced",
                    CardAction::Cancel => "cancelled",
                    CardAction::Issue => "issued",
                }
            )));
        }
    };
    Ok(to)
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

impl Ledger {
    // ---- reading --------------------------------------------------------------------

    pub fn person(&self, person_id: &str) -> Option<Person> {
        let account = *self.desk.person_ids.get(person_id)?;
        self.desk.persons.get(&account).map(|p| p.clone())
    }

    pub fn person_of_account(&self, account: u64) -> Option<Person> {
        self.desk.persons.get(&account).map(|p| p.clone())
    }

    /// Every person of a department (a graduating class), by person id.
    pub fn persons_in_department(&self, department: &str) -> Vec<Person> {
        let mut v: Vec<Person> = self
            .desk
            .persons
            .iter()
            .filter(|p| p.department == department)
            .map(|p| p.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn persons_count(&self) -> usize {
        self.desk.persons.len()
    }

    /// Every card pointing at `account`, by card number.
    pub fn cards_of(&self, account: u64) -> Vec<Card> {
        let mut v: Vec<Card> = self.cards.iter().filter(|c| c.account == account).map(|c| *c).collect();
        v.sort_by_key(|c| c.no.0);
        v
    }

    pub fn blacklist(&self) -> &Blacklist {
        &self.desk.blacklist
    }

    pub fn operators(&self) -> Vec<Operator> {
        let mut v: Vec<Operator> = self.desk.operators.iter().map(|o| o.clone()).collect();
        v.sort_by_key(|o| o.id);
        v
    }

    /// The enabled operator holding `token`, if any.
    pub fn authenticate(&self, token: &str) -> Option<Operator> {
        let id = *self.desk.tokens.get(&hash_token(token))?;
        self.desk.operators.get(&id).filter(|o| o.enabled).map(|o| o.clone())
    }

    pub fn audit_list(&self, q: &AuditQuery) -> Vec<AuditRecord> {
        self.desk.audit.list(q)
    }

    pub fn grant_mark(&self, batch_id: &str, account: u64) -> Option<GrantMark> {
        self.desk
            .grants
            .get(&(batch_id.to_string(), account))
            .map(|g| g.clone())
    }

    // ---- persons --------------------------------------------------------------------

    /// Opens a person with a new account (balance 0).
    pub async fn open_person(&self, actor: &Actor, p: NewPerson) -> Result<(Person, Account), LedgerError> {
        check_person_id(&p.id)?;
        check_text("name", &p.name, NAME_BYTES_MAX, true)?;
        check_text("department", &p.department, NAME_BYTES_MAX, false)?;
        let _batch = self.desk.batches.lock().await;
        let permit = self.journal().reserve().await?;
        let (wait, person, account) = {
            let _ops = self.desk.ops.lock();
            if self.desk.person_ids.contains_key(&p.id) {
                return Err(invalid(format!("person {} already exists", p.id)));
            }
            let id = self.new_account_id();
            let now = self.now_ms();
            let account = new_account(id, p.kind);
            let person = Person {
                account: id,
                id: p.id,
                name: p.name,
                department: p.department,
                created_ms: now,
            };
            let mut writes = Writes::new();
            writes.push(StateWrite::Person(Box::new(person.clone())));
            writes.push(StateWrite::Account(account));
            let body = EntryBody::PersonOpened(Box::new(PersonOpened {
                actor: actor.clone(),
                person: person.clone(),
                account,
            }));
            let wait = send_entry(permit, body, writes, now, 0);
            self.accounts.insert(id, account);
            self.desk.put_person(person.clone());
            (wait, person, account)
        };
        durable(wait).await?;
        Ok((person, account))
    }

    pub(crate) fn new_account_id(&self) -> u64 {
        // Ids continue above every account that exists, demo and imported alike.
        let floor = self.desk.next_account_id.load(Ordering::Acquire);
        if floor == 1 {
            let max = self.accounts.iter().map(|a| a.id).max().unwrap_or(0);
            self.desk.next_account_id.fetch_max(max + 1, Ordering::AcqRel);
        }
        self.desk.next_account_id.fetch_add(1, Ordering::AcqRel)
    }

    /// Changes a person's name, department or kind (the account's kind, which selects
    /// the limits and fees). `None` keeps a field.
    pub async fn update_person(
        &self,
        actor: &Actor,
        person_id: &str,
        name: Option<String>,
        department: Option<String>,
        kind: Option<AccountKind>,
    ) -> Result<(Person, Account, Person, Account), LedgerError> {
        if let Some(n) = &name {
            check_text("name", n, NAME_BYTES_MAX, true)?;
        }
        if let Some(d) = &department {
            check_text("department", d, NAME_BYTES_MAX, false)?;
        }
        let _batch = self.desk.batches.lock().await;
        let permit = self.journal().reserve().await?;
        let (wait, result) = {
            let _ops = self.desk.ops.lock();
            let before = self
                .person(person_id)
                .ok_or_else(|| invalid(format!("person {person_id} not found")))?;
            let mut after = before.clone();
            if let Some(n) = name {
                after.name = n;
            }
            if let Some(d) = department {
                after.department = d;
            }
            let mut acct = self
                .accounts
                .get_mut(&before.account)
                .ok_or_else(|| LedgerError::not_found("account", before.account))?;
            let acct_before = *acct;
            if let Some(k) = kind {
                acct.kind = k;
            }
            let mut writes = Writes::new();
            writes.push(StateWrite::Person(Box::new(after.clone())));
            writes.push(StateWrite::Account(*acct));
            let body = EntryBody::PersonUpdated(Box::new(PersonUpdated {
                actor: actor.clone(),
                person: after.clone(),
                kind: acct.kind,
                import_id: 0,
            }));
            let wait = send_entry(permit, body, writes, self.now_ms(), 0);
            let acct_after = *acct;
            drop(acct);
            self.desk.put_person(after.clone());
            (wait, (before, acct_before, after, acct_after))
        };
        durable(wait).await?;
        Ok(result)
    }

    // ---- cards ----------------------------------------------------------------------

    /// Issues a new card on an account (开卡). A temporary card expires at `expires_ms`
    /// and may carry the temporary-card fee.
    pub async fn issue_card_desk(
        &self,
        actor: &Actor,
        account: u64,
        no: CardNo,
        expires_ms: Option<i64>,
        fee: Option<(FeeKind, PayMethod)>,
    ) -> Result<CardResult, LedgerError> {
        check_card_no(no)?;
        let permit = self.journal().reserve().await?;
        let (wait, mut result) = {
            let _ops = self.desk.ops.lock();
            if self.cards.contains_key(&no) {
                return Err(invalid(format!("card {} already exists", no.0)));
            }
            let now = self.now_ms();
            let card = Card {
                no,
                account,
                status: CardStatus::Active,
                expires_ms,
                issued_ms: now,
            };
            let mut acct = self
                .accounts
                .get_mut(&account)
                .ok_or_else(|| LedgerError::not_found("account", account))?;
            if acct.status == AccountStatus::Closed {
                return Err(invalid(format!("account {account} is closed")));
            }
            let acct_before = *acct;
            let money = match fee {
                None => None,
                Some((kind, method)) => Some(self.charge_fee(&mut acct, kind, method, "card issued")?),
            };
            let mut writes = Writes::new();
            writes.push(StateWrite::Card(card));
            writes.push(StateWrite::Account(*acct));
            let tx_id = money.as_ref().map(|m| m.tx_id).unwrap_or(0);
            let change = CardChange {
                actor: actor.clone(),
                action: CardAction::Issue,
                cards: vec![card],
                account: None,
                money,
                blacklist: vec![],
                batch_id: None,
            };
            let wait = send_entry(
                permit,
                EntryBody::CardChanged(Box::new(change.clone())),
                writes,
                now,
                tx_id,
            );
            drop(acct);
            self.cards.insert(no, card);
            (
                wait,
                CardResult {
                    entry_id: 0,
                    before: vec![],
                    change,
                    account_before: Some(acct_before),
                    blacklist_version: self.desk.blacklist.version(),
                },
            )
        };
        result.entry_id = durable(wait).await?;
        Ok(result)
    }

    /// Debits (or records in cash) a card fee on a locked account.
    fn charge_fee(
        &self,
        acct: &mut Account,
        kind: FeeKind,
        method: PayMethod,
        reason: &str,
    ) -> Result<MoneyMove, LedgerError> {
        let amount = kind.amount(&self.params(), acct.kind);
        let delta = match method {
            PayMethod::Cash => Decimal::ZERO,
            PayMethod::Balance => {
                if acct.balance < amount {
                    return Err(invalid(format!(
                        "the balance {} does not cover the {} fee of {}; take it in cash",
                        acct.balance,
                        kind.as_str(),
                        amount
                    )));
                }
                -amount
            }
        };
        acct.balance += delta;
        Ok(MoneyMove {
            kind: MoneyKind::Fee(kind),
            tx_id: self.next_tx_id.fetch_add(1, Ordering::Relaxed),
            account: acct.id,
            amount_fen: fen(amount),
            balance_delta_fen: fen(delta),
            balance_after_fen: fen(acct.balance),
            method,
            reason: reason.to_string(),
        })
    }

    /// Report lost (挂失), unfreeze (解挂), freeze, or record a bad card (坏卡). Returns once
    /// durable; from the moment the card's status changed in memory (before this
    /// returns) every purchase with it is declined.
    pub async fn card_status(&self, actor: &Actor, no: CardNo, action: CardAction) -> Result<CardResult, LedgerError> {
        if !matches!(
            action,
            CardAction::Lost | CardAction::Unfreeze | CardAction::Freeze | CardAction::Bad
        ) {
            return Err(invalid(format!("{} is not a status change", action.as_str())));
        }
        let permit = self.journal().reserve().await?;
        let (wait, mut result) = {
            let _ops = self.desk.ops.lock();
            let mut card = self
                .cards
                .get_mut(&no)
                .ok_or_else(|| LedgerError::not_found("card", no.0))?;
            let to = transition(card.status, action)?;
            if action == CardAction::Unfreeze
                && self
                    .accounts
                    .get(&card.account)
                    .is_none_or(|a| a.status == AccountStatus::Closed)
            {
                return Err(invalid(format!("account {} is closed", card.account)));
            }
            let before = *card;
            card.status = to;
            let after = *card;
            let now = self.now_ms();
            let (wait, change) = self.desk.blacklist.change(&[(no, listed(to))], |changes| {
                let mut writes = Writes::new();
                writes.push(StateWrite::Card(after));
                writes.extend(changes.iter().map(|c| StateWrite::Blacklist(*c)));
                let change = CardChange {
                    actor: actor.clone(),
                    action,
                    cards: vec![after],
                    account: None,
                    money: None,
                    blacklist: changes,
                    batch_id: None,
                };
                (
                    send_entry(permit, EntryBody::CardChanged(Box::new(change.clone())), writes, now, 0),
                    change,
                )
            });
            drop(card);
            (
                wait,
                CardResult {
                    entry_id: 0,
                    before: vec![before],
                    blacklist_version: change.blacklist.last().map(|c| c.version).unwrap_or(0),
                    change,
                    account_before: None,
                },
            )
        };
        result.entry_id = durable(wait).await?;
        self.publish_blacklist(&result.change.blacklist);
        if result.blacklist_version == 0 {
            result.blacklist_version = self.desk.blacklist.version();
        }
        Ok(result)
    }

    fn publish_blacklist(&self, changes: &[BlacklistChange]) {
        if let Some(v) = changes.iter().map(|c| c.version).max() {
            self.desk.blacklist.publish(v);
        }
    }

    /// Replaces a card (补卡): a new number on the same account, so the balance carries
    /// over; the old card is refused everywhere from this moment.
    pub async fn replace_card(
        &self,
        actor: &Actor,
        old: CardNo,
        new: CardNo,
        fee: Option<PayMethod>,
    ) -> Result<CardResult, LedgerError> {
        check_card_no(new)?;
        let permit = self.journal().reserve().await?;
        let (wait, mut result) = {
            let _ops = self.desk.ops.lock();
            if self.cards.contains_key(&new) {
                return Err(invalid(format!("card {} already exists", new.0)));
            }
            let mut card = self
                .cards
                .get_mut(&old)
                .ok_or_else(|| LedgerError::not_found("card", old.0))?;
            let to = transition(card.status, CardAction::Replace)?;
            let mut acct = self
                .accounts
                .get_mut(&card.account)
                .ok_or_else(|| LedgerError::not_found("account", card.account))?;
            if acct.status == AccountStatus::Closed {
                return Err(invalid(format!("account {} is closed", acct.id)));
            }
            let acct_before = *acct;
            let money = match fee {
                None => None,
                Some(method) => Some(self.charge_fee(&mut acct, FeeKind::Replacement, method, "card replaced")?),
            };
            let before = *card;
            card.status = to;
            let old_after = *card;
            let now = self.now_ms();
            let new_card = Card {
                no: new,
                account: before.account,
                status: CardStatus::Active,
                expires_ms: before.expires_ms,
                issued_ms: now,
            };
            let tx_id = money.as_ref().map(|m| m.tx_id).unwrap_or(0);
            let acct_after = *acct;
            let (wait, change) = self.desk.blacklist.change(&[(old, true)], |changes| {
                let mut writes = Writes::new();
                writes.push(StateWrite::Card(old_after));
                writes.push(StateWrite::Card(new_card));
                writes.push(StateWrite::Account(acct_after));
                writes.extend(changes.iter().map(|c| StateWrite::Blacklist(*c)));
                let change = CardChange {
                    actor: actor.clone(),
                    action: CardAction::Replace,
                    cards: vec![old_after, new_card],
                    account: None,
                    money,
                    blacklist: changes,
                    batch_id: None,
                };
                (
                    send_entry(
                        permit,
                        EntryBody::CardChanged(Box::new(change.clone())),
                        writes,
                        now,
                        tx_id,
                    ),
                    change,
                )
            });
            drop(acct);
            drop(card);
            self.cards.insert(new, new_card);
            (
                wait,
                CardResult {
                    entry_id: 0,
                    before: vec![before],
                    blacklist_version: 0,
                    change,
                    account_before: Some(acct_before),
                },
            )
        };
        result.entry_id = durable(wait).await?;
        self.publish_blacklist(&result.change.blacklist);
        result.blacklist_version = self.desk.blacklist.version();
        Ok(result)
    }

    /// Cancels the account behind `no` (注销): every card of it that can still be used
    /// or replaced is cancelled, the remaining balance is paid out and recorded, the
    /// account is closed.
    pub async fn cancel_card(&self, actor: &Actor, no: CardNo) -> Result<CardResult, LedgerError> {
        let account = self
            .cards
            .get(&no)
            .map(|c| c.account)
            .ok_or_else(|| LedgerError::not_found("card", no.0))?;
        let cards = self.cards_of(account).into_iter().map(|c| c.no).collect::<Vec<_>>();
        let permit = self.journal().reserve().await?;
        let (wait, mut result) = self.cancel_locked(permit, actor, account, &cards, None)?;
        result.entry_id = durable(wait).await?;
        self.publish_blacklist(&result.change.blacklist);
        result.blacklist_version = self.desk.blacklist.version();
        Ok(result)
    }

    /// The synchronous part of a cancellation; `cards` are the account's cards.
    fn cancel_locked(
        &self,
        permit: mpsc::Permit<'_, Submission>,
        actor: &Actor,
        account: u64,
        cards: &[CardNo],
        batch_id: Option<&str>,
    ) -> Result<(oneshot::Receiver<CommitResult>, CardResult), LedgerError> {
        let _ops = self.desk.ops.lock();
        match self.accounts.get(&account) {
            None => return Err(LedgerError::not_found("account", account)),
            Some(a) if a.status == AccountStatus::Closed => {
                return Err(invalid(format!("account {account} is already closed")));
            }
            Some(_) => {}
        }
        // Each card is final once cancelled, so nothing else changes it after we let go
        // of it; cards are taken one at a time because two may share a map shard.
        let mut before = Vec::new();
        let mut after = Vec::new();
        for no in cards {
            if let Some(mut c) = self.cards.get_mut(no)
                && c.account == account
                && let Ok(to) = transition(c.status, CardAction::Cancel)
            {
                before.push(*c);
                c.status = to;
                after.push(*c);
            }
        }
        let mut acct = self
            .accounts
            .get_mut(&account)
            .ok_or_else(|| LedgerError::not_found("account", account))?;
        let acct_before = *acct;
        let refund = acct.balance;
        acct.balance = from_fen(0);
        acct.status = AccountStatus::Closed;
        let now = self.now_ms();
        let money = (refund > Decimal::ZERO).then(|| MoneyMove {
            kind: MoneyKind::CancelRefund,
            tx_id: self.next_tx_id.fetch_add(1, Ordering::Relaxed),
            account,
            amount_fen: fen(refund),
            balance_delta_fen: -fen(refund),
            balance_after_fen: 0,
            method: PayMethod::Cash,
            reason: "account cancelled".into(),
        });
        let tx_id = money.as_ref().map(|m| m.tx_id).unwrap_or(0);
        let acct_after = *acct;
        let listing: Vec<(CardNo, bool)> = after.iter().map(|c| (c.no, true)).collect();
        let (wait, change) = self.desk.blacklist.change(&listing, |changes| {
            let mut writes = Writes::new();
            writes.extend(after.iter().map(|c| StateWrite::Card(*c)));
            writes.push(StateWrite::Account(acct_after));
            writes.extend(changes.iter().map(|c| StateWrite::Blacklist(*c)));
            let change = CardChange {
                actor: actor.clone(),
                action: CardAction::Cancel,
                cards: after.clone(),
                account: Some(AccountLeft {
                    id: account,
                    status: AccountStatus::Closed,
                    balance_fen: 0,
                }),
                money,
                blacklist: changes,
                batch_id: batch_id.map(str::to_string),
            };
            (
                send_entry(
                    permit,
                    EntryBody::CardChanged(Box::new(change.clone())),
                    writes,
                    now,
                    tx_id,
                ),
                change,
            )
        });
        drop(acct);
        Ok((
            wait,
            CardResult {
                entry_id: 0,
                before,
                blacklist_version: 0,
                change,
                account_before: Some(acct_before),
            },
        ))
    }

    /// Cancels the accounts of `person_ids` (a graduating class), all or nothing: every
    /// id is checked first and an unknown one changes nothing. Accounts already closed
    /// count as done, so a batch cut short by a crash is finished by submitting it again.
    pub async fn cancel_batch(
        &self,
        actor: &Actor,
        batch_id: &str,
        person_ids: &[String],
    ) -> Result<(BatchReport, Vec<CardResult>), LedgerError> {
        check_batch_id(batch_id)?;
        if person_ids.is_empty() || person_ids.len() > BATCH_ITEMS_MAX {
            return Err(invalid(format!("a batch names 1..={BATCH_ITEMS_MAX} persons")));
        }
        let _batch = self.desk.batches.lock().await;
        let mut accounts = Vec::with_capacity(person_ids.len());
        let mut unknown = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for id in person_ids {
            if !seen.insert(id.as_str()) {
                return Err(invalid(format!("person {id} is named twice")));
            }
            match self.desk.person_ids.get(id) {
                Some(a) => accounts.push(*a),
                None => unknown.push(id.clone()),
            }
        }
        if !unknown.is_empty() {
            unknown.truncate(20);
            return Err(invalid(format!("unknown persons: {}", unknown.join(", "))));
        }
        let mut by_account: HashMap<u64, Vec<CardNo>> = HashMap::new();
        for c in self.cards.iter() {
            by_account.entry(c.account).or_default().push(c.no);
        }
        let mut report = BatchReport {
            batch_id: batch_id.to_string(),
            ..Default::default()
        };
        let mut results = Vec::new();
        let mut last = None;
        for account in accounts {
            if self
                .accounts
                .get(&account)
                .is_none_or(|a| a.status == AccountStatus::Closed)
            {
                report.already_done += 1;
                continue;
            }
            let permit = self.journal().reserve().await?;
            let cards = by_account.get(&account).map(Vec::as_slice).unwrap_or(&[]);
            let (wait, r) = self.cancel_locked(permit, actor, account, cards, Some(batch_id))?;
            report.applied += 1;
            report.total_fen += r.change.money.as_ref().map(|m| m.amount_fen).unwrap_or(0);
            results.push(r);
            last = Some(wait);
        }
        if let Some(wait) = last {
            // Commits complete in order: the last durable means all are.
            durable(wait).await?;
        }
        for r in &results {
            self.publish_blacklist(&r.change.blacklist);
        }
        report.blacklist_version = self.desk.blacklist.version();
        Ok((report, results))
    }

    // ---- money ----------------------------------------------------------------------

    /// Moves money on one account under its lock; `delta` is what it does to the balance.
    #[allow(clippy::too_many_arguments)]
    fn move_locked(
        &self,
        permit: mpsc::Permit<'_, Submission>,
        actor: &Actor,
        account: u64,
        kind: MoneyKind,
        amount_fen: i64,
        delta: Decimal,
        method: PayMethod,
        reason: &str,
        batch_id: Option<&str>,
    ) -> Result<(oneshot::Receiver<CommitResult>, MoneyResult), LedgerError> {
        let mut acct = self
            .accounts
            .get_mut(&account)
            .ok_or_else(|| LedgerError::not_found("account", account))?;
        if acct.status == AccountStatus::Closed {
            return Err(invalid(format!("account {account} is closed")));
        }
        let before = *acct;
        let after = acct
            .balance
            .checked_add(delta)
            .filter(|b| to_fen(*b).is_some())
            .ok_or_else(|| invalid("the balance would overflow"))?;
        if after < Decimal::ZERO {
            return Err(invalid(format!(
                "the balance {} does not cover {}",
                acct.balance,
                from_fen(amount_fen)
            )));
        }
        acct.balance = after;
        let tx_id = self.next_tx_id.fetch_add(1, Ordering::Relaxed);
        let movement = MoneyMove {
            kind,
            tx_id,
            account,
            amount_fen,
            balance_delta_fen: fen(delta),
            balance_after_fen: fen(after),
            method,
            reason: reason.to_string(),
        };
        let mut writes = Writes::new();
        writes.push(StateWrite::Account(*acct));
        if let (MoneyKind::Grant, Some(batch)) = (kind, batch_id) {
            // The idempotency mark, set under the account lock with the credit.
            let mark = GrantMark {
                batch_id: batch.to_string(),
                account,
                amount_fen,
                tx_id,
            };
            self.desk.grants.insert((batch.to_string(), account), mark.clone());
            writes.push(StateWrite::Grant(Box::new(mark)));
        }
        let body = EntryBody::Money(Box::new(MoneyEntry {
            actor: actor.clone(),
            movement: movement.clone(),
            batch_id: batch_id.map(str::to_string),
        }));
        let wait = send_entry(permit, body, writes, self.now_ms(), tx_id);
        Ok((
            wait,
            MoneyResult {
                entry_id: 0,
                before,
                movement,
            },
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn money(
        &self,
        actor: &Actor,
        account: u64,
        kind: MoneyKind,
        amount_fen: i64,
        delta: Decimal,
        method: PayMethod,
        reason: &str,
    ) -> Result<MoneyResult, LedgerError> {
        let permit = self.journal().reserve().await?;
        let (wait, mut r) = self.move_locked(permit, actor, account, kind, amount_fen, delta, method, reason, None)?;
        r.entry_id = durable(wait).await?;
        Ok(r)
    }

    /// Cash paid in at the desk.
    pub async fn top_up(&self, actor: &Actor, account: u64, amount_fen: i64) -> Result<MoneyResult, LedgerError> {
        check_amount(amount_fen)?;
        let amount = from_fen(amount_fen);
        self.money(
            actor,
            account,
            MoneyKind::TopUp,
            amount_fen,
            amount,
            PayMethod::Cash,
            "cash top-up",
        )
        .await
    }

    /// Balance paid out in cash; never more than the balance.
    pub async fn refund(
        &self,
        actor: &Actor,
        account: u64,
        amount_fen: i64,
        reason: &str,
    ) -> Result<MoneyResult, LedgerError> {
        check_amount(amount_fen)?;
        check_text("reason", reason, REASON_BYTES_MAX, true)?;
        let amount = from_fen(amount_fen);
        self.money(
            actor,
            account,
            MoneyKind::Refund,
            amount_fen,
            -amount,
            PayMethod::Cash,
            reason,
        )
        .await
    }

    /// A card fee at the current parameters, paid in cash or from the balance.
    pub async fn fee(
        &self,
        actor: &Actor,
        account: u64,
        kind: FeeKind,
        method: PayMethod,
    ) -> Result<MoneyResult, LedgerError> {
        let account_kind = self
            .account(account)
            .ok_or_else(|| LedgerError::not_found("account", account))?
            .kind;
        let amount = kind.amount(&self.params(), account_kind);
        let amount_fen = fen(amount);
        if amount_fen <= 0 {
            return Err(invalid(format!("the {} fee is 0", kind.as_str())));
        }
        let delta = match method {
            PayMethod::Cash => Decimal::ZERO,
            PayMethod::Balance => -amount,
        };
        self.money(
            actor,
            account,
            MoneyKind::Fee(kind),
            amount_fen,
            delta,
            method,
            kind.as_str(),
        )
        .await
    }

    /// A correction of either sign with a mandatory reason; the balance stays >= 0.
    pub async fn adjust(
        &self,
        actor: &Actor,
        account: u64,
        delta_fen: i64,
        reason: &str,
    ) -> Result<MoneyResult, LedgerError> {
        check_amount(delta_fen.checked_abs().unwrap_or(0))?;
        check_text("reason", reason, REASON_BYTES_MAX, true)?;
        self.money(
            actor,
            account,
            MoneyKind::Adjustment,
            delta_fen.abs(),
            from_fen(delta_fen),
            PayMethod::Cash,
            reason,
        )
        .await
    }

    /// Credits a batch grant (补助), once per `(batch_id, account)` however often it is
    /// submitted. Every item is checked first: an unknown or closed account, a bad
    /// amount, an account named twice, or an account this batch already credited with
    /// a different amount changes nothing.
    pub async fn grant_batch(
        &self,
        actor: &Actor,
        batch_id: &str,
        items: &[(u64, i64)],
    ) -> Result<BatchReport, LedgerError> {
        check_batch_id(batch_id)?;
        if items.is_empty() || items.len() > BATCH_ITEMS_MAX {
            return Err(invalid(format!("a batch names 1..={BATCH_ITEMS_MAX} accounts")));
        }
        let _batch = self.desk.batches.lock().await;
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        let mut todo = Vec::with_capacity(items.len());
        let mut report = BatchReport {
            batch_id: batch_id.to_string(),
            ..Default::default()
        };
        for &(account, amount_fen) in items {
            check_amount(amount_fen).map_err(|e| invalid(format!("account {account}: {e}")))?;
            if !seen.insert(account) {
                return Err(invalid(format!("account {account} is named twice")));
            }
            match self.account(account) {
                None => return Err(LedgerError::not_found("account", account)),
                Some(a) if a.status == AccountStatus::Closed => {
                    return Err(invalid(format!("account {account} is closed")));
                }
                Some(_) => {}
            }
            match self.grant_mark(batch_id, account) {
                Some(m) if m.amount_fen == amount_fen => report.already_done += 1,
                Some(m) => {
                    return Err(invalid(format!(
                        "batch {batch_id} already credited account {account} with {}, not {}",
                        from_fen(m.amount_fen),
                        from_fen(amount_fen)
                    )));
                }
                None => todo.push((account, amount_fen)),
            }
        }
        let mut last = None;
        for (account, amount_fen) in todo {
            let permit = self.journal().reserve().await?;
            // `batches` keeps other grants out; the mark is set under the account lock.
            match self.move_locked(
                permit,
                actor,
                account,
                MoneyKind::Grant,
                amount_fen,
                from_fen(amount_fen),
                PayMethod::Cash,
                "grant",
                Some(batch_id),
            ) {
                Ok((wait, _)) => {
                    report.applied += 1;
                    report.total_fen += amount_fen;
                    last = Some(wait);
                }
                // Closed by the desk since the check: leave it out and say so.
                Err(LedgerError::Invalid(_)) => report.skipped += 1,
                Err(e) => return Err(e),
            }
        }
        if let Some(wait) = last {
            durable(wait).await?;
        }
        Ok(report)
    }

    // ---- operators, parameters, audit --------------------------------------------------

    /// Adds an operator; returns it and its token, which is shown only this once.
    pub async fn add_operator(&self, actor: &Actor, name: &str, role: Role) -> Result<(Operator, String), LedgerError> {
        validate_operator_name(name)?;
        let permit = self.journal().reserve().await?;
        let (token, token_hash) = new_token();
        let (wait, op) = {
            let _ops = self.desk.ops.lock();
            if self.desk.operators.iter().any(|o| o.name == name) {
                return Err(invalid(format!("operator {name} already exists")));
            }
            let op = Operator {
                id: self.desk.next_operator_id.fetch_add(1, Ordering::AcqRel),
                name: name.to_string(),
                role,
                token_hash,
                enabled: true,
                created_ms: self.now_ms(),
            };
            let mut writes = Writes::new();
            writes.push(StateWrite::Operator(Box::new(op.clone())));
            let body = EntryBody::OperatorSet(Box::new(OperatorEntry {
                actor: actor.clone(),
                operator: op.clone(),
            }));
            let wait = send_entry(permit, body, writes, self.now_ms(), 0);
            self.desk.put_operator(op.clone());
            (wait, op)
        };
        durable(wait).await?;
        Ok((op, token))
    }

    /// Disables an operator: its token stops working at once.
    pub async fn disable_operator(&self, actor: &Actor, id: u64) -> Result<(Operator, Operator), LedgerError> {
        let permit = self.journal().reserve().await?;
        let (wait, before, after) = {
            let _ops = self.desk.ops.lock();
            let before = self
                .desk
                .operators
                .get(&id)
                .map(|o| o.clone())
                .ok_or_else(|| LedgerError::not_found("operator", id))?;
            if !before.enabled {
                return Err(invalid(format!("operator {id} is already disabled")));
            }
            let mut after = before.clone();
            after.enabled = false;
            let mut writes = Writes::new();
            writes.push(StateWrite::Operator(Box::new(after.clone())));
            let body = EntryBody::OperatorSet(Box::new(OperatorEntry {
                actor: actor.clone(),
                operator: after.clone(),
            }));
            let wait = send_entry(permit, body, writes, self.now_ms(), 0);
            self.desk.put_operator(after.clone());
            (wait, before, after)
        };
        durable(wait).await?;
        Ok((before, after))
    }

    /// Replaces the business parameters, effective for the next decision everywhere.
    pub async fn change_params(&self, actor: &Actor, params: Params) -> Result<(Params, Params), LedgerError> {
        for (kind, p) in AccountKind::ALL.iter().zip(params.kinds.iter()) {
            let k = kind.as_str();
            for (what, v, positive) in [
                ("single_payment_max", p.limits.single_payment_max, true),
                ("daily_max", p.limits.daily_max, true),
                ("replacement_fee", p.replacement_fee, false),
                ("temporary_card_fee", p.temporary_card_fee, false),
            ] {
                let f = to_fen(v).ok_or_else(|| invalid(format!("{k}.{what}: not a whole number of fen")))?;
                if !(0..=AMOUNT_FEN_MAX).contains(&f) || (positive && f == 0) {
                    return Err(invalid(format!(
                        "{k}.{what} must be {} 0 and at most {}",
                        if positive { "above" } else { "at least" },
                        from_fen(AMOUNT_FEN_MAX)
                    )));
                }
            }
        }
        let permit = self.journal().reserve().await?;
        let (wait, before) = {
            let _ops = self.desk.ops.lock();
            let before = self.params();
            self.params.store(std::sync::Arc::new(params));
            let mut writes = Writes::new();
            writes.push(StateWrite::Params(Box::new(params)));
            let body = EntryBody::ParamsChanged(Box::new(ParamsChange {
                actor: actor.clone(),
                params,
            }));
            (send_entry(permit, body, writes, self.now_ms(), 0), before)
        };
        durable(wait).await?;
        Ok((before, params))
    }

    /// Journals an audit record (its id and time are filled in); returns its id once
    /// durable.
    pub async fn audit(&self, mut rec: AuditRecord) -> Result<u64, LedgerError> {
        let permit = self.journal().reserve().await?;
        let wait = {
            rec.id = self.desk.next_audit_id.fetch_add(1, Ordering::AcqRel);
            rec.time_ms = self.now_ms();
            let mut writes = Writes::new();
            writes.push(StateWrite::Audit(Box::new(rec.clone())));
            let wait = send_entry(permit, EntryBody::Audit(Box::new(rec.clone())), writes, rec.time_ms, 0);
            self.desk.audit.insert(rec.clone());
            wait
        };
        durable(wait).await?;
        metrics::counter!("cardgate_audit_records_total").increment(1);
        Ok(rec.id)
    }
}

pub(crate) fn new_account(id: u64, kind: AccountKind) -> Account {
    Account {
        id,
        kind,
        status: AccountStatus::Active,
        balance: from_fen(0),
        limits: None,
        day: 0,
        spent_today: from_fen(0),
    }
}

// ---- replay -------------------------------------------------------------------------

/// Applies a desk entry exactly as the live operation left the state.
pub(crate) fn replay(r: &mut Recovered<'_>, body: &EntryBody) {
    let desk = r.desk;
    match body {
        EntryBody::PersonOpened(e) => {
            r.accounts.insert(e.account.id, e.account);
            desk.put_person(e.person.clone());
            r.touched.touch(StateWrite::Account(e.account));
            r.touched.touch(StateWrite::Person(Box::new(e.person.clone())));
        }
        EntryBody::PersonUpdated(e) => {
            desk.put_person(e.person.clone());
            r.touched.touch(StateWrite::Person(Box::new(e.person.clone())));
            if let Some(mut a) = r.accounts.get_mut(&e.person.account) {
                a.kind = e.kind;
                r.touched.touch(StateWrite::Account(*a));
            }
        }
        EntryBody::CardChanged(e) => {
            for c in &e.cards {
                r.cards.insert(c.no, *c);
                r.touched.touch(StateWrite::Card(*c));
            }
            if let Some(left) = e.account
                && let Some(mut a) = r.accounts.get_mut(&left.id)
            {
                a.status = left.status;
                a.balance = from_fen(left.balance_fen);
                r.touched.touch(StateWrite::Account(*a));
            }
            if let Some(m) = &e.money {
                replay_money(r, m);
            }
            for c in &e.blacklist {
                desk.blacklist.replay(*c);
                r.touched.touch(StateWrite::Blacklist(*c));
            }
        }
        EntryBody::Money(e) => {
            replay_money(r, &e.movement);
            if let (MoneyKind::Grant, Some(batch)) = (e.movement.kind, &e.batch_id) {
                let mark = GrantMark {
                    batch_id: batch.clone(),
                    account: e.movement.account,
                    amount_fen: e.movement.amount_fen,
                    tx_id: e.movement.tx_id,
                };
                desk.grants.insert((batch.clone(), mark.account), mark.clone());
                r.touched.touch(StateWrite::Grant(Box::new(mark)));
            }
        }
        EntryBody::OperatorSet(e) => {
            desk.put_operator(e.operator.clone());
            r.touched.touch(StateWrite::Operator(Box::new(e.operator.clone())));
        }
        EntryBody::ParamsChanged(e) => {
            *r.params = e.params;
            r.touched.touch(StateWrite::Params(Box::new(e.params)));
        }
        EntryBody::Audit(a) => {
            desk.next_audit_id.fetch_max(a.id + 1, Ordering::AcqRel);
            desk.audit.insert(a.as_ref().clone());
            r.touched.touch(StateWrite::Audit(a.clone()));
        }
        _ => {}
    }
}

fn replay_money(r: &mut Recovered<'_>, m: &MoneyMove) {
    *r.next_tx_id = (*r.next_tx_id).max(m.tx_id + 1);
    if let Some(mut a) = r.accounts.get_mut(&m.account) {
        a.balance = from_fen(m.balance_after_fen);
        r.touched.touch(StateWrite::Account(*a));
    }
}
