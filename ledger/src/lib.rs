//! The ledger: the gateway's state in memory and every operation on it. This crate owns
//! the accounts, cards, terminals, persons, operators, parameters, blacklist and audit
//! trail held in memory (`state.rs`, one owning type, one lock order); the one write
//! protocol that makes each change durable before anyone sees its result (`txn.rs`);
//! the operations, a file per concern: the terminals' money requests (`pay.rs`) and
//! sessions (`terminals.rs`), the card desk (`desk/`), imports (files read as spreadsheets
//! save them: `sheet.rs`), the registry of merchants and terminals with their sealed keys
//! (`registry.rs`, `keys.rs`), the blank card stock (`stock.rs`), history, the audit
//! trail, the demo campus, the close of each business day (`days.rs`); recovery of
//! exactly the durable state (`recovery.rs`); consistent backups taken while it runs and
//! their restore (`backup.rs`); and the journal's half of the integrity check
//! (`integrity.rs`).
//! It is the only writer of the journal (`cardgate-journal`); the rules it applies are
//! `cardgate-domain`'s; the central store (`cardgate-central`) reads what it wrote.
#![forbid(unsafe_code)]

mod access;
pub mod audit;
mod audit_log;
pub mod backup;
pub mod blacklist;
pub mod completeness;
mod config;
pub mod days;
pub mod demo;
pub mod desk;
pub mod door_wire;
pub mod doors;
pub mod error;
pub mod history;
pub mod import;
pub mod integrity;
pub mod inventory;
pub mod keys;
pub mod ledger;
pub mod master;
pub mod offline;
pub mod pay;
pub mod presence;
pub mod records;
pub mod recovery;
pub mod registry;
mod sheet;
mod state;
pub mod stock;
pub mod terminals;
pub mod txn;

pub use cardgate_domain::clock::{Clock, ManualClock, SystemClock};
pub use error::LedgerError;
pub use ledger::{Ledger, LedgerConfig, OFFLINE_LIMITS_DEFAULT};
pub use recovery::RecoveryStats;
pub use txn::{Durable, Pending};
