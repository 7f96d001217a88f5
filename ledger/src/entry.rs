//! Journal entries: the durable, ordered record of every decision and every change.
//!
//! An entry is stored under its id (assigned by the single committer, strictly
//! increasing, never reused) as `[format version][postcard(EntryRecord)]`. The central
//! store flusher ships entries in id order. To extend the format, append variants to
//! `EntryBody` (postcard numbers variants by position, so existing ones must never be
//! reordered or removed) or bump `ENTRY_FORMAT` and keep a decoder for the old one.

use cardgate_codec::CardNo;
use serde::{Deserialize, Serialize};

use crate::audit::AuditRecord;
use crate::desk::{CardChange, MoneyEntry, OperatorEntry, ParamsChange, PersonOpened, PersonUpdated};
use crate::import::{ImportChunk, ImportCommitted};
use crate::model::{Account, Card, Outcome, Params, Terminal, TxKind, card_no};

/// The version byte that starts every stored entry.
pub const ENTRY_FORMAT: u8 = 1;

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
}

impl EntryBody {
    /// A short stable name for metrics and reports.
    pub fn kind_str(&self) -> &'static str {
        match self {
            EntryBody::Tx(t) => match t.kind {
                TxKind::Purchase => "purchase",
                TxKind::Reversal => "reversal",
            },
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

/// A committed entry, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub id: u64,
    pub record: EntryRecord,
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
        let mut future = bytes.clone();
        future[0] = 2;
        assert!(matches!(
            EntryRecord::decode(&future),
            Err(EntryDecodeError::UnknownFormat(2))
        ));
    }
}
