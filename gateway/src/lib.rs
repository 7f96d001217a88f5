//! The cardgate daemon. This crate owns the process: configuration, the terminal
//! listener and its sessions, the metrics listener, the order of start-up (recover, then
//! listen) and of shutdown (stop accepting, answer what is in flight, let the committer
//! drain, exit), and the command line. Decisions and durability belong to
//! `cardgate-ledger`, bytes on the wire to `cardgate-codec`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod daemon;
pub mod durability_cli;
pub mod integrity;
pub mod metrics;
pub mod operator_cli;
pub mod server;
pub mod session;
