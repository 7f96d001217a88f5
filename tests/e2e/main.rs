//! End-to-end tests: the real `cardgate` binary on ephemeral ports, driven over real TCP
//! (and, where they exist, HTTP) exactly as terminals and operators drive it. One module
//! per area; `harness` starts, kills and restarts daemons.

mod central;
mod desk;
mod desk_imports;
mod durability;
mod harness;
mod lunch;
mod pos;
mod records;
mod terminals;
