//! The audit trail: one record per mutating admin call (and per refused call), journaled
//! like everything else so that the central store receives it, and kept here for the
//! admin API to list. A desk operation's record travels in the same submission as the
//! operation itself (`desk::Audit`); a call that changed nothing (a refusal, a dry run)
//! gets a record of its own (`Ledger::audit`).
//!
//! The gateway keeps the last `AUDIT_KEPT` records (`audit_log.rs`), in memory and in sled slots
//! `id % AUDIT_KEPT` (like the terminals' remembered outcomes), so its storage is bounded;
//! the central store keeps them all.

use cardgate_domain::model::AuditRecord;

pub use crate::audit_log::{AUDIT_KEPT, AUDIT_LIST_MAX, AuditQuery, audit_slot};
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes};
use crate::txn::Txn;

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
