//! The cardgate terminal protocol, and nothing else: how bytes on a terminal's TCP
//! connection become typed messages and back. This crate owns the frame layout and its
//! limits, every message body, the sign-on key derivation and the per-frame MAC with its
//! replay counter. It does no I/O and knows nothing of accounts or money beyond integer
//! fen; the gateway and the terminal simulator both build on it, so a frame that one
//! encodes the other decodes by construction. `docs/PROTOCOL.md` is its specification.
#![forbid(unsafe_code)]

#[cfg(feature = "tokio-codec")]
pub mod codec;
pub mod crypto;
pub mod frame;
pub mod message;

#[cfg(feature = "tokio-codec")]
pub use codec::{CodecError, Side, TerminalCodec};
pub use crypto::{SessionKeys, TerminalSecret};
pub use frame::{FRAME_LEN_MAX, HEADER_LEN, MAC_LEN, PROTOCOL_VERSION};
pub use message::*;
