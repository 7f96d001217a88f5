//! Frame layout and its limits.
//!
//! ```text
//! offset  size  field
//! 0       4     length: u32 LE, the number of bytes that follow (header + body + MAC)
//! 4       1     version: PROTOCOL_VERSION
//! 5       1     type: message type
//! 6       2     flags: u16 LE, bit 0 = a MAC follows the body; all other bits zero
//! 8       4     request id: u32 LE, chosen by the terminal, echoed by the answer
//! 12      8     counter: u64 LE, strictly increasing per direction within a session
//! 20      n     body: fixed-width little-endian fields, n fixed per message type
//!                   (DOOR_CACHE_BULK: a fixed head, then as many entries as it counts)
//! 20+n    16    MAC (when flag bit 0 is set)
//! ```

/// The only protocol version this gateway speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Bytes between the length prefix and the body.
pub const HEADER_LEN: usize = 16;
/// Bytes of the truncated HMAC-SHA256 that ends an authenticated frame.
pub const MAC_LEN: usize = 16;

/// The largest value the length prefix may hold. Every message but DOOR_CACHE_BULK (a
/// length of at most 10,304, sent only by the gateway) is under 160 bytes; the limit keeps what
/// one connection can make us buffer small: it is checked before any byte of the frame
/// is buffered beyond the prefix, and the header's type bounds it further.
pub const FRAME_LEN_MAX: usize = 16 * 1024;

/// Flag bit 0: the frame ends with a MAC.
pub const FLAG_MAC: u16 = 0x0001;

/// Message types. Ranges are reserved so that later capabilities extend the protocol
/// without renumbering: see `docs/PROTOCOL.md`.
pub mod msg_type {
    pub const HELLO: u8 = 0x01;
    pub const CHALLENGE: u8 = 0x02;
    pub const PROOF: u8 = 0x03;
    pub const SIGN_ON_OK: u8 = 0x04;
    pub const HEARTBEAT: u8 = 0x05;
    pub const HEARTBEAT_ACK: u8 = 0x06;
    pub const ERROR: u8 = 0x0F;
    pub const PURCHASE: u8 = 0x10;
    pub const REVERSAL: u8 = 0x11;
    pub const BALANCE_INQUIRY: u8 = 0x12;
    pub const APPROVED: u8 = 0x20;
    pub const DECLINED: u8 = 0x21;
    pub const BALANCE: u8 = 0x22;
    /// G→T, unsolicited (request id 0): the blacklist has a new version.
    pub const BLACKLIST_PUSH: u8 = 0x30;
    /// T→G: send me the blacklist changes since a version (or the next full-list pages).
    pub const BLACKLIST_SYNC: u8 = 0x31;
    /// G→T: one page of a BLACKLIST_SYNC answer; a run of pages shares the request id.
    pub const BLACKLIST_PAGE: u8 = 0x32;
    /// T→G, unanswered: the blacklist version the terminal now holds.
    pub const BLACKLIST_ACK: u8 = 0x33;
    /// G→T, unsolicited (request id 0), right after SIGN_ON_OK to a POS terminal: the
    /// limits under which it may sell while it cannot reach the gateway.
    pub const OFFLINE_LIMITS: u8 = 0x60;
    /// T→G: the next `count` frames are OFFLINE_SALEs of one upload batch.
    pub const OFFLINE_BATCH: u8 = 0x61;
    /// T→G, unanswered on its own: one sale made offline, MACed under the terminal's key.
    pub const OFFLINE_SALE: u8 = 0x62;
    /// G→T: the answer to an OFFLINE_BATCH, once its sales are durable.
    pub const OFFLINE_RESULT: u8 = 0x63;
    /// T→G (door controller): may this card pass this door now?
    pub const ACCESS_CHECK: u8 = 0x40;
    /// G→T: the answer to an ACCESS_CHECK, grant or deny with a reason.
    pub const ACCESS_RESULT: u8 = 0x41;
    /// T→G (attendance clock): a card punched.
    pub const PUNCH: u8 = 0x42;
    /// G→T: the answer to a PUNCH.
    pub const PUNCH_RESULT: u8 = 0x43;
    /// T→G (door controller): bring my door group's cache from a version to now.
    pub const DOOR_CACHE_SYNC: u8 = 0x44;
    /// G→T: one page of cache entries of a DOOR_CACHE_SYNC answer.
    pub const DOOR_CACHE_PAGE: u8 = 0x45;
    /// G→T: one part of a weekly schedule the cache refers to (in a sync answer).
    pub const DOOR_SCHEDULE: u8 = 0x46;
    /// G→T: one part of the holiday calendar (in a sync answer).
    pub const DOOR_HOLIDAYS: u8 = 0x47;
    /// T→G, unanswered: the cache version the controller now holds.
    pub const DOOR_CACHE_ACK: u8 = 0x48;
    /// G→T, unsolicited (request id 0): the door group's cache has a new version.
    pub const DOOR_CACHE_PUSH: u8 = 0x49;
    /// T→G: the next `count` frames are DOOR_EVENTs decided offline.
    pub const DOOR_EVENTS_BATCH: u8 = 0x4A;
    /// T→G, unanswered on its own: one decision made offline, MACed under the long-term secret.
    pub const DOOR_EVENT: u8 = 0x4B;
    /// G→T: the answer to a DOOR_EVENTS_BATCH, once its events are durable.
    pub const DOOR_EVENTS_RESULT: u8 = 0x4C;
    /// G→T: a DOOR_CACHE_PAGE as long as its entries, to a controller that asked for it.
    pub const DOOR_CACHE_BULK: u8 = 0x4D;
    /// 0x30..=0x3F: blacklist push and delta sync (0x34..=0x3F still free).
    pub const RESERVED_BLACKLIST: std::ops::RangeInclusive<u8> = 0x30..=0x3F;
    /// 0x40..=0x4F: door access and attendance punches (0x4E..=0x4F still free).
    pub const RESERVED_DOOR: std::ops::RangeInclusive<u8> = 0x40..=0x4F;
    /// 0x50..=0x5F: attendance (still free: PUNCH and PUNCH_RESULT took 0x42 and 0x43
    /// beside the door messages, whose event sequence numbers they share).
    pub const RESERVED_ATTENDANCE: std::ops::RangeInclusive<u8> = 0x50..=0x5F;
    /// 0x60..=0x6F: offline sales (0x64..=0x6F still free).
    pub const RESERVED_OFFLINE: std::ops::RangeInclusive<u8> = 0x60..=0x6F;
}

/// The fixed part of every frame after the length prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub msg_type: u8,
    pub flags: u16,
    pub request_id: u32,
    pub counter: u64,
}

// Reading and writing headers is the frame codec's; without it only the layout is used.
#[cfg_attr(not(feature = "tokio-codec"), allow(dead_code))]
impl Header {
    pub fn has_mac(&self) -> bool {
        self.flags & FLAG_MAC != 0
    }

    pub(crate) fn read(b: &[u8]) -> Header {
        debug_assert!(b.len() >= HEADER_LEN);
        Header {
            version: b[0],
            msg_type: b[1],
            flags: u16::from_le_bytes([b[2], b[3]]),
            request_id: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            counter: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }

    pub(crate) fn write(&self, out: &mut impl bytes::BufMut) {
        out.put_u8(self.version);
        out.put_u8(self.msg_type);
        out.put_u16_le(self.flags);
        out.put_u32_le(self.request_id);
        out.put_u64_le(self.counter);
    }
}

const _: () = assert!(HEADER_LEN + 64 + MAC_LEN <= FRAME_LEN_MAX);
const _: () = assert!(FRAME_LEN_MAX <= u32::MAX as usize);
