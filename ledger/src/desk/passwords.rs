//! Console passwords: set (the first by the command line, then by their owner, or reset
//! by an administrator) and checked at sign-in.
//!
//! The hash is argon2id with the crate's default cost (19 MiB, 2 passes, 1 lane: the
//! floor OWASP recommends), in a PHC string that carries its parameters. Hashing runs
//! on the blocking pool, at most `PASSWORD_HASHES_AT_ONCE_MAX` at a time: each one holds
//! 19 MiB and tens of milliseconds of a core, and the sign-in form is open to anyone
//! who reaches the admin listener, so a flood of sign-ins queues here instead of
//! taking the machine's memory and both cores from the terminals.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use cardgate_domain::entry::{EntryBody, PasswordEntry};
use cardgate_domain::operator::{Operator, PasswordRecord, validate_password};
use tokio::sync::Semaphore;

use super::{By, Targets};
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes};
use crate::txn::Txn;

/// Password hashes computed at once (sign-ins and changes together).
pub const PASSWORD_HASHES_AT_ONCE_MAX: usize = 2;

static HASHING: Semaphore = Semaphore::const_new(PASSWORD_HASHES_AT_ONCE_MAX);

/// What a password change did, for its audit record and its answer; never the hash.
#[derive(Clone, Debug)]
pub struct PasswordChanged {
    pub operator: Operator,
    pub must_change: bool,
    /// The operator had no password before.
    pub first: bool,
}

impl Targets for PasswordChanged {
    fn targets(&self) -> Vec<String> {
        vec![format!("operator:{}", self.operator.id)]
    }
}

/// A sign-in's verdict.
#[derive(Clone, Debug)]
pub enum SignIn {
    /// The password is the operator's.
    Valid { operator: Operator, must_change: bool },
    /// No enabled operator of that name has a password, or it is not this one: the
    /// caller is told no more than that, so that names cannot be probed.
    Invalid,
}

fn hashing_failed(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Io("argon2 password hash".into(), std::io::Error::other(e.to_string()))
}

/// Runs `f` on the blocking pool once a hashing slot is free.
async fn hashing<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, LedgerError> {
    let _slot = HASHING.acquire().await.map_err(hashing_failed)?;
    tokio::task::spawn_blocking(f).await.map_err(hashing_failed)
}

/// The PHC string of `password` under a fresh random salt.
fn hash(password: &str) -> Result<String, LedgerError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(hashing_failed)
}

fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash nobody's password matches, checked when the name is unknown so that a
/// sign-in costs the same whether or not the name exists.
fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash("no operator has this password: it is only ever compared").unwrap_or_default())
}

impl Ledger {
    /// Whether the operator has a console password.
    pub fn has_password(&self, operator_id: u64) -> bool {
        self.state.password(operator_id).is_some()
    }

    /// When the operator's console password was last set: a session signed in under an
    /// older one is over.
    pub fn password_set_ms(&self, operator_id: u64) -> Option<i64> {
        self.state.password(operator_id).map(|p| p.set_ms)
    }

    /// Sets an operator's console password. `must_change` asks its owner for a new one
    /// at the next sign-in (set it when someone else chose this one).
    pub async fn set_password(
        &self,
        by: &By<'_, PasswordChanged>,
        operator_id: u64,
        password: &str,
        must_change: bool,
    ) -> Result<PasswordChanged, LedgerError> {
        validate_password(password)?;
        if self.state.operator(operator_id).is_none() {
            return Err(LedgerError::not_found("operator", operator_id));
        }
        let password = password.to_string();
        let phc = hashing(move || hash(&password)).await??;
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let operator = self
                .state
                .operator(operator_id)
                .ok_or_else(|| LedgerError::not_found("operator", operator_id))?;
            let now = self.now_ms();
            let record = PasswordRecord {
                operator_id,
                phc,
                must_change,
                set_ms: now,
            };
            let changed = PasswordChanged {
                operator,
                must_change,
                first: self.state.password(operator_id).is_none(),
            };
            let mut writes = Writes::new();
            writes.push(StateWrite::Password(Box::new(record.clone())));
            let body = EntryBody::PasswordSet(Box::new(PasswordEntry {
                actor: by.actor.clone(),
                password: record.clone(),
            }));
            let sent = self.send_desk(txn, by, changed, now, body, writes, 0);
            self.state.put_password(record);
            sent
        };
        Ok(sent.durable().await?.0)
    }

    /// Checks a sign-in. Costs one argon2 run whatever the name, so that the time it
    /// takes does not tell which names exist. Disabled operators never sign in.
    pub async fn check_password(&self, name: &str, password: &str) -> Result<SignIn, LedgerError> {
        let operator = self.state.operators().into_iter().find(|o| o.name == name && o.enabled);
        let record = operator.as_ref().and_then(|o| self.state.password(o.id));
        let phc = record.as_ref().map(|r| r.phc.clone());
        let password = password.to_string();
        let matches = hashing(move || match phc {
            Some(phc) => verify(&password, &phc),
            None => {
                verify(&password, decoy());
                false
            }
        })
        .await?;
        Ok(match (matches, operator, record) {
            (true, Some(operator), Some(record)) => SignIn::Valid {
                operator,
                must_change: record.must_change,
            },
            _ => SignIn::Invalid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only_and_carries_its_parameters() {
        let phc = hash("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify("correct horse battery", &phc));
        assert!(!verify("correct horse batterY", &phc));
        assert_ne!(phc, hash("correct horse battery").unwrap(), "a fresh salt each time");
        assert!(!verify("anything", "not a phc string"));
        assert!(!verify("anything", decoy()));
    }
}
