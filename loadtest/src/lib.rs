//! A cardgate terminal in code: the client side of the protocol (sign-on, MACed
//! requests, answers by request id) and the load generator built on it. The end-to-end
//! tests drive the real daemon through this client too, so it is written from
//! `docs/PROTOCOL.md` and `cardgate-codec` alone, as a terminal vendor would.
//!
//! `run` is the lunch-rush simulator behind `cardgate-loadtest`: a fleet of terminals
//! over many connections and source addresses, closed or open loop, a realistic mix
//! (`mix`), cards reported lost mid-run through the operator API (`desk`), and a
//! conservation check over balances read through the protocol (`conservation`). Some
//! terminals can lose the gateway mid-run, sell offline and upload on reconnect, and
//! terminals can skip sequence numbers on purpose (`offline`), so that the gateway's
//! completeness report can be checked against what the run knows it did. Door
//! controllers check cards beside the POS terminals (`doors`, `door_fleet`), with their
//! latency reported apart; what the two fleets share (configuration, clock, counters,
//! histograms, connecting) is `fleet`, beneath both.
#![forbid(unsafe_code)]

pub mod client;
pub mod conservation;
pub mod desk;
pub mod door_fleet;
pub mod doors;
pub mod fleet;
pub mod mix;
pub mod offline;
pub mod percentiles;
pub mod report;
pub mod run;
pub mod source;
pub mod timeline;
