//! A cardgate terminal in code: the client side of the protocol (sign-on, MACed
//! requests, answers by request id) and the load generator built on it. The end-to-end
//! tests drive the real daemon through this client too, so it is written from
//! `docs/PROTOCOL.md` and `cardgate-codec` alone, as a terminal vendor would.
#![forbid(unsafe_code)]

pub mod client;
