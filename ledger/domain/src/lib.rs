//! The cardgate domain: what happened, and the rules. This crate owns the records the
//! gateway keeps (accounts, cards, terminals, persons, operators, parameters, the
//! audit record), the journal entry of every kind with its stored encoding, money as
//! `Decimal` and its one conversion to integer fen, business time, and the rules as pure
//! functions: the purchase and reversal decision, the card lifecycle, input checks and
//! their named limits. No I/O, no tokio, no sled: this is the specification a reader
//! reads, and what property tests and fuzzers drive alone.
#![forbid(unsafe_code)]

pub mod access;
pub mod clock;
pub mod entry;
pub mod model;
pub mod money;
pub mod operator;
pub mod rules;

pub use clock::{Clock, ManualClock, SystemClock};

/// A rule said no: the request is at fault, with the reason in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);
