//! Message bodies: fixed-width little-endian fields, one struct per message type.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::msg_type;

/// A card number. Its `Debug` and `Display` show only the last four digits, because card
/// numbers end up in logs and a full number is enough to impersonate a card at a terminal
/// that trusts the number alone.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CardNo(pub u64);

impl fmt::Debug for CardNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardNo(****{:04})", self.0 % 10_000)
    }
}

impl fmt::Display for CardNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "****{:04}", self.0 % 10_000)
    }
}

/// Why a money request was declined. The numeric values are the wire codes and never
/// change meaning; new reasons take new numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum DeclineReason {
    UnknownCard = 1,
    CardLost = 2,
    CardFrozen = 3,
    CardCancelled = 4,
    CardExpired = 5,
    InsufficientFunds = 6,
    OverSingleLimit = 7,
    OverDailyLimit = 8,
    TerminalNotAllowed = 9,
    /// The transaction sequence number was used before for a different request.
    Duplicate = 10,
    /// The gateway could not make the decision durable; nothing was applied.
    SystemError = 11,
    /// The amount is zero, negative or not representable.
    InvalidAmount = 12,
    /// A reversal names a purchase this terminal never had approved.
    OriginalNotFound = 13,
    /// A reversal names a purchase that was already reversed.
    AlreadyReversed = 14,
    /// The sequence number is at or below one already used and its outcome is no longer
    /// remembered (older than the retention window). Nothing was applied.
    StaleSequence = 15,
    /// The card was replaced by a new one (补卡); only the new card works.
    CardReplaced = 16,
    /// The card was recorded as damaged (坏卡).
    CardBad = 17,
    /// The account behind the card is closed or frozen.
    AccountBlocked = 18,
}

impl DeclineReason {
    pub const ALL: [DeclineReason; 18] = [
        DeclineReason::UnknownCard,
        DeclineReason::CardLost,
        DeclineReason::CardFrozen,
        DeclineReason::CardCancelled,
        DeclineReason::CardExpired,
        DeclineReason::InsufficientFunds,
        DeclineReason::OverSingleLimit,
        DeclineReason::OverDailyLimit,
        DeclineReason::TerminalNotAllowed,
        DeclineReason::Duplicate,
        DeclineReason::SystemError,
        DeclineReason::InvalidAmount,
        DeclineReason::OriginalNotFound,
        DeclineReason::AlreadyReversed,
        DeclineReason::StaleSequence,
        DeclineReason::CardReplaced,
        DeclineReason::CardBad,
        DeclineReason::AccountBlocked,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }

    /// Whether a DECLINED for this reason carries the account's balance in
    /// `balance_fen`. Only the three reasons that refuse an amount an active account
    /// could otherwise pay do, so that the terminal can show what the holder has; every
    /// other decline carries 0, because the account was not looked at (the terminal, the
    /// card, the amount or the sequence number was refused first) or is not usable
    /// (`account_blocked`). docs/PROTOCOL.md 7.1 states the same table.
    pub fn shows_balance(self) -> bool {
        matches!(
            self,
            DeclineReason::InsufficientFunds | DeclineReason::OverSingleLimit | DeclineReason::OverDailyLimit
        )
    }

    pub fn from_code(code: u16) -> Option<DeclineReason> {
        DeclineReason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// A stable snake_case name for metrics labels, reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            DeclineReason::UnknownCard => "unknown_card",
            DeclineReason::CardLost => "card_lost",
            DeclineReason::CardFrozen => "card_frozen",
            DeclineReason::CardCancelled => "card_cancelled",
            DeclineReason::CardExpired => "card_expired",
            DeclineReason::InsufficientFunds => "insufficient_funds",
            DeclineReason::OverSingleLimit => "over_single_limit",
            DeclineReason::OverDailyLimit => "over_daily_limit",
            DeclineReason::TerminalNotAllowed => "terminal_not_allowed",
            DeclineReason::Duplicate => "duplicate",
            DeclineReason::SystemError => "system_error",
            DeclineReason::InvalidAmount => "invalid_amount",
            DeclineReason::OriginalNotFound => "original_not_found",
            DeclineReason::AlreadyReversed => "already_reversed",
            DeclineReason::StaleSequence => "stale_sequence",
            DeclineReason::CardReplaced => "card_replaced",
            DeclineReason::CardBad => "card_bad",
            DeclineReason::AccountBlocked => "account_blocked",
        }
    }
}

/// Why the gateway is closing a connection (body of an ERROR frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame could not be parsed: bad flags, unknown type, wrong body length.
    Malformed = 1,
    /// The length prefix is above `FRAME_LEN_MAX`.
    FrameTooLarge = 2,
    UnsupportedVersion = 3,
    /// A valid message that is not allowed in this state (a purchase before sign-on).
    UnexpectedMessage = 4,
    /// Unknown terminal or wrong proof at sign-on.
    AuthFailed = 5,
    /// The frame's MAC does not verify, or a MAC is missing.
    BadMac = 6,
    /// The frame counter is not above the last one accepted: a replayed frame.
    Replay = 7,
    SignOnTimeout = 8,
    IdleTimeout = 9,
    ShuttingDown = 10,
    /// The gateway is at its connection limit.
    Overloaded = 11,
    /// An internal failure not caused by the terminal.
    ServerError = 12,
    /// A newer connection of the same terminal signed on; this older one is closed.
    Superseded = 13,
    /// The terminal is disabled by the system admin: refused at sign-on (after a valid
    /// proof), and a live session is closed with it when the terminal is disabled.
    TerminalDisabled = 14,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::Malformed,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnexpectedMessage,
        ErrorCode::AuthFailed,
        ErrorCode::BadMac,
        ErrorCode::Replay,
        ErrorCode::SignOnTimeout,
        ErrorCode::IdleTimeout,
        ErrorCode::ShuttingDown,
        ErrorCode::Overloaded,
        ErrorCode::ServerError,
        ErrorCode::Superseded,
        ErrorCode::TerminalDisabled,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn from_code(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|r| r.code() == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnexpectedMessage => "unexpected_message",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::BadMac => "bad_mac",
            ErrorCode::Replay => "replay",
            ErrorCode::SignOnTimeout => "sign_on_timeout",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ServerError => "server_error",
            ErrorCode::Superseded => "superseded",
            ErrorCode::TerminalDisabled => "terminal_disabled",
        }
    }
}

/// The state of a card as a terminal sees it (BALANCE answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CardStatusCode {
    Active = 0,
    Lost = 1,
    Frozen = 2,
    Cancelled = 3,
    Expired = 4,
    Replaced = 5,
    Bad = 6,
}

impl CardStatusCode {
    pub fn from_code(code: u8) -> Option<CardStatusCode> {
        use CardStatusCode::*;
        [Active, Lost, Frozen, Cancelled, Expired, Replaced, Bad]
            .into_iter()
            .find(|s| *s as u8 == code)
    }
}

/// T→G, unauthenticated: who I am and my nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub terminal_id: u64,
    pub terminal_nonce: [u8; 16],
    pub terminal_time_ms: i64,
}

/// G→T, unauthenticated: the gateway's nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub gateway_nonce: [u8; 16],
    pub server_time_ms: i64,
}

/// T→G, unauthenticated: HMAC proving the terminal holds its secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proof {
    pub proof: [u8; 32],
}

/// G→T, the first authenticated frame: sign-on accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignOnOk {
    pub server_time_ms: i64,
    /// The highest transaction sequence number the gateway has recorded for this
    /// terminal (0 if none), so a terminal that lost its counter can resume above it.
    pub last_tx_seq: u64,
    pub blacklist_version: u64,
    /// Send a HEARTBEAT at least this often when idle.
    pub heartbeat_interval_s: u16,
    /// At most this many requests may await answers at once on this connection.
    pub pipeline_depth_max: u16,
    /// `SIGN_ON_OFFLINE_LIMITS`: an OFFLINE_LIMITS frame follows (to POS terminals).
    /// Other bits are 0.
    pub flags: u32,
}

/// SIGN_ON_OK flag: the next frame is OFFLINE_LIMITS (request id 0).
pub const SIGN_ON_OFFLINE_LIMITS: u32 = 0x0000_0001;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub terminal_time_ms: i64,
    pub blacklist_version: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatAck {
    pub server_time_ms: i64,
    pub blacklist_version: u64,
}

/// G→T, after which the gateway closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub detail: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Purchase {
    pub tx_seq: u64,
    pub card: CardNo,
    pub amount_fen: i64,
    pub terminal_time_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reversal {
    pub tx_seq: u64,
    pub original_tx_seq: u64,
    pub card: CardNo,
    pub amount_fen: i64,
    pub terminal_time_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalanceInquiry {
    pub card: CardNo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Approved {
    pub tx_seq: u64,
    pub tx_id: u64,
    pub card: CardNo,
    /// The amount moved: debited by a purchase, refunded by a reversal.
    pub amount_fen: i64,
    pub balance_fen: i64,
    pub time_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Declined {
    pub tx_seq: u64,
    pub card: CardNo,
    pub reason: DeclineReason,
    /// The card's balance when it is known and the card is usable, else 0.
    pub balance_fen: i64,
    pub time_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    pub card: CardNo,
    pub status: CardStatusCode,
    pub balance_fen: i64,
    pub spent_today_fen: i64,
    pub daily_limit_fen: i64,
}

/// G→T, unsolicited: the blacklist changed; a terminal below `version` should sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlacklistPush {
    pub version: u64,
    pub server_time_ms: i64,
}

/// T→G: with `after_card == 0`, "bring me from `since_version` to the current
/// version" (a delta when the gateway still has the changes, else a full list); with
/// `after_card != 0`, "continue the full list after this card number".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlacklistSync {
    pub since_version: u64,
    pub after_card: u64,
}

/// Cards one BLACKLIST_PAGE carries at most. Small on purpose: messages are fixed-width
/// and held inline, so every `Message` value is as large as its largest variant; 8 cards
/// keep that under 100 bytes while a run of pages still moves 256 cards per round trip.
/// (DOOR_CACHE_BULK holds its entries out of line instead: door lists are 100 times
/// longer than the blacklist.)
pub const BLACKLIST_PAGE_CARDS_MAX: usize = 8;

/// What a BLACKLIST_PAGE holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlacklistPageKind {
    /// Changes in `(from_version, to_version]`: cards to add, then cards to remove.
    Delta = 0,
    /// A slice of the whole list as of `to_version`, in card-number order.
    Full = 1,
}

/// Page flag: another BLACKLIST_SYNC is needed to finish (this was the last page of the
/// run, but not of the answer).
pub const BLACKLIST_PAGE_MORE: u8 = 0x01;
/// Page flag: this page starts a full list; drop every card held before applying it.
pub const BLACKLIST_PAGE_FIRST: u8 = 0x02;
/// Page flag: the last page of this run (answers to one BLACKLIST_SYNC).
pub const BLACKLIST_PAGE_LAST_IN_RUN: u8 = 0x04;

/// G→T: one page of a sync answer. Unused card slots are zero on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlacklistPage {
    pub kind: BlacklistPageKind,
    pub flags: u8,
    /// `cards[..added]` join the list; `cards[added..added + removed]` leave it. A full
    /// page only adds.
    pub added: u8,
    pub removed: u8,
    /// Delta: the version the page starts from. Full: 0.
    pub from_version: u64,
    /// Delta: the terminal's version once it applied this page. Full: the version the
    /// list was read at.
    pub to_version: u64,
    /// Full: the cursor for the next BLACKLIST_SYNC (`after_card`). Delta: 0.
    pub next_after_card: u64,
    pub cards: [u64; BLACKLIST_PAGE_CARDS_MAX],
}

impl BlacklistPage {
    pub fn added_cards(&self) -> &[u64] {
        &self.cards[..usize::from(self.added)]
    }

    pub fn removed_cards(&self) -> &[u64] {
        let a = usize::from(self.added);
        &self.cards[a..a + usize::from(self.removed)]
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// T→G, unanswered: the terminal applied pages up to `version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlacklistAck {
    pub version: u64,
}

/// G→T, unsolicited, right after SIGN_ON_OK to a POS terminal: what it may sell while
/// it cannot reach the gateway (docs/PROTOCOL.md, section 8.6). All limits in fen; 0
/// means offline selling is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfflineLimits {
    /// The most one offline sale may be.
    pub sale_max_fen: i64,
    /// The most one card may spend offline on this terminal in one local day.
    pub card_day_max_fen: i64,
    /// The most this terminal may hold in offline sales not yet uploaded.
    pub terminal_total_max_fen: i64,
    /// How long after its last contact with the gateway a terminal may still sell
    /// offline, in minutes.
    pub offline_minutes_max: u32,
    /// Offline sales a terminal may hold not yet uploaded.
    pub sales_max: u16,
    /// Sales one OFFLINE_BATCH may carry.
    pub batch_max: u16,
}

/// T→G: an upload batch: the next `count` frames on this connection are its
/// OFFLINE_SALEs, in strictly increasing `tx_seq` from `first_tx_seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfflineBatch {
    pub first_tx_seq: u64,
    pub count: u16,
}

/// T→G: one sale made offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfflineSale {
    pub tx_seq: u64,
    pub card: CardNo,
    pub amount_fen: i64,
    /// The terminal's clock when it sold.
    pub sale_time_ms: i64,
    /// `offline_sale_mac` under the terminal's long-term secret.
    pub mac: [u8; 16],
}

/// What became of an upload batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OfflineStatus {
    /// Every sale is posted now or was before (`posted + duplicates == count`).
    Accepted = 0,
    /// A sale's MAC does not verify: nothing of the batch was posted. `first_bad_seq`
    /// names it.
    BadMac = 1,
    /// The batch breaks the rules (sequence numbers not strictly increasing, a count
    /// of 0 or above the batch limit, a sequence number of 0, an amount not above 0):
    /// nothing was posted.
    BadBatch = 2,
    /// The gateway could not make the batch durable: send it again later; sales
    /// already posted are recognised as duplicates.
    SystemError = 3,
}

impl OfflineStatus {
    pub const ALL: [OfflineStatus; 4] = [
        OfflineStatus::Accepted,
        OfflineStatus::BadMac,
        OfflineStatus::BadBatch,
        OfflineStatus::SystemError,
    ];

    pub fn from_code(code: u8) -> Option<OfflineStatus> {
        OfflineStatus::ALL.into_iter().find(|s| *s as u8 == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OfflineStatus::Accepted => "accepted",
            OfflineStatus::BadMac => "bad_mac",
            OfflineStatus::BadBatch => "bad_batch",
            OfflineStatus::SystemError => "system_error",
        }
    }
}

/// G→T: the answer to an OFFLINE_BATCH (its request id), sent once the sales it posted
/// are durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfflineResult {
    pub first_tx_seq: u64,
    pub count: u16,
    pub status: OfflineStatus,
    /// Sales posted by this batch.
    pub posted: u16,
    /// Sales the gateway already held (an upload sent again): not posted twice.
    pub duplicates: u16,
    /// Of `posted`: sales posted and flagged for the card desk (the account went below
    /// zero, the card was blocked at the time, a limit was passed, ...).
    pub flagged: u16,
    /// With `BadMac`: the first sale whose MAC failed; else 0.
    pub first_bad_seq: u64,
    /// The highest sequence number the gateway now holds for the terminal.
    pub last_tx_seq: u64,
}

/// Why a door controller's request was granted or denied (ACCESS_RESULT and DOOR_EVENT
/// `reason`). The numeric values are the wire codes and never change meaning; new
/// reasons take new numbers. `Granted` is the only reason of a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum AccessReason {
    Granted = 0,
    /// No permission of the card's person covers the door's group.
    NoPermission = 1,
    /// A permission covers the group, but not at this time of the week.
    OutsideWindow = 2,
    /// Today is a holiday and the permission's schedule has no holiday window now.
    Holiday = 3,
    /// The permission starts later.
    NotYetValid = 4,
    /// The permission ended.
    PermissionExpired = 5,
    CardLost = 6,
    CardFrozen = 7,
    CardCancelled = 8,
    CardExpired = 9,
    UnknownCard = 10,
    UnknownDoor = 11,
    DoorDisabled = 12,
    /// The card's last passage in this door group was in the same direction (entered
    /// and not left, or the other way round), or too recent for the timed variant.
    AntiPassback = 13,
    /// The door is not on this controller's door group.
    WrongGroup = 14,
    /// The card was replaced by a new one; only the new card works.
    CardReplaced = 15,
    /// The card was recorded as damaged.
    CardBad = 16,
    /// The account behind the card is closed or frozen.
    AccountBlocked = 17,
    /// The gateway could not make the decision durable: the door stays shut.
    SystemError = 18,
    /// The `event_seq` was used before by this controller for another check (another
    /// card, door or direction), or so long ago that its answer is no longer held:
    /// nothing is decided or recorded, and the door stays shut. A controller takes a
    /// new number for a new check; only a resend of the same check repeats its answer.
    EventReused = 19,
}

impl AccessReason {
    pub const ALL: [AccessReason; 20] = [
        AccessReason::Granted,
        AccessReason::NoPermission,
        AccessReason::OutsideWindow,
        AccessReason::Holiday,
        AccessReason::NotYetValid,
        AccessReason::PermissionExpired,
        AccessReason::CardLost,
        AccessReason::CardFrozen,
        AccessReason::CardCancelled,
        AccessReason::CardExpired,
        AccessReason::UnknownCard,
        AccessReason::UnknownDoor,
        AccessReason::DoorDisabled,
        AccessReason::AntiPassback,
        AccessReason::WrongGroup,
        AccessReason::CardReplaced,
        AccessReason::CardBad,
        AccessReason::AccountBlocked,
        AccessReason::SystemError,
        AccessReason::EventReused,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn from_code(code: u16) -> Option<AccessReason> {
        AccessReason::ALL.into_iter().find(|r| r.code() == code)
    }

    pub fn is_granted(self) -> bool {
        self == AccessReason::Granted
    }

    /// A stable snake_case name for metrics labels, reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessReason::Granted => "granted",
            AccessReason::NoPermission => "no_permission",
            AccessReason::OutsideWindow => "outside_window",
            AccessReason::Holiday => "holiday",
            AccessReason::NotYetValid => "not_yet_valid",
            AccessReason::PermissionExpired => "permission_expired",
            AccessReason::CardLost => "card_lost",
            AccessReason::CardFrozen => "card_frozen",
            AccessReason::CardCancelled => "card_cancelled",
            AccessReason::CardExpired => "card_expired",
            AccessReason::UnknownCard => "unknown_card",
            AccessReason::UnknownDoor => "unknown_door",
            AccessReason::DoorDisabled => "door_disabled",
            AccessReason::AntiPassback => "anti_passback",
            AccessReason::WrongGroup => "wrong_group",
            AccessReason::CardReplaced => "card_replaced",
            AccessReason::CardBad => "card_bad",
            AccessReason::AccountBlocked => "account_blocked",
            AccessReason::SystemError => "system_error",
            AccessReason::EventReused => "event_reused",
        }
    }
}

/// Which way a card passes a door.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Direction {
    In = 1,
    Out = 2,
}

impl Direction {
    pub fn from_code(code: u8) -> Option<Direction> {
        match code {
            1 => Some(Direction::In),
            2 => Some(Direction::Out),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// T→G (door controller): may `card` pass `door` in `direction` now? Answered by one
/// ACCESS_RESULT with this frame's request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessCheck {
    /// The controller's event number: one strictly increasing sequence per controller,
    /// shared by online checks, punches and events decided offline.
    pub event_seq: u64,
    pub card: CardNo,
    pub door: u32,
    pub direction: Direction,
    /// The controller's clock when the card was presented.
    pub controller_time_ms: i64,
}

/// G→T: the gateway's decision on an ACCESS_CHECK, durable before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessResult {
    pub event_seq: u64,
    pub card: CardNo,
    pub door: u32,
    /// On the wire `granted` is 1 exactly when the reason is `Granted`.
    pub reason: AccessReason,
    /// The current cache version of the controller's door group: a controller below it
    /// should sync (a missed DOOR_CACHE_PUSH shows here).
    pub cache_version: u64,
    pub gateway_time_ms: i64,
}

impl AccessResult {
    pub fn granted(&self) -> bool {
        self.reason.is_granted()
    }
}

/// T→G (attendance clock): `card` punched. Answered by one PUNCH_RESULT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Punch {
    pub event_seq: u64,
    pub card: CardNo,
    pub controller_time_ms: i64,
}

/// What became of a punch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PunchStatus {
    /// Recorded (durable) now.
    Recorded = 0,
    /// This clock's `event_seq` was recorded before: not recorded twice.
    Duplicate = 1,
    /// No such card: nothing recorded as a punch.
    UnknownCard = 2,
    /// The card is lost, frozen, cancelled, expired, replaced or bad: nothing recorded
    /// as a punch.
    CardBlocked = 3,
    /// The `event_seq` was used before by this clock for another card, or so long ago
    /// that its answer is no longer held: nothing recorded. A clock takes a new number
    /// for a new punch; only a resend of the same punch is `duplicate`.
    EventReused = 4,
}

impl PunchStatus {
    pub const ALL: [PunchStatus; 5] = [
        PunchStatus::Recorded,
        PunchStatus::Duplicate,
        PunchStatus::UnknownCard,
        PunchStatus::CardBlocked,
        PunchStatus::EventReused,
    ];

    pub fn from_code(code: u8) -> Option<PunchStatus> {
        PunchStatus::ALL.into_iter().find(|s| *s as u8 == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PunchStatus::Recorded => "recorded",
            PunchStatus::Duplicate => "duplicate",
            PunchStatus::UnknownCard => "unknown_card",
            PunchStatus::CardBlocked => "card_blocked",
            PunchStatus::EventReused => "event_reused",
        }
    }
}

/// G→T: the answer to a PUNCH, sent once the punch is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PunchResult {
    pub event_seq: u64,
    pub card: CardNo,
    pub status: PunchStatus,
    pub gateway_time_ms: i64,
}

/// T→G: with `after == None`, "bring my door group's cache from `have_version` to the
/// current version" (a delta when the gateway still has the changes, else the full
/// list); with `after == Some(entry)`, "continue the full list after this entry".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorCacheSync {
    pub have_version: u64,
    /// The last entry of the previous run of a full list. On the wire, a card of 0
    /// means none.
    pub after: Option<DoorCacheEntry>,
    /// 0: answer with DOOR_CACHE_PAGEs (4 entries each). Above 0: the controller takes
    /// DOOR_CACHE_BULK frames of up to this many entries (the gateway sends at most
    /// `DOOR_CACHE_BULK_ENTRIES_MAX`), so that a first sync of thousands of entries
    /// costs tens of frames instead of thousands.
    pub page_entries_max: u16,
}

impl DoorCacheSync {
    /// Entries one page of the answer carries at most: 4 in DOOR_CACHE_PAGEs when
    /// `page_entries_max` is 0, else up to min(`page_entries_max`, 512) in DOOR_CACHE_BULKs.
    pub fn entries_per_page(&self) -> usize {
        match usize::from(self.page_entries_max) {
            0 => DOOR_CACHE_PAGE_ENTRIES_MAX,
            n => n.min(DOOR_CACHE_BULK_ENTRIES_MAX),
        }
    }

    /// `page` as this sync asked for it: itself, or the DOOR_CACHE_PAGE it stands for
    /// when `page_entries_max` is 0 (`None` if it holds more than a page does). A
    /// gateway builds every page one way and answers each controller in its kind.
    pub fn answer(&self, page: DoorCacheBulk) -> Option<Message> {
        if self.page_entries_max > 0 {
            return Some(Message::DoorCacheBulk(page));
        }
        let added: Vec<DoorCacheEntry> = page.added_entries().collect();
        let removed: Vec<DoorCacheEntry> = page.removed_entries().collect();
        DoorCachePage::new(
            page.kind,
            page.flags,
            page.from_version,
            page.to_version,
            &added,
            &removed,
        )
        .map(|p| Message::DoorCachePage(p.with_passback(page.passback, page.passback_min)))
    }
}

/// One cache entry: `card` may pass the controller's doors in the minutes
/// `valid_from_min..valid_to_min` (unix minutes, UTC, end exclusive) within the windows
/// of `schedule`. A card may have several entries (several permissions); it passes when
/// any of them lets it. Entries are ordered by (card, schedule, valid_from_min,
/// valid_to_min), and a delta removes an entry by naming all four.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DoorCacheEntry {
    pub card: CardNo,
    /// `DOOR_SCHEDULE_ALWAYS` or a schedule sent by DOOR_SCHEDULE.
    pub schedule: u32,
    /// The first minute the entry is valid; 0: since always.
    pub valid_from_min: u32,
    /// The first minute the entry is no longer valid; `DOOR_VALID_FOREVER`: no end.
    pub valid_to_min: u32,
}

/// Schedule id meaning "at every minute of every day, holidays included"; never sent as
/// a DOOR_SCHEDULE.
pub const DOOR_SCHEDULE_ALWAYS: u32 = 0;
/// `valid_to_min` of an entry with no end.
pub const DOOR_VALID_FOREVER: u32 = u32::MAX;

/// Entries one DOOR_CACHE_PAGE carries at most. Small for the reason of
/// `BLACKLIST_PAGE_CARDS_MAX`: every `Message` is as large as its largest variant. A
/// controller that can take more asks for DOOR_CACHE_BULK.
pub const DOOR_CACHE_PAGE_ENTRIES_MAX: usize = 4;

/// What a DOOR_CACHE_PAGE holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DoorCachePageKind {
    /// Changes in `(from_version, to_version]`: entries to add, then entries to remove.
    Delta = 0,
    /// A slice of the whole list as of `to_version`, in entry order.
    Full = 1,
}

/// Page flag: another DOOR_CACHE_SYNC is needed to finish (this was the last page of
/// the run, but not of the answer).
pub const DOOR_PAGE_MORE: u8 = 0x01;
/// Page flag: this page starts a full list: the list being built starts empty.
pub const DOOR_PAGE_FIRST: u8 = 0x02;
/// Page flag: the last frame of this run (the answer to one DOOR_CACHE_SYNC).
pub const DOOR_PAGE_LAST_IN_RUN: u8 = 0x04;

/// The anti-passback rule of a door group, as its controllers apply it offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Passback {
    /// No anti-passback.
    #[default]
    Off = 0,
    /// A card that entered must exit before it enters again, and the other way round.
    Strict = 1,
    /// As `Strict`, but a passage in the same direction is allowed again once
    /// `passback_min` minutes have passed since the last one.
    Timed = 2,
}

impl Passback {
    pub fn from_code(code: u8) -> Option<Passback> {
        [Passback::Off, Passback::Strict, Passback::Timed]
            .into_iter()
            .find(|p| *p as u8 == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Passback::Off => "off",
            Passback::Strict => "strict",
            Passback::Timed => "timed",
        }
    }
}

/// G→T: one page of a door cache sync answer. The entries are kept as parallel arrays
/// so that the page stays as small as a blacklist page; build one with
/// [`DoorCachePage::new`] and read it with [`DoorCachePage::added_entries`] and
/// [`DoorCachePage::removed_entries`]. Unused slots are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorCachePage {
    pub kind: DoorCachePageKind,
    pub flags: u8,
    pub added: u8,
    pub removed: u8,
    /// The door group's anti-passback rule as of `to_version` (every page carries it).
    pub passback: Passback,
    /// With `Passback::Timed`: the minutes after which the same direction is allowed
    /// again; else 0.
    pub passback_min: u16,
    /// Delta: the version the page starts from. Full: 0.
    pub from_version: u64,
    /// Delta: the controller's version once it applied this page. Full: the version
    /// the list was read at.
    pub to_version: u64,
    cards: [u64; DOOR_CACHE_PAGE_ENTRIES_MAX],
    schedules: [u32; DOOR_CACHE_PAGE_ENTRIES_MAX],
    valid_from: [u32; DOOR_CACHE_PAGE_ENTRIES_MAX],
    valid_to: [u32; DOOR_CACHE_PAGE_ENTRIES_MAX],
}

impl DoorCachePage {
    /// A page adding `added` then removing `removed`; `None` when they do not fit on a
    /// page or a full page would remove.
    pub fn new(
        kind: DoorCachePageKind,
        flags: u8,
        from_version: u64,
        to_version: u64,
        added: &[DoorCacheEntry],
        removed: &[DoorCacheEntry],
    ) -> Option<DoorCachePage> {
        if added.len() + removed.len() > DOOR_CACHE_PAGE_ENTRIES_MAX
            || (kind == DoorCachePageKind::Full && !removed.is_empty())
        {
            return None;
        }
        let mut page = DoorCachePage {
            kind,
            flags,
            added: added.len() as u8,
            removed: removed.len() as u8,
            passback: Passback::Off,
            passback_min: 0,
            from_version,
            to_version,
            cards: [0; DOOR_CACHE_PAGE_ENTRIES_MAX],
            schedules: [0; DOOR_CACHE_PAGE_ENTRIES_MAX],
            valid_from: [0; DOOR_CACHE_PAGE_ENTRIES_MAX],
            valid_to: [0; DOOR_CACHE_PAGE_ENTRIES_MAX],
        };
        for (i, e) in added.iter().chain(removed).enumerate() {
            page.set(i, *e);
        }
        Some(page)
    }

    fn set(&mut self, i: usize, e: DoorCacheEntry) {
        self.cards[i] = e.card.0;
        self.schedules[i] = e.schedule;
        self.valid_from[i] = e.valid_from_min;
        self.valid_to[i] = e.valid_to_min;
    }

    fn entry(&self, i: usize) -> DoorCacheEntry {
        DoorCacheEntry {
            card: CardNo(self.cards[i]),
            schedule: self.schedules[i],
            valid_from_min: self.valid_from[i],
            valid_to_min: self.valid_to[i],
        }
    }

    pub fn added_entries(&self) -> impl Iterator<Item = DoorCacheEntry> + '_ {
        (0..usize::from(self.added)).map(|i| self.entry(i))
    }

    pub fn removed_entries(&self) -> impl Iterator<Item = DoorCacheEntry> + '_ {
        let a = usize::from(self.added);
        (a..a + usize::from(self.removed)).map(|i| self.entry(i))
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The same page carrying the group's anti-passback rule.
    pub fn with_passback(mut self, passback: Passback, passback_min: u16) -> DoorCachePage {
        self.passback = passback;
        self.passback_min = passback_min;
        self
    }
}

/// Entries one DOOR_CACHE_BULK carries at most: its body is then 10,272 bytes, well
/// inside `FRAME_LEN_MAX`, and a run of 32 frames carries 16,384 entries.
pub const DOOR_CACHE_BULK_ENTRIES_MAX: usize = 512;
/// Bytes of a DOOR_CACHE_BULK body before its entries.
pub const DOOR_CACHE_BULK_HEAD_LEN: usize = 32;
/// Bytes of one cache entry on the wire.
pub const DOOR_CACHE_ENTRY_LEN: usize = 20;

/// G→T: a DOOR_CACHE_PAGE with as many entries as the controller asked for in its
/// DOOR_CACHE_SYNC (`page_entries_max`), the body as long as its entries. The entries
/// stay in their wire form, so that the `Message` stays small (every variant is as large
/// as the largest) and a decoded page is one copy of the frame. Build one with
/// [`DoorCacheBulk::new`]; read it with [`DoorCacheBulk::added_entries`] and
/// [`DoorCacheBulk::removed_entries`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoorCacheBulk {
    pub kind: DoorCachePageKind,
    pub flags: u8,
    pub passback: Passback,
    pub passback_min: u16,
    pub from_version: u64,
    pub to_version: u64,
    added: u16,
    removed: u16,
    /// `added + removed` entries of `DOOR_CACHE_ENTRY_LEN` bytes each, as on the wire.
    entries: Bytes,
}

impl DoorCacheBulk {
    /// A page adding `added` then removing `removed`; `None` when they are more than
    /// `DOOR_CACHE_BULK_ENTRIES_MAX` or a full page would remove.
    pub fn new(
        kind: DoorCachePageKind,
        flags: u8,
        from_version: u64,
        to_version: u64,
        added: &[DoorCacheEntry],
        removed: &[DoorCacheEntry],
    ) -> Option<DoorCacheBulk> {
        let n = added.len() + removed.len();
        if n > DOOR_CACHE_BULK_ENTRIES_MAX || (kind == DoorCachePageKind::Full && !removed.is_empty()) {
            return None;
        }
        let mut entries = BytesMut::with_capacity(n * DOOR_CACHE_ENTRY_LEN);
        for e in added.iter().chain(removed) {
            put_entry(&mut entries, e);
        }
        Some(DoorCacheBulk {
            kind,
            flags,
            passback: Passback::Off,
            passback_min: 0,
            from_version,
            to_version,
            added: added.len() as u16,
            removed: removed.len() as u16,
            entries: entries.freeze(),
        })
    }

    /// The same page carrying the group's anti-passback rule.
    pub fn with_passback(mut self, passback: Passback, passback_min: u16) -> DoorCacheBulk {
        self.passback = passback;
        self.passback_min = passback_min;
        self
    }

    pub fn added(&self) -> u16 {
        self.added
    }

    pub fn removed(&self) -> u16 {
        self.removed
    }

    fn entry(&self, i: usize) -> DoorCacheEntry {
        let at = i * DOOR_CACHE_ENTRY_LEN;
        read_entry(&mut Reader(&self.entries[at..at + DOOR_CACHE_ENTRY_LEN]))
    }

    pub fn added_entries(&self) -> impl Iterator<Item = DoorCacheEntry> + '_ {
        (0..usize::from(self.added)).map(|i| self.entry(i))
    }

    pub fn removed_entries(&self) -> impl Iterator<Item = DoorCacheEntry> + '_ {
        let a = usize::from(self.added);
        (a..a + usize::from(self.removed)).map(|i| self.entry(i))
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn body_len(&self) -> usize {
        DOOR_CACHE_BULK_HEAD_LEN + self.entries.len()
    }
}

/// A DOOR_CACHE_PAGE as the bulk page it stands for (the same fields and entries), so
/// that a controller applies either kind of run with one code path.
impl From<&DoorCachePage> for DoorCacheBulk {
    fn from(p: &DoorCachePage) -> DoorCacheBulk {
        let added: Vec<DoorCacheEntry> = p.added_entries().collect();
        let removed: Vec<DoorCacheEntry> = p.removed_entries().collect();
        DoorCacheBulk::new(p.kind, p.flags, p.from_version, p.to_version, &added, &removed)
            .expect("a page's entries fit a bulk page")
            .with_passback(p.passback, p.passback_min)
    }
}

/// One weekly window of a schedule, in the business time zone's local time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DoorWindow {
    /// 0 = Monday .. 6 = Sunday; `DOOR_WINDOW_HOLIDAY` for a window that applies on
    /// holidays instead of the weekday's.
    pub day: u8,
    /// The first minute of the window, 0..=1439.
    pub start_min: u16,
    /// The minute the window ends (exclusive), 1..=1440. At or below `start_min` the
    /// window crosses midnight and ends on the next day.
    pub end_min: u16,
}

/// `DoorWindow::day` of a holiday window.
pub const DOOR_WINDOW_HOLIDAY: u8 = 7;

/// Windows one DOOR_SCHEDULE frame carries at most; a longer schedule takes several.
pub const DOOR_SCHEDULE_WINDOWS_MAX: usize = 16;

/// DOOR_SCHEDULE flag: the first frame of this schedule: forget its windows held.
pub const DOOR_SCHEDULE_FIRST: u8 = 0x01;

/// How a schedule treats the dates of the holiday calendar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HolidayRule {
    /// Holidays are ordinary days: the weekday's windows apply.
    Ignore = 0,
    /// On a holiday only the schedule's holiday windows apply (none: closed all day).
    HolidayWindows = 1,
}

/// G→T, inside a sync answer: (part of) a schedule the cache entries refer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorSchedule {
    /// Above 0.
    pub schedule: u32,
    pub flags: u8,
    pub holiday_rule: HolidayRule,
    pub count: u8,
    pub windows: [DoorWindow; DOOR_SCHEDULE_WINDOWS_MAX],
}

impl DoorSchedule {
    pub fn windows(&self) -> &[DoorWindow] {
        &self.windows[..usize::from(self.count)]
    }
}

/// Holiday dates one DOOR_HOLIDAYS frame carries at most.
pub const DOOR_HOLIDAYS_MAX: usize = 16;

/// DOOR_HOLIDAYS flag: the first frame of the calendar: forget the dates held.
pub const DOOR_HOLIDAYS_FIRST: u8 = 0x01;

/// G→T, inside a sync answer: (part of) the holiday calendar, as local dates counted in
/// days since 1970-01-01, and the business time zone the windows and dates are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorHolidays {
    pub flags: u8,
    pub count: u8,
    /// Local time minus UTC, in minutes (480 for UTC+8), in force for the dates listed.
    pub utc_offset_min: i16,
    pub days: [u32; DOOR_HOLIDAYS_MAX],
}

impl DoorHolidays {
    pub fn days(&self) -> &[u32] {
        &self.days[..usize::from(self.count)]
    }
}

/// T→G, unanswered: the controller applied a sync up to `version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorCacheAck {
    pub version: u64,
}

/// G→T, unsolicited: the door group's cache changed; a controller below `version`
/// should sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorCachePush {
    pub version: u64,
    pub server_time_ms: i64,
}

/// T→G: an upload batch: the next `count` frames on this connection are its
/// DOOR_EVENTs, in strictly increasing `event_seq` from `first_event_seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorEventsBatch {
    pub first_event_seq: u64,
    pub count: u16,
}

/// T→G: one decision a controller made offline from its cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorEvent {
    pub event_seq: u64,
    pub card: CardNo,
    pub door: u32,
    pub direction: Direction,
    /// On the wire `granted` is 1 exactly when the reason is `Granted`.
    pub reason: AccessReason,
    /// The controller's clock when it decided.
    pub event_time_ms: i64,
    /// `door_event_mac` under the controller's long-term secret.
    pub mac: [u8; 16],
}

impl DoorEvent {
    pub fn granted(&self) -> bool {
        self.reason.is_granted()
    }
}

/// What became of a door event upload batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DoorEventsStatus {
    /// Every event is stored now or was before (`stored + duplicates == count`).
    Accepted = 0,
    /// An event's MAC does not verify: nothing of the batch was stored. `first_bad_seq`
    /// names it.
    BadMac = 1,
    /// The batch breaks the rules (sequence numbers not strictly increasing, a count of
    /// 0 or above the batch limit, a sequence number of 0): nothing was stored.
    BadBatch = 2,
    /// The gateway could not make the batch durable: send it again later; events
    /// already stored are recognised as duplicates.
    SystemError = 3,
}

impl DoorEventsStatus {
    pub const ALL: [DoorEventsStatus; 4] = [
        DoorEventsStatus::Accepted,
        DoorEventsStatus::BadMac,
        DoorEventsStatus::BadBatch,
        DoorEventsStatus::SystemError,
    ];

    pub fn from_code(code: u8) -> Option<DoorEventsStatus> {
        DoorEventsStatus::ALL.into_iter().find(|s| *s as u8 == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DoorEventsStatus::Accepted => "accepted",
            DoorEventsStatus::BadMac => "bad_mac",
            DoorEventsStatus::BadBatch => "bad_batch",
            DoorEventsStatus::SystemError => "system_error",
        }
    }
}

/// Events one DOOR_EVENTS_BATCH may carry at most.
pub const DOOR_EVENTS_BATCH_MAX: u16 = 64;

/// G→T: the answer to a DOOR_EVENTS_BATCH (its request id), sent once the events it
/// stored are durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorEventsResult {
    pub first_event_seq: u64,
    pub count: u16,
    pub status: DoorEventsStatus,
    /// Events stored by this batch.
    pub stored: u16,
    /// Events the gateway already held (an upload sent again): not stored twice.
    pub duplicates: u16,
    /// Of `stored`: events the gateway's own rules would have decided otherwise (a
    /// grant to a card blocked by then, an anti-passback conflict), flagged for
    /// security's review.
    pub flagged: u16,
    /// With `BadMac`: the first event whose MAC failed; else 0.
    pub first_bad_seq: u64,
    /// The highest event sequence number the gateway now holds for the controller.
    pub last_event_seq: u64,
}

/// Every message of protocol version 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Challenge(Challenge),
    Proof(Proof),
    SignOnOk(SignOnOk),
    Heartbeat(Heartbeat),
    HeartbeatAck(HeartbeatAck),
    Error(ErrorFrame),
    Purchase(Purchase),
    Reversal(Reversal),
    BalanceInquiry(BalanceInquiry),
    Approved(Approved),
    Declined(Declined),
    Balance(Balance),
    BlacklistPush(BlacklistPush),
    BlacklistSync(BlacklistSync),
    BlacklistPage(BlacklistPage),
    BlacklistAck(BlacklistAck),
    OfflineLimits(OfflineLimits),
    OfflineBatch(OfflineBatch),
    OfflineSale(OfflineSale),
    OfflineResult(OfflineResult),
    AccessCheck(AccessCheck),
    AccessResult(AccessResult),
    Punch(Punch),
    PunchResult(PunchResult),
    DoorCacheSync(DoorCacheSync),
    DoorCachePage(DoorCachePage),
    DoorCacheBulk(DoorCacheBulk),
    DoorSchedule(DoorSchedule),
    DoorHolidays(DoorHolidays),
    DoorCacheAck(DoorCacheAck),
    DoorCachePush(DoorCachePush),
    DoorEventsBatch(DoorEventsBatch),
    DoorEvent(DoorEvent),
    DoorEventsResult(DoorEventsResult),
}

/// The body lengths a message type may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLen {
    /// Always this many bytes.
    Fixed(usize),
    /// A head of `head` bytes, then 0 to `max` items of `item` bytes each.
    Items { head: usize, item: usize, max: usize },
}

impl BodyLen {
    pub fn accepts(self, n: usize) -> bool {
        match self {
            BodyLen::Fixed(len) => n == len,
            BodyLen::Items { head, item, max } => {
                n >= head && (n - head).is_multiple_of(item) && (n - head) / item <= max
            }
        }
    }

    /// The longest body of this shape.
    pub fn max(self) -> usize {
        match self {
            BodyLen::Fixed(len) => len,
            BodyLen::Items { head, item, max } => head + item * max,
        }
    }

    /// `Ok` when a body of `got` bytes has this shape, else the error naming it.
    pub fn check(self, msg_type: u8, got: usize) -> Result<(), BodyError> {
        match self {
            _ if self.accepts(got) => Ok(()),
            BodyLen::Fixed(expected) => Err(BodyError::Length {
                msg_type,
                expected,
                got,
            }),
            BodyLen::Items { head, item, max } => Err(BodyError::ItemsLength {
                msg_type,
                head,
                item,
                max,
                got,
            }),
        }
    }
}

/// Why a body could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("message type {msg_type:#04x} needs a {expected}-byte body, got {got}")]
    Length { msg_type: u8, expected: usize, got: usize },
    #[error(
        "message type {msg_type:#04x} needs a body of {head} bytes and up to {max} items of {item} bytes, got {got} bytes"
    )]
    ItemsLength {
        msg_type: u8,
        head: usize,
        item: usize,
        max: usize,
        got: usize,
    },
    #[error("field {0} holds a value outside its domain")]
    BadField(&'static str),
}

/// Reads fixed-width little-endian fields from a body whose length was checked first.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }
    fn card(&mut self) -> CardNo {
        CardNo(self.u64())
    }
}

impl Message {
    pub fn msg_type(&self) -> u8 {
        match self {
            Message::Hello(_) => msg_type::HELLO,
            Message::Challenge(_) => msg_type::CHALLENGE,
            Message::Proof(_) => msg_type::PROOF,
            Message::SignOnOk(_) => msg_type::SIGN_ON_OK,
            Message::Heartbeat(_) => msg_type::HEARTBEAT,
            Message::HeartbeatAck(_) => msg_type::HEARTBEAT_ACK,
            Message::Error(_) => msg_type::ERROR,
            Message::Purchase(_) => msg_type::PURCHASE,
            Message::Reversal(_) => msg_type::REVERSAL,
            Message::BalanceInquiry(_) => msg_type::BALANCE_INQUIRY,
            Message::Approved(_) => msg_type::APPROVED,
            Message::Declined(_) => msg_type::DECLINED,
            Message::Balance(_) => msg_type::BALANCE,
            Message::BlacklistPush(_) => msg_type::BLACKLIST_PUSH,
            Message::BlacklistSync(_) => msg_type::BLACKLIST_SYNC,
            Message::BlacklistPage(_) => msg_type::BLACKLIST_PAGE,
            Message::BlacklistAck(_) => msg_type::BLACKLIST_ACK,
            Message::OfflineLimits(_) => msg_type::OFFLINE_LIMITS,
            Message::OfflineBatch(_) => msg_type::OFFLINE_BATCH,
            Message::OfflineSale(_) => msg_type::OFFLINE_SALE,
            Message::OfflineResult(_) => msg_type::OFFLINE_RESULT,
            Message::AccessCheck(_) => msg_type::ACCESS_CHECK,
            Message::AccessResult(_) => msg_type::ACCESS_RESULT,
            Message::Punch(_) => msg_type::PUNCH,
            Message::PunchResult(_) => msg_type::PUNCH_RESULT,
            Message::DoorCacheSync(_) => msg_type::DOOR_CACHE_SYNC,
            Message::DoorCachePage(_) => msg_type::DOOR_CACHE_PAGE,
            Message::DoorCacheBulk(_) => msg_type::DOOR_CACHE_BULK,
            Message::DoorSchedule(_) => msg_type::DOOR_SCHEDULE,
            Message::DoorHolidays(_) => msg_type::DOOR_HOLIDAYS,
            Message::DoorCacheAck(_) => msg_type::DOOR_CACHE_ACK,
            Message::DoorCachePush(_) => msg_type::DOOR_CACHE_PUSH,
            Message::DoorEventsBatch(_) => msg_type::DOOR_EVENTS_BATCH,
            Message::DoorEvent(_) => msg_type::DOOR_EVENT,
            Message::DoorEventsResult(_) => msg_type::DOOR_EVENTS_RESULT,
        }
    }

    /// The body length of a message type whose bodies all have one length; `None` for
    /// a type this version lacks or one whose length varies (`body_shape` says which).
    pub fn body_len(msg_type: u8) -> Option<usize> {
        match Message::body_shape(msg_type)? {
            BodyLen::Fixed(n) => Some(n),
            BodyLen::Items { .. } => None,
        }
    }

    /// The body lengths a message type may have, or `None` for a type this version lacks.
    pub fn body_shape(msg_type: u8) -> Option<BodyLen> {
        if msg_type == msg_type::DOOR_CACHE_BULK {
            return Some(BodyLen::Items {
                head: DOOR_CACHE_BULK_HEAD_LEN,
                item: DOOR_CACHE_ENTRY_LEN,
                max: DOOR_CACHE_BULK_ENTRIES_MAX,
            });
        }
        Some(BodyLen::Fixed(match msg_type {
            msg_type::HELLO => 32,
            msg_type::CHALLENGE => 24,
            msg_type::PROOF => 32,
            msg_type::SIGN_ON_OK => 32,
            msg_type::HEARTBEAT => 16,
            msg_type::HEARTBEAT_ACK => 16,
            msg_type::ERROR => 8,
            msg_type::PURCHASE => 32,
            msg_type::REVERSAL => 40,
            msg_type::BALANCE_INQUIRY => 8,
            msg_type::APPROVED => 48,
            msg_type::DECLINED => 40,
            msg_type::BALANCE => 40,
            msg_type::BLACKLIST_PUSH => 16,
            msg_type::BLACKLIST_SYNC => 16,
            msg_type::BLACKLIST_PAGE => 32 + 8 * BLACKLIST_PAGE_CARDS_MAX,
            msg_type::BLACKLIST_ACK => 8,
            msg_type::OFFLINE_LIMITS => 32,
            msg_type::OFFLINE_BATCH => 16,
            msg_type::OFFLINE_SALE => 48,
            msg_type::OFFLINE_RESULT => 40,
            msg_type::ACCESS_CHECK => 32,
            msg_type::ACCESS_RESULT => 40,
            msg_type::PUNCH => 24,
            msg_type::PUNCH_RESULT => 32,
            msg_type::DOOR_CACHE_SYNC => 32,
            msg_type::DOOR_CACHE_PAGE => 24 + 20 * DOOR_CACHE_PAGE_ENTRIES_MAX,
            msg_type::DOOR_SCHEDULE => 8 + 6 * DOOR_SCHEDULE_WINDOWS_MAX,
            msg_type::DOOR_HOLIDAYS => 8 + 4 * DOOR_HOLIDAYS_MAX,
            msg_type::DOOR_CACHE_ACK => 8,
            msg_type::DOOR_CACHE_PUSH => 16,
            msg_type::DOOR_EVENTS_BATCH => 16,
            msg_type::DOOR_EVENT => 48,
            msg_type::DOOR_EVENTS_RESULT => 40,
            _ => return None,
        }))
    }

    /// The flags of a door cache page (DOOR_CACHE_PAGE or DOOR_CACHE_BULK); `None` for
    /// any other message.
    pub fn door_page_flags(&self) -> Option<u8> {
        match self {
            Message::DoorCachePage(p) => Some(p.flags),
            Message::DoorCacheBulk(p) => Some(p.flags),
            _ => None,
        }
    }

    /// The length of this message's body as `encode_body` writes it.
    pub fn encoded_body_len(&self) -> usize {
        match self {
            Message::DoorCacheBulk(b) => b.body_len(),
            m => Message::body_len(m.msg_type()).expect("every fixed-length Message variant has a body length"),
        }
    }

    /// Whether this message may travel before a session key exists, in its own direction.
    /// Only the three sign-on steps and an ERROR may; everything else requires a MAC.
    /// A decoder accepts only those its peer sends (`Side::accepts_unauthenticated`).
    pub fn allowed_unauthenticated(msg_type: u8) -> bool {
        matches!(
            msg_type,
            msg_type::HELLO | msg_type::CHALLENGE | msg_type::PROOF | msg_type::ERROR
        )
    }

    pub fn decode_body(msg_type: u8, body: &[u8]) -> Result<Message, BodyError> {
        let shape = Message::body_shape(msg_type).ok_or(BodyError::UnknownType(msg_type))?;
        shape.check(msg_type, body.len())?;
        let mut r = Reader(body);
        Ok(match msg_type {
            msg_type::HELLO => Message::Hello(Hello {
                terminal_id: r.u64(),
                terminal_nonce: r.take(),
                terminal_time_ms: r.i64(),
            }),
            msg_type::CHALLENGE => Message::Challenge(Challenge {
                gateway_nonce: r.take(),
                server_time_ms: r.i64(),
            }),
            msg_type::PROOF => Message::Proof(Proof { proof: r.take() }),
            msg_type::SIGN_ON_OK => Message::SignOnOk(SignOnOk {
                server_time_ms: r.i64(),
                last_tx_seq: r.u64(),
                blacklist_version: r.u64(),
                heartbeat_interval_s: r.u16(),
                pipeline_depth_max: r.u16(),
                flags: r.u32(),
            }),
            msg_type::HEARTBEAT => Message::Heartbeat(Heartbeat {
                terminal_time_ms: r.i64(),
                blacklist_version: r.u64(),
            }),
            msg_type::HEARTBEAT_ACK => Message::HeartbeatAck(HeartbeatAck {
                server_time_ms: r.i64(),
                blacklist_version: r.u64(),
            }),
            msg_type::ERROR => {
                let code = ErrorCode::from_code(r.u16()).ok_or(BodyError::BadField("code"))?;
                let _reserved = r.u16();
                Message::Error(ErrorFrame { code, detail: r.u32() })
            }
            msg_type::PURCHASE => Message::Purchase(Purchase {
                tx_seq: r.u64(),
                card: r.card(),
                amount_fen: r.i64(),
                terminal_time_ms: r.i64(),
            }),
            msg_type::REVERSAL => Message::Reversal(Reversal {
                tx_seq: r.u64(),
                original_tx_seq: r.u64(),
                card: r.card(),
                amount_fen: r.i64(),
                terminal_time_ms: r.i64(),
            }),
            msg_type::BALANCE_INQUIRY => Message::BalanceInquiry(BalanceInquiry { card: r.card() }),
            msg_type::APPROVED => Message::Approved(Approved {
                tx_seq: r.u64(),
                tx_id: r.u64(),
                card: r.card(),
                amount_fen: r.i64(),
                balance_fen: r.i64(),
                time_ms: r.i64(),
            }),
            msg_type::DECLINED => {
                let tx_seq = r.u64();
                let card = r.card();
                let reason = DeclineReason::from_code(r.u16()).ok_or(BodyError::BadField("reason"))?;
                let _reserved: [u8; 6] = r.take();
                Message::Declined(Declined {
                    tx_seq,
                    card,
                    reason,
                    balance_fen: r.i64(),
                    time_ms: r.i64(),
                })
            }
            msg_type::BALANCE => {
                let card = r.card();
                let status = CardStatusCode::from_code(r.u8()).ok_or(BodyError::BadField("status"))?;
                let _reserved: [u8; 7] = r.take();
                Message::Balance(Balance {
                    card,
                    status,
                    balance_fen: r.i64(),
                    spent_today_fen: r.i64(),
                    daily_limit_fen: r.i64(),
                })
            }
            msg_type::BLACKLIST_PUSH => Message::BlacklistPush(BlacklistPush {
                version: r.u64(),
                server_time_ms: r.i64(),
            }),
            msg_type::BLACKLIST_SYNC => Message::BlacklistSync(BlacklistSync {
                since_version: r.u64(),
                after_card: r.u64(),
            }),
            msg_type::BLACKLIST_PAGE => {
                let kind = match r.u8() {
                    0 => BlacklistPageKind::Delta,
                    1 => BlacklistPageKind::Full,
                    _ => return Err(BodyError::BadField("kind")),
                };
                let flags = r.u8();
                if flags & !(BLACKLIST_PAGE_MORE | BLACKLIST_PAGE_FIRST | BLACKLIST_PAGE_LAST_IN_RUN) != 0 {
                    return Err(BodyError::BadField("flags"));
                }
                let added = r.u8();
                let removed = r.u8();
                if usize::from(added) + usize::from(removed) > BLACKLIST_PAGE_CARDS_MAX
                    || (kind == BlacklistPageKind::Full && removed != 0)
                {
                    return Err(BodyError::BadField("count"));
                }
                let _reserved = r.u32();
                let from_version = r.u64();
                let to_version = r.u64();
                let next_after_card = r.u64();
                let mut cards = [0u64; BLACKLIST_PAGE_CARDS_MAX];
                for c in &mut cards {
                    *c = r.u64();
                }
                Message::BlacklistPage(BlacklistPage {
                    kind,
                    flags,
                    added,
                    removed,
                    from_version,
                    to_version,
                    next_after_card,
                    cards,
                })
            }
            msg_type::BLACKLIST_ACK => Message::BlacklistAck(BlacklistAck { version: r.u64() }),
            msg_type::OFFLINE_LIMITS => {
                let m = OfflineLimits {
                    sale_max_fen: r.i64(),
                    card_day_max_fen: r.i64(),
                    terminal_total_max_fen: r.i64(),
                    offline_minutes_max: r.u32(),
                    sales_max: r.u16(),
                    batch_max: r.u16(),
                };
                Message::OfflineLimits(m)
            }
            msg_type::OFFLINE_BATCH => {
                let first_tx_seq = r.u64();
                let count = r.u16();
                let _reserved: [u8; 6] = r.take();
                Message::OfflineBatch(OfflineBatch { first_tx_seq, count })
            }
            msg_type::OFFLINE_SALE => Message::OfflineSale(OfflineSale {
                tx_seq: r.u64(),
                card: r.card(),
                amount_fen: r.i64(),
                sale_time_ms: r.i64(),
                mac: r.take(),
            }),
            msg_type::OFFLINE_RESULT => {
                let first_tx_seq = r.u64();
                let count = r.u16();
                let status = OfflineStatus::from_code(r.u8()).ok_or(BodyError::BadField("status"))?;
                let _reserved = r.u8();
                let posted = r.u16();
                let duplicates = r.u16();
                let flagged = r.u16();
                let _reserved2: [u8; 6] = r.take();
                Message::OfflineResult(OfflineResult {
                    first_tx_seq,
                    count,
                    status,
                    posted,
                    duplicates,
                    flagged,
                    first_bad_seq: r.u64(),
                    last_tx_seq: r.u64(),
                })
            }
            msg_type::ACCESS_CHECK => {
                let event_seq = nonzero_event_seq(r.u64())?;
                let card = r.card();
                let door = r.u32();
                let direction = Direction::from_code(r.u8()).ok_or(BodyError::BadField("direction"))?;
                let _reserved: [u8; 3] = r.take();
                Message::AccessCheck(AccessCheck {
                    event_seq,
                    card,
                    door,
                    direction,
                    controller_time_ms: r.i64(),
                })
            }
            msg_type::ACCESS_RESULT => {
                let event_seq = r.u64();
                let card = r.card();
                let door = r.u32();
                let granted = r.u8();
                let _reserved = r.u8();
                let reason = decode_decision(granted, r.u16())?;
                Message::AccessResult(AccessResult {
                    event_seq,
                    card,
                    door,
                    reason,
                    cache_version: r.u64(),
                    gateway_time_ms: r.i64(),
                })
            }
            msg_type::PUNCH => Message::Punch(Punch {
                event_seq: nonzero_event_seq(r.u64())?,
                card: r.card(),
                controller_time_ms: r.i64(),
            }),
            msg_type::PUNCH_RESULT => {
                let event_seq = r.u64();
                let card = r.card();
                let status = PunchStatus::from_code(r.u8()).ok_or(BodyError::BadField("status"))?;
                let _reserved: [u8; 7] = r.take();
                Message::PunchResult(PunchResult {
                    event_seq,
                    card,
                    status,
                    gateway_time_ms: r.i64(),
                })
            }
            msg_type::DOOR_CACHE_SYNC => {
                let have_version = r.u64();
                let entry = read_entry(&mut r);
                let page_entries_max = r.u16();
                let _reserved = r.u16();
                let after = if entry.card.0 == 0 {
                    if entry != DoorCacheEntry::default() {
                        return Err(BodyError::BadField("after"));
                    }
                    None
                } else {
                    Some(entry)
                };
                Message::DoorCacheSync(DoorCacheSync {
                    have_version,
                    after,
                    page_entries_max,
                })
            }
            msg_type::DOOR_CACHE_PAGE => {
                let (kind, flags) = read_page_kind_and_flags(&mut r)?;
                let added = r.u8();
                let removed = r.u8();
                if usize::from(added) + usize::from(removed) > DOOR_CACHE_PAGE_ENTRIES_MAX
                    || (kind == DoorCachePageKind::Full && removed != 0)
                {
                    return Err(BodyError::BadField("count"));
                }
                let passback = Passback::from_code(r.u8()).ok_or(BodyError::BadField("passback"))?;
                let _reserved = r.u8();
                let passback_min = r.u16();
                let from_version = r.u64();
                let to_version = r.u64();
                let mut entries = [DoorCacheEntry::default(); DOOR_CACHE_PAGE_ENTRIES_MAX];
                for e in &mut entries {
                    *e = read_entry(&mut r);
                }
                let used = usize::from(added) + usize::from(removed);
                let (added_entries, removed_entries) = entries[..used].split_at(usize::from(added));
                let page = DoorCachePage::new(kind, flags, from_version, to_version, added_entries, removed_entries)
                    .ok_or(BodyError::BadField("count"))?;
                Message::DoorCachePage(page.with_passback(passback, passback_min))
            }
            msg_type::DOOR_CACHE_BULK => {
                let (kind, flags) = read_page_kind_and_flags(&mut r)?;
                let passback = Passback::from_code(r.u8()).ok_or(BodyError::BadField("passback"))?;
                let _reserved = r.u8();
                let added = r.u16();
                let removed = r.u16();
                let passback_min = r.u16();
                let _reserved: [u8; 6] = r.take();
                let from_version = r.u64();
                let to_version = r.u64();
                // The length was checked against the shape; the counts must name exactly
                // the entries that follow.
                if (usize::from(added) + usize::from(removed)) * DOOR_CACHE_ENTRY_LEN != r.0.len()
                    || (kind == DoorCachePageKind::Full && removed != 0)
                {
                    return Err(BodyError::BadField("count"));
                }
                Message::DoorCacheBulk(DoorCacheBulk {
                    kind,
                    flags,
                    passback,
                    passback_min,
                    from_version,
                    to_version,
                    added,
                    removed,
                    entries: Bytes::copy_from_slice(r.0),
                })
            }
            msg_type::DOOR_SCHEDULE => {
                let schedule = r.u32();
                if schedule == DOOR_SCHEDULE_ALWAYS {
                    return Err(BodyError::BadField("schedule"));
                }
                let flags = r.u8();
                if flags & !DOOR_SCHEDULE_FIRST != 0 {
                    return Err(BodyError::BadField("flags"));
                }
                let holiday_rule = match r.u8() {
                    0 => HolidayRule::Ignore,
                    1 => HolidayRule::HolidayWindows,
                    _ => return Err(BodyError::BadField("holiday_rule")),
                };
                let count = r.u8();
                if usize::from(count) > DOOR_SCHEDULE_WINDOWS_MAX {
                    return Err(BodyError::BadField("count"));
                }
                let _reserved = r.u8();
                let mut windows = [DoorWindow::default(); DOOR_SCHEDULE_WINDOWS_MAX];
                for (i, w) in windows.iter_mut().enumerate() {
                    let day = r.u8();
                    let _reserved = r.u8();
                    let start_min = r.u16();
                    let end_min = r.u16();
                    if i < usize::from(count) {
                        if day > DOOR_WINDOW_HOLIDAY || start_min >= 1440 || end_min == 0 || end_min > 1440 {
                            return Err(BodyError::BadField("window"));
                        }
                        *w = DoorWindow {
                            day,
                            start_min,
                            end_min,
                        };
                    }
                }
                Message::DoorSchedule(DoorSchedule {
                    schedule,
                    flags,
                    holiday_rule,
                    count,
                    windows,
                })
            }
            msg_type::DOOR_HOLIDAYS => {
                let flags = r.u8();
                if flags & !DOOR_HOLIDAYS_FIRST != 0 {
                    return Err(BodyError::BadField("flags"));
                }
                let count = r.u8();
                if usize::from(count) > DOOR_HOLIDAYS_MAX {
                    return Err(BodyError::BadField("count"));
                }
                let utc_offset_min = i16::from_le_bytes(r.take());
                if !(-14 * 60..=14 * 60).contains(&utc_offset_min) {
                    return Err(BodyError::BadField("utc_offset_min"));
                }
                let _reserved = r.u32();
                let mut days = [0u32; DOOR_HOLIDAYS_MAX];
                for (i, d) in days.iter_mut().enumerate() {
                    let day = r.u32();
                    if i < usize::from(count) {
                        *d = day;
                    }
                }
                Message::DoorHolidays(DoorHolidays {
                    flags,
                    count,
                    utc_offset_min,
                    days,
                })
            }
            msg_type::DOOR_CACHE_ACK => Message::DoorCacheAck(DoorCacheAck { version: r.u64() }),
            msg_type::DOOR_CACHE_PUSH => Message::DoorCachePush(DoorCachePush {
                version: r.u64(),
                server_time_ms: r.i64(),
            }),
            msg_type::DOOR_EVENTS_BATCH => {
                let first_event_seq = r.u64();
                let count = r.u16();
                let _reserved: [u8; 6] = r.take();
                Message::DoorEventsBatch(DoorEventsBatch { first_event_seq, count })
            }
            msg_type::DOOR_EVENT => {
                let event_seq = r.u64();
                let card = r.card();
                let door = r.u32();
                let direction = Direction::from_code(r.u8()).ok_or(BodyError::BadField("direction"))?;
                let granted = r.u8();
                let reason = decode_decision(granted, r.u16())?;
                Message::DoorEvent(DoorEvent {
                    event_seq,
                    card,
                    door,
                    direction,
                    reason,
                    event_time_ms: r.i64(),
                    mac: r.take(),
                })
            }
            msg_type::DOOR_EVENTS_RESULT => {
                let first_event_seq = r.u64();
                let count = r.u16();
                let status = DoorEventsStatus::from_code(r.u8()).ok_or(BodyError::BadField("status"))?;
                let _reserved = r.u8();
                let stored = r.u16();
                let duplicates = r.u16();
                let flagged = r.u16();
                let _reserved2: [u8; 6] = r.take();
                Message::DoorEventsResult(DoorEventsResult {
                    first_event_seq,
                    count,
                    status,
                    stored,
                    duplicates,
                    flagged,
                    first_bad_seq: r.u64(),
                    last_event_seq: r.u64(),
                })
            }
            other => return Err(BodyError::UnknownType(other)),
        })
    }

    /// Writes the body; exactly `encoded_body_len()` bytes.
    pub fn encode_body(&self, out: &mut impl BufMut) {
        match self {
            Message::Hello(m) => {
                out.put_u64_le(m.terminal_id);
                out.put_slice(&m.terminal_nonce);
                out.put_i64_le(m.terminal_time_ms);
            }
            Message::Challenge(m) => {
                out.put_slice(&m.gateway_nonce);
                out.put_i64_le(m.server_time_ms);
            }
            Message::Proof(m) => out.put_slice(&m.proof),
            Message::SignOnOk(m) => {
                out.put_i64_le(m.server_time_ms);
                out.put_u64_le(m.last_tx_seq);
                out.put_u64_le(m.blacklist_version);
                out.put_u16_le(m.heartbeat_interval_s);
                out.put_u16_le(m.pipeline_depth_max);
                out.put_u32_le(m.flags);
            }
            Message::Heartbeat(m) => {
                out.put_i64_le(m.terminal_time_ms);
                out.put_u64_le(m.blacklist_version);
            }
            Message::HeartbeatAck(m) => {
                out.put_i64_le(m.server_time_ms);
                out.put_u64_le(m.blacklist_version);
            }
            Message::Error(m) => {
                out.put_u16_le(m.code.code());
                out.put_u16_le(0);
                out.put_u32_le(m.detail);
            }
            Message::Purchase(m) => {
                out.put_u64_le(m.tx_seq);
                out.put_u64_le(m.card.0);
                out.put_i64_le(m.amount_fen);
                out.put_i64_le(m.terminal_time_ms);
            }
            Message::Reversal(m) => {
                out.put_u64_le(m.tx_seq);
                out.put_u64_le(m.original_tx_seq);
                out.put_u64_le(m.card.0);
                out.put_i64_le(m.amount_fen);
                out.put_i64_le(m.terminal_time_ms);
            }
            Message::BalanceInquiry(m) => out.put_u64_le(m.card.0),
            Message::Approved(m) => {
                out.put_u64_le(m.tx_seq);
                out.put_u64_le(m.tx_id);
                out.put_u64_le(m.card.0);
                out.put_i64_le(m.amount_fen);
                out.put_i64_le(m.balance_fen);
                out.put_i64_le(m.time_ms);
            }
            Message::Declined(m) => {
                out.put_u64_le(m.tx_seq);
                out.put_u64_le(m.card.0);
                out.put_u16_le(m.reason.code());
                out.put_slice(&[0u8; 6]);
                out.put_i64_le(m.balance_fen);
                out.put_i64_le(m.time_ms);
            }
            Message::Balance(m) => {
                out.put_u64_le(m.card.0);
                out.put_u8(m.status as u8);
                out.put_slice(&[0u8; 7]);
                out.put_i64_le(m.balance_fen);
                out.put_i64_le(m.spent_today_fen);
                out.put_i64_le(m.daily_limit_fen);
            }
            Message::BlacklistPush(m) => {
                out.put_u64_le(m.version);
                out.put_i64_le(m.server_time_ms);
            }
            Message::BlacklistSync(m) => {
                out.put_u64_le(m.since_version);
                out.put_u64_le(m.after_card);
            }
            Message::BlacklistPage(m) => {
                out.put_u8(m.kind as u8);
                out.put_u8(m.flags);
                out.put_u8(m.added);
                out.put_u8(m.removed);
                out.put_u32_le(0);
                out.put_u64_le(m.from_version);
                out.put_u64_le(m.to_version);
                out.put_u64_le(m.next_after_card);
                let used = usize::from(m.added) + usize::from(m.removed);
                for (i, c) in m.cards.iter().enumerate() {
                    // Slots past the count are zero on the wire whatever memory held.
                    out.put_u64_le(if i < used { *c } else { 0 });
                }
            }
            Message::BlacklistAck(m) => out.put_u64_le(m.version),
            Message::OfflineLimits(m) => {
                out.put_i64_le(m.sale_max_fen);
                out.put_i64_le(m.card_day_max_fen);
                out.put_i64_le(m.terminal_total_max_fen);
                out.put_u32_le(m.offline_minutes_max);
                out.put_u16_le(m.sales_max);
                out.put_u16_le(m.batch_max);
            }
            Message::OfflineBatch(m) => {
                out.put_u64_le(m.first_tx_seq);
                out.put_u16_le(m.count);
                out.put_slice(&[0u8; 6]);
            }
            Message::OfflineSale(m) => {
                out.put_u64_le(m.tx_seq);
                out.put_u64_le(m.card.0);
                out.put_i64_le(m.amount_fen);
                out.put_i64_le(m.sale_time_ms);
                out.put_slice(&m.mac);
            }
            Message::OfflineResult(m) => {
                out.put_u64_le(m.first_tx_seq);
                out.put_u16_le(m.count);
                out.put_u8(m.status as u8);
                out.put_u8(0);
                out.put_u16_le(m.posted);
                out.put_u16_le(m.duplicates);
                out.put_u16_le(m.flagged);
                out.put_slice(&[0u8; 6]);
                out.put_u64_le(m.first_bad_seq);
                out.put_u64_le(m.last_tx_seq);
            }
            Message::AccessCheck(m) => {
                out.put_u64_le(m.event_seq);
                out.put_u64_le(m.card.0);
                out.put_u32_le(m.door);
                out.put_u8(m.direction as u8);
                out.put_slice(&[0u8; 3]);
                out.put_i64_le(m.controller_time_ms);
            }
            Message::AccessResult(m) => {
                out.put_u64_le(m.event_seq);
                out.put_u64_le(m.card.0);
                out.put_u32_le(m.door);
                out.put_u8(u8::from(m.granted()));
                out.put_u8(0);
                out.put_u16_le(m.reason.code());
                out.put_u64_le(m.cache_version);
                out.put_i64_le(m.gateway_time_ms);
            }
            Message::Punch(m) => {
                out.put_u64_le(m.event_seq);
                out.put_u64_le(m.card.0);
                out.put_i64_le(m.controller_time_ms);
            }
            Message::PunchResult(m) => {
                out.put_u64_le(m.event_seq);
                out.put_u64_le(m.card.0);
                out.put_u8(m.status as u8);
                out.put_slice(&[0u8; 7]);
                out.put_i64_le(m.gateway_time_ms);
            }
            Message::DoorCacheSync(m) => {
                out.put_u64_le(m.have_version);
                put_entry(out, &m.after.unwrap_or_default());
                out.put_u16_le(m.page_entries_max);
                out.put_u16_le(0);
            }
            Message::DoorCachePage(m) => {
                out.put_u8(m.kind as u8);
                out.put_u8(m.flags);
                out.put_u8(m.added);
                out.put_u8(m.removed);
                out.put_u8(m.passback as u8);
                out.put_u8(0);
                out.put_u16_le(m.passback_min);
                out.put_u64_le(m.from_version);
                out.put_u64_le(m.to_version);
                let used = usize::from(m.added) + usize::from(m.removed);
                for i in 0..DOOR_CACHE_PAGE_ENTRIES_MAX {
                    // Slots past the count are zero on the wire whatever memory held.
                    put_entry(
                        out,
                        &if i < used {
                            m.entry(i)
                        } else {
                            DoorCacheEntry::default()
                        },
                    );
                }
            }
            Message::DoorCacheBulk(m) => {
                out.put_u8(m.kind as u8);
                out.put_u8(m.flags);
                out.put_u8(m.passback as u8);
                out.put_u8(0);
                out.put_u16_le(m.added);
                out.put_u16_le(m.removed);
                out.put_u16_le(m.passback_min);
                out.put_slice(&[0u8; 6]);
                out.put_u64_le(m.from_version);
                out.put_u64_le(m.to_version);
                out.put_slice(&m.entries);
            }
            Message::DoorSchedule(m) => {
                out.put_u32_le(m.schedule);
                out.put_u8(m.flags);
                out.put_u8(m.holiday_rule as u8);
                out.put_u8(m.count);
                out.put_u8(0);
                for (i, w) in m.windows.iter().enumerate() {
                    let w = if i < usize::from(m.count) {
                        *w
                    } else {
                        DoorWindow::default()
                    };
                    out.put_u8(w.day);
                    out.put_u8(0);
                    out.put_u16_le(w.start_min);
                    out.put_u16_le(w.end_min);
                }
            }
            Message::DoorHolidays(m) => {
                out.put_u8(m.flags);
                out.put_u8(m.count);
                out.put_i16_le(m.utc_offset_min);
                out.put_u32_le(0);
                for (i, d) in m.days.iter().enumerate() {
                    out.put_u32_le(if i < usize::from(m.count) { *d } else { 0 });
                }
            }
            Message::DoorCacheAck(m) => out.put_u64_le(m.version),
            Message::DoorCachePush(m) => {
                out.put_u64_le(m.version);
                out.put_i64_le(m.server_time_ms);
            }
            Message::DoorEventsBatch(m) => {
                out.put_u64_le(m.first_event_seq);
                out.put_u16_le(m.count);
                out.put_slice(&[0u8; 6]);
            }
            Message::DoorEvent(m) => {
                out.put_u64_le(m.event_seq);
                out.put_u64_le(m.card.0);
                out.put_u32_le(m.door);
                out.put_u8(m.direction as u8);
                out.put_u8(u8::from(m.granted()));
                out.put_u16_le(m.reason.code());
                out.put_i64_le(m.event_time_ms);
                out.put_slice(&m.mac);
            }
            Message::DoorEventsResult(m) => {
                out.put_u64_le(m.first_event_seq);
                out.put_u16_le(m.count);
                out.put_u8(m.status as u8);
                out.put_u8(0);
                out.put_u16_le(m.stored);
                out.put_u16_le(m.duplicates);
                out.put_u16_le(m.flagged);
                out.put_slice(&[0u8; 6]);
                out.put_u64_le(m.first_bad_seq);
                out.put_u64_le(m.last_event_seq);
            }
        }
    }
}

/// A decision's `granted` byte and reason: `granted` is 1 exactly for `Granted`, so that
/// a controller that reads only the byte and one that reads only the reason agree.
/// An online check's or a punch's `event_seq`: 0 is no event number (PROTOCOL.md 11.2),
/// and a request the gateway could neither record nor tell from a retry is malformed.
fn nonzero_event_seq(seq: u64) -> Result<u64, BodyError> {
    if seq == 0 {
        Err(BodyError::BadField("event_seq"))
    } else {
        Ok(seq)
    }
}

fn decode_decision(granted: u8, reason: u16) -> Result<AccessReason, BodyError> {
    let reason = AccessReason::from_code(reason).ok_or(BodyError::BadField("reason"))?;
    match (granted, reason.is_granted()) {
        (1, true) | (0, false) => Ok(reason),
        _ => Err(BodyError::BadField("granted")),
    }
}

/// The first two bytes of a DOOR_CACHE_PAGE or DOOR_CACHE_BULK.
fn read_page_kind_and_flags(r: &mut Reader<'_>) -> Result<(DoorCachePageKind, u8), BodyError> {
    let kind = match r.u8() {
        0 => DoorCachePageKind::Delta,
        1 => DoorCachePageKind::Full,
        _ => return Err(BodyError::BadField("kind")),
    };
    let flags = r.u8();
    if flags & !(DOOR_PAGE_MORE | DOOR_PAGE_FIRST | DOOR_PAGE_LAST_IN_RUN) != 0 {
        return Err(BodyError::BadField("flags"));
    }
    Ok((kind, flags))
}

fn read_entry(r: &mut Reader<'_>) -> DoorCacheEntry {
    DoorCacheEntry {
        card: r.card(),
        schedule: r.u32(),
        valid_from_min: r.u32(),
        valid_to_min: r.u32(),
    }
}

fn put_entry(out: &mut impl BufMut, e: &DoorCacheEntry) {
    out.put_u64_le(e.card.0);
    out.put_u32_le(e.schedule);
    out.put_u32_le(e.valid_from_min);
    out.put_u32_le(e.valid_to_min);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_masked_in_logs() {
        let c = CardNo(6_222_000_012_345_678);
        assert_eq!(format!("{c:?}"), "CardNo(****5678)");
        assert_eq!(format!("{c}"), "****5678");
    }

    #[test]
    fn reason_codes_round_trip_and_are_unique() {
        for r in DeclineReason::ALL {
            assert_eq!(DeclineReason::from_code(r.code()), Some(r));
        }
        assert_eq!(DeclineReason::from_code(0), None);
        for e in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(e.code()), Some(e));
        }
    }

    #[test]
    fn every_body_encodes_to_its_declared_length() {
        let card = CardNo(1);
        let all = [
            Message::Hello(Hello {
                terminal_id: 1,
                terminal_nonce: [1; 16],
                terminal_time_ms: 2,
            }),
            Message::Challenge(Challenge {
                gateway_nonce: [2; 16],
                server_time_ms: 3,
            }),
            Message::Proof(Proof { proof: [3; 32] }),
            Message::SignOnOk(SignOnOk {
                server_time_ms: 1,
                last_tx_seq: 2,
                blacklist_version: 3,
                heartbeat_interval_s: 4,
                pipeline_depth_max: 5,
                flags: 0,
            }),
            Message::Heartbeat(Heartbeat {
                terminal_time_ms: 1,
                blacklist_version: 2,
            }),
            Message::HeartbeatAck(HeartbeatAck {
                server_time_ms: 1,
                blacklist_version: 2,
            }),
            Message::Error(ErrorFrame {
                code: ErrorCode::Replay,
                detail: 7,
            }),
            Message::Purchase(Purchase {
                tx_seq: 1,
                card,
                amount_fen: 2,
                terminal_time_ms: 3,
            }),
            Message::Reversal(Reversal {
                tx_seq: 2,
                original_tx_seq: 1,
                card,
                amount_fen: 2,
                terminal_time_ms: 3,
            }),
            Message::BalanceInquiry(BalanceInquiry { card }),
            Message::Approved(Approved {
                tx_seq: 1,
                tx_id: 2,
                card,
                amount_fen: 3,
                balance_fen: 4,
                time_ms: 5,
            }),
            Message::Declined(Declined {
                tx_seq: 1,
                card,
                reason: DeclineReason::CardLost,
                balance_fen: 0,
                time_ms: 5,
            }),
            Message::Balance(Balance {
                card,
                status: CardStatusCode::Frozen,
                balance_fen: 1,
                spent_today_fen: 2,
                daily_limit_fen: 3,
            }),
        ];
        for m in all.iter().cloned() {
            let mut buf = Vec::new();
            m.encode_body(&mut buf);
            assert_eq!(Some(buf.len()), Message::body_len(m.msg_type()), "{m:?}");
            assert_eq!(Message::decode_body(m.msg_type(), &buf), Ok(m));
        }
    }

    #[test]
    fn offline_messages_round_trip_and_refuse_an_unknown_status() {
        let all = [
            Message::OfflineLimits(OfflineLimits {
                sale_max_fen: 50_00,
                card_day_max_fen: 100_00,
                terminal_total_max_fen: 5_000_00,
                offline_minutes_max: 1440,
                sales_max: 2000,
                batch_max: 32,
            }),
            Message::OfflineBatch(OfflineBatch {
                first_tx_seq: 101,
                count: 3,
            }),
            Message::OfflineSale(OfflineSale {
                tx_seq: 101,
                card: CardNo(1_000_000_001),
                amount_fen: 12_50,
                sale_time_ms: 1_700_000_000_000,
                mac: [0xab; 16],
            }),
            Message::OfflineResult(OfflineResult {
                first_tx_seq: 101,
                count: 3,
                status: OfflineStatus::BadMac,
                posted: 0,
                duplicates: 0,
                flagged: 0,
                first_bad_seq: 102,
                last_tx_seq: 100,
            }),
        ];
        for m in all.iter().cloned() {
            let mut buf = Vec::new();
            m.encode_body(&mut buf);
            assert_eq!(Some(buf.len()), Message::body_len(m.msg_type()), "{m:?}");
            assert_eq!(Message::decode_body(m.msg_type(), &buf), Ok(m));
        }
        let mut buf = Vec::new();
        all[3].encode_body(&mut buf);
        buf[10] = 9;
        assert_eq!(
            Message::decode_body(msg_type::OFFLINE_RESULT, &buf),
            Err(BodyError::BadField("status"))
        );
    }

    #[test]
    fn blacklist_messages_round_trip_and_refuse_bad_counts() {
        let mut cards = [0u64; BLACKLIST_PAGE_CARDS_MAX];
        cards[..3].copy_from_slice(&[11, 12, 13]);
        let all = [
            Message::BlacklistPush(BlacklistPush {
                version: 9,
                server_time_ms: 1,
            }),
            Message::BlacklistSync(BlacklistSync {
                since_version: 3,
                after_card: 0,
            }),
            Message::BlacklistPage(BlacklistPage {
                kind: BlacklistPageKind::Delta,
                flags: BLACKLIST_PAGE_LAST_IN_RUN,
                added: 2,
                removed: 1,
                from_version: 3,
                to_version: 9,
                next_after_card: 0,
                cards,
            }),
            Message::BlacklistAck(BlacklistAck { version: 9 }),
        ];
        for m in all.iter().cloned() {
            let mut buf = Vec::new();
            m.encode_body(&mut buf);
            assert_eq!(Some(buf.len()), Message::body_len(m.msg_type()), "{m:?}");
            assert_eq!(Message::decode_body(m.msg_type(), &buf), Ok(m));
        }
        let Message::BlacklistPage(p) = all[2] else {
            unreachable!()
        };
        assert_eq!(p.added_cards(), &[11, 12]);
        assert_eq!(p.removed_cards(), &[13]);
        // More cards than a page holds, a full page that removes, unknown flags or kind.
        let mut buf = Vec::new();
        all[2].encode_body(&mut buf);
        let mut bad = buf.clone();
        bad[2] = 8;
        assert_eq!(
            Message::decode_body(msg_type::BLACKLIST_PAGE, &bad),
            Err(BodyError::BadField("count"))
        );
        let mut bad = buf.clone();
        bad[0] = 1;
        assert_eq!(
            Message::decode_body(msg_type::BLACKLIST_PAGE, &bad),
            Err(BodyError::BadField("count"))
        );
        let mut bad = buf.clone();
        bad[1] = 0x80;
        assert_eq!(
            Message::decode_body(msg_type::BLACKLIST_PAGE, &bad),
            Err(BodyError::BadField("flags"))
        );
        let mut bad = buf;
        bad[0] = 7;
        assert_eq!(
            Message::decode_body(msg_type::BLACKLIST_PAGE, &bad),
            Err(BodyError::BadField("kind"))
        );
    }

    fn entry(card: u64, schedule: u32) -> DoorCacheEntry {
        DoorCacheEntry {
            card: CardNo(card),
            schedule,
            valid_from_min: 29_540_000,
            valid_to_min: DOOR_VALID_FOREVER,
        }
    }

    fn door_examples() -> Vec<Message> {
        let mut windows = [DoorWindow::default(); DOOR_SCHEDULE_WINDOWS_MAX];
        windows[0] = DoorWindow {
            day: 0,
            start_min: 8 * 60,
            end_min: 18 * 60,
        };
        windows[1] = DoorWindow {
            day: 4,
            start_min: 22 * 60,
            end_min: 6 * 60,
        };
        windows[2] = DoorWindow {
            day: DOOR_WINDOW_HOLIDAY,
            start_min: 9 * 60,
            end_min: 1440,
        };
        let mut days = [0u32; DOOR_HOLIDAYS_MAX];
        days[..2].copy_from_slice(&[20_454, 20_455]);
        vec![
            Message::AccessCheck(AccessCheck {
                event_seq: 7,
                card: CardNo(62_220_000_000_001),
                door: 3,
                direction: Direction::Out,
                controller_time_ms: 1_772_424_300_000,
            }),
            Message::AccessResult(AccessResult {
                event_seq: 7,
                card: CardNo(62_220_000_000_001),
                door: 3,
                reason: AccessReason::OutsideWindow,
                cache_version: 12,
                gateway_time_ms: 1_772_424_300_004,
            }),
            Message::AccessResult(AccessResult {
                event_seq: 8,
                card: CardNo(1),
                door: 3,
                reason: AccessReason::Granted,
                cache_version: 12,
                gateway_time_ms: 5,
            }),
            Message::Punch(Punch {
                event_seq: 1,
                card: CardNo(5),
                controller_time_ms: -1,
            }),
            Message::PunchResult(PunchResult {
                event_seq: 1,
                card: CardNo(5),
                status: PunchStatus::Duplicate,
                gateway_time_ms: 2,
            }),
            Message::DoorCacheSync(DoorCacheSync {
                have_version: 0,
                after: None,
                page_entries_max: 0,
            }),
            Message::DoorCacheSync(DoorCacheSync {
                have_version: 4,
                after: Some(entry(9, 2)),
                page_entries_max: 512,
            }),
            Message::DoorCachePage(
                DoorCachePage::new(
                    DoorCachePageKind::Delta,
                    DOOR_PAGE_LAST_IN_RUN,
                    11,
                    12,
                    &[entry(10, 1), entry(11, 0)],
                    &[entry(12, 1)],
                )
                .unwrap()
                .with_passback(Passback::Timed, 30),
            ),
            Message::DoorCachePage(
                DoorCachePage::new(
                    DoorCachePageKind::Full,
                    DOOR_PAGE_FIRST | DOOR_PAGE_MORE | DOOR_PAGE_LAST_IN_RUN,
                    0,
                    12,
                    &[entry(1, 0), entry(2, 0), entry(3, 0), entry(4, 0)],
                    &[],
                )
                .unwrap(),
            ),
            Message::DoorSchedule(DoorSchedule {
                schedule: 2,
                flags: DOOR_SCHEDULE_FIRST,
                holiday_rule: HolidayRule::HolidayWindows,
                count: 3,
                windows,
            }),
            Message::DoorHolidays(DoorHolidays {
                flags: DOOR_HOLIDAYS_FIRST,
                count: 2,
                utc_offset_min: 480,
                days,
            }),
            Message::DoorCacheAck(DoorCacheAck { version: 12 }),
            Message::DoorCachePush(DoorCachePush {
                version: 12,
                server_time_ms: 3,
            }),
            Message::DoorEventsBatch(DoorEventsBatch {
                first_event_seq: 20,
                count: 2,
            }),
            Message::DoorEvent(DoorEvent {
                event_seq: 20,
                card: CardNo(62_220_000_000_001),
                door: 3,
                direction: Direction::In,
                reason: AccessReason::Granted,
                event_time_ms: 1_772_424_300_000,
                mac: [0xcd; 16],
            }),
            Message::DoorEventsResult(DoorEventsResult {
                first_event_seq: 20,
                count: 2,
                status: DoorEventsStatus::Accepted,
                stored: 1,
                duplicates: 1,
                flagged: 0,
                first_bad_seq: 0,
                last_event_seq: 21,
            }),
        ]
    }

    #[test]
    fn door_messages_round_trip() {
        for m in door_examples() {
            let mut buf = Vec::new();
            m.encode_body(&mut buf);
            assert_eq!(Some(buf.len()), Message::body_len(m.msg_type()), "{m:?}");
            assert_eq!(Message::decode_body(m.msg_type(), &buf), Ok(m));
        }
        let Message::DoorCachePage(p) = door_examples()[7] else {
            unreachable!()
        };
        assert_eq!(p.added_entries().collect::<Vec<_>>(), [entry(10, 1), entry(11, 0)]);
        assert_eq!(p.removed_entries().collect::<Vec<_>>(), [entry(12, 1)]);
        assert!(DoorCachePage::new(DoorCachePageKind::Full, 0, 0, 1, &[], &[entry(1, 0)]).is_none());
        assert!(DoorCachePage::new(DoorCachePageKind::Delta, 0, 0, 1, &[entry(1, 0); 3], &[entry(2, 0); 2]).is_none());
    }

    #[test]
    fn access_reasons_round_trip_with_unique_codes_and_names() {
        let mut names = std::collections::HashSet::new();
        for (i, r) in AccessReason::ALL.into_iter().enumerate() {
            assert_eq!(r.code() as usize, i, "codes are dense from 0");
            assert_eq!(AccessReason::from_code(r.code()), Some(r));
            assert!(names.insert(r.as_str()));
        }
        assert_eq!(AccessReason::from_code(AccessReason::ALL.len() as u16), None);
        for s in PunchStatus::ALL {
            assert_eq!(PunchStatus::from_code(s as u8), Some(s));
        }
        for s in DoorEventsStatus::ALL {
            assert_eq!(DoorEventsStatus::from_code(s as u8), Some(s));
        }
    }

    /// Every field outside its domain, by (example index, byte offset, value, field).
    #[test]
    fn door_bodies_with_a_field_out_of_its_domain_are_refused() {
        let examples = door_examples();
        let cases: &[(usize, usize, u8, &str)] = &[
            (0, 20, 0, "direction"),
            (0, 20, 3, "direction"),
            (1, 20, 1, "granted"),
            (2, 20, 0, "granted"),
            (1, 20, 2, "granted"),
            (1, 22, 20, "reason"),
            (1, 23, 1, "reason"),
            (4, 16, 5, "status"),
            (6, 8, 0, "after"),
            (7, 0, 2, "kind"),
            (7, 1, 0x08, "flags"),
            (7, 2, 4, "count"),
            (8, 3, 1, "count"),
            (7, 4, 3, "passback"),
            (9, 0, 0, "schedule"),
            (9, 4, 0x02, "flags"),
            (9, 5, 2, "holiday_rule"),
            (9, 6, 17, "count"),
            (9, 8, 8, "window"),
            (9, 10, 0xa0, "window"),
            (9, 12, 0, "window"),
            (10, 0, 0x02, "flags"),
            (10, 1, 17, "count"),
            (10, 3, 0x7f, "utc_offset_min"),
            (14, 20, 0, "direction"),
            (14, 21, 0, "granted"),
            (14, 22, 20, "reason"),
            (14, 22, 18, "granted"),
            (15, 10, 5, "status"),
        ];
        for &(i, at, value, field) in cases {
            let m = examples[i].clone();
            let mut buf = Vec::new();
            m.encode_body(&mut buf);
            buf[at] = value;
            if (i, at) == (9, 10) {
                // start minute 0x05a0 = 1440: one past the last minute of a day.
                buf[at + 1] = 0x05;
            }
            if (i, at) == (9, 12) {
                buf[at + 1] = 0;
            }
            assert_eq!(
                Message::decode_body(m.msg_type(), &buf),
                Err(BodyError::BadField(field)),
                "example {i} byte {at} = {value}"
            );
        }
    }

    /// The hex examples of docs/PROTOCOL-blacklist.md.
    #[test]
    fn blacklist_doc_examples_match_the_encoder() {
        let hex = |m: Message| {
            let mut buf = Vec::new();
            m.encode_body(&mut buf);
            buf.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(
            hex(Message::BlacklistPush(BlacklistPush {
                version: 42,
                server_time_ms: 1_700_000_000_000
            })),
            "2a 00 00 00 00 00 00 00 00 68 e5 cf 8b 01 00 00"
        );
        assert_eq!(
            hex(Message::BlacklistSync(BlacklistSync {
                since_version: 40,
                after_card: 0
            })),
            "28 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
        );
        let mut cards = [0u64; BLACKLIST_PAGE_CARDS_MAX];
        cards[0] = 62_220_000_000_001;
        cards[1] = 62_220_000_000_002;
        let page = hex(Message::BlacklistPage(BlacklistPage {
            kind: BlacklistPageKind::Delta,
            flags: BLACKLIST_PAGE_LAST_IN_RUN,
            added: 1,
            removed: 1,
            from_version: 40,
            to_version: 42,
            next_after_card: 0,
            cards,
        }));
        let zeros = vec!["00"; 48].join(" ");
        assert_eq!(
            page,
            format!(
                "00 04 01 01 00 00 00 00 28 00 00 00 00 00 00 00 \
                 2a 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
                 01 78 ff b8 96 38 00 00 02 78 ff b8 96 38 00 00 {zeros}"
            )
        );
        assert_eq!(
            hex(Message::BlacklistAck(BlacklistAck { version: 42 })),
            "2a 00 00 00 00 00 00 00"
        );
    }

    #[test]
    fn a_message_stays_small_enough_to_copy() {
        // Every queued answer is a `Message`; the page is the largest variant.
        assert!(
            std::mem::size_of::<Message>() <= 112,
            "{}",
            std::mem::size_of::<Message>()
        );
    }

    #[test]
    fn a_bulk_page_is_as_long_as_its_entries_and_refuses_counts_that_are_not() {
        let entries: Vec<DoorCacheEntry> = (1..=7)
            .map(|i| DoorCacheEntry {
                card: CardNo(1_000_000_000 + i),
                schedule: i as u32,
                valid_from_min: 0,
                valid_to_min: DOOR_VALID_FOREVER,
            })
            .collect();
        let page = DoorCacheBulk::new(
            DoorCachePageKind::Delta,
            DOOR_PAGE_LAST_IN_RUN,
            3,
            4,
            &entries[..5],
            &entries[5..],
        )
        .expect("fits");
        let m = Message::DoorCacheBulk(page.with_passback(Passback::Strict, 0));
        let mut body = Vec::new();
        m.encode_body(&mut body);
        assert_eq!(body.len(), DOOR_CACHE_BULK_HEAD_LEN + 7 * DOOR_CACHE_ENTRY_LEN);
        assert_eq!(body.len(), m.encoded_body_len());
        let Ok(Message::DoorCacheBulk(back)) = Message::decode_body(msg_type::DOOR_CACHE_BULK, &body) else {
            panic!("decodes")
        };
        assert_eq!(back.added_entries().collect::<Vec<_>>(), &entries[..5]);
        assert_eq!(back.removed_entries().collect::<Vec<_>>(), &entries[5..]);
        assert_eq!((back.added(), back.removed(), back.passback), (5, 2, Passback::Strict));
        // Counts that name more or fewer entries than follow.
        for (at, value) in [(4usize, 6u8), (4, 4), (6, 3), (6, 0)] {
            let mut bad = body.clone();
            bad[at] = value;
            assert_eq!(
                Message::decode_body(msg_type::DOOR_CACHE_BULK, &bad),
                Err(BodyError::BadField("count")),
                "byte {at} = {value}"
            );
        }
        // A length that is not the head and whole entries; an entry past the bound.
        assert!(matches!(
            Message::decode_body(msg_type::DOOR_CACHE_BULK, &body[..body.len() - 1]),
            Err(BodyError::ItemsLength { .. })
        ));
        assert!(matches!(
            Message::decode_body(msg_type::DOOR_CACHE_BULK, &body[..DOOR_CACHE_BULK_HEAD_LEN - 1]),
            Err(BodyError::ItemsLength { .. })
        ));
        let shape = Message::body_shape(msg_type::DOOR_CACHE_BULK).expect("defined");
        assert!(shape.accepts(DOOR_CACHE_BULK_HEAD_LEN + DOOR_CACHE_BULK_ENTRIES_MAX * DOOR_CACHE_ENTRY_LEN));
        assert!(!shape.accepts(DOOR_CACHE_BULK_HEAD_LEN + (DOOR_CACHE_BULK_ENTRIES_MAX + 1) * DOOR_CACHE_ENTRY_LEN));
        assert!(shape.max() + crate::frame::HEADER_LEN + crate::frame::MAC_LEN <= crate::frame::FRAME_LEN_MAX);
        // A full page that removes, an unknown flag, too many entries to build.
        let mut bad = body.clone();
        bad[0] = DoorCachePageKind::Full as u8;
        assert_eq!(
            Message::decode_body(msg_type::DOOR_CACHE_BULK, &bad),
            Err(BodyError::BadField("count"))
        );
        let mut bad = body.clone();
        bad[1] = 0x08;
        assert_eq!(
            Message::decode_body(msg_type::DOOR_CACHE_BULK, &bad),
            Err(BodyError::BadField("flags"))
        );
        let many = vec![entries[0]; DOOR_CACHE_BULK_ENTRIES_MAX + 1];
        assert!(DoorCacheBulk::new(DoorCachePageKind::Full, 0, 0, 1, &many, &[]).is_none());
        assert!(DoorCacheBulk::new(DoorCachePageKind::Full, 0, 0, 1, &many[1..], &[]).is_some());
    }

    #[test]
    fn reserved_ranges_hold_no_defined_type() {
        let defined_offline = msg_type::OFFLINE_LIMITS..=msg_type::OFFLINE_RESULT;
        let defined_door = msg_type::ACCESS_CHECK..=msg_type::DOOR_CACHE_BULK;
        for t in (0x34u8..=0x6F).filter(|t| !defined_offline.contains(t) && !defined_door.contains(t)) {
            assert_eq!(Message::body_shape(t), None, "type {t:#04x} is reserved");
        }
    }
}
