//! The audit records the gateway keeps: the last `AUDIT_KEPT`, in memory for listing and
//! in sled slots `id % AUDIT_KEPT`. State beneath the ledger; journaling a record and
//! listing them are the ledger's (`audit.rs`).

use std::collections::VecDeque;

use cardgate_domain::model::AuditRecord;
use parking_lot::Mutex;

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
