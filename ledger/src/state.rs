//! The ledger's state in memory: every record the gateway decides on, behind one owning
//! type whose fields nothing outside this file touches.
//!
//! Lock order, everywhere and never another: `batches` (async; one batch grant, batch
//! cancellation or import at a time, held across its awaits) → `desk` (a short mutex
//! that serializes desk changes among themselves, never held across an `.await`) → a
//! terminal's entry (write) → a card (read, or write for a desk change) → an account
//! (write) → the blacklist's lock. A purchase takes only terminal → card → account, so a
//! terminal never waits for a desk lock. No lock is held across an `.await`: the journal
//! slot (`Txn`) is reserved before the first one.
//!
//! The hot maps are sharded (`DashMap`, 256 shards, foldhash); parameters, read on
//! every purchase and changed rarely, are swapped whole (`ArcSwap`).

use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use cardgate_codec::CardNo;
use cardgate_domain::model::{Account, Card, GrantMark, Params, Person, SeqRecord, Terminal};
use cardgate_domain::operator::{Operator, TokenHash};
use dashmap::DashMap;
use dashmap::mapref::one::{Ref, RefMut};

use crate::audit::AuditLog;
use crate::blacklist::Blacklist;
use crate::records::{SEQ_SLOTS, seq_slot};

/// Shards of the hot maps: far more than cores, so that two connections rarely wait on
/// the same shard lock.
const MAP_SHARDS: usize = 256;

/// The hot maps. foldhash instead of the default SipHash: three lookups per purchase
/// were 8% of the gateway's CPU under load, and foldhash is still seeded per process,
/// so card numbers a terminal chooses cannot be aimed at one bucket.
pub(crate) type Map<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

fn new_map<K: Eq + std::hash::Hash, V>() -> Map<K, V> {
    DashMap::with_hasher_and_shard_amount(foldhash::fast::RandomState::default(), MAP_SHARDS)
}

/// A terminal's registration plus what the gateway remembers of its requests.
pub(crate) struct TerminalState {
    pub(crate) info: Terminal,
    pub(crate) last_seq: u64,
    slots: Box<[Option<SeqRecord>; SEQ_SLOTS]>,
    pub(crate) last_seen_ms: i64,
    /// The blacklist version the terminal last said it holds (not durable: live state).
    pub(crate) blacklist_acked: u64,
    /// Signed-on connections of this terminal right now.
    pub(crate) sessions: u32,
}

impl TerminalState {
    pub(crate) fn new(info: Terminal) -> TerminalState {
        TerminalState {
            info,
            last_seq: 0,
            slots: Box::new([None; SEQ_SLOTS]),
            last_seen_ms: 0,
            blacklist_acked: 0,
            sessions: 0,
        }
    }

    /// The outcome of `seq` as the protocol promises it to a request numbered `at`:
    /// remembered if and only if the terminal used `seq` and it is among the last
    /// `SEQ_SLOTS` numbers, counting `at` itself: `newest - SEQ_SLOTS < seq <= newest`
    /// with `newest = max(last_seq, at)`. A slot can still hold an older number (when
    /// the numbers that would have replaced it were skipped); it is not answered, so that
    /// a terminal can predict every answer from the numbers alone.
    pub(crate) fn answerable(&self, seq: u64, at: u64) -> Option<&SeqRecord> {
        let newest = self.last_seq.max(at);
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

    pub(crate) fn remember(&mut self, rec: SeqRecord) {
        self.last_seq = self.last_seq.max(rec.seq);
        self.slots[usize::from(seq_slot(rec.seq))] = Some(rec);
    }
}

/// What recovery found on disk, before replay.
#[derive(Default)]
pub(crate) struct Loaded {
    pub(crate) accounts: Vec<Account>,
    pub(crate) cards: Vec<Card>,
    pub(crate) terminals: Vec<Terminal>,
    pub(crate) seqs: Vec<SeqRecord>,
    pub(crate) params: Params,
    pub(crate) persons: Vec<Person>,
    pub(crate) operators: Vec<Operator>,
    pub(crate) blacklist: Vec<cardgate_domain::model::BlacklistChange>,
    pub(crate) audit: Vec<cardgate_domain::model::AuditRecord>,
    pub(crate) grants: Vec<GrantMark>,
    /// The highest tx id any committed entry used.
    pub(crate) tx_id_mark: u64,
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
    audit: AuditLog,
    grants: DashMap<(String, u64), GrantMark>,
    next_tx_id: AtomicU64,
    next_account_id: AtomicU64,
    next_operator_id: AtomicU64,
    next_audit_id: AtomicU64,
    desk: parking_lot::Mutex<()>,
    batches: tokio::sync::Mutex<()>,
    /// Imports whose staging keys remain: (commit entry id, import id, chunks).
    staged_imports: parking_lot::Mutex<Vec<(u64, u64, u32)>>,
}

impl State {
    pub(crate) fn new(load: Loaded) -> State {
        let accounts = new_map();
        let mut next_account_id = 1;
        for a in load.accounts {
            next_account_id = next_account_id.max(a.id + 1);
            accounts.insert(a.id, a);
        }
        let cards = new_map();
        for c in load.cards {
            cards.insert(c.no, c);
        }
        let terminals = new_map();
        for t in load.terminals {
            terminals.insert(t.id, TerminalState::new(t));
        }
        for r in load.seqs {
            if let Some(mut t) = terminals.get_mut(&r.terminal) {
                t.remember(r);
            }
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
            audit: AuditLog::new(load.audit),
            grants: DashMap::new(),
            next_tx_id: AtomicU64::new(load.tx_id_mark + 1),
            next_account_id: AtomicU64::new(next_account_id),
            next_operator_id: AtomicU64::new(1),
            next_audit_id: AtomicU64::new(1),
            desk: parking_lot::Mutex::new(()),
            batches: tokio::sync::Mutex::new(()),
            staged_imports: parking_lot::Mutex::new(Vec::new()),
        };
        state.next_audit_id.store(state.audit.last_id() + 1, Ordering::Release);
        for p in load.persons {
            state.put_person(p);
        }
        for o in load.operators {
            state.put_operator(o);
        }
        for g in load.grants {
            state.put_grant(g);
        }
        state
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

    pub(crate) fn new_operator_id(&self) -> u64 {
        self.next_operator_id.fetch_add(1, Ordering::AcqRel)
    }

    pub(crate) fn grant(&self, batch_id: &str, account: u64) -> Option<GrantMark> {
        self.grants.get(&(batch_id.to_string(), account)).map(|g| g.clone())
    }

    pub(crate) fn put_grant(&self, g: GrantMark) {
        self.grants.insert((g.batch_id.clone(), g.account), g);
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

    pub(crate) fn staged_imports(&self) -> parking_lot::MutexGuard<'_, Vec<(u64, u64, u32)>> {
        self.staged_imports.lock()
    }
}
