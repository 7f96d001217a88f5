//! The rules, as pure functions of their inputs: what a purchase or a reversal
//! decides, which card status an action leads to, and what input is acceptable. The
//! ledger locks, calls, journals and answers; these say yes or no, and why.

pub mod card;
pub mod input;
pub mod purchase;
pub mod registry;
