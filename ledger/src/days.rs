//! Closing business days: after a local day ends, the gateway journals a `DayClosed`
//! entry naming the day's last entry and its chain hash, and what the day moved, with an
//! audit record in the same submission. The close is itself in the chain; the central
//! store keeps it in `day_closes`, so a later change to the day's entries (even one that
//! recomputed every hash after it) disagrees with a hash held elsewhere.
//!
//! A day's last entry is the highest entry id whose time falls on the day or before
//! (`DayClose`); entries of the next day may come a few before it (a group commit
//! straddling midnight), so the totals count entries by their time, not their id.

use std::sync::atomic::Ordering;

use cardgate_domain::clock::{business_day, format_local};
use cardgate_domain::entry::{DayClose, EntryBody, EntryRecord};
use cardgate_domain::model::{AuditRecord, Outcome};
use cardgate_journal::chain::to_hex;
use cardgate_journal::{Db, StoreError};
use smallvec::smallvec;

use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes};
use crate::txn::Txn;

/// A day is closed this long after it ends: every decision timed before midnight has
/// reached the journal long before (a decision waits at most for its queue slot and one
/// group commit).
pub const DAY_CLOSE_GRACE_MS: i64 = 60_000;

/// Days one call closes at most; a gateway that was stopped for longer closes the rest
/// on the following calls.
pub const DAY_CLOSES_PER_CALL_MAX: usize = 31;

/// Entries read per step of the scan.
const SCAN_CHUNK: usize = 16 * 1024;

/// The local date of a business day, `YYYY-MM-DD`.
pub fn day_str(day: i32) -> String {
    let (y, m, d) = cardgate_domain::clock::civil_from_days(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

/// What a money entry did to one account's balance: (account, signed fen), approved
/// movements only. One entry moves at most one account.
pub fn movement(body: &EntryBody) -> Option<(u64, i64)> {
    match body {
        EntryBody::Tx(t) => match t.outcome {
            Outcome::Approved { .. } => Some((t.account, t.kind.balance_change(t.amount_fen))),
            Outcome::Declined { .. } => None,
        },
        EntryBody::Money(m) => Some((m.movement.account, m.movement.balance_delta_fen)),
        EntryBody::CardChanged(c) => c.money.as_ref().map(|m| (m.account, m.balance_delta_fen)),
        _ => None,
    }
}

/// Closes of the days `first_day..first_day + days`, from the journal after
/// `after_id` through `durable`.
fn compute(
    db: &Db,
    after_id: u64,
    durable: u64,
    first_day: i32,
    days: usize,
    tz: i32,
    anchored: bool,
) -> Result<Vec<DayClose>, StoreError> {
    // Per day: the last entry at or before it, its hash, and the day's approved money. A
    // day without entries of its own ends where the day before ended.
    let start = (after_id, db.entry_hash(after_id)?.unwrap_or([0; 32]));
    let mut last: Vec<(u64, [u8; 32])> = vec![start; days];
    let mut moved: Vec<(u64, i64)> = vec![(0, 0); days];
    let mut first_id = None;
    let mut after = after_id;
    'scan: loop {
        let entries = db.read_entries(after, SCAN_CHUNK, EntryRecord::decode)?;
        let Some(tail) = entries.last() else { break };
        after = tail.id;
        for e in entries {
            if e.id > durable {
                break 'scan;
            }
            first_id.get_or_insert(e.id);
            let day = business_day(e.record.time_ms, tz);
            let from = (day - first_day).max(0) as usize;
            for slot in last.iter_mut().skip(from) {
                *slot = (e.id, e.hash.unwrap_or([0; 32]));
            }
            if let Ok(i) = usize::try_from(day - first_day)
                && i < days
                && let Some((_, fen)) = movement(&e.record.body)
            {
                moved[i].0 += 1;
                moved[i].1 += fen;
            }
        }
    }
    let complete = anchored && first_id.is_none_or(|f| f == after_id + 1);
    let mut out = Vec::with_capacity(days);
    let mut prev = after_id;
    for (i, &(last_id, hash)) in last.iter().enumerate() {
        out.push(DayClose {
            day: first_day + i as i32,
            tz_offset_minutes: tz,
            first_entry_id: prev + 1,
            last_entry_id: last_id,
            hash,
            transactions: moved[i].0,
            transactions_fen: moved[i].1,
            complete,
        });
        prev = last_id;
    }
    Ok(out)
}

impl Ledger {
    /// The last business day closed.
    pub fn last_day_close(&self) -> Option<DayClose> {
        self.state.day_close().clone()
    }

    /// Closes every business day that ended at least `DAY_CLOSE_GRACE_MS` ago and is not
    /// closed yet (at most `DAY_CLOSES_PER_CALL_MAX`); returns the closes made. The first
    /// day closed is the day of the first entry the journal holds.
    pub async fn close_days(&self) -> Result<Vec<DayClose>, LedgerError> {
        let _one = self.state.day_closing().lock().await;
        let tz = self.tz_offset_minutes();
        let closable_before = business_day(self.now_ms() - DAY_CLOSE_GRACE_MS, tz);
        let previous = self.last_day_close();
        let db = self.db().clone();
        let (first_day, after_id) = match &previous {
            Some(c) => (c.day + 1, c.last_entry_id),
            None => {
                let Some(first) = db.read_entries(0, 1, EntryRecord::decode)?.into_iter().next() else {
                    return Ok(Vec::new());
                };
                (business_day(first.record.time_ms, tz), first.id - 1)
            }
        };
        if first_day >= closable_before {
            return Ok(Vec::new());
        }
        let days = usize::try_from(closable_before - first_day)
            .unwrap_or(0)
            .min(DAY_CLOSES_PER_CALL_MAX);
        // Everything decided before now is durable, and so visible to the scan.
        self.journal().barrier().await?;
        let durable = self.journal().stats.durable_entry_id.load(Ordering::Acquire);
        // Every entry is counted if the previous close was, or if the journal begins at 1.
        let anchored = previous.as_ref().map_or(after_id == 0, |p| p.complete);
        let closes =
            tokio::task::spawn_blocking(move || compute(&db, after_id, durable, first_day, days, tz, anchored))
                .await
                .map_err(|e| LedgerError::Invalid(format!("closing days: {e}")))??;
        for close in &closes {
            self.journal_close(close).await?;
        }
        Ok(closes)
    }

    /// Journals one close with its audit record, in one submission.
    async fn journal_close(&self, close: &DayClose) -> Result<(), LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        let now = self.now_ms();
        let date = day_str(close.day);
        let audit = AuditRecord {
            id: self.state.new_audit_id(),
            time_ms: now,
            actor: None,
            action: "day.close".into(),
            target: format!("day:{date}"),
            status: 200,
            before: String::new(),
            after: serde_json::json!({
                "day": date,
                "tz_offset_minutes": close.tz_offset_minutes,
                "first_entry_id": close.first_entry_id,
                "last_entry_id": close.last_entry_id,
                "hash": to_hex(&close.hash),
                "transactions": close.transactions,
                "transactions_fen": close.transactions_fen,
                "complete": close.complete,
            })
            .to_string(),
            detail: format!(
                "business day {date} closed at {} (UTC{:+}:{:02})",
                format_local(now, close.tz_offset_minutes),
                close.tz_offset_minutes / 60,
                (close.tz_offset_minutes % 60).abs()
            ),
        };
        let mut records = Writes::new();
        records.push(StateWrite::DayClosed(Box::new(close.clone())));
        records.push(StateWrite::Audit(Box::new(audit.clone())));
        let sent = txn.send_all(
            (),
            smallvec![
                EntryRecord {
                    time_ms: now,
                    body: EntryBody::DayClosed(Box::new(close.clone())),
                },
                EntryRecord {
                    time_ms: now,
                    body: EntryBody::Audit(Box::new(audit.clone())),
                },
            ],
            records,
            0,
        );
        *self.state.day_close() = Some(close.clone());
        self.state.audit().insert(audit);
        sent.durable().await?;
        metrics::counter!("cardgate_day_closes_total").increment(1);
        tracing::info!(
            day = %date,
            last_entry_id = close.last_entry_id,
            hash = %to_hex(&close.hash),
            transactions = close.transactions,
            "business day closed"
        );
        Ok(())
    }
}
