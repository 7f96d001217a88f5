//! The records the gateway keeps. Each is both the in-memory value and, serialized with
//! postcard behind a version byte, the state record a checkpoint stores; money fields are
//! stored as integer fen. Their encodings never change (`ledger/tests/golden.rs`).

use cardgate_codec::{CardNo, CardStatusCode, DeclineReason};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::fen;
use crate::operator::{Actor, hash_token};

/// `serde(with = "crate::model::card_no")`: a card number stored as its `u64`.
pub mod card_no {
    use cardgate_codec::CardNo;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &CardNo, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CardNo, D::Error> {
        Ok(CardNo(u64::deserialize(d)?))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountKind {
    Student,
    Staff,
    Temporary,
}

impl AccountKind {
    pub const ALL: [AccountKind; 3] = [AccountKind::Student, AccountKind::Staff, AccountKind::Temporary];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Student => "student",
            AccountKind::Staff => "staff",
            AccountKind::Temporary => "temporary",
        }
    }

    pub fn parse(s: &str) -> Option<AccountKind> {
        AccountKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountStatus {
    Active,
    Frozen,
    Closed,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Frozen => "frozen",
            AccountStatus::Closed => "closed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CardStatus {
    Active,
    /// Reported lost (挂失); can be unfrozen (解挂).
    Lost,
    Frozen,
    /// Cancelled (注销); final.
    Cancelled,
    /// Replaced by a new card (补卡); final.
    Replaced,
    /// Recorded as damaged (坏卡); final for this card number.
    Bad,
}

impl CardStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CardStatus::Active => "active",
            CardStatus::Lost => "lost",
            CardStatus::Frozen => "frozen",
            CardStatus::Cancelled => "cancelled",
            CardStatus::Replaced => "replaced",
            CardStatus::Bad => "bad",
        }
    }

    /// Why a card in this status cannot pay, or `None` when it can.
    pub fn refusal(self) -> Option<DeclineReason> {
        match self {
            CardStatus::Active => None,
            CardStatus::Lost => Some(DeclineReason::CardLost),
            CardStatus::Frozen => Some(DeclineReason::CardFrozen),
            CardStatus::Cancelled => Some(DeclineReason::CardCancelled),
            CardStatus::Replaced => Some(DeclineReason::CardReplaced),
            CardStatus::Bad => Some(DeclineReason::CardBad),
        }
    }

    pub fn wire(self) -> CardStatusCode {
        match self {
            CardStatus::Active => CardStatusCode::Active,
            CardStatus::Lost => CardStatusCode::Lost,
            CardStatus::Frozen => CardStatusCode::Frozen,
            CardStatus::Cancelled => CardStatusCode::Cancelled,
            CardStatus::Replaced => CardStatusCode::Replaced,
            CardStatus::Bad => CardStatusCode::Bad,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TerminalKind {
    Pos,
    Door,
    Attendance,
    Kiosk,
}

impl TerminalKind {
    pub const ALL: [TerminalKind; 4] = [
        TerminalKind::Pos,
        TerminalKind::Door,
        TerminalKind::Attendance,
        TerminalKind::Kiosk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TerminalKind::Pos => "pos",
            TerminalKind::Door => "door",
            TerminalKind::Attendance => "attendance",
            TerminalKind::Kiosk => "kiosk",
        }
    }

    pub fn parse(s: &str) -> Option<TerminalKind> {
        TerminalKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Spending limits. A purchase above `single_payment_max`, or one that would take the
/// business day's spending above `daily_max`, is declined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(with = "fen")]
    pub single_payment_max: Decimal,
    #[serde(with = "fen")]
    pub daily_max: Decimal,
}

/// Business parameters of one account kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindParams {
    pub limits: Limits,
    /// Fee for a replacement card (补卡).
    #[serde(with = "fen")]
    pub replacement_fee: Decimal,
    /// Fee for a temporary card.
    #[serde(with = "fen")]
    pub temporary_card_fee: Decimal,
}

/// Parameters for every account kind, indexed by `AccountKind::index`. Read on every
/// purchase and changed rarely, so the ledger swaps it whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    pub kinds: [KindParams; 3],
}

impl Default for Params {
    fn default() -> Params {
        let kind = |single: i64, daily: i64| KindParams {
            limits: Limits {
                single_payment_max: crate::money::from_fen(single),
                daily_max: crate::money::from_fen(daily),
            },
            replacement_fee: crate::money::from_fen(20_00),
            temporary_card_fee: crate::money::from_fen(10_00),
        };
        Params {
            kinds: [kind(200_00, 600_00), kind(500_00, 2_000_00), kind(100_00, 300_00)],
        }
    }
}

impl Params {
    pub fn for_kind(&self, kind: AccountKind) -> &KindParams {
        &self.kinds[kind.index()]
    }
}

/// An account: the money. Cards point at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: u64,
    pub kind: AccountKind,
    pub status: AccountStatus,
    #[serde(with = "fen")]
    pub balance: Decimal,
    /// Per-account limits overriding the kind's parameters.
    pub limits: Option<Limits>,
    /// The business day `spent_today` belongs to (days since the epoch, local time).
    pub day: i32,
    #[serde(with = "fen")]
    pub spent_today: Decimal,
}

impl Account {
    /// Spending on `today`, resetting the counter when the business day has turned.
    pub fn roll_day(&mut self, today: i32) {
        if self.day != today {
            self.day = today;
            self.spent_today = Decimal::ZERO;
        }
    }

    pub fn effective_limits(&self, params: &Params) -> Limits {
        self.limits.unwrap_or(params.for_kind(self.kind).limits)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    #[serde(with = "card_no")]
    pub no: CardNo,
    pub account: u64,
    pub status: CardStatus,
    /// Unix ms after which the card is refused; `None` never expires.
    pub expires_ms: Option<i64>,
    pub issued_ms: i64,
}

impl Card {
    /// Why this card cannot pay at `now_ms`, or `None` when it can.
    pub fn refusal(&self, now_ms: i64) -> Option<DeclineReason> {
        self.status.refusal().or(match self.expires_ms {
            Some(exp) if now_ms >= exp => Some(DeclineReason::CardExpired),
            _ => None,
        })
    }
}

/// A terminal as registered. The secret never leaves the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminal {
    pub id: u64,
    pub secret: [u8; 32],
    pub kind: TerminalKind,
    pub merchant_id: u64,
    pub enabled: bool,
    pub name: String,
    pub place: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxKind {
    Purchase,
    Reversal,
}

/// The answer a money request got, kept so that a retry gets it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Approved { tx_id: u64, balance_after_fen: i64 },
    Declined { reason: u16, balance_fen: i64 },
}

/// What a terminal's transaction sequence number was used for, and what it got: the
/// idempotency record. A retry must match `kind`, `card`, `amount_fen` and
/// `original_seq` exactly to get `outcome` again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRecord {
    pub terminal: u64,
    pub seq: u64,
    pub kind: TxKind,
    #[serde(with = "card_no")]
    pub card: CardNo,
    pub amount_fen: i64,
    /// For a reversal: the purchase it reverses; 0 for a purchase.
    pub original_seq: u64,
    pub account: u64,
    pub outcome: Outcome,
    pub time_ms: i64,
    /// For an approved purchase: the sequence number of the reversal that undid it.
    pub reversed_by: Option<u64>,
}

impl SeqRecord {
    pub fn same_request(&self, kind: TxKind, card: CardNo, amount_fen: i64, original_seq: u64) -> bool {
        self.kind == kind && self.card == card && self.amount_fen == amount_fen && self.original_seq == original_seq
    }
}

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

/// One card joining (`listed`) or leaving the blacklist, as version `version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlacklistChange {
    pub version: u64,
    #[serde(with = "card_no")]
    pub card: CardNo,
    pub listed: bool,
}

/// That `account` got `amount_fen` under grant batch `batch_id`; the idempotency record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantMark {
    pub batch_id: String,
    pub account: u64,
    pub amount_fen: i64,
    pub tx_id: u64,
}

/// The key a grant mark is stored under: the batch id's hash and the account.
pub fn grant_key(batch_id: &str, account: u64) -> (u64, u64) {
    let h = hash_token(batch_id);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    (u64::from_be_bytes(first), account)
}

/// One record of the audit trail: an operator's call, what it acted on, and what came
/// of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: u64,
    pub time_ms: i64,
    /// `None` when the caller presented no valid token.
    pub actor: Option<Actor>,
    /// e.g. `card.lost`, `money.topup`, `auth.denied`.
    pub action: String,
    /// What was acted on, e.g. `card:1000000001`, `account:17`, `operator:3`.
    pub target: String,
    /// The HTTP status the call got.
    pub status: u16,
    /// JSON of the target before and after (empty when not applicable).
    pub before: String,
    pub after: String,
    /// The error message of a refused call, or a short summary.
    pub detail: String,
}

/// What the card desk must settle by hand: money the gateway could not move as a
/// terminal asked. The record carries its whole state; settling it is a new version of
/// the same record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exception {
    pub id: u64,
    pub time_ms: i64,
    pub kind: ExceptionKind,
    pub account: u64,
    #[serde(with = "card_no")]
    pub card: CardNo,
    pub terminal: u64,
    /// The terminal's sequence number of the request that raised it.
    pub seq: u64,
    /// The movement it concerns (for a refused reversal: the purchase).
    pub tx_id: u64,
    /// What is owed or was not moved, positive.
    pub amount_fen: i64,
    pub detail: String,
    /// Set once the desk settled it.
    pub resolved: Option<Resolution>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExceptionKind {
    /// A terminal reversed a purchase on an account that was closed since: the money
    /// cannot go back into the account; the desk refunds it in cash.
    RefundOwed,
}

impl ExceptionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExceptionKind::RefundOwed => "refund_owed",
        }
    }
}

/// How the desk settled an exception.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub actor: Actor,
    pub time_ms: i64,
    pub note: String,
}

/// The answer a state-changing operator call got, kept under the idempotency key its
/// client sent, so that a retry of the same request gets the same answer and changes
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotentAnswer {
    pub operator_id: u64,
    pub key: String,
    /// SHA-256 of the request (its action, target, query and body): the same key with a
    /// different request is refused.
    pub request_hash: [u8; 32],
    pub status: u16,
    /// The answer's JSON body.
    pub body: String,
    pub time_ms: i64,
}
