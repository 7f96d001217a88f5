//! The ledger: accounts, cards and terminals in memory, decisions made against them,
//! and every decision journaled before it is answered.
//!
//! A money request is decided under three short locks taken in one fixed order, the
//! terminal's entry, then the card (read), then the account, and never held across an
//! `.await`. The journal slot is reserved before the locks are taken and the submission
//! is sent while the account is still locked, so the journal holds each account's
//! changes in the order they were made. The caller gets a `Pending` whose answer it may
//! send only once the committer reports the submission durable.
//!
//! Idempotency: a terminal's transaction sequence numbers strictly increase. Each
//! terminal remembers the outcome of sequence number `s` in slot `s % SEQ_SLOTS`, so the
//! last `SEQ_SLOTS` numbers are always answerable (a retry gets its first answer, a
//! reversal finds its purchase) and memory per terminal is fixed. The slots are
//! checkpointed and rebuilt by replay like every other record, so this holds across
//! restarts. Nothing on the decision path reads sled.
//!
//! Recovery loads the last checkpoint and replays the journal entries after it with
//! `replay`, which must leave exactly the state the live decisions left: every entry
//! carries the resulting values (balance after, spending after), never deltas.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use cardgate_codec::{
    Approved, Balance, CardNo, CardStatusCode, DeclineReason, Declined, Message, Purchase, Reversal, TerminalSecret,
};
use dashmap::DashMap;
use rust_decimal::Decimal;
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, business_day};
use crate::desk::{DeskLoad, DeskState};
use crate::entry::{EntryBody, EntryRecord, TxEntry};
use crate::error::LedgerError;
use crate::import::ImportItem;
use crate::journal::{
    CheckpointPolicy, CommitResult, CommitterHandle, Journal, JournalError, StateWrite, Submission, Writes,
};
use crate::model::{Account, AccountStatus, Card, Outcome, Params, SeqRecord, Terminal, TerminalKind, TxKind};
use crate::money::{AMOUNT_FEN_MAX, from_fen, to_fen};
use crate::store::{
    Db, PREFIX_ACCOUNT, PREFIX_AUDIT, PREFIX_BLACKLIST, PREFIX_CARD, PREFIX_GRANT, PREFIX_OPERATOR, PREFIX_PERSON,
    PREFIX_SEQ, PREFIX_STAGED, PREFIX_TERMINAL, SledStore, Store, key_meta, meta,
};

/// Outcomes remembered per terminal. A terminal has at most `pipeline_depth_max` (at
/// most this many) requests unanswered per connection, so every retry finds its answer;
/// a POS reversal undoes one of the terminal's last `SEQ_SLOTS` transactions.
pub const SEQ_SLOTS: usize = 32;

/// The slot that remembers sequence number `seq`.
pub fn seq_slot(seq: u64) -> u8 {
    (seq % SEQ_SLOTS as u64) as u8
}

const _: () = assert!(SEQ_SLOTS <= 256, "slots are addressed by a byte");

/// Shards of the hot maps: far more than cores, so that two connections rarely wait on
/// the same shard lock.
const MAP_SHARDS: usize = 256;

/// The hot maps. foldhash instead of the default SipHash: three lookups per purchase
/// were 8% of the gateway's CPU under load, and foldhash is still seeded per process,
/// so card numbers a terminal chooses cannot be aimed at one bucket.
pub type Map<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

fn new_map<K: Eq + std::hash::Hash, V>() -> Map<K, V> {
    DashMap::with_hasher_and_shard_amount(foldhash::fast::RandomState::default(), MAP_SHARDS)
}

#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Local time offset from UTC for the business day (UTC+8: 480).
    pub tz_offset_minutes: i32,
    pub checkpoints: CheckpointPolicy,
}

impl Default for LedgerConfig {
    fn default() -> LedgerConfig {
        LedgerConfig {
            tz_offset_minutes: 480,
            checkpoints: CheckpointPolicy::default(),
        }
    }
}

/// A terminal's registration plus what the gateway remembers of its requests.
pub struct TerminalState {
    pub info: Terminal,
    pub last_seq: u64,
    slots: Box<[Option<SeqRecord>; SEQ_SLOTS]>,
    pub last_seen_ms: i64,
    /// The blacklist version the terminal last said it holds (not durable: live state).
    pub blacklist_acked: u64,
    /// Signed-on connections of this terminal right now.
    pub sessions: u32,
}

impl TerminalState {
    fn new(info: Terminal) -> TerminalState {
        TerminalState {
            info,
            last_seq: 0,
            slots: Box::new([None; SEQ_SLOTS]),
            last_seen_ms: 0,
            blacklist_acked: 0,
            sessions: 0,
        }
    }

    fn recent(&self, seq: u64) -> Option<&SeqRecord> {
        self.slots[usize::from(seq_slot(seq))].as_ref().filter(|r| r.seq == seq)
    }

    fn recent_mut(&mut self, seq: u64) -> Option<&mut SeqRecord> {
        self.slots[usize::from(seq_slot(seq))].as_mut().filter(|r| r.seq == seq)
    }

    fn remember(&mut self, rec: SeqRecord) {
        self.last_seq = self.last_seq.max(rec.seq);
        self.slots[usize::from(seq_slot(rec.seq))] = Some(rec);
    }
}

/// A money request as the ledger sees it.
#[derive(Clone, Copy, Debug)]
struct Request {
    kind: TxKind,
    seq: u64,
    card: CardNo,
    amount_fen: i64,
    original_seq: u64,
    terminal_time_ms: i64,
}

/// An answer that may be sent once `wait` reports durability.
#[must_use = "an answer must wait for its commit"]
pub struct Pending {
    answer: Message,
    wait: Option<oneshot::Receiver<CommitResult>>,
}

impl Pending {
    /// An answer that needs no commit (it observed nothing that could be undurable).
    pub fn ready(answer: Message) -> Pending {
        Pending { answer, wait: None }
    }

    /// An answer to send once `wait` (a barrier or a commit) completes.
    pub(crate) fn after(answer: Message, wait: oneshot::Receiver<CommitResult>) -> Pending {
        Pending {
            answer,
            wait: Some(wait),
        }
    }

    /// The answer, once the decision (or everything it observed) is durable; "system
    /// error" if the journal failed.
    pub async fn resolve(self) -> Message {
        self.await
    }
}

/// Polling a `Pending` waits for its commit, so a connection can keep its unanswered
/// requests in a plain queue and await the oldest.
impl std::future::Future for Pending {
    type Output = Message;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Message> {
        let this = &mut *self;
        let answer = this.answer;
        match &mut this.wait {
            None => std::task::Poll::Ready(answer),
            Some(wait) => match std::pin::Pin::new(wait).poll(cx) {
                std::task::Poll::Ready(Ok(Ok(_))) => {
                    this.wait = None;
                    std::task::Poll::Ready(answer)
                }
                std::task::Poll::Ready(_) => {
                    this.wait = None;
                    this.answer = system_error_for(&answer);
                    std::task::Poll::Ready(this.answer)
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            },
        }
    }
}

fn system_error_for(answer: &Message) -> Message {
    let (tx_seq, card, time_ms) = match answer {
        Message::Approved(a) => (a.tx_seq, a.card, a.time_ms),
        Message::Declined(d) => (d.tx_seq, d.card, d.time_ms),
        Message::Balance(b) => (0, b.card, 0),
        _ => (0, CardNo(0), 0),
    };
    Message::Declined(Declined {
        tx_seq,
        card,
        reason: DeclineReason::SystemError,
        balance_fen: 0,
        time_ms,
    })
}

/// The answer a remembered outcome gives.
pub fn answer_of(rec: &SeqRecord) -> Message {
    match rec.outcome {
        Outcome::Approved {
            tx_id,
            balance_after_fen,
        } => Message::Approved(Approved {
            tx_seq: rec.seq,
            tx_id,
            card: rec.card,
            amount_fen: rec.amount_fen,
            balance_fen: balance_after_fen,
            time_ms: rec.time_ms,
        }),
        Outcome::Declined { reason, balance_fen } => Message::Declined(Declined {
            tx_seq: rec.seq,
            card: rec.card,
            reason: DeclineReason::from_code(reason).unwrap_or(DeclineReason::SystemError),
            balance_fen,
            time_ms: rec.time_ms,
        }),
    }
}

fn fen(value: Decimal) -> i64 {
    to_fen(value).expect("ledger amounts are whole fen within i64")
}

pub struct Ledger {
    pub(crate) accounts: Map<u64, Account>,
    pub(crate) cards: Map<CardNo, Card>,
    pub(crate) terminals: Map<u64, TerminalState>,
    pub(crate) params: ArcSwap<Params>,
    journal: Journal,
    db: Db,
    pub(crate) next_tx_id: AtomicU64,
    /// Persons, operators, the blacklist, the audit trail (`desk.rs`).
    pub(crate) desk: DeskState,
    gateway_id: u64,
    config: LedgerConfig,
    clock: Arc<dyn Clock>,
}

/// Entries read per step of replay.
const REPLAY_CHUNK: usize = 16 * 1024;

/// The maps being rebuilt, and the one function that applies a journal entry to them.
pub(crate) struct Recovered<'a> {
    pub(crate) accounts: &'a Map<u64, Account>,
    pub(crate) cards: &'a Map<CardNo, Card>,
    terminals: &'a Map<u64, TerminalState>,
    pub(crate) params: &'a mut Params,
    pub(crate) next_tx_id: &'a mut u64,
    tz_offset_minutes: i32,
    /// Records replay changed. They are checkpointed before the committer starts: the
    /// next checkpoint will name a later entry id, and recovery would then skip the
    /// entries that produced them.
    pub(crate) touched: Touched,
    pub(crate) desk: &'a DeskState,
    pub(crate) db: &'a Db,
    /// Import chunks waiting for their commit entry.
    pub(crate) staged: std::collections::HashMap<u64, std::collections::BTreeMap<u32, Vec<ImportItem>>>,
}

#[derive(Default)]
pub(crate) struct Touched {
    accounts: std::collections::HashSet<u64>,
    cards: std::collections::HashSet<CardNo>,
    terminals: std::collections::HashSet<u64>,
    slots: std::collections::HashSet<(u64, u64)>,
    params: bool,
    /// Records only desk entries change (persons, operators, blacklist changes, audit
    /// records, grant marks), in replay order: written last, the newest wins.
    desk: Vec<StateWrite>,
}

impl Touched {
    /// Notes a record a desk entry's replay changed. Accounts, cards and parameters are
    /// noted by key and written as they are at the end of replay (later entries may
    /// change them again); the desk's own records are kept as replayed.
    pub(crate) fn touch(&mut self, w: StateWrite) {
        match w {
            StateWrite::Account(a) => {
                self.accounts.insert(a.id);
            }
            StateWrite::Card(c) => {
                self.cards.insert(c.no);
            }
            StateWrite::Params(_) => self.params = true,
            other => self.desk.push(other),
        }
    }
}

impl Recovered<'_> {
    // Replay arms change records only through these, so that every change is also
    // recorded in `touched` and checkpointed when recovery ends.

    fn account_mut(&mut self, id: u64) -> Option<dashmap::mapref::one::RefMut<'_, u64, Account>> {
        self.touched.accounts.insert(id);
        self.accounts.get_mut(&id)
    }

    fn put_account(&mut self, a: Account) {
        self.touched.accounts.insert(a.id);
        self.accounts.insert(a.id, a);
    }

    fn put_card(&mut self, c: Card) {
        self.touched.cards.insert(c.no);
        self.cards.insert(c.no, c);
    }

    fn put_terminal(&mut self, t: &Terminal) {
        self.touched.terminals.insert(t.id);
        match self.terminals.get_mut(&t.id) {
            Some(mut state) => state.info = t.clone(),
            None => {
                self.terminals.insert(t.id, TerminalState::new(t.clone()));
            }
        }
    }

    /// Remembers an outcome in its terminal's slot, or edits the one remembered there.
    fn put_seq(&mut self, terminal: u64, seq: u64, edit: impl FnOnce(&mut TerminalState)) {
        if let Some(mut term) = self.terminals.get_mut(&terminal) {
            self.touched.slots.insert((terminal, seq));
            edit(&mut term);
        }
    }

    /// Applies one entry exactly as the live decision left the state.
    fn replay(&mut self, rec: &EntryRecord) -> Result<(), LedgerError> {
        match &rec.body {
            EntryBody::Tx(t) => {
                self.put_seq(t.terminal, t.seq, |term| term.remember(seq_record_of(t, rec.time_ms)));
                if t.kind == TxKind::Reversal && matches!(t.outcome, Outcome::Approved { .. }) {
                    self.put_seq(t.terminal, t.original_seq, |term| {
                        if let Some(original) = term.recent_mut(t.original_seq) {
                            original.reversed_by = Some(t.seq);
                        }
                    });
                }
                if let Outcome::Approved {
                    tx_id,
                    balance_after_fen,
                } = t.outcome
                {
                    *self.next_tx_id = (*self.next_tx_id).max(tx_id + 1);
                    let day = business_day(rec.time_ms, self.tz_offset_minutes);
                    if let Some(mut a) = self.account_mut(t.account) {
                        a.balance = from_fen(balance_after_fen);
                        a.spent_today = from_fen(t.spent_today_after_fen);
                        a.day = day;
                    }
                }
            }
            EntryBody::AccountOpened(a) => self.put_account(*a),
            EntryBody::CardIssued(c) => self.put_card(*c),
            EntryBody::TerminalRegistered(t) => self.put_terminal(t),
            EntryBody::ParamsSet(p) => {
                *self.params = *p;
                self.touched.params = true;
            }
            EntryBody::ImportChunk(_) | EntryBody::ImportCommitted(_) => crate::import::replay(self, &rec.body)?,
            EntryBody::PersonOpened(_)
            | EntryBody::PersonUpdated(_)
            | EntryBody::CardChanged(_)
            | EntryBody::Money(_)
            | EntryBody::OperatorSet(_)
            | EntryBody::ParamsChanged(_)
            | EntryBody::Audit(_) => crate::desk::replay(self, &rec.body),
        }
        Ok(())
    }

    /// The current value of every record replay changed.
    fn touched_records(&self) -> Vec<StateWrite> {
        let t = &self.touched;
        let mut out = Vec::with_capacity(t.accounts.len() + t.cards.len() + t.terminals.len() + t.slots.len() + 1);
        out.extend(
            t.accounts
                .iter()
                .filter_map(|id| self.accounts.get(id))
                .map(|a| StateWrite::Account(*a)),
        );
        out.extend(
            t.cards
                .iter()
                .filter_map(|no| self.cards.get(no))
                .map(|c| StateWrite::Card(*c)),
        );
        out.extend(
            t.terminals
                .iter()
                .filter_map(|id| self.terminals.get(id))
                .map(|s| StateWrite::Terminal(Box::new(s.info.clone()))),
        );
        out.extend(
            t.slots
                .iter()
                .filter_map(|(id, seq)| self.terminals.get(id).and_then(|s| s.recent(*seq).copied()))
                .map(StateWrite::Seq),
        );
        if t.params {
            out.push(StateWrite::Params(Box::new(*self.params)));
        }
        out.extend(t.desk.iter().cloned());
        out
    }
}

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
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir` and rebuilds exactly the durable state.
    pub fn open(
        dir: &Path,
        config: LedgerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Arc<Ledger>, CommitterHandle, RecoveryStats), LedgerError> {
        Ledger::open_with_store(dir, config, clock, |s| Box::new(s))
    }

    /// As `open`, with the committer's store wrapped (fault injection in tests).
    pub fn open_with_store(
        dir: &Path,
        config: LedgerConfig,
        clock: Arc<dyn Clock>,
        wrap: impl FnOnce(SledStore) -> Box<dyn Store>,
    ) -> Result<(Arc<Ledger>, CommitterHandle, RecoveryStats), LedgerError> {
        let mut stats = RecoveryStats::default();
        let started = std::time::Instant::now();
        std::fs::create_dir_all(dir).map_err(|e| LedgerError::Io(dir.display().to_string(), e))?;
        let db = Db::open(dir)?;

        // The checkpoint: every state record as of entry `checkpoint_id`.
        let checkpoint_id = db.get_meta_u64(meta::CHECKPOINT_ID)?.unwrap_or(0);
        let mut params = db.get_record::<Params>(&key_meta(meta::PARAMS))?.unwrap_or_default();
        let accounts = new_map();
        for a in db.scan::<Account>(&[PREFIX_ACCOUNT]) {
            let a = a?;
            accounts.insert(a.id, a);
        }
        let cards = new_map();
        for c in db.scan::<Card>(&[PREFIX_CARD]) {
            let c = c?;
            cards.insert(c.no, c);
        }
        let terminals = new_map();
        for t in db.scan::<Terminal>(&[PREFIX_TERMINAL]) {
            let t = t?;
            terminals.insert(t.id, TerminalState::new(t));
        }
        for records in db.scan::<Vec<SeqRecord>>(&[PREFIX_SEQ]) {
            for r in records? {
                if let Some(mut t) = terminals.get_mut(&r.terminal) {
                    t.remember(r);
                }
            }
        }
        let mut next_tx_id = db.get_meta_u64(meta::TX_ID_MARK)?.unwrap_or(0) + 1;
        let desk = DeskState::new(DeskLoad {
            persons: db.scan(&[PREFIX_PERSON]).collect::<Result<_, _>>()?,
            operators: db.scan(&[PREFIX_OPERATOR]).collect::<Result<_, _>>()?,
            blacklist: db.scan(&[PREFIX_BLACKLIST]).collect::<Result<_, _>>()?,
            audit: db.scan(&[PREFIX_AUDIT]).collect::<Result<_, _>>()?,
            grants: db.scan(&[PREFIX_GRANT]).collect::<Result<_, _>>()?,
        });

        // Then every entry after it, in order.
        let mut recovered = Recovered {
            accounts: &accounts,
            cards: &cards,
            terminals: &terminals,
            params: &mut params,
            next_tx_id: &mut next_tx_id,
            tz_offset_minutes: config.tz_offset_minutes,
            touched: Touched::default(),
            desk: &desk,
            db: &db,
            staged: Default::default(),
        };
        let mut after = checkpoint_id;
        loop {
            let entries = db.read_entries(after, REPLAY_CHUNK)?;
            let Some(last) = entries.last() else { break };
            after = last.id;
            for e in &entries {
                recovered.replay(&e.record)?;
            }
            stats.replayed += entries.len() as u64;
        }
        let mut store = db.store()?;
        let mut checkpoint_id = checkpoint_id;
        if after > checkpoint_id && config.checkpoints.enabled {
            // Recovery ends with a checkpoint of what it replayed (see `touched`).
            let mut batch = sled::Batch::default();
            let touched = recovered.touched_records();
            crate::journal::add_ops(&mut batch, crate::journal::checkpoint_ops(&db.tree, &touched)?);
            batch.insert(key_meta(meta::CHECKPOINT_ID), after.to_be_bytes().to_vec());
            store.apply(batch)?;
            store.sync()?;
            checkpoint_id = after;
        }
        let abandoned = crate::import::abandoned(&recovered.staged);
        if abandoned > 0 {
            tracing::warn!(imports = abandoned, "imports cut short by a crash were not applied");
        }
        if config.checkpoints.enabled {
            // Every import is now applied and checkpointed, or abandoned: no replay needs
            // a staging key any more. Not synced; one that comes back after a crash goes
            // next time.
            for kv in db.tree.scan_prefix([PREFIX_STAGED]) {
                let (k, _) = kv.map_err(crate::store::StoreError::from)?;
                db.tree.remove(k).map_err(crate::store::StoreError::from)?;
            }
        }
        desk.blacklist.rebuild(cards.iter().map(|c| *c));
        let next_entry_id = db.get_meta_u64(meta::NEXT_ENTRY_ID)?.unwrap_or(1).max(after + 1);
        stats.accounts = accounts.len();
        stats.cards = cards.len();
        stats.terminals = terminals.len();
        stats.next_entry_id = next_entry_id;
        stats.checkpoint_id = checkpoint_id;

        let gateway_id = match db.get_meta_u64(meta::GATEWAY_ID)? {
            Some(id) => id,
            None => {
                // Written before the committer starts; made durable by its first sync.
                let id = rand::random::<u64>() >> 1;
                db.tree
                    .insert(key_meta(meta::GATEWAY_ID), id.to_be_bytes().to_vec())
                    .map_err(crate::store::StoreError::from)?;
                id
            }
        };

        let (journal, committer) = Journal::start(
            db.clone(),
            wrap(store),
            next_entry_id,
            checkpoint_id,
            config.checkpoints,
        );
        let ledger = Ledger {
            accounts,
            cards,
            terminals,
            params: ArcSwap::from_pointee(params),
            journal,
            db,
            next_tx_id: AtomicU64::new(next_tx_id),
            desk,
            gateway_id,
            config,
            clock,
        };
        stats.millis = started.elapsed().as_millis();
        Ok((Arc::new(ledger), committer, stats))
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn gateway_id(&self) -> u64 {
        self.gateway_id
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn today(&self) -> i32 {
        business_day(self.clock.now_ms(), self.config.tz_offset_minutes)
    }

    pub fn params(&self) -> Params {
        **self.params.load()
    }

    pub fn blacklist_version(&self) -> u64 {
        self.desk.blacklist.version()
    }

    pub fn account(&self, id: u64) -> Option<Account> {
        self.accounts.get(&id).map(|a| *a)
    }

    pub fn card(&self, no: CardNo) -> Option<Card> {
        self.cards.get(&no).map(|c| *c)
    }

    pub fn terminal(&self, id: u64) -> Option<Terminal> {
        self.terminals.get(&id).map(|t| t.info.clone())
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.accounts.len(), self.cards.len(), self.terminals.len())
    }

    /// The sum of every balance. Not a snapshot across accounts while money moves.
    pub fn total_balance(&self) -> Decimal {
        self.accounts.iter().map(|a| a.balance).sum()
    }

    /// What sign-on needs: the terminal's secret and the last sequence number recorded
    /// for it.
    pub fn sign_on(&self, terminal_id: u64) -> Option<(TerminalSecret, u64)> {
        let t = self.terminals.get(&terminal_id)?;
        Some((TerminalSecret(t.info.secret), t.last_seq))
    }

    /// Records the time of the terminal's last authenticated contact.
    pub fn touch_terminal(&self, terminal_id: u64) {
        let now = self.clock.now_ms();
        if let Some(mut t) = self.terminals.get_mut(&terminal_id) {
            t.last_seen_ms = now;
        }
    }

    pub async fn purchase(&self, terminal_id: u64, p: &Purchase) -> Pending {
        self.decide(
            terminal_id,
            Request {
                kind: TxKind::Purchase,
                seq: p.tx_seq,
                card: p.card,
                amount_fen: p.amount_fen,
                original_seq: 0,
                terminal_time_ms: p.terminal_time_ms,
            },
        )
        .await
    }

    pub async fn reversal(&self, terminal_id: u64, r: &Reversal) -> Pending {
        self.decide(
            terminal_id,
            Request {
                kind: TxKind::Reversal,
                seq: r.tx_seq,
                card: r.card,
                amount_fen: r.amount_fen,
                original_seq: r.original_tx_seq,
                terminal_time_ms: r.terminal_time_ms,
            },
        )
        .await
    }

    /// A balance inquiry; answered once everything it observed is durable.
    pub async fn balance(&self, terminal_id: u64, card_no: CardNo) -> Pending {
        let now = self.clock.now_ms();
        let declined = |reason| {
            Message::Declined(Declined {
                tx_seq: 0,
                card: card_no,
                reason,
                balance_fen: 0,
                time_ms: now,
            })
        };
        let permit = match self.journal.reserve().await {
            Ok(p) => p,
            Err(_) => return Pending::ready(declined(DeclineReason::SystemError)),
        };
        let enabled = self.terminals.get(&terminal_id).map(|t| t.info.enabled);
        let answer = if enabled != Some(true) {
            declined(DeclineReason::TerminalNotAllowed)
        } else {
            match self.card(card_no) {
                None => declined(DeclineReason::UnknownCard),
                Some(card) => match self.accounts.get(&card.account) {
                    None => declined(DeclineReason::UnknownCard),
                    Some(acct) => {
                        let limits = acct.effective_limits(&self.params.load());
                        let today = business_day(now, self.config.tz_offset_minutes);
                        let spent = if acct.day == today {
                            acct.spent_today
                        } else {
                            Decimal::ZERO
                        };
                        let status = match card.refusal(now) {
                            Some(DeclineReason::CardExpired) => CardStatusCode::Expired,
                            _ => card.status.wire(),
                        };
                        Message::Balance(Balance {
                            card: card_no,
                            status,
                            balance_fen: fen(acct.balance),
                            spent_today_fen: fen(spent),
                            daily_limit_fen: fen(limits.daily_max),
                        })
                    }
                },
            }
        };
        let (done, wait) = oneshot::channel();
        permit.send(Submission::barrier(done));
        Pending {
            answer,
            wait: Some(wait),
        }
    }

    async fn decide(&self, terminal_id: u64, req: Request) -> Pending {
        let permit = match self.journal.reserve().await {
            Ok(p) => p,
            Err(_) => return Pending::ready(self.declined(&req, DeclineReason::SystemError, 0)),
        };
        match req.kind {
            TxKind::Purchase => METRICS.purchases.increment(1),
            TxKind::Reversal => METRICS.reversals.increment(1),
        }
        self.decide_locked(terminal_id, &req, permit)
    }

    fn declined(&self, req: &Request, reason: DeclineReason, balance_fen: i64) -> Message {
        Message::Declined(Declined {
            tx_seq: req.seq,
            card: req.card,
            reason,
            balance_fen,
            time_ms: self.clock.now_ms(),
        })
    }

    fn decide_locked(&self, terminal_id: u64, req: &Request, permit: mpsc::Permit<'_, Submission>) -> Pending {
        let Some(mut term) = self.terminals.get_mut(&terminal_id) else {
            return Pending::ready(self.declined(req, DeclineReason::TerminalNotAllowed, 0));
        };
        if req.seq == 0 {
            return Pending::ready(self.declined(req, DeclineReason::StaleSequence, 0));
        }
        if req.seq <= term.last_seq {
            let answer = match term.recent(req.seq) {
                Some(rec) if rec.same_request(req.kind, req.card, req.amount_fen, req.original_seq) => {
                    METRICS.retries.increment(1);
                    answer_of(rec)
                }
                Some(_) => self.declined(req, DeclineReason::Duplicate, 0),
                None => self.declined(req, DeclineReason::StaleSequence, 0),
            };
            // The original may still be on its way to disk: answer after a barrier.
            let (done, wait) = oneshot::channel();
            permit.send(Submission::barrier(done));
            return Pending {
                answer,
                wait: Some(wait),
            };
        }
        match req.kind {
            TxKind::Purchase => self.purchase_fresh(&mut term, req, permit),
            TxKind::Reversal => self.reversal_fresh(&mut term, req, permit),
        }
    }

    fn tx_entry(&self, term: &TerminalState, req: &Request) -> TxEntry {
        TxEntry {
            kind: req.kind,
            tx_id: 0,
            terminal: term.info.id,
            merchant_id: term.info.merchant_id,
            seq: req.seq,
            original_seq: req.original_seq,
            original_tx_id: 0,
            card: req.card,
            account: 0,
            amount_fen: req.amount_fen,
            outcome: Outcome::Declined {
                reason: DeclineReason::SystemError.code(),
                balance_fen: 0,
            },
            terminal_time_ms: req.terminal_time_ms,
            single_limit_fen: 0,
            daily_limit_fen: 0,
            spent_today_after_fen: 0,
            blacklist_version: self.blacklist_version(),
        }
    }

    /// Why this terminal may not move money with this request, if it may not.
    fn precheck(term: &TerminalState, req: &Request) -> Option<DeclineReason> {
        if term.info.kind != TerminalKind::Pos || !term.info.enabled {
            Some(DeclineReason::TerminalNotAllowed)
        } else if req.amount_fen <= 0 || req.amount_fen > AMOUNT_FEN_MAX {
            Some(DeclineReason::InvalidAmount)
        } else {
            None
        }
    }

    fn purchase_fresh(&self, term: &mut TerminalState, req: &Request, permit: mpsc::Permit<'_, Submission>) -> Pending {
        let now = self.clock.now_ms();
        let mut entry = self.tx_entry(term, req);
        let decline = |entry: &mut TxEntry, reason: DeclineReason, balance_fen: i64| {
            entry.outcome = Outcome::Declined {
                reason: reason.code(),
                balance_fen,
            };
        };
        if let Some(reason) = Ledger::precheck(term, req) {
            decline(&mut entry, reason, 0);
            return self.finish(term, req, now, entry, Writes::new(), permit);
        }
        let card = match self.cards.get(&req.card) {
            None => {
                decline(&mut entry, DeclineReason::UnknownCard, 0);
                return self.finish(term, req, now, entry, Writes::new(), permit);
            }
            Some(c) => *c,
        };
        entry.account = card.account;
        if let Some(reason) = card.refusal(now) {
            decline(&mut entry, reason, 0);
            return self.finish(term, req, now, entry, Writes::new(), permit);
        }
        let Some(mut acct) = self.accounts.get_mut(&card.account) else {
            tracing::error!(card = %req.card, account = card.account, "card points at a missing account");
            decline(&mut entry, DeclineReason::UnknownCard, 0);
            return self.finish(term, req, now, entry, Writes::new(), permit);
        };
        acct.roll_day(business_day(now, self.config.tz_offset_minutes));
        let limits = acct.effective_limits(&self.params.load());
        entry.single_limit_fen = fen(limits.single_payment_max);
        entry.daily_limit_fen = fen(limits.daily_max);
        let amount = from_fen(req.amount_fen);
        let spent_after = acct.spent_today.checked_add(amount);
        let reason = if acct.status != AccountStatus::Active {
            Some(DeclineReason::AccountBlocked)
        } else if amount > limits.single_payment_max {
            Some(DeclineReason::OverSingleLimit)
        } else if spent_after.is_none_or(|s| s > limits.daily_max) {
            Some(DeclineReason::OverDailyLimit)
        } else if acct.balance < amount {
            Some(DeclineReason::InsufficientFunds)
        } else {
            None
        };
        let mut writes = Writes::new();
        match (reason, spent_after) {
            (None, Some(spent_after)) => {
                acct.balance -= amount;
                acct.spent_today = spent_after;
                debug_assert!(acct.balance >= Decimal::ZERO);
                let tx_id = self.next_tx_id.fetch_add(1, Ordering::Relaxed);
                entry.tx_id = tx_id;
                entry.outcome = Outcome::Approved {
                    tx_id,
                    balance_after_fen: fen(acct.balance),
                };
                writes.push(StateWrite::Account(*acct));
            }
            (reason, _) => {
                let balance = if acct.status == AccountStatus::Active {
                    fen(acct.balance)
                } else {
                    0
                };
                decline(&mut entry, reason.unwrap_or(DeclineReason::OverDailyLimit), balance);
            }
        }
        entry.spent_today_after_fen = fen(acct.spent_today);
        // Sent while the account is locked, so the journal orders this account's changes.
        self.finish(term, req, now, entry, writes, permit)
    }

    fn reversal_fresh(&self, term: &mut TerminalState, req: &Request, permit: mpsc::Permit<'_, Submission>) -> Pending {
        let now = self.clock.now_ms();
        let mut entry = self.tx_entry(term, req);
        let declined = |mut entry: TxEntry, reason: DeclineReason| {
            entry.outcome = Outcome::Declined {
                reason: reason.code(),
                balance_fen: 0,
            };
            entry
        };
        if let Some(reason) = Ledger::precheck(term, req) {
            return self.finish(term, req, now, declined(entry, reason), Writes::new(), permit);
        }
        let original = term.recent(req.original_seq).copied().filter(|o| {
            o.kind == TxKind::Purchase
                && matches!(o.outcome, Outcome::Approved { .. })
                && o.card == req.card
                && o.amount_fen == req.amount_fen
        });
        let Some(original) = original else {
            let e = declined(entry, DeclineReason::OriginalNotFound);
            return self.finish(term, req, now, e, Writes::new(), permit);
        };
        if original.reversed_by.is_some() {
            let e = declined(entry, DeclineReason::AlreadyReversed);
            return self.finish(term, req, now, e, Writes::new(), permit);
        }
        let Outcome::Approved {
            tx_id: original_tx_id, ..
        } = original.outcome
        else {
            unreachable!("filtered to approved above")
        };
        entry.original_tx_id = original_tx_id;
        entry.account = original.account;
        let Some(mut acct) = self.accounts.get_mut(&original.account) else {
            tracing::error!(account = original.account, "approved purchase names a missing account");
            let e = declined(entry, DeclineReason::SystemError);
            return self.finish(term, req, now, e, Writes::new(), permit);
        };
        let amount = from_fen(req.amount_fen);
        acct.roll_day(business_day(now, self.config.tz_offset_minutes));
        acct.balance += amount;
        // The refund gives back today's allowance only if the purchase counted today.
        if business_day(original.time_ms, self.config.tz_offset_minutes) == acct.day {
            acct.spent_today = (acct.spent_today - amount).max(Decimal::ZERO);
        }
        let tx_id = self.next_tx_id.fetch_add(1, Ordering::Relaxed);
        entry.tx_id = tx_id;
        entry.outcome = Outcome::Approved {
            tx_id,
            balance_after_fen: fen(acct.balance),
        };
        entry.spent_today_after_fen = fen(acct.spent_today);
        let reversed = term
            .recent_mut(req.original_seq)
            .expect("found above, under the same lock");
        reversed.reversed_by = Some(req.seq);
        let reversed = *reversed;
        let mut writes = Writes::new();
        writes.push(StateWrite::Account(*acct));
        writes.push(StateWrite::Seq(reversed));
        self.finish(term, req, now, entry, writes, permit)
    }

    /// Records the outcome for idempotency, sends the submission, and hands back the
    /// answer to send once it is durable.
    fn finish(
        &self,
        term: &mut TerminalState,
        req: &Request,
        now: i64,
        entry: TxEntry,
        mut writes: Writes,
        permit: mpsc::Permit<'_, Submission>,
    ) -> Pending {
        let rec = seq_record_of(&entry, now);
        debug_assert!(req.seq > term.last_seq);
        term.remember(rec);
        writes.push(StateWrite::Seq(rec));
        if let Outcome::Declined { reason, .. } = entry.outcome
            && let Some(counter) = METRICS.declines.get(usize::from(reason))
        {
            counter.increment(1);
        }
        let (done, wait) = oneshot::channel();
        permit.send(Submission {
            entry: Some((now, EntryBody::Tx(entry))),
            writes,
            tx_id: entry.tx_id,
            force_sync: false,
            done: Some(done),
        });
        Pending {
            answer: answer_of(&rec),
            wait: Some(wait),
        }
    }

    // ---- master data -------------------------------------------------------------

    /// Opens an account; fails if the id is taken.
    pub async fn open_account(&self, account: Account) -> Result<u64, LedgerError> {
        let permit = self.journal.reserve().await?;
        let wait = {
            let entry = match self.accounts.entry(account.id) {
                dashmap::Entry::Occupied(_) => return Err(LedgerError::exists("account", account.id)),
                dashmap::Entry::Vacant(v) => v,
            };
            if account.balance < Decimal::ZERO || to_fen(account.balance).is_none() {
                return Err(LedgerError::Invalid(format!(
                    "opening balance {} is not valid",
                    account.balance
                )));
            }
            entry.insert(account);
            send(
                permit,
                EntryBody::AccountOpened(account),
                [StateWrite::Account(account)],
                self.now_ms(),
            )
        };
        Ok(wait.await.map_err(|_| JournalError::Closed)??)
    }

    /// Issues a card on an existing account; fails if the number is taken.
    pub async fn issue_card(&self, card: Card) -> Result<u64, LedgerError> {
        let permit = self.journal.reserve().await?;
        let wait = {
            if !self.accounts.contains_key(&card.account) {
                return Err(LedgerError::not_found("account", card.account));
            }
            let entry = match self.cards.entry(card.no) {
                dashmap::Entry::Occupied(_) => return Err(LedgerError::exists("card", card.no.0)),
                dashmap::Entry::Vacant(v) => v,
            };
            entry.insert(card);
            send(
                permit,
                EntryBody::CardIssued(card),
                [StateWrite::Card(card)],
                self.now_ms(),
            )
        };
        Ok(wait.await.map_err(|_| JournalError::Closed)??)
    }

    /// Registers a terminal or replaces its registration (keeping its sequence memory).
    pub async fn register_terminal(&self, t: Terminal) -> Result<u64, LedgerError> {
        let permit = self.journal.reserve().await?;
        let info = t.clone();
        let wait = {
            let write = StateWrite::Terminal(Box::new(t.clone()));
            match self.terminals.entry(t.id) {
                dashmap::Entry::Occupied(mut o) => o.get_mut().info = t,
                dashmap::Entry::Vacant(v) => {
                    v.insert(TerminalState::new(t));
                }
            }
            send(permit, EntryBody::TerminalRegistered(info), [write], self.now_ms())
        };
        Ok(wait.await.map_err(|_| JournalError::Closed)??)
    }

    /// Replaces the business parameters; effective for the next decision.
    pub async fn set_params(&self, params: Params) -> Result<u64, LedgerError> {
        let permit = self.journal.reserve().await?;
        self.params.store(Arc::new(params));
        let wait = send(
            permit,
            EntryBody::ParamsSet(params),
            [StateWrite::Params(Box::new(params))],
            self.now_ms(),
        );
        Ok(wait.await.map_err(|_| JournalError::Closed)??)
    }
    /// Creates many terminals, accounts and cards at once (the demo campus, large
    /// imports): submitted back to back and awaited once, so that they share a few group
    /// commits instead of one each. Fails without changing anything if any id is taken;
    /// callers must not create the same ids concurrently.
    pub async fn bulk_create(
        &self,
        terminals: Vec<Terminal>,
        accounts: &[Account],
        cards: &[Card],
    ) -> Result<(), LedgerError> {
        let mut new_accounts = std::collections::HashSet::with_capacity(accounts.len());
        for a in accounts {
            if self.accounts.contains_key(&a.id) || !new_accounts.insert(a.id) {
                return Err(LedgerError::exists("account", a.id));
            }
            if a.balance < Decimal::ZERO || to_fen(a.balance).is_none() {
                return Err(LedgerError::Invalid(format!(
                    "account {}: balance {} is not valid",
                    a.id, a.balance
                )));
            }
        }
        let mut new_cards = std::collections::HashSet::with_capacity(cards.len());
        for c in cards {
            if self.cards.contains_key(&c.no) || !new_cards.insert(c.no) {
                return Err(LedgerError::exists("card", c.no.0));
            }
            if !new_accounts.contains(&c.account) && !self.accounts.contains_key(&c.account) {
                return Err(LedgerError::not_found("account", c.account));
            }
        }
        for t in &terminals {
            if self.terminals.contains_key(&t.id) {
                return Err(LedgerError::exists("terminal", t.id));
            }
        }
        let now = self.now_ms();
        let mut last = None;
        for t in terminals {
            let permit = self.journal.reserve().await?;
            let info = t.clone();
            let write = StateWrite::Terminal(Box::new(t.clone()));
            self.terminals.insert(t.id, TerminalState::new(t));
            last = Some(send(permit, EntryBody::TerminalRegistered(info), [write], now));
        }
        for a in accounts {
            let permit = self.journal.reserve().await?;
            self.accounts.insert(a.id, *a);
            last = Some(send(
                permit,
                EntryBody::AccountOpened(*a),
                [StateWrite::Account(*a)],
                now,
            ));
        }
        for c in cards {
            let permit = self.journal.reserve().await?;
            self.cards.insert(c.no, *c);
            last = Some(send(permit, EntryBody::CardIssued(*c), [StateWrite::Card(*c)], now));
        }
        // The committer completes submissions in order: the last one durable means all are.
        if let Some(wait) = last {
            wait.await.map_err(|_| JournalError::Closed)??;
        }
        Ok(())
    }
}

fn send<const N: usize>(
    permit: mpsc::Permit<'_, Submission>,
    body: EntryBody,
    writes: [StateWrite; N],
    now: i64,
) -> oneshot::Receiver<CommitResult> {
    let (done, wait) = oneshot::channel();
    permit.send(Submission {
        entry: Some((now, body)),
        writes: writes.into_iter().collect(),
        tx_id: 0,
        force_sync: false,
        done: Some(done),
    });
    wait
}

/// The remembered outcome a journaled decision leaves; used both when deciding and when
/// replaying, so the two cannot drift apart.
pub fn seq_record_of(entry: &TxEntry, time_ms: i64) -> SeqRecord {
    SeqRecord {
        terminal: entry.terminal,
        seq: entry.seq,
        kind: entry.kind,
        card: entry.card,
        amount_fen: entry.amount_fen,
        original_seq: entry.original_seq,
        account: entry.account,
        outcome: entry.outcome,
        time_ms,
        reversed_by: None,
    }
}

/// Per-decision metrics, registered once: building a labelled key on every call cost
/// an allocation and ~3% of the gateway's CPU under load. Registered on first use,
/// which is after the daemon installs its recorder.
struct LedgerMetrics {
    purchases: metrics::Counter,
    reversals: metrics::Counter,
    retries: metrics::Counter,
    /// Indexed by decline reason code.
    declines: Vec<metrics::Counter>,
}

static METRICS: std::sync::LazyLock<LedgerMetrics> = std::sync::LazyLock::new(|| {
    let max = DeclineReason::ALL.iter().map(|r| r.code()).max().unwrap_or(0);
    let declines = (0..=max)
        .map(|code| {
            let reason = DeclineReason::from_code(code).map(|r| r.as_str()).unwrap_or("unknown");
            metrics::counter!("cardgate_declines_total", "reason" => reason)
        })
        .collect();
    LedgerMetrics {
        purchases: metrics::counter!("cardgate_decisions_total", "kind" => "purchase"),
        reversals: metrics::counter!("cardgate_decisions_total", "kind" => "reversal"),
        retries: metrics::counter!("cardgate_retries_total"),
        declines,
    }
});
