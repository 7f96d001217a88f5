//! The journal's half of the integrity check: the hash chain (`cardgate_journal::chain`),
//! every account's balance against its journal history, the checkpoint's balances
//! against the journal before them, and what the central store's half needs (balances
//! and day totals as of the store's cursor, the day closes, the terminals' sequence
//! numbers). Everything is read, nothing is changed: a mismatch is reported with the
//! entry, account or day and the values expected and found, never "fixed".
//!
//! The state records are read as of the checkpoint id (the checkpoint gate is held while
//! they are read), and the journal through a fixed entry id, so a running gateway is
//! checked at one point in its history while it goes on deciding.
//!
//! Balances: the journal is pruned behind checkpoints, so an account's balance is its
//! checkpointed record plus every movement after it; and each movement carries the
//! balance it left, so each one is checked against the one before (`balance`). Before
//! the checkpoint, what the journal still holds must end where the checkpoint says
//! (`checkpoint`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use cardgate_domain::clock::business_day;
use cardgate_domain::entry::{DayClose, EntryBody, EntryRecord, ImportItem};
use cardgate_domain::model::{Account, Outcome};
use cardgate_domain::money::to_fen;
use cardgate_journal::chain::{self, ChainReport};
use cardgate_journal::store::meta as journal_meta;
use cardgate_journal::{Db, StoreError};

use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::PREFIX_ACCOUNT;

/// Entries read per step.
const SCAN_CHUNK: usize = 16 * 1024;

/// Mismatches listed per check; beyond, they are counted.
pub const MISMATCHES_LISTED_MAX: usize = 1000;

/// Sequence gaps listed; beyond, they are counted.
pub const SEQUENCE_GAPS_LISTED_MAX: usize = 100;

/// One thing that does not add up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Which check found it: a bounded set of names (`chain`, `checkpoint`, `balance`,
    /// `memory`, and the central store's, `central_*`, `day_close`).
    pub check: &'static str,
    pub entry_id: Option<u64>,
    pub account: Option<u64>,
    /// `YYYY-MM-DD`, local business time.
    pub day: Option<String>,
    pub expected: String,
    pub found: String,
    pub detail: String,
}

/// A run of sequence numbers a terminal skipped, in the journal still held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqGap {
    pub terminal: u64,
    /// The first and last number missing.
    pub from: u64,
    pub to: u64,
}

/// The terminals' sequence numbers as far as today's records go: each money request's
/// number in the journal still held, and the gaps between them. A later issue adds full
/// sequence accounting (numbers a terminal reports having used, offline records); it
/// extends `sequence_summary`, which the report already carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SequenceSummary {
    pub terminals: u64,
    pub terminals_with_gaps: u64,
    pub numbers_missing: u64,
    pub gaps: Vec<SeqGap>,
}

/// What one account did to its balance in one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// A movement: signed amount and the balance it left.
    Move { account: u64, delta: i64, after: i64 },
    /// A balance set outright (an account opened, a cancellation's end state).
    Set { account: u64, balance: i64 },
}

/// The journal's side of the check.
#[derive(Clone, Debug, Default)]
pub struct JournalCheck {
    /// Checked through this entry id.
    pub through: u64,
    pub checkpoint_id: u64,
    pub chain: ChainReport,
    pub mismatches: Vec<Mismatch>,
    /// Per check, every mismatch found (listed or not).
    pub counts: BTreeMap<&'static str, u64>,
    pub accounts: usize,
    pub movements: u64,
    /// Every account's balance as of `through`, in fen.
    pub balances: BTreeMap<u64, i64>,
    /// As of the central store's cursor, when one was given: every account's balance,
    /// and approved money per business day (count, fen) for the days the journal holds
    /// whole (`full_days_from`).
    pub at_cursor: Option<AtCursor>,
    /// `DayClosed` entries in the journal still held: (entry id, close).
    pub day_closes: Vec<(u64, DayClose)>,
    pub sequences: SequenceSummary,
    pub tz_offset_minutes: i32,
}

#[derive(Clone, Debug, Default)]
pub struct AtCursor {
    pub cursor: u64,
    pub balances: BTreeMap<u64, i64>,
    pub day_totals: BTreeMap<i32, (u64, i64)>,
    /// The first business day all of whose entries the journal holds; `None`: all.
    pub full_days_from: Option<i32>,
}

impl JournalCheck {
    pub fn push(&mut self, m: Mismatch) {
        *self.counts.entry(m.check).or_default() += 1;
        if self.mismatches.iter().filter(|x| x.check == m.check).count() < MISMATCHES_LISTED_MAX {
            self.mismatches.push(m);
        }
    }
}

fn effects(body: &EntryBody, imports: &HashMap<u64, Vec<ImportItem>>) -> Vec<Effect> {
    let set = |a: &Account| to_fen(a.balance).map(|balance| Effect::Set { account: a.id, balance });
    match body {
        EntryBody::Tx(t) => match t.outcome {
            Outcome::Approved { balance_after_fen, .. } => vec![Effect::Move {
                account: t.account,
                delta: t.kind.balance_change(t.amount_fen),
                after: balance_after_fen,
            }],
            Outcome::Declined { .. } => Vec::new(),
        },
        EntryBody::Money(m) => vec![Effect::Move {
            account: m.movement.account,
            delta: m.movement.balance_delta_fen,
            after: m.movement.balance_after_fen,
        }],
        EntryBody::CardChanged(c) => {
            let mut out = Vec::new();
            if let Some(m) = &c.money {
                out.push(Effect::Move {
                    account: m.account,
                    delta: m.balance_delta_fen,
                    after: m.balance_after_fen,
                });
            }
            if let Some(a) = &c.account {
                out.push(Effect::Set {
                    account: a.id,
                    balance: a.balance_fen,
                });
            }
            out
        }
        EntryBody::AccountOpened(a) => set(a).into_iter().collect(),
        EntryBody::PersonOpened(p) => set(&p.account).into_iter().collect(),
        EntryBody::ImportCommitted(c) => imports
            .get(&c.import_id)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| match i {
                        ImportItem::Add { account, .. } => set(account),
                        ImportItem::Update { .. } => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn day_str(day: i32) -> String {
    crate::days::day_str(day)
}

/// Checks the journal of `db` through entry `through` (a running gateway's durable id,
/// or a stopped one's last). `central_cursor`: also compute balances and day totals as of
/// that entry, for the central store's half.
pub fn check_journal(
    db: &Db,
    through: u64,
    tz_offset_minutes: i32,
    central_cursor: Option<u64>,
) -> Result<JournalCheck, LedgerError> {
    let mut out = JournalCheck {
        through,
        tz_offset_minutes,
        ..JournalCheck::default()
    };
    // The records exactly as of the checkpoint id, and the journal held still behind it.
    let _hold = db.hold_pruning();
    let gate = db.checkpoint_gate();
    let checkpoint_id = db.get_meta_u64(journal_meta::CHECKPOINT_ID)?.unwrap_or(0);
    out.checkpoint_id = checkpoint_id;
    let mut checkpointed: BTreeMap<u64, i64> = BTreeMap::new();
    for a in db.scan::<Account>(&[PREFIX_ACCOUNT]) {
        let a = a?;
        let fen = to_fen(a.balance).ok_or_else(|| StoreError::Corrupt {
            key: vec![PREFIX_ACCOUNT],
            reason: format!("account {} has a balance that is not whole fen", a.id),
        })?;
        checkpointed.insert(a.id, fen);
    }
    out.chain = chain::verify(db, through)?;
    drop(gate);
    for f in out.chain.faults.clone() {
        out.push(Mismatch {
            check: "chain",
            entry_id: Some(f.entry_id),
            account: None,
            day: None,
            expected: f.expected,
            found: f.found,
            detail: f.detail,
        });
    }
    if out.chain.faults_unlisted > 0 {
        *out.counts.entry("chain").or_default() += out.chain.faults_unlisted;
    }

    let tz = tz_offset_minutes;
    // Running balances: before the checkpoint, from what the journal holds (to check the
    // checkpoint); after it, from the checkpoint (to check each movement).
    let mut before_checkpoint: BTreeMap<u64, i64> = BTreeMap::new();
    let mut running: BTreeMap<u64, i64> = checkpointed.clone();
    let mut imports: HashMap<u64, Vec<ImportItem>> = HashMap::new();
    let mut seqs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let cursor = central_cursor.filter(|c| *c <= through);
    let mut at_cursor = cursor.map(|c| AtCursor {
        cursor: c,
        ..AtCursor::default()
    });
    // Balance at the cursor of accounts that moved after it: the balance before their
    // first movement after it.
    let mut before_first_after_cursor: BTreeMap<u64, Option<i64>> = BTreeMap::new();
    let mut first_entry: Option<(u64, i64)> = None;
    let mut after = 0;
    let mut checkpoint_checked = checkpoint_id == 0;
    loop {
        let entries = match db.read_entries(after, SCAN_CHUNK, EntryRecord::decode) {
            Ok(e) => e,
            // An entry that no longer decodes is the chain's finding already (its bytes
            // changed); the balances cannot be followed past it.
            Err(StoreError::Corrupt { reason, .. }) => {
                out.push(Mismatch {
                    check: "balance",
                    entry_id: None,
                    account: None,
                    day: None,
                    expected: String::new(),
                    found: String::new(),
                    detail: format!("balances were checked only up to an entry that does not decode: {reason}"),
                });
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let Some(last) = entries.last() else { break };
        after = last.id;
        for e in &entries {
            if e.id > through {
                break;
            }
            first_entry.get_or_insert((e.id, e.record.time_ms));
            if !checkpoint_checked && e.id > checkpoint_id {
                checkpoint_checked = true;
                compare_checkpoint(&mut out, &before_checkpoint, &checkpointed, checkpoint_id);
            }
            let body = &e.record.body;
            match body {
                EntryBody::ImportChunk(c) => imports.entry(c.import_id).or_default().extend(c.items.iter().cloned()),
                EntryBody::DayClosed(c) => out.day_closes.push((e.id, c.as_ref().clone())),
                EntryBody::Tx(t) => seqs.entry(t.terminal).or_default().push(t.seq),
                _ => {}
            }
            let effs = effects(body, &imports);
            if let EntryBody::ImportCommitted(c) = body {
                imports.remove(&c.import_id);
            }
            let day = business_day(e.record.time_ms, tz);
            for eff in effs {
                let (account, after_fen) = match eff {
                    Effect::Move { account, delta, after } => {
                        out.movements += 1;
                        let book = if e.id <= checkpoint_id {
                            &mut before_checkpoint
                        } else {
                            &mut running
                        };
                        if let Some(prev) = book.get(&account).copied()
                            && prev.checked_add(delta) != Some(after)
                        {
                            out.push(Mismatch {
                                check: "balance",
                                entry_id: Some(e.id),
                                account: Some(account),
                                day: Some(day_str(day)),
                                expected: (prev.saturating_add(delta)).to_string(),
                                found: after.to_string(),
                                detail: format!(
                                    "entry {} moved {delta} fen on account {account} from {prev}, but left {after}",
                                    e.id
                                ),
                            });
                        }
                        if let Some(c) = &mut at_cursor {
                            if e.id <= c.cursor {
                                let t = c.day_totals.entry(day).or_default();
                                t.0 += 1;
                                t.1 += delta;
                            } else {
                                before_first_after_cursor
                                    .entry(account)
                                    .or_insert(after.checked_sub(delta));
                            }
                        }
                        (account, after)
                    }
                    Effect::Set { account, balance } => {
                        if let Some(c) = &at_cursor
                            && e.id > c.cursor
                        {
                            // Opened (or emptied) after the cursor: what it was at the
                            // cursor is not this entry's to say.
                            before_first_after_cursor.entry(account).or_insert(None);
                        }
                        (account, balance)
                    }
                };
                if e.id <= checkpoint_id {
                    before_checkpoint.insert(account, after_fen);
                } else {
                    running.insert(account, after_fen);
                }
            }
        }
        if after >= through {
            break;
        }
    }
    if !checkpoint_checked {
        compare_checkpoint(&mut out, &before_checkpoint, &checkpointed, checkpoint_id);
    }
    out.accounts = running.len();
    if let Some(mut c) = at_cursor {
        for (account, balance) in &running {
            match before_first_after_cursor.get(account) {
                None => {
                    c.balances.insert(*account, *balance);
                }
                Some(Some(before)) => {
                    c.balances.insert(*account, *before);
                }
                Some(None) => {}
            }
        }
        c.full_days_from = match first_entry {
            Some((1, _)) | None => None,
            Some((_, time_ms)) => Some(business_day(time_ms, tz) + 1),
        };
        out.at_cursor = Some(c);
    }
    out.balances = running;
    out.sequences = sequence_summary(&seqs);
    Ok(out)
}

/// What the journal before the checkpoint says each account it moved was left with,
/// against the checkpoint's record.
fn compare_checkpoint(
    out: &mut JournalCheck,
    journal: &BTreeMap<u64, i64>,
    checkpointed: &BTreeMap<u64, i64>,
    checkpoint_id: u64,
) {
    for (account, fen) in journal {
        match checkpointed.get(account) {
            Some(found) if found == fen => {}
            found => out.push(Mismatch {
                check: "checkpoint",
                entry_id: Some(checkpoint_id),
                account: Some(*account),
                day: None,
                expected: fen.to_string(),
                found: found.map_or("no record".into(), |f| f.to_string()),
                detail: format!(
                    "the checkpoint at entry {checkpoint_id} holds account {account} with another balance than the \
                     journal before it leaves"
                ),
            }),
        }
    }
}

/// The gaps in each terminal's sequence numbers (the hook full sequence accounting
/// extends).
pub fn sequence_summary(seqs: &BTreeMap<u64, Vec<u64>>) -> SequenceSummary {
    let mut s = SequenceSummary {
        terminals: seqs.len() as u64,
        ..SequenceSummary::default()
    };
    for (terminal, numbers) in seqs {
        let mut numbers = numbers.clone();
        numbers.sort_unstable();
        numbers.dedup();
        let mut gapped = false;
        for w in numbers.windows(2) {
            if w[1] > w[0] + 1 {
                gapped = true;
                s.numbers_missing += w[1] - w[0] - 1;
                if s.gaps.len() < SEQUENCE_GAPS_LISTED_MAX {
                    s.gaps.push(SeqGap {
                        terminal: *terminal,
                        from: w[0] + 1,
                        to: w[1] - 1,
                    });
                }
            }
        }
        s.terminals_with_gaps += u64::from(gapped);
    }
    s
}

impl Ledger {
    /// The journal's half of the integrity check, at the durable entry id now, and the
    /// balances in memory against it.
    pub async fn check_journal(&self, central_cursor: Option<u64>) -> Result<JournalCheck, LedgerError> {
        self.journal().barrier().await?;
        let through = self.journal().stats.durable_entry_id.load(Ordering::Acquire);
        let db = self.db().clone();
        let tz = self.tz_offset_minutes();
        let mut check = tokio::task::spawn_blocking(move || {
            check_journal(&db, through, tz, central_cursor.map(|c| c.min(through)))
        })
        .await
        .map_err(|e| LedgerError::Invalid(format!("integrity check: {e}")))??;
        self.check_memory(&mut check).await?;
        Ok(check)
    }

    /// Memory against the journal: an account whose balance in memory differs from its
    /// journal history, and that did not move since the check's entry id.
    async fn check_memory(&self, check: &mut JournalCheck) -> Result<(), LedgerError> {
        let mut differ: Vec<(u64, i64, Option<i64>)> = Vec::new();
        self.state.for_each_account(|a| {
            let mem = to_fen(a.balance).unwrap_or(i64::MIN);
            let journal = check.balances.get(&a.id).copied();
            if journal != Some(mem) {
                differ.push((a.id, mem, journal));
            }
        });
        if differ.is_empty() {
            return Ok(());
        }
        // Decided since the check's entry id: not a mismatch.
        self.journal().barrier().await?;
        let mut moved = std::collections::HashSet::new();
        let db = self.db().clone();
        let from = check.through;
        let later = tokio::task::spawn_blocking(move || db.read_entries(from, usize::MAX, EntryRecord::decode))
            .await
            .map_err(|e| LedgerError::Invalid(format!("integrity check: {e}")))??;
        let none = HashMap::new();
        for e in &later {
            for eff in effects(&e.record.body, &none) {
                moved.insert(match eff {
                    Effect::Move { account, .. } | Effect::Set { account, .. } => account,
                });
            }
            if let EntryBody::ImportCommitted(_) = &e.record.body {
                // An import's accounts are in its chunks: count every account new since.
                self.state.for_each_account(|a| {
                    if !check.balances.contains_key(&a.id) {
                        moved.insert(a.id);
                    }
                });
            }
        }
        for (account, mem, journal) in differ {
            if moved.contains(&account) {
                continue;
            }
            check.push(Mismatch {
                check: "memory",
                entry_id: Some(check.through),
                account: Some(account),
                day: None,
                expected: journal.map_or("no history".into(), |j| j.to_string()),
                found: mem.to_string(),
                detail: format!(
                    "account {account}'s balance in memory differs from its checkpoint and journal through entry {}",
                    check.through
                ),
            });
        }
        Ok(())
    }
}
