//! Frames with fuzzer-chosen headers and bodies, correctly MACed (or, when the fuzzer
//! says so, left without a MAC), into a gateway-side decoder with a session. Getting
//! past the MAC lets the fuzzer reach the counter and body checks. The decoder must
//! never panic, must accept MACed frames only with strictly increasing counters, and
//! every message it accepts must re-encode to a body of its type's length that decodes
//! to the same message.
#![no_main]

use bytes::{BufMut, BytesMut};
use cardgate_codec::crypto::SignOnInput;
use cardgate_codec::frame::FLAG_MAC;
use cardgate_codec::{Message, Side, TerminalCodec, TerminalSecret};
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use tokio_util::codec::Decoder;

const SECRET: [u8; 32] = [7; 32];

fn input() -> SignOnInput {
    SignOnInput {
        terminal_id: 1,
        terminal_nonce: [0x11; 16],
        gateway_nonce: [0x22; 16],
    }
}

/// k_up, derived as docs/PROTOCOL.md section 4.1 says.
fn k_up() -> [u8; 32] {
    let i = input();
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&SECRET).expect("any key length");
    m.update(b"cardgate/1/up");
    m.update(&i.terminal_id.to_le_bytes());
    m.update(&i.terminal_nonce);
    m.update(&i.gateway_nonce);
    m.finalize().into_bytes().into()
}

fn mac(key: &[u8; 32], data: &[u8]) -> [u8; 16] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    m.update(data);
    let full = m.finalize().into_bytes();
    let mut out = [0; 16];
    out.copy_from_slice(&full[..16]);
    out
}

fuzz_target!(|data: &[u8]| {
    let key = k_up();
    // The stream: for each frame, a selector byte (bit 7: leave the MAC off; bits 0..5:
    // body length), then 16 header bytes and the body, taken from the input as is.
    let mut stream = Vec::new();
    let mut macd = Vec::new();
    let mut rest = data;
    while let Some((&selector, tail)) = rest.split_first() {
        let n = (16 + usize::from(selector & 0x3f)).min(tail.len());
        let (header_and_body, tail) = tail.split_at(n);
        rest = tail;
        let with_mac = selector & 0x80 == 0;
        let start = stream.len();
        stream.put_u32_le((header_and_body.len() + if with_mac { 16 } else { 0 }) as u32);
        stream.put_slice(header_and_body);
        if with_mac {
            let tag = mac(&key, &stream[start..]);
            stream.put_slice(&tag);
        }
        macd.push(
            header_and_body.len() >= 4 && u16::from_le_bytes([header_and_body[2], header_and_body[3]]) & FLAG_MAC != 0,
        );
    }

    let mut codec = TerminalCodec::new(Side::Gateway);
    codec.install_session(input().session_keys(&TerminalSecret(SECRET)));
    let mut buf = BytesMut::from(&stream[..]);
    let mut last_counter = 0;
    let mut index = 0;
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        if macd[index] {
            assert!(
                frame.counter > last_counter,
                "counter {} after {}",
                frame.counter,
                last_counter
            );
            last_counter = frame.counter;
        } else {
            // The only frame accepted without a MAC in a session: the ERROR of a refused
            // sign-on, before any authenticated frame.
            assert!(matches!(frame.message, Message::Error(_)));
            assert_eq!(last_counter, 0);
        }
        let mut body = Vec::new();
        frame.message.encode_body(&mut body);
        assert_eq!(body.len(), frame.message.encoded_body_len());
        assert_eq!(Message::decode_body(frame.message.msg_type(), &body), Ok(frame.message));
        index += 1;
    }
});
