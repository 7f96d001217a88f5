//! The business day as the gateway's own journal tells it, for the completeness report
//! and the settlement (the central store tells the same day its way; the gateway compares
//! the two): per terminal, the day's movements by kind, declines, exceptions, sign-ons and
//! clock drift, time online, the sequence numbers used and those still missing.
//!
//! The journal keeps at least `central.journal_retention_s` (72 h by default) of entries,
//! so the gateway's side is there for today and the days just before; for an older day
//! the report says the journal no longer covers it. Offline sales count on the day they
//! were sold, and may arrive days later: a day is read from its start to the journal's end.
//!
//! Also here: the day's close for settlement (a `SettlementClosed` entry with every merchant's
//! figures, which never change afterwards), and the open sequence gaps of every terminal.

use std::collections::{BTreeMap, HashMap, HashSet};

use cardgate_domain::clock::business_day;
use cardgate_domain::entry::{EntryBody, EntryRecord, SettlementClose};
use cardgate_domain::model::{Outcome, SeqGaps, TerminalKind, TxKind};
use serde::Serialize;

use crate::desk::{By, Targets};
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes};
use crate::txn::Txn;

/// Entries read per step of a day's scan.
const SCAN_CHUNK: usize = 16 * 1024;

/// How much earlier than the day's start the scan begins: entries reach the journal in
/// the order they were sent, which may differ from their times by a little, and an
/// offline sale is posted at most a few minutes before its sale time.
const SCAN_MARGIN_MS: i64 = 10 * 60_000;

/// The day's figures of one terminal, from the journal (positive amounts, in fen).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TerminalDay {
    pub terminal: u64,
    pub merchant: u64,
    pub online_count: u64,
    pub online_fen: i64,
    pub reversal_count: u64,
    pub reversal_fen: i64,
    pub offline_count: u64,
    pub offline_fen: i64,
    pub declined_count: u64,
    pub exceptions: u64,
    pub sign_ons: u64,
    /// Terminal clock minus gateway clock at the day's last sign-on, and the largest
    /// difference of the day by magnitude.
    pub drift_last_ms: Option<i64>,
    pub drift_max_ms: Option<i64>,
    /// Milliseconds of the day (so far, for today) the terminal had a session.
    pub online_ms: i64,
    /// The lowest and highest sequence numbers used on the day.
    pub seq_min: Option<u64>,
    pub seq_max: Option<u64>,
    /// Sequence numbers never received, next to or among the day's: exact ranges.
    pub missing: Vec<(u64, u64)>,
}

/// A business day from the journal.
#[derive(Clone, Debug, Serialize)]
pub struct JournalDay {
    pub day: i32,
    pub start_ms: i64,
    pub end_ms: i64,
    /// The journal still holds the whole day (not pruned past its start).
    pub covered: bool,
    /// The gateway's first entry is after the day: it has no record of the day at all
    /// (a date before it was installed), which is not a complete day.
    pub before_first_entry: bool,
    /// The durable journal was read through this entry.
    pub through_entry: u64,
    pub terminals: BTreeMap<u64, TerminalDay>,
}

impl Targets for SettlementClose {
    fn targets(&self) -> Vec<String> {
        // As the day close's and every search's: the date, not the day's number.
        vec![format!("day:{}", crate::days::day_str(self.day))]
    }
}

impl Ledger {
    /// The first and last millisecond (exclusive) of business day `day`.
    pub fn day_bounds(&self, day: i32) -> (i64, i64) {
        let start = (i64::from(day) * 86_400_000) - i64::from(self.config.tz_offset_minutes) * 60_000;
        (start, start + 86_400_000)
    }

    /// Business day `day` as the journal has it. Reads the journal from the day's start
    /// to its end: run it off the async threads (`spawn_blocking`).
    pub fn journal_day(&self, day: i32) -> Result<JournalDay, LedgerError> {
        let tz = self.config.tz_offset_minutes;
        let (start_ms, end_ms) = self.day_bounds(day);
        let through = self
            .journal()
            .stats
            .durable_entry_id
            .load(std::sync::atomic::Ordering::Acquire);
        let db = self.db();
        let first = db.first_entry_id()?.unwrap_or(1);
        let from = self.first_entry_at(first, through, start_ms - SCAN_MARGIN_MS)?;
        let covered = first <= 1 || (from > first);
        let before_first_entry = first <= 1
            && db
                .read_entries(0, 1, EntryRecord::decode)?
                .first()
                .is_some_and(|e| e.record.time_ms >= end_ms);
        let mut out = JournalDay {
            day,
            start_ms,
            end_ms,
            covered,
            before_first_entry,
            through_entry: through,
            terminals: BTreeMap::new(),
        };
        // The numbers next to each open gap: a gap belongs to the day if one of them was
        // used on it.
        let gaps = self.open_gaps();
        let mut neighbours: HashSet<(u64, u64)> = HashSet::new();
        for g in &gaps {
            for (lo, hi) in &g.ranges {
                neighbours.insert((g.terminal, lo.saturating_sub(1)));
                neighbours.insert((g.terminal, hi + 1));
            }
        }
        let mut used_neighbours: HashSet<(u64, u64)> = HashSet::new();
        let mut after = from.saturating_sub(1);
        while after < through {
            let entries = db.read_entries(after, SCAN_CHUNK, EntryRecord::decode)?;
            let Some(last) = entries.last() else { break };
            after = last.id;
            for e in entries.iter().filter(|e| e.id <= through) {
                let time = e.record.time_ms;
                match &e.record.body {
                    EntryBody::Tx(t) => {
                        let sold = if t.kind == TxKind::OfflinePurchase {
                            t.terminal_time_ms
                        } else {
                            time
                        };
                        if business_day(sold, tz) != day {
                            continue;
                        }
                        let d = out.terminals.entry(t.terminal).or_insert_with(|| TerminalDay {
                            terminal: t.terminal,
                            ..TerminalDay::default()
                        });
                        d.merchant = t.merchant_id;
                        d.seq_min = Some(d.seq_min.map_or(t.seq, |m| m.min(t.seq)));
                        d.seq_max = Some(d.seq_max.map_or(t.seq, |m| m.max(t.seq)));
                        if neighbours.contains(&(t.terminal, t.seq)) {
                            used_neighbours.insert((t.terminal, t.seq));
                        }
                        match (t.kind, t.outcome) {
                            (_, Outcome::Declined { .. }) => d.declined_count += 1,
                            (TxKind::Purchase, Outcome::Approved { .. }) => {
                                d.online_count += 1;
                                d.online_fen += t.amount_fen;
                            }
                            (TxKind::Reversal, Outcome::Approved { .. }) => {
                                d.reversal_count += 1;
                                d.reversal_fen += t.amount_fen;
                            }
                            (TxKind::OfflinePurchase, Outcome::Approved { .. }) => {
                                d.offline_count += 1;
                                d.offline_fen += t.amount_fen;
                            }
                        }
                    }
                    EntryBody::TerminalSession(ev) => {
                        let d = out.terminals.entry(ev.terminal).or_insert_with(|| TerminalDay {
                            terminal: ev.terminal,
                            ..TerminalDay::default()
                        });
                        if ev.opened {
                            if (start_ms..end_ms).contains(&time) {
                                d.sign_ons += 1;
                                d.drift_last_ms = Some(ev.drift_ms);
                                if d.drift_max_ms.is_none_or(|m| ev.drift_ms.abs() > m.abs()) {
                                    d.drift_max_ms = Some(ev.drift_ms);
                                }
                            }
                        } else {
                            d.online_ms += overlap(ev.since_ms, time, start_ms, end_ms);
                        }
                    }
                    _ => {}
                }
            }
        }
        // Sessions open now, and what the live state knows of each terminal.
        let now = self.now_ms();
        self.state.for_each_terminal(|t| {
            let online_now = t
                .online_since_ms
                .map_or(0, |since| overlap(since, now, start_ms, end_ms));
            let active = out.terminals.contains_key(&t.info.id);
            if online_now > 0 || active {
                let d = out.terminals.entry(t.info.id).or_insert_with(|| TerminalDay {
                    terminal: t.info.id,
                    merchant: t.info.merchant_id,
                    ..TerminalDay::default()
                });
                d.online_ms += online_now;
                if d.merchant == 0 {
                    d.merchant = t.info.merchant_id;
                }
            }
        });
        for e in self.state.exceptions() {
            if (start_ms..end_ms).contains(&e.time_ms)
                && let Some(d) = out.terminals.get_mut(&e.terminal)
            {
                d.exceptions += 1;
            }
        }
        for g in gaps {
            let Some(d) = out.terminals.get_mut(&g.terminal) else {
                continue;
            };
            for (lo, hi) in g.ranges {
                let within = d.seq_min.is_some_and(|m| m <= lo) && d.seq_max.is_some_and(|m| lo <= m);
                let next_to = used_neighbours.contains(&(g.terminal, lo.saturating_sub(1)))
                    || used_neighbours.contains(&(g.terminal, hi + 1));
                if within || next_to {
                    d.missing.push((lo, hi));
                }
            }
        }
        Ok(out)
    }

    /// The first entry id at or after `first` whose time is at least `from_ms`, by
    /// binary search (entry times follow entry ids up to the scan margin).
    fn first_entry_at(&self, first: u64, through: u64, from_ms: i64) -> Result<u64, LedgerError> {
        let (mut lo, mut hi) = (first, through + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self.db().read_entries(mid.saturating_sub(1), 1, EntryRecord::decode)?;
            match e.first() {
                Some(e) if e.record.time_ms < from_ms => lo = e.id + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// Every terminal's open sequence gaps (terminals without any are left out).
    pub fn open_gaps(&self) -> Vec<SeqGaps> {
        let mut out = Vec::new();
        self.state.for_each_terminal(|t| {
            if !t.seen.gaps.is_empty() || t.seen.abandoned > 0 {
                out.push(t.gaps_record());
            }
        });
        out.sort_by_key(|g| g.terminal);
        out
    }

    /// For the gauges: (open gap ranges, sequence numbers missing, enabled POS
    /// terminals without a session now).
    pub fn sequence_summary(&self) -> (u64, u64, u64) {
        let (mut ranges, mut missing, mut offline) = (0u64, 0u64, 0u64);
        self.state.for_each_terminal(|t| {
            ranges += t.seen.gaps.len() as u64;
            missing += t.seen.missing();
            if t.info.kind == TerminalKind::Pos && t.info.enabled && t.sessions == 0 {
                offline += 1;
            }
        });
        (ranges, missing, offline)
    }

    /// The settlement close of `day`, if it was closed.
    pub fn settlement(&self, day: i32) -> Option<SettlementClose> {
        self.state.settlements().get(&day).cloned()
    }

    /// When `day` was closed for settlement: kept since closes carry their own time,
    /// else (a close of an older build) the time kept with its merchants' figures.
    pub fn settlement_closed_ms(&self, day: i32) -> Option<i64> {
        let kept = self.state.settlement_times().get(&day).copied();
        kept.or_else(|| {
            self.state
                .settlements()
                .get(&day)
                .and_then(|c| c.merchants.first().map(|m| m.closed_ms))
        })
    }

    /// Every settled day's close, oldest first.
    pub fn settlements(&self) -> Vec<SettlementClose> {
        self.state.settlements().values().cloned().collect()
    }

    /// Closes `close.day` for settlement with the figures given (taken from the central
    /// store through `close.through_entry`); a day closes once.
    pub async fn close_settlement(
        &self,
        by: &By<'_, SettlementClose>,
        close: SettlementClose,
    ) -> Result<SettlementClose, LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let closed_by = self.state.settlements().get(&close.day).map(|c| c.actor.name.clone());
            if let Some(by) = closed_by {
                let when = match self.settlement_closed_ms(close.day) {
                    Some(ms) => format!(
                        "at {}",
                        cardgate_domain::clock::format_local(ms, self.config.tz_offset_minutes)
                    ),
                    None => "(a day without sales, closed by an older build)".to_string(),
                };
                return Err(LedgerError::Invalid(format!(
                    "the day was closed by {by} {when}; a closed day does not change"
                )));
            }
            let now = self.now_ms();
            let mut writes = Writes::new();
            writes.push(StateWrite::Settlement(Box::new(close.clone())));
            writes.push(StateWrite::SettlementTime(crate::records::SettlementTime {
                day: close.day,
                closed_ms: now,
            }));
            self.state.settlement_times().insert(close.day, now);
            let body = EntryBody::SettlementClosed(Box::new(close.clone()));
            let sent = self.send_desk(txn, by, close.clone(), now, body, writes, 0);
            self.state.settlements().insert(close.day, close);
            sent
        };
        Ok(sent.durable().await?.0)
    }

    /// The live view of a terminal's sessions and sequence numbers, for the inventory.
    pub fn terminal_live(&self, terminal_id: u64) -> Option<TerminalLive> {
        let t = self.state.terminal(terminal_id)?;
        Some(TerminalLive {
            online_since_ms: t.online_since_ms,
            offline_since_ms: t.offline_since_ms,
            drift_ms: t.drift_ms,
            last_tx_seq: t.last_seq(),
            gaps: t.seen.gaps.clone(),
            missing: t.seen.missing(),
        })
    }

    /// Offline spending seen per card and day, by terminal (tests and the report).
    pub fn offline_card_days(&self, terminal_id: u64) -> HashMap<(u64, i32), i64> {
        self.state
            .terminal(terminal_id)
            .map(|t| t.offline_card_day.clone())
            .unwrap_or_default()
    }
}

/// What the gateway sees of a terminal right now.
#[derive(Clone, Debug, Serialize)]
pub struct TerminalLive {
    pub online_since_ms: Option<i64>,
    pub offline_since_ms: Option<i64>,
    pub drift_ms: i64,
    pub last_tx_seq: u64,
    pub gaps: Vec<(u64, u64)>,
    pub missing: u64,
}

/// Milliseconds of `[from, to)` inside `[start, end)`.
fn overlap(from: i64, to: i64, start: i64, end: i64) -> i64 {
    (to.min(end) - from.max(start)).max(0)
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn overlaps_are_clipped_to_the_day() {
        assert_eq!(overlap(0, 10, 5, 20), 5);
        assert_eq!(overlap(6, 8, 5, 20), 2);
        assert_eq!(overlap(15, 30, 5, 20), 5);
        assert_eq!(overlap(25, 30, 5, 20), 0);
    }
}
