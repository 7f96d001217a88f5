//! The rules, as pure functions of their inputs: what a purchase, a reversal or an
//! uploaded offline sale decides, which sequence numbers a terminal left out, which card status an action leads to, and what input is acceptable. The
//! ledger locks, calls, journals and answers; these say yes or no, and why.

pub mod access;
pub mod attendance;
pub mod card;
pub mod input;
pub mod offline;
pub mod purchase;
pub mod registry;
pub mod sequence;
