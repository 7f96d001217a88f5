//! Door access and attendance records: doors, weekly schedules, the holiday calendar,
//! permissions, a door group's access settings (anti-passback, the controllers' cache
//! version), anti-passback state, a controller's event accounting, and the access events
//! and punches as the journal keeps them. Like every record here, each is stored whole
//! (postcard behind a version byte) and its encoding never changes
//! (`ledger/tests/golden.rs`).

use cardgate_codec::CardNo;
use serde::{Deserialize, Serialize};

use crate::model::{AccountKind, card_no};
use crate::operator::Actor;

/// Minutes in a day; a window's minutes are `0..MINUTES_PER_DAY`.
pub const MINUTES_PER_DAY: u16 = 1440;

/// Which way a door may be passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DoorDirection {
    In,
    Out,
    Both,
}

impl DoorDirection {
    pub const ALL: [DoorDirection; 3] = [DoorDirection::In, DoorDirection::Out, DoorDirection::Both];

    pub fn as_str(self) -> &'static str {
        match self {
            DoorDirection::In => "in",
            DoorDirection::Out => "out",
            DoorDirection::Both => "both",
        }
    }

    pub fn parse(s: &str) -> Option<DoorDirection> {
        DoorDirection::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// Which way one passage went (the wire's direction byte: 1 in, 2 out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Passage {
    In,
    Out,
}

impl Passage {
    pub fn from_wire(b: u8) -> Option<Passage> {
        match b {
            1 => Some(Passage::In),
            2 => Some(Passage::Out),
            _ => None,
        }
    }

    pub fn wire(self) -> u8 {
        match self {
            Passage::In => 1,
            Passage::Out => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Passage::In => "in",
            Passage::Out => "out",
        }
    }
}

/// A door: one entrance, on one door group, served by one controller (a terminal of
/// kind `door`, 0 while none is installed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Door {
    pub id: u64,
    pub name: String,
    pub place: String,
    pub group: u64,
    pub controller: u64,
    pub direction: DoorDirection,
    pub enabled: bool,
    pub updated_ms: i64,
}

/// A weekly window: on `weekday` (0 = Monday .. 6 = Sunday) from `start_min` to
/// `end_min` local time. An end at or before the start crosses midnight into the next
/// day (22:00–06:00; 00:00–00:00 is the whole day).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub weekday: u8,
    pub start_min: u16,
    pub end_min: u16,
}

impl Window {
    /// Whether the window runs past midnight into the next day.
    pub fn crosses_midnight(&self) -> bool {
        self.end_min <= self.start_min
    }

    /// Its length in minutes.
    pub fn len_min(&self) -> u32 {
        if self.crosses_midnight() {
            u32::from(MINUTES_PER_DAY - self.start_min) + u32::from(self.end_min)
        } else {
            u32::from(self.end_min - self.start_min)
        }
    }
}

/// What a schedule does on a date of the holiday calendar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HolidayRule {
    /// Holidays are ordinary days (a night guard's schedule).
    Ignore,
    /// Closed all day.
    Closed,
    /// These windows instead of the weekday's (`weekday` ignored: they apply to any
    /// holiday).
    Windows(Vec<Window>),
}

impl HolidayRule {
    pub fn as_str(&self) -> &'static str {
        match self {
            HolidayRule::Ignore => "ignore",
            HolidayRule::Closed => "closed",
            HolidayRule::Windows(_) => "windows",
        }
    }
}

/// A named set of weekly windows and what applies on holidays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: u64,
    pub name: String,
    pub windows: Vec<Window>,
    pub holidays: HolidayRule,
    pub updated_ms: i64,
}

/// The holiday calendar: business days (days since 1970-01-01, local), sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holidays {
    pub days: Vec<i32>,
}

impl Holidays {
    pub fn contains(&self, day: i32) -> bool {
        self.days.binary_search(&day).is_ok()
    }
}

/// Who a permission is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Subject {
    /// One person, by account id.
    Person(u64),
    /// Everyone in a department (as the person records name it).
    Department(String),
    /// Every account of a kind.
    Kind(AccountKind),
}

impl Subject {
    pub fn kind_str(&self) -> &'static str {
        match self {
            Subject::Person(_) => "person",
            Subject::Department(_) => "department",
            Subject::Kind(_) => "kind",
        }
    }
}

/// A permission: `subject` may pass the doors of `door_group` within `schedule`, from
/// the start of local day `valid_from_day` to the end of local day `valid_to_day`
/// (whole day included; `None`: no end).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub id: u64,
    pub subject: Subject,
    pub door_group: u64,
    pub schedule: u64,
    pub valid_from_day: i32,
    pub valid_to_day: Option<i32>,
    pub revoked: bool,
    pub note: String,
    pub updated_ms: i64,
}

/// Anti-passback on a door group: whoever entered must leave before entering again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AntiPassback {
    Off,
    /// Entering again needs an exit first; leaving needs an entry first.
    Strict,
    /// Entering again within `minutes` of the last entry needs an exit first; after
    /// that the entry is forgotten (someone who left by a door without a reader).
    Timed {
        minutes: u32,
    },
}

impl AntiPassback {
    pub fn as_str(&self) -> &'static str {
        match self {
            AntiPassback::Off => "off",
            AntiPassback::Strict => "strict",
            AntiPassback::Timed { .. } => "timed",
        }
    }
}

/// A door group's access settings and the version of its controllers' cache, which
/// moves by one with every change that affects what the controllers hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAccess {
    pub group: u64,
    pub anti_passback: AntiPassback,
    pub cache_version: u64,
}

/// Where a person was last seen on an anti-passback door group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassbackState {
    pub account: u64,
    pub group: u64,
    pub inside: bool,
    pub last_ms: i64,
}

/// One line of a controller's cache: `card` may pass within `schedule` from
/// `valid_from_min` to before `valid_to_min` (unix minutes, UTC; `u32::MAX`: no end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CacheLine {
    #[serde(with = "card_no")]
    pub card: CardNo,
    pub schedule: u32,
    pub valid_from_min: u32,
    pub valid_to_min: u32,
}

/// What changed in a door group's cache at `version`: the lines that joined and left,
/// or everything (`all`: a department's or a kind's permission, a schedule, the
/// calendar; a controller behind it gets the full list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheChange {
    pub group: u64,
    pub version: u64,
    pub added: Vec<CacheLine>,
    pub removed: Vec<CacheLine>,
    pub all: bool,
}

/// One access record as a checkpoint stores it (all under one key prefix).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessRecord {
    Door(Door),
    Schedule(Schedule),
    Holidays(Holidays),
    Permission(Permission),
    Group(GroupAccess),
    Change(CacheChange),
    Controller(ControllerEvents),
    Passback(PassbackState),
    /// Appended last: earlier variants keep their encoding. One slot's answer: what a
    /// check or punch leaves for the next checkpoint, and what data directories written
    /// before `Answers` hold (one key per slot, read and rewritten at start-up).
    Answer(RememberedAnswer),
    /// Every remembered answer of one controller, as a checkpoint stores them: one key
    /// per controller rather than per slot (a checkpoint at 500 controllers checking at
    /// 2,000/s was ~20,000 sled inserts for the answers alone; now it is 500).
    Answers(ControllerAnswers),
    /// Appended last. One slot's answer with what it answered, so that only a resend of
    /// the same check or punch repeats it and a number used again for another card or
    /// door is refused (`event_reused`). Written since; `Answer` and `Answers` are read
    /// from older directories (their answers have no subject).
    CheckedAnswer(CheckedAnswer),
    /// Every answer of one controller with its subject, as a checkpoint stores them
    /// (under the same key as `Answers`, which it replaces).
    CheckedAnswers(ControllerCheckedAnswers),
}

/// What a check or punch asked about: the card, and for a check the door and the way it
/// was passed (`door << 8 | passage`, the passage as recorded); 0 for a punch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AnswerSubject {
    pub card: u64,
    pub place: u64,
}

impl AnswerSubject {
    pub fn check(card: u64, door: u64, passage: Passage) -> AnswerSubject {
        AnswerSubject {
            card,
            place: door << 8 | u64::from(passage.wire()),
        }
    }

    pub fn punch(card: u64) -> AnswerSubject {
        AnswerSubject { card, place: 0 }
    }
}

/// `RememberedAnswer` with its subject (`None` only for one read from an older record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckedAnswer {
    pub terminal: u64,
    pub event_seq: u64,
    pub answer: u16,
    pub subject: Option<AnswerSubject>,
}

impl From<RememberedAnswer> for CheckedAnswer {
    fn from(a: RememberedAnswer) -> CheckedAnswer {
        CheckedAnswer {
            terminal: a.terminal,
            event_seq: a.event_seq,
            answer: a.answer,
            subject: None,
        }
    }
}

/// A controller's answers with their subjects under one key: (`event_seq`, answer,
/// subject), at most one per slot, in slot order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerCheckedAnswers {
    pub terminal: u64,
    pub answers: Vec<(u64, u16, Option<AnswerSubject>)>,
}

impl From<ControllerAnswers> for ControllerCheckedAnswers {
    fn from(a: ControllerAnswers) -> ControllerCheckedAnswers {
        ControllerCheckedAnswers {
            terminal: a.terminal,
            answers: a.answers.into_iter().map(|(s, r)| (s, r, None)).collect(),
        }
    }
}

/// A controller's remembered answers under one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerAnswers {
    pub terminal: u64,
    /// (`event_seq`, answer), at most one per slot, in slot order.
    pub answers: Vec<(u64, u16)>,
}

/// The answer an online check or punch got, kept so that a retry of its `event_seq` gets
/// the same answer after a restart too. One per (controller, `event_seq` mod the number
/// remembered), so the newest numbers replace the oldest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedAnswer {
    pub terminal: u64,
    pub event_seq: u64,
    /// ACCESS_RESULT's reason code, or PUNCH_RESULT's status.
    pub answer: u16,
}

/// A door controller's or attendance clock's event numbers seen (one sequence shared by
/// online checks, punches and offline events) and its clock drift.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerEvents {
    pub terminal: u64,
    pub last: u64,
    pub gaps: Vec<(u64, u64)>,
    pub abandoned: u64,
    /// Its clock minus the gateway's, at its last message.
    pub drift_ms: i64,
}

/// How an access decision was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventSource {
    /// Asked the gateway (ACCESS_CHECK).
    Online,
    /// Decided by the controller from its cache, uploaded later.
    Offline,
}

impl EventSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Online => "online",
            EventSource::Offline => "offline",
        }
    }
}

/// An access decision: who, where, which way, granted or not and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEvent {
    pub terminal: u64,
    pub event_seq: u64,
    #[serde(with = "card_no")]
    pub card: CardNo,
    /// 0 when the card is unknown.
    pub account: u64,
    pub door: u64,
    /// 0 when the door is unknown.
    pub door_group: u64,
    pub direction: Passage,
    pub granted: bool,
    /// The wire's AccessReason code.
    pub reason: u16,
    pub source: EventSource,
    /// When it happened by the controller's clock.
    pub event_time_ms: i64,
    /// The permission that granted it (0 for none).
    pub permission: u64,
    /// The anti-passback state it left, if the group keeps one.
    pub passback: Option<PassbackState>,
    /// The controller's clock minus the gateway's.
    pub drift_ms: i64,
    /// An offline decision the gateway's own rules would have made otherwise (a grant
    /// to a card blocked by then, an anti-passback conflict, a door of another group):
    /// stored as decided, flagged for security.
    pub flagged: bool,
}

/// An attendance punch (考勤).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Punch {
    pub terminal: u64,
    pub event_seq: u64,
    #[serde(with = "card_no")]
    pub card: CardNo,
    pub account: u64,
    /// The wire's PunchStatus: 0 recorded, 2 unknown card, 3 card blocked.
    pub status: u8,
    pub punch_time_ms: i64,
    pub drift_ms: i64,
}

// ---- journal entries ----------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorEntry {
    pub actor: Actor,
    pub door: Door,
    pub cache: Vec<CacheChange>,
}

/// Why a card holder's door lines moved outside the door admin's own changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheCause {
    /// A card issued to an account that holds permissions.
    CardIssued,
    /// A replacement card: the new number joins (the old one leaves by the blacklist).
    CardReplaced,
    /// A person's department or account kind changed.
    PersonChanged,
    /// An import opened, issued or changed many at once.
    Imported,
}

/// Door groups' caches moved by a desk change (a card issued, a person's department or
/// kind changed): sent in the same submission as that change, so a controller's cache
/// and the gateway's online decisions never disagree for longer than one sync, and
/// recovery restores the versions and the delta log with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMovedEntry {
    pub cause: CacheCause,
    /// The account whose lines moved (0: an import's many).
    pub account: u64,
    pub cache: Vec<CacheChange>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleEntry {
    pub actor: Actor,
    pub schedule: Schedule,
    pub cache: Vec<CacheChange>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolidaysEntry {
    pub actor: Actor,
    pub holidays: Holidays,
    pub cache: Vec<CacheChange>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PermissionAction {
    Granted,
    Changed,
    Revoked,
}

impl PermissionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionAction::Granted => "granted",
            PermissionAction::Changed => "changed",
            PermissionAction::Revoked => "revoked",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionEntry {
    pub actor: Actor,
    pub action: PermissionAction,
    pub permission: Permission,
    pub cache: Vec<CacheChange>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAccessEntry {
    pub actor: Actor,
    pub access: GroupAccess,
    pub cache: Vec<CacheChange>,
}

/// Access events and punches as the journal keeps them: one per decision, with the
/// controller's event accounting it left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorEvents {
    pub events: Vec<AccessEvent>,
    pub punches: Vec<Punch>,
    pub controller: ControllerEvents,
}
