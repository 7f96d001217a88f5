//! The ledger's state in memory: every record the gateway decides on, behind one owning
//! type whose fields nothing outside this file touches.
//!
//! Lock order, everywhere and never another: `batches` (async; one batch grant, batch
//! cancellation or import at a time, held across its awaits) → `desk` (a short mutex
//! that serializes desk changes among themselves, never held across an `.await`) → the
//! door access config (written by a desk change that moves door caches: a card issued,
//! a person changed; a controller's sync reads it and then cards and accounts) → the
//! card stock → a terminal's entry (write) → a card (read, or write for a desk change)
//! → an account (write) → the blacklist's lock. A purchase takes only terminal → card → account, so a
//! terminal never waits for a desk lock. No lock is held across an `.await`: the journal
//! slot (`Txn`) is reserved before the first one.
//!
//! The hot maps are sharded (`DashMap`, 256 shards, foldhash); parameters, read on
//! every purchase and changed rarely, are swapped whole (`ArcSwap`).

use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use cardgate_codec::CardNo;
use cardgate_domain::entry::SettlementClose;
use cardgate_domain::model::{
    Account, Card, DoorGroup, Exception, GrantMark, IdempotentAnswer, KeyHandout, Merchant, Params, Person, SeqGaps,
    SeqRecord, StockBatch, StockCount, Terminal, TerminalRecord,
};
use cardgate_domain::operator::{Operator, PasswordRecord, TokenHash};
use cardgate_domain::rules::sequence::{Seen, SeqSet};
use dashmap::DashMap;
use dashmap::mapref::one::{Ref, RefMut};

use crate::access::AccessBook;
use crate::audit_log::AuditLog;
use crate::blacklist::Blacklist;
use crate::error::LedgerError;
use crate::keys::TerminalKey;
use crate::records::{
    OFFLINE_DAYS_KEPT, OfflineCardDays, PREFIX_GAPS, PREFIX_OFFLINE_DAYS, PREFIX_SEQ, SEQ_SLOTS, SettlementTime,
    StockRemoved, seq_slot,
};

/// Shards of the hot maps: far more than cores, so that two connections rarely wait on
/// the same shard lock.
const MAP_SHARDS: usize = 256;

/// The hot maps. foldhash instead of the default SipHash: three lookups per purchase
/// were 8% of the gateway's CPU under load, and foldhash is still seeded per process,
/// so card numbers a terminal chooses cannot be aimed at one bucket.
pub(crate) type Map<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

/// A terminal's sequence record in a checkpoint that has no such terminal.
fn orphaned(prefix: u8, terminal: u64) -> LedgerError {
    LedgerError::Store(cardgate_journal::StoreError::Corrupt {
        key: cardgate_journal::layout::key_u64(prefix, terminal).to_vec(),
        reason: format!("sequence memory of terminal {terminal}, which the checkpoint does not hold"),
    })
}

fn new_map<K: Eq + std::hash::Hash, V>() -> Map<K, V> {
    DashMap::with_hasher_and_shard_amount(foldhash::fast::RandomState::default(), MAP_SHARDS)
}

/// A map sized for `n` records at once: a million accounts inserted into growing shards
/// left every shard's outgrown tables behind as free heap.
fn map_for<K: Eq + std::hash::Hash, V>(n: usize) -> Map<K, V> {
    DashMap::with_capacity_and_hasher_and_shard_amount(n, foldhash::fast::RandomState::default(), MAP_SHARDS)
}

/// Terminal notices a session may fall behind by before it re-reads its terminal
/// instead: disables come a few at a time (a merchant's windows), never thousands.
const TERMINAL_NOTICES_MAX: usize = 1024;

/// A terminal's registration plus what the gateway remembers of its requests.
pub(crate) struct TerminalState {
    /// The working view, with the secret in clear (memory only).
    pub(crate) info: Terminal,
    /// The registry's record, its keys sealed; `None` for a terminal registered before
    /// the registry (a `TerminalRegistered` entry), until it is next changed.
    pub(crate) record: Option<TerminalRecord>,
    /// During a rekey's overlap: the previous secret, and until when it signs on.
    pub(crate) previous: Option<([u8; 32], i64)>,
    /// Its sealed key could not be opened (no terminal key given: the command line's
    /// tools): it cannot sign on, and the secret in `info` is not its secret.
    pub(crate) locked: bool,
    /// Every sequence number seen: the highest, and the gaps below it (durable as a
    /// `SeqGaps` record whenever the gaps change).
    pub(crate) seen: SeqSet,
    slots: Box<[Option<SeqRecord>; SEQ_SLOTS]>,
    pub(crate) last_seen_ms: i64,
    /// The blacklist version the terminal last said it holds (not durable: live state).
    pub(crate) blacklist_acked: u64,
    /// Signed-on connections of this terminal right now.
    pub(crate) sessions: u32,
    /// Since when it has had a session (live state), and when the last one ended.
    pub(crate) online_since_ms: Option<i64>,
    pub(crate) offline_since_ms: Option<i64>,
    /// Its clock minus the gateway's at its last sign-on.
    pub(crate) drift_ms: i64,
    /// Offline spending per (card, business day) of its posted offline sales (for the
    /// per-card offline limit's flag), durable as `OfflineCardDays` for the last
    /// `OFFLINE_DAYS_KEPT` days.
    pub(crate) offline_card_day: std::collections::HashMap<(u64, i32), i64>,
}

impl TerminalState {
    pub(crate) fn new(info: Terminal) -> TerminalState {
        TerminalState {
            info,
            record: None,
            previous: None,
            locked: false,
            seen: SeqSet::default(),
            slots: Box::new([None; SEQ_SLOTS]),
            last_seen_ms: 0,
            blacklist_acked: 0,
            sessions: 0,
            online_since_ms: None,
            offline_since_ms: None,
            drift_ms: 0,
            offline_card_day: std::collections::HashMap::new(),
        }
    }

    /// The highest sequence number seen.
    pub(crate) fn last_seq(&self) -> u64 {
        self.seen.last
    }

    /// The durable form of the gaps.
    pub(crate) fn gaps_record(&self) -> SeqGaps {
        SeqGaps {
            terminal: self.info.id,
            ranges: self.seen.gaps.clone(),
            abandoned: self.seen.abandoned,
        }
    }

    /// Its offline spending per card and day as a record, the days no sale can be judged
    /// on any more (before `today - OFFLINE_DAYS_KEPT`) dropped, from memory too.
    pub(crate) fn offline_days_record(&mut self, today: i32) -> OfflineCardDays {
        self.offline_card_day
            .retain(|&(_, day), _| day > today - OFFLINE_DAYS_KEPT);
        OfflineCardDays {
            terminal: self.info.id,
            days: self
                .offline_card_day
                .iter()
                .map(|(&(card, day), &fen)| (card, day, fen))
                .collect(),
        }
    }

    /// A posted offline sale of `card` on `day`, in the per-card sums.
    pub(crate) fn add_offline_spending(&mut self, card: u64, day: i32, fen: i64) {
        *self.offline_card_day.entry((card, day)).or_insert(0) += fen;
    }

    /// The outcome of `seq` as the protocol promises it to a request numbered `at`:
    /// remembered if and only if the terminal used `seq` and it is among the last
    /// `SEQ_SLOTS` numbers, counting `at` itself: `newest - SEQ_SLOTS < seq <= newest`
    /// with `newest = max(last_seq, at)`. A slot can still hold an older number (when
    /// the numbers that would have replaced it were skipped); it is not answered, so that
    /// a terminal can predict every answer from the numbers alone.
    pub(crate) fn answerable(&self, seq: u64, at: u64) -> Option<&SeqRecord> {
        let newest = self.seen.last.max(at);
        if seq > newest || newest - seq >= SEQ_SLOTS as u64 {
            return None;
        }
        self.recent(seq)
    }

    /// What slot `seq % SEQ_SLOTS` holds for `seq`, if anything, however old: for
    /// recovery, which replays decisions already made. Decisions use `answerable`.
    pub(crate) fn recent(&self, seq: u64) -> Option<&SeqRecord> {
        self.slots[usize::from(seq_slot(seq))].as_ref().filter(|r| r.seq == seq)
    }

    pub(crate) fn recent_mut(&mut self, seq: u64) -> Option<&mut SeqRecord> {
        self.slots[usize::from(seq_slot(seq))].as_mut().filter(|r| r.seq == seq)
    }

    /// Records a decision on `rec.seq`: the number is seen, and its slot remembers it
    /// unless the slot holds a newer number (an offline sale filling an old gap).
    /// Returns whether the gaps changed (a number skipped, or a gap filled), which is
    /// when the gaps record must be written.
    pub(crate) fn remember(&mut self, rec: SeqRecord) -> bool {
        let before = self.seen.last;
        let gaps_changed = match self.seen.mark(rec.seq) {
            Seen::Above => rec.seq > before + 1,
            Seen::FilledGap => true,
            Seen::Duplicate => false,
        };
        let slot = &mut self.slots[usize::from(seq_slot(rec.seq))];
        if slot.is_none_or(|s| s.seq <= rec.seq) {
            *slot = Some(rec);
        }
        gaps_changed
    }

    /// A remembered outcome from the checkpoint: its slot, and the highest number.
    pub(crate) fn load_slot(&mut self, rec: SeqRecord) {
        self.seen.last = self.seen.last.max(rec.seq);
        self.slots[usize::from(seq_slot(rec.seq))] = Some(rec);
    }

    /// The gaps from the checkpoint (written whenever they changed, so they hold for
    /// every number up to the highest the slots show).
    pub(crate) fn load_gaps(&mut self, g: &SeqGaps) {
        self.seen.gaps = g.ranges.clone();
        self.seen.abandoned = g.abandoned;
        if let Some((_, hi)) = g.ranges.last() {
            self.seen.last = self.seen.last.max(hi + 1);
        }
    }
}

/// What recovery found on disk, before replay.
#[derive(Default)]
pub(crate) struct Loaded {
    pub(crate) accounts: Vec<Account>,
    pub(crate) terminals: Vec<Terminal>,
    pub(crate) seqs: Vec<SeqRecord>,
    pub(crate) params: Params,
    pub(crate) persons: Vec<Person>,
    pub(crate) operators: Vec<Operator>,
    pub(crate) blacklist: Vec<cardgate_domain::model::BlacklistChange>,
    pub(crate) audit: Vec<cardgate_domain::model::AuditRecord>,
    pub(crate) grants: Vec<GrantMark>,
    pub(crate) exceptions: Vec<Exception>,
    pub(crate) answers: Vec<IdempotentAnswer>,
    pub(crate) terminal_records: Vec<TerminalRecord>,
    pub(crate) merchants: Vec<Merchant>,
    pub(crate) door_groups: Vec<DoorGroup>,
    pub(crate) handouts: Vec<KeyHandout>,
    pub(crate) stock_batches: Vec<StockBatch>,
    pub(crate) stock_removed: Vec<StockRemoved>,
    pub(crate) stock_counts: Vec<StockCount>,
    pub(crate) passwords: Vec<PasswordRecord>,
    pub(crate) gaps: Vec<SeqGaps>,
    pub(crate) offline_days: Vec<OfflineCardDays>,
    /// (card, when it joined the blacklist).
    pub(crate) listed_since: Vec<(u64, i64)>,
    pub(crate) settlements: Vec<SettlementClose>,
    pub(crate) settlement_times: Vec<SettlementTime>,
    /// The highest tx id any committed entry used.
    pub(crate) tx_id_mark: u64,
    /// The last business day closed.
    pub(crate) day_close: Option<cardgate_domain::entry::DayClose>,
    pub(crate) access: Vec<cardgate_domain::access::AccessRecord>,
}

pub(crate) struct State {
    accounts: Map<u64, Account>,
    cards: Map<CardNo, Card>,
    terminals: Map<u64, TerminalState>,
    params: ArcSwap<Params>,
    blacklist: Blacklist,
    /// By account id, and person id → account id.
    persons: DashMap<u64, Person>,
    person_ids: DashMap<String, u64>,
    operators: DashMap<u64, Operator>,
    tokens: DashMap<TokenHash, u64>,
    /// Console passwords by operator id.
    passwords: DashMap<u64, PasswordRecord>,
    audit: AuditLog,
    grants: DashMap<(String, u64), GrantMark>,
    /// Open and settled exceptions, by id (a handful a week; kept whole).
    exceptions: DashMap<u64, Exception>,
    next_exception_id: AtomicU64,
    /// Answers kept under operators' idempotency keys, by (operator id, key).
    answers: DashMap<(u64, String), IdempotentAnswer>,
    /// The registry: merchants, door groups, serial numbers in use, keys handed out.
    merchants: DashMap<u64, Merchant>,
    door_groups: DashMap<u64, DoorGroup>,
    serials: DashMap<String, u64>,
    handouts: parking_lot::Mutex<Vec<KeyHandout>>,
    next_merchant_id: AtomicU64,
    next_door_group_id: AtomicU64,
    /// The blank card stock.
    stock: parking_lot::Mutex<StockBook>,
    /// Opens the registry's sealed keys; none: terminals cannot be registered or changed.
    terminal_key: Option<TerminalKey>,
    /// Terminals that changed (disabled): their sessions close.
    terminal_notices: tokio::sync::broadcast::Sender<u64>,
    next_tx_id: AtomicU64,
    next_account_id: AtomicU64,
    next_operator_id: AtomicU64,
    next_audit_id: AtomicU64,
    desk: parking_lot::Mutex<()>,
    batches: tokio::sync::Mutex<()>,
    /// Imports whose staging keys remain: (commit entry id, import id, chunks).
    staged_imports: parking_lot::Mutex<Vec<(u64, u64, u32)>>,
    /// The last business day closed, and one closer at a time.
    day_close: parking_lot::Mutex<Option<cardgate_domain::entry::DayClose>>,
    day_closing: tokio::sync::Mutex<()>,
    /// When each card on the blacklist joined it, where known (an offline sale made
    /// before that was not made with a blocked card).
    listed_since: DashMap<u64, i64>,
    /// Business days closed for settlement, by day.
    settlements: parking_lot::Mutex<std::collections::BTreeMap<i32, SettlementClose>>,
    /// When each settled day was closed.
    settlement_times: parking_lot::Mutex<std::collections::BTreeMap<i32, i64>>,
    /// Door access and attendance (`access.rs`).
    access: AccessBook,
}

/// The blank card stock as the records have it.
#[derive(Default)]
pub(crate) struct StockBook {
    pub(crate) batches: Vec<StockBatch>,
    pub(crate) removed: std::collections::BTreeMap<u64, StockRemoved>,
    pub(crate) counts: Vec<StockCount>,
}

impl StockBook {
    pub(crate) fn batch_of(&self, no: CardNo) -> Option<&StockBatch> {
        self.batches.iter().find(|b| b.contains(no))
    }
}

impl State {
    pub(crate) fn new(load: Loaded, terminal_key: Option<TerminalKey>) -> Result<State, LedgerError> {
        let accounts = map_for(load.accounts.len());
        let mut next_account_id = 1;
        for a in load.accounts {
            next_account_id = next_account_id.max(a.id + 1);
            accounts.insert(a.id, a);
        }
        // The checkpoint's cards come after (`load_cards`), once the accounts' vector is gone.
        let cards = new_map();
        let terminals = new_map();
        for t in load.terminals {
            terminals.insert(t.id, TerminalState::new(t));
        }
        let state = State {
            accounts,
            cards,
            terminals,
            params: ArcSwap::from_pointee(load.params),
            blacklist: Blacklist::new(load.blacklist),
            persons: DashMap::new(),
            person_ids: DashMap::new(),
            operators: DashMap::new(),
            tokens: DashMap::new(),
            passwords: DashMap::new(),
            audit: AuditLog::new(load.audit),
            grants: DashMap::new(),
            exceptions: DashMap::new(),
            next_exception_id: AtomicU64::new(1),
            answers: DashMap::new(),
            merchants: DashMap::new(),
            door_groups: DashMap::new(),
            serials: DashMap::new(),
            handouts: parking_lot::Mutex::new(Vec::new()),
            next_merchant_id: AtomicU64::new(1),
            next_door_group_id: AtomicU64::new(1),
            stock: parking_lot::Mutex::new(StockBook::default()),
            terminal_key,
            terminal_notices: tokio::sync::broadcast::Sender::new(TERMINAL_NOTICES_MAX),
            next_tx_id: AtomicU64::new(load.tx_id_mark + 1),
            next_account_id: AtomicU64::new(next_account_id),
            next_operator_id: AtomicU64::new(1),
            next_audit_id: AtomicU64::new(1),
            desk: parking_lot::Mutex::new(()),
            batches: tokio::sync::Mutex::new(()),
            staged_imports: parking_lot::Mutex::new(Vec::new()),
            day_close: parking_lot::Mutex::new(load.day_close),
            day_closing: tokio::sync::Mutex::new(()),
            listed_since: load.listed_since.into_iter().collect(),
            settlements: parking_lot::Mutex::new(load.settlements.into_iter().map(|d| (d.day, d)).collect()),
            settlement_times: parking_lot::Mutex::new(
                load.settlement_times
                    .into_iter()
                    .map(|t| (t.day, t.closed_ms))
                    .collect(),
            ),
            access: AccessBook::new(load.access),
        };
        state.next_audit_id.store(state.audit.last_id() + 1, Ordering::Release);
        for p in load.persons {
            state.put_person(p);
        }
        for o in load.operators {
            state.put_operator(o);
        }
        for p in load.passwords {
            state.put_password(p);
        }
        for g in load.grants {
            state.put_grant(g);
        }
        for e in load.exceptions {
            state.put_exception(e);
        }
        for a in load.answers {
            state.put_answer(a);
        }
        for m in load.merchants {
            state.put_merchant(m);
        }
        for g in load.door_groups {
            state.put_door_group(g);
        }
        for r in load.terminal_records {
            state.put_terminal_record(r)?;
        }
        // A terminal's remembered outcomes only once every terminal is in place: a
        // terminal registered through the registry exists only from its record above,
        // and outcomes loaded before it were dropped, so that a clean restart forgot
        // what it had answered and a retry moved money again. One with no terminal is a
        // broken checkpoint, not something to skip.
        for r in load.seqs {
            let Some(mut t) = state.terminals.get_mut(&r.terminal) else {
                return Err(orphaned(PREFIX_SEQ, r.terminal));
            };
            t.load_slot(r);
        }
        for g in &load.gaps {
            let Some(mut t) = state.terminals.get_mut(&g.terminal) else {
                return Err(orphaned(PREFIX_GAPS, g.terminal));
            };
            t.load_gaps(g);
        }
        for r in &load.offline_days {
            let Some(mut t) = state.terminals.get_mut(&r.terminal) else {
                return Err(orphaned(PREFIX_OFFLINE_DAYS, r.terminal));
            };
            for &(card, day, fen) in &r.days {
                t.offline_card_day.insert((card, day), fen);
            }
        }
        state.handouts.lock().extend(load.handouts);
        {
            let mut stock = state.stock.lock();
            stock.batches = load.stock_batches;
            stock.batches.sort_by_key(|b| b.id);
            stock.removed = load.stock_removed.into_iter().map(|r| (r.card.0, r)).collect();
            stock.counts = load.stock_counts;
            stock.counts.sort_by_key(|c| c.id);
        }
        Ok(state)
    }

    /// The checkpoint's cards, into a map sized for them. Recovery reads them after
    /// `new` has moved the accounts into their map, so that a million of each never wait
    /// in vectors at the same time.
    pub(crate) fn load_cards(&mut self, cards: Vec<Card>) {
        let map = map_for(cards.len());
        for c in cards {
            map.insert(c.no, c);
        }
        self.cards = map;
    }

    // ---- accounts ---------------------------------------------------------------------

    pub(crate) fn account(&self, id: u64) -> Option<Account> {
        self.accounts.get(&id).map(|a| *a)
    }

    /// The account, locked for a change.
    pub(crate) fn account_mut(&self, id: u64) -> Option<RefMut<'_, u64, Account>> {
        self.accounts.get_mut(&id)
    }

    pub(crate) fn has_account(&self, id: u64) -> bool {
        self.accounts.contains_key(&id)
    }

    /// Inserts or replaces an account; ids handed out later stay above it.
    pub(crate) fn put_account(&self, a: Account) {
        self.next_account_id.fetch_max(a.id + 1, Ordering::AcqRel);
        self.accounts.insert(a.id, a);
    }

    /// A new account id, above every account that exists.
    pub(crate) fn new_account_id(&self) -> u64 {
        self.next_account_id.fetch_add(1, Ordering::AcqRel)
    }

    pub(crate) fn accounts_len(&self) -> usize {
        self.accounts.len()
    }

    pub(crate) fn for_each_account(&self, mut f: impl FnMut(&Account)) {
        for a in self.accounts.iter() {
            f(&a);
        }
    }

    // ---- cards ------------------------------------------------------------------------

    pub(crate) fn card(&self, no: CardNo) -> Option<Card> {
        self.cards.get(&no).map(|c| *c)
    }

    /// The card, read-locked: a desk change to it waits until the reader is done.
    pub(crate) fn card_ref(&self, no: CardNo) -> Option<Ref<'_, CardNo, Card>> {
        self.cards.get(&no)
    }

    pub(crate) fn card_mut(&self, no: CardNo) -> Option<RefMut<'_, CardNo, Card>> {
        self.cards.get_mut(&no)
    }

    pub(crate) fn has_card(&self, no: CardNo) -> bool {
        self.cards.contains_key(&no)
    }

    pub(crate) fn put_card(&self, c: Card) {
        self.cards.insert(c.no, c);
    }

    pub(crate) fn cards_len(&self) -> usize {
        self.cards.len()
    }

    pub(crate) fn for_each_card(&self, mut f: impl FnMut(&Card)) {
        for c in self.cards.iter() {
            f(&c);
        }
    }

    // ---- terminals ----------------------------------------------------------------------

    pub(crate) fn terminal(&self, id: u64) -> Option<Ref<'_, u64, TerminalState>> {
        self.terminals.get(&id)
    }

    /// The terminal's entry, locked: its sequence numbers are decided one at a time.
    pub(crate) fn terminal_mut(&self, id: u64) -> Option<RefMut<'_, u64, TerminalState>> {
        self.terminals.get_mut(&id)
    }

    pub(crate) fn has_terminal(&self, id: u64) -> bool {
        self.terminals.contains_key(&id)
    }

    /// Registers a terminal or replaces its registration, keeping its sequence memory.
    pub(crate) fn put_terminal(&self, t: Terminal) {
        match self.terminals.entry(t.id) {
            dashmap::Entry::Occupied(mut o) => o.get_mut().info = t,
            dashmap::Entry::Vacant(v) => {
                v.insert(TerminalState::new(t));
            }
        }
    }

    /// Puts a registry record in place, opening its sealed keys. A previous key is kept
    /// with the end of its overlap; sign-on judges it.
    /// Without a terminal key the record is put in place locked: every other field is
    /// usable, but the terminal cannot sign on.
    pub(crate) fn put_terminal_record(&self, r: TerminalRecord) -> Result<(), LedgerError> {
        let (secret, previous, locked) = match &self.terminal_key {
            Some(key) => {
                let secret = key.open(r.id, r.key_generation, &r.key)?;
                let previous = match &r.previous_key {
                    Some(p) => Some((
                        key.open(r.id, r.key_generation.saturating_sub(1), p)?,
                        r.previous_until_ms,
                    )),
                    None => None,
                };
                (secret, previous, false)
            }
            None => ([0; 32], None, true),
        };
        if let Some(old) = self
            .terminals
            .get(&r.id)
            .and_then(|t| t.record.as_ref().map(|o| o.serial.clone()))
        {
            self.serials.remove(&old);
        }
        self.serials.insert(r.serial.clone(), r.id);
        let info = r.terminal(secret);
        match self.terminals.entry(r.id) {
            dashmap::Entry::Occupied(mut o) => {
                let t = o.get_mut();
                t.info = info;
                t.record = Some(r);
                t.previous = previous;
                t.locked = locked;
            }
            dashmap::Entry::Vacant(v) => {
                let mut t = TerminalState::new(info);
                t.record = Some(r);
                t.previous = previous;
                t.locked = locked;
                v.insert(t);
            }
        }
        Ok(())
    }

    pub(crate) fn terminal_notices(&self) -> &tokio::sync::broadcast::Sender<u64> {
        &self.terminal_notices
    }

    pub(crate) fn terminal_key(&self) -> Option<&TerminalKey> {
        self.terminal_key.as_ref()
    }

    /// The terminal registered with this serial number, if any.
    pub(crate) fn terminal_of_serial(&self, serial: &str) -> Option<u64> {
        self.serials.get(serial).map(|t| *t)
    }

    pub(crate) fn merchant(&self, id: u64) -> Option<Merchant> {
        self.merchants.get(&id).map(|m| m.clone())
    }

    pub(crate) fn merchants(&self) -> Vec<Merchant> {
        let mut v: Vec<Merchant> = self.merchants.iter().map(|m| m.clone()).collect();
        v.sort_by_key(|m| m.id);
        v
    }

    /// Inserts or replaces a merchant; ids handed out later stay above it.
    pub(crate) fn put_merchant(&self, m: Merchant) {
        self.next_merchant_id.fetch_max(m.id + 1, Ordering::AcqRel);
        self.merchants.insert(m.id, m);
    }

    pub(crate) fn new_merchant_id(&self) -> u64 {
        self.next_merchant_id.fetch_add(1, Ordering::AcqRel)
    }

    pub(crate) fn door_group(&self, id: u64) -> Option<DoorGroup> {
        self.door_groups.get(&id).map(|g| g.clone())
    }

    pub(crate) fn door_groups(&self) -> Vec<DoorGroup> {
        let mut v: Vec<DoorGroup> = self.door_groups.iter().map(|g| g.clone()).collect();
        v.sort_by_key(|g| g.id);
        v
    }

    pub(crate) fn put_door_group(&self, g: DoorGroup) {
        self.next_door_group_id.fetch_max(g.id + 1, Ordering::AcqRel);
        self.door_groups.insert(g.id, g);
    }

    pub(crate) fn new_door_group_id(&self) -> u64 {
        self.next_door_group_id.fetch_add(1, Ordering::AcqRel)
    }

    pub(crate) fn handouts(&self) -> parking_lot::MutexGuard<'_, Vec<KeyHandout>> {
        self.handouts.lock()
    }

    pub(crate) fn stock(&self) -> parking_lot::MutexGuard<'_, StockBook> {
        self.stock.lock()
    }

    pub(crate) fn terminals_len(&self) -> usize {
        self.terminals.len()
    }

    pub(crate) fn for_each_terminal(&self, mut f: impl FnMut(&TerminalState)) {
        for t in self.terminals.iter() {
            f(&t);
        }
    }

    // ---- parameters, tx ids, the blacklist ---------------------------------------------

    pub(crate) fn params(&self) -> arc_swap::Guard<std::sync::Arc<Params>> {
        self.params.load()
    }

    pub(crate) fn set_params(&self, p: Params) {
        self.params.store(std::sync::Arc::new(p));
    }

    /// A new tx id for an approved money movement.
    pub(crate) fn new_tx_id(&self) -> u64 {
        self.next_tx_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Replay: a tx id an entry used is never handed out again.
    pub(crate) fn saw_tx_id(&self, tx_id: u64) {
        self.next_tx_id.fetch_max(tx_id + 1, Ordering::AcqRel);
    }

    pub(crate) fn access(&self) -> &AccessBook {
        &self.access
    }

    pub(crate) fn blacklist(&self) -> &Blacklist {
        &self.blacklist
    }

    // ---- persons, operators, grants, audit ----------------------------------------------

    pub(crate) fn person(&self, person_id: &str) -> Option<Person> {
        let account = *self.person_ids.get(person_id)?;
        self.persons.get(&account).map(|p| p.clone())
    }

    pub(crate) fn person_of_account(&self, account: u64) -> Option<Person> {
        self.persons.get(&account).map(|p| p.clone())
    }

    pub(crate) fn has_person(&self, person_id: &str) -> bool {
        self.person_ids.contains_key(person_id)
    }

    pub(crate) fn account_of_person(&self, person_id: &str) -> Option<u64> {
        self.person_ids.get(person_id).map(|a| *a)
    }

    pub(crate) fn put_person(&self, p: Person) {
        self.person_ids.insert(p.id.clone(), p.account);
        self.persons.insert(p.account, p);
    }

    pub(crate) fn persons_len(&self) -> usize {
        self.persons.len()
    }

    pub(crate) fn persons_where(&self, f: impl Fn(&Person) -> bool) -> Vec<Person> {
        self.persons.iter().filter(|p| f(p)).map(|p| p.clone()).collect()
    }

    pub(crate) fn operator(&self, id: u64) -> Option<Operator> {
        self.operators.get(&id).map(|o| o.clone())
    }

    pub(crate) fn operators(&self) -> Vec<Operator> {
        let mut v: Vec<Operator> = self.operators.iter().map(|o| o.clone()).collect();
        v.sort_by_key(|o| o.id);
        v
    }

    /// The enabled operator whose token hashes to `hash`.
    pub(crate) fn operator_by_token(&self, hash: &TokenHash) -> Option<Operator> {
        let id = *self.tokens.get(hash)?;
        self.operators.get(&id).filter(|o| o.enabled).map(|o| o.clone())
    }

    /// Inserts or replaces an operator; ids handed out later stay above it.
    pub(crate) fn put_operator(&self, o: Operator) {
        self.next_operator_id.fetch_max(o.id + 1, Ordering::AcqRel);
        if let Some(old) = self.operators.get(&o.id) {
            self.tokens.remove(&old.token_hash);
        }
        if o.enabled {
            self.tokens.insert(o.token_hash, o.id);
        }
        self.operators.insert(o.id, o);
    }

    pub(crate) fn password(&self, operator_id: u64) -> Option<PasswordRecord> {
        self.passwords.get(&operator_id).map(|p| p.clone())
    }

    pub(crate) fn put_password(&self, p: PasswordRecord) {
        self.passwords.insert(p.operator_id, p);
    }

    pub(crate) fn new_operator_id(&self) -> u64 {
        self.next_operator_id.fetch_add(1, Ordering::AcqRel)
    }

    pub(crate) fn grant(&self, batch_id: &str, account: u64) -> Option<GrantMark> {
        self.grants.get(&(batch_id.to_string(), account)).map(|g| g.clone())
    }

    pub(crate) fn put_grant(&self, g: GrantMark) {
        self.grants.insert((g.batch_id.clone(), g.account), g);
    }

    /// Inserts or replaces an exception; ids handed out later stay above it.
    /// When `card` joined the blacklist: `Some(i64::MIN)` when it is on it since before
    /// the gateway kept the time, `None` when it is not on it.
    pub(crate) fn listed_since(&self, card: CardNo) -> Option<i64> {
        if !self.blacklist.contains(card) {
            return None;
        }
        Some(self.listed_since.get(&card.0).map_or(i64::MIN, |t| *t))
    }

    pub(crate) fn set_listed_since(&self, card: CardNo, since: Option<i64>) {
        match since {
            Some(t) => {
                self.listed_since.insert(card.0, t);
            }
            None => {
                self.listed_since.remove(&card.0);
            }
        }
    }

    pub(crate) fn settlement_times(&self) -> parking_lot::MutexGuard<'_, std::collections::BTreeMap<i32, i64>> {
        self.settlement_times.lock()
    }

    pub(crate) fn settlements(&self) -> parking_lot::MutexGuard<'_, std::collections::BTreeMap<i32, SettlementClose>> {
        self.settlements.lock()
    }

    pub(crate) fn put_exception(&self, e: Exception) {
        self.next_exception_id.fetch_max(e.id + 1, Ordering::AcqRel);
        self.exceptions.insert(e.id, e);
    }

    pub(crate) fn new_exception_id(&self) -> u64 {
        self.next_exception_id.fetch_add(1, Ordering::AcqRel)
    }

    pub(crate) fn exception(&self, id: u64) -> Option<Exception> {
        self.exceptions.get(&id).map(|e| e.clone())
    }

    pub(crate) fn exceptions(&self) -> Vec<Exception> {
        let mut v: Vec<Exception> = self.exceptions.iter().map(|e| e.clone()).collect();
        v.sort_by_key(|e| e.id);
        v
    }

    pub(crate) fn answer(&self, operator_id: u64, key: &str) -> Option<IdempotentAnswer> {
        self.answers.get(&(operator_id, key.to_string())).map(|a| a.clone())
    }

    pub(crate) fn put_answer(&self, a: IdempotentAnswer) {
        self.answers.insert((a.operator_id, a.key.clone()), a);
    }

    /// Forgets the answers decided before `before_ms`; returns them.
    pub(crate) fn take_answers_before(&self, before_ms: i64) -> Vec<IdempotentAnswer> {
        let old: Vec<(u64, String)> = self
            .answers
            .iter()
            .filter(|a| a.time_ms < before_ms)
            .map(|a| (a.operator_id, a.key.clone()))
            .collect();
        old.into_iter()
            .filter_map(|k| self.answers.remove(&k).map(|(_, a)| a))
            .collect()
    }

    pub(crate) fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// A new audit record id.
    pub(crate) fn new_audit_id(&self) -> u64 {
        self.next_audit_id.fetch_add(1, Ordering::AcqRel)
    }

    /// Replay: an audit id an entry used is never handed out again.
    pub(crate) fn saw_audit_id(&self, id: u64) {
        self.next_audit_id.fetch_max(id + 1, Ordering::AcqRel);
    }

    // ---- desk locks --------------------------------------------------------------------

    /// Serializes desk changes among themselves; never held across an `.await`.
    pub(crate) fn desk_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.desk.lock()
    }

    /// One batch operation or import at a time, across its awaits.
    pub(crate) async fn batch_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.batches.lock().await
    }

    pub(crate) fn day_close(&self) -> parking_lot::MutexGuard<'_, Option<cardgate_domain::entry::DayClose>> {
        self.day_close.lock()
    }

    pub(crate) fn day_closing(&self) -> &tokio::sync::Mutex<()> {
        &self.day_closing
    }

    pub(crate) fn staged_imports(&self) -> parking_lot::MutexGuard<'_, Vec<(u64, u64, u32)>> {
        self.staged_imports.lock()
    }
}
