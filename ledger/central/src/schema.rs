//! What the central store holds, and how journal entries become its rows.
//!
//! Both back ends have the same tables, keys and meaning; only the column types differ
//! (PostgreSQL keeps money as `NUMERIC` yuan, SQLite as `INTEGER` fen, named `_fen`).
//! Every key starts with the gateway id, so several gateways can share one store.
//!
//! | table | one row per | key |
//! |---|---|---|
//! | `schema_version` | migration applied | `version` |
//! | `gateways` | gateway: the last entry id the store holds (its cursor) | `gateway_id` |
//! | `transactions` | approved money movement | `(gateway_id, tx_id)`, also unique `(gateway_id, entry_id)` |
//! | `declines` | declined money request, with its reason | `(gateway_id, entry_id)` |
//! | `events` | every other entry: kind, keys, JSON payload | `(gateway_id, entry_id)` |
//! | `accounts` | account, current values | `(gateway_id, account_id)` |
//! | `cards` | card, current values | `(gateway_id, card_no)` |
//! | `terminals` | terminal, current values (never its secret) | `(gateway_id, terminal_id)` |
//!
//! A row is a pure function of its entry, so writing it twice is a no-op (inserts ignore
//! conflicts); the current-value tables keep the `entry_id` that last wrote each row and
//! only take a write from a later entry, so replaying old entries never rolls them back.
//!
//! Identifiers are `u64` in the gateway and `BIGINT` (`i64`) in SQL. They are stored
//! with the same 64 bits (`sql_id`): every id the gateway assigns and every card number
//! it issues is far below 2^63, but a terminal may present any card number or sequence
//! number, and a decline must be recorded whatever it was; such a value reads back
//! negative rather than stalling the flusher on a row it can never write.
//!
//! To add an entry kind: add its arm to `Batch::push` (the match has no wildcard, so a
//! new `EntryBody` variant does not compile until it is mapped). A money movement pushes
//! a `TxRow` and a balance; anything else pushes an `EventRow` (kind, keys, payload) and,
//! if it changes an account, card or terminal, the new record.

use std::collections::BTreeMap;

use cardgate_codec::DeclineReason;
use serde::Serialize;

use cardgate_domain::entry::{EntryBody, EntryRecord, ImportCommitted, ImportItem, MoneyMove, TxEntry};
use cardgate_domain::model::{Account, Card, Outcome, Terminal};
use cardgate_domain::money::to_fen;
use cardgate_domain::operator::Actor;

/// A journal entry as the flusher reads it.
pub type JournalEntry = cardgate_journal::JournalEntry<EntryRecord>;

/// The schema this build writes. The store's `schema_version` may not be above it.
pub const SCHEMA_VERSION: i64 = 2;

/// A `u64` identifier as the `BIGINT` that stores it: the same 64 bits (see the module
/// comment for why not a checked conversion).
pub fn sql_id(id: u64) -> i64 {
    id as i64
}

/// The `u64` a `BIGINT` identifier column holds.
pub fn id_of_sql(v: i64) -> u64 {
    v as u64
}

/// An approved money movement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxRow {
    pub tx_id: u64,
    pub entry_id: u64,
    /// `purchase`, `reversal`, and the kinds later issues add.
    pub kind: &'static str,
    pub account: u64,
    pub card: Option<u64>,
    pub terminal: Option<u64>,
    pub terminal_seq: Option<u64>,
    pub merchant: Option<u64>,
    /// What the movement did to the balance, signed: a purchase is negative, a refund
    /// positive. `opening balance + sum(amount) = balance` for every account.
    pub amount_fen: i64,
    pub balance_after_fen: i64,
    pub time_ms: i64,
    pub terminal_time_ms: Option<i64>,
    /// For a reversal or refund: the movement it undoes.
    pub original_tx_id: Option<u64>,
    /// The operator who made it, for card desk operations.
    pub operator: Option<String>,
}

/// A money request that was declined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclineRow {
    pub entry_id: u64,
    pub kind: &'static str,
    pub terminal: u64,
    pub terminal_seq: u64,
    pub merchant: u64,
    pub card: u64,
    /// `None` when the card was unknown.
    pub account: Option<u64>,
    /// As requested: anything a terminal sent, hence a wider column than balances.
    pub amount_fen: i64,
    pub reason_code: i32,
    pub reason: &'static str,
    pub balance_fen: i64,
    pub time_ms: i64,
    pub terminal_time_ms: i64,
}

/// Any entry that is not a money request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    pub entry_id: u64,
    pub kind: &'static str,
    pub time_ms: i64,
    pub account: Option<u64>,
    pub card: Option<u64>,
    pub terminal: Option<u64>,
    pub operator: Option<String>,
    /// JSON; money in it is integer fen, as in the gateway's records.
    pub payload: String,
}

/// An account's whole record as of `entry_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRow {
    pub account: u64,
    pub kind: &'static str,
    pub status: &'static str,
    /// Only used when the row is created: the balance it was opened with.
    pub opening_balance_fen: i64,
    pub balance_fen: i64,
    pub single_payment_max_fen: Option<i64>,
    pub daily_max_fen: Option<i64>,
    pub opened_ms: i64,
    pub updated_ms: i64,
    pub entry_id: u64,
}

/// Fields of an account whose whole record did not change in the batch: the balance a
/// money movement left, the kind a person update left, the status a cancellation left.
/// `None` leaves the stored value alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalanceRow {
    pub account: u64,
    pub balance_fen: Option<i64>,
    pub kind: Option<&'static str>,
    pub status: Option<&'static str>,
    pub updated_ms: i64,
    pub entry_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardRow {
    pub card: u64,
    pub account: u64,
    pub status: &'static str,
    pub expires_ms: Option<i64>,
    pub issued_ms: i64,
    pub updated_ms: i64,
    pub entry_id: u64,
}

/// A terminal as the rest of the university may see it: no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TerminalRow {
    pub terminal: u64,
    pub kind: &'static str,
    pub merchant: u64,
    pub enabled: bool,
    pub name: String,
    pub place: String,
    pub updated_ms: i64,
    pub entry_id: u64,
}

/// The latest change to one account within a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AccountChange {
    Record(AccountRow),
    Balance(BalanceRow),
}

/// One closed business day, as `day_closes` holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DayCloseRow {
    /// `YYYY-MM-DD`, local business time.
    pub day: String,
    pub tz_offset_minutes: i32,
    pub first_entry_id: u64,
    pub last_entry_id: u64,
    pub hash: [u8; 32],
    pub transactions: u64,
    pub transactions_fen: i64,
    pub complete: bool,
    /// The `DayClosed` entry.
    pub entry_id: u64,
    pub closed_ms: i64,
}

/// Everything one SQL transaction writes: the rows of the entries `first_entry_id..=
/// last_entry_id`, with the current-value tables coalesced to one write per key.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub gateway_id: u64,
    pub first_entry_id: u64,
    pub last_entry_id: u64,
    /// Decision time of the last entry.
    pub last_time_ms: i64,
    pub transactions: Vec<TxRow>,
    pub declines: Vec<DeclineRow>,
    pub events: Vec<EventRow>,
    accounts: BTreeMap<u64, AccountChange>,
    pub cards: BTreeMap<u64, CardRow>,
    pub terminals: BTreeMap<u64, TerminalRow>,
    /// Every hashed entry's chain hash (`integrity.rs`).
    pub hashes: Vec<(u64, [u8; 32])>,
    /// The chain hash of the entry before `first_entry_id`, which the store checks
    /// against the hash it holds for its last entry.
    pub prev_hash: Option<[u8; 32]>,
    pub day_closes: Vec<DayCloseRow>,
}

/// Why entries cannot be made into a batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("entries must be consecutive: expected {expected}, found {found}")]
    NotConsecutive { expected: u64, found: u64 },
    #[error("entry {0}: an amount is not a whole number of fen")]
    Amount(u64),
    #[error("entry {entry} commits import {import_id}, but its staged chunks are not in the journal")]
    ImportChunksMissing { entry: u64, import_id: u64 },
}

impl Batch {
    /// The rows for `entries`, which must be consecutive and in order, and must not
    /// commit an import (see `build_with`).
    pub fn build(gateway_id: u64, entries: &[JournalEntry]) -> Result<Batch, BatchError> {
        Batch::build_with(gateway_id, entries, |_| None)
    }

    /// As `build`; `imports` gives the staged items of an import being committed (its
    /// chunks were journaled before the commit entry, possibly in an earlier batch).
    pub fn build_with(
        gateway_id: u64,
        entries: &[JournalEntry],
        mut imports: impl FnMut(&ImportCommitted) -> Option<Vec<ImportItem>>,
    ) -> Result<Batch, BatchError> {
        let mut batch = Batch {
            gateway_id,
            ..Batch::default()
        };
        // Nearly every entry is hashed, and most are approved money movements: sized up
        // front rather than doubled a dozen times over a 16,000-entry batch.
        batch.hashes.reserve(entries.len());
        batch.transactions.reserve(entries.len());
        for e in entries {
            batch.push(e, &mut imports)?;
        }
        Ok(batch)
    }

    pub fn is_empty(&self) -> bool {
        self.first_entry_id == 0
    }

    pub fn entries(&self) -> u64 {
        if self.is_empty() {
            0
        } else {
            self.last_entry_id - self.first_entry_id + 1
        }
    }

    /// Adds one entry's rows. One arm per entry kind.
    pub fn push(
        &mut self,
        e: &JournalEntry,
        imports: &mut impl FnMut(&ImportCommitted) -> Option<Vec<ImportItem>>,
    ) -> Result<(), BatchError> {
        if self.is_empty() {
            self.first_entry_id = e.id;
        } else if e.id != self.last_entry_id + 1 {
            return Err(BatchError::NotConsecutive {
                expected: self.last_entry_id + 1,
                found: e.id,
            });
        }
        self.last_entry_id = e.id;
        self.last_time_ms = e.record.time_ms;
        if let Some(h) = e.hash {
            self.hashes.push((e.id, h));
        }
        let time_ms = e.record.time_ms;
        let body = &e.record.body;
        match body {
            EntryBody::Tx(t) => self.push_tx(e.id, time_ms, t),
            EntryBody::AccountOpened(a) => {
                self.open_account(a, e.id, time_ms)?;
                self.event(e.id, time_ms, body, Keys::account(a.id), a);
            }
            EntryBody::CardIssued(c) => {
                self.event(e.id, time_ms, body, Keys::card(c), c);
                self.cards.insert(c.no.0, card_row(c, e.id, time_ms));
            }
            EntryBody::TerminalRegistered(t) => {
                let row = terminal_row(t, e.id, time_ms);
                self.event(e.id, time_ms, body, Keys::terminal(t.id), &TerminalPublic::of(&row));
                self.terminals.insert(t.id, row);
            }
            EntryBody::ParamsSet(p) => self.event(e.id, time_ms, body, Keys::default(), p),
            EntryBody::PersonOpened(p) => {
                self.open_account(&p.account, e.id, time_ms)?;
                self.event(
                    e.id,
                    time_ms,
                    body,
                    Keys::account(p.account.id).by(&p.actor),
                    p.as_ref(),
                );
            }
            EntryBody::PersonUpdated(p) => {
                self.patch_account(p.person.account, time_ms, e.id, None, Some(p.kind.as_str()), None);
                self.event(
                    e.id,
                    time_ms,
                    body,
                    Keys::account(p.person.account).by(&p.actor),
                    p.as_ref(),
                );
            }
            EntryBody::CardChanged(c) => {
                for card in &c.cards {
                    self.cards.insert(card.no.0, card_row(card, e.id, time_ms));
                }
                let first_card = c.cards.first();
                if let Some(m) = &c.money {
                    self.push_money(e.id, time_ms, m, &c.actor, first_card.map(|c| c.no.0));
                }
                if let Some(a) = &c.account {
                    self.patch_account(a.id, time_ms, e.id, Some(a.balance_fen), None, Some(a.status.as_str()));
                }
                let keys = match first_card {
                    Some(card) => Keys::card(card),
                    None => Keys::default(),
                };
                self.event(e.id, time_ms, body, keys.by(&c.actor), c.as_ref());
            }
            EntryBody::Money(m) => {
                self.push_money(e.id, time_ms, &m.movement, &m.actor, None);
                self.event(
                    e.id,
                    time_ms,
                    body,
                    Keys::account(m.movement.account).by(&m.actor),
                    m.as_ref(),
                );
            }
            EntryBody::OperatorSet(o) => {
                // The token hash stays in the gateway: the payload is built without it.
                let public = OperatorPublic {
                    id: o.operator.id,
                    name: &o.operator.name,
                    role: o.operator.role.as_str(),
                    enabled: o.operator.enabled,
                    created_ms: o.operator.created_ms,
                    by: &o.actor.name,
                };
                self.event(e.id, time_ms, body, Keys::default().by(&o.actor), &public);
            }
            EntryBody::ParamsChanged(p) => self.event(e.id, time_ms, body, Keys::default().by(&p.actor), p.as_ref()),
            // Staged rows are not master data until their commit; their payload is
            // kept as an event so that the store shows what was staged.
            EntryBody::ImportChunk(c) => self.event(e.id, time_ms, body, Keys::default(), c.as_ref()),
            EntryBody::ImportCommitted(m) => {
                let items = imports(m).ok_or(BatchError::ImportChunksMissing {
                    entry: e.id,
                    import_id: m.import_id,
                })?;
                for item in items {
                    match item {
                        ImportItem::Add { account, card, .. } => {
                            self.open_account(&account, e.id, time_ms)?;
                            self.cards.insert(card.no.0, card_row(&card, e.id, time_ms));
                        }
                        ImportItem::Update { .. } => {}
                    }
                }
                self.event(e.id, time_ms, body, Keys::default().by(&m.actor), m.as_ref());
            }
            EntryBody::Audit(a) => {
                let keys = Keys {
                    operator: a.actor.as_ref().map(|x| x.name.clone()),
                    ..Keys::default()
                };
                self.event(e.id, time_ms, body, keys, a.as_ref());
            }
            EntryBody::Exception(x) => {
                let keys = Keys {
                    account: Some(x.account),
                    card: Some(x.card.0),
                    terminal: Some(x.terminal),
                    operator: x.resolved.as_ref().map(|r| r.actor.name.clone()),
                };
                self.event(e.id, time_ms, body, keys, x.as_ref());
            }
            EntryBody::MerchantSet(m) => {
                self.event(e.id, time_ms, body, Keys::default().by(&m.actor), &m.merchant);
            }
            EntryBody::DoorGroupSet(g) => self.event(e.id, time_ms, body, Keys::default().by(&g.actor), &g.group),
            EntryBody::DayClosed(c) => {
                let (y, m, d) = cardgate_domain::clock::civil_from_days(i64::from(c.day));
                let row = DayCloseRow {
                    day: format!("{y:04}-{m:02}-{d:02}"),
                    tz_offset_minutes: c.tz_offset_minutes,
                    first_entry_id: c.first_entry_id,
                    last_entry_id: c.last_entry_id,
                    hash: c.hash,
                    transactions: c.transactions,
                    transactions_fen: c.transactions_fen,
                    complete: c.complete,
                    entry_id: e.id,
                    closed_ms: time_ms,
                };
                self.event(e.id, time_ms, body, Keys::default(), &DayClosePublic::of(&row));
                self.day_closes.push(row);
            }
            EntryBody::TerminalSet(t) => {
                let r = &t.terminal;
                self.terminals.insert(
                    r.id,
                    TerminalRow {
                        terminal: r.id,
                        kind: r.kind.as_str(),
                        merchant: r.merchant_id,
                        enabled: r.enabled,
                        name: r.name.clone(),
                        place: r.place.clone(),
                        updated_ms: time_ms,
                        entry_id: e.id,
                    },
                );
                // Built field by field, without the sealed keys: nothing of a key leaves.
                let payload = TerminalSetPublic {
                    action: t.action.as_str(),
                    id: r.id,
                    kind: r.kind.as_str(),
                    merchant_id: r.merchant_id,
                    door_group: r.door_group,
                    name: &r.name,
                    place: &r.place,
                    serial: &r.serial,
                    responsible: &r.responsible,
                    installed: &r.installed,
                    status: r.status.as_str(),
                    enabled: r.enabled,
                    key_generation: r.key_generation,
                    key_handed_to: t.handout.as_ref().map(|h| h.handed_to.as_str()),
                };
                self.event(e.id, time_ms, body, Keys::terminal(r.id).by(&t.actor), &payload);
            }
            EntryBody::Stock(x) => self.event(e.id, time_ms, body, Keys::default(), x.as_ref()),
            EntryBody::TerminalSession(x) => self.event(e.id, time_ms, body, Keys::terminal(x.terminal), x),
            EntryBody::SettlementClosed(d) => self.event(e.id, time_ms, body, Keys::default().by(&d.actor), d.as_ref()),
            EntryBody::DoorSet(d) => self.event(e.id, time_ms, body, Keys::default().by(&d.actor), d.as_ref()),
            EntryBody::ScheduleSet(d) => self.event(e.id, time_ms, body, Keys::default().by(&d.actor), d.as_ref()),
            EntryBody::HolidaysSet(d) => self.event(e.id, time_ms, body, Keys::default().by(&d.actor), d.as_ref()),
            EntryBody::PermissionSet(d) => {
                let account = match d.permission.subject {
                    cardgate_domain::access::Subject::Person(a) => Some(a),
                    _ => None,
                };
                let keys = Keys {
                    account,
                    ..Keys::default()
                };
                self.event(e.id, time_ms, body, keys.by(&d.actor), d.as_ref());
            }
            EntryBody::GroupAccessSet(d) => self.event(e.id, time_ms, body, Keys::default().by(&d.actor), d.as_ref()),
            EntryBody::DoorCacheMoved(d) => {
                let keys = Keys {
                    account: (d.account != 0).then_some(d.account),
                    ..Keys::default()
                };
                self.event(e.id, time_ms, body, keys, d.as_ref());
            }
            // One row per entry (an online check is one event; an upload's entry up to
            // 32), keyed by the controller and, for a single event, its card and account.
            EntryBody::DoorEvents(d) => {
                let single = (d.events.len() + d.punches.len() == 1).then(|| {
                    d.events
                        .first()
                        .map(|x| (x.account, x.card.0))
                        .or_else(|| d.punches.first().map(|x| (x.account, x.card.0)))
                });
                let (account, card) = match single.flatten() {
                    Some((a, c)) => ((a != 0).then_some(a), Some(c)),
                    None => (None, None),
                };
                let keys = Keys {
                    account,
                    card,
                    terminal: Some(d.controller.terminal),
                    operator: None,
                };
                self.event(e.id, time_ms, body, keys, d.as_ref());
            }
            // Every entry lands somewhere, so that the store can prove it has them all.
            EntryBody::IdempotentAnswer(a) => {
                let payload = IdempotentPublic {
                    operator_id: a.operator_id,
                    key: &a.key,
                    status: a.status,
                };
                self.event(e.id, time_ms, body, Keys::default(), &payload);
            }
            EntryBody::PasswordSet(p) => {
                // The hash stays in the gateway: the store learns only that it was set.
                let payload = PasswordPublic {
                    operator_id: p.password.operator_id,
                    must_change: p.password.must_change,
                    by: &p.actor.name,
                };
                self.event(e.id, time_ms, body, Keys::default().by(&p.actor), &payload);
            }
        }
        Ok(())
    }

    fn push_tx(&mut self, entry_id: u64, time_ms: i64, t: &TxEntry) {
        let kind = t.kind.as_str();
        match t.outcome {
            Outcome::Approved {
                tx_id,
                balance_after_fen,
            } => {
                let amount_fen = t.kind.balance_change(t.amount_fen);
                self.transactions.push(TxRow {
                    tx_id,
                    entry_id,
                    kind,
                    account: t.account,
                    card: Some(t.card.0),
                    terminal: Some(t.terminal),
                    terminal_seq: Some(t.seq),
                    merchant: Some(t.merchant_id),
                    amount_fen,
                    balance_after_fen,
                    time_ms,
                    terminal_time_ms: Some(t.terminal_time_ms),
                    original_tx_id: (t.original_tx_id != 0).then_some(t.original_tx_id),
                    operator: None,
                });
                self.balance(t.account, balance_after_fen, time_ms, entry_id);
            }
            Outcome::Declined { reason, balance_fen } => self.declines.push(DeclineRow {
                entry_id,
                kind,
                terminal: t.terminal,
                terminal_seq: t.seq,
                merchant: t.merchant_id,
                card: t.card.0,
                account: (t.account != 0).then_some(t.account),
                amount_fen: t.amount_fen,
                reason_code: i32::from(reason),
                reason: DeclineReason::from_code(reason).map_or("unknown", |r| r.as_str()),
                balance_fen,
                time_ms,
                terminal_time_ms: t.terminal_time_ms,
            }),
        }
    }

    /// Records the balance a money movement left on `account`.
    pub fn balance(&mut self, account: u64, balance_fen: i64, time_ms: i64, entry_id: u64) {
        self.patch_account(account, time_ms, entry_id, Some(balance_fen), None, None);
    }

    /// Records the fields an entry left on `account`, merged with what this batch already
    /// holds for it (a later entry wins field by field).
    pub fn patch_account(
        &mut self,
        account: u64,
        time_ms: i64,
        entry_id: u64,
        balance_fen: Option<i64>,
        kind: Option<&'static str>,
        status: Option<&'static str>,
    ) {
        match self.accounts.get_mut(&account) {
            Some(AccountChange::Record(row)) => {
                row.balance_fen = balance_fen.unwrap_or(row.balance_fen);
                row.kind = kind.unwrap_or(row.kind);
                row.status = status.unwrap_or(row.status);
                row.updated_ms = time_ms;
                row.entry_id = entry_id;
            }
            Some(AccountChange::Balance(p)) => {
                p.balance_fen = balance_fen.or(p.balance_fen);
                p.kind = kind.or(p.kind);
                p.status = status.or(p.status);
                p.updated_ms = time_ms;
                p.entry_id = entry_id;
            }
            None => {
                self.accounts.insert(
                    account,
                    AccountChange::Balance(BalanceRow {
                        account,
                        balance_fen,
                        kind,
                        status,
                        updated_ms: time_ms,
                        entry_id,
                    }),
                );
            }
        }
    }

    /// A whole account record (opened at the desk or by an import).
    fn open_account(&mut self, a: &Account, entry_id: u64, time_ms: i64) -> Result<(), BatchError> {
        let mut row = account_row(a, entry_id, time_ms).ok_or(BatchError::Amount(entry_id))?;
        row.opening_balance_fen = row.balance_fen;
        self.accounts.insert(a.id, AccountChange::Record(row));
        Ok(())
    }

    /// A desk money movement: a transaction row signed by its effect on the balance (a
    /// fee paid in cash moves 0; its amount is in the event), and the balance it left.
    fn push_money(&mut self, entry_id: u64, time_ms: i64, m: &MoneyMove, actor: &Actor, card: Option<u64>) {
        self.transactions.push(TxRow {
            tx_id: m.tx_id,
            entry_id,
            kind: m.kind.as_str(),
            account: m.account,
            card,
            terminal: None,
            terminal_seq: None,
            merchant: None,
            amount_fen: m.balance_delta_fen,
            balance_after_fen: m.balance_after_fen,
            time_ms,
            terminal_time_ms: None,
            original_tx_id: None,
            operator: Some(actor.name.clone()),
        });
        self.balance(m.account, m.balance_after_fen, time_ms, entry_id);
    }

    /// Records a non-money entry in `events`, its payload as JSON.
    pub fn event<P: Serialize + ?Sized>(
        &mut self,
        entry_id: u64,
        time_ms: i64,
        body: &EntryBody,
        keys: Keys,
        payload: &P,
    ) {
        // Plain data with string keys always serializes.
        let payload = serde_json::to_string(payload).unwrap_or_else(|_| "null".into());
        self.events.push(EventRow {
            entry_id,
            kind: body.kind_str(),
            time_ms,
            account: keys.account,
            card: keys.card,
            terminal: keys.terminal,
            operator: keys.operator,
            payload,
        });
    }

    /// Whole account records, one per account, in account order.
    pub fn account_records(&self) -> impl Iterator<Item = &AccountRow> {
        self.accounts.values().filter_map(|c| match c {
            AccountChange::Record(r) => Some(r),
            AccountChange::Balance(_) => None,
        })
    }

    /// Balances of accounts whose record did not change in this batch.
    pub fn balances(&self) -> impl Iterator<Item = &BalanceRow> {
        self.accounts.values().filter_map(|c| match c {
            AccountChange::Balance(b) => Some(b),
            AccountChange::Record(_) => None,
        })
    }
}

/// The keys an event is found by.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    pub account: Option<u64>,
    pub card: Option<u64>,
    pub terminal: Option<u64>,
    pub operator: Option<String>,
}

impl Keys {
    pub fn account(id: u64) -> Keys {
        Keys {
            account: Some(id),
            ..Keys::default()
        }
    }

    pub fn card(c: &Card) -> Keys {
        Keys {
            account: Some(c.account),
            card: Some(c.no.0),
            ..Keys::default()
        }
    }

    /// The operator who acted.
    pub fn by(mut self, actor: &Actor) -> Keys {
        self.operator = Some(actor.name.clone());
        self
    }

    pub fn terminal(id: u64) -> Keys {
        Keys {
            terminal: Some(id),
            ..Keys::default()
        }
    }
}

fn account_row(a: &Account, entry_id: u64, time_ms: i64) -> Option<AccountRow> {
    Some(AccountRow {
        account: a.id,
        kind: a.kind.as_str(),
        status: a.status.as_str(),
        opening_balance_fen: 0,
        balance_fen: to_fen(a.balance)?,
        single_payment_max_fen: match a.limits {
            Some(l) => Some(to_fen(l.single_payment_max)?),
            None => None,
        },
        daily_max_fen: match a.limits {
            Some(l) => Some(to_fen(l.daily_max)?),
            None => None,
        },
        opened_ms: time_ms,
        updated_ms: time_ms,
        entry_id,
    })
}

fn card_row(c: &Card, entry_id: u64, time_ms: i64) -> CardRow {
    CardRow {
        card: c.no.0,
        account: c.account,
        status: c.status.as_str(),
        expires_ms: c.expires_ms,
        issued_ms: c.issued_ms,
        updated_ms: time_ms,
        entry_id,
    }
}

fn terminal_row(t: &Terminal, entry_id: u64, time_ms: i64) -> TerminalRow {
    TerminalRow {
        terminal: t.id,
        kind: t.kind.as_str(),
        merchant: t.merchant_id,
        enabled: t.enabled,
        name: t.name.clone(),
        place: t.place.clone(),
        updated_ms: time_ms,
        entry_id,
    }
}

/// A terminal change's event payload: the record without its sealed keys.
#[derive(Serialize)]
struct TerminalSetPublic<'a> {
    action: &'static str,
    id: u64,
    kind: &'static str,
    merchant_id: u64,
    door_group: u64,
    name: &'a str,
    place: &'a str,
    serial: &'a str,
    responsible: &'a str,
    installed: &'a str,
    status: &'static str,
    enabled: bool,
    key_generation: u32,
    key_handed_to: Option<&'a str>,
}

/// A password change's event payload: whose, and by whom; never the hash.
#[derive(Serialize)]
struct PasswordPublic<'a> {
    operator_id: u64,
    must_change: bool,
    by: &'a str,
}

/// A day close's event payload: the hash in hex, as operators read it.
#[derive(Serialize)]
struct DayClosePublic<'a> {
    day: &'a str,
    tz_offset_minutes: i32,
    first_entry_id: u64,
    last_entry_id: u64,
    hash: String,
    transactions: u64,
    transactions_fen: i64,
    complete: bool,
}

impl<'a> DayClosePublic<'a> {
    fn of(row: &'a DayCloseRow) -> DayClosePublic<'a> {
        DayClosePublic {
            day: &row.day,
            tz_offset_minutes: row.tz_offset_minutes,
            first_entry_id: row.first_entry_id,
            last_entry_id: row.last_entry_id,
            hash: row.hash.iter().map(|b| format!("{b:02x}")).collect(),
            transactions: row.transactions,
            transactions_fen: row.transactions_fen,
            complete: row.complete,
        }
    }
}

/// An idempotent answer's event payload: which call it was, not what it answered.
#[derive(Serialize)]
struct IdempotentPublic<'a> {
    operator_id: u64,
    key: &'a str,
    status: u16,
}

/// An operator change's event payload: everything but the token hash.
#[derive(Serialize)]
struct OperatorPublic<'a> {
    id: u64,
    name: &'a str,
    role: &'static str,
    enabled: bool,
    created_ms: i64,
    by: &'a str,
}

/// A terminal registration's event payload: built from the row, which has no secret, so
/// the secret cannot reach the central store by this path.
#[derive(Serialize)]
struct TerminalPublic<'a> {
    id: u64,
    kind: &'a str,
    merchant_id: u64,
    enabled: bool,
    name: &'a str,
    place: &'a str,
}

impl<'a> TerminalPublic<'a> {
    fn of(row: &'a TerminalRow) -> TerminalPublic<'a> {
        TerminalPublic {
            id: row.terminal,
            kind: row.kind,
            merchant_id: row.merchant,
            enabled: row.enabled,
            name: &row.name,
            place: &row.place,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cardgate_codec::CardNo;
    use cardgate_domain::model::{AccountKind, AccountStatus, CardStatus, TerminalKind};
    use cardgate_domain::money::from_fen;

    fn entry(id: u64, time_ms: i64, body: EntryBody) -> JournalEntry {
        JournalEntry {
            id,
            record: EntryRecord { time_ms, body },
            hash: None,
        }
    }

    fn purchase(seq: u64, account: u64, amount_fen: i64, outcome: Outcome) -> EntryBody {
        EntryBody::Tx(TxEntry {
            kind: cardgate_domain::model::TxKind::Purchase,
            tx_id: match outcome {
                Outcome::Approved { tx_id, .. } => tx_id,
                Outcome::Declined { .. } => 0,
            },
            terminal: 7,
            merchant_id: 3,
            seq,
            original_seq: 0,
            original_tx_id: 0,
            card: CardNo(1_000_000_000 + account),
            account,
            amount_fen,
            outcome,
            terminal_time_ms: 11,
            single_limit_fen: 0,
            daily_limit_fen: 0,
            spent_today_after_fen: 0,
            blacklist_version: 0,
        })
    }

    fn account(id: u64, balance_fen: i64) -> Account {
        Account {
            id,
            kind: AccountKind::Student,
            status: AccountStatus::Active,
            balance: from_fen(balance_fen),
            limits: None,
            day: 0,
            spent_today: from_fen(0),
        }
    }

    #[test]
    fn an_account_opened_and_spent_from_in_one_batch_is_one_record_with_its_opening_balance() {
        let entries = vec![
            entry(1, 100, EntryBody::AccountOpened(account(5, 100_00))),
            entry(
                2,
                200,
                purchase(
                    1,
                    5,
                    12_50,
                    Outcome::Approved {
                        tx_id: 1,
                        balance_after_fen: 87_50,
                    },
                ),
            ),
            entry(
                3,
                300,
                purchase(
                    2,
                    6,
                    1_00,
                    Outcome::Approved {
                        tx_id: 2,
                        balance_after_fen: 9_00,
                    },
                ),
            ),
            entry(
                4,
                400,
                purchase(
                    3,
                    6,
                    50_00,
                    Outcome::Declined {
                        reason: DeclineReason::InsufficientFunds.code(),
                        balance_fen: 9_00,
                    },
                ),
            ),
        ];
        let b = Batch::build(42, &entries).unwrap();
        assert_eq!((b.first_entry_id, b.last_entry_id, b.entries()), (1, 4, 4));
        let records: Vec<_> = b.account_records().collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].opening_balance_fen, 100_00);
        assert_eq!(records[0].balance_fen, 87_50);
        assert_eq!(records[0].entry_id, 2);
        let balances: Vec<_> = b.balances().collect();
        assert_eq!(balances.len(), 1);
        assert_eq!((balances[0].account, balances[0].balance_fen), (6, Some(9_00)));
        assert_eq!(b.transactions.len(), 2);
        assert_eq!(b.transactions[0].amount_fen, -12_50, "a purchase takes money");
        assert_eq!(b.declines.len(), 1);
        assert_eq!(b.declines[0].reason, "insufficient_funds");
        assert_eq!(b.events.len(), 1, "the account opening is an event too");
        assert_eq!(b.events[0].kind, "account_opened");
    }

    #[test]
    fn entries_must_be_consecutive() {
        let entries = vec![
            entry(1, 1, EntryBody::AccountOpened(account(1, 0))),
            entry(3, 1, EntryBody::AccountOpened(account(2, 0))),
        ];
        assert!(matches!(
            Batch::build(1, &entries),
            Err(BatchError::NotConsecutive { expected: 2, found: 3 })
        ));
    }

    #[test]
    fn a_terminal_secret_never_reaches_a_row() {
        let secret = [0xAB; 32];
        let t = Terminal {
            id: 9,
            secret,
            kind: TerminalKind::Pos,
            merchant_id: 1,
            enabled: true,
            name: "POS 9".into(),
            place: "Canteen".into(),
        };
        let b = Batch::build(1, &[entry(1, 1, EntryBody::TerminalRegistered(t))]).unwrap();
        let everything = format!("{:?}", b);
        assert!(!everything.contains("secret"), "{everything}");
        assert!(!everything.contains("171"), "0xAB as a JSON number: {everything}");
        assert!(b.events[0].payload.contains("\"name\":\"POS 9\""));
        assert_eq!(b.terminals[&9].merchant, 1);
    }

    #[test]
    fn a_later_card_record_replaces_an_earlier_one_in_the_same_batch() {
        let mut c = Card {
            no: CardNo(77),
            account: 1,
            status: CardStatus::Active,
            expires_ms: None,
            issued_ms: 5,
        };
        let first = entry(1, 1, EntryBody::CardIssued(c));
        c.status = CardStatus::Lost;
        let second = entry(2, 2, EntryBody::CardIssued(c));
        let b = Batch::build(1, &[first, second]).unwrap();
        assert_eq!(b.cards.len(), 1);
        assert_eq!((b.cards[&77].status, b.cards[&77].entry_id), ("lost", 2));
        assert_eq!(b.events.len(), 2, "both changes are on record");
    }

    #[test]
    fn ids_above_i64_keep_their_bits() {
        for id in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(id_of_sql(sql_id(id)), id);
        }
    }
}
