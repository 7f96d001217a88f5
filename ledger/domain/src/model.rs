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
    /// A sale a POS terminal made while it could not reach the gateway, posted when it
    /// uploaded it: always debited (the food was eaten), flagged when it should not have
    /// been made (`ExceptionKind::Offline*`).
    OfflinePurchase,
}

impl TxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TxKind::Purchase => "purchase",
            TxKind::Reversal => "reversal",
            TxKind::OfflinePurchase => "offline_purchase",
        }
    }

    /// What an approved movement of `amount_fen` does to the balance: a purchase takes
    /// it, a reversal gives it back.
    pub fn balance_change(self, amount_fen: i64) -> i64 {
        match self {
            TxKind::Purchase | TxKind::OfflinePurchase => -amount_fen,
            TxKind::Reversal => amount_fen,
        }
    }
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
    // ---- offline sales, posted when uploaded (all but the last two are posted) ----
    /// The sale took the balance below zero: the holder owes the difference.
    OfflineOverdraft,
    /// The card was on the blacklist (lost, frozen, ...) when the sale was made.
    OfflineCardBlocked,
    /// The sale passed an offline limit the terminal was given (per sale, per card a day).
    OfflineOverLimit,
    /// The sale's time is not plausible (ahead of the gateway, or older than offline
    /// selling may last): posted on the day it was uploaded.
    OfflineClockSuspect,
    /// Not posted: the card is unknown, so no account can be debited. The merchant's
    /// money for it is the centre's to settle.
    OfflineUnknownCard,
    /// Not posted: the account was closed (paid out) since; money never leaves a closed
    /// account.
    OfflineClosedAccount,
}

impl ExceptionKind {
    pub const ALL: [ExceptionKind; 7] = [
        ExceptionKind::RefundOwed,
        ExceptionKind::OfflineOverdraft,
        ExceptionKind::OfflineCardBlocked,
        ExceptionKind::OfflineOverLimit,
        ExceptionKind::OfflineClockSuspect,
        ExceptionKind::OfflineUnknownCard,
        ExceptionKind::OfflineClosedAccount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExceptionKind::RefundOwed => "refund_owed",
            ExceptionKind::OfflineOverdraft => "offline_overdraft",
            ExceptionKind::OfflineCardBlocked => "offline_card_blocked",
            ExceptionKind::OfflineOverLimit => "offline_over_limit",
            ExceptionKind::OfflineClockSuspect => "offline_clock_suspect",
            ExceptionKind::OfflineUnknownCard => "offline_unknown_card",
            ExceptionKind::OfflineClosedAccount => "offline_closed_account",
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

// ---- the system admin's registry: merchants, door groups, terminals (issue 16) --------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MerchantKind {
    /// A canteen's window (食堂窗口).
    CanteenWindow,
    Shop,
    /// A service point (printing, laundry, ...).
    Service,
}

impl MerchantKind {
    pub const ALL: [MerchantKind; 3] = [MerchantKind::CanteenWindow, MerchantKind::Shop, MerchantKind::Service];

    pub fn as_str(self) -> &'static str {
        match self {
            MerchantKind::CanteenWindow => "canteen_window",
            MerchantKind::Shop => "shop",
            MerchantKind::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<MerchantKind> {
        MerchantKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A merchant (商户): who POS terminals take money for, and what the centre charges it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merchant {
    pub id: u64,
    pub name: String,
    pub kind: MerchantKind,
    pub place: String,
    pub contact: String,
    /// The centre's fee on the merchant's sales, in basis points (1/100 of a percent):
    /// exact, and a rate is never more than 100%.
    pub fee_rate_bp: u32,
    pub enabled: bool,
    pub created_ms: i64,
}

/// A door group: the doors one permission opens (a building's entrances, a lab, a
/// dormitory). Door controllers belong to one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorGroup {
    pub id: u64,
    pub name: String,
    pub place: String,
    pub created_ms: i64,
}

/// Where a device is in its life, as the system admin's inventory counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InventoryStatus {
    InStock,
    Installed,
    UnderRepair,
    Retired,
}

impl InventoryStatus {
    pub const ALL: [InventoryStatus; 4] = [
        InventoryStatus::InStock,
        InventoryStatus::Installed,
        InventoryStatus::UnderRepair,
        InventoryStatus::Retired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InventoryStatus::InStock => "in_stock",
            InventoryStatus::Installed => "installed",
            InventoryStatus::UnderRepair => "under_repair",
            InventoryStatus::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<InventoryStatus> {
        InventoryStatus::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A terminal's secret, sealed under the gateway's terminal key (an AEAD), so that the
/// data directory, its backups and the journal never hold it in clear.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey {
    pub nonce: [u8; 12],
    /// The secret and the authentication tag.
    pub ciphertext: Vec<u8>,
}

/// A terminal as the registry keeps it: what it is, where, who answers for it, and its
/// key (sealed). During a rekey's overlap the previous key still signs on until
/// `previous_until_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalRecord {
    pub id: u64,
    pub kind: TerminalKind,
    /// The merchant a POS terminal takes money for (0 for other kinds).
    pub merchant_id: u64,
    /// The door group a door controller serves (0 for other kinds).
    pub door_group: u64,
    pub name: String,
    pub place: String,
    pub serial: String,
    /// The person who answers for the device (负责人).
    pub responsible: String,
    /// The local date it was installed (`YYYY-MM-DD`), empty while in stock.
    pub installed: String,
    pub status: InventoryStatus,
    pub enabled: bool,
    /// Counts the keys this terminal has had; part of what a sealed key is bound to.
    pub key_generation: u32,
    pub key: SealedKey,
    pub previous_key: Option<SealedKey>,
    pub previous_until_ms: i64,
    pub updated_ms: i64,
}

impl TerminalRecord {
    /// The record as the rest of the gateway sees it, with the secret given.
    pub fn terminal(&self, secret: [u8; 32]) -> Terminal {
        Terminal {
            id: self.id,
            secret,
            kind: self.kind,
            merchant_id: self.merchant_id,
            enabled: self.enabled,
            name: self.name.clone(),
            place: self.place.clone(),
        }
    }
}

/// Who received which terminal's key, when and from whom (授权卡 records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyHandout {
    pub terminal: u64,
    pub key_generation: u32,
    pub issued_by: Actor,
    /// The installer or technician the key was given to.
    pub handed_to: String,
    pub time_ms: i64,
}

// ---- blank card stock (库存卡) ------------------------------------------------------------

/// A delivery of blank cards: the card numbers `first..=last`, all printed and received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockBatch {
    pub id: u64,
    #[serde(with = "card_no")]
    pub first: CardNo,
    #[serde(with = "card_no")]
    pub last: CardNo,
    /// The local date received (`YYYY-MM-DD`).
    pub received: String,
    pub supplier: String,
    pub received_by: Actor,
    pub time_ms: i64,
}

impl StockBatch {
    pub fn contains(&self, no: CardNo) -> bool {
        (self.first.0..=self.last.0).contains(&no.0)
    }

    pub fn size(&self) -> u64 {
        self.last.0 - self.first.0 + 1
    }
}

/// Why a blank card left the stock other than by being issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StockRemoval {
    /// Damaged before issue (printing, encoding).
    Spoiled,
    /// Sent back to the supplier.
    Returned,
}

impl StockRemoval {
    pub fn as_str(self) -> &'static str {
        match self {
            StockRemoval::Spoiled => "spoiled",
            StockRemoval::Returned => "returned",
        }
    }
}

/// The card desk's weekly count of blank cards on hand, against the records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCount {
    pub id: u64,
    /// The local date counted.
    pub date: String,
    pub counted: u64,
    /// What the records said should be on hand.
    pub expected: u64,
    /// The card numbers counted on hand, when the count listed them.
    #[serde(with = "card_nos")]
    pub counted_cards: Vec<CardNo>,
    pub by: Actor,
    pub time_ms: i64,
}

/// `serde(with = "card_nos")`: card numbers stored as `u64`s.
pub mod card_nos {
    use cardgate_codec::CardNo;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[CardNo], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|c| c.0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<CardNo>, D::Error> {
        Ok(Vec::<u64>::deserialize(d)?.into_iter().map(CardNo).collect())
    }
}

// ---- sequence accounting and the business day (offline sales, completeness) ----------

/// The sequence numbers below a terminal's highest that it never used, as inclusive
/// ranges in order. Offline sales uploaded later fill them; what stays open is missing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqGaps {
    pub terminal: u64,
    pub ranges: Vec<(u64, u64)>,
    /// Ranges dropped because the terminal opened more than the gateway tracks
    /// (`rules::offline::GAPS_MAX`); counted so that the report says so.
    pub abandoned: u64,
}

/// One terminal's business day, as the gateway counted it: what the completeness report
/// and the settlement compare with the central store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayStats {
    /// Days since 1970-01-01 in the business time zone.
    pub day: i32,
    pub terminal: u64,
    /// The terminal's merchant when it last counted here.
    pub merchant: u64,
    pub online_count: u64,
    pub online_fen: i64,
    pub reversal_count: u64,
    pub reversal_fen: i64,
    pub offline_count: u64,
    pub offline_fen: i64,
    pub declined_count: u64,
    /// Exceptions raised by this terminal's requests of the day.
    pub exceptions: u64,
    /// Milliseconds of the day the terminal had a signed-on session (closed sessions).
    pub online_ms: i64,
    pub sign_ons: u64,
    /// Terminal clock minus gateway clock at the day's last sign-on, and the largest
    /// difference of the day (by magnitude).
    pub drift_last_ms: i64,
    pub drift_max_ms: i64,
    /// The lowest and highest sequence numbers used on this day (0: none).
    pub seq_min: u64,
    pub seq_max: u64,
}

/// A terminal's session began (a verified sign-on) or ended; what the completeness report
/// measures time online and clock drift by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub terminal: u64,
    pub opened: bool,
    /// Sign-on: the terminal's clock minus the gateway's (from HELLO). Close: 0.
    pub drift_ms: i64,
    /// Close: when the session began (its length is the entry's time minus this).
    pub since_ms: i64,
}

/// A merchant's settled business day: the figures the day was closed with. They never
/// change; a sale for the day that arrives later is an adjustment of a later day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementDay {
    pub day: i32,
    pub merchant: u64,
    pub count: u64,
    pub gross_fen: i64,
    pub reversal_count: u64,
    pub reversals_fen: i64,
    /// Late sales of earlier closed days, counted here.
    pub adjustment_count: u64,
    pub adjustments_fen: i64,
    pub net_fen: i64,
    pub fee_rate_bp: u32,
    pub fee_fen: i64,
    /// The journal entry through which the figures were taken.
    pub through_entry: u64,
    pub closed_by: Actor,
    pub closed_ms: i64,
}
