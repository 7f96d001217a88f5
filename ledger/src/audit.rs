//! The audit trail: one record per mutating admin call (and per refused call), journaled
//! like everything else so that the central store receives it, and kept here for the
//! admin API to list. A desk operation's record travels in the same submission as the
//! operation itself (`desk::Audit`); a call that changed nothing (a refusal, a dry run)
//! gets a record of its own (`Ledger::audit`).
//!
//! The gateway keeps the last `AUDIT_KEPT` records, in memory and in sled slots
//! `id % AUDIT_KEPT` (like the terminals' remembered outcomes), so its storage is bounded;
//! the central store keeps them all.

use std::collections::VecDeque;

use cardgate_domain::model::AuditRecord;
use parking_lot::Mutex;

use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes};
use crate::txn::Txn;

/// Audit records the gateway itself keeps: at a busy desk (a few thousand operations a
/// day) this is weeks of history, enough to answer "who did this" on the spot; older
/// records are in the central store.
pub const AUDIT_KEPT: u64 = 100_000;

/// The most records one listing returns.
pub const AUDIT_LIST_MAX: usize = 10_000;

/// What a listing asks for.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub operator: Option<String>,
    /// A target the record names (exactly, or by prefix when it ends with `*`): one
    /// record names everything its call changed, e.g. `card:62220001 card:62220002
    /// account:17` for a replacement.
    pub target: Option<String>,
    pub limit: usize,
}

pub(crate) struct AuditLog {
    records: Mutex<VecDeque<AuditRecord>>,
}

impl AuditLog {
    pub(crate) fn new(mut loaded: Vec<AuditRecord>) -> AuditLog {
        loaded.sort_by_key(|r| r.id);
        let skip = loaded.len().saturating_sub(AUDIT_KEPT as usize);
        AuditLog {
            records: Mutex::new(loaded.into_iter().skip(skip).collect()),
        }
    }

    pub(crate) fn last_id(&self) -> u64 {
        self.records.lock().back().map(|r| r.id).unwrap_or(0)
    }

    pub(crate) fn insert(&self, rec: AuditRecord) {
        let mut r = self.records.lock();
        // Ids are given in order under the same lock that sends them, but replay and live
        // insertion meet here, so keep the order by id.
        if r.back().is_some_and(|b| b.id >= rec.id) {
            if r.iter().any(|x| x.id == rec.id) {
                return;
            }
            let pos = r.partition_point(|x| x.id < rec.id);
            r.insert(pos, rec);
        } else {
            r.push_back(rec);
        }
        while r.len() as u64 > AUDIT_KEPT {
            r.pop_front();
        }
    }

    pub(crate) fn list(&self, q: &AuditQuery) -> Vec<AuditRecord> {
        let limit = q.limit.clamp(1, AUDIT_LIST_MAX);
        let target = q.target.as_deref();
        let r = self.records.lock();
        let mut out: Vec<AuditRecord> = r
            .iter()
            .rev()
            .filter(|x| q.from_ms.is_none_or(|f| x.time_ms >= f))
            .filter(|x| q.to_ms.is_none_or(|t| x.time_ms < t))
            .filter(|x| match &q.operator {
                None => true,
                Some(o) => x
                    .actor
                    .as_ref()
                    .is_some_and(|a| a.name == *o || a.operator_id.to_string() == *o),
            })
            .filter(|x| match target {
                None => true,
                // A record names every record its call changed, separated by spaces.
                Some(t) => x.target.split(' ').any(|own| match t.strip_suffix('*') {
                    Some(prefix) => own.starts_with(prefix),
                    None => own == t,
                }),
            })
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

/// The slot an audit record is stored in.
pub fn audit_slot(id: u64) -> u64 {
    id % AUDIT_KEPT
}

impl Ledger {
    /// Journals an audit record of a call that changed nothing (its id and time are
    /// filled in); returns its id once durable.
    pub async fn audit(&self, mut rec: AuditRecord) -> Result<u64, LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        rec.id = self.state.new_audit_id();
        rec.time_ms = self.now_ms();
        let mut records = Writes::new();
        records.push(StateWrite::Audit(Box::new(rec.clone())));
        let id = rec.id;
        let sent = txn.send(
            id,
            rec.time_ms,
            cardgate_domain::entry::EntryBody::Audit(Box::new(rec.clone())),
            records,
            0,
        );
        self.state.audit().insert(rec);
        let (id, _) = sent.durable().await?;
        metrics::counter!("cardgate_audit_records_total").increment(1);
        Ok(id)
    }

    pub fn audit_list(&self, q: &AuditQuery) -> Vec<AuditRecord> {
        self.state.audit().list(q)
    }
}
