//! The cardgate daemon. This crate owns the process: configuration, the terminal
//! listener and its sessions, the admin and metrics listeners (health and readiness
//! beside the metrics), the catalogue of metric families and the log's format, the
//! control socket, the order of start-up (check and bind everything, then recover, then
//! serve: `startup.rs`) and of shutdown (stop accepting, drain sessions, last central
//! flush, committer: `shutdown.rs`), and the command line. Decisions and durability belong to
//! `cardgate-ledger`, bytes on the wire to `cardgate-codec`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod config;
pub mod control;
pub mod daemon;
pub mod durability_cli;
mod gate;
pub mod health;
pub mod integrity;
pub mod logging;
pub mod metrics;
pub mod operator_cli;
pub mod reports;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod startup;
