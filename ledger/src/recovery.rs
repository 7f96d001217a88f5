//! Recovery: the state records of the last checkpoint, then every journal entry after
//! it, applied by one `match` over every entry kind, so that the state is exactly the
//! durable state the gateway had before it stopped, cleanly or not.
//!
//! Replay must leave exactly what the live operation left, which is simple because of
//! one rule every entry keeps: **an entry carries the values it leaves, never a delta**
//! (a purchase records the balance and the day's spending after it; a card change the
//! whole new card record). Replaying an entry onto a newer record (a checkpoint cut
//! short by a crash wrote some records past `checkpoint_id`) converges to the same state.
//!
//! Every id counter is rebuilt from what replay sees (tx ids, account, operator and
//! audit ids through `State`'s `put_*`/`saw_*`), so that no id is handed out twice.
//!
//! What replay changed is handed to the committer as records waiting for its next
//! checkpoint (or, after an import's commit, checkpointed before the committer starts):
//! that checkpoint names a later entry id, and without them the replayed state would be
//! skipped by every later recovery. Until it is written the checkpoint id stays where it
//! was, and a crash replays the same entries again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use cardgate_codec::CardNo;
use cardgate_domain::access::{AccessRecord, AnswerSubject, CacheChange, CheckedAnswer, EventSource};
use cardgate_domain::entry::{EntryBody, EntryRecord, ImportItem, MoneyKind, MoneyMove, StockEntry, TxEntry};
use cardgate_domain::model::{GrantMark, Outcome, Params, SeqRecord, TxKind};
use cardgate_domain::money::from_fen;
use cardgate_journal::record::decode_record;
use cardgate_journal::store::{key_meta, meta as journal_meta};
use cardgate_journal::{CommitterHandle, Db, Schema, SledStore, Store, StoreError, checkpoint};

use crate::config::LedgerConfig;
use crate::error::LedgerError;
use crate::records::{
    Journal, LedgerSchema, PREFIX_ACCOUNT, PREFIX_ANSWER, PREFIX_AUDIT, PREFIX_BLACKLIST, PREFIX_CARD,
    PREFIX_DOOR_GROUP, PREFIX_EXCEPTION, PREFIX_GRANT, PREFIX_HANDOUT, PREFIX_MERCHANT, PREFIX_OPERATOR,
    PREFIX_PASSWORD, PREFIX_PERSON, PREFIX_SEQ, PREFIX_STAGED, PREFIX_STOCK_BATCH, PREFIX_STOCK_COUNT,
    PREFIX_STOCK_REMOVED, PREFIX_TERMINAL, PREFIX_TERMINAL_RECORD, StateWrite, StockRemoved, meta,
};
use crate::records::{
    ListedSince, PREFIX_ACCESS, PREFIX_GAPS, PREFIX_LISTED, PREFIX_OFFLINE_DAYS, PREFIX_SETTLEMENT,
    PREFIX_SETTLEMENT_TIME, SettlementTime, seq_record_of, staged_key,
};
use crate::state::{Loaded, State};

/// Entries read per step of replay.
const REPLAY_CHUNK: usize = 16 * 1024;

/// What recovery found, for the start-up log.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecoveryStats {
    /// The entry id the loaded checkpoint reflects.
    pub checkpoint_id: u64,
    /// Entries replayed after the checkpoint.
    pub replayed: u64,
    pub accounts: usize,
    pub cards: usize,
    pub terminals: usize,
    pub next_entry_id: u64,
    pub millis: u128,
    /// Of `millis`: reading the checkpoint's records into memory.
    pub load_millis: u128,
    /// Of `millis`: replaying the entries after it.
    pub replay_millis: u128,
}

pub(crate) struct Recovered {
    pub(crate) state: State,
    pub(crate) journal: Journal,
    pub(crate) committer: CommitterHandle,
    pub(crate) db: Db,
    pub(crate) gateway_id: u64,
    pub(crate) stats: RecoveryStats,
}

pub(crate) fn recover(
    dir: &Path,
    config: &LedgerConfig,
    wrap: impl FnOnce(SledStore) -> Box<dyn Store>,
) -> Result<Recovered, LedgerError> {
    let mut stats = RecoveryStats::default();
    let started = std::time::Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| LedgerError::Io(dir.display().to_string(), e))?;
    let db = Db::open(dir)?;

    // The checkpoint: every state record as of entry `checkpoint_id`.
    let checkpoint_id = db.get_meta_u64(journal_meta::CHECKPOINT_ID)?.unwrap_or(0);
    let mut seqs = Vec::new();
    for records in db.scan::<Vec<SeqRecord>>(&[PREFIX_SEQ]) {
        seqs.extend(records?);
    }
    let mut state = State::new(
        Loaded {
            accounts: db.scan(&[PREFIX_ACCOUNT]).collect::<Result<_, _>>()?,
            terminals: db.scan(&[PREFIX_TERMINAL]).collect::<Result<_, _>>()?,
            seqs,
            params: db.get_record::<Params>(&key_meta(meta::PARAMS))?.unwrap_or_default(),
            persons: db.scan(&[PREFIX_PERSON]).collect::<Result<_, _>>()?,
            operators: db.scan(&[PREFIX_OPERATOR]).collect::<Result<_, _>>()?,
            blacklist: db.scan(&[PREFIX_BLACKLIST]).collect::<Result<_, _>>()?,
            audit: db.scan(&[PREFIX_AUDIT]).collect::<Result<_, _>>()?,
            grants: db.scan(&[PREFIX_GRANT]).collect::<Result<_, _>>()?,
            exceptions: db.scan(&[PREFIX_EXCEPTION]).collect::<Result<_, _>>()?,
            answers: db.scan(&[PREFIX_ANSWER]).collect::<Result<_, _>>()?,
            terminal_records: db.scan(&[PREFIX_TERMINAL_RECORD]).collect::<Result<_, _>>()?,
            merchants: db.scan(&[PREFIX_MERCHANT]).collect::<Result<_, _>>()?,
            door_groups: db.scan(&[PREFIX_DOOR_GROUP]).collect::<Result<_, _>>()?,
            handouts: db.scan(&[PREFIX_HANDOUT]).collect::<Result<_, _>>()?,
            stock_batches: db.scan(&[PREFIX_STOCK_BATCH]).collect::<Result<_, _>>()?,
            stock_removed: db.scan(&[PREFIX_STOCK_REMOVED]).collect::<Result<_, _>>()?,
            stock_counts: db.scan(&[PREFIX_STOCK_COUNT]).collect::<Result<_, _>>()?,
            passwords: db.scan(&[PREFIX_PASSWORD]).collect::<Result<_, _>>()?,
            gaps: db.scan(&[PREFIX_GAPS]).collect::<Result<_, _>>()?,
            offline_days: db.scan(&[PREFIX_OFFLINE_DAYS]).collect::<Result<_, _>>()?,
            listed_since: listed_since(&db)?,
            settlements: db.scan(&[PREFIX_SETTLEMENT]).collect::<Result<_, _>>()?,
            settlement_times: db.scan(&[PREFIX_SETTLEMENT_TIME]).collect::<Result<_, _>>()?,
            tx_id_mark: db.get_meta_u64(journal_meta::MARK)?.unwrap_or(0),
            day_close: db.get_record(&key_meta(meta::DAY_CLOSED))?,
            access: db.scan(&[PREFIX_ACCESS]).collect::<Result<_, _>>()?,
        },
        config.terminal_key.clone(),
    )?;
    state.load_cards(db.scan(&[PREFIX_CARD]).collect::<Result<_, _>>()?);
    stats.load_millis = started.elapsed().as_millis();

    // Then every entry after it, in order.
    let mut replay = Replay {
        state: &state,
        db: &db,
        tz_offset_minutes: config.tz_offset_minutes,
        touched: Touched::default(),
        staged: HashMap::new(),
        imports_applied: false,
    };
    let mut after = checkpoint_id;
    loop {
        let entries = db.read_entries(after, REPLAY_CHUNK, EntryRecord::decode)?;
        let Some(last) = entries.last() else { break };
        assert!(last.id > after, "the journal reads forward");
        after = last.id;
        for e in &entries {
            replay.apply(&e.record)?;
        }
        stats.replayed += entries.len() as u64;
    }
    state.access().refresh_ids();
    stats.replay_millis = started.elapsed().as_millis() - stats.load_millis;
    let mut store = db.store()?;
    rewrite_slot_answers(&db, &mut store)?;
    // What replay changed waits for the committer's next checkpoint, written off the
    // start-up path like any commit's records (a checkpoint here cost a second of
    // start-up with a million accounts after a crash). Except after an import's commit:
    // its chunks' staging keys go below, and only a checkpoint covering the commit may
    // let them go, so that one is written now.
    let mut checkpoint_id = checkpoint_id;
    let mut replayed_records = Vec::new();
    if after > checkpoint_id && config.checkpoints.enabled {
        let touched = replay.touched_records();
        if replay.imports_applied {
            checkpoint::write_now::<LedgerSchema>(&db, &mut store, &touched, after)?;
            checkpoint_id = after;
        } else {
            replayed_records = touched;
        }
    }
    if !replay.staged.is_empty() {
        tracing::warn!(
            imports = replay.staged.len(),
            "imports cut short by a crash were not applied"
        );
    }
    if config.checkpoints.enabled {
        // Every import is now applied and checkpointed, or abandoned: no replay needs a
        // staging key any more. Not synced; one that comes back after a crash goes next
        // time.
        for kv in db.tree.scan_prefix([PREFIX_STAGED]) {
            let (k, _) = kv.map_err(StoreError::from)?;
            db.tree.remove(k).map_err(StoreError::from)?;
        }
    }
    // Only the listed cards: a copy of every card would be ~50 MiB more at the peak.
    let mut cards = Vec::new();
    state.for_each_card(|c| {
        if cardgate_domain::rules::card::listed(c.status) {
            cards.push(*c);
        }
    });
    state.blacklist().rebuild(cards.into_iter());
    let next_entry_id = db
        .get_meta_u64(journal_meta::NEXT_ENTRY_ID)?
        .unwrap_or(1)
        .max(after + 1);
    stats.accounts = state.accounts_len();
    stats.cards = state.cards_len();
    stats.terminals = state.terminals_len();
    stats.next_entry_id = next_entry_id;
    stats.checkpoint_id = checkpoint_id;

    let gateway_id = match db.get_meta_u64(meta::GATEWAY_ID)? {
        Some(id) => id,
        None => {
            // Written before the committer starts; made durable by its first sync.
            let id = rand::random::<u64>() >> 1;
            db.tree
                .insert(key_meta(meta::GATEWAY_ID), id.to_be_bytes().to_vec())
                .map_err(StoreError::from)?;
            id
        }
    };

    let (journal, committer) = Journal::start_after_replay(
        db.clone(),
        wrap(store),
        next_entry_id,
        checkpoint_id,
        config.checkpoints,
        replayed_records,
        stats.replayed,
    )?;
    stats.millis = started.elapsed().as_millis();
    Ok(Recovered {
        state,
        journal,
        committer,
        db,
        gateway_id,
        stats,
    })
}

/// The blacklist join times kept in the checkpoint, by card.
fn listed_since(db: &Db) -> Result<Vec<(u64, i64)>, LedgerError> {
    let mut out = Vec::new();
    for kv in db.tree.scan_prefix([PREFIX_LISTED]) {
        let (k, v) = kv.map_err(StoreError::from)?;
        let rec: ListedSince = decode_record(&k, &v)?;
        if let (Some(since), Some(card)) = (rec.since_ms, k.get(1..9)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(card);
            out.push((u64::from_be_bytes(b), since));
        }
    }
    Ok(out)
}

/// Records replay changed. Accounts, cards, terminals, remembered outcomes and
/// parameters are noted by key and written as they are at the end of replay (later
/// entries may change them again); the other records are kept as replayed, the newest
/// written last.
#[derive(Default)]
struct Touched {
    accounts: HashSet<u64>,
    cards: HashSet<CardNo>,
    terminals: HashSet<u64>,
    slots: HashSet<(u64, u64)>,
    /// Terminals whose gaps replay changed.
    gaps: HashSet<u64>,
    /// Terminals whose offline spending replay changed, with the latest day it saw.
    offline_days: HashMap<u64, i32>,
    params: bool,
    others: Vec<StateWrite>,
}

/// Data written before controllers' answers were stored one record per controller
/// (`AccessRecord::Answers`) holds them one key per slot (`'I' 'r'`): rewritten as one
/// record per controller and the old keys removed, in one atomic and durable batch, so
/// that a checkpoint never finds both. Memory already holds them (`AccessBook::new`
/// reads either form); this changes only how they are stored. Nothing to do after the
/// first start of a build that has `Answers`.
fn rewrite_slot_answers(db: &Db, store: &mut dyn Store) -> Result<(), LedgerError> {
    let mut old_keys = Vec::new();
    let mut answers = Vec::new();
    for kv in db.tree.scan_prefix([PREFIX_ACCESS, b'r']) {
        let (k, v) = kv.map_err(StoreError::from)?;
        match decode_record::<AccessRecord>(&k, &v)? {
            r @ AccessRecord::Answer(_) => answers.push(StateWrite::Access(Box::new(r))),
            other => {
                return Err(StoreError::Corrupt {
                    key: k.to_vec(),
                    reason: format!("a remembered answer's key holds {other:?}"),
                }
                .into());
            }
        }
        old_keys.push(k);
    }
    if old_keys.is_empty() {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    let merged = LedgerSchema::checkpoint_writes(&db.tree, answers.iter())?;
    let controllers = merged.len();
    checkpoint::add_writes(&mut batch, merged);
    for k in &old_keys {
        batch.remove(k.clone());
    }
    store.apply(batch)?;
    store.sync()?;
    tracing::info!(
        controllers,
        answers = old_keys.len(),
        "door controllers' remembered answers rewritten as one record per controller"
    );
    Ok(())
}

/// The state being rebuilt, and the one function that applies a journal entry to it.
struct Replay<'a> {
    state: &'a State,
    db: &'a Db,
    tz_offset_minutes: i32,
    touched: Touched,
    /// Import chunks waiting for their commit entry.
    staged: HashMap<u64, BTreeMap<u32, Vec<ImportItem>>>,
    /// An import's commit was replayed.
    imports_applied: bool,
}

impl Replay<'_> {
    /// Applies one entry exactly as the live operation left the state.
    fn apply(&mut self, rec: &EntryRecord) -> Result<(), LedgerError> {
        let s = self.state;
        match &rec.body {
            EntryBody::Tx(t) => self.tx(t, rec.time_ms),
            EntryBody::AccountOpened(a) => self.account(*a),
            EntryBody::CardIssued(c) => self.card(*c),
            EntryBody::TerminalRegistered(t) => {
                s.put_terminal(t.clone());
                self.touched.terminals.insert(t.id);
            }
            EntryBody::ParamsSet(p) => self.params(*p),
            EntryBody::ParamsChanged(e) => self.params(e.params),
            EntryBody::PersonOpened(e) => {
                self.account(e.account);
                self.person(e.person.clone());
            }
            EntryBody::PersonUpdated(e) => {
                self.person(e.person.clone());
                if let Some(mut a) = s.account_mut(e.person.account) {
                    a.kind = e.kind;
                }
                self.touched.accounts.insert(e.person.account);
            }
            EntryBody::CardChanged(e) => {
                for c in &e.cards {
                    self.card(*c);
                }
                if let Some(left) = e.account {
                    if let Some(mut a) = s.account_mut(left.id) {
                        a.status = left.status;
                        a.balance = from_fen(left.balance_fen);
                    }
                    self.touched.accounts.insert(left.id);
                }
                if let Some(m) = &e.money {
                    self.money(m);
                }
                for c in &e.blacklist {
                    s.blacklist().replay(*c);
                    self.touched.others.push(StateWrite::Blacklist(*c));
                    let since = c.listed.then_some(rec.time_ms);
                    s.set_listed_since(c.card, since);
                    self.touched.others.push(StateWrite::Listed(c.card, since));
                }
            }
            EntryBody::Money(e) => {
                self.money(&e.movement);
                if let (MoneyKind::Grant, Some(batch)) = (e.movement.kind, &e.batch_id) {
                    let mark = GrantMark {
                        batch_id: batch.clone(),
                        account: e.movement.account,
                        amount_fen: e.movement.amount_fen,
                        tx_id: e.movement.tx_id,
                    };
                    s.put_grant(mark.clone());
                    self.touched.others.push(StateWrite::Grant(Box::new(mark)));
                }
            }
            EntryBody::OperatorSet(e) => {
                s.put_operator(e.operator.clone());
                self.touched
                    .others
                    .push(StateWrite::Operator(Box::new(e.operator.clone())));
            }
            EntryBody::ImportChunk(c) => {
                self.staged
                    .entry(c.import_id)
                    .or_default()
                    .insert(c.index, c.items.clone());
            }
            EntryBody::ImportCommitted(m) => {
                self.imports_applied = true;
                let mut staged = self.staged.remove(&m.import_id).unwrap_or_default();
                for index in 0..m.chunks {
                    let items = match staged.remove(&index) {
                        Some(items) => items,
                        // The chunk precedes the checkpoint: it is under its staging key.
                        None => self.staged_chunk(m.import_id, index)?,
                    };
                    for item in items {
                        match item {
                            ImportItem::Add { person, account, card } => {
                                self.account(account);
                                self.card(card);
                                self.person(person);
                            }
                            ImportItem::Update { person } => self.person(person),
                        }
                    }
                }
            }
            EntryBody::Audit(a) => {
                s.saw_audit_id(a.id);
                s.audit().insert(a.as_ref().clone());
                self.touched.others.push(StateWrite::Audit(a.clone()));
            }
            EntryBody::Exception(e) => {
                s.put_exception(e.as_ref().clone());
                self.touched.others.push(StateWrite::Exception(e.clone()));
            }
            EntryBody::IdempotentAnswer(a) => {
                s.put_answer(a.as_ref().clone());
                self.touched.others.push(StateWrite::Answer(a.clone()));
            }
            EntryBody::MerchantSet(e) => {
                s.put_merchant(e.merchant.clone());
                self.touched
                    .others
                    .push(StateWrite::Merchant(Box::new(e.merchant.clone())));
            }
            EntryBody::DoorGroupSet(e) => {
                s.put_door_group(e.group.clone());
                self.touched
                    .others
                    .push(StateWrite::DoorGroup(Box::new(e.group.clone())));
            }
            EntryBody::TerminalSet(e) => {
                s.put_terminal_record(e.terminal.clone())?;
                self.touched
                    .others
                    .push(StateWrite::TerminalRecord(Box::new(e.terminal.clone())));
                if let Some(h) = &e.handout {
                    s.handouts().push(h.clone());
                    self.touched.others.push(StateWrite::Handout(Box::new(h.clone())));
                }
            }
            EntryBody::Stock(e) => {
                let mut stock = s.stock();
                match e.as_ref() {
                    StockEntry::Received(b) => {
                        if !stock.batches.iter().any(|x| x.id == b.id) {
                            stock.batches.push(b.clone());
                        }
                        self.touched.others.push(StateWrite::StockBatch(Box::new(b.clone())));
                    }
                    StockEntry::Removed {
                        how,
                        cards,
                        note,
                        time_ms,
                        ..
                    } => {
                        for card in cards {
                            let r = StockRemoved {
                                card: *card,
                                how: *how,
                                note: note.clone(),
                                time_ms: *time_ms,
                            };
                            stock.removed.insert(card.0, r.clone());
                            self.touched.others.push(StateWrite::StockRemoved(Box::new(r)));
                        }
                    }
                    StockEntry::Counted(c) => {
                        if !stock.counts.iter().any(|x| x.id == c.id) {
                            stock.counts.push(c.clone());
                        }
                        self.touched.others.push(StateWrite::StockCount(Box::new(c.clone())));
                    }
                }
            }
            EntryBody::PasswordSet(e) => {
                s.put_password(e.password.clone());
                self.touched
                    .others
                    .push(StateWrite::Password(Box::new(e.password.clone())));
            }
            EntryBody::DayClosed(c) => {
                *s.day_close() = Some(c.as_ref().clone());
                self.touched.others.push(StateWrite::DayClosed(c.clone()));
            }
            // Live state only: sessions are not open after a restart.
            EntryBody::TerminalSession(_) => {}
            EntryBody::SettlementClosed(d) => {
                s.settlements().insert(d.day, d.as_ref().clone());
                self.touched.others.push(StateWrite::Settlement(d.clone()));
                // The close's own entry says when it was made.
                s.settlement_times().insert(d.day, rec.time_ms);
                self.touched.others.push(StateWrite::SettlementTime(SettlementTime {
                    day: d.day,
                    closed_ms: rec.time_ms,
                }));
            }
            EntryBody::DoorSet(e) => {
                self.access(AccessRecord::Door(e.door.clone()));
                self.cache_changes(&e.cache);
            }
            EntryBody::ScheduleSet(e) => {
                self.access(AccessRecord::Schedule(e.schedule.clone()));
                self.cache_changes(&e.cache);
            }
            EntryBody::HolidaysSet(e) => {
                self.access(AccessRecord::Holidays(e.holidays.clone()));
                self.cache_changes(&e.cache);
            }
            EntryBody::PermissionSet(e) => {
                self.access(AccessRecord::Permission(e.permission.clone()));
                self.cache_changes(&e.cache);
            }
            EntryBody::DoorCacheMoved(e) => self.cache_changes(&e.cache),
            EntryBody::GroupAccessSet(e) => {
                self.access(AccessRecord::Group(e.access));
                self.cache_changes(&e.cache);
            }
            EntryBody::DoorEvents(e) => {
                for p in e.events.iter().filter_map(|ev| ev.passback) {
                    self.access(AccessRecord::Passback(p));
                }
                self.access(AccessRecord::Controller(e.controller.clone()));
                // What online checks and punches were answered: a retry after this
                // restart gets the same answer.
                let online = e.events.iter().filter(|ev| ev.source == EventSource::Online);
                let answers = online
                    .map(|ev| {
                        let subject = AnswerSubject::check(ev.card.0, ev.door, ev.direction);
                        (ev.terminal, ev.event_seq, ev.reason, subject)
                    })
                    .chain(e.punches.iter().map(|p| {
                        let subject = AnswerSubject::punch(p.card.0);
                        (p.terminal, p.event_seq, u16::from(p.status), subject)
                    }));
                for (terminal, event_seq, answer, subject) in answers {
                    self.access(AccessRecord::CheckedAnswer(CheckedAnswer {
                        terminal,
                        event_seq,
                        answer,
                        subject: Some(subject),
                    }));
                }
            }
        }
        Ok(())
    }

    /// A door access record as an entry left it, through the live path's own setter.
    fn access(&mut self, r: AccessRecord) {
        self.state.access().apply(&r);
        self.touched.others.push(StateWrite::Access(Box::new(r)));
    }

    fn cache_changes(&mut self, changes: &[CacheChange]) {
        for c in changes {
            let g = {
                let mut config = self.state.access().write();
                config.log_change(c.clone());
                let mut g = config.group(c.group);
                g.cache_version = g.cache_version.max(c.version);
                config.groups.insert(c.group, g);
                g
            };
            self.touched
                .others
                .push(StateWrite::Access(Box::new(AccessRecord::Change(c.clone()))));
            self.touched
                .others
                .push(StateWrite::Access(Box::new(AccessRecord::Group(g))));
        }
    }

    fn tx(&mut self, t: &TxEntry, time_ms: i64) {
        let s = self.state;
        if let Some(mut term) = s.terminal_mut(t.terminal) {
            if term.remember(seq_record_of(t, time_ms)) {
                self.touched.gaps.insert(t.terminal);
            }
            // A posted offline sale counts on the day of the time it was judged on (the
            // entry keeps it), as it did live.
            if t.kind == TxKind::OfflinePurchase && matches!(t.outcome, Outcome::Approved { .. }) {
                let tz = self.tz_offset_minutes;
                term.add_offline_spending(
                    t.card.0,
                    cardgate_domain::clock::business_day(t.terminal_time_ms, tz),
                    t.amount_fen,
                );
                let today = cardgate_domain::clock::business_day(time_ms, tz);
                let latest = self.touched.offline_days.entry(t.terminal).or_insert(today);
                *latest = (*latest).max(today);
            }
            self.touched.slots.insert((t.terminal, t.seq));
            if t.kind == TxKind::Reversal
                && matches!(t.outcome, Outcome::Approved { .. })
                && let Some(original) = term.recent_mut(t.original_seq)
            {
                original.reversed_by = Some(t.seq);
                self.touched.slots.insert((t.terminal, t.original_seq));
            }
        }
        if let Outcome::Approved {
            tx_id,
            balance_after_fen,
        } = t.outcome
        {
            s.saw_tx_id(tx_id);
            if let Some(mut a) = s.account_mut(t.account) {
                a.balance = from_fen(balance_after_fen);
                a.spent_today = from_fen(t.spent_today_after_fen);
                a.day = cardgate_domain::clock::business_day(time_ms, self.tz_offset_minutes);
            }
            self.touched.accounts.insert(t.account);
        }
    }

    fn money(&mut self, m: &MoneyMove) {
        self.state.saw_tx_id(m.tx_id);
        if let Some(mut a) = self.state.account_mut(m.account) {
            a.balance = from_fen(m.balance_after_fen);
        }
        self.touched.accounts.insert(m.account);
    }

    fn account(&mut self, a: cardgate_domain::model::Account) {
        self.touched.accounts.insert(a.id);
        self.state.put_account(a);
    }

    fn card(&mut self, c: cardgate_domain::model::Card) {
        self.touched.cards.insert(c.no);
        self.state.put_card(c);
    }

    fn person(&mut self, p: cardgate_domain::model::Person) {
        self.touched.others.push(StateWrite::Person(Box::new(p.clone())));
        self.state.put_person(p);
    }

    fn params(&mut self, p: Params) {
        self.state.set_params(p);
        self.touched.params = true;
    }

    fn staged_chunk(&self, import_id: u64, index: u32) -> Result<Vec<ImportItem>, LedgerError> {
        let key = staged_key(import_id, index);
        let bytes = self
            .db
            .tree
            .get(key)
            .map_err(StoreError::from)?
            .ok_or_else(|| StoreError::Corrupt {
                key: key.to_vec(),
                reason: format!("import {import_id} chunk {index} is missing"),
            })?;
        Ok(decode_record::<Vec<ImportItem>>(&key, &bytes)?)
    }

    /// The current value of every record replay changed.
    fn touched_records(&self) -> Vec<StateWrite> {
        let (s, t) = (self.state, &self.touched);
        let mut out = Vec::with_capacity(t.accounts.len() + t.cards.len() + t.terminals.len() + t.slots.len() + 1);
        out.extend(
            t.accounts
                .iter()
                .filter_map(|id| s.account(*id))
                .map(StateWrite::Account),
        );
        out.extend(t.cards.iter().filter_map(|no| s.card(*no)).map(StateWrite::Card));
        out.extend(
            t.terminals
                .iter()
                .filter_map(|id| s.terminal(*id).map(|t| StateWrite::Terminal(Box::new(t.info.clone())))),
        );
        out.extend(t.slots.iter().filter_map(|(id, seq)| {
            s.terminal(*id)
                .and_then(|t| t.recent(*seq).copied())
                .map(StateWrite::Seq)
        }));
        out.extend(
            t.gaps
                .iter()
                .filter_map(|id| s.terminal(*id).map(|t| StateWrite::Gaps(Box::new(t.gaps_record())))),
        );
        out.extend(t.offline_days.iter().filter_map(|(id, today)| {
            s.terminal_mut(*id)
                .map(|mut t| StateWrite::OfflineDays(Box::new(t.offline_days_record(*today))))
        }));
        if t.params {
            out.push(StateWrite::Params(Box::new(**s.params())));
        }
        out.extend(t.others.iter().cloned());
        out
    }
}
