//! End-to-end tests: the real `cardgate` binary on ephemeral ports, driven over real TCP
//! (and, where they exist, HTTP) exactly as terminals and operators drive it. One module
//! per area; `harness` starts, kills and restarts daemons.

mod business_day;
mod central;
mod console;
mod console_browser;
mod desk;
mod desk_imports;
mod doors;
mod durability;
mod harness;
mod lifecycle;
mod lunch;
mod observability;
mod offline;
mod pos;
mod records;
mod registry;
mod terminals;
