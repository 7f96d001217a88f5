//! Exceptions: money a terminal asked to move that the gateway could not (a reversal
//! for an account closed since its purchase), listed for the card desk until it settles
//! them by hand and records how.

use cardgate_domain::entry::EntryBody;
use cardgate_domain::model::{Exception, Resolution};
use cardgate_domain::rules::input::{REASON_BYTES_MAX, check_text};

use super::By;
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes};
use crate::txn::Txn;

impl Ledger {
    /// Every exception, oldest first; only the open ones when `open_only`.
    pub fn exceptions(&self, open_only: bool) -> Vec<Exception> {
        let mut v = self.state.exceptions();
        if open_only {
            v.retain(|e| e.resolved.is_none());
        }
        v
    }

    /// Records that the desk settled exception `id` (paid the refund in cash, ...), with
    /// a note saying how. Returns it before and after.
    pub async fn resolve_exception(
        &self,
        by: &By<'_, (Exception, Exception)>,
        id: u64,
        note: &str,
    ) -> Result<(Exception, Exception), LedgerError> {
        check_text("note", note, REASON_BYTES_MAX, true)?;
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let before = self
                .state
                .exception(id)
                .ok_or_else(|| LedgerError::not_found("exception", id))?;
            if before.resolved.is_some() {
                return Err(LedgerError::Invalid(format!("exception {id} is already settled")));
            }
            let now = self.now_ms();
            let mut after = before.clone();
            after.resolved = Some(Resolution {
                actor: by.actor.clone(),
                time_ms: now,
                note: note.to_string(),
            });
            let mut writes = Writes::new();
            writes.push(StateWrite::Exception(Box::new(after.clone())));
            let body = EntryBody::Exception(Box::new(after.clone()));
            let sent = self.send_desk(txn, by, (before, after.clone()), now, body, writes, 0);
            self.state.put_exception(after);
            sent
        };
        Ok(sent.durable().await?.0)
    }
}
