//! docs/PROTOCOL-blacklist.md checked against the codec, so that its examples cannot
//! drift from the code:
//!
//! * every ```` ```hex body=TYPE ```` block is one body of that type: it must decode and
//!   re-encode to the same bytes, and hold the values the page's example promises;
//! * every ```` ```hex frame ```` block is a whole frame, written up to its MAC (shown as
//!   `<16-byte MAC>`): the `len=N` the prose states before it, the length prefix and the
//!   frame's real size must agree, and so must the header fields the prose names and the
//!   body, which must be the page's body example of the same type.

use std::collections::BTreeMap;

use cardgate_codec::frame::FLAG_MAC;
use cardgate_codec::{
    BLACKLIST_PAGE_CARDS_MAX, BLACKLIST_PAGE_LAST_IN_RUN, BlacklistAck, BlacklistPage, BlacklistPageKind,
    BlacklistPush, BlacklistSync, HEADER_LEN, MAC_LEN, Message, PROTOCOL_VERSION,
};

const DOC: &str = include_str!("../../docs/PROTOCOL-blacklist.md");

/// Stands for the MAC in a frame example.
const MAC_PLACEHOLDER: &str = "<16-byte MAC>";

struct Block {
    line: usize,
    info: String,
    bytes: Vec<u8>,
    has_mac: bool,
    /// The document's text before the block.
    before: usize,
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut lines = DOC.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let start = offset;
        offset += line.len() + 1;
        let Some(info) = line.trim_start().strip_prefix("```hex") else {
            continue;
        };
        let mut bytes = Vec::new();
        let mut has_mac = false;
        loop {
            let (j, l) = lines
                .next()
                .unwrap_or_else(|| panic!("block at line {} is never closed", i + 1));
            offset += l.len() + 1;
            if l.trim_start().starts_with("```") {
                break;
            }
            let mut l = l.to_string();
            if l.contains(MAC_PLACEHOLDER) {
                has_mac = true;
                l = l.replace(MAC_PLACEHOLDER, "");
            }
            for tok in l.split_whitespace() {
                assert_eq!(tok.len(), 2, "line {}: `{tok}` is not one byte", j + 1);
                bytes.push(u8::from_str_radix(tok, 16).unwrap_or_else(|_| panic!("line {}: `{tok}`", j + 1)));
            }
        }
        out.push(Block {
            line: i + 1,
            info: info.trim().to_string(),
            bytes,
            has_mac,
            before: start,
        });
    }
    out
}

fn parse_type(s: &str) -> u8 {
    u8::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("`{s}` is not a hex type"))
}

/// The values the page's examples describe in prose.
fn promised(t: u8) -> Message {
    match t {
        0x30 => Message::BlacklistPush(BlacklistPush {
            version: 42,
            server_time_ms: 1_700_000_000_000,
        }),
        0x31 => Message::BlacklistSync(BlacklistSync {
            since_version: 40,
            after_card: 0,
        }),
        0x32 => {
            let mut cards = [0u64; BLACKLIST_PAGE_CARDS_MAX];
            cards[0] = 62_220_000_000_001;
            cards[1] = 62_220_000_000_002;
            Message::BlacklistPage(BlacklistPage {
                kind: BlacklistPageKind::Delta,
                flags: BLACKLIST_PAGE_LAST_IN_RUN,
                added: 1,
                removed: 1,
                from_version: 40,
                to_version: 42,
                next_after_card: 0,
                cards,
            })
        }
        0x33 => Message::BlacklistAck(BlacklistAck { version: 42 }),
        other => panic!("the blacklist page has no example of type {other:#04x}"),
    }
}

/// The `key=value` or `key value` facts of the last parenthesis with `len=` before
/// `at`: `(`len=48, version 1, type 0x30, flags MAC, request id 0`)`.
fn stated_header(at: usize) -> BTreeMap<String, String> {
    let prose = &DOC[..at];
    let start = prose.rfind("len=").expect("a frame example states its len= before it");
    let end = start + prose[start..].find(')').expect("the statement closes");
    let statement = prose[start..end].replace(['`', '\n'], " ");
    let mut facts = BTreeMap::new();
    for part in statement.split(',') {
        let part = part.trim();
        let (k, v) = part
            .split_once('=')
            .or_else(|| part.rsplit_once(' '))
            .unwrap_or_else(|| panic!("`{part}` is not a fact"));
        facts.insert(k.trim().to_string(), v.trim().to_string());
    }
    // "with counter 7" comes just before the parenthesis.
    let counter = prose[..start]
        .rsplit_once("counter ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .expect("the frame example states its counter");
    facts.insert("counter".into(), counter.to_string());
    facts
}

#[test]
fn every_body_example_decodes_re_encodes_and_says_what_the_page_says() {
    let mut seen = Vec::new();
    for b in blocks().iter().filter(|b| b.info.starts_with("body=")) {
        let t = parse_type(&b.info["body=".len()..]);
        let m = Message::decode_body(t, &b.bytes).unwrap_or_else(|e| panic!("line {}: {e}", b.line));
        let mut again = Vec::new();
        m.encode_body(&mut again);
        assert_eq!(again, b.bytes, "line {}: re-encodes differently", b.line);
        assert_eq!(m, promised(t), "line {}", b.line);
        seen.push(t);
    }
    assert_eq!(seen, [0x30, 0x31, 0x32, 0x33], "one body example per type, in order");
}

#[test]
fn the_frame_example_is_as_long_as_it_says_and_carries_its_header_and_body() {
    let all = blocks();
    let frames: Vec<&Block> = all.iter().filter(|b| b.info == "frame").collect();
    assert_eq!(frames.len(), 1, "the page shows one whole frame");
    for f in frames {
        let facts = stated_header(f.before);
        let stated: usize = facts["len"].parse().expect("len= is a number");
        let prefix = u32::from_le_bytes(f.bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(prefix, stated, "line {}: the prefix is not the stated len", f.line);
        let mac = if f.has_mac { MAC_LEN } else { 0 };
        assert_eq!(
            f.bytes.len() - 4 + mac,
            stated,
            "line {}: the frame's bytes are not the stated len",
            f.line
        );
        assert_eq!(facts["version"], PROTOCOL_VERSION.to_string());
        assert_eq!(f.bytes[4], PROTOCOL_VERSION);
        let t = parse_type(&facts["type"]);
        assert_eq!(f.bytes[5], t);
        let flags = u16::from_le_bytes([f.bytes[6], f.bytes[7]]);
        assert_eq!(facts["flags"] == "MAC", flags & FLAG_MAC != 0);
        assert_eq!(f.has_mac, flags & FLAG_MAC != 0, "a MAC exactly when flagged");
        let request_id: u32 = facts["request id"].parse().unwrap();
        assert_eq!(u32::from_le_bytes(f.bytes[8..12].try_into().unwrap()), request_id);
        let counter: u64 = facts["counter"].parse().unwrap();
        assert_eq!(u64::from_le_bytes(f.bytes[12..20].try_into().unwrap()), counter);
        let body = &f.bytes[4 + HEADER_LEN..];
        assert_eq!(Some(body.len()), Message::body_len(t));
        let example = all
            .iter()
            .find(|b| b.info == format!("body={t:#04x}"))
            .expect("the frame's body is one of the examples");
        assert_eq!(body, &example.bytes[..], "line {}: the body is the example's", f.line);
    }
}
