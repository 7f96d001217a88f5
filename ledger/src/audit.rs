//! The audit trail: one record per mutating admin call (and per refused call), journaled
//! like everything else so that the central store receives it, and kept here for the
//! admin API to list.
//!
//! The gateway keeps the last `AUDIT_KEPT` records, in memory and in sled slots
//! `id % AUDIT_KEPT` (like the terminals' remembered outcomes), so its storage is bounded;
//! the central store keeps them all.

use std::collections::VecDeque;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::operators::Actor;

/// Audit records the gateway itself keeps: at a busy desk (a few thousand operations a
/// day) this is weeks of history, enough to answer "who did this" on the spot; older
/// records are in the central store.
pub const AUDIT_KEPT: u64 = 100_000;

/// The most records one listing returns.
pub const AUDIT_LIST_MAX: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: u64,
    pub time_ms: i64,
    /// `None` when the caller presented no valid token.
    pub actor: Option<Actor>,
    /// e.g. `card.lost`, `money.topup`, `auth.denied`.
    pub action: String,
    /// What was acted on, e.g. `card:1000000001`, `account:17`, `operator:3`.
    pub target: String,
    /// The HTTP status the call got.
    pub status: u16,
    /// JSON of the target before and after (empty when not applicable).
    pub before: String,
    pub after: String,
    /// The error message of a refused call, or a short summary.
    pub detail: String,
}

/// What a listing asks for.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub operator: Option<String>,
    /// Exact target, or a prefix when it ends with `*`.
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
                Some(t) => match t.strip_suffix('*') {
                    Some(prefix) => x.target.starts_with(prefix),
                    None => x.target == t,
                },
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
