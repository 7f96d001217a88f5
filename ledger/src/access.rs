//! Door access state in memory: doors, schedules, the holiday calendar, permissions
//! (indexed by door group), each door group's settings and controller cache version with
//! a bounded change log for delta sync, and, under a lock of their own, every
//! controller's event accounting and the anti-passback state.
//!
//! Two locks, in this order and never another, after the desk's and before any card's,
//! account's or the blacklist's (a sync holds `config` while it reads them; a desk change
//! that moves door caches takes it before them): `config`
//! (read by every access check, written by the door admin) → `events` (a check's
//! sequence accounting and anti-passback, held until its submission is sent so that the
//! journal holds each controller's events and each person's passages in order). Door
//! checks take neither an account's lock nor the terminal map's, so they never wait on
//! money.
//!
//! A new cache version is announced (a `watch` the sessions select on) only once the
//! change is durable, like the blacklist's.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use cardgate_domain::access::{
    AccessRecord, AnswerSubject, AntiPassback, CacheChange, CacheLine, CheckedAnswer, ControllerCheckedAnswers,
    ControllerEvents, Door, GroupAccess, Holidays, PassbackState, Permission, Schedule,
};
use cardgate_domain::rules::sequence::SeqSet;
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::watch;

/// Changes one door group's log keeps for delta sync. A group changes a few times a day
/// (a permission granted or revoked); a controller offline for weeks still gets a delta.
pub const CACHE_LOG_PER_GROUP_MAX: u64 = 4096;

/// A controller's cache, or what changed in it since the version it holds.
#[derive(Clone, Debug)]
pub struct DoorCache {
    pub group: u64,
    /// The cache version: the group's own version in the high 32 bits, the blacklist's
    /// (durable) version in the low 32, so that a card lost or found moves every
    /// group's version without an entry per group.
    pub version: u64,
    /// A full list (the controller's version was too old for a delta, or 0).
    pub full: bool,
    /// Full: the whole list, sorted. Delta: the lines that join.
    pub added: Arc<Vec<CacheLine>>,
    /// Delta: the lines that leave.
    pub removed: Vec<CacheLine>,
    pub anti_passback: AntiPassback,
    /// Every schedule the lines name, and the holiday calendar.
    pub schedules: Vec<Schedule>,
    pub holidays: Holidays,
}

/// Cache lines that joined and lines that left.
pub type LineDiff = (Vec<CacheLine>, Vec<CacheLine>);

/// The composite cache version of (group version, blacklist version).
pub fn cache_version(group_version: u64, blacklist_version: u64) -> u64 {
    (group_version << 32) | (blacklist_version & 0xFFFF_FFFF)
}

/// A controller's event accounting in memory.
#[derive(Clone, Debug, Default)]
pub(crate) struct Controller {
    pub(crate) seen: SeqSet,
    pub(crate) drift_ms: i64,
    /// The cache version it last said it holds (live state).
    pub(crate) cache_acked: u64,
    /// The answers of its online checks and punches by `event_seq` mod
    /// `RECENT_ANSWERS_MAX` (0: none; event numbers start at 1), so that a retry gets the
    /// answer recorded the first time, each with what it answered (`None`: read from a
    /// directory older than subjects). Durable as `AccessRecord::CheckedAnswers`, one
    /// record per controller: a retry after a restart gets it too. Empty until the
    /// controller's first answer.
    recent: Vec<(u64, u16, Option<AnswerSubject>)>,
}

/// What a controller's earlier use of an `event_seq` says about a check or punch sent
/// with it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Earlier {
    /// The same check or punch sent again: its answer, as recorded.
    Resent(u16),
    /// The number answered something else, or its answer is no longer held.
    Reused,
}

/// Online answers remembered per controller: more than its pipeline holds.
pub const RECENT_ANSWERS_MAX: usize = 64;

pub(crate) fn answer_slot(seq: u64) -> usize {
    (seq % RECENT_ANSWERS_MAX as u64) as usize
}

impl Controller {
    /// Remembers the answer to `seq` and what it answered, unless its slot holds a newer
    /// number, and returns the record that makes it durable.
    pub(crate) fn remember(&mut self, terminal: u64, seq: u64, answer: u16, subject: AnswerSubject) -> CheckedAnswer {
        let a = CheckedAnswer {
            terminal,
            event_seq: seq,
            answer,
            subject: Some(subject),
        };
        self.keep(&a);
        a
    }

    /// Puts a stored answer in its slot unless the slot holds a newer number.
    pub(crate) fn keep(&mut self, a: &CheckedAnswer) {
        if self.recent.is_empty() {
            self.recent = vec![(0, 0, None); RECENT_ANSWERS_MAX];
        }
        let slot = &mut self.recent[answer_slot(a.event_seq)];
        if slot.0 <= a.event_seq {
            *slot = (a.event_seq, a.answer, a.subject);
        }
    }

    /// The answers a checkpoint stored for it.
    pub(crate) fn load_answers(&mut self, a: &ControllerCheckedAnswers) {
        for &(event_seq, answer, subject) in &a.answers {
            self.keep(&CheckedAnswer {
                terminal: a.terminal,
                event_seq,
                answer,
                subject,
            });
        }
    }

    /// What the earlier use of `seq` (a number already seen) answered, for a check or
    /// punch about `subject`. An answer read from a directory older than subjects has
    /// none, and is repeated as before.
    pub(crate) fn earlier(&self, seq: u64, subject: AnswerSubject) -> Earlier {
        match self.recent.get(answer_slot(seq)) {
            Some(&(s, answer, held)) if s == seq && seq != 0 && held.is_none_or(|h| h == subject) => {
                Earlier::Resent(answer)
            }
            _ => Earlier::Reused,
        }
    }
}

impl Controller {
    pub(crate) fn record(&self, terminal: u64) -> ControllerEvents {
        ControllerEvents {
            terminal,
            last: self.seen.last,
            gaps: self.seen.gaps.clone(),
            abandoned: self.seen.abandoned,
            drift_ms: self.drift_ms,
        }
    }

    /// The accounting a checkpoint or an entry left (remembered answers are records of
    /// their own and stay as they are).
    pub(crate) fn load(&mut self, r: &ControllerEvents) {
        self.seen = SeqSet {
            last: r.last,
            gaps: r.gaps.clone(),
            abandoned: r.abandoned,
        };
        self.drift_ms = r.drift_ms;
    }
}

#[derive(Default)]
pub(crate) struct AccessConfig {
    pub(crate) doors: BTreeMap<u64, Door>,
    pub(crate) schedules: BTreeMap<u64, Schedule>,
    pub(crate) holidays: Holidays,
    pub(crate) permissions: BTreeMap<u64, Permission>,
    /// The permissions of each door group (revoked ones included: a revoked permission
    /// still names its group's cards in a delta).
    pub(crate) by_group: HashMap<u64, Vec<Permission>>,
    pub(crate) groups: HashMap<u64, GroupAccess>,
    pub(crate) log: HashMap<u64, VecDeque<CacheChange>>,
    /// Full lists built since their version, by group.
    full: HashMap<u64, (u64, Arc<Vec<CacheLine>>)>,
}

impl AccessConfig {
    pub(crate) fn group(&self, id: u64) -> GroupAccess {
        self.groups.get(&id).copied().unwrap_or(GroupAccess {
            group: id,
            anti_passback: AntiPassback::Off,
            cache_version: 0,
        })
    }

    pub(crate) fn put_door(&mut self, d: Door) {
        self.doors.insert(d.id, d);
    }

    pub(crate) fn put_permission(&mut self, p: Permission) {
        if let Some(old) = self.permissions.get(&p.id)
            && old.door_group != p.door_group
            && let Some(list) = self.by_group.get_mut(&old.door_group)
        {
            list.retain(|x| x.id != p.id);
        }
        let list = self.by_group.entry(p.door_group).or_default();
        match list.iter_mut().find(|x| x.id == p.id) {
            Some(x) => *x = p.clone(),
            None => list.push(p.clone()),
        }
        self.permissions.insert(p.id, p);
    }

    /// Moves `group`'s cache version on by one, logging the lines that joined and left
    /// (`None`: everything changed). Returns the records to send.
    pub(crate) fn bump(&mut self, group: u64, lines: Option<LineDiff>) -> (CacheChange, GroupAccess) {
        let mut g = self.group(group);
        g.cache_version += 1;
        self.groups.insert(group, g);
        let all = lines.is_none();
        let (added, removed) = lines.unwrap_or_default();
        let change = CacheChange {
            group,
            version: g.cache_version,
            added,
            removed,
            all,
        };
        self.log_change(change.clone());
        (change, g)
    }

    /// Moves on, as whole lists, every door group that a live permission matching `uses`
    /// is on: a schedule or the calendar changes what each of their lines means.
    pub(crate) fn bump_whole_lists(&mut self, uses: impl Fn(&Permission) -> bool) -> Vec<(CacheChange, GroupAccess)> {
        let groups: std::collections::BTreeSet<u64> = self
            .permissions
            .values()
            .filter(|p| !p.revoked && uses(p))
            .map(|p| p.door_group)
            .collect();
        groups.into_iter().map(|g| self.bump(g, None)).collect()
    }

    pub(crate) fn log_change(&mut self, c: CacheChange) {
        let log = self.log.entry(c.group).or_default();
        if log.back().is_none_or(|b| b.version < c.version) {
            log.push_back(c);
            while log.len() as u64 > CACHE_LOG_PER_GROUP_MAX {
                log.pop_front();
            }
        }
    }

    /// The oldest version a delta for `group` can start from.
    pub(crate) fn delta_floor(&self, group: u64) -> u64 {
        match self.log.get(&group).and_then(|l| l.front()) {
            Some(c) => c.version - 1,
            None => self.group(group).cache_version,
        }
    }

    /// The net change of `group` after `version` (lines that joined, lines that left),
    /// or `None` when one of the changes touched everything or the log no longer
    /// reaches back that far.
    pub(crate) fn changes_since(&self, group: u64, version: u64) -> Option<(BTreeSet<CacheLine>, BTreeSet<CacheLine>)> {
        if version < self.delta_floor(group) {
            return None;
        }
        let (mut added, mut removed) = (BTreeSet::new(), BTreeSet::new());
        for c in self
            .log
            .get(&group)
            .into_iter()
            .flatten()
            .filter(|c| c.version > version)
        {
            if c.all {
                return None;
            }
            for l in &c.added {
                removed.remove(l);
                added.insert(*l);
            }
            for l in &c.removed {
                added.remove(l);
                removed.insert(*l);
            }
        }
        Some((added, removed))
    }

    pub(crate) fn full_list(&self, group: u64, version: u64) -> Option<Arc<Vec<CacheLine>>> {
        self.full
            .get(&group)
            .filter(|(v, _)| *v == version)
            .map(|(_, list)| list.clone())
    }

    pub(crate) fn keep_full_list(&mut self, group: u64, version: u64, list: Arc<Vec<CacheLine>>) {
        self.full.insert(group, (version, list));
    }
}

#[derive(Default)]
pub(crate) struct EventBook {
    pub(crate) controllers: HashMap<u64, Controller>,
    /// By (account, door group).
    pub(crate) passback: HashMap<(u64, u64), PassbackState>,
}

pub(crate) struct AccessBook {
    config: RwLock<AccessConfig>,
    events: Mutex<EventBook>,
    /// Counts durable cache changes of any group; sessions compare their group's version
    /// when it moves.
    published: watch::Sender<u64>,
    next_ids: Mutex<NextIds>,
    /// `doors.clock_drift_max_ms`: a controller's clock further off is an alarm.
    pub(crate) drift_max_ms: std::sync::atomic::AtomicI64,
}

#[derive(Clone, Copy)]
pub(crate) struct NextIds {
    pub(crate) door: u64,
    pub(crate) schedule: u64,
    pub(crate) permission: u64,
}

impl AccessBook {
    /// Applies one access record to memory: the live path's setters, shared with replay.
    pub(crate) fn apply(&self, r: &AccessRecord) {
        match r {
            AccessRecord::Door(d) => self.write().put_door(d.clone()),
            AccessRecord::Schedule(s) => {
                self.write().schedules.insert(s.id, s.clone());
            }
            AccessRecord::Holidays(h) => self.write().holidays = h.clone(),
            AccessRecord::Permission(p) => self.write().put_permission(p.clone()),
            AccessRecord::Group(g) => {
                let mut c = self.write();
                let mut now = c.group(g.group);
                now.anti_passback = g.anti_passback;
                now.cache_version = now.cache_version.max(g.cache_version);
                c.groups.insert(g.group, now);
            }
            AccessRecord::Change(ch) => self.write().log_change(ch.clone()),
            AccessRecord::Controller(c) => self.events().controllers.entry(c.terminal).or_default().load(c),
            AccessRecord::Answer(a) => {
                let a = CheckedAnswer::from(*a);
                self.events().controllers.entry(a.terminal).or_default().keep(&a);
            }
            AccessRecord::CheckedAnswer(a) => self.events().controllers.entry(a.terminal).or_default().keep(a),
            AccessRecord::Answers(a) => {
                let a = ControllerCheckedAnswers::from(a.clone());
                self.events()
                    .controllers
                    .entry(a.terminal)
                    .or_default()
                    .load_answers(&a);
            }
            AccessRecord::CheckedAnswers(a) => self.events().controllers.entry(a.terminal).or_default().load_answers(a),
            AccessRecord::Passback(p) => {
                self.events().passback.insert((p.account, p.group), *p);
            }
        }
        self.refresh_ids();
    }

    pub(crate) fn new(records: Vec<AccessRecord>) -> AccessBook {
        let mut config = AccessConfig::default();
        let mut events = EventBook::default();
        let mut changes = Vec::new();
        for r in records {
            match r {
                AccessRecord::Door(d) => config.put_door(d),
                AccessRecord::Schedule(s) => {
                    config.schedules.insert(s.id, s);
                }
                AccessRecord::Holidays(h) => config.holidays = h,
                AccessRecord::Permission(p) => config.put_permission(p),
                AccessRecord::Group(g) => {
                    config.groups.insert(g.group, g);
                }
                AccessRecord::Change(c) => changes.push(c),
                AccessRecord::Controller(c) => events.controllers.entry(c.terminal).or_default().load(&c),
                AccessRecord::Passback(p) => {
                    events.passback.insert((p.account, p.group), p);
                }
                AccessRecord::Answer(a) => {
                    let a = CheckedAnswer::from(a);
                    events.controllers.entry(a.terminal).or_default().keep(&a);
                }
                AccessRecord::CheckedAnswer(a) => events.controllers.entry(a.terminal).or_default().keep(&a),
                AccessRecord::Answers(a) => {
                    let a = ControllerCheckedAnswers::from(a);
                    events.controllers.entry(a.terminal).or_default().load_answers(&a);
                }
                AccessRecord::CheckedAnswers(a) => events.controllers.entry(a.terminal).or_default().load_answers(&a),
            }
        }
        changes.sort_by_key(|c| (c.group, c.version));
        for c in changes {
            config.log_change(c);
        }
        let book = AccessBook {
            config: RwLock::new(config),
            events: Mutex::new(events),
            published: watch::Sender::new(0),
            next_ids: Mutex::new(NextIds {
                door: 1,
                schedule: 1,
                permission: 1,
            }),
            drift_max_ms: std::sync::atomic::AtomicI64::new(60_000),
        };
        book.refresh_ids();
        book
    }

    /// Ids handed out later stay above every record (after load and after replay).
    pub(crate) fn refresh_ids(&self) {
        let c = self.config.read();
        let mut ids = self.next_ids.lock();
        ids.door = ids.door.max(c.doors.keys().next_back().map_or(1, |k| k + 1));
        ids.schedule = ids.schedule.max(c.schedules.keys().next_back().map_or(1, |k| k + 1));
        ids.permission = ids
            .permission
            .max(c.permissions.keys().next_back().map_or(1, |k| k + 1));
    }

    pub(crate) fn next_ids(&self) -> MutexGuard<'_, NextIds> {
        self.next_ids.lock()
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, AccessConfig> {
        self.config.read()
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, AccessConfig> {
        self.config.write()
    }

    pub(crate) fn events(&self) -> MutexGuard<'_, EventBook> {
        self.events.lock()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Announces durable cache changes to the sessions.
    pub(crate) fn publish(&self) {
        self.published.send_modify(|v| *v += 1);
    }
}
