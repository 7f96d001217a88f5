//! Door access state in memory: doors, schedules, the holiday calendar, permissions
//! (indexed by door group), each door group's settings and controller cache version with
//! a bounded change log for delta sync, and, under a lock of their own, every
//! controller's event accounting and the anti-passback state.
//!
//! Two locks, in this order and never another, after the desk's and a card's: `config`
//! (read by every access check, written by the door admin) → `events` (a check's
//! sequence accounting and anti-passback, held until its submission is sent so that the
//! journal holds each controller's events and each person's passages in order). Door
//! checks take neither an account's lock nor the terminal map's, so they never wait on
//! money.
//!
//! A new cache version is announced (a `watch` the sessions select on) only once the
//! change is durable, like the blacklist's.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use cardgate_codec::CardNo;
use cardgate_domain::access::{
    AccessRecord, AntiPassback, CacheChange, ControllerEvents, Door, GroupAccess, Holidays, PassbackState, Permission,
    Schedule,
};
use cardgate_domain::rules::sequence::SeqSet;
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::watch;

use crate::records::{PREFIX_ACCESS, StateWrite};

/// Changes one door group's log keeps for delta sync. A group changes a few times a day
/// (a permission granted or revoked); a controller offline for weeks still gets a delta.
pub const CACHE_LOG_PER_GROUP_MAX: u64 = 4096;

/// What a controller's cache holds for one card: a permission's schedule and validity
/// (unix minutes, UTC; `valid_to_min` is the first minute no longer valid, `u32::MAX`
/// for none). A `remove` drops every entry the controller holds for the card; a delta
/// sends it before the card's current entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CacheEntry {
    #[serde(serialize_with = "cardgate_domain::model::card_no::serialize")]
    pub card: CardNo,
    pub add: bool,
    pub schedule: u64,
    pub valid_from_min: u32,
    pub valid_to_min: u32,
}

/// A controller's cache, or what changed in it since the version it holds.
#[derive(Clone, Debug)]
pub struct DoorCache {
    pub group: u64,
    pub version: u64,
    /// A full list (the controller's version was too old for a delta, or was 0).
    pub full: bool,
    pub entries: Arc<Vec<CacheEntry>>,
    /// Every schedule the entries name, and the holiday calendar.
    pub schedules: Vec<Schedule>,
    pub holidays: Holidays,
}

/// A controller's event accounting in memory.
#[derive(Clone, Debug, Default)]
pub(crate) struct Controller {
    pub(crate) seen: SeqSet,
    pub(crate) drift_ms: i64,
    /// The cache version it last said it holds (live state).
    pub(crate) cache_acked: u64,
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

    fn load(r: &ControllerEvents) -> Controller {
        Controller {
            seen: SeqSet {
                last: r.last,
                gaps: r.gaps.clone(),
                abandoned: r.abandoned,
            },
            drift_ms: r.drift_ms,
            cache_acked: 0,
        }
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
    full: HashMap<u64, (u64, Arc<Vec<CacheEntry>>)>,
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

    /// Moves `group`'s cache version on by one, logging which cards changed (`None`:
    /// all). Returns the records to send.
    pub(crate) fn bump(&mut self, group: u64, cards: Option<Vec<CardNo>>) -> (CacheChange, GroupAccess) {
        let mut g = self.group(group);
        g.cache_version += 1;
        self.groups.insert(group, g);
        let change = CacheChange {
            group,
            version: g.cache_version,
            all: cards.is_none(),
            cards: cards.unwrap_or_default(),
        };
        self.log_change(change.clone());
        (change, g)
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

    /// The changes of `group` after `version`, or `None` when one of them touched
    /// everything or the log no longer reaches back that far.
    pub(crate) fn changed_cards(&self, group: u64, version: u64) -> Option<Vec<CardNo>> {
        if version < self.delta_floor(group) {
            return None;
        }
        let mut cards = Vec::new();
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
            cards.extend_from_slice(&c.cards);
        }
        cards.sort_unstable();
        cards.dedup();
        Some(cards)
    }

    pub(crate) fn full_list(&self, group: u64) -> Option<Arc<Vec<CacheEntry>>> {
        let version = self.group(group).cache_version;
        self.full
            .get(&group)
            .filter(|(v, _)| *v == version)
            .map(|(_, list)| list.clone())
    }

    pub(crate) fn keep_full_list(&mut self, group: u64, version: u64, list: Arc<Vec<CacheEntry>>) {
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
}

#[derive(Clone, Copy)]
pub(crate) struct NextIds {
    pub(crate) door: u64,
    pub(crate) schedule: u64,
    pub(crate) permission: u64,
}

impl AccessBook {
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
                AccessRecord::Controller(c) => {
                    events.controllers.insert(c.terminal, Controller::load(&c));
                }
                AccessRecord::Passback(p) => {
                    events.passback.insert((p.account, p.group), p);
                }
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

/// Where an access record is stored: `'I'`, a kind byte, then its id(s).
pub(crate) fn access_key(r: &AccessRecord) -> (u8, u64, u64) {
    match r {
        AccessRecord::Door(d) => (b'd', d.id, 0),
        AccessRecord::Schedule(s) => (b's', s.id, 0),
        AccessRecord::Holidays(_) => (b'h', 0, 0),
        AccessRecord::Permission(p) => (b'p', p.id, 0),
        AccessRecord::Group(g) => (b'g', g.group, 0),
        AccessRecord::Change(c) => (b'l', c.group, c.version % CACHE_LOG_PER_GROUP_MAX),
        AccessRecord::Controller(c) => (b'c', c.terminal, 0),
        AccessRecord::Passback(p) => (b'a', p.account, p.group),
    }
}

pub(crate) fn access_key_bytes(r: &AccessRecord) -> Vec<u8> {
    let (kind, a, b) = access_key(r);
    let mut k = Vec::with_capacity(18);
    k.push(PREFIX_ACCESS);
    k.push(kind);
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(&b.to_be_bytes());
    k
}

pub(crate) fn write(r: AccessRecord) -> StateWrite {
    StateWrite::Access(Box::new(r))
}
