//! The ledger's one error type. Each variant says whose fault it is, so that the API
//! layer can answer an operator's mistake with 4xx and our own failure with 5xx.

use cardgate_domain::Refusal;
use cardgate_journal::{JournalError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// sled failed or a record does not decode: ours; a retry after restart may help.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The journal refuses writes (poisoned or shut down): ours.
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("i/o on {0}: {1}")]
    Io(String, std::io::Error),
    /// The caller named something that already exists: theirs; retrying will not help.
    #[error("{what} {id} already exists")]
    Exists { what: &'static str, id: u64 },
    /// The caller named something that does not exist: theirs.
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: u64 },
    /// The caller named something by a name (a person id) that does not exist: theirs.
    #[error("{what} {name} not found")]
    NotFoundNamed { what: &'static str, name: String },
    /// The request breaks a rule (a negative amount, a state change not allowed): theirs.
    #[error("{0}")]
    Invalid(String),
}

impl From<Refusal> for LedgerError {
    fn from(r: Refusal) -> LedgerError {
        LedgerError::Invalid(r.0)
    }
}

impl LedgerError {
    pub fn exists(what: &'static str, id: u64) -> LedgerError {
        LedgerError::Exists { what, id }
    }

    pub fn not_found(what: &'static str, id: u64) -> LedgerError {
        LedgerError::NotFound { what, id }
    }

    /// True when the caller's request was at fault rather than the gateway.
    pub fn is_caller_fault(&self) -> bool {
        matches!(
            self,
            LedgerError::Exists { .. }
                | LedgerError::NotFound { .. }
                | LedgerError::NotFoundNamed { .. }
                | LedgerError::Invalid(_)
        )
    }
}
