//! The cardgate domain and its durability. This crate owns the accounts, cards,
//! terminals and business parameters held in memory; the decision rules for purchases,
//! reversals and inquiries; idempotency by terminal sequence number; the sled journal
//! whose single committer makes one flush (plus `fdatasync`) cover every decision that
//! arrived while the previous one ran; recovery of exactly the durable state at
//! start; and the flusher that ships every committed entry to the central store
//! (`central`, SQLite or PostgreSQL), the only network I/O here. It knows the wire
//! protocol only through `cardgate-codec`'s message types and serves no terminal.
#![forbid(unsafe_code)]

pub mod audit;
pub mod blacklist;
pub mod central;
pub mod clock;
pub mod demo;
pub mod desk;
pub mod entry;
pub mod error;
pub mod history;
pub mod import;
pub mod journal;
pub mod ledger;
pub mod model;
pub mod money;
pub mod operators;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::LedgerError;
pub use ledger::{Ledger, LedgerConfig, Pending, RecoveryStats};
