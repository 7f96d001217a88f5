//! Fixtures shared by the codec's integration tests: a signed-on pair of codecs, frame
//! builders that bypass the encoder (to make frames the encoder refuses to make), and an
//! `AsyncRead` that hands out bytes in chunks chosen by the test.
#![allow(dead_code)] // each test crate uses a different part of this module

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
use cardgate_codec::codec::Frame;
use cardgate_codec::crypto::SignOnInput;
use cardgate_codec::frame::FLAG_MAC;
use cardgate_codec::{
    CardNo, CodecError, Heartbeat, Message, PROTOCOL_VERSION, Purchase, Side, TerminalCodec, TerminalSecret,
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::{Decoder, Encoder};

pub const MASTER: &[u8] = b"cardgate-demo-master-secret";

/// The sign-on inputs of a session the tests use: terminal 7 of the demo campus.
pub fn input(terminal_nonce: u8, gateway_nonce: u8) -> SignOnInput {
    SignOnInput {
        terminal_id: 7,
        terminal_nonce: [terminal_nonce; 16],
        gateway_nonce: [gateway_nonce; 16],
    }
}

pub fn secret() -> TerminalSecret {
    TerminalSecret::derive_demo(MASTER, 7)
}

/// A terminal and a gateway codec that share one session, as after a sign-on with the
/// given nonces.
pub fn signed_on_pair(input: &SignOnInput) -> (TerminalCodec, TerminalCodec) {
    let mut t = TerminalCodec::new(Side::Terminal);
    let mut g = TerminalCodec::new(Side::Gateway);
    t.install_session(input.session_keys(&secret()));
    g.install_session(input.session_keys(&secret()));
    (t, g)
}

pub fn encode(codec: &mut TerminalCodec, request_id: u32, message: Message) -> BytesMut {
    let mut b = BytesMut::new();
    codec
        .encode((request_id, message), &mut b)
        .expect("encoding never fails");
    b
}

/// Decodes exactly one frame that fills `bytes` completely.
pub fn decode_one(codec: &mut TerminalCodec, bytes: &[u8]) -> Result<Frame, CodecError> {
    let mut buf = BytesMut::from(bytes);
    match codec.decode(&mut buf)? {
        Some(f) => {
            assert!(
                buf.is_empty(),
                "one frame must consume all of its bytes, {} left",
                buf.len()
            );
            Ok(f)
        }
        None => panic!("a complete frame decoded as incomplete"),
    }
}

pub fn purchase(tx_seq: u64) -> Message {
    Message::Purchase(Purchase {
        tx_seq,
        card: CardNo(1_000_000_000 + tx_seq),
        amount_fen: 12_50,
        terminal_time_ms: 1_772_424_300_000,
    })
}

pub fn heartbeat() -> Message {
    Message::Heartbeat(Heartbeat {
        terminal_time_ms: 1_772_424_300_000,
        blacklist_version: 3,
    })
}

/// HMAC-SHA256 written out here rather than taken from the codec, so that a test
/// checking a MAC does not check the codec against itself.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// The MAC keys of a session, derived by hand from the specification.
pub fn raw_keys(input: &SignOnInput, secret: &TerminalSecret) -> ([u8; 32], [u8; 32]) {
    let mut data = Vec::new();
    data.extend_from_slice(&input.terminal_id.to_le_bytes());
    data.extend_from_slice(&input.terminal_nonce);
    data.extend_from_slice(&input.gateway_nonce);
    (
        hmac_sha256(&secret.0, &[b"cardgate/1/up", &data]),
        hmac_sha256(&secret.0, &[b"cardgate/1/down", &data]),
    )
}

/// Builds a frame byte by byte with any header values, and a MAC under `mac_key` when
/// given (computed over the length prefix, header and body, truncated to 16 bytes).
#[derive(Clone, Debug)]
pub struct RawFrame {
    pub version: u8,
    pub msg_type: u8,
    pub flags: u16,
    pub request_id: u32,
    pub counter: u64,
    pub body: Vec<u8>,
}

impl RawFrame {
    pub fn new(msg_type: u8, body: Vec<u8>) -> RawFrame {
        RawFrame {
            version: PROTOCOL_VERSION,
            msg_type,
            flags: 0,
            request_id: 1,
            counter: 0,
            body,
        }
    }

    pub fn of(message: &Message) -> RawFrame {
        let mut body = Vec::new();
        message.encode_body(&mut body);
        RawFrame::new(message.msg_type(), body)
    }

    pub fn counter(mut self, counter: u64) -> RawFrame {
        self.counter = counter;
        self
    }

    pub fn bytes(&self, mac_key: Option<&[u8; 32]>) -> Vec<u8> {
        let mac_len = if mac_key.is_some() { 16 } else { 0 };
        let flags = if mac_key.is_some() {
            self.flags | FLAG_MAC
        } else {
            self.flags
        };
        let mut b = Vec::new();
        b.put_u32_le((16 + self.body.len() + mac_len) as u32);
        b.put_u8(self.version);
        b.put_u8(self.msg_type);
        b.put_u16_le(flags);
        b.put_u32_le(self.request_id);
        b.put_u64_le(self.counter);
        b.put_slice(&self.body);
        if let Some(k) = mac_key {
            let tag = hmac_sha256(k, &[&b]);
            b.put_slice(&tag[..16]);
        }
        b
    }
}

/// What a `ChunkedRead` does once its chunks are used up.
#[derive(Clone, Copy, Debug)]
pub enum Then {
    /// Reports end of file.
    Eof,
    /// Never completes another read, like a peer that stopped sending but keeps the
    /// connection open. Only for tests that poll once (`now_or_never`).
    Stall,
}

/// An `AsyncRead` whose every read returns exactly the next chunk (or as much of it as
/// fits), so a test decides where the reads split the byte stream.
pub struct ChunkedRead {
    chunks: VecDeque<Vec<u8>>,
    then: Then,
}

impl ChunkedRead {
    pub fn new(chunks: impl IntoIterator<Item = Vec<u8>>, then: Then) -> ChunkedRead {
        ChunkedRead {
            chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
            then,
        }
    }

    /// `bytes` split into reads of the given sizes, cycling through them.
    pub fn split(bytes: &[u8], sizes: &[usize], then: Then) -> ChunkedRead {
        assert!(sizes.iter().all(|s| *s > 0));
        let mut chunks = Vec::new();
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + size).min(bytes.len());
            chunks.push(bytes[at..end].to_vec());
            at = end;
        }
        ChunkedRead::new(chunks, then)
    }
}

impl AsyncRead for ChunkedRead {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let Some(mut chunk) = self.chunks.pop_front() else {
            return match self.then {
                Then::Eof => Poll::Ready(Ok(())),
                Then::Stall => Poll::Pending,
            };
        };
        let n = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk[..n]);
        if n < chunk.len() {
            self.chunks.push_front(chunk.split_off(n));
        }
        Poll::Ready(Ok(()))
    }
}
