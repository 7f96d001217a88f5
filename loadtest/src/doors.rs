//! Door controllers beside the POS terminals: the controller's side of the door cache
//! (docs/PROTOCOL.md section 11.3) and what the run reports about the doors.
//!
//! A simulated controller signs on, brings its door group's cache up to date, then
//! sends ACCESS_CHECKs for its door with random demo cards, alternating in and out,
//! closed loop or at a share of `--door-rate`. Pushes and results that name a newer
//! cache version make it sync the delta, beside its checks. Door latencies are kept
//! apart from the POS figures, so that the report shows whether doors stay fast at the
//! POS peak, and whether the POS stays as fast with the doors.
//!
//! The cache logic here is written from the protocol page alone and does not decide
//! offline (the simulator always reaches the gateway), so by default it counts the
//! entries it was given instead of keeping 20,000 of them per controller.

use std::collections::{BTreeMap, BTreeSet};

use cardgate_codec::{
    AccessReason, CardNo, DOOR_HOLIDAYS_FIRST, DOOR_PAGE_FIRST, DOOR_PAGE_LAST_IN_RUN, DOOR_PAGE_MORE,
    DOOR_SCHEDULE_ALWAYS, DOOR_SCHEDULE_FIRST, DOOR_WINDOW_HOLIDAY, Direction, DoorCacheBulk, DoorCacheEntry,
    DoorCachePageKind, DoorCacheSync, DoorWindow, HolidayRule, Message, Passback,
};
use serde::Serialize;

use crate::percentiles::Percentiles;

/// Door controller `i` of the demo campus is terminal `DOOR_TERMINAL_BASE + i`, and
/// serves door `i` (docs/PROTOCOL.md section 12).
pub const DOOR_TERMINAL_BASE: u64 = 100_000;

/// Why a run could not be applied; the controller drops it and syncs again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("a run ended without a page")]
    NoPage,
    #[error("a run mixes delta and full pages")]
    MixedKinds,
    #[error("a delta page starts at version {got}, the cache is at {want}")]
    Gap { want: u64, got: u64 },
    #[error("a full list continues without its FIRST page")]
    NoFirst,
    #[error("a run carries {0:#04x}, which has no place in a sync answer")]
    Foreign(u8),
    #[error("a run continuing a full list carries schedules or holidays")]
    CalendarInContinuation,
}

/// What the controller does after a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// Send DOOR_CACHE_ACK with this version: the cache switched to it.
    pub ack: Option<u64>,
    /// Send another DOOR_CACHE_SYNC (`DoorCache::next_sync`).
    pub again: bool,
}

/// A full list being read over several runs, beside the cache in use.
#[derive(Clone, Debug)]
struct Listing {
    /// The FIRST page's `to_version`: the version the switch takes.
    version: u64,
    entries: Option<BTreeSet<DoorCacheEntry>>,
    count: u64,
    /// The last entry received: the cursor of the next sync.
    after: Option<DoorCacheEntry>,
    /// Runs it took so far: one read at one version needs no catch-up.
    runs: u32,
    /// A page came at another version than the FIRST page's: something changed while
    /// the runs were read, and a catch-up delta is needed even if each page was read whole.
    moved: bool,
}

/// One schedule as a controller holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub holiday_rule: HolidayRule,
    pub windows: Vec<DoorWindow>,
}

/// A door controller's cache, kept as section 11.3 says: a run is applied whole when its
/// last page arrives, a full list switches in when its listing ends.
#[derive(Clone, Debug)]
pub struct DoorCache {
    /// The version the cache in use is at (0: none).
    pub version: u64,
    /// The entries, when kept (`DoorCache::keeping`).
    entries: Option<BTreeSet<DoorCacheEntry>>,
    /// Entries held: the set's size when kept, else added minus removed.
    pub count: u64,
    pub schedules: BTreeMap<u32, Schedule>,
    pub holidays: BTreeSet<u32>,
    pub utc_offset_min: i16,
    pub passback: Passback,
    pub passback_min: u16,
    listing: Option<Listing>,
    /// What DOOR_CACHE_SYNC asks for: 0 for DOOR_CACHE_PAGEs, else DOOR_CACHE_BULK
    /// frames of up to this many entries.
    pub page_entries_max: u16,
}

/// One page of a run as a DOOR_CACHE_BULK: a DOOR_CACHE_PAGE is read as the bulk page
/// it stands for, since a run may hold either (an older gateway ignores
/// `page_entries_max`).
fn page_of(m: &Message) -> Option<DoorCacheBulk> {
    match m {
        Message::DoorCachePage(p) => Some(DoorCacheBulk::from(p)),
        Message::DoorCacheBulk(p) => Some(p.clone()),
        _ => None,
    }
}

impl DoorCache {
    /// A cache that counts entries but does not keep them.
    pub fn counting() -> DoorCache {
        DoorCache {
            version: 0,
            entries: None,
            count: 0,
            schedules: BTreeMap::new(),
            holidays: BTreeSet::new(),
            utc_offset_min: 0,
            passback: Passback::Off,
            passback_min: 0,
            listing: None,
            page_entries_max: 0,
        }
    }

    /// A cache that keeps every entry, as a controller that decides offline must.
    pub fn keeping() -> DoorCache {
        DoorCache {
            entries: Some(BTreeSet::new()),
            ..DoorCache::counting()
        }
    }

    /// The same cache, asking for DOOR_CACHE_BULK frames of up to `n` entries (0:
    /// DOOR_CACHE_PAGEs).
    pub fn with_page_entries(mut self, n: u16) -> DoorCache {
        self.page_entries_max = n;
        self
    }

    pub fn entries(&self) -> Option<&BTreeSet<DoorCacheEntry>> {
        self.entries.as_ref()
    }

    /// The request that continues the sync from where the cache is.
    pub fn next_sync(&self) -> DoorCacheSync {
        DoorCacheSync {
            have_version: self.version,
            after: self.listing.as_ref().and_then(|l| l.after),
            page_entries_max: self.page_entries_max,
        }
    }

    /// Forgets a full list half read (its runs are of no use once the sync restarts
    /// from the version held, on a new connection).
    pub fn abandon_listing(&mut self) {
        self.listing = None;
    }

    /// Applies one run (the frames answering one DOOR_CACHE_SYNC, in order, the last a
    /// page with `LAST_IN_RUN`). On error nothing changed but a full listing in progress
    /// is dropped, and the controller syncs again from `version`.
    pub fn apply_run(&mut self, frames: &[Message]) -> Result<RunOutcome, CacheError> {
        let r = self.try_apply_run(frames);
        if r.is_err() {
            self.listing = None;
        }
        r
    }

    fn try_apply_run(&mut self, frames: &[Message]) -> Result<RunOutcome, CacheError> {
        let continuation = self.listing.as_ref().is_some_and(|l| l.after.is_some());
        let mut schedules: Vec<(u32, Schedule, bool)> = Vec::new();
        let mut holidays: Option<(BTreeSet<u32>, i16)> = None;
        let mut pages: Vec<DoorCacheBulk> = Vec::new();
        for m in frames {
            match m {
                Message::DoorSchedule(s) => {
                    if continuation {
                        return Err(CacheError::CalendarInContinuation);
                    }
                    let first = s.flags & DOOR_SCHEDULE_FIRST != 0;
                    match schedules.last_mut() {
                        Some((id, held, _)) if *id == s.schedule && !first => held.windows.extend(s.windows()),
                        _ => schedules.push((
                            s.schedule,
                            Schedule {
                                holiday_rule: s.holiday_rule,
                                windows: s.windows().to_vec(),
                            },
                            first,
                        )),
                    }
                }
                Message::DoorHolidays(h) => {
                    if continuation {
                        return Err(CacheError::CalendarInContinuation);
                    }
                    match (&mut holidays, h.flags & DOOR_HOLIDAYS_FIRST != 0) {
                        (Some((days, offset)), false) => {
                            days.extend(h.days());
                            *offset = h.utc_offset_min;
                        }
                        _ => holidays = Some((h.days().iter().copied().collect(), h.utc_offset_min)),
                    }
                }
                other => pages.push(page_of(other).ok_or(CacheError::Foreign(other.msg_type()))?),
            }
        }
        let last = pages.last().ok_or(CacheError::NoPage)?;
        let (last_kind, last_more, last_in_run) =
            (last.kind, last.has(DOOR_PAGE_MORE), last.has(DOOR_PAGE_LAST_IN_RUN));
        let (passback, passback_min) = (last.passback, last.passback_min);
        if pages.iter().any(|p| p.kind != last_kind) {
            return Err(CacheError::MixedKinds);
        }
        let mut outcome = RunOutcome {
            ack: None,
            again: last_more,
        };
        match last_kind {
            DoorCachePageKind::Delta => {
                // Check the chain first, so that a gap changes nothing.
                let mut at = self.version;
                for p in &pages {
                    if p.from_version != at {
                        return Err(CacheError::Gap {
                            want: at,
                            got: p.from_version,
                        });
                    }
                    at = p.to_version;
                }
                for p in &pages {
                    self.apply_delta(p);
                }
                self.version = at;
                self.listing = None;
                outcome.ack = Some(at);
            }
            DoorCachePageKind::Full => {
                let mut listing = match (self.listing.take(), pages[0].has(DOOR_PAGE_FIRST)) {
                    (_, true) => Listing {
                        version: pages[0].to_version,
                        entries: self.entries.as_ref().map(|_| BTreeSet::new()),
                        count: 0,
                        after: None,
                        runs: 0,
                        moved: false,
                    },
                    (Some(l), false) => l,
                    (None, false) => return Err(CacheError::NoFirst),
                };
                for (i, p) in pages.iter().enumerate() {
                    if p.has(DOOR_PAGE_FIRST) && i > 0 {
                        // A listing restarted within the run: start over from it.
                        listing = Listing {
                            version: p.to_version,
                            entries: listing.entries.map(|_| BTreeSet::new()),
                            count: 0,
                            after: None,
                            runs: 0,
                            moved: false,
                        };
                    }
                    listing.moved |= p.to_version != listing.version;
                    for e in p.added_entries() {
                        match &mut listing.entries {
                            Some(set) => {
                                set.insert(e);
                                listing.count = set.len() as u64;
                            }
                            None => listing.count += 1,
                        }
                        listing.after = Some(e);
                    }
                }
                listing.runs += 1;
                if last_more {
                    self.listing = Some(listing);
                } else {
                    // The listing is whole: switch, then catch up from its version if later
                    // runs were read at later versions (docs/PROTOCOL.md 11.3).
                    self.version = listing.version;
                    self.entries = listing.entries;
                    self.count = listing.count;
                    self.listing = None;
                    outcome.ack = Some(self.version);
                    outcome.again = listing.runs > 1 && listing.moved;
                }
            }
        }
        for (id, s, first) in schedules {
            match self.schedules.get_mut(&id) {
                Some(held) if !first => held.windows.extend(s.windows),
                _ => {
                    self.schedules.insert(id, s);
                }
            }
        }
        if let Some((days, offset)) = holidays {
            self.holidays = days;
            self.utc_offset_min = offset;
        }
        self.passback = passback;
        self.passback_min = passback_min;
        debug_assert!(last_in_run);
        Ok(outcome)
    }

    /// What a controller decides offline for `card` passing one of its doors in
    /// `direction` at `now_ms` (its own clock), from the cache alone: docs/PROTOCOL.md
    /// section 11.4, anti-passback (11.6) from `passages`. Needs a keeping cache: a
    /// counting one knows no card and refuses every one `no_permission`.
    pub fn decide(&self, card: CardNo, direction: Direction, now_ms: i64, passages: &Passages) -> AccessReason {
        let Some(set) = &self.entries else {
            return AccessReason::NoPermission;
        };
        let lo = DoorCacheEntry {
            card,
            schedule: 0,
            valid_from_min: 0,
            valid_to_min: 0,
        };
        let hi = DoorCacheEntry {
            card,
            schedule: u32::MAX,
            valid_from_min: u32::MAX,
            valid_to_min: u32::MAX,
        };
        let entries: Vec<&DoorCacheEntry> = set.range(lo..=hi).collect();
        if entries.is_empty() {
            return AccessReason::NoPermission;
        }
        let now_min = now_ms.div_euclid(60_000);
        let valid: Vec<&&DoorCacheEntry> = entries
            .iter()
            .filter(|e| i64::from(e.valid_from_min) <= now_min && now_min < i64::from(e.valid_to_min))
            .collect();
        if valid.is_empty() {
            return if entries.iter().any(|e| i64::from(e.valid_from_min) > now_min) {
                AccessReason::NotYetValid
            } else {
                AccessReason::PermissionExpired
            };
        }
        let local = now_min + i64::from(self.utc_offset_min);
        let (today, m) = (local.div_euclid(1440), local.rem_euclid(1440) as u16);
        let covered = valid.iter().any(|e| {
            e.schedule == DOOR_SCHEDULE_ALWAYS
                || self
                    .schedules
                    .get(&e.schedule)
                    .is_some_and(|s| self.covers(s, today, m, false))
        });
        if !covered {
            let holiday = self.holidays.contains(&day_u32(today))
                && valid.iter().any(|e| {
                    self.schedules.get(&e.schedule).is_some_and(|s| {
                        s.holiday_rule == HolidayRule::HolidayWindows && self.covers(s, today, m, true)
                    })
                });
            return if holiday {
                AccessReason::Holiday
            } else {
                AccessReason::OutsideWindow
            };
        }
        if passages.refuses(card, direction, now_ms, self.passback, self.passback_min) {
            return AccessReason::AntiPassback;
        }
        AccessReason::Granted
    }

    /// Whether schedule `s` lets a card through at minute `m` of local day `today`: a
    /// window of today that has begun, or one of yesterday that crosses midnight and has
    /// not ended. `today_ordinary` treats today as no holiday (to tell `holiday` from
    /// `outside_window`).
    fn covers(&self, s: &Schedule, today: i64, m: u16, today_ordinary: bool) -> bool {
        let today_windows = self.windows_of(s, today, today_ordinary);
        let yesterday_windows = self.windows_of(s, today - 1, false);
        today_windows.iter().any(|w| {
            if w.end_min > w.start_min {
                w.start_min <= m && m < w.end_min
            } else {
                m >= w.start_min
            }
        }) || yesterday_windows
            .iter()
            .any(|w| w.end_min <= w.start_min && m < w.end_min)
    }

    /// The windows of a local day: the holiday windows on a holiday under a schedule
    /// with holiday windows, else the weekday's.
    fn windows_of(&self, s: &Schedule, day: i64, ordinary: bool) -> Vec<DoorWindow> {
        let holiday =
            !ordinary && s.holiday_rule == HolidayRule::HolidayWindows && self.holidays.contains(&day_u32(day));
        // 1970-01-01 was a Thursday: weekday 3 with Monday 0.
        let want = if holiday {
            DOOR_WINDOW_HOLIDAY
        } else {
            (day + 3).rem_euclid(7) as u8
        };
        s.windows.iter().filter(|w| w.day == want).copied().collect()
    }

    fn apply_delta(&mut self, p: &DoorCacheBulk) {
        match &mut self.entries {
            Some(set) => {
                set.extend(p.added_entries());
                for e in p.removed_entries() {
                    set.remove(&e);
                }
                self.count = set.len() as u64;
            }
            None => {
                self.count = (self.count + u64::from(p.added())).saturating_sub(u64::from(p.removed()));
            }
        }
    }
}

fn day_u32(day: i64) -> u32 {
    u32::try_from(day).unwrap_or(0)
}

/// The passages a controller saw, per card, for anti-passback offline (section 11.6):
/// the direction and time of the last one it let through.
#[derive(Clone, Debug, Default)]
pub struct Passages(BTreeMap<CardNo, (Direction, i64)>);

impl Passages {
    /// Notes a passage the controller let through (online or offline).
    pub fn record(&mut self, card: CardNo, direction: Direction, at_ms: i64) {
        self.0.insert(card, (direction, at_ms));
    }

    /// Whether the rule refuses `card` passing `direction` now: its last passage here
    /// went the same way (and, timed, less than `minutes` ago). A card with no record
    /// passes: the controller cannot see the group's other doors.
    pub fn refuses(&self, card: CardNo, direction: Direction, now_ms: i64, rule: Passback, minutes: u16) -> bool {
        let Some((last, at)) = self.0.get(&card) else {
            return false;
        };
        match rule {
            Passback::Off => false,
            Passback::Strict => *last == direction,
            Passback::Timed => *last == direction && now_ms - at < i64::from(minutes) * 60_000,
        }
    }
}

/// The door fleet's part of the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DoorReport {
    /// Controllers asked for, and those that signed on and synced their cache.
    pub controllers: u64,
    pub ready: u64,
    /// The first controller's number (terminal id 100,000 + it).
    pub first_controller: u64,
    /// "closed" or "open" (at `target_rate_per_s` across the controllers).
    pub mode: &'static str,
    pub target_rate_per_s: Option<f64>,
    /// ACCESS_CHECKs due inside the measured window and answered.
    pub checks: u64,
    pub throughput_per_s: f64,
    /// From when each check was due (open loop) or sent (closed loop) to its answer.
    pub latency_ms: Percentiles,
    /// Answers in the measured window by reason ("granted", "no_permission", ...).
    pub by_reason: BTreeMap<String, u64>,
    /// Checks answered during ramp-up (not in the figures above).
    pub warmup_checks: u64,
    /// Connect + sign-on, per controller.
    pub sign_on_ms: Percentiles,
    /// The first sync after sign-on (a full list), per controller.
    pub initial_sync_ms: Percentiles,
    /// Entries and cache versions held at the end, lowest and highest over the fleet.
    pub entries_min: u64,
    pub entries_max: u64,
    pub version_min: u64,
    pub version_max: u64,
    /// DOOR_CACHE_PUSHes received, sync runs applied, pages read.
    pub pushes: u64,
    pub runs: u64,
    pub pages: u64,
    pub cache_change: CacheChangeReport,
    /// Controllers that went offline, decided from their cache and uploaded.
    pub offline: DoorOfflineReport,
    /// Answers the run did not expect, by why.
    pub failures: BTreeMap<String, u64>,
    pub connection_errors: BTreeMap<String, u64>,
    /// Frames that answered no request and are not door cache pushes, by type.
    pub unsolicited: BTreeMap<String, u64>,
    pub unanswered: u64,
}

/// How long the controllers took to hold a new cache version after an operator changed
/// something (`--door-revoke-after`, else the first `--lost-cards` report).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CacheChangeReport {
    /// "not requested", "done", "not run: ...", "failed: ...".
    pub status: String,
    /// What changed: "revoke permission N" or "card reported lost".
    pub trigger: String,
    /// Seconds into the measured window when the change was sent.
    pub at_s: f64,
    /// How long the operator API took to acknowledge it.
    pub api_ms: f64,
    /// Controllers that synced and acknowledged a newer version after it, and how long
    /// after the change was sent each acknowledged (the max is the time until the last).
    pub controllers_acked: u64,
    pub ack_ms: Percentiles,
    /// Controllers that heard of a newer version after the change but did not hold it
    /// when the run ended (the window closed during their sync, or it failed).
    pub controllers_behind: u64,
}

/// Door controllers that lost the gateway once (`--door-offline-pct`): what they decided
/// from their cache, and what became of the uploads (docs/PROTOCOL.md 11.5).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DoorOfflineReport {
    /// Percent of controllers asked to go offline once, and events each was to decide.
    pub pct: u8,
    pub events_each: u32,
    /// Controllers that went offline (and tried to come back).
    pub controllers: u64,
    /// Controllers meant to go offline that did not: the run was stopped first.
    pub not_reached: u64,
    /// Events decided offline, by reason.
    pub events: u64,
    pub by_reason: BTreeMap<String, u64>,
    /// DOOR_EVENTS_RESULT counts over the first upload of every batch.
    pub stored: u64,
    pub duplicates: u64,
    pub flagged: u64,
    /// The first batch of every controller sent once more after it was accepted: every
    /// event must come back a duplicate, none stored twice.
    pub resent: u64,
    pub resent_duplicates: u64,
    pub resent_stored: u64,
    /// Batches by how each attempt ended.
    pub accepted: u64,
    pub system_error: u64,
    pub cut_off: u64,
    pub bad_mac: u64,
    pub bad_batch: u64,
    /// Accepted batches whose counts do not cover the batch.
    pub mismatched: u64,
    /// Events given up on (their batch never accepted).
    pub not_uploaded: u64,
}

impl DoorOfflineReport {
    pub fn merge(&mut self, o: &DoorOfflineReport) {
        self.controllers += o.controllers;
        self.not_reached += o.not_reached;
        self.events += o.events;
        for (k, v) in &o.by_reason {
            *self.by_reason.entry(k.clone()).or_default() += v;
        }
        self.stored += o.stored;
        self.duplicates += o.duplicates;
        self.flagged += o.flagged;
        self.resent += o.resent;
        self.resent_duplicates += o.resent_duplicates;
        self.resent_stored += o.resent_stored;
        self.accepted += o.accepted;
        self.system_error += o.system_error;
        self.cut_off += o.cut_off;
        self.bad_mac += o.bad_mac;
        self.bad_batch += o.bad_batch;
        self.mismatched += o.mismatched;
        self.not_uploaded += o.not_uploaded;
    }

    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.not_uploaded > 0 {
            out.push(format!("{} offline door events not uploaded", self.not_uploaded));
        }
        if self.bad_mac + self.bad_batch > 0 {
            out.push(format!(
                "offline door event batches refused: {} bad_mac, {} bad_batch",
                self.bad_mac, self.bad_batch
            ));
        }
        if self.mismatched > 0 {
            out.push(format!(
                "{} accepted door event batches whose result does not cover the batch",
                self.mismatched
            ));
        }
        if self.resent_stored > 0 || self.resent_duplicates != self.resent {
            out.push(format!(
                "door events uploaded twice: {} of {} stored again, {} came back duplicates",
                self.resent_stored, self.resent, self.resent_duplicates
            ));
        }
        if self.stored + self.duplicates + self.not_uploaded != self.events {
            out.push(format!(
                "{} offline door events decided, {} stored and {} duplicates on their first upload",
                self.events, self.stored, self.duplicates
            ));
        }
        out
    }
}

impl DoorReport {
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.offline.problems();
        if self.ready < self.controllers {
            out.push(format!(
                "{} of {} door controllers did not sign on and sync",
                self.controllers - self.ready,
                self.controllers
            ));
        }
        for (k, v) in &self.failures {
            out.push(format!("{v} unexpected door answers: {k}"));
        }
        for (k, v) in &self.connection_errors {
            out.push(format!("{v} door connection errors: {k}"));
        }
        if self.unanswered > 0 {
            out.push(format!("{} door requests unanswered", self.unanswered));
        }
        if self.cache_change.status.starts_with("failed") {
            out.push(format!("door cache change {}", self.cache_change.status));
        }
        out
    }
}

/// Whether an answer to an ACCESS_CHECK is one the run expects: any decision about the
/// card, but not a system error and not one that says the demo campus is not what the
/// run was told (a door unknown, disabled or of another group).
pub fn unexpected_reason(reason: cardgate_codec::AccessReason) -> bool {
    use cardgate_codec::AccessReason::*;
    matches!(reason, SystemError | UnknownDoor | DoorDisabled | WrongGroup)
}

#[cfg(test)]
mod tests {
    use cardgate_codec::{DOOR_SCHEDULE_WINDOWS_MAX, DoorCachePage, DoorHolidays, DoorSchedule};

    use super::*;

    fn e(card: u64) -> DoorCacheEntry {
        DoorCacheEntry {
            card: CardNo(card),
            schedule: 0,
            valid_from_min: 0,
            valid_to_min: u32::MAX,
        }
    }

    fn page(kind: DoorCachePageKind, flags: u8, from: u64, to: u64, add: &[u64], remove: &[u64]) -> Message {
        let add: Vec<_> = add.iter().map(|c| e(*c)).collect();
        let remove: Vec<_> = remove.iter().map(|c| e(*c)).collect();
        Message::DoorCachePage(DoorCachePage::new(kind, flags, from, to, &add, &remove).expect("fits"))
    }

    fn full(flags: u8, to: u64, add: &[u64]) -> Message {
        page(DoorCachePageKind::Full, flags, 0, to, add, &[])
    }

    fn delta(flags: u8, from: u64, to: u64, add: &[u64], remove: &[u64]) -> Message {
        page(DoorCachePageKind::Delta, flags, from, to, add, remove)
    }

    const LAST: u8 = DOOR_PAGE_LAST_IN_RUN;

    fn held(c: &DoorCache) -> Vec<u64> {
        c.entries().expect("kept").iter().map(|e| e.card.0).collect()
    }

    fn calendar() -> Vec<Message> {
        let mut windows = [DoorWindow::default(); DOOR_SCHEDULE_WINDOWS_MAX];
        windows[0] = DoorWindow {
            day: 0,
            start_min: 420,
            end_min: 1320,
        };
        let mut days = [0; 16];
        days[0] = 20_574;
        vec![
            Message::DoorSchedule(DoorSchedule {
                schedule: 1,
                flags: DOOR_SCHEDULE_FIRST,
                holiday_rule: HolidayRule::HolidayWindows,
                count: 1,
                windows,
            }),
            Message::DoorHolidays(DoorHolidays {
                flags: DOOR_HOLIDAYS_FIRST,
                count: 1,
                utc_offset_min: 480,
                days,
            }),
        ]
    }

    /// `m` as a DOOR_CACHE_BULK with the same fields and entries.
    fn bulk(m: Message) -> Message {
        match m {
            Message::DoorCachePage(p) => Message::DoorCacheBulk(DoorCacheBulk::from(&p)),
            m => m,
        }
    }

    #[test]
    fn bulk_pages_apply_as_the_pages_they_stand_for() {
        // A full list over two runs, then a delta; once in pages, once in bulk frames,
        // once mixed (an older gateway ignores `page_entries_max`).
        let runs = vec![
            {
                let mut run = calendar();
                run.push(full(DOOR_PAGE_FIRST, 7, &[1, 2, 3, 4]));
                run.push(full(LAST | DOOR_PAGE_MORE, 7, &[5, 6]));
                run
            },
            vec![full(LAST, 9, &[7])],
            vec![
                delta(0, 7, 10, &[8], &[1]),
                match page(DoorCachePageKind::Delta, LAST, 10, 11, &[], &[2]) {
                    Message::DoorCachePage(p) => Message::DoorCachePage(p.with_passback(Passback::Timed, 30)),
                    _ => unreachable!("page() makes pages"),
                },
            ],
        ];
        let apply = |convert: &dyn Fn(usize, Message) -> Message| {
            let mut c = DoorCache::keeping().with_page_entries(512);
            let mut outcomes = Vec::new();
            for run in &runs {
                let run: Vec<Message> = run.iter().cloned().enumerate().map(|(i, m)| convert(i, m)).collect();
                outcomes.push(c.apply_run(&run).unwrap());
            }
            (outcomes, held(&c), c.version, c.passback, c.passback_min, c.next_sync())
        };
        let pages = apply(&|_, m| m);
        assert_eq!(pages.1, [3, 4, 5, 6, 7, 8]);
        assert_eq!((pages.2, pages.3, pages.4), (11, Passback::Timed, 30));
        assert_eq!(pages.5.page_entries_max, 512);
        assert_eq!(apply(&|_, m| bulk(m)), pages);
        assert_eq!(apply(&|i, m| if i % 2 == 0 { bulk(m) } else { m }), pages);
    }

    #[test]
    fn a_full_list_read_at_one_version_over_two_runs_needs_no_catch_up() {
        let mut c = DoorCache::keeping();
        let mut run = calendar();
        run.push(full(DOOR_PAGE_FIRST, 7, &[1, 2]));
        run.push(full(LAST | DOOR_PAGE_MORE, 7, &[3]));
        assert_eq!(c.apply_run(&run).unwrap(), RunOutcome { ack: None, again: true });
        let out = c.apply_run(&[full(LAST, 7, &[4])]).unwrap();
        assert_eq!(
            out,
            RunOutcome {
                ack: Some(7),
                again: false
            }
        );
        assert_eq!(held(&c), [1, 2, 3, 4]);
    }

    #[test]
    fn a_full_list_over_two_runs_switches_in_at_its_first_version_then_catches_up() {
        let mut c = DoorCache::keeping();
        assert_eq!(c.next_sync().have_version, 0);
        let mut run = calendar();
        run.push(full(DOOR_PAGE_FIRST, 7, &[1, 2, 3, 4]));
        run.push(full(LAST | DOOR_PAGE_MORE, 7, &[5, 6]));
        let out = c.apply_run(&run).unwrap();
        assert_eq!(out, RunOutcome { ack: None, again: true });
        // Still nothing in use; the next sync continues after the last entry read.
        assert_eq!(c.version, 0);
        assert_eq!(c.count, 0);
        assert_eq!(
            c.next_sync(),
            DoorCacheSync {
                have_version: 0,
                after: Some(e(6)),
                page_entries_max: 0,
            }
        );
        assert_eq!(c.schedules.len(), 1);
        assert_eq!(c.utc_offset_min, 480);
        // The second run is read at a later version; the switch takes the first's.
        let out = c.apply_run(&[full(LAST, 9, &[7])]).unwrap();
        assert_eq!(
            out,
            RunOutcome {
                ack: Some(7),
                again: true
            }
        );
        assert_eq!(held(&c), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(
            c.next_sync(),
            DoorCacheSync {
                have_version: 7,
                after: None,
                page_entries_max: 0,
            }
        );
        // The delta from 7 brings what changed meanwhile; 7 again is kept once.
        let out = c.apply_run(&[delta(LAST, 7, 9, &[7, 8], &[2])]).unwrap();
        assert_eq!(
            out,
            RunOutcome {
                ack: Some(9),
                again: false
            }
        );
        assert_eq!(held(&c), [1, 3, 4, 5, 6, 7, 8]);
        assert_eq!(c.count, 7);
    }

    #[test]
    fn a_revocation_arrives_as_a_delta_that_removes() {
        let mut c = DoorCache::keeping();
        // A listing in one run needs no catch-up.
        let out = c.apply_run(&[full(DOOR_PAGE_FIRST | LAST, 3, &[1, 2, 3])]).unwrap();
        assert_eq!(
            out,
            RunOutcome {
                ack: Some(3),
                again: false
            }
        );
        let out = c.apply_run(&[delta(LAST, 3, 4, &[], &[2])]).unwrap();
        assert_eq!(out.ack, Some(4));
        assert_eq!(held(&c), [1, 3]);
        // A controller that is current gets one empty page at its own version.
        let out = c.apply_run(&[delta(LAST, 4, 4, &[], &[])]).unwrap();
        assert_eq!(
            out,
            RunOutcome {
                ack: Some(4),
                again: false
            }
        );
    }

    #[test]
    fn a_gap_or_a_broken_run_changes_nothing() {
        let mut c = DoorCache::keeping();
        c.apply_run(&[full(DOOR_PAGE_FIRST | LAST, 3, &[1, 2])]).unwrap();
        let before = held(&c);
        let run = [delta(0, 3, 4, &[9], &[]), delta(LAST, 5, 6, &[], &[1])];
        assert_eq!(c.apply_run(&run), Err(CacheError::Gap { want: 4, got: 5 }));
        assert_eq!((c.version, held(&c)), (3, before.clone()));
        assert_eq!(
            c.apply_run(&[delta(0, 3, 4, &[9], &[]), full(LAST, 4, &[1])]),
            Err(CacheError::MixedKinds)
        );
        assert_eq!(c.apply_run(&calendar()), Err(CacheError::NoPage));
        assert_eq!(c.apply_run(&[full(LAST, 4, &[1])]), Err(CacheError::NoFirst));
        assert_eq!(
            c.apply_run(&[Message::DoorCacheAck(cardgate_codec::DoorCacheAck { version: 1 })]),
            Err(CacheError::Foreign(0x48))
        );
        assert_eq!((c.version, held(&c)), (3, before));
    }

    #[test]
    fn a_continuation_of_a_full_list_carries_no_calendar() {
        let mut c = DoorCache::counting();
        c.apply_run(&[full(DOOR_PAGE_FIRST | LAST | DOOR_PAGE_MORE, 5, &[1, 2])])
            .unwrap();
        let mut run = calendar();
        run.push(full(LAST, 5, &[3]));
        assert_eq!(c.apply_run(&run), Err(CacheError::CalendarInContinuation));
        // The listing is dropped: the controller starts over from what it holds.
        assert_eq!(
            c.next_sync(),
            DoorCacheSync {
                have_version: 0,
                after: None,
                page_entries_max: 0,
            }
        );
    }

    #[test]
    fn a_counting_cache_follows_the_counts_and_the_group_rule() {
        let mut c = DoorCache::counting();
        let mut p = DoorCachePage::new(
            DoorCachePageKind::Full,
            DOOR_PAGE_FIRST | LAST,
            0,
            2,
            &[e(1), e(2)],
            &[],
        )
        .expect("fits");
        p = p.with_passback(Passback::Timed, 30);
        c.apply_run(&[Message::DoorCachePage(p)]).unwrap();
        assert_eq!((c.count, c.passback, c.passback_min), (2, Passback::Timed, 30));
        assert!(c.entries().is_none());
        c.apply_run(&[delta(LAST, 2, 3, &[5], &[1])]).unwrap();
        assert_eq!((c.version, c.count), (3, 2));
        assert_eq!(c.passback, Passback::Off);
    }

    #[test]
    fn schedules_longer_than_a_frame_accumulate() {
        let mut c = DoorCache::counting();
        let mut run = calendar();
        let Message::DoorSchedule(mut more) = run[0] else {
            unreachable!()
        };
        more.flags = 0;
        more.windows[0].day = 1;
        run.insert(1, Message::DoorSchedule(more));
        run.push(full(DOOR_PAGE_FIRST | LAST, 1, &[]));
        c.apply_run(&run).unwrap();
        assert_eq!(c.schedules[&1].windows.len(), 2);
        // The next run's FIRST frame replaces it.
        let mut again = calendar();
        again.push(delta(LAST, 1, 1, &[], &[]));
        c.apply_run(&again).unwrap();
        assert_eq!(c.schedules[&1].windows.len(), 1);
    }

    /// Unix ms of a local (UTC+8) date and time.
    fn local_ms(y: i32, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        // Days from 1970-01-01 to the date (a proleptic Gregorian count).
        let (y, mo) = if mo <= 2 { (y - 1, mo + 12) } else { (y, mo) };
        let days = 365 * i64::from(y) + i64::from(y / 4) - i64::from(y / 100)
            + i64::from(y / 400)
            + (153 * (i64::from(mo) - 3) + 2) / 5
            + i64::from(d)
            - 719_469;
        ((days * 1440) + h * 60 + mi - 480) * 60_000
    }

    /// A controller's cache as section 13.6 has it, plus a night guard's schedule 2
    /// (every day 22:00-06:00) and card 4 on it.
    fn campus() -> DoorCache {
        let mut c = DoorCache::keeping();
        let mut run = calendar();
        // Schedule 1: Monday to Friday 07:00-22:00, holidays 08:00-12:00.
        let Message::DoorSchedule(mut s1) = run[0] else {
            unreachable!()
        };
        s1.count = 6;
        for (i, day) in (0..5).enumerate() {
            s1.windows[i] = DoorWindow {
                day,
                start_min: 420,
                end_min: 1320,
            };
        }
        s1.windows[5] = DoorWindow {
            day: 7,
            start_min: 480,
            end_min: 720,
        };
        run[0] = Message::DoorSchedule(s1);
        let mut s2 = s1;
        s2.schedule = 2;
        s2.holiday_rule = HolidayRule::Ignore;
        s2.count = 7;
        for day in 0..7 {
            s2.windows[usize::from(day)] = DoorWindow {
                day,
                start_min: 1320,
                end_min: 360,
            };
        }
        run.insert(1, Message::DoorSchedule(s2));
        let entries = [
            DoorCacheEntry {
                card: CardNo(1),
                schedule: 1,
                valid_from_min: 0,
                valid_to_min: u32::MAX,
            },
            // 2026-03-01 .. 2026-06-30 inclusive, local.
            DoorCacheEntry {
                card: CardNo(2),
                schedule: 1,
                valid_from_min: 29_538_240,
                valid_to_min: 29_713_920,
            },
            DoorCacheEntry {
                card: CardNo(3),
                schedule: 0,
                valid_from_min: 0,
                valid_to_min: u32::MAX,
            },
            DoorCacheEntry {
                card: CardNo(4),
                schedule: 2,
                valid_from_min: 0,
                valid_to_min: u32::MAX,
            },
        ];
        let page =
            DoorCachePage::new(DoorCachePageKind::Full, DOOR_PAGE_FIRST | LAST, 0, 3, &entries, &[]).expect("fits");
        run.push(Message::DoorCachePage(page));
        c.apply_run(&run).unwrap();
        c
    }

    #[test]
    fn offline_decisions_follow_windows_validity_and_holidays() {
        use AccessReason::*;
        let c = campus();
        let p = Passages::default();
        let at = |card: u64, ms: i64| c.decide(CardNo(card), Direction::In, ms, &p);
        // Monday 2026-03-02.
        assert_eq!(at(1, local_ms(2026, 3, 2, 7, 0)), Granted);
        assert_eq!(at(1, local_ms(2026, 3, 2, 6, 59)), OutsideWindow);
        assert_eq!(at(1, local_ms(2026, 3, 2, 21, 59)), Granted);
        assert_eq!(at(1, local_ms(2026, 3, 2, 22, 0)), OutsideWindow);
        // Saturday: no window.
        assert_eq!(at(1, local_ms(2026, 3, 7, 10, 0)), OutsideWindow);
        // Friday 2026-05-01 is a holiday: only 08:00-12:00.
        assert_eq!(at(1, local_ms(2026, 5, 1, 9, 0)), Granted);
        assert_eq!(at(1, local_ms(2026, 5, 1, 14, 0)), Holiday);
        assert_eq!(at(1, local_ms(2026, 5, 1, 7, 30)), Holiday);
        assert_eq!(at(1, local_ms(2026, 5, 1, 23, 0)), OutsideWindow);
        // The to-date's last minute, and the first after it; the day before the start.
        assert_eq!(at(2, local_ms(2026, 6, 30, 21, 59)), Granted);
        assert_eq!(at(2, local_ms(2026, 7, 1, 0, 0)), PermissionExpired);
        assert_eq!(at(2, local_ms(2026, 2, 28, 12, 0)), NotYetValid);
        // At all times, holidays included.
        assert_eq!(at(3, local_ms(2026, 5, 1, 3, 0)), Granted);
        // Across midnight: 23:59 and 00:01, and the morning's end.
        assert_eq!(at(4, local_ms(2026, 3, 2, 23, 59)), Granted);
        assert_eq!(at(4, local_ms(2026, 3, 3, 0, 1)), Granted);
        assert_eq!(at(4, local_ms(2026, 3, 3, 5, 59)), Granted);
        assert_eq!(at(4, local_ms(2026, 3, 3, 6, 0)), OutsideWindow);
        assert_eq!(at(4, local_ms(2026, 3, 3, 21, 59)), OutsideWindow);
        // No entry at all.
        assert_eq!(at(9, local_ms(2026, 3, 2, 9, 0)), NoPermission);
        // A counting cache cannot decide.
        assert_eq!(
            DoorCache::counting().decide(CardNo(3), Direction::In, 0, &p),
            NoPermission
        );
    }

    #[test]
    fn anti_passback_offline_uses_the_passages_the_controller_saw() {
        let mut c = campus();
        let now = local_ms(2026, 3, 2, 9, 0);
        let mut p = Passages::default();
        c.passback = Passback::Strict;
        assert_eq!(c.decide(CardNo(3), Direction::In, now, &p), AccessReason::Granted);
        p.record(CardNo(3), Direction::In, now);
        assert_eq!(
            c.decide(CardNo(3), Direction::In, now + 1, &p),
            AccessReason::AntiPassback
        );
        assert_eq!(c.decide(CardNo(3), Direction::Out, now + 1, &p), AccessReason::Granted);
        c.passback = Passback::Timed;
        c.passback_min = 30;
        assert_eq!(
            c.decide(CardNo(3), Direction::In, now + 29 * 60_000, &p),
            AccessReason::AntiPassback
        );
        assert_eq!(
            c.decide(CardNo(3), Direction::In, now + 30 * 60_000, &p),
            AccessReason::Granted
        );
        c.passback = Passback::Off;
        assert_eq!(c.decide(CardNo(3), Direction::In, now + 1, &p), AccessReason::Granted);
    }

    #[test]
    fn only_answers_that_mean_a_broken_setup_fail_the_run() {
        use cardgate_codec::AccessReason;
        for r in AccessReason::ALL {
            let bad = matches!(
                r,
                AccessReason::SystemError
                    | AccessReason::UnknownDoor
                    | AccessReason::DoorDisabled
                    | AccessReason::WrongGroup
            );
            assert_eq!(unexpected_reason(r), bad, "{r:?}");
        }
    }
}
