//! Journal entries: the durable, ordered record of every decision and every change.
//!
//! An entry is stored under its id (assigned by the journal's committer, strictly
//! increasing, never reused) as `[format version][postcard(EntryRecord)]`. The central
//! store ships entries in id order. To extend the format, append variants to
//! `EntryBody` (postcard numbers variants by position, so existing ones must never be
//! reordered or removed) or bump `ENTRY_FORMAT` and keep a decoder for the old one;
//! `ledger/tests/golden.rs` holds today's bytes of every kind.
//!
//! Every entry carries the values it leaves (a balance after, a whole card record),
//! never a delta: replaying it onto a newer record converges, which is what makes a
//! checkpoint cut short by a crash harmless.

use cardgate_codec::CardNo;
use serde::{Deserialize, Serialize};

use rust_decimal::Decimal;

use crate::access::{
    CacheMovedEntry, DoorEntry, DoorEvents, GroupAccessEntry, HolidaysEntry, PermissionEntry, ScheduleEntry,
};
use crate::model::{
    Account, AccountKind, AccountStatus, AuditRecord, BlacklistChange, Card, DoorGroup, Exception, IdempotentAnswer,
    KeyHandout, Merchant, Outcome, Params, Person, SessionEvent, SettlementDay, StockBatch, StockCount, StockRemoval,
    Terminal, TerminalRecord, TxKind, card_no,
};
use crate::operator::{Actor, Operator, PasswordRecord};

/// The version byte that starts every stored entry.
pub const ENTRY_FORMAT: u8 = 1;

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportItem {
    Add {
        person: Person,
        account: Account,
        card: Card,
    },
    Update {
        person: Person,
    },
}

/// Staged records of one import; applied only at its `ImportCommitted`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportChunk {
    pub import_id: u64,
    pub index: u32,
    pub items: Vec<ImportItem>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCommitted {
    pub actor: Actor,
    pub import_id: u64,
    pub chunks: u32,
    pub rows: u64,
    pub added: u64,
    pub updated: u64,
    pub kind_changed: u64,
    pub unchanged: u64,
}

/// A money request decided at a terminal: approved or declined, with the evidence the
/// decision was made on, so that a dispute can be settled from the journal alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxEntry {
    pub kind: TxKind,
    /// Gateway-wide id of an approved money movement; 0 for a decline.
    pub tx_id: u64,
    pub terminal: u64,
    pub merchant_id: u64,
    pub seq: u64,
    /// For a reversal: the purchase's sequence number and tx id.
    pub original_seq: u64,
    pub original_tx_id: u64,
    #[serde(with = "card_no")]
    pub card: CardNo,
    /// 0 when the card is unknown.
    pub account: u64,
    /// As requested: positive; a reversal's refund is positive too.
    pub amount_fen: i64,
    pub outcome: Outcome,
    pub terminal_time_ms: i64,
    /// Limits and spending in force when the decision was made (0 when not reached).
    pub single_limit_fen: i64,
    pub daily_limit_fen: i64,
    pub spent_today_after_fen: i64,
    pub blacklist_version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryBody {
    Tx(TxEntry),
    AccountOpened(Account),
    CardIssued(Card),
    /// A terminal registered or re-registered. Carries the secret because recovery
    /// replays it; whatever ships entries elsewhere must leave the secret out.
    TerminalRegistered(Terminal),
    ParamsSet(Params),
    // ---- card desk and operator API (issue 4). Payloads are boxed to keep
    // `EntryBody` (and so every queued submission) small; postcard encodes a box as its
    // contents. Each operator-initiated entry names its operator (`actor`).
    /// A person and their new account (balance 0).
    PersonOpened(Box<PersonOpened>),
    /// A person's name, department or account kind changed.
    PersonUpdated(Box<PersonUpdated>),
    /// A card lifecycle step with every card, account field, fee or refund and blacklist
    /// change it left.
    CardChanged(Box<CardChange>),
    /// A desk money movement (top-up, refund, fee, adjustment, grant) and the balance after.
    Money(Box<MoneyEntry>),
    /// An operator added or changed (carries the token hash: leave it out when shipping).
    OperatorSet(Box<OperatorEntry>),
    /// Parameters changed by an operator.
    ParamsChanged(Box<ParamsChange>),
    /// Staged records of an import, applied only at its `ImportCommitted`.
    ImportChunk(Box<ImportChunk>),
    /// An import's commit point.
    ImportCommitted(Box<ImportCommitted>),
    /// One audit record.
    Audit(Box<AuditRecord>),
    // ---- faults found in use (issue 10) ----
    /// An exception raised for the card desk, or settled: the whole record as it is now.
    Exception(Box<Exception>),
    /// The answer an operator call got under its idempotency key.
    IdempotentAnswer(Box<IdempotentAnswer>),
    // ---- the registry and the card stock (issue 16) ----
    /// A merchant created or changed: the whole record.
    MerchantSet(Box<MerchantEntry>),
    /// A door group created or changed.
    DoorGroupSet(Box<DoorGroupEntry>),
    /// A terminal registered, changed, enabled, disabled, rekeyed or retired: the whole
    /// record as it is now (its key sealed), and the key handed out, if one was.
    TerminalSet(Box<TerminalEntry>),
    /// A change to the blank card stock.
    Stock(Box<StockEntry>),
    // ---- the operator console (issue 14) ----
    /// An operator's console password set (first, changed by its owner, or reset):
    /// carries the hash because recovery replays it; leave it out when shipping.
    PasswordSet(Box<PasswordEntry>),
    // ---- durability (issue 13) ----
    /// A business day closed: its last entry and that entry's chain hash, and what the
    /// day moved.
    DayClosed(Box<DayClose>),
    // ---- offline sales and the daily completeness check (issue 12) ----
    /// A terminal's session began or ended.
    TerminalSession(SessionEvent),
    /// A business day closed for settlement (轧帐): every merchant's figures, fixed.
    SettlementClosed(Box<SettlementClose>),
    // ---- door access and attendance (issue 11) ----
    /// A door created or changed: the whole record, and the cache versions it moved.
    DoorSet(Box<DoorEntry>),
    /// A schedule created or changed.
    ScheduleSet(Box<ScheduleEntry>),
    /// The holiday calendar, whole.
    HolidaysSet(Box<HolidaysEntry>),
    /// A permission granted, changed or revoked: the whole record as it is now.
    PermissionSet(Box<PermissionEntry>),
    /// A door group's access settings (anti-passback).
    GroupAccessSet(Box<GroupAccessEntry>),
    /// Access events and punches a controller or clock sent (one online, or an
    /// uploaded batch), with the controller's event accounting they left.
    DoorEvents(Box<DoorEvents>),
    /// Door groups' caches moved by a desk change (a card issued, a person changed), in
    /// the same submission as that change.
    DoorCacheMoved(Box<CacheMovedEntry>),
}

/// The close of a business day for settlement (轧帐): the figures of every merchant with
/// business that day, as the central store held them through `through_entry`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementClose {
    pub actor: Actor,
    pub day: i32,
    pub through_entry: u64,
    pub merchants: Vec<SettlementDay>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordEntry {
    pub actor: Actor,
    pub password: PasswordRecord,
}

/// The close of one business day, journaled after the day ends (so the chain covers the
/// close itself), and shipped to the central store's `day_closes` and the audit trail.
///
/// The day's last entry is the highest entry id whose time falls on the day or before:
/// every entry after it is later, every entry of the day is at or before it. Entries of
/// the next day may precede it by the width of a group commit; the totals count only
/// the entries whose time falls on the day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayClose {
    /// Days since 1970-01-01 in local business time.
    pub day: i32,
    pub tz_offset_minutes: i32,
    /// The entries between the previous close and this one: `first_entry_id..=
    /// last_entry_id` (empty, `first = last + 1`, for a day without entries).
    pub first_entry_id: u64,
    pub last_entry_id: u64,
    /// The chain hash of `last_entry_id` (zeros if it has none: a journal from before the
    /// chain).
    pub hash: [u8; 32],
    /// Approved money movements of the day and what they did to balances, signed.
    pub transactions: u64,
    pub transactions_fen: i64,
    /// Whether the journal still held every entry of the day when it closed (a day closed
    /// late, after pruning, counts only what was left).
    pub complete: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantEntry {
    pub actor: Actor,
    pub merchant: Merchant,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorGroupEntry {
    pub actor: Actor,
    pub group: DoorGroup,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TerminalAction {
    Registered,
    Changed,
    Enabled,
    Disabled,
    Rekeyed,
}

impl TerminalAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TerminalAction::Registered => "registered",
            TerminalAction::Changed => "changed",
            TerminalAction::Enabled => "enabled",
            TerminalAction::Disabled => "disabled",
            TerminalAction::Rekeyed => "rekeyed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalEntry {
    pub actor: Actor,
    pub action: TerminalAction,
    pub terminal: TerminalRecord,
    /// The key handed out with a registration or a rekey.
    pub handout: Option<KeyHandout>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockEntry {
    Received(StockBatch),
    Removed {
        actor: Actor,
        how: StockRemoval,
        #[serde(with = "crate::model::card_nos")]
        cards: Vec<CardNo>,
        note: String,
        time_ms: i64,
    },
    Counted(StockCount),
}

impl EntryBody {
    /// A short stable name for metrics and reports.
    pub fn kind_str(&self) -> &'static str {
        match self {
            EntryBody::Tx(t) => t.kind.as_str(),
            EntryBody::AccountOpened(_) => "account_opened",
            EntryBody::CardIssued(_) => "card_issued",
            EntryBody::TerminalRegistered(_) => "terminal_registered",
            EntryBody::ParamsSet(_) => "params_set",
            EntryBody::PersonOpened(_) => "person_opened",
            EntryBody::PersonUpdated(_) => "person_updated",
            EntryBody::CardChanged(_) => "card_changed",
            EntryBody::Money(_) => "money",
            EntryBody::OperatorSet(_) => "operator_set",
            EntryBody::ParamsChanged(_) => "params_changed",
            EntryBody::ImportChunk(_) => "import_chunk",
            EntryBody::ImportCommitted(_) => "import_committed",
            EntryBody::Audit(_) => "audit",
            EntryBody::Exception(_) => "exception",
            EntryBody::IdempotentAnswer(_) => "idempotent_answer",
            EntryBody::MerchantSet(_) => "merchant_set",
            EntryBody::DoorGroupSet(_) => "door_group_set",
            EntryBody::TerminalSet(_) => "terminal_set",
            EntryBody::Stock(_) => "stock",
            EntryBody::PasswordSet(_) => "password_set",
            EntryBody::DayClosed(_) => "day_closed",
            EntryBody::TerminalSession(_) => "terminal_session",
            EntryBody::SettlementClosed(_) => "settlement_closed",
            EntryBody::DoorSet(_) => "door_set",
            EntryBody::ScheduleSet(_) => "schedule_set",
            EntryBody::HolidaysSet(_) => "holidays_set",
            EntryBody::PermissionSet(_) => "permission_set",
            EntryBody::GroupAccessSet(_) => "group_access_set",
            EntryBody::DoorEvents(_) => "door_events",
            EntryBody::DoorCacheMoved(_) => "door_cache_moved",
        }
    }
}

/// What is stored under an entry's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    /// When the gateway decided, unix ms.
    pub time_ms: i64,
    pub body: EntryBody,
}

#[derive(Debug, thiserror::Error)]
pub enum EntryDecodeError {
    #[error("journal entry format {0} is unknown to this build")]
    UnknownFormat(u8),
    #[error("empty journal entry")]
    Empty,
    #[error("journal entry does not decode: {0}")]
    Postcard(#[from] postcard::Error),
}

impl EntryRecord {
    pub fn encode(&self) -> Vec<u8> {
        EntryRecord::encode_parts(self.time_ms, &self.body)
    }

    /// Encodes without owning the body; postcard writes a struct as its fields in order,
    /// so this is byte for byte `EntryRecord { time_ms, body }.encode()`.
    pub fn encode_parts(time_ms: i64, body: &EntryBody) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        EntryRecord::encode_into(time_ms, body, &mut out);
        out
    }

    /// Appends the encoding to `out` (the committer reuses one buffer for every entry).
    pub fn encode_into(time_ms: i64, body: &EntryBody, out: &mut Vec<u8>) {
        out.push(ENTRY_FORMAT);
        // Serializing plain data into a Vec cannot fail.
        postcard::to_io(&(time_ms, body), out).expect("entry serializes");
    }

    pub fn decode(bytes: &[u8]) -> Result<EntryRecord, EntryDecodeError> {
        match bytes.split_first() {
            None => Err(EntryDecodeError::Empty),
            Some((&ENTRY_FORMAT, rest)) => Ok(postcard::from_bytes(rest)?),
            Some((&v, _)) => Err(EntryDecodeError::UnknownFormat(v)),
        }
    }

    /// The decision time of a stored entry, reading nothing past it (pruning looks at
    /// the last entry of every segment).
    pub fn time_of(bytes: &[u8]) -> Option<i64> {
        match bytes.split_first() {
            Some((&ENTRY_FORMAT, rest)) => postcard::take_from_bytes::<i64>(rest).ok().map(|(t, _)| t),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Outcome;

    #[test]
    fn entries_round_trip_behind_their_version_byte() {
        let rec = EntryRecord {
            time_ms: 1_700_000_000_000,
            body: EntryBody::Tx(TxEntry {
                kind: TxKind::Purchase,
                tx_id: 9,
                terminal: 3,
                merchant_id: 1,
                seq: 77,
                original_seq: 0,
                original_tx_id: 0,
                card: CardNo(1_000_000_001),
                account: 1,
                amount_fen: 1250,
                outcome: Outcome::Approved {
                    tx_id: 9,
                    balance_after_fen: 8750,
                },
                terminal_time_ms: 5,
                single_limit_fen: 20000,
                daily_limit_fen: 60000,
                spent_today_after_fen: 1250,
                blacklist_version: 0,
            }),
        };
        let bytes = rec.encode();
        assert_eq!(bytes[0], ENTRY_FORMAT);
        assert_eq!(EntryRecord::decode(&bytes).unwrap(), rec);
        assert_eq!(EntryRecord::time_of(&bytes), Some(1_700_000_000_000));
        let mut future = bytes.clone();
        future[0] = 2;
        assert!(matches!(
            EntryRecord::decode(&future),
            Err(EntryDecodeError::UnknownFormat(2))
        ));
    }
}
