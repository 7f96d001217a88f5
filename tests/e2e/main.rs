//! End-to-end tests: the real `cardgate` binary on ephemeral ports, driven over real TCP
//! (and, where they exist, HTTP) exactly as terminals and operators drive it. One module
//! per area; `harness` starts, kills and restarts daemons.

// Amounts in fen are written yuan_fen (`1_000_00` is 1,000.00 yuan).
#![allow(clippy::inconsistent_digit_grouping)]

// The harness serves every area module; not every area uses every helper.
#[allow(dead_code)]
mod harness;
mod lunch;
mod pos;
