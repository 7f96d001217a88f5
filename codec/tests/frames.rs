//! Every way a frame can be wrong, and what the codec says about it: the length prefix,
//! the header fields, the body, the MAC and the replay counter, before and after a
//! session exists. Each refusal also maps to the ERROR code the gateway sends.

mod common;

use bytes::BytesMut;
use cardgate_codec::frame::{FLAG_MAC, msg_type};
use cardgate_codec::{
    BodyLen, CodecError, DeclineReason, ErrorCode, ErrorFrame, FRAME_LEN_MAX, HEADER_LEN, Message, PROTOCOL_VERSION,
    Side, SignOnOk, TerminalCodec,
};
use common::*;
use tokio_util::codec::Decoder;

fn sign_on_ok() -> Message {
    Message::SignOnOk(SignOnOk {
        server_time_ms: 1,
        last_tx_seq: 0,
        blacklist_version: 0,
        heartbeat_interval_s: 30,
        pipeline_depth_max: 16,
        flags: 0,
    })
}

fn error(code: ErrorCode) -> Message {
    Message::Error(ErrorFrame { code, detail: 0 })
}

fn decode(codec: &mut TerminalCodec, bytes: &[u8]) -> Result<Option<cardgate_codec::codec::Frame>, CodecError> {
    codec.decode(&mut BytesMut::from(bytes))
}

// ---- length prefix -----------------------------------------------------------------

#[test]
fn an_oversized_prefix_is_refused_before_anything_is_reserved() {
    for len in [FRAME_LEN_MAX as u32 + 1, 1 << 30, u32::MAX] {
        let mut buf = BytesMut::with_capacity(4);
        buf.extend_from_slice(&len.to_le_bytes());
        let cap = buf.capacity();
        let e = TerminalCodec::new(Side::Gateway).decode(&mut buf).unwrap_err();
        assert!(
            matches!(e, CodecError::FrameTooLarge { len: l } if l == len as usize),
            "{e:?}"
        );
        assert_eq!(e.error_code(), ErrorCode::FrameTooLarge);
        assert_eq!(buf.capacity(), cap, "nothing may be reserved for a refused frame");
    }
}

#[test]
fn a_length_shorter_than_the_header_is_malformed() {
    for len in 0..HEADER_LEN as u32 {
        let e = decode(&mut TerminalCodec::new(Side::Gateway), &len.to_le_bytes()).unwrap_err();
        assert!(matches!(e, CodecError::Malformed(_)), "length {len}: {e:?}");
        assert_eq!(e.error_code(), ErrorCode::Malformed);
    }
}

#[test]
fn an_incomplete_frame_is_none_and_consumes_nothing() {
    let (mut t, _) = signed_on_pair(&input(1, 2));
    let bytes = encode(&mut t, 9, purchase(1));
    let (_, mut g) = signed_on_pair(&input(1, 2));
    for cut in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert!(g.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
        assert_eq!(buf.len(), cut, "an incomplete frame must stay in the buffer");
    }
    // Nothing was counted by the incomplete attempts: the whole frame still decodes.
    let f = decode_one(&mut g, &bytes).unwrap();
    assert_eq!((f.request_id, f.counter, f.message), (9, 1, purchase(1)));
}

/// The 4-byte prefix and the 16-byte header of a frame whose length prefix says `len`,
/// with nothing of its body.
fn header_only(len: u32, msg_type: u8, flags: u16, counter: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&[PROTOCOL_VERSION, msg_type]);
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&counter.to_le_bytes());
    b
}

/// The lengths `lengths_let_through` tries: every short one, and around the largest
/// DOOR_CACHE_BULK (512 entries: 10,304 bytes after the prefix).
fn tried_lengths() -> impl Iterator<Item = usize> + Clone {
    (0..=300usize).chain([1024, 8192, 10_284, 10_304, 10_324, FRAME_LEN_MAX - 1, FRAME_LEN_MAX])
}

/// The frame lengths the decoder lets through its header check (it then waits for the
/// body), by type, when fed headers alone; every other length must be refused from the
/// header, with nothing reserved for the body.
fn lengths_let_through(codec: &TerminalCodec, flags: u16) -> Vec<(u8, usize)> {
    lengths_let_through_at(Side::Gateway, codec, flags)
}

/// As `lengths_let_through`, at either end.
fn lengths_let_through_at(side: Side, codec: &TerminalCodec, flags: u16) -> Vec<(u8, usize)> {
    let lengths = tried_lengths();
    let keys = input(1, 2).session_keys(&secret());
    let mut through = Vec::new();
    for t in 0..=u8::MAX {
        for len in lengths.clone() {
            let bytes = header_only(len as u32, t, flags, 1);
            let mut buf = BytesMut::with_capacity(bytes.len());
            buf.extend_from_slice(&bytes);
            let cap = buf.capacity();
            let mut c = TerminalCodec::new(side);
            if codec.has_session() {
                c.install_session(keys.clone());
            }
            match c.decode(&mut buf) {
                Ok(None) => {
                    assert_eq!(buf.len(), bytes.len(), "type {t:#04x} length {len}: consumed");
                    assert!(
                        buf.capacity() <= 4 + len,
                        "type {t:#04x} length {len}: reserved {} bytes",
                        buf.capacity()
                    );
                    through.push((t, len));
                }
                Ok(Some(f)) => panic!("type {t:#04x} length {len}: a header alone decoded as {f:?}"),
                Err(e) => {
                    assert_eq!(
                        buf.capacity(),
                        cap,
                        "type {t:#04x} length {len}: reserved after refusing"
                    );
                    assert_ne!(e.error_code(), ErrorCode::ServerError);
                }
            }
        }
    }
    through
}

#[test]
fn a_length_no_message_of_the_state_can_have_is_refused_from_the_header() {
    // Before sign-on a terminal may send only HELLO and PROOF, 32-byte bodies without a
    // MAC: a frame of 48 bytes after the prefix, and nothing else.
    let fresh = TerminalCodec::new(Side::Gateway);
    assert_eq!(
        lengths_let_through(&fresh, 0),
        vec![(msg_type::HELLO, 48), (msg_type::PROOF, 48)]
    );
    assert_eq!(lengths_let_through(&fresh, FLAG_MAC), vec![]);
    // In a session every defined type has exactly one length, header + body + MAC, but
    // DOOR_CACHE_BULK: its head and 0 to 512 whole entries, and only at a terminal (the
    // gateway sends it; a terminal claiming one is refused before its 10 KB are read).
    let (_, session) = signed_on_pair(&input(1, 2));
    let want: Vec<(u8, usize)> = (0..=u8::MAX)
        .flat_map(|t| {
            let bodies: Vec<usize> = match Message::body_shape(t) {
                None => vec![],
                Some(BodyLen::Fixed(n)) => vec![n],
                Some(BodyLen::Items { head, item, max }) => (0..=max).map(|k| head + k * item).collect(),
            };
            bodies.into_iter().map(move |n| (t, HEADER_LEN + n + 16))
        })
        .filter(|(_, len)| tried_lengths().any(|l| l == *len))
        .collect();
    // 511 and 512 entries pass; 513 does not.
    assert!(want.contains(&(msg_type::DOOR_CACHE_BULK, 10_284)));
    assert!(want.contains(&(msg_type::DOOR_CACHE_BULK, 10_304)));
    assert!(!want.iter().any(|&(_, len)| len == 10_324));
    assert_eq!(lengths_let_through_at(Side::Terminal, &session, FLAG_MAC), want);
    let at_gateway: Vec<(u8, usize)> = want
        .iter()
        .copied()
        .filter(|&(t, _)| t != msg_type::DOOR_CACHE_BULK)
        .collect();
    assert_eq!(lengths_let_through(&session, FLAG_MAC), at_gateway);
    assert_eq!(lengths_let_through(&session, 0), vec![], "no MAC: refused as bad_mac");
}

#[test]
fn a_hello_claiming_the_largest_length_is_refused_without_its_body() {
    // 16,384 is within FRAME_LEN_MAX but no message has that length: the decoder refuses
    // it once the header is in, as malformed, and reserves nothing for the body.
    let bytes = header_only(FRAME_LEN_MAX as u32, msg_type::HELLO, 0, 0);
    let mut buf = BytesMut::with_capacity(bytes.len());
    buf.extend_from_slice(&bytes);
    let cap = buf.capacity();
    let e = TerminalCodec::new(Side::Gateway).decode(&mut buf).unwrap_err();
    assert!(
        matches!(
            e,
            CodecError::Body(cardgate_codec::BodyError::Length { msg_type: msg_type::HELLO, expected: 32, got })
                if got == FRAME_LEN_MAX - HEADER_LEN
        ),
        "{e:?}"
    );
    assert_eq!(e.error_code(), ErrorCode::Malformed);
    assert_eq!(buf.capacity(), cap, "nothing may be reserved for a refused frame");
    // The prefix alone is only incomplete, and reserves nothing either.
    let mut buf = BytesMut::with_capacity(4);
    buf.extend_from_slice(&(FRAME_LEN_MAX as u32).to_le_bytes());
    assert!(TerminalCodec::new(Side::Gateway).decode(&mut buf).unwrap().is_none());
    assert_eq!(buf.capacity(), 4);
}

#[test]
fn a_terminal_may_not_send_what_only_the_gateway_sends_before_sign_on() {
    // CHALLENGE and ERROR travel in the clear, but only from the gateway.
    for m in [
        Message::Challenge(cardgate_codec::Challenge {
            gateway_nonce: [1; 16],
            server_time_ms: 2,
        }),
        error(ErrorCode::Replay),
    ] {
        let raw = RawFrame::of(&m).bytes(None);
        let e = decode_one(&mut TerminalCodec::new(Side::Gateway), &raw).unwrap_err();
        assert!(matches!(e, CodecError::Unauthenticated { .. }), "{m:?}: {e:?}");
        assert_eq!(
            decode_one(&mut TerminalCodec::new(Side::Terminal), &raw)
                .unwrap()
                .message,
            m
        );
    }
    // And the clear ERROR that refuses a sign-on is a terminal's exception, not the gateway's.
    let (_, mut g) = signed_on_pair(&input(1, 2));
    let raw = RawFrame::of(&error(ErrorCode::AuthFailed)).bytes(None);
    assert!(matches!(decode_one(&mut g, &raw), Err(CodecError::BadMac)));
}

#[test]
fn a_length_that_disagrees_with_the_type_is_malformed() {
    // A HEARTBEAT body is 16 bytes; say so wrongly in both directions.
    let mut body = Vec::new();
    heartbeat().encode_body(&mut body);
    let key = raw_keys(&input(1, 2), &secret()).0;
    for len in [0, 8, 15, 17, 24, 64] {
        let mut b = body.clone();
        b.resize(len, 0);
        let raw = RawFrame::new(msg_type::HEARTBEAT, b).counter(1).bytes(Some(&key));
        let (_, mut g) = signed_on_pair(&input(1, 2));
        let e = decode_one(&mut g, &raw).unwrap_err();
        assert!(
            matches!(e, CodecError::Body(cardgate_codec::BodyError::Length { expected: 16, got, .. }) if got == len),
            "{len}: {e:?}"
        );
        assert_eq!(e.error_code(), ErrorCode::Malformed);
    }
}

// ---- header ------------------------------------------------------------------------

#[test]
fn an_unknown_version_is_refused() {
    for version in [0u8, 2, 0x10, 0xff] {
        let mut raw = RawFrame::of(&error(ErrorCode::Replay));
        raw.version = version;
        let e = decode_one(&mut TerminalCodec::new(Side::Terminal), &raw.bytes(None)).unwrap_err();
        assert!(matches!(e, CodecError::UnsupportedVersion(v) if v == version), "{e:?}");
        assert_eq!(e.error_code(), ErrorCode::UnsupportedVersion);
    }
    assert_eq!(PROTOCOL_VERSION, 1);
}

#[test]
fn any_reserved_flag_bit_is_malformed() {
    let key = raw_keys(&input(1, 2), &secret()).0;
    for bit in 1..16 {
        let mut raw = RawFrame::of(&purchase(1)).counter(1);
        raw.flags = 1 << bit;
        for mac in [None, Some(&key)] {
            let (_, mut g) = signed_on_pair(&input(1, 2));
            let e = decode_one(&mut g, &raw.bytes(mac)).unwrap_err();
            assert!(matches!(e, CodecError::Malformed(_)), "bit {bit}: {e:?}");
        }
        let mut hello = RawFrame::of(&error(ErrorCode::Replay));
        hello.flags = 1 << bit;
        let e = decode_one(&mut TerminalCodec::new(Side::Terminal), &hello.bytes(None)).unwrap_err();
        assert!(
            matches!(e, CodecError::Malformed(_)),
            "bit {bit} before a session: {e:?}"
        );
    }
}

#[test]
fn an_unknown_type_is_malformed_in_a_session_and_unexpected_before_one() {
    let key = raw_keys(&input(1, 2), &secret()).0;
    let unknown = [
        0x00u8, 0x07, 0x0e, 0x13, 0x23, 0x34, 0x3f, 0x4e, 0x4f, 0x50, 0x5f, 0x64, 0x6f, 0x70, 0xff,
    ];
    for t in unknown {
        assert_eq!(Message::body_shape(t), None);
        let raw = RawFrame::new(t, vec![0; 8]).counter(1);
        let (_, mut g) = signed_on_pair(&input(1, 2));
        let e = decode_one(&mut g, &raw.bytes(Some(&key))).unwrap_err();
        assert!(
            matches!(e, CodecError::Body(cardgate_codec::BodyError::UnknownType(x)) if x == t),
            "{t:#04x}: {e:?}"
        );
        assert_eq!(e.error_code(), ErrorCode::Malformed);

        let e = decode_one(&mut TerminalCodec::new(Side::Gateway), &raw.counter(0).bytes(None)).unwrap_err();
        assert!(
            matches!(e, CodecError::Unauthenticated { msg_type } if msg_type == t),
            "{e:?}"
        );
        assert_eq!(e.error_code(), ErrorCode::UnexpectedMessage);
    }
}

#[test]
fn codes_outside_their_domain_are_malformed() {
    let key = raw_keys(&input(1, 2), &secret()).1;
    // ERROR code 0 and 14.., DECLINED reason 0 and 19.., BALANCE status 7..
    let mut cases: Vec<(u8, Vec<u8>)> = Vec::new();
    for code in [0u16, ErrorCode::ALL.len() as u16 + 1, 0xffff] {
        let mut b = code.to_le_bytes().to_vec();
        b.resize(8, 0);
        cases.push((msg_type::ERROR, b));
    }
    for reason in [0u16, DeclineReason::ALL.len() as u16 + 1, 0xffff] {
        let mut b = vec![0; 16];
        b.extend_from_slice(&reason.to_le_bytes());
        b.resize(40, 0);
        cases.push((msg_type::DECLINED, b));
    }
    for status in [7u8, 0xff] {
        let mut b = vec![0; 8];
        b.push(status);
        b.resize(40, 0);
        cases.push((msg_type::BALANCE, b));
    }
    // ACCESS_RESULT and DOOR_EVENT: a reason outside the table, or `granted` that
    // contradicts the reason; ACCESS_CHECK and DOOR_EVENT: a direction other than 1 or 2;
    // PUNCH_RESULT and DOOR_EVENTS_RESULT: a status outside the table.
    for (granted, reason) in [(0u8, 20u16), (0, 0xffff), (1, 1), (0, 0), (2, 0)] {
        let mut b = vec![0; 16];
        b.extend_from_slice(&1u32.to_le_bytes());
        b.push(granted);
        b.push(0);
        b.extend_from_slice(&reason.to_le_bytes());
        b.resize(40, 0);
        cases.push((msg_type::ACCESS_RESULT, b.clone()));
        b[20] = 1;
        b[21] = granted;
        b.resize(48, 0);
        cases.push((msg_type::DOOR_EVENT, b));
    }
    for direction in [0u8, 3, 0xff] {
        let mut b = 1u64.to_le_bytes().to_vec();
        b.resize(20, 0);
        b.push(direction);
        b.resize(32, 0);
        cases.push((msg_type::ACCESS_CHECK, b));
    }
    // ACCESS_CHECK and PUNCH: an `event_seq` of 0, which no event has (a check under it
    // could be neither recorded nor told from a retry).
    let mut b = vec![0; 20];
    b.push(1);
    b.resize(32, 0);
    cases.push((msg_type::ACCESS_CHECK, b));
    cases.push((msg_type::PUNCH, vec![0; 24]));
    for status in [5u8, 0xff] {
        let mut b = vec![0; 16];
        b.push(status);
        b.resize(32, 0);
        cases.push((msg_type::PUNCH_RESULT, b));
        let mut b = vec![0; 10];
        b.push(status);
        b.resize(40, 0);
        cases.push((msg_type::DOOR_EVENTS_RESULT, b));
    }
    for (t, body) in cases {
        let (mut term, _) = signed_on_pair(&input(1, 2));
        let raw = RawFrame::new(t, body).counter(1).bytes(Some(&key));
        let e = decode_one(&mut term, &raw).unwrap_err();
        assert!(
            matches!(e, CodecError::Body(cardgate_codec::BodyError::BadField(_))),
            "{t:#04x}: {e:?}"
        );
        assert_eq!(e.error_code(), ErrorCode::Malformed);
    }
}

// ---- before a session --------------------------------------------------------------

#[test]
fn only_sign_on_frames_and_error_travel_before_a_session() {
    for m in [purchase(1), heartbeat(), sign_on_ok()] {
        let raw = RawFrame::of(&m).bytes(None);
        for side in [Side::Gateway, Side::Terminal] {
            let e = decode_one(&mut TerminalCodec::new(side), &raw).unwrap_err();
            assert!(matches!(e, CodecError::Unauthenticated { .. }), "{m:?}: {e:?}");
        }
    }
    let e = decode_one(
        &mut TerminalCodec::new(Side::Terminal),
        &RawFrame::of(&error(ErrorCode::Overloaded)).bytes(None),
    )
    .unwrap();
    assert_eq!(e.message, error(ErrorCode::Overloaded));
}

#[test]
fn a_mac_before_a_session_is_malformed() {
    let key = [9u8; 32];
    let raw = RawFrame::of(&error(ErrorCode::Replay)).bytes(Some(&key));
    let e = decode_one(&mut TerminalCodec::new(Side::Terminal), &raw).unwrap_err();
    assert!(matches!(e, CodecError::Malformed(_)), "{e:?}");
}

#[test]
fn unauthenticated_frames_carry_counter_zero_and_authenticated_ones_start_at_one() {
    let input = input(1, 2);
    let mut t = TerminalCodec::new(Side::Terminal);
    let hello = encode(&mut t, 1, error(ErrorCode::Replay));
    assert_eq!(&hello[12..20], &[0; 8]);
    assert_eq!(u16::from_le_bytes([hello[6], hello[7]]) & FLAG_MAC, 0);
    t.install_session(input.session_keys(&secret()));
    for expected in 1..=3u64 {
        let b = encode(&mut t, 1, heartbeat());
        assert_eq!(u64::from_le_bytes(b[12..20].try_into().unwrap()), expected);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), FLAG_MAC);
    }
    // A new session starts over at 1.
    t.install_session(input.session_keys(&secret()));
    let b = encode(&mut t, 1, heartbeat());
    assert_eq!(u64::from_le_bytes(b[12..20].try_into().unwrap()), 1);
}

// ---- MAC -----------------------------------------------------------------------------

#[test]
fn the_mac_is_the_truncated_hmac_of_prefix_header_and_body() {
    let input = input(1, 2);
    let (k_up, k_down) = raw_keys(&input, &secret());
    let (mut t, mut g) = signed_on_pair(&input);
    let up = encode(&mut t, 5, purchase(1));
    let n = up.len() - 16;
    assert_eq!(&up[n..], &hmac_sha256(&k_up, &[&up[..n]])[..16]);
    let down = encode(&mut g, 5, error(ErrorCode::IdleTimeout));
    let n = down.len() - 16;
    assert_eq!(&down[n..], &hmac_sha256(&k_down, &[&down[..n]])[..16]);
    // And a frame MACed by hand with the documented key is accepted.
    let (_, mut g) = signed_on_pair(&input);
    let raw = RawFrame::of(&heartbeat()).counter(1).bytes(Some(&k_up));
    assert_eq!(decode_one(&mut g, &raw).unwrap().message, heartbeat());
}

#[test]
fn a_missing_mac_is_refused_in_a_session() {
    let (_, mut g) = signed_on_pair(&input(1, 2));
    let raw = RawFrame::of(&purchase(1)).counter(1).bytes(None);
    let e = decode_one(&mut g, &raw).unwrap_err();
    assert!(matches!(e, CodecError::BadMac), "{e:?}");
    assert_eq!(e.error_code(), ErrorCode::BadMac);
}

#[test]
fn a_flag_claiming_a_mac_with_no_room_for_it_is_malformed() {
    // Length says header only, flags say a MAC follows.
    let mut b = Vec::new();
    b.extend_from_slice(&(HEADER_LEN as u32 + 8).to_le_bytes());
    b.extend_from_slice(&[PROTOCOL_VERSION, msg_type::HEARTBEAT, 1, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    let (_, mut g) = signed_on_pair(&input(1, 2));
    let e = decode_one(&mut g, &b).unwrap_err();
    assert!(matches!(e, CodecError::Malformed(_)), "{e:?}");
}

#[test]
fn no_single_bit_flip_is_ever_accepted() {
    let input = input(1, 2);
    let (mut t, _) = signed_on_pair(&input);
    let good = encode(&mut t, 77, purchase(42)).to_vec();
    let mac_at = good.len() - 16;
    for bit in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let (_, mut g) = signed_on_pair(&input);
        let r = g.decode(&mut BytesMut::from(&bad[..]));
        let byte = bit / 8;
        match r {
            Ok(Some(f)) => panic!("bit {bit} flipped and the frame was accepted: {f:?}"),
            // A flip in the length prefix can make the frame look longer: it then waits
            // for bytes that will never be valid.
            Ok(None) => assert!(byte < 4, "bit {bit}: incomplete"),
            Err(e) => {
                if byte >= 12 {
                    // request id, counter, body, MAC: only the MAC can tell.
                    assert!(matches!(e, CodecError::BadMac), "bit {bit}: {e:?}");
                }
                if byte >= mac_at {
                    assert_eq!(e.error_code(), ErrorCode::BadMac);
                }
            }
        }
    }
    // The unmodified frame is fine.
    let (_, mut g) = signed_on_pair(&input);
    assert_eq!(decode_one(&mut g, &good).unwrap().message, purchase(42));
}

#[test]
fn a_frame_from_an_earlier_session_fails_its_mac() {
    // Same terminal, same secret, same counter, but the connection's nonces differ.
    let (mut old_t, _) = signed_on_pair(&input(1, 2));
    let old = encode(&mut old_t, 3, purchase(1));
    for (tn, gn) in [(1, 3), (4, 2), (5, 6)] {
        let (_, mut g) = signed_on_pair(&input(tn, gn));
        let e = decode_one(&mut g, &old).unwrap_err();
        assert!(matches!(e, CodecError::BadMac), "{e:?}");
    }
    // Even with a counter far above anything the new session has seen.
    let (old_up, _) = raw_keys(&input(1, 2), &secret());
    let (_, mut g) = signed_on_pair(&input(1, 3));
    let raw = RawFrame::of(&purchase(1)).counter(1_000).bytes(Some(&old_up));
    assert!(matches!(decode_one(&mut g, &raw), Err(CodecError::BadMac)));
}

#[test]
fn a_frame_reflected_back_to_its_sender_fails_its_mac() {
    // Each direction has its own key: the gateway's own answer sent back to it is not a
    // terminal frame, and a terminal's request echoed to it is not an answer.
    let input = input(1, 2);
    let (mut t, mut g) = signed_on_pair(&input);
    let answer = encode(&mut g, 1, heartbeat());
    let (_, mut g2) = signed_on_pair(&input);
    assert!(matches!(decode_one(&mut g2, &answer), Err(CodecError::BadMac)));
    let request = encode(&mut t, 1, heartbeat());
    let (mut t2, _) = signed_on_pair(&input);
    assert!(matches!(decode_one(&mut t2, &request), Err(CodecError::BadMac)));
}

#[test]
fn a_wrong_secret_gives_different_keys() {
    let input = input(1, 2);
    let wrong = cardgate_codec::TerminalSecret::derive_demo(MASTER, 8);
    let mut t = TerminalCodec::new(Side::Terminal);
    t.install_session(input.session_keys(&wrong));
    let (_, mut g) = signed_on_pair(&input);
    let b = encode(&mut t, 1, heartbeat());
    assert!(matches!(decode_one(&mut g, &b), Err(CodecError::BadMac)));
}

// ---- replay counter ----------------------------------------------------------------

#[test]
fn a_replayed_frame_is_refused() {
    let (mut t, mut g) = signed_on_pair(&input(1, 2));
    let first = encode(&mut t, 1, purchase(1));
    decode_one(&mut g, &first).unwrap();
    let e = decode_one(&mut g, &first).unwrap_err();
    assert!(matches!(e, CodecError::Replay { counter: 1, last: 1 }), "{e:?}");
    assert_eq!(e.error_code(), ErrorCode::Replay);
}

#[test]
fn an_equal_or_lower_counter_is_refused_even_with_a_valid_mac() {
    let input = input(1, 2);
    let (k_up, _) = raw_keys(&input, &secret());
    let (_, mut g) = signed_on_pair(&input);
    decode_one(&mut g, &RawFrame::of(&purchase(1)).counter(5).bytes(Some(&k_up))).unwrap();
    for counter in [5, 4, 1, 0] {
        let raw = RawFrame::of(&purchase(2)).counter(counter).bytes(Some(&k_up));
        let e = decode_one(&mut g, &raw).unwrap_err();
        assert!(
            matches!(e, CodecError::Replay { counter: c, last: 5 } if c == counter),
            "{e:?}"
        );
    }
    // Above the last accepted is fine, gaps included.
    let f = decode_one(&mut g, &RawFrame::of(&purchase(2)).counter(9).bytes(Some(&k_up))).unwrap();
    assert_eq!(f.counter, 9);
}

#[test]
fn the_first_authenticated_frame_must_have_a_counter_above_zero() {
    let input = input(1, 2);
    let (k_up, _) = raw_keys(&input, &secret());
    let (_, mut g) = signed_on_pair(&input);
    let raw = RawFrame::of(&purchase(1)).counter(0).bytes(Some(&k_up));
    assert!(matches!(
        decode_one(&mut g, &raw),
        Err(CodecError::Replay { counter: 0, last: 0 })
    ));
}

#[test]
fn a_refused_frame_does_not_advance_the_counter() {
    let input = input(1, 2);
    let (k_up, _) = raw_keys(&input, &secret());
    let (_, mut g) = signed_on_pair(&input);
    // A forged frame with a huge counter must not lock the real terminal out.
    let forged = RawFrame::of(&purchase(1)).counter(u64::MAX).bytes(Some(&[0; 32]));
    assert!(matches!(decode_one(&mut g, &forged), Err(CodecError::BadMac)));
    let f = decode_one(&mut g, &RawFrame::of(&purchase(1)).counter(1).bytes(Some(&k_up))).unwrap();
    assert_eq!(f.counter, 1);
}

// ---- the unauthenticated ERROR that refuses a sign-on ------------------------------

#[test]
fn an_unauthenticated_error_is_accepted_only_before_the_first_authenticated_frame() {
    let input = input(1, 2);
    let refusal = RawFrame::of(&error(ErrorCode::AuthFailed)).bytes(None);

    // The terminal installed its keys after sending PROOF; the gateway refused the proof
    // and, having no session, answers in the clear.
    let (mut t, mut g) = signed_on_pair(&input);
    let f = decode_one(&mut t, &refusal).unwrap();
    assert_eq!((f.counter, f.message), (0, error(ErrorCode::AuthFailed)));

    // Once SIGN_ON_OK (the first authenticated frame) has arrived, it is a forgery.
    let (mut t, _) = signed_on_pair(&input);
    let ok = encode(&mut g, 2, sign_on_ok());
    decode_one(&mut t, &ok).unwrap();
    let e = decode_one(&mut t, &refusal).unwrap_err();
    assert!(matches!(e, CodecError::BadMac), "{e:?}");

    // And only ERROR gets the exception: nothing else travels in the clear in a session.
    let (mut t, _) = signed_on_pair(&input);
    let clear_ok = RawFrame::of(&sign_on_ok()).bytes(None);
    assert!(matches!(decode_one(&mut t, &clear_ok), Err(CodecError::BadMac)));
}

#[test]
fn an_authenticated_error_follows_the_counter_like_any_frame() {
    let input = input(1, 2);
    let (mut t, mut g) = signed_on_pair(&input);
    let ok = encode(&mut g, 2, sign_on_ok());
    let bye = encode(&mut g, 0, error(ErrorCode::ShuttingDown));
    decode_one(&mut t, &ok).unwrap();
    let f = decode_one(&mut t, &bye).unwrap();
    assert_eq!(
        (f.request_id, f.counter, f.message),
        (0, 2, error(ErrorCode::ShuttingDown))
    );
    assert!(matches!(decode_one(&mut t, &bye), Err(CodecError::Replay { .. })));
}

// ---- error codes -------------------------------------------------------------------

#[test]
fn every_codec_error_maps_to_the_documented_error_code() {
    let cases: [(CodecError, ErrorCode); 8] = [
        (std::io::Error::other("x").into(), ErrorCode::ServerError),
        (CodecError::FrameTooLarge { len: 1 << 20 }, ErrorCode::FrameTooLarge),
        (CodecError::Malformed("x"), ErrorCode::Malformed),
        (CodecError::UnsupportedVersion(2), ErrorCode::UnsupportedVersion),
        (
            CodecError::Unauthenticated { msg_type: 0x10 },
            ErrorCode::UnexpectedMessage,
        ),
        (
            CodecError::WrongDirection { msg_type: 0x4d },
            ErrorCode::UnexpectedMessage,
        ),
        (CodecError::BadMac, ErrorCode::BadMac),
        (CodecError::Replay { counter: 1, last: 1 }, ErrorCode::Replay),
    ];
    for (e, code) in cases {
        assert_eq!(e.error_code(), code, "{e}");
    }
}
