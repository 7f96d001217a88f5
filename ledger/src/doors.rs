//! Door access and attendance operations: the door admin's records (doors, schedules,
//! the holiday calendar, permissions, anti-passback), the controllers' requests (an
//! access check, a punch, an upload of offline events, a cache download), and security's
//! and the attendance admin's reports, read from the journal.
//!
//! Every change follows the one write protocol (`txn.rs`). A change that affects what a
//! door group's controllers hold moves that group's cache version in the same entry
//! (`CacheChange`: the cards whose entries changed, or all of them), and the version is
//! announced once durable; the sessions push DOOR_CACHE_PUSH. An online check is decided
//! on the state at that moment (a revoked permission refuses from the moment the API
//! answers), journaled as an access event, and answered once durable. Every event a
//! controller sends carries its own sequence number; a number seen before is a
//! duplicate, answered but never stored twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use cardgate_codec::CardNo;
use cardgate_domain::access::{
    AccessEvent, AccessRecord, AnswerSubject, AntiPassback, CacheCause, CacheChange, CacheLine, CacheMovedEntry, Door,
    DoorDirection, DoorEntry, DoorEvents, EventSource, GroupAccess, GroupAccessEntry, HolidayRule, Holidays,
    HolidaysEntry, Passage, PassbackState, Permission, PermissionAction, PermissionEntry, Punch, Schedule,
    ScheduleEntry, Subject, Window,
};
use cardgate_domain::entry::{EntryBody, EntryRecord};
use cardgate_domain::model::{Account, AccountStatus, Card, CardStatus, Person, TerminalKind};
use cardgate_domain::rules::access::{
    AccessCheck, AccessReason, card_refusal, check_anti_passback, check_door, check_holidays, check_schedule,
    check_validity, day_start_ms, decide, subject_matches,
};
use cardgate_domain::rules::attendance::{DaySheet, WorkHours, day_sheet};
use cardgate_domain::rules::sequence::Seen;
use cardgate_journal::JournalError;
use serde::Serialize;
use smallvec::SmallVec;

use crate::access::{AccessConfig, Controller, Earlier, LineDiff};
pub use crate::access::{CACHE_LOG_PER_GROUP_MAX, DoorCache, cache_version};
use crate::desk::{By, Targets};
use crate::error::LedgerError;
use crate::history::HISTORY_ROWS_MAX;
use crate::ledger::Ledger;
use crate::records::Writes;
use crate::records::access_write;
use crate::state::State;
use crate::txn::{Durable, Txn};

/// Offline events one journal entry carries: an upload is split so that each entry
/// stays well inside a journal segment.
pub const EVENTS_PER_ENTRY_MAX: usize = 32;
/// How long after an event its upload may come and still be found by a search of the
/// event's time: a controller offline for a week is a broken controller.
pub const UPLOAD_SLACK_MS: i64 = 7 * 86_400_000;
/// Door ids are a u32 on the wire.
pub const DOOR_ID_MAX: u64 = u32::MAX as u64;

fn invalid(msg: impl Into<String>) -> LedgerError {
    LedgerError::Invalid(msg.into())
}

/// A door to create (`id` None: the next free id) or replace.
#[derive(Clone, Debug)]
pub struct DoorInput {
    pub id: Option<u64>,
    pub name: String,
    pub place: String,
    pub group: u64,
    pub controller: u64,
    pub direction: DoorDirection,
    pub enabled: bool,
}

#[derive(Clone, Debug)]
pub struct ScheduleInput {
    pub id: Option<u64>,
    pub name: String,
    pub windows: Vec<Window>,
    pub holidays: HolidayRule,
}

#[derive(Clone, Debug)]
pub struct PermissionInput {
    pub subject: Subject,
    pub door_group: u64,
    pub schedule: u64,
    pub valid_from_day: i32,
    pub valid_to_day: Option<i32>,
    pub note: String,
}

impl Targets for Door {
    fn targets(&self) -> Vec<String> {
        vec![format!("door:{}", self.id), format!("door_group:{}", self.group)]
    }
}

impl Targets for Schedule {
    fn targets(&self) -> Vec<String> {
        vec![format!("schedule:{}", self.id)]
    }
}

impl Targets for Holidays {
    fn targets(&self) -> Vec<String> {
        vec!["holidays".into()]
    }
}

impl Targets for Permission {
    fn targets(&self) -> Vec<String> {
        let mut t = vec![
            format!("permission:{}", self.id),
            format!("door_group:{}", self.door_group),
        ];
        if let Subject::Person(a) = self.subject {
            t.push(format!("account:{a}"));
        }
        t
    }
}

/// A permission as a change left it, with its door group's access as of the same change
/// (the cache version the group's controllers are brought to): the answer to the change,
/// kept under its idempotency key inside the change, needs both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionChange {
    pub permission: Permission,
    pub access: GroupAccess,
}

impl Targets for PermissionChange {
    fn targets(&self) -> Vec<String> {
        self.permission.targets()
    }
}

impl Targets for GroupAccess {
    fn targets(&self) -> Vec<String> {
        vec![format!("door_group:{}", self.group)]
    }
}

/// An access check as a controller asks it.
#[derive(Clone, Copy, Debug)]
pub struct AccessRequest {
    pub event_seq: u64,
    pub card: CardNo,
    pub door: u64,
    /// The wire's byte: 1 in, 2 out.
    pub direction: u8,
    pub controller_time_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessAnswer {
    pub event_seq: u64,
    pub reason: AccessReason,
    pub cache_version: u64,
    pub gateway_time_ms: i64,
}

/// PunchStatus on the wire.
pub mod punch_status {
    pub const RECORDED: u8 = 0;
    pub const DUPLICATE: u8 = 1;
    pub const UNKNOWN_CARD: u8 = 2;
    pub const CARD_BLOCKED: u8 = 3;
    pub const EVENT_REUSED: u8 = 4;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PunchAnswer {
    pub event_seq: u64,
    pub status: u8,
    pub gateway_time_ms: i64,
}

/// An event a controller decided offline, as uploaded (its MAC checked by the session).
#[derive(Clone, Copy, Debug)]
pub struct UploadedEvent {
    pub event_seq: u64,
    pub card: CardNo,
    pub door: u64,
    pub direction: u8,
    pub granted: bool,
    pub reason: u16,
    pub event_time_ms: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadResult {
    pub stored: u16,
    pub duplicates: u16,
    /// Of `stored`: decisions the gateway's rules would have made otherwise.
    pub flagged: u16,
    /// The controller's highest event number now.
    pub last_event_seq: u64,
}

/// The cards of `account`.
fn cards_of(state: &State, account: u64) -> Vec<CardNo> {
    let mut out = Vec::new();
    state.for_each_card(|c| {
        if c.account == account {
            out.push(c.no);
        }
    });
    out
}

/// The cache lines `card` has on a group under `perms` (revoked ones skipped). A card
/// that cannot be used, or whose account is blocked, has none unless `any_status`
/// (what a controller may hold for a card that has just been blocked).
pub(crate) fn lines_of(
    state: &State,
    perms: &[Permission],
    card: CardNo,
    tz: i32,
    any_status: bool,
    out: &mut Vec<CacheLine>,
) {
    let Some(c) = state.card(card) else { return };
    let Some(a) = state.account(c.account) else { return };
    let person = state.person_of_account(a.id);
    card_lines(perms, &c, &a, person.as_ref(), tz, any_status, out);
}

/// `lines_of` for records in hand (a change not yet in the state).
fn card_lines(
    perms: &[Permission],
    c: &Card,
    a: &Account,
    person: Option<&Person>,
    tz: i32,
    any_status: bool,
    out: &mut Vec<CacheLine>,
) {
    if !any_status && (c.status != CardStatus::Active || a.status != AccountStatus::Active) {
        return;
    }
    // A card that expires (a temporary card) stops opening doors at its expiry even on
    // a controller that cannot reach the gateway; expiry is fixed at issue, so it moves
    // no version.
    let card_end = c.expires_ms.map_or(u32::MAX, minutes);
    for p in perms
        .iter()
        .filter(|p| !p.revoked && subject_matches(&p.subject, a, person))
    {
        let permission_end = p.valid_to_day.map_or(u32::MAX, |d| minutes(day_start_ms(d + 1, tz)));
        out.push(CacheLine {
            card: c.no,
            schedule: p.schedule as u32,
            valid_from_min: minutes(day_start_ms(p.valid_from_day, tz)),
            valid_to_min: permission_end.min(card_end),
        });
    }
}

/// A card holder as the door caches see one: an account's cards, the account and its
/// person, before or after a desk change.
pub(crate) struct Holder<'a> {
    pub(crate) cards: &'a [Card],
    pub(crate) account: &'a Account,
    pub(crate) person: Option<&'a Person>,
}

/// Moves on every door group whose cache lines change when the holders go from their
/// `before` to their `after`, each by one version carrying the lines that joined and
/// left (or, past what a delta carries, as a whole list). The caller holds the access
/// config's write lock until the change is sent, so no controller reads a version
/// that is not in the journal's order.
pub(crate) fn holder_moves(
    config: &mut AccessConfig,
    changes: &[(Holder<'_>, Holder<'_>)],
    tz: i32,
) -> Vec<(CacheChange, GroupAccess)> {
    let mut groups: Vec<u64> = config.by_group.keys().copied().collect();
    groups.sort_unstable();
    let mut diffs = Vec::new();
    let (mut old, mut new) = (Vec::new(), Vec::new());
    for g in groups {
        let perms = &config.by_group[&g];
        if perms.iter().all(|p| p.revoked) {
            continue;
        }
        old.clear();
        new.clear();
        for (before, after) in changes {
            for c in before.cards {
                card_lines(perms, c, before.account, before.person, tz, false, &mut old);
            }
            for c in after.cards {
                card_lines(perms, c, after.account, after.person, tz, false, &mut new);
            }
        }
        let o: std::collections::BTreeSet<CacheLine> = old.iter().copied().collect();
        let n: std::collections::BTreeSet<CacheLine> = new.iter().copied().collect();
        let added: Vec<CacheLine> = n.difference(&o).copied().collect();
        let removed: Vec<CacheLine> = o.difference(&n).copied().collect();
        if added.is_empty() && removed.is_empty() {
            continue;
        }
        let lines = (added.len() + removed.len() <= DELTA_LINES_MAX).then_some((added, removed));
        diffs.push((g, lines));
    }
    diffs.into_iter().map(|(g, lines)| config.bump(g, lines)).collect()
}

/// `holder_moves` for one new card on an account: its lines join.
pub(crate) fn new_card_moves(
    config: &mut AccessConfig,
    card: &Card,
    account: &Account,
    person: Option<&Person>,
    tz: i32,
) -> Vec<(CacheChange, GroupAccess)> {
    let before = Holder {
        cards: &[],
        account,
        person,
    };
    let after = Holder {
        cards: std::slice::from_ref(card),
        account,
        person,
    };
    holder_moves(config, &[(before, after)], tz)
}

/// The lines that join and leave `cards`' entries when a group's permissions go from
/// `before` to `after`.
fn diff_lines(state: &State, before: &[Permission], after: &[Permission], cards: &[CardNo], tz: i32) -> LineDiff {
    let (mut old, mut new) = (Vec::new(), Vec::new());
    for card in cards {
        lines_of(state, before, *card, tz, false, &mut old);
        lines_of(state, after, *card, tz, false, &mut new);
    }
    let old: std::collections::BTreeSet<CacheLine> = old.into_iter().collect();
    let new: std::collections::BTreeSet<CacheLine> = new.into_iter().collect();
    (
        new.difference(&old).copied().collect(),
        old.difference(&new).copied().collect(),
    )
}

/// The id a new record gets: after the counter and after every id in use, as ids have
/// always been given; when that passes `max` (a record made with the highest id by
/// hand), the lowest id still free. None only when every id up to `max` is taken.
fn next_free_id<V>(counter: u64, taken: &BTreeMap<u64, V>, max: u64) -> Option<u64> {
    let after = counter.max(taken.keys().next_back().map_or(1, |k| k.saturating_add(1)));
    if (1..=max).contains(&after) {
        return Some(after);
    }
    // Ids in use, ascending: the first gap below `max` is the lowest free id.
    let mut want = 1u64;
    for &k in taken.keys() {
        if k > want {
            break;
        }
        want = k.saturating_add(1);
    }
    (want <= max).then_some(want)
}

fn minutes(ms: i64) -> u32 {
    (ms.div_euclid(60_000)).clamp(0, i64::from(u32::MAX)) as u32
}

impl Ledger {
    // ---- reading ------------------------------------------------------------------------

    pub fn doors(&self) -> Vec<Door> {
        self.state.access().read().doors.values().cloned().collect()
    }

    pub fn door(&self, id: u64) -> Option<Door> {
        self.state.access().read().doors.get(&id).cloned()
    }

    pub fn schedules(&self) -> Vec<Schedule> {
        self.state.access().read().schedules.values().cloned().collect()
    }

    pub fn holidays(&self) -> Holidays {
        self.state.access().read().holidays.clone()
    }

    pub fn permissions(&self) -> Vec<Permission> {
        self.state.access().read().permissions.values().cloned().collect()
    }

    pub fn permission(&self, id: u64) -> Option<Permission> {
        self.state.access().read().permissions.get(&id).cloned()
    }

    pub fn group_access(&self, group: u64) -> GroupAccess {
        self.state.access().read().group(group)
    }

    /// The cache version of a door controller's group as announced (durable changes
    /// only); 0 for a terminal without a group.
    pub fn controller_cache_version(&self, terminal: u64) -> u64 {
        match self.controller_group(terminal) {
            0 => 0,
            g => self.group_cache_version(g),
        }
    }

    /// The cache version a door group's controllers are brought to, as they hold it (the
    /// group's own count in the high 32 bits, the published blacklist version in the low
    /// 32): what the operator API shows beside the controllers' acknowledged versions.
    pub fn group_cache_version(&self, group: u64) -> u64 {
        cache_version(
            self.group_access(group).cache_version,
            self.state.blacklist().published(),
        )
    }

    /// The door group a door controller serves (0: none, or not a controller).
    pub fn controller_group(&self, terminal: u64) -> u64 {
        self.state
            .terminal(terminal)
            .and_then(|t| t.record.as_ref().map(|r| r.door_group))
            .unwrap_or(0)
    }

    /// Durable cache changes, counted: sessions select on it and compare versions.
    pub fn door_cache_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.access().subscribe()
    }

    /// The cache version a controller said it holds (DOOR_CACHE_ACK).
    pub fn door_cache_ack(&self, terminal: u64, version: u64) {
        let mut ev = self.state.access().events();
        let c = ev.controllers.entry(terminal).or_default();
        c.cache_acked = version;
    }

    /// Where each door controller's cache stands (every door terminal with a group,
    /// whether or not it has connected): the one rule the inventory and
    /// `cardgate_door_controllers_behind` both show. An acknowledgement is live state, so
    /// after a restart a controller is behind until it signs on and syncs again.
    pub fn door_cache_views(&self) -> HashMap<u64, DoorCacheView> {
        let mut controllers = Vec::new();
        self.state.for_each_terminal(|t| {
            if t.info.kind == TerminalKind::Door
                && let Some(group) = t.record.as_ref().map(|r| r.door_group).filter(|g| *g != 0)
            {
                controllers.push((t.info.id, group));
            }
        });
        // Read after the walk over the terminals, so that no two of the state's locks are
        // held at once.
        let acked: HashMap<u64, u64> = self
            .state
            .access()
            .events()
            .controllers
            .iter()
            .map(|(t, c)| (*t, c.cache_acked))
            .collect();
        let mut current_of: HashMap<u64, u64> = HashMap::new();
        controllers
            .into_iter()
            .map(|(id, group)| {
                let current = *current_of
                    .entry(group)
                    .or_insert_with(|| self.group_cache_version(group));
                let acknowledged = acked.get(&id).copied().unwrap_or(0);
                let view = DoorCacheView {
                    acknowledged,
                    current,
                    behind: acknowledged < current,
                };
                (id, view)
            })
            .collect()
    }

    /// How many door controllers are behind (`door_cache_views`), and of how many.
    pub fn door_cache_lag(&self) -> (u64, u64) {
        let views = self.door_cache_views();
        let behind = views.values().filter(|v| v.behind).count() as u64;
        (behind, views.len() as u64)
    }

    /// A controller's recorded clock drift (its clock minus the gateway's).
    pub fn controller_drift_ms(&self, terminal: u64) -> Option<i64> {
        self.state
            .access()
            .events()
            .controllers
            .get(&terminal)
            .map(|c| c.drift_ms)
    }

    /// The clock drift above which a controller's or clock's message is an alarm.
    pub fn set_door_clock_drift_max_ms(&self, ms: i64) {
        self.state
            .access()
            .drift_max_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The bound on a controller's or clock's drift (`doors.clock_drift_max_ms`).
    fn door_clock_drift_max_ms(&self) -> i64 {
        self.state
            .access()
            .drift_max_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            .abs()
    }

    /// Records a controller's or clock's drift seen now (its clock minus the gateway's)
    /// and counts an alarm when it is above the bound; returns whether it was.
    pub fn door_clock_drift(&self, terminal: u64, drift_ms: i64) -> bool {
        let max = self.door_clock_drift_max_ms();
        self.state
            .access()
            .events()
            .controllers
            .entry(terminal)
            .or_default()
            .drift_ms = drift_ms;
        let alarm = drift_ms.unsigned_abs() > max.unsigned_abs();
        if alarm {
            metrics::counter!("cardgate_door_clock_drift_alarms_total").increment(1);
            tracing::warn!(
                terminal.id = terminal,
                drift_ms,
                max_ms = max,
                "door controller's clock is off"
            );
        }
        alarm
    }

    // ---- the door admin's changes ---------------------------------------------------------

    /// Sends an access change with its audit record; announces the cache versions it
    /// moved once durable.
    async fn finish_access<T: Clone>(&self, sent: Durable<T>, moved: bool) -> Result<T, LedgerError> {
        let (v, _) = sent.durable().await?;
        if moved {
            self.state.access().publish();
        }
        Ok(v)
    }

    /// The entry that carries door cache moves a desk change made (none if it moved
    /// nothing), its state records added to `writes`.
    pub(crate) fn cache_moved_entry(
        moved: &[(CacheChange, GroupAccess)],
        cause: CacheCause,
        account: u64,
        now_ms: i64,
        writes: &mut Writes,
    ) -> SmallVec<[EntryRecord; 1]> {
        if moved.is_empty() {
            return SmallVec::new();
        }
        let cache = Self::cache_writes(moved, writes);
        smallvec::smallvec![EntryRecord {
            time_ms: now_ms,
            body: EntryBody::DoorCacheMoved(Box::new(CacheMovedEntry { cause, account, cache })),
        }]
    }

    /// Announces door cache versions a desk change moved, once it is durable.
    pub(crate) fn publish_door_moves(&self, moved: bool) {
        if moved {
            self.state.access().publish();
        }
    }

    fn cache_writes(changes: &[(CacheChange, GroupAccess)], writes: &mut Writes) -> Vec<CacheChange> {
        let mut out = Vec::with_capacity(changes.len());
        for (c, g) in changes {
            writes.push(access_write(AccessRecord::Change(c.clone())));
            writes.push(access_write(AccessRecord::Group(*g)));
            out.push(c.clone());
        }
        out
    }

    /// Creates or replaces a door. Its group must exist; its controller, if named, must
    /// be a door controller of that group.
    pub async fn set_door(&self, by: &By<'_, Door>, input: DoorInput) -> Result<Door, LedgerError> {
        check_door(&input.name, &input.place)?;
        if input.id.is_some_and(|id| id == 0 || id > DOOR_ID_MAX) {
            return Err(invalid(format!("door ids are 1..={DOOR_ID_MAX}")));
        }
        if self.state.door_group(input.group).is_none() {
            return Err(LedgerError::not_found("door group", input.group));
        }
        if input.controller != 0 {
            let t = self
                .state
                .terminal(input.controller)
                .ok_or_else(|| LedgerError::not_found("terminal", input.controller))?;
            if t.info.kind != TerminalKind::Door {
                return Err(invalid(format!(
                    "terminal {} is not a door controller",
                    input.controller
                )));
            }
            if t.record.as_ref().map(|r| r.door_group) != Some(input.group) {
                return Err(invalid(format!(
                    "door controller {} serves another door group",
                    input.controller
                )));
            }
        }
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let mut config = self.state.access().write();
            let id = match input.id {
                Some(id) => id,
                None => {
                    let mut ids = self.state.access().next_ids();
                    let id =
                        next_free_id(ids.door, &config.doors, DOOR_ID_MAX).ok_or_else(|| invalid("no door id left"))?;
                    ids.door = id + 1;
                    id
                }
            };
            let now = self.now_ms();
            let old_group = config.doors.get(&id).map(|d| d.group);
            let door = Door {
                id,
                name: input.name,
                place: input.place,
                group: input.group,
                controller: input.controller,
                direction: input.direction,
                enabled: input.enabled,
                updated_ms: now,
            };
            // The door list is not in the cache, but a controller must learn that one
            // of its doors changed (disabled, moved).
            let mut moved = vec![config.bump(door.group, Some(Default::default()))];
            if let Some(g) = old_group.filter(|g| *g != door.group) {
                moved.push(config.bump(g, Some(Default::default())));
            }
            let mut writes = Writes::new();
            writes.push(access_write(AccessRecord::Door(door.clone())));
            let cache = Self::cache_writes(&moved, &mut writes);
            let body = EntryBody::DoorSet(Box::new(DoorEntry {
                actor: by.actor.clone(),
                door: door.clone(),
                cache,
            }));
            let sent = self.send_desk(txn, by, door.clone(), now, body, writes, 0);
            config.put_door(door);
            sent
        };
        self.finish_access(sent, true).await
    }

    /// Creates or replaces a schedule; the groups whose permissions use it get it anew.
    pub async fn set_schedule(&self, by: &By<'_, Schedule>, input: ScheduleInput) -> Result<Schedule, LedgerError> {
        check_schedule(&input.name, &input.windows, &input.holidays)?;
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let mut config = self.state.access().write();
            // Every refusal comes before an id is taken: a refused create leaves the next
            // id where it was.
            if config
                .schedules
                .values()
                .any(|s| s.name == input.name && Some(s.id) != input.id)
            {
                return Err(invalid(format!("a schedule named {:?} exists", input.name)));
            }
            let id = match input.id {
                Some(id) => id,
                None => {
                    let mut ids = self.state.access().next_ids();
                    let id = next_free_id(ids.schedule, &config.schedules, u64::from(u32::MAX))
                        .ok_or_else(|| invalid("no schedule id left"))?;
                    ids.schedule = id + 1;
                    id
                }
            };
            if id == 0 || id > u64::from(u32::MAX) {
                return Err(invalid("schedule ids are 1..=4294967295 (a u32 on the wire)"));
            }
            let now = self.now_ms();
            let schedule = Schedule {
                id,
                name: input.name,
                windows: input.windows,
                holidays: input.holidays,
                updated_ms: now,
            };
            let moved = config.bump_whole_lists(|p| p.schedule == id);
            let mut writes = Writes::new();
            writes.push(access_write(AccessRecord::Schedule(schedule.clone())));
            let cache = Self::cache_writes(&moved, &mut writes);
            let body = EntryBody::ScheduleSet(Box::new(ScheduleEntry {
                actor: by.actor.clone(),
                schedule: schedule.clone(),
                cache,
            }));
            let sent = self.send_desk(txn, by, schedule.clone(), now, body, writes, 0);
            config.schedules.insert(schedule.id, schedule);
            (sent, !moved.is_empty())
        };
        self.finish_access(sent.0, sent.1).await
    }

    /// Replaces the holiday calendar (local dates as business days).
    pub async fn set_holidays(&self, by: &By<'_, Holidays>, days: &[i32]) -> Result<Holidays, LedgerError> {
        let holidays = Holidays {
            days: check_holidays(days)?,
        };
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let mut config = self.state.access().write();
            if config.holidays == holidays {
                // Nothing to change: no group's controllers fetch their lists again.
                return Ok(holidays);
            }
            let now = self.now_ms();
            let moved = config.bump_whole_lists(|_| true);
            let mut writes = Writes::new();
            writes.push(access_write(AccessRecord::Holidays(holidays.clone())));
            let cache = Self::cache_writes(&moved, &mut writes);
            let body = EntryBody::HolidaysSet(Box::new(HolidaysEntry {
                actor: by.actor.clone(),
                holidays: holidays.clone(),
                cache,
            }));
            let sent = self.send_desk(txn, by, holidays.clone(), now, body, writes, 0);
            config.holidays = holidays;
            (sent, !moved.is_empty())
        };
        self.finish_access(sent.0, sent.1).await
    }

    /// Anti-passback on a door group.
    pub async fn set_anti_passback(
        &self,
        by: &By<'_, GroupAccess>,
        group: u64,
        rule: AntiPassback,
    ) -> Result<GroupAccess, LedgerError> {
        check_anti_passback(rule)?;
        if self.state.door_group(group).is_none() {
            return Err(LedgerError::not_found("door group", group));
        }
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let mut config = self.state.access().write();
            let now = self.now_ms();
            let mut g = config.group(group);
            g.anti_passback = rule;
            config.groups.insert(group, g);
            let moved = vec![config.bump(group, Some(Default::default()))];
            let g = config.group(group);
            let mut writes = Writes::new();
            let cache = Self::cache_writes(&moved, &mut writes);
            let body = EntryBody::GroupAccessSet(Box::new(GroupAccessEntry {
                actor: by.actor.clone(),
                access: g,
                cache,
            }));
            self.send_desk(txn, by, g, now, body, writes, 0)
        };
        self.finish_access(sent, true).await
    }

    /// Checks a permission's input against the records: the group, the schedule, the
    /// validity, and a person's account (not closed).
    fn check_permission(&self, config: &AccessConfig, input: &PermissionInput) -> Result<(), LedgerError> {
        check_validity(input.valid_from_day, input.valid_to_day)?;
        if self.state.door_group(input.door_group).is_none() {
            return Err(LedgerError::not_found("door group", input.door_group));
        }
        if !config.schedules.contains_key(&input.schedule) {
            return Err(LedgerError::not_found("schedule", input.schedule));
        }
        match &input.subject {
            Subject::Person(a) => {
                let account = self
                    .state
                    .account(*a)
                    .ok_or_else(|| LedgerError::not_found("account", *a))?;
                if account.status == AccountStatus::Closed {
                    return Err(invalid(format!("account {a} is cancelled: no permission for it")));
                }
            }
            Subject::Department(d) => {
                cardgate_domain::rules::input::check_text("department", d, 128, true)?;
                // Departments are the persons' own field, so a typo would grant nobody
                // and say nothing: one with no person in it is refused by name.
                if self.state.persons_where(|p| p.department == *d).is_empty() {
                    return Err(invalid(format!("no person is in department {d:?}")));
                }
            }
            Subject::Kind(_) => {}
        }
        Ok(())
    }

    /// Refuses a permission for a card that cannot be used any more (cancelled,
    /// replaced, bad): the person's account is what a permission names, so the caller
    /// resolves the card to it here.
    pub fn account_for_permission(&self, card: CardNo) -> Result<u64, LedgerError> {
        let c = self
            .state
            .card(card)
            .ok_or_else(|| LedgerError::not_found("card", card.0))?;
        match c.status {
            CardStatus::Cancelled | CardStatus::Replaced | CardStatus::Bad => Err(invalid(format!(
                "card {} is {}: no permission for it",
                card.0,
                c.status.as_str()
            ))),
            _ => Ok(c.account),
        }
    }

    pub async fn grant_permission(
        &self,
        by: &By<'_, PermissionChange>,
        input: PermissionInput,
    ) -> Result<PermissionChange, LedgerError> {
        self.put_permission(by, None, input, PermissionAction::Granted).await
    }

    pub async fn change_permission(
        &self,
        by: &By<'_, PermissionChange>,
        id: u64,
        input: PermissionInput,
    ) -> Result<PermissionChange, LedgerError> {
        self.put_permission(by, Some(id), input, PermissionAction::Changed)
            .await
    }

    pub async fn revoke_permission(
        &self,
        by: &By<'_, PermissionChange>,
        id: u64,
    ) -> Result<PermissionChange, LedgerError> {
        let p = self
            .permission(id)
            .ok_or_else(|| LedgerError::not_found("permission", id))?;
        if p.revoked {
            return Err(invalid(format!("permission {id} is already revoked")));
        }
        let input = PermissionInput {
            subject: p.subject,
            door_group: p.door_group,
            schedule: p.schedule,
            valid_from_day: p.valid_from_day,
            valid_to_day: p.valid_to_day,
            note: p.note,
        };
        self.put_permission(by, Some(id), input, PermissionAction::Revoked)
            .await
    }

    async fn put_permission(
        &self,
        by: &By<'_, PermissionChange>,
        id: Option<u64>,
        input: PermissionInput,
        action: PermissionAction,
    ) -> Result<PermissionChange, LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let mut config = self.state.access().write();
            if action != PermissionAction::Revoked {
                self.check_permission(&config, &input)?;
            }
            let old = match id {
                Some(id) => {
                    let old = config
                        .permissions
                        .get(&id)
                        .cloned()
                        .ok_or_else(|| LedgerError::not_found("permission", id))?;
                    if old.revoked {
                        return Err(invalid(format!("permission {id} is revoked: grant a new one")));
                    }
                    Some(old)
                }
                None => None,
            };
            let id = match id {
                Some(id) => id,
                None => {
                    let mut ids = self.state.access().next_ids();
                    let id = ids
                        .permission
                        .max(config.permissions.keys().next_back().map_or(1, |k| k + 1));
                    ids.permission = id + 1;
                    id
                }
            };
            let now = self.now_ms();
            let permission = Permission {
                id,
                subject: input.subject,
                door_group: input.door_group,
                schedule: input.schedule,
                valid_from_day: input.valid_from_day,
                valid_to_day: input.valid_to_day,
                revoked: action == PermissionAction::Revoked,
                note: input.note,
                updated_ms: now,
            };
            // The old and the new subject's lines, on the old and the new group: exact
            // for a person; a department or a kind changes everything.
            let tz = self.tz_offset_minutes();
            let mut groups: Vec<u64> = old.iter().map(|p| p.door_group).collect();
            groups.push(permission.door_group);
            groups.sort_unstable();
            groups.dedup();
            let person_only = old
                .iter()
                .chain(std::iter::once(&permission))
                .all(|p| matches!(p.subject, Subject::Person(_)));
            let mut cards: Vec<CardNo> = Vec::new();
            if person_only {
                for p in old.iter().chain(std::iter::once(&permission)) {
                    if let Subject::Person(a) = p.subject {
                        cards.extend(cards_of(&self.state, a));
                    }
                }
                cards.sort_unstable();
                cards.dedup();
            }
            let mut by_group: BTreeMap<u64, Option<LineDiff>> = BTreeMap::new();
            for g in groups {
                let before = config.by_group.get(&g).cloned().unwrap_or_default();
                let mut after: Vec<Permission> = before.iter().filter(|x| x.id != permission.id).cloned().collect();
                if permission.door_group == g {
                    after.push(permission.clone());
                }
                let lines = person_only.then(|| diff_lines(&self.state, &before, &after, &cards, tz));
                by_group.insert(g, lines);
            }
            let moved: Vec<_> = by_group.into_iter().map(|(g, lines)| config.bump(g, lines)).collect();
            let mut writes = Writes::new();
            writes.push(access_write(AccessRecord::Permission(permission.clone())));
            let cache = Self::cache_writes(&moved, &mut writes);
            let body = EntryBody::PermissionSet(Box::new(PermissionEntry {
                actor: by.actor.clone(),
                action,
                permission: permission.clone(),
                cache,
            }));
            let access = moved
                .iter()
                .map(|(_, g)| *g)
                .find(|g| g.group == permission.door_group)
                .unwrap_or_else(|| config.group(permission.door_group));
            let change = PermissionChange {
                permission: permission.clone(),
                access,
            };
            let sent = self.send_desk(txn, by, change, now, body, writes, 0);
            config.put_permission(permission);
            sent
        };
        self.finish_access(sent, true).await
    }

    // ---- the controllers' requests ----------------------------------------------------------

    /// An online access check: decided now, journaled as an access event, answered once
    /// durable. A number the controller used before is decided again for the answer but
    /// neither stored nor allowed to move anti-passback.
    pub async fn access_check(&self, terminal: u64, req: AccessRequest) -> Result<Durable<AccessAnswer>, JournalError> {
        let txn = Txn::begin(self.journal()).await?;
        let now = self.now_ms();
        if req.event_seq == 0 {
            // No event has number 0 (the decoder refuses it): a check under it could be
            // neither recorded nor told from a retry, so it never opens a door.
            return Ok(txn.barrier(AccessAnswer {
                event_seq: 0,
                reason: AccessReason::SystemError,
                cache_version: 0,
                gateway_time_ms: now,
            }));
        }
        self.door_clock_drift(terminal, req.controller_time_ms.saturating_sub(now));
        let tz = self.tz_offset_minutes();
        let controller_group = self.controller_group(terminal);
        let card = self.state.card(req.card);
        let account = card.and_then(|c| self.state.account(c.account));
        let person = account.and_then(|a| self.state.person_of_account(a.id));
        let direction = Passage::from_wire(req.direction).unwrap_or(Passage::In);
        let book = self.state.access();
        let config = book.read();
        let door = config.doors.get(&req.door);
        let group = door.map_or(0, |d| d.group);
        let ga = config.group(group);
        let no_perms = Vec::new();
        let permissions = config.by_group.get(&group).unwrap_or(&no_perms);
        let schedules = &config.schedules;
        let lookup = |id: u64| schedules.get(&id);
        let mut events = book.events();
        let passback = account.and_then(|a| events.passback.get(&(a.id, group)).copied());
        let verdict = decide(&AccessCheck {
            now_ms: now,
            tz_offset_minutes: tz,
            controller_group,
            door,
            direction,
            card: card.as_ref(),
            account: account.as_ref(),
            person: person.as_ref(),
            permissions,
            schedule: &lookup,
            holidays: &config.holidays,
            anti_passback: ga.anti_passback,
            passback,
        });
        let answer = AccessAnswer {
            event_seq: req.event_seq,
            reason: verdict.reason,
            cache_version: cache_version(
                config.group(controller_group).cache_version,
                self.state.blacklist().published(),
            ),
            gateway_time_ms: now,
        };
        let drift = req.controller_time_ms.saturating_sub(now);
        let passage = door.map_or(direction, |d| cardgate_domain::rules::access::passage_at(d, direction));
        let subject = AnswerSubject::check(req.card.0, req.door, passage);
        let c = events.controllers.entry(terminal).or_default();
        c.drift_ms = drift;
        if c.seen.mark(req.event_seq) == Seen::Duplicate {
            // A resend of the same check gets the answer recorded the first time. The
            // number used for another card or door, or too long ago to know, decides
            // nothing: answered with today's verdict it would open the door with no
            // record of it.
            let reason = match c.earlier(req.event_seq, subject) {
                Earlier::Resent(code) => AccessReason::from_code(code).unwrap_or(AccessReason::SystemError),
                Earlier::Reused => {
                    metrics::counter!("cardgate_door_checks_total", "result" => "denied").increment(1);
                    metrics::counter!("cardgate_door_denials_total", "reason" => AccessReason::EventReused.as_str())
                        .increment(1);
                    AccessReason::EventReused
                }
            };
            return Ok(txn.barrier(AccessAnswer { reason, ..answer }));
        }
        let remembered = c.remember(terminal, req.event_seq, verdict.reason.code(), subject);
        let controller = c.record(terminal);
        if verdict.granted() {
            metrics::counter!("cardgate_door_checks_total", "result" => "granted").increment(1);
        } else {
            metrics::counter!("cardgate_door_checks_total", "result" => "denied").increment(1);
            metrics::counter!("cardgate_door_denials_total", "reason" => verdict.reason.as_str()).increment(1);
        }
        let event = AccessEvent {
            terminal,
            event_seq: req.event_seq,
            card: req.card,
            account: account.map_or(0, |a| a.id),
            door: req.door,
            door_group: group,
            direction: passage,
            granted: verdict.granted(),
            reason: verdict.reason.code(),
            source: EventSource::Online,
            event_time_ms: now,
            permission: verdict.permission,
            passback: verdict.passback,
            drift_ms: drift,
            flagged: false,
        };
        let mut writes = Writes::new();
        writes.push(access_write(AccessRecord::Controller(controller.clone())));
        writes.push(access_write(AccessRecord::CheckedAnswer(remembered)));
        if let Some(p) = verdict.passback {
            events.passback.insert((p.account, p.group), p);
            writes.push(access_write(AccessRecord::Passback(p)));
        }
        let body = EntryBody::DoorEvents(Box::new(DoorEvents {
            events: vec![event],
            punches: Vec::new(),
            controller,
        }));
        Ok(txn.send(answer, now, body, writes, 0))
    }

    /// An attendance punch: recorded (an unknown or blocked card is recorded with its
    /// status, so the sheet's reader can see who tried), or a duplicate. It is filed at
    /// the clock's time (`punch_filed_at`); its drift is kept beside it either way.
    pub async fn punch(
        &self,
        terminal: u64,
        event_seq: u64,
        card_no: CardNo,
        clock_time_ms: i64,
    ) -> Result<Durable<PunchAnswer>, JournalError> {
        let txn = Txn::begin(self.journal()).await?;
        let now = self.now_ms();
        self.door_clock_drift(terminal, clock_time_ms.saturating_sub(now));
        let card = self.state.card(card_no);
        let account = card.and_then(|c| self.state.account(c.account));
        let status = match (card, account) {
            (None, _) => punch_status::UNKNOWN_CARD,
            (Some(c), a) if card_refusal(&c, now).is_some() || a.is_none_or(|a| a.status != AccountStatus::Active) => {
                punch_status::CARD_BLOCKED
            }
            _ => punch_status::RECORDED,
        };
        let drift = clock_time_ms.saturating_sub(now);
        let mut events = self.state.access().events();
        let c = events.controllers.entry(terminal).or_default();
        c.drift_ms = drift;
        if c.seen.mark(event_seq) == Seen::Duplicate {
            // A refused punch sent again is refused again; a recorded one is a duplicate.
            // The number used for another card, or too long ago to know, records nothing:
            // "duplicate" would tell the clock's holder their punch was kept.
            let status = match c.earlier(event_seq, AnswerSubject::punch(card_no.0)) {
                Earlier::Resent(s) if s as u8 != punch_status::RECORDED => s as u8,
                Earlier::Resent(_) => punch_status::DUPLICATE,
                Earlier::Reused => punch_status::EVENT_REUSED,
            };
            let name = if status == punch_status::EVENT_REUSED {
                "event_reused"
            } else {
                "duplicate"
            };
            metrics::counter!("cardgate_door_punches_total", "status" => name).increment(1);
            return Ok(txn.barrier(PunchAnswer {
                event_seq,
                status,
                gateway_time_ms: now,
            }));
        }
        let remembered = c.remember(terminal, event_seq, u16::from(status), AnswerSubject::punch(card_no.0));
        let controller = c.record(terminal);
        let status_name = match status {
            punch_status::RECORDED => "recorded",
            punch_status::UNKNOWN_CARD => "unknown_card",
            _ => "card_blocked",
        };
        metrics::counter!("cardgate_door_punches_total", "status" => status_name).increment(1);
        let mut writes = Writes::new();
        writes.push(access_write(AccessRecord::Controller(controller.clone())));
        writes.push(access_write(AccessRecord::CheckedAnswer(remembered)));
        let body = EntryBody::DoorEvents(Box::new(DoorEvents {
            events: Vec::new(),
            punches: vec![Punch {
                terminal,
                event_seq,
                card: card_no,
                account: card.map_or(0, |c| c.account),
                status,
                punch_time_ms: self.punch_filed_at(clock_time_ms, now),
                drift_ms: drift,
            }],
            controller,
        }));
        let answer = PunchAnswer {
            event_seq,
            status,
            gateway_time_ms: now,
        };
        Ok(txn.send(answer, now, body, writes, 0))
    }

    /// The time a punch is filed at: the clock's (PROTOCOL.md 11.8), as far as a sheet can
    /// find it. A time more than the drift bound ahead of the gateway's would put a
    /// punch on a day that has not come, and one more than `UPLOAD_SLACK_MS` behind on a
    /// day whose sheet no longer looks for it: either is filed at arrival, and the
    /// clock's own time stays in the punch's drift (arrival + drift).
    fn punch_filed_at(&self, clock_time_ms: i64, now: i64) -> i64 {
        let ahead_max = self.door_clock_drift_max_ms();
        if clock_time_ms > now.saturating_add(ahead_max) || clock_time_ms < now.saturating_sub(UPLOAD_SLACK_MS) {
            // Also a drift alarm (`door_clock_drift`), unless the bound is set above a week.
            now
        } else {
            clock_time_ms
        }
    }

    /// Events a controller decided offline: each stored once by its event number
    /// (uploaded twice, or cut off and resent: the numbers seen are skipped), with the
    /// controller's decision as it made it; a granted passage moves anti-passback when
    /// it is newer than what the gateway knows.
    pub async fn door_events_upload(
        &self,
        terminal: u64,
        uploaded: &[UploadedEvent],
    ) -> Result<Durable<UploadResult>, JournalError> {
        let txn = Txn::begin(self.journal()).await?;
        let now = self.now_ms();
        let controller_group = self.controller_group(terminal);
        let book = self.state.access();
        let config = book.read();
        let mut events = book.events();
        let mut result = UploadResult::default();
        let mut stored: Vec<AccessEvent> = Vec::new();
        let mut writes = Writes::new();
        for u in uploaded {
            let c = events.controllers.entry(terminal).or_default();
            if c.seen.mark(u.event_seq) == Seen::Duplicate {
                result.duplicates += 1;
                continue;
            }
            result.stored += 1;
            let card = self.state.card(u.card);
            let account = card.map_or(0, |c| c.account);
            let door = config.doors.get(&u.door);
            let group = door.map_or(0, |d| d.group);
            let asked = Passage::from_wire(u.direction).unwrap_or(Passage::In);
            let direction = door.map_or(asked, |d| cardgate_domain::rules::access::passage_at(d, asked));
            let blocked = match card {
                None => true,
                Some(c) => {
                    card_refusal(&c, u.event_time_ms).is_some()
                        || self
                            .state
                            .account(c.account)
                            .is_none_or(|a| a.status != AccountStatus::Active)
                }
            };
            let mut flagged = u.granted && (blocked || door.is_none_or(|d| d.group != controller_group));
            let mut passback = None;
            let rule = config.group(group).anti_passback;
            if u.granted && account != 0 && rule != AntiPassback::Off {
                let held = events.passback.get(&(account, group)).copied();
                let newer = held.is_none_or(|p| p.last_ms <= u.event_time_ms);
                if newer {
                    if cardgate_domain::rules::access::passback(rule, held, account, group, direction, u.event_time_ms)
                        .is_err()
                    {
                        flagged = true;
                    }
                    let p = PassbackState {
                        account,
                        group,
                        inside: direction == Passage::In,
                        last_ms: u.event_time_ms,
                    };
                    events.passback.insert((account, group), p);
                    writes.push(access_write(AccessRecord::Passback(p)));
                    passback = Some(p);
                }
            }
            if flagged {
                result.flagged += 1;
            }
            stored.push(AccessEvent {
                terminal,
                event_seq: u.event_seq,
                card: u.card,
                account,
                door: u.door,
                door_group: group,
                direction,
                granted: u.granted,
                reason: u.reason,
                source: EventSource::Offline,
                event_time_ms: u.event_time_ms,
                permission: 0,
                passback,
                drift_ms: 0,
                flagged,
            });
        }
        let c: &mut Controller = events.controllers.entry(terminal).or_default();
        result.last_event_seq = c.seen.last;
        metrics::counter!("cardgate_door_events_uploaded_total", "result" => "stored")
            .increment(u64::from(result.stored));
        metrics::counter!("cardgate_door_events_uploaded_total", "result" => "duplicate")
            .increment(u64::from(result.duplicates));
        if stored.is_empty() {
            return Ok(txn.barrier(result));
        }
        let controller = c.record(terminal);
        writes.push(access_write(AccessRecord::Controller(controller.clone())));
        let entries: SmallVec<[EntryRecord; 1]> = stored
            .chunks(EVENTS_PER_ENTRY_MAX)
            .map(|chunk| EntryRecord {
                time_ms: now,
                body: EntryBody::DoorEvents(Box::new(DoorEvents {
                    events: chunk.to_vec(),
                    punches: Vec::new(),
                    controller: controller.clone(),
                })),
            })
            .collect();
        Ok(txn.send_all(result, entries, writes, 0))
    }

    /// A controller's cache: what changed since `have_version` when the logs still
    /// reach back that far and the change fits one sync run, else the whole list
    /// (`have_version` 0 asks for it). The answer waits for a barrier, so that no
    /// controller holds a version a crash could give to another change.
    pub async fn door_cache(&self, terminal: u64, have_version: u64) -> Result<Durable<DoorCache>, JournalError> {
        let group = self.controller_group(terminal);
        let txn = Txn::begin(self.journal()).await?;
        let cache = self.door_cache_of_group(group, have_version);
        Ok(txn.barrier(cache))
    }

    /// As `door_cache`, by door group.
    pub fn door_cache_of_group(&self, group: u64, have_version: u64) -> DoorCache {
        let tz = self.tz_offset_minutes();
        let blacklist = self.state.blacklist();
        let bl_version = blacklist.version();
        let book = self.state.access();
        let config = book.read();
        let g = config.group(group);
        let version = cache_version(g.cache_version, bl_version);
        let perms: Vec<Permission> = config
            .by_group
            .get(&group)
            .map(|v| v.iter().filter(|p| !p.revoked).cloned().collect())
            .unwrap_or_default();
        let (have_group, have_bl) = (have_version >> 32, have_version & 0xFFFF_FFFF);
        let delta = if have_version == 0 || have_version > version || have_bl > bl_version {
            None
        } else {
            config
                .changes_since(group, have_group)
                .and_then(|(mut added, mut removed)| {
                    let (listed, unlisted, _) = blacklist.changes_since(have_bl)?;
                    let mut lines = Vec::new();
                    for card in listed {
                        lines.clear();
                        lines_of(&self.state, &perms, CardNo(card), tz, true, &mut lines);
                        for l in &lines {
                            added.remove(l);
                            removed.insert(*l);
                        }
                    }
                    for card in unlisted {
                        lines.clear();
                        lines_of(&self.state, &perms, CardNo(card), tz, false, &mut lines);
                        for l in &lines {
                            removed.remove(l);
                            added.insert(*l);
                        }
                    }
                    (added.len() + removed.len() <= DELTA_LINES_MAX).then_some((added, removed))
                })
        };
        let schedule_ids: HashSet<u64> = perms.iter().map(|p| p.schedule).collect();
        let schedules = schedule_ids
            .into_iter()
            .filter_map(|id| config.schedules.get(&id).cloned())
            .collect();
        let holidays = config.holidays.clone();
        let cached = config.full_list(group, version);
        drop(config);
        let (full, added, removed) = match delta {
            Some((added, removed)) => (
                false,
                Arc::new(added.into_iter().collect()),
                removed.into_iter().collect(),
            ),
            None => {
                let list = match cached {
                    Some(list) => list,
                    None => {
                        let mut cards = Vec::new();
                        self.state.for_each_card(|c| cards.push(c.no));
                        let mut out = Vec::new();
                        for card in cards {
                            lines_of(&self.state, &perms, card, tz, false, &mut out);
                        }
                        out.sort_unstable();
                        out.dedup();
                        let list = Arc::new(out);
                        book.write().keep_full_list(group, version, list.clone());
                        list
                    }
                };
                (true, list, Vec::new())
            }
        };
        DoorCache {
            group,
            version,
            full,
            added,
            removed,
            anti_passback: g.anti_passback,
            schedules,
            holidays,
        }
    }
}

/// Lines one delta may carry: one sync run (32 pages of 4); a larger change is sent as
/// the full list.
pub const DELTA_LINES_MAX: usize = 128;

// ---- security's search and the attendance sheet --------------------------------------------

/// What security asks for: any combination, in a time range (by the event's time).
#[derive(Clone, Copy, Debug, Default)]
pub struct AccessQuery {
    pub door: Option<u64>,
    pub door_group: Option<u64>,
    pub account: Option<u64>,
    pub card: Option<CardNo>,
    /// Only granted (true) or only refused (false) events.
    pub granted: Option<bool>,
    /// Only the offline decisions flagged for security (true), or only the others.
    pub flagged: Option<bool>,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// Where a door controller's cache stands (the composite versions of PROTOCOL.md 11.3):
/// the version it acknowledged last since this gateway started (0: none), its group's
/// current one, and whether it is behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DoorCacheView {
    pub acknowledged: u64,
    pub current: u64,
    pub behind: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct AccessEventRow {
    pub entry_id: u64,
    pub event_time_ms: i64,
    pub recorded_ms: i64,
    pub terminal: u64,
    pub event_seq: u64,
    pub card: u64,
    pub account: u64,
    pub person_id: String,
    pub person_name: String,
    pub door: u64,
    pub door_name: String,
    pub door_group: u64,
    pub direction: &'static str,
    pub granted: bool,
    pub reason: &'static str,
    pub source: &'static str,
    /// An offline decision the gateway's rules would have made otherwise (a grant to a
    /// card blocked by then, an anti-passback conflict, a door of another group).
    pub flagged: bool,
    /// An online check's controller clock minus the gateway's at the check; 0 for an
    /// offline event (the controller's drift at its next sign-on is in the inventory).
    pub drift_ms: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AccessEvents {
    pub rows: Vec<AccessEventRow>,
    /// False when the answer was cut at `HISTORY_ROWS_MAX` rows or the journal no
    /// longer reaches back to the range's start (the central store has the rest).
    pub complete: bool,
}

/// One person's attendance on one day.
#[derive(Clone, Debug, Serialize)]
pub struct AttendanceRow {
    pub date: String,
    pub account: u64,
    pub person_id: String,
    pub name: String,
    pub department: String,
    pub first_in_ms: Option<i64>,
    pub last_out_ms: Option<i64>,
    pub punches: usize,
    pub late_min: u32,
    pub early_min: u32,
    pub status: &'static str,
}

/// Whom an attendance sheet covers.
#[derive(Clone, Debug)]
pub enum SheetOf {
    Account(u64),
    Department(String),
}

impl Ledger {
    /// Access events in `[from_ms, to_ms)` by the event's time, oldest first (offline
    /// events uploaded up to `UPLOAD_SLACK_MS` later are found). Blocks on sled reads:
    /// call it from a blocking task.
    pub fn access_events(&self, q: AccessQuery) -> Result<AccessEvents, LedgerError> {
        let doors: HashMap<u64, String> = self
            .state
            .access()
            .read()
            .doors
            .values()
            .map(|d| (d.id, d.name.clone()))
            .collect();
        let mut rows = Vec::new();
        let mut cut = false;
        let scan_to = q
            .to_ms
            .saturating_add(UPLOAD_SLACK_MS)
            .min(self.now_ms().saturating_add(1));
        let (_, complete, first_time) = self.scan_time_range(q.from_ms, scan_to.max(q.to_ms), |e| {
            let EntryBody::DoorEvents(d) = &e.record.body else {
                return true;
            };
            for ev in &d.events {
                let hit = ev.event_time_ms >= q.from_ms
                    && ev.event_time_ms < q.to_ms
                    && q.door.is_none_or(|x| x == ev.door)
                    && q.door_group.is_none_or(|x| x == ev.door_group)
                    && q.account.is_none_or(|x| x == ev.account)
                    && q.card.is_none_or(|x| x == ev.card)
                    && q.granted.is_none_or(|x| x == ev.granted)
                    && q.flagged.is_none_or(|x| x == ev.flagged);
                if !hit {
                    continue;
                }
                if rows.len() >= HISTORY_ROWS_MAX {
                    cut = true;
                    return false;
                }
                let person = self.state.person_of_account(ev.account);
                rows.push(AccessEventRow {
                    entry_id: e.id,
                    event_time_ms: ev.event_time_ms,
                    recorded_ms: e.record.time_ms,
                    terminal: ev.terminal,
                    event_seq: ev.event_seq,
                    card: ev.card.0,
                    account: ev.account,
                    person_id: person.as_ref().map_or_else(String::new, |p| p.id.clone()),
                    person_name: person.as_ref().map_or_else(String::new, |p| p.name.clone()),
                    door: ev.door,
                    door_name: doors.get(&ev.door).cloned().unwrap_or_default(),
                    door_group: ev.door_group,
                    direction: ev.direction.as_str(),
                    granted: ev.granted,
                    reason: AccessReason::from_code(ev.reason).map_or("unknown", |r| r.as_str()),
                    source: ev.source.as_str(),
                    flagged: ev.flagged,
                    drift_ms: ev.drift_ms,
                });
            }
            true
        })?;
        rows.sort_by_key(|r| (r.event_time_ms, r.entry_id));
        Ok(AccessEvents {
            rows,
            complete: complete && !cut && first_time <= q.from_ms,
        })
    }

    /// Whether local day `day` is on the holiday calendar.
    pub fn is_holiday(&self, day: i32) -> bool {
        self.state.access().read().holidays.contains(day)
    }

    /// The attendance sheet of local day `day` for one person or a department: every
    /// person in it, with their first and last punch, count, late and early minutes and
    /// status against `hours`, and whether the sheet is final (the day is over and the
    /// journal still reaches back to its start). Blocks on sled reads.
    pub fn attendance_sheet(
        &self,
        of: &SheetOf,
        day: i32,
        hours: &WorkHours,
    ) -> Result<(Vec<AttendanceRow>, bool), LedgerError> {
        let tz = self.tz_offset_minutes();
        let persons = match of {
            SheetOf::Account(a) => self
                .state
                .person_of_account(*a)
                .map(|p| vec![p])
                .ok_or_else(|| LedgerError::not_found("person of account", *a))?,
            SheetOf::Department(d) => {
                let mut v = self.state.persons_where(|p| p.department == *d);
                v.sort_by(|a, b| a.id.cmp(&b.id));
                v
            }
        };
        let accounts: HashSet<u64> = persons.iter().map(|p| p.account).collect();
        let from = day_start_ms(day, tz);
        let to = day_start_ms(day + 1, tz);
        let mut punches: HashMap<u64, Vec<i64>> = HashMap::new();
        let now = self.now_ms();
        // Punches are filed at the clock's time: one of this day may arrive up to
        // `UPLOAD_SLACK_MS` after it, or (a clock ahead within the drift bound) just
        // before it starts.
        let ahead_max = self.door_clock_drift_max_ms();
        let scan_from = from.saturating_sub(ahead_max);
        let scan_to = to.saturating_add(UPLOAD_SLACK_MS).min(now.saturating_add(1)).max(to);
        let (_, complete, first_time) = self.scan_time_range(scan_from, scan_to, |e| {
            if let EntryBody::DoorEvents(d) = &e.record.body {
                for p in &d.punches {
                    if p.status == punch_status::RECORDED
                        && p.punch_time_ms >= from
                        && p.punch_time_ms < to
                        && accounts.contains(&p.account)
                    {
                        punches.entry(p.account).or_default().push(p.punch_time_ms);
                    }
                }
            }
            true
        })?;
        let holiday = self.is_holiday(day);
        let (y, m, d) = cardgate_domain::clock::civil_from_days(i64::from(day));
        let date = format!("{y:04}-{m:02}-{d:02}");
        let rows = persons
            .into_iter()
            .map(|p| {
                let list = punches.remove(&p.account).unwrap_or_default();
                let s: DaySheet = day_sheet(day, now, &list, hours, holiday, tz);
                AttendanceRow {
                    date: date.clone(),
                    account: p.account,
                    person_id: p.id,
                    name: p.name,
                    department: p.department,
                    first_in_ms: s.first_in_ms,
                    last_out_ms: s.last_out_ms,
                    punches: s.punches,
                    late_min: s.late_min,
                    early_min: s.early_min,
                    status: s.status.as_str(),
                }
            })
            .collect();
        // Like a search whose range ends in the future: not final until the day is over.
        Ok((rows, complete && first_time <= scan_from && to <= now))
    }
}
