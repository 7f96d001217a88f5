//! Consumption details (消费明细) and the daily fee list, read from the journal.
//!
//! Why the journal: every purchase entry already carries the evidence a dispute needs
//! (terminal, sequence number, blacklist version and limits in force, decline reason),
//! reading it costs the hot path nothing, and it survives restarts without a second
//! index to keep in step. Entries are found by time with a binary search over entry ids
//! (an entry's time is taken when it is queued, so ids and times agree to within
//! `TIME_SLACK_MS`), then scanned. Two bounds keep one query cheap: at most
//! `HISTORY_SCAN_ENTRIES_MAX` entries read and `HISTORY_ROWS_MAX` rows returned; an
//! answer cut by either says so (`complete: false`). Once the journal is pruned
//! (roadmap), ranges older than the oldest entry come from the central store, which is
//! the long-term home of history; the answer says where the journal starts.

use cardgate_codec::{CardNo, DeclineReason};
use serde::Serialize;

use cardgate_domain::entry::{CardAction, EntryBody, EntryRecord, MoneyKind, MoneyMove, PayMethod};
use cardgate_domain::model::Outcome;

use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::JournalEntry;

/// Entries one query reads at most: a day of a busy campus is ~300,000 entries, so this
/// covers a couple of weeks; longer disputes go to the central store.
pub const HISTORY_SCAN_ENTRIES_MAX: u64 = 5_000_000;
/// Rows one answer holds at most.
pub const HISTORY_ROWS_MAX: usize = 10_000;
/// How far an entry's time may run behind its id order (time is read before queueing).
pub const TIME_SLACK_MS: i64 = 60_000;
/// Entries read per step of a scan.
const SCAN_CHUNK: usize = 4096;

#[derive(Clone, Copy, Debug, Default)]
pub struct HistoryQuery {
    pub account: Option<u64>,
    pub card: Option<CardNo>,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// One line of consumption details.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryRow {
    pub entry_id: u64,
    pub time_ms: i64,
    /// purchase, reversal, topup, refund, fee_replacement, grant, card_lost, ...
    pub kind: String,
    pub tx_id: u64,
    pub card: u64,
    pub account: u64,
    /// The amount as the operation states it: positive, except an adjustment, which
    /// carries its sign.
    pub amount_fen: i64,
    /// What it did to the balance, signed: a purchase is negative, a declined request or
    /// a fee paid in cash is 0.
    pub balance_change_fen: i64,
    /// approved / declined / done
    pub outcome: &'static str,
    pub decline_reason: Option<&'static str>,
    pub balance_after_fen: Option<i64>,
    pub terminal: u64,
    pub merchant: u64,
    pub seq: u64,
    pub original_seq: u64,
    pub terminal_time_ms: i64,
    pub blacklist_version: u64,
    pub single_limit_fen: i64,
    pub daily_limit_fen: i64,
    pub spent_today_after_fen: i64,
    /// The operator, for desk operations.
    pub operator: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct History {
    pub rows: Vec<HistoryRow>,
    /// False when a bound cut the answer or the range starts before the journal.
    pub complete: bool,
    /// Time of the oldest entry the gateway still has (0 when none).
    pub journal_starts_ms: i64,
    pub scanned: u64,
}

/// One fee collected.
#[derive(Clone, Debug, Serialize)]
pub struct FeeRow {
    pub time_ms: i64,
    pub tx_id: u64,
    pub account: u64,
    pub fee: &'static str,
    pub amount_fen: i64,
    pub method: &'static str,
    pub operator: String,
}

/// One movement of cash at the desk: paid in (a top-up, a fee taken in cash) or paid
/// out (a refund, a cancelled account's balance), signed from the drawer's side.
#[derive(Clone, Debug, Serialize)]
pub struct CashRow {
    pub time_ms: i64,
    pub tx_id: u64,
    pub account: u64,
    /// `topup`, `fee_replacement`, `fee_temporary_card`, `refund` or `cancel_refund`.
    pub kind: &'static str,
    /// Into the drawer positive, out of it negative.
    pub cash_fen: i64,
    pub operator: String,
}

/// The money a desk entry moved, and who moved it: a money call's, or a card change's
/// (a replacement's fee, a cancellation's payout).
fn desk_move(e: &JournalEntry) -> Option<(&MoneyMove, &cardgate_domain::operator::Actor)> {
    match &e.record.body {
        EntryBody::Money(m) => Some((&m.movement, &m.actor)),
        EntryBody::CardChanged(c) => c.money.as_ref().map(|mv| (mv, &c.actor)),
        _ => None,
    }
}

fn blank(entry_id: u64, time_ms: i64, kind: String) -> HistoryRow {
    HistoryRow {
        entry_id,
        time_ms,
        kind,
        tx_id: 0,
        card: 0,
        account: 0,
        amount_fen: 0,
        balance_change_fen: 0,
        outcome: "done",
        decline_reason: None,
        balance_after_fen: None,
        terminal: 0,
        merchant: 0,
        seq: 0,
        original_seq: 0,
        terminal_time_ms: 0,
        blacklist_version: 0,
        single_limit_fen: 0,
        daily_limit_fen: 0,
        spent_today_after_fen: 0,
        operator: String::new(),
        reason: String::new(),
    }
}

/// A desk money movement's amounts on its row.
fn money_amounts(r: &mut HistoryRow, mv: &MoneyMove) {
    r.amount_fen = match mv.kind {
        MoneyKind::Adjustment => mv.balance_delta_fen,
        _ => mv.amount_fen,
    };
    r.balance_change_fen = mv.balance_delta_fen;
    r.balance_after_fen = Some(mv.balance_after_fen);
}

/// The rows an entry contributes to a query.
fn rows_of(e: &JournalEntry, q: &HistoryQuery, card_account: Option<u64>, out: &mut Vec<HistoryRow>) {
    let time = e.record.time_ms;
    let wants_account = |a: u64| q.account == Some(a) || (q.card.is_none() && q.account.is_none());
    match &e.record.body {
        EntryBody::Tx(t) => {
            let hit = q.card.map(|c| c == t.card).unwrap_or(false) || q.account.is_some_and(|a| a == t.account);
            if !hit {
                return;
            }
            let mut r = blank(e.id, time, t.kind.as_str().into());
            r.tx_id = t.tx_id;
            r.card = t.card.0;
            r.account = t.account;
            r.amount_fen = t.amount_fen;
            match t.outcome {
                Outcome::Approved { balance_after_fen, .. } => {
                    r.outcome = "approved";
                    r.balance_after_fen = Some(balance_after_fen);
                    r.balance_change_fen = t.kind.balance_change(t.amount_fen);
                }
                Outcome::Declined { reason, .. } => {
                    r.outcome = "declined";
                    r.decline_reason = Some(
                        DeclineReason::from_code(reason)
                            .map(|d| d.as_str())
                            .unwrap_or("unknown"),
                    );
                }
            }
            r.terminal = t.terminal;
            r.merchant = t.merchant_id;
            r.seq = t.seq;
            r.original_seq = t.original_seq;
            r.terminal_time_ms = t.terminal_time_ms;
            r.blacklist_version = t.blacklist_version;
            r.single_limit_fen = t.single_limit_fen;
            r.daily_limit_fen = t.daily_limit_fen;
            r.spent_today_after_fen = t.spent_today_after_fen;
            out.push(r);
        }
        EntryBody::Money(m) => {
            let mv = &m.movement;
            if !(wants_account(mv.account) || card_account == Some(mv.account)) {
                return;
            }
            let mut r = blank(e.id, time, mv.kind.as_str().into());
            r.tx_id = mv.tx_id;
            r.account = mv.account;
            money_amounts(&mut r, mv);
            r.operator = m.actor.name.clone();
            r.reason = mv.reason.clone();
            out.push(r);
        }
        EntryBody::CardChanged(c) => {
            let touches = c
                .cards
                .iter()
                .any(|k| q.card == Some(k.no) || q.account == Some(k.account) || card_account == Some(k.account));
            if !touches {
                return;
            }
            for k in c
                .cards
                .iter()
                .filter(|k| q.card.is_none() || q.card == Some(k.no) || c.action != CardAction::Cancel)
            {
                let mut r = blank(e.id, time, format!("card_{}", c.action.as_str()));
                r.card = k.no.0;
                r.account = k.account;
                r.operator = c.actor.name.clone();
                r.reason = k.status.as_str().into();
                r.blacklist_version = c.blacklist.iter().map(|b| b.version).max().unwrap_or(0);
                out.push(r);
            }
            if let Some(mv) = &c.money {
                let mut r = blank(e.id, time, mv.kind.as_str().into());
                r.tx_id = mv.tx_id;
                r.account = mv.account;
                money_amounts(&mut r, mv);
                r.operator = c.actor.name.clone();
                r.reason = mv.reason.clone();
                out.push(r);
            }
        }
        _ => {}
    }
}

impl Ledger {
    /// The first durable entry id, if any.
    fn first_entry_id(&self) -> Result<Option<u64>, LedgerError> {
        Ok(self.db().first_entry_id()?)
    }

    fn entry_at(&self, id: u64) -> Result<Option<JournalEntry>, LedgerError> {
        Ok(self
            .db()
            .read_entries(id.saturating_sub(1), 1, EntryRecord::decode)?
            .into_iter()
            .next())
    }

    /// Calls `f` on each durable entry whose time is in `[from_ms, to_ms)` (plus slack),
    /// in id order, until it returns false; returns entries read and whether the range
    /// was read to its end, and the journal's first time.
    pub(crate) fn scan_time_range(
        &self,
        from_ms: i64,
        to_ms: i64,
        mut f: impl FnMut(&JournalEntry) -> bool,
    ) -> Result<(u64, bool, i64), LedgerError> {
        let durable = self
            .journal()
            .stats
            .durable_entry_id
            .load(std::sync::atomic::Ordering::Acquire);
        let Some(first) = self.first_entry_id()? else {
            return Ok((0, true, 0));
        };
        let first_time = self.entry_at(first)?.map(|e| e.record.time_ms).unwrap_or(0);
        // The smallest id whose time is at or after from - slack.
        let target = from_ms.saturating_sub(TIME_SLACK_MS);
        let (mut lo, mut hi) = (first, durable + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry_at(mid)? {
                Some(e) if e.id <= durable && e.record.time_ms < target => lo = e.id + 1,
                _ => hi = mid,
            }
        }
        let mut after = lo.saturating_sub(1);
        let mut scanned = 0u64;
        let end = to_ms.saturating_add(TIME_SLACK_MS);
        loop {
            let entries = self.db().read_entries(after, SCAN_CHUNK, EntryRecord::decode)?;
            if entries.is_empty() {
                return Ok((scanned, true, first_time));
            }
            for e in &entries {
                if e.id > durable || e.record.time_ms >= end {
                    return Ok((scanned, true, first_time));
                }
                scanned += 1;
                if scanned > HISTORY_SCAN_ENTRIES_MAX {
                    return Ok((scanned, false, first_time));
                }
                if e.record.time_ms >= from_ms && e.record.time_ms < to_ms && !f(e) {
                    return Ok((scanned, false, first_time));
                }
                after = e.id;
            }
        }
    }

    /// A card's or an account's transactions in `[from_ms, to_ms)`, oldest first. Blocks
    /// on sled reads: call it from a blocking task.
    pub fn history(&self, q: HistoryQuery) -> Result<History, LedgerError> {
        let card_account = None;
        let mut rows = Vec::new();
        let (scanned, mut complete, first_time) = self.scan_time_range(q.from_ms, q.to_ms, |e| {
            rows_of(e, &q, card_account, &mut rows);
            rows.len() < HISTORY_ROWS_MAX
        })?;
        rows.truncate(HISTORY_ROWS_MAX);
        if first_time > q.from_ms {
            complete = false;
        }
        Ok(History {
            rows,
            complete,
            journal_starts_ms: first_time,
            scanned,
        })
    }

    /// The desk's cash in `[from_ms, to_ms)`: every money move that put cash into a
    /// drawer or took it out, with the operator at the drawer, for the day's count.
    /// Grants, adjustments and fees taken from the balance move no cash and are not here.
    pub fn cash_book(&self, from_ms: i64, to_ms: i64) -> Result<(Vec<CashRow>, bool), LedgerError> {
        let mut rows = Vec::new();
        let (_, complete, first_time) = self.scan_time_range(from_ms, to_ms, |e| {
            let Some((mv, actor)) = desk_move(e) else { return true };
            let cash_fen = match mv.kind {
                MoneyKind::TopUp => mv.amount_fen,
                MoneyKind::Fee(_) if mv.method == PayMethod::Cash => mv.amount_fen,
                MoneyKind::Refund | MoneyKind::CancelRefund => -mv.amount_fen,
                _ => return true,
            };
            rows.push(CashRow {
                time_ms: e.record.time_ms,
                tx_id: mv.tx_id,
                account: mv.account,
                kind: mv.kind.as_str(),
                cash_fen,
                operator: actor.name.clone(),
            });
            rows.len() < HISTORY_ROWS_MAX
        })?;
        Ok((rows, complete && first_time <= from_ms))
    }

    /// Fees collected in `[from_ms, to_ms)` (a business day for the daily list).
    pub fn fee_list(&self, from_ms: i64, to_ms: i64) -> Result<(Vec<FeeRow>, bool), LedgerError> {
        let mut rows = Vec::new();
        let (_, complete, first_time) = self.scan_time_range(from_ms, to_ms, |e| {
            if let Some((mv, actor)) = desk_move(e)
                && let MoneyKind::Fee(kind) = mv.kind
            {
                rows.push(FeeRow {
                    time_ms: e.record.time_ms,
                    tx_id: mv.tx_id,
                    account: mv.account,
                    fee: kind.as_str(),
                    amount_fen: mv.amount_fen,
                    method: mv.method.as_str(),
                    operator: actor.name.clone(),
                });
            }
            rows.len() < HISTORY_ROWS_MAX
        })?;
        Ok((rows, complete && first_time <= from_ms))
    }
}
