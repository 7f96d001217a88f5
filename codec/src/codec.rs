//! The tokio-util `Decoder`/`Encoder` for terminal connections.
//!
//! The codec is a pure state machine over `BytesMut`: an incomplete frame is `Ok(None)`,
//! the length prefix is checked against `FRAME_LEN_MAX` as soon as it is in, the header
//! (version, flags, type, and the length the type requires) before anything is reserved
//! for the body, and
//! EOF inside a frame is an error while EOF between frames is a clean close (tokio-util's
//! default `decode_eof`). Once a session is installed, every frame in both directions
//! carries a MAC and a counter; the decoder refuses a frame whose MAC fails or whose
//! counter is not above the last one it accepted, before its body is even parsed.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::crypto::{MacKey, SessionKeys};
use crate::frame::{FLAG_MAC, FRAME_LEN_MAX, HEADER_LEN, Header, LEN_PREFIX, MAC_LEN, PROTOCOL_VERSION, msg_type};
use crate::message::{BodyError, ErrorCode, Message};

/// Which end of the connection this codec serves; it picks the MAC key per direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Gateway,
    Terminal,
}

/// A decoded, verified frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub request_id: u32,
    pub counter: u64,
    pub message: Message,
}

/// Everything that makes a connection's byte stream unusable. Each maps to the ERROR
/// code the gateway sends before it closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame length {len} exceeds the limit of {FRAME_LEN_MAX}")]
    FrameTooLarge { len: usize },
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("malformed body: {0}")]
    Body(#[from] BodyError),
    #[error("message type {msg_type:#04x} requires a signed-on session")]
    Unauthenticated { msg_type: u8 },
    #[error("message type {msg_type:#04x} is sent by the gateway, not to it")]
    WrongDirection { msg_type: u8 },
    #[error("frame MAC does not verify")]
    BadMac,
    #[error("frame counter {counter} is not above the last accepted {last}: replay")]
    Replay { counter: u64, last: u64 },
}

impl CodecError {
    pub fn error_code(&self) -> ErrorCode {
        match self {
            CodecError::Io(_) => ErrorCode::ServerError,
            CodecError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            CodecError::Malformed(_) | CodecError::Body(_) => ErrorCode::Malformed,
            CodecError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            CodecError::Unauthenticated { .. } | CodecError::WrongDirection { .. } => ErrorCode::UnexpectedMessage,
            CodecError::BadMac => ErrorCode::BadMac,
            CodecError::Replay { .. } => ErrorCode::Replay,
        }
    }
}

/// Frames one terminal connection, on either side.
#[derive(Debug)]
pub struct TerminalCodec {
    side: Side,
    keys: Option<SessionKeys>,
    recv_counter: u64,
    send_counter: u64,
}

impl TerminalCodec {
    pub fn new(side: Side) -> TerminalCodec {
        TerminalCodec {
            side,
            keys: None,
            recv_counter: 0,
            send_counter: 0,
        }
    }

    /// From now on every frame in both directions is MACed and counted.
    pub fn install_session(&mut self, keys: SessionKeys) {
        self.keys = Some(keys);
        self.recv_counter = 0;
        self.send_counter = 0;
    }

    pub fn has_session(&self) -> bool {
        self.keys.is_some()
    }

    fn recv_key(&self) -> Option<&MacKey> {
        let k = self.keys.as_ref()?;
        Some(match self.side {
            Side::Gateway => &k.up,
            Side::Terminal => &k.down,
        })
    }

    fn send_key(&self) -> Option<&MacKey> {
        let k = self.keys.as_ref()?;
        Some(match self.side {
            Side::Gateway => &k.down,
            Side::Terminal => &k.up,
        })
    }
}

impl Side {
    /// Whether this side accepts `msg_type` before a session exists: the gateway only
    /// HELLO and PROOF from a terminal, a terminal only CHALLENGE and ERROR from the
    /// gateway. Everything else needs a session and a MAC.
    pub fn accepts_unauthenticated(self, msg_type: u8) -> bool {
        match self {
            Side::Gateway => matches!(msg_type, msg_type::HELLO | msg_type::PROOF),
            Side::Terminal => matches!(msg_type, msg_type::CHALLENGE | msg_type::ERROR),
        }
    }
}

impl TerminalCodec {
    /// Checks a frame's header before anything of its body is buffered, and returns the
    /// length of the MAC it ends with. Every message type has one body length (or, for
    /// DOOR_CACHE_BULK, a head and whole entries up to a bound), so the header alone says
    /// whether the length prefix can be right: a length that no frame
    /// acceptable in this state can have is refused here, without waiting for (or
    /// reserving room for) bytes that could never make a valid frame.
    fn check_header(&self, len: usize, header: &Header) -> Result<usize, CodecError> {
        if header.version != PROTOCOL_VERSION {
            return Err(CodecError::UnsupportedVersion(header.version));
        }
        if header.flags & !FLAG_MAC != 0 {
            return Err(CodecError::Malformed("reserved flag bits set"));
        }
        if self.keys.is_some() {
            // The answer to a refused PROOF is an ERROR the gateway sends before it has
            // a session; a terminal accepts it only until the first authenticated frame.
            let refused_sign_on =
                self.side == Side::Terminal && header.msg_type == msg_type::ERROR && self.recv_counter == 0;
            if !header.has_mac() && !refused_sign_on {
                return Err(CodecError::BadMac);
            }
        } else {
            if header.has_mac() {
                return Err(CodecError::Malformed("MAC before a session exists"));
            }
            if !self.side.accepts_unauthenticated(header.msg_type) {
                return Err(CodecError::Unauthenticated {
                    msg_type: header.msg_type,
                });
            }
        }
        // The one type whose frames run to 10 KB is the gateway's to send: a terminal
        // claiming it is refused here, so that no connection makes the gateway buffer
        // more than its largest request (under 200 bytes).
        if self.side == Side::Gateway && header.msg_type == msg_type::DOOR_CACHE_BULK {
            return Err(CodecError::WrongDirection {
                msg_type: header.msg_type,
            });
        }
        let mac_len = if header.has_mac() { MAC_LEN } else { 0 };
        if len < HEADER_LEN + mac_len {
            return Err(CodecError::Malformed("length shorter than header and MAC"));
        }
        let shape = Message::body_shape(header.msg_type).ok_or(BodyError::UnknownType(header.msg_type))?;
        shape.check(header.msg_type, len - HEADER_LEN - mac_len)?;
        Ok(mac_len)
    }
}

impl Decoder for TerminalCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if src.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_le_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > FRAME_LEN_MAX {
            return Err(CodecError::FrameTooLarge { len });
        }
        if len < HEADER_LEN {
            return Err(CodecError::Malformed("length shorter than the header"));
        }
        // Nothing is reserved until the header has shown the length to be one this
        // state accepts; the header fits in any read buffer.
        if src.len() < LEN_PREFIX + HEADER_LEN {
            return Ok(None);
        }
        let header = Header::read(&src[LEN_PREFIX..LEN_PREFIX + HEADER_LEN]);
        let mac_len = self.check_header(len, &header)?;
        let total = LEN_PREFIX + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let body_end = total - mac_len;

        if mac_len > 0 {
            let key = self
                .recv_key()
                .ok_or(CodecError::Malformed("MAC before a session exists"))?;
            if !key.verify(&src[..body_end], &src[body_end..total]) {
                return Err(CodecError::BadMac);
            }
            if header.counter <= self.recv_counter {
                return Err(CodecError::Replay {
                    counter: header.counter,
                    last: self.recv_counter,
                });
            }
        }

        let message = Message::decode_body(header.msg_type, &src[LEN_PREFIX + HEADER_LEN..body_end])?;
        if mac_len > 0 {
            self.recv_counter = header.counter;
        }
        src.advance(total);
        Ok(Some(Frame {
            request_id: header.request_id,
            counter: header.counter,
            message,
        }))
    }
}

impl Encoder<(u32, Message)> for TerminalCodec {
    type Error = CodecError;

    fn encode(&mut self, (request_id, message): (u32, Message), dst: &mut BytesMut) -> Result<(), CodecError> {
        let counter = if self.keys.is_some() {
            self.send_counter += 1;
            self.send_counter
        } else {
            0
        };
        encode_frame(self.send_key(), counter, request_id, &message, dst);
        Ok(())
    }
}

/// Appends one complete frame to `dst`. With a key the frame is MACed; without, it is
/// sent in the clear (sign-on steps and a pre-session ERROR only).
pub fn encode_frame(key: Option<&MacKey>, counter: u64, request_id: u32, message: &Message, dst: &mut BytesMut) {
    let body_len = message.encoded_body_len();
    let mac_len = if key.is_some() { MAC_LEN } else { 0 };
    let len = HEADER_LEN + body_len + mac_len;
    debug_assert!(len <= FRAME_LEN_MAX);
    dst.reserve(LEN_PREFIX + len);
    let start = dst.len();
    dst.put_u32_le(len as u32);
    Header {
        version: PROTOCOL_VERSION,
        msg_type: message.msg_type(),
        flags: if key.is_some() { FLAG_MAC } else { 0 },
        request_id,
        counter,
    }
    .write(dst);
    message.encode_body(dst);
    if let Some(key) = key {
        let tag = key.tag(&dst[start..]);
        dst.put_slice(&tag);
    }
    debug_assert_eq!(dst.len() - start, LEN_PREFIX + len);
}
