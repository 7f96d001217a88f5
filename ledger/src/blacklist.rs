//! The blacklist: the card numbers terminals must refuse even when they cannot ask the
//! gateway (lost, frozen, cancelled, replaced, bad), with a version that goes up by one
//! for every card that joins or leaves it.
//!
//! The gateway keeps the current list (rebuilt from the cards at start-up) and a change
//! log of the last `BLACKLIST_LOG_MAX` changes, so that a terminal that was behind gets
//! exactly what changed; one that is further behind gets the whole list. Each change is
//! a state record in slot `version % BLACKLIST_LOG_MAX` (the log is bounded on disk as in
//! memory) and travels in the journal entry of the card change that caused it, which is
//! sent while the list's lock is held, so versions reach the journal in order.
//!
//! A new version is announced to the sessions (a `watch` channel they select on) only
//! once the change is durable, and a sync answer waits for a barrier, so a terminal
//! never holds a version that a crash could give to a different change.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use cardgate_codec::{
    BLACKLIST_PAGE_CARDS_MAX, BLACKLIST_PAGE_FIRST, BLACKLIST_PAGE_LAST_IN_RUN, BLACKLIST_PAGE_MORE, BlacklistPage,
    BlacklistPageKind, CardNo,
};
use cardgate_domain::model::{BlacklistChange, Card};
use cardgate_domain::rules::card::listed;
use parking_lot::{RwLock, RwLockWriteGuard};
use serde::Serialize;
use tokio::sync::watch;

/// Changes the gateway remembers for delta sync. A campus makes a few hundred changes on
/// an ordinary day and one graduating class (~10,000 cancellations) a year, so a
/// terminal can be offline for weeks and still get a delta; beyond it, the full list.
pub const BLACKLIST_LOG_MAX: u64 = 65_536;

/// Pages one BLACKLIST_SYNC is answered with at most (256 cards). Bounds the work and
/// the frames one request costs; the terminal asks again for the rest.
pub const SYNC_PAGES_MAX: usize = 32;

struct Inner {
    listed: BTreeSet<u64>,
    log: VecDeque<BlacklistChange>,
}

pub struct Blacklist {
    inner: RwLock<Inner>,
    /// The newest version, durable or not (purchases record it as evidence).
    version: AtomicU64,
    /// The newest durable version; sessions watch it.
    published: watch::Sender<u64>,
}

impl Blacklist {
    /// Starts from the change log records found at start-up.
    pub(crate) fn new(mut changes: Vec<BlacklistChange>) -> Blacklist {
        changes.sort_by_key(|c| c.version);
        let version = changes.last().map(|c| c.version).unwrap_or(0);
        let log: VecDeque<_> = changes
            .into_iter()
            .filter(|c| c.version + BLACKLIST_LOG_MAX > version)
            .collect();
        Blacklist {
            inner: RwLock::new(Inner {
                listed: BTreeSet::new(),
                log,
            }),
            version: AtomicU64::new(version),
            published: watch::Sender::new(version),
        }
    }

    /// Recovery: a change found in a replayed entry.
    pub(crate) fn replay(&self, c: BlacklistChange) {
        let mut inner = self.inner.write();
        if inner.log.back().is_none_or(|b| b.version < c.version) {
            inner.log.push_back(c);
            while inner.log.len() as u64 > BLACKLIST_LOG_MAX {
                inner.log.pop_front();
            }
        }
        self.version.fetch_max(c.version, Ordering::AcqRel);
        let v = self.version.load(Ordering::Acquire);
        self.published.send_replace(v);
    }

    /// Recovery, last step: the list is whatever the cards say.
    pub(crate) fn rebuild(&self, cards: impl Iterator<Item = Card>) {
        let mut inner = self.inner.write();
        inner.listed = cards.filter(|c| listed(c.status)).map(|c| c.no.0).collect();
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn published(&self) -> u64 {
        *self.published.borrow()
    }

    pub fn len(&self) -> usize {
        self.inner.read().listed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, card: CardNo) -> bool {
        self.inner.read().listed.contains(&card.0)
    }

    /// The oldest version a delta can start from.
    pub fn delta_floor(&self) -> u64 {
        let inner = self.inner.read();
        match inner.log.front() {
            Some(c) => c.version - 1,
            None => self.version(),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Announces `version` once it is durable.
    pub(crate) fn publish(&self, version: u64) {
        self.published.send_if_modified(|v| {
            if version > *v {
                *v = version;
                true
            } else {
                false
            }
        });
    }

    /// Locks the list for a change. The caller applies its membership changes through
    /// the guard and sends the journal submission that carries them before dropping it,
    /// so that versions reach the journal in order.
    pub(crate) fn lock(&self) -> BlacklistGuard<'_> {
        BlacklistGuard {
            inner: self.inner.write(),
            version: &self.version,
        }
    }

    /// The pages answering a BLACKLIST_SYNC (at least one).
    pub fn sync(&self, since_version: u64, after_card: u64) -> Vec<BlacklistPage> {
        let inner = self.inner.read();
        let version = self.version.load(Ordering::Acquire);
        let floor = match inner.log.front() {
            Some(c) => c.version - 1,
            None => version,
        };
        let mut pages = if after_card == 0 && since_version >= floor && since_version <= version {
            delta_pages(&inner.log, since_version, version)
        } else {
            full_pages(&inner.listed, after_card, version)
        };
        if let Some(last) = pages.last_mut() {
            last.flags |= BLACKLIST_PAGE_LAST_IN_RUN;
        }
        pages
    }

    /// Membership changes after `since`, consolidated per card (for the admin API).
    pub fn changes_since(&self, since: u64) -> Option<(Vec<u64>, Vec<u64>, u64)> {
        let inner = self.inner.read();
        let version = self.version();
        let floor = inner.log.front().map(|c| c.version - 1).unwrap_or(version);
        if since < floor || since > version {
            return None;
        }
        let mut last: HashMap<u64, bool> = HashMap::new();
        for c in inner.log.iter().filter(|c| c.version > since) {
            last.insert(c.card.0, c.listed);
        }
        let mut added: Vec<u64> = last.iter().filter(|(_, l)| **l).map(|(c, _)| *c).collect();
        let mut removed: Vec<u64> = last.iter().filter(|(_, l)| !**l).map(|(c, _)| *c).collect();
        added.sort_unstable();
        removed.sort_unstable();
        Some((added, removed, version))
    }
}

/// The blacklist, locked for a change (`Blacklist::lock`).
pub(crate) struct BlacklistGuard<'a> {
    inner: RwLockWriteGuard<'a, Inner>,
    version: &'a AtomicU64,
}

impl BlacklistGuard<'_> {
    /// Applies `(card, listed)` membership changes; each card whose membership changes
    /// gets the next version, the others none.
    pub(crate) fn set(&mut self, cards: &[(CardNo, bool)]) -> Vec<BlacklistChange> {
        let mut changes = Vec::new();
        let mut version = self.version.load(Ordering::Acquire);
        for &(card, on) in cards {
            let changed = if on {
                self.inner.listed.insert(card.0)
            } else {
                self.inner.listed.remove(&card.0)
            };
            if changed {
                version += 1;
                let c = BlacklistChange {
                    version,
                    card,
                    listed: on,
                };
                self.inner.log.push_back(c);
                changes.push(c);
            }
        }
        while self.inner.log.len() as u64 > BLACKLIST_LOG_MAX {
            self.inner.log.pop_front();
        }
        self.version.store(version, Ordering::Release);
        changes
    }
}

/// How far connected terminals are behind the published version.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BlacklistLag {
    pub version: u64,
    pub published: u64,
    pub listed: usize,
    /// The oldest version a delta sync can start from.
    pub delta_floor: u64,
    pub connected_terminals: usize,
    /// Connected terminals whose acknowledged version is below `published`.
    pub behind: usize,
    /// The largest `published - acknowledged` among them.
    pub max_versions_behind: u64,
    /// Terminals behind, by how far: `[1], [2..=10], [11..=100], [101..]` versions.
    pub behind_by: [usize; 4],
    /// Up to `LAG_LIST_MAX` of the furthest behind: (terminal, acknowledged version).
    pub furthest: Vec<(u64, u64)>,
}

/// Terminals a lag report names individually.
pub const LAG_LIST_MAX: usize = 100;

fn empty_page(kind: BlacklistPageKind) -> BlacklistPage {
    BlacklistPage {
        kind,
        flags: 0,
        added: 0,
        removed: 0,
        from_version: 0,
        to_version: 0,
        next_after_card: 0,
        cards: [0; BLACKLIST_PAGE_CARDS_MAX],
    }
}

/// Delta pages over `(since, version]`. Each page covers a run of consecutive versions
/// touching at most `BLACKLIST_PAGE_CARDS_MAX` distinct cards, consolidated to each
/// card's last state in that run, so applying pages in order converges.
fn delta_pages(log: &VecDeque<BlacklistChange>, since: u64, version: u64) -> Vec<BlacklistPage> {
    let start = log.partition_point(|c| c.version <= since);
    let mut pages = Vec::new();
    let mut i = start;
    let mut from = since;
    loop {
        let mut cards: Vec<(u64, bool)> = Vec::with_capacity(BLACKLIST_PAGE_CARDS_MAX);
        let mut to = from;
        while i < log.len() {
            let c = log[i];
            match cards.iter().position(|(n, _)| *n == c.card.0) {
                Some(i) => cards[i].1 = c.listed,
                None if cards.len() < BLACKLIST_PAGE_CARDS_MAX => cards.push((c.card.0, c.listed)),
                None => break,
            }
            to = c.version;
            i += 1;
        }
        let mut page = empty_page(BlacklistPageKind::Delta);
        page.from_version = from;
        page.to_version = if i >= log.len() { version } else { to };
        let mut n = 0;
        for (card, _) in cards.iter().filter(|(_, l)| *l) {
            page.cards[n] = *card;
            n += 1;
        }
        page.added = n as u8;
        for (card, _) in cards.iter().filter(|(_, l)| !*l) {
            page.cards[n] = *card;
            n += 1;
        }
        page.removed = (n - usize::from(page.added)) as u8;
        from = page.to_version;
        let done = i >= log.len();
        if !done && pages.len() + 1 == SYNC_PAGES_MAX {
            page.flags |= BLACKLIST_PAGE_MORE;
            pages.push(page);
            break;
        }
        pages.push(page);
        if done {
            break;
        }
    }
    pages
}

/// Full-list pages after `after_card`, as of `version`.
fn full_pages(listed: &BTreeSet<u64>, after_card: u64, version: u64) -> Vec<BlacklistPage> {
    let mut pages = Vec::new();
    let mut iter = listed.range(after_card.saturating_add(1)..).peekable();
    loop {
        let mut page = empty_page(BlacklistPageKind::Full);
        page.to_version = version;
        if pages.is_empty() && after_card == 0 {
            page.flags |= BLACKLIST_PAGE_FIRST;
        }
        let mut n = 0;
        while n < BLACKLIST_PAGE_CARDS_MAX {
            match iter.next() {
                Some(c) => {
                    page.cards[n] = *c;
                    n += 1;
                }
                None => break,
            }
        }
        page.added = n as u8;
        page.next_after_card = if n > 0 { page.cards[n - 1] } else { after_card };
        let more = iter.peek().is_some();
        if more && pages.len() + 1 == SYNC_PAGES_MAX {
            page.flags |= BLACKLIST_PAGE_MORE;
            pages.push(page);
            break;
        }
        pages.push(page);
        if !more {
            break;
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A terminal's copy of the list, following the protocol's rules.
    #[derive(Default)]
    struct TerminalCopy {
        cards: BTreeSet<u64>,
        version: u64,
    }

    impl TerminalCopy {
        fn sync(&mut self, bl: &Blacklist) {
            let mut after = 0;
            let mut full_version = None;
            loop {
                let pages = bl.sync(self.version, after);
                let last = *pages.last().unwrap();
                for p in &pages {
                    match p.kind {
                        BlacklistPageKind::Delta => {
                            assert_eq!(p.from_version, self.version);
                            self.cards.extend(p.added_cards());
                            for c in p.removed_cards() {
                                self.cards.remove(c);
                            }
                            self.version = p.to_version;
                        }
                        BlacklistPageKind::Full => {
                            if p.has(BLACKLIST_PAGE_FIRST) {
                                self.cards.clear();
                                full_version = Some(p.to_version);
                            }
                            self.cards.extend(p.added_cards());
                            after = p.next_after_card;
                        }
                    }
                }
                assert!(last.has(BLACKLIST_PAGE_LAST_IN_RUN));
                if last.has(BLACKLIST_PAGE_MORE) {
                    if last.kind == BlacklistPageKind::Delta {
                        after = 0;
                    }
                    continue;
                }
                match full_version.take() {
                    // After a full list, catch up from the version it was read at.
                    Some(v) => {
                        self.version = v;
                        after = 0;
                    }
                    None => return,
                }
            }
        }
    }

    fn set(bl: &Blacklist, card: u64, on: bool) -> Vec<BlacklistChange> {
        bl.lock().set(&[(CardNo(card), on)])
    }

    #[test]
    fn versions_count_membership_changes_only() {
        let bl = Blacklist::new(vec![]);
        assert_eq!(set(&bl, 5, true).len(), 1);
        assert!(set(&bl, 5, true).is_empty(), "already listed: no new version");
        assert_eq!(set(&bl, 5, false)[0].version, 2);
        assert_eq!(bl.version(), 2);
        assert!(!bl.contains(CardNo(5)));
    }

    #[test]
    fn delta_sync_returns_exactly_the_changes() {
        let bl = Blacklist::new(vec![]);
        let mut t = TerminalCopy::default();
        for c in 1..=20 {
            set(&bl, c, true);
        }
        t.sync(&bl);
        assert_eq!(t.version, 20);
        assert_eq!(t.cards, (1..=20).collect());
        set(&bl, 3, false);
        set(&bl, 21, true);
        set(&bl, 21, false);
        set(&bl, 22, true);
        let pages = bl.sync(20, 0);
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].kind, BlacklistPageKind::Delta);
        assert_eq!(pages[0].added_cards(), &[22]);
        let mut removed = pages[0].removed_cards().to_vec();
        removed.sort();
        assert_eq!(removed, vec![3, 21]);
        t.sync(&bl);
        assert_eq!(t.version, 24);
        let want: BTreeSet<u64> = (1..=20).filter(|c| *c != 3).chain([22]).collect();
        assert_eq!(t.cards, want);
        // Up to date: one empty page.
        let pages = bl.sync(24, 0);
        assert_eq!(pages.len(), 1);
        assert_eq!((pages[0].added, pages[0].removed, pages[0].to_version), (0, 0, 24));
    }

    #[test]
    fn a_terminal_too_far_behind_gets_the_full_list_in_runs() {
        let bl = Blacklist::new(vec![]);
        let n = BLACKLIST_LOG_MAX + 600;
        for c in 1..=n {
            set(&bl, c, true);
        }
        for c in (1..=n).step_by(3) {
            set(&bl, c, false);
        }
        let mut t = TerminalCopy::default();
        t.sync(&bl);
        let want: BTreeSet<u64> = (1..=n).filter(|c| (c - 1) % 3 != 0).collect();
        assert_eq!(t.cards, want);
        assert_eq!(t.version, bl.version());
        // A long delta comes in runs of at most SYNC_PAGES_MAX pages.
        let since = bl.version() - 1000;
        assert!(bl.sync(since, 0).len() <= SYNC_PAGES_MAX);
        let mut t2 = TerminalCopy {
            cards: t.cards.clone(),
            version: bl.version(),
        };
        for c in n + 1..=n + 1000 {
            set(&bl, c, true);
        }
        t2.sync(&bl);
        let want: BTreeSet<u64> = want.into_iter().chain(n + 1..=n + 1000).collect();
        assert_eq!(t2.cards, want);
    }

    #[test]
    fn a_sync_from_a_version_never_issued_gets_the_full_list() {
        // A terminal holding a version above ours (it kept its list across a restore of
        // the gateway's data) cannot be given a delta: its versions name other changes.
        let bl = Blacklist::new(vec![]);
        for c in 1..=5 {
            set(&bl, c, true);
        }
        set(&bl, 2, false);
        for since in [bl.version() + 1, bl.version() + 1_000, u64::MAX] {
            let pages = bl.sync(since, 0);
            assert_eq!(pages.len(), 1);
            let p = pages[0];
            assert_eq!(p.kind, BlacklistPageKind::Full, "since {since}");
            assert!(p.has(BLACKLIST_PAGE_FIRST) && p.has(BLACKLIST_PAGE_LAST_IN_RUN));
            assert_eq!((p.from_version, p.to_version), (0, bl.version()));
            assert_eq!(p.added_cards(), &[1, 3, 4, 5]);
        }
        // And the terminal that follows the protocol ends up on our version and list.
        let mut t = TerminalCopy {
            cards: (100..110).collect(),
            version: bl.version() + 40,
        };
        t.sync(&bl);
        assert_eq!(t.version, bl.version());
        assert_eq!(t.cards, [1, 3, 4, 5].into_iter().collect());
    }

    #[test]
    fn the_log_recovers_from_its_records() {
        let bl = Blacklist::new(vec![]);
        let mut all = vec![];
        for c in 1..=10 {
            all.extend(set(&bl, c, c % 2 == 0));
        }
        let back = Blacklist::new(all.clone());
        assert_eq!(back.version(), bl.version());
        assert_eq!(back.changes_since(0), bl.changes_since(0));
    }
}
