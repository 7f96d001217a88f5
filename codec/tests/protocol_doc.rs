//! docs/PROTOCOL.md checked against the code, so that the two cannot drift apart.
//!
//! * Every ```` ```hex frame=NAME dir=up|down conversation=NAME ```` block is a frame. Each
//!   conversation is played in document order through a real terminal-side and a real
//!   gateway-side `TerminalCodec`: the receiving side decodes the bytes, the sending side
//!   re-encodes the decoded message, and the bytes must come back identical. Session keys
//!   come from the conversation's HELLO and CHALLENGE and the demo secret of the HELLO's
//!   terminal; the gateway side installs them only if the PROOF verifies, as the gateway
//!   does, and the terminal side right after its PROOF, as terminals do.
//! * Every ```` ```hex value=NAME ```` block is a derived value (secret, proof, keys, a full
//!   HMAC), recomputed here by hand from the specification with `hmac`/`sha2` and, where
//!   the codec exposes it, by the codec too.
//! * Tables after a `<!-- check: NAME -->` marker are compared with the codec's constants
//!   and code lists, in both directions (nothing missing, nothing extra).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use bytes::BytesMut;
use cardgate_codec::codec::Frame;
use cardgate_codec::crypto::{MacKey, SignOnInput};
use cardgate_codec::frame::msg_type;
use cardgate_codec::{
    BodyLen, CardStatusCode, Challenge, DeclineReason, ErrorCode, FRAME_LEN_MAX, HEADER_LEN, Hello, MAC_LEN, Message,
    PROTOCOL_VERSION, Side, TerminalCodec, TerminalSecret,
};
use common::hmac_sha256;
use tokio_util::codec::{Decoder, Encoder};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

/// The demo campus's published master secret, as the doc states it.
const MASTER: &[u8] = b"cardgate-demo-master-secret";

/// Frames every reader of the doc needs to see, at the least.
const REQUIRED_FRAMES: [&str; 7] = [
    "hello",
    "challenge",
    "proof",
    "sign_on_ok",
    "purchase",
    "approved",
    "declined",
];

/// Every derived value the doc shows, and the only ones this test knows how to check.
const VALUES: [&str; 7] = [
    "secret",
    "sign_on_input",
    "proof",
    "k_up",
    "k_down",
    "purchase_hmac",
    "door_event_mac",
];

#[derive(Debug)]
struct Block {
    line: usize,
    attrs: BTreeMap<String, String>,
    bytes: Vec<u8>,
}

impl Block {
    fn attr(&self, key: &str) -> &str {
        self.attrs
            .get(key)
            .unwrap_or_else(|| panic!("hex block at line {} has no `{key}=`", self.line))
    }
}

fn parse_hex_blocks(doc: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```hex") else {
            continue;
        };
        let line_no = i + 1;
        let mut attrs = BTreeMap::new();
        for kv in info.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("line {line_no}: `{kv}` is not key=value"));
            assert!(
                ["frame", "value", "dir", "conversation"].contains(&k),
                "line {line_no}: unknown attribute `{k}`"
            );
            assert!(
                attrs.insert(k.to_string(), v.to_string()).is_none(),
                "line {line_no}: `{k}` twice"
            );
        }
        assert!(
            attrs.contains_key("frame") != attrs.contains_key("value"),
            "line {line_no}: a hex block is either a frame= or a value="
        );
        let mut bytes = Vec::new();
        loop {
            let (j, l) = lines
                .next()
                .unwrap_or_else(|| panic!("hex block at line {line_no} is never closed"));
            if l.trim_start().starts_with("```") {
                break;
            }
            let data = l.split('#').next().unwrap_or("");
            for tok in data.split_whitespace() {
                assert_eq!(tok.len(), 2, "line {}: `{tok}` is not one byte", j + 1);
                bytes.push(u8::from_str_radix(tok, 16).unwrap_or_else(|_| panic!("line {}: `{tok}`", j + 1)));
            }
        }
        assert!(!bytes.is_empty(), "hex block at line {line_no} is empty");
        blocks.push(Block {
            line: line_no,
            attrs,
            bytes,
        });
    }
    blocks
}

/// The rows (cells trimmed, backticks removed) of the table after `<!-- check: name -->`,
/// without its header and separator rows.
fn checked_table(name: &str) -> Vec<Vec<String>> {
    let marker = format!("<!-- check: {name} -->");
    let start = DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("PROTOCOL.md lacks `{marker}`"));
    let rows: Vec<Vec<String>> = DOC[start + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .collect();
    assert!(rows.len() > 2, "table `{name}` has no rows");
    assert!(rows[1].iter().all(|c| c.chars().all(|ch| ch == '-' || ch == ':')));
    rows[2..].to_vec()
}

fn type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        msg_type::HELLO => "HELLO",
        msg_type::CHALLENGE => "CHALLENGE",
        msg_type::PROOF => "PROOF",
        msg_type::SIGN_ON_OK => "SIGN_ON_OK",
        msg_type::HEARTBEAT => "HEARTBEAT",
        msg_type::HEARTBEAT_ACK => "HEARTBEAT_ACK",
        msg_type::ERROR => "ERROR",
        msg_type::PURCHASE => "PURCHASE",
        msg_type::REVERSAL => "REVERSAL",
        msg_type::BALANCE_INQUIRY => "BALANCE_INQUIRY",
        msg_type::APPROVED => "APPROVED",
        msg_type::DECLINED => "DECLINED",
        msg_type::BALANCE => "BALANCE",
        msg_type::BLACKLIST_PUSH => "BLACKLIST_PUSH",
        msg_type::BLACKLIST_SYNC => "BLACKLIST_SYNC",
        msg_type::BLACKLIST_PAGE => "BLACKLIST_PAGE",
        msg_type::BLACKLIST_ACK => "BLACKLIST_ACK",
        msg_type::OFFLINE_LIMITS => "OFFLINE_LIMITS",
        msg_type::OFFLINE_BATCH => "OFFLINE_BATCH",
        msg_type::OFFLINE_SALE => "OFFLINE_SALE",
        msg_type::OFFLINE_RESULT => "OFFLINE_RESULT",
        msg_type::ACCESS_CHECK => "ACCESS_CHECK",
        msg_type::ACCESS_RESULT => "ACCESS_RESULT",
        msg_type::PUNCH => "PUNCH",
        msg_type::PUNCH_RESULT => "PUNCH_RESULT",
        msg_type::DOOR_CACHE_SYNC => "DOOR_CACHE_SYNC",
        msg_type::DOOR_CACHE_PAGE => "DOOR_CACHE_PAGE",
        msg_type::DOOR_SCHEDULE => "DOOR_SCHEDULE",
        msg_type::DOOR_HOLIDAYS => "DOOR_HOLIDAYS",
        msg_type::DOOR_CACHE_ACK => "DOOR_CACHE_ACK",
        msg_type::DOOR_CACHE_PUSH => "DOOR_CACHE_PUSH",
        msg_type::DOOR_EVENTS_BATCH => "DOOR_EVENTS_BATCH",
        msg_type::DOOR_EVENT => "DOOR_EVENT",
        msg_type::DOOR_EVENTS_RESULT => "DOOR_EVENTS_RESULT",
        msg_type::DOOR_CACHE_BULK => "DOOR_CACHE_BULK",
        _ => return None,
    })
}

/// The types a terminal sends; every other defined type is the gateway's.
fn is_up(t: u8) -> bool {
    matches!(
        t,
        msg_type::HELLO
            | msg_type::PROOF
            | msg_type::HEARTBEAT
            | msg_type::PURCHASE
            | msg_type::REVERSAL
            | msg_type::BALANCE_INQUIRY
            | msg_type::BLACKLIST_SYNC
            | msg_type::BLACKLIST_ACK
            | msg_type::OFFLINE_BATCH
            | msg_type::OFFLINE_SALE
            | msg_type::ACCESS_CHECK
            | msg_type::PUNCH
            | msg_type::DOOR_CACHE_SYNC
            | msg_type::DOOR_CACHE_ACK
            | msg_type::DOOR_EVENTS_BATCH
            | msg_type::DOOR_EVENT
    )
}

fn parse_u8_hex(s: &str) -> u8 {
    u8::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("`{s}` is not a hex byte"))
}

/// One side's codec and what it has seen of the sign-on.
struct Conversation {
    terminal: TerminalCodec,
    gateway: TerminalCodec,
    hello: Option<Hello>,
    challenge: Option<Challenge>,
    /// Every frame in order, with its bytes, by name.
    frames: Vec<(String, Frame, Vec<u8>)>,
}

impl Conversation {
    fn new() -> Conversation {
        Conversation {
            terminal: TerminalCodec::new(Side::Terminal),
            gateway: TerminalCodec::new(Side::Gateway),
            hello: None,
            challenge: None,
            frames: Vec::new(),
        }
    }

    fn input(&self) -> SignOnInput {
        let hello = self.hello.expect("HELLO comes before PROOF");
        let challenge = self.challenge.expect("CHALLENGE comes before PROOF");
        SignOnInput {
            terminal_id: hello.terminal_id,
            terminal_nonce: hello.terminal_nonce,
            gateway_nonce: challenge.gateway_nonce,
        }
    }

    fn play(&mut self, block: &Block) {
        let name = block.attr("frame").to_string();
        let up = match block.attr("dir") {
            "up" => true,
            "down" => false,
            other => panic!("frame `{name}`: dir={other}, expected up or down"),
        };
        let (receiver, sender) = if up {
            (&mut self.gateway, &mut self.terminal)
        } else {
            (&mut self.terminal, &mut self.gateway)
        };
        let mut buf = BytesMut::from(&block.bytes[..]);
        let frame = match receiver.decode(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => panic!("frame `{name}` (line {}) is incomplete", block.line),
            Err(e) => panic!("frame `{name}` (line {}) does not decode: {e}", block.line),
        };
        assert!(buf.is_empty(), "frame `{name}`: {} bytes after the frame", buf.len());
        assert_eq!(
            is_up(frame.message.msg_type()),
            up,
            "frame `{name}` goes the wrong way for its type"
        );
        assert!(
            frame.counter == 0 || sender.has_session(),
            "frame `{name}` (line {}) is MACed but its sender has no session: \
             the conversation's PROOF does not verify",
            block.line
        );
        let mut again = BytesMut::new();
        sender
            .encode((frame.request_id, frame.message.clone()), &mut again)
            .expect("encoding never fails");
        assert_eq!(
            hex::encode(&again),
            hex::encode(&block.bytes),
            "frame `{name}` (line {}) re-encodes differently",
            block.line
        );

        match &frame.message {
            Message::Hello(h) => self.hello = Some(*h),
            Message::Challenge(c) => self.challenge = Some(*c),
            Message::Proof(p) => {
                let input = self.input();
                let secret = TerminalSecret::derive_demo(MASTER, input.terminal_id);
                // The terminal always switches to MACs after sending PROOF; the gateway
                // only if the proof is right.
                self.terminal.install_session(input.session_keys(&secret));
                if input.verify_proof(&secret, &p.proof) {
                    self.gateway.install_session(input.session_keys(&secret));
                }
            }
            _ => {}
        }
        self.frames.push((name, frame, block.bytes.clone()));
    }

    fn frame(&self, name: &str) -> &(String, Frame, Vec<u8>) {
        self.frames
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no frame `{name}`"))
    }
}

/// Plays every conversation; returns them by name.
fn conversations() -> BTreeMap<String, Conversation> {
    let mut convs: BTreeMap<String, Conversation> = BTreeMap::new();
    let mut names = BTreeSet::new();
    for block in parse_hex_blocks(DOC).iter().filter(|b| b.attrs.contains_key("frame")) {
        assert!(
            names.insert(block.attr("frame").to_string()),
            "frame `{}` twice",
            block.attr("frame")
        );
        convs
            .entry(block.attr("conversation").to_string())
            .or_insert_with(Conversation::new)
            .play(block);
    }
    convs
}

#[test]
fn every_hex_frame_decodes_and_re_encodes_byte_for_byte() {
    let convs = conversations();
    let all: Vec<&(String, Frame, Vec<u8>)> = convs.values().flat_map(|c| &c.frames).collect();
    for name in REQUIRED_FRAMES {
        assert!(
            all.iter().any(|(n, _, _)| n == name),
            "PROTOCOL.md lacks the `{name}` example"
        );
    }
    // Every message type of the version has at least one example.
    let shown: BTreeSet<u8> = all.iter().map(|(_, f, _)| f.message.msg_type()).collect();
    for t in 0..=u8::MAX {
        if Message::body_shape(t).is_some() {
            assert!(shown.contains(&t), "no example of type {t:#04x}");
        }
    }
}

#[test]
fn the_main_conversation_signs_on_and_counts_as_documented() {
    let convs = conversations();
    let main = &convs["main"];
    assert!(main.terminal.has_session() && main.gateway.has_session());
    let mut up = 0;
    let mut down = 0;
    let mut requests = BTreeMap::new();
    for (name, f, bytes) in &main.frames {
        let has_mac = bytes[6] & 1 == 1;
        assert_eq!(
            has_mac,
            f.counter != 0,
            "`{name}`: a MAC exactly when the counter is set"
        );
        if has_mac {
            let c = if is_up(f.message.msg_type()) {
                &mut up
            } else {
                &mut down
            };
            *c += 1;
            assert_eq!(f.counter, *c, "`{name}`: counters go 1, 2, 3 per direction");
        }
        // Answers echo the request id of the request before them; ERROR and the
        // unsolicited OFFLINE_LIMITS carry 0.
        match &f.message {
            Message::Error(_) | Message::OfflineLimits(_) => assert_eq!(f.request_id, 0, "`{name}`"),
            m if is_up(m.msg_type()) => {
                assert!(requests.insert(f.request_id, name).is_none(), "request id reused");
            }
            _ => assert!(requests.contains_key(&f.request_id), "`{name}` answers no request"),
        }
    }
    let (_, ok, _) = main.frame("sign_on_ok");
    assert_eq!(ok.counter, 1, "SIGN_ON_OK is the first authenticated frame");
}

/// Every conversation counts 1, 2, 3 … in each direction, as the gateway and a terminal
/// do: no frame of a run or an unsolicited frame is left out of an example.
#[test]
fn every_conversation_counts_without_gaps() {
    for (conv, c) in &conversations() {
        let (mut up, mut down) = (0, 0);
        for (name, f, _) in &c.frames {
            if f.counter == 0 {
                continue;
            }
            let n = if is_up(f.message.msg_type()) {
                &mut up
            } else {
                &mut down
            };
            *n += 1;
            assert_eq!(
                f.counter, *n,
                "conversation `{conv}`, frame `{name}`: counters go 1, 2, 3"
            );
        }
    }
}

/// A SIGN_ON_OK whose `flags` bit 0 is set is followed by an OFFLINE_LIMITS (request id
/// 0), and one without it by none; and a DOOR_CACHE_SYNC with `after` all zero is
/// answered, as the gateway answers it (`ledger/src/door_wire.rs`), by DOOR_SCHEDULEs,
/// then DOOR_HOLIDAYS, then pages, the last with `LAST_IN_RUN`, all under its request
/// id and with nothing between them.
#[test]
fn sign_on_and_door_sync_runs_come_whole_and_in_order() {
    use cardgate_codec::{DOOR_PAGE_LAST_IN_RUN, SIGN_ON_OFFLINE_LIMITS};
    for (conv, c) in &conversations() {
        let down: Vec<&(String, Frame, Vec<u8>)> = c
            .frames
            .iter()
            .filter(|(_, f, _)| !is_up(f.message.msg_type()))
            .collect();
        for (k, (name, f, _)) in down.iter().enumerate() {
            let Message::SignOnOk(ok) = &f.message else {
                continue;
            };
            let next = down.get(k + 1).map(|(_, n, _)| n);
            let limits_next = next.is_some_and(|n| matches!(n.message, Message::OfflineLimits(_)) && n.request_id == 0);
            assert_eq!(
                ok.flags & SIGN_ON_OFFLINE_LIMITS != 0,
                limits_next,
                "`{conv}`/`{name}`: OFFLINE_LIMITS follows exactly when flags bit 0 is set"
            );
        }
        for (k, (name, f, _)) in c.frames.iter().enumerate() {
            let Message::DoorCacheSync(sync) = &f.message else {
                continue;
            };
            // The answer's frames, in order: the down frames after the sync under its id.
            let run: Vec<&Frame> = c.frames[k + 1..]
                .iter()
                .map(|(_, g, _)| g)
                .filter(|g| !is_up(g.message.msg_type()))
                .take_while(|g| g.request_id == f.request_id)
                .collect();
            let stage = |m: &Message| match m {
                Message::DoorSchedule(_) => 0,
                Message::DoorHolidays(_) => 1,
                Message::DoorCachePage(_) | Message::DoorCacheBulk(_) => 2,
                other => panic!("`{conv}`/`{name}`: {other:?} inside a door cache run"),
            };
            let stages: Vec<u8> = run.iter().map(|g| stage(&g.message)).collect();
            if sync.after.is_none() {
                assert!(
                    stages.first() == Some(&0) && stages.contains(&1),
                    "`{conv}`/`{name}`: a sync with `after` all zero starts with DOOR_SCHEDULE and DOOR_HOLIDAYS"
                );
            }
            assert!(stages.windows(2).all(|w| w[0] <= w[1]), "`{conv}`/`{name}`: run order");
            let flags: Vec<u8> = run.iter().filter_map(|g| g.message.door_page_flags()).collect();
            assert!(!flags.is_empty(), "`{conv}`/`{name}`: a run has pages");
            assert!(
                flags
                    .iter()
                    .enumerate()
                    .all(|(i, fl)| (fl & DOOR_PAGE_LAST_IN_RUN != 0) == (i + 1 == flags.len())),
                "`{conv}`/`{name}`: only the last page has LAST_IN_RUN"
            );
        }
    }
}

#[test]
fn the_refused_conversation_ends_with_a_clear_auth_failed() {
    let convs = conversations();
    let refused = &convs["refused"];
    let (_, proof, _) = refused.frame("proof_refused");
    let Message::Proof(p) = proof.message else {
        panic!("proof_refused is not a PROOF")
    };
    let input = refused.input();
    let secret = TerminalSecret::derive_demo(MASTER, input.terminal_id);
    assert!(
        !input.verify_proof(&secret, &p.proof),
        "the refused proof must be wrong"
    );
    assert!(refused.terminal.has_session() && !refused.gateway.has_session());
    let (_, last, bytes) = refused.frames.last().expect("frames");
    assert_eq!(
        last.message,
        Message::Error(cardgate_codec::ErrorFrame {
            code: ErrorCode::AuthFailed,
            detail: 0
        })
    );
    assert_eq!((last.request_id, last.counter, bytes[6] & 1), (0, 0, 0));
}

#[test]
fn every_derived_value_is_recomputed_from_the_specification() {
    let convs = conversations();
    let main = &convs["main"];
    let input = main.input();
    let mut data = Vec::new();
    data.extend_from_slice(&input.terminal_id.to_le_bytes());
    data.extend_from_slice(&input.terminal_nonce);
    data.extend_from_slice(&input.gateway_nonce);
    let secret = hmac_sha256(MASTER, &[b"cardgate/1/demo-terminal", &input.terminal_id.to_le_bytes()]);
    assert_eq!(TerminalSecret::derive_demo(MASTER, input.terminal_id).0, secret);
    let proof = hmac_sha256(&secret, &[b"cardgate/1/proof", &data]);
    assert_eq!(input.proof(&TerminalSecret(secret)), proof);
    let (_, proof_frame, _) = main.frame("proof");
    assert_eq!(proof_frame.message, Message::Proof(cardgate_codec::Proof { proof }));
    let k_up = hmac_sha256(&secret, &[b"cardgate/1/up", &data]);
    let k_down = hmac_sha256(&secret, &[b"cardgate/1/down", &data]);
    // The codec's keys are the ones derived here.
    let keys = input.session_keys(&TerminalSecret(secret));
    assert_eq!(keys.up.tag(b"probe"), MacKey::new(&k_up).tag(b"probe"));
    assert_eq!(keys.down.tag(b"probe"), MacKey::new(&k_down).tag(b"probe"));
    let (_, _, purchase) = main.frame("purchase");
    let body_end = purchase.len() - MAC_LEN;
    let purchase_hmac = hmac_sha256(&k_up, &[&purchase[..body_end]]);
    assert_eq!(&purchase[body_end..], &purchase_hmac[..MAC_LEN]);
    // And every MACed frame of the conversation carries the MAC of its direction's key.
    for (name, f, bytes) in &main.frames {
        if f.counter == 0 {
            continue;
        }
        let key = if is_up(f.message.msg_type()) { &k_up } else { &k_down };
        let n = bytes.len() - MAC_LEN;
        assert_eq!(&bytes[n..], &hmac_sha256(key, &[&bytes[..n]])[..MAC_LEN], "`{name}`");
    }

    // The first offline door event's MAC, by hand from section 11.5's formula, and by
    // the codec; and every DOOR_EVENT of the doc carries the MAC of its fields.
    let offline = &convs["door_offline"];
    let controller = offline.input().terminal_id;
    let controller_secret = hmac_sha256(MASTER, &[b"cardgate/1/demo-terminal", &controller.to_le_bytes()]);
    let mut door_event_mac = None;
    for (name, f, _) in offline.frames.iter().chain(&convs["door"].frames) {
        let Message::DoorEvent(e) = f.message else {
            continue;
        };
        let by_hand = hmac_sha256(
            &controller_secret,
            &[
                b"cardgate/1/door-event",
                &controller.to_le_bytes(),
                &e.event_seq.to_le_bytes(),
                &e.card.0.to_le_bytes(),
                &e.door.to_le_bytes(),
                &[e.direction as u8, u8::from(e.granted())],
                &e.reason.code().to_le_bytes(),
                &e.event_time_ms.to_le_bytes(),
            ],
        );
        assert_eq!(&e.mac[..], &by_hand[..MAC_LEN], "`{name}`: its MAC");
        let fields = cardgate_codec::crypto::DoorEventFields::of(controller, &e);
        assert_eq!(
            cardgate_codec::crypto::door_event_mac(&TerminalSecret(controller_secret), &fields),
            e.mac
        );
        door_event_mac.get_or_insert(by_hand[..MAC_LEN].to_vec());
    }

    let expected: BTreeMap<&str, Vec<u8>> = [
        (
            "door_event_mac",
            door_event_mac.expect("the door_offline conversation has a DOOR_EVENT"),
        ),
        ("secret", secret.to_vec()),
        ("sign_on_input", data.clone()),
        ("proof", proof.to_vec()),
        ("k_up", k_up.to_vec()),
        ("k_down", k_down.to_vec()),
        ("purchase_hmac", purchase_hmac.to_vec()),
    ]
    .into();
    let mut seen = BTreeSet::new();
    for block in parse_hex_blocks(DOC).iter().filter(|b| b.attrs.contains_key("value")) {
        let name = block.attr("value");
        let want = expected
            .get(name)
            .unwrap_or_else(|| panic!("line {}: unknown value `{name}`", block.line));
        assert_eq!(
            hex::encode(&block.bytes),
            hex::encode(want),
            "value `{name}` (line {})",
            block.line
        );
        assert!(seen.insert(name.to_string()), "value `{name}` twice");
    }
    for name in VALUES {
        assert!(seen.contains(name), "PROTOCOL.md lacks the derived value `{name}`");
    }
}

#[test]
fn the_demo_master_secret_is_stated_as_the_code_uses_it() {
    assert!(DOC.contains("`cardgate-demo-master-secret`"));
    assert!(DOC.contains(&format!("the {} ASCII bytes", MASTER.len())));
}

#[test]
fn the_constants_table_matches_the_code() {
    let want: BTreeMap<&str, usize> = [
        ("PROTOCOL_VERSION", usize::from(PROTOCOL_VERSION)),
        ("HEADER_LEN", HEADER_LEN),
        ("MAC_LEN", MAC_LEN),
        ("FRAME_LEN_MAX", FRAME_LEN_MAX),
    ]
    .into();
    let rows = checked_table("constants");
    let got: BTreeMap<&str, usize> = rows
        .iter()
        .map(|r| (r[0].as_str(), r[1].replace(',', "").parse().expect("a number")))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_message_type_table_matches_the_code() {
    let rows = checked_table("message-types");
    let mut listed = BTreeSet::new();
    for r in &rows {
        let t = parse_u8_hex(&r[0]);
        assert!(listed.insert(t), "type {t:#04x} twice");
        assert_eq!(Some(r[1].as_str()), type_name(t), "type {t:#04x}");
        assert_eq!(r[2], if is_up(t) { "T→G" } else { "G→T" }, "{}", r[1]);
        match Message::body_shape(t).expect("a defined type") {
            BodyLen::Fixed(n) => assert_eq!(r[3].parse::<usize>().ok(), Some(n), "{}", r[1]),
            BodyLen::Items { head, item, .. } => assert_eq!(r[3], format!("{head} + {item} × n"), "{}", r[1]),
        }
        let clear = match r[4].as_str() {
            "yes" => true,
            "no" => false,
            other => panic!("{}: `{other}`", r[1]),
        };
        assert_eq!(clear, Message::allowed_unauthenticated(t), "{}", r[1]);
    }
    let defined: BTreeSet<u8> = (0..=u8::MAX).filter(|t| Message::body_shape(*t).is_some()).collect();
    assert_eq!(listed, defined);
}

#[test]
fn the_reserved_ranges_table_matches_the_code() {
    let got: BTreeSet<(u8, u8)> = checked_table("reserved-ranges")
        .iter()
        .map(|r| {
            let (a, b) = r[0].split_once('-').expect("a range a-b");
            (parse_u8_hex(a), parse_u8_hex(b))
        })
        .collect();
    let want: BTreeSet<(u8, u8)> = [
        msg_type::RESERVED_BLACKLIST,
        msg_type::RESERVED_DOOR,
        msg_type::RESERVED_ATTENDANCE,
        msg_type::RESERVED_OFFLINE,
    ]
    .iter()
    .map(|r| (*r.start(), *r.end()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn the_decline_reason_table_matches_the_code() {
    let rows = checked_table("decline-reasons");
    let got: Vec<(u16, String)> = rows
        .iter()
        .map(|r| (r[0].parse().expect("a code"), r[1].clone()))
        .collect();
    let want: Vec<(u16, String)> = DeclineReason::ALL
        .iter()
        .map(|r| (r.code(), r.as_str().to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(
        rows.iter().all(|r| r.len() == 5 && !r[4].is_empty()),
        "every reason says what to do"
    );
    // Which declines carry the balance, as the code decides it.
    for r in &rows {
        let reason = DeclineReason::from_code(r[0].parse().expect("a code")).expect("listed above");
        let want = if reason.shows_balance() { "the balance" } else { "0" };
        assert_eq!(r[3], want, "{}: balance_fen", r[1]);
    }
}

#[test]
fn the_error_code_table_matches_the_code() {
    let rows = checked_table("error-codes");
    let got: Vec<(u16, String)> = rows
        .iter()
        .map(|r| (r[0].parse().expect("a code"), r[1].clone()))
        .collect();
    let want: Vec<(u16, String)> = ErrorCode::ALL
        .iter()
        .map(|e| (e.code(), e.as_str().to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(
        rows.iter().all(|r| r.len() == 4 && !r[3].is_empty()),
        "every code says what to do"
    );
}

#[test]
fn the_card_status_table_matches_the_code() {
    let rows = checked_table("card-status");
    let mut codes = Vec::new();
    for r in &rows {
        let code: u8 = r[0].parse().expect("a code");
        let status = CardStatusCode::from_code(code).unwrap_or_else(|| panic!("status {code} is not in the code"));
        assert_eq!(format!("{status:?}").to_lowercase(), r[1]);
        codes.push(code);
    }
    let defined: Vec<u8> = (0..=u8::MAX)
        .filter(|c| CardStatusCode::from_code(*c).is_some())
        .collect();
    assert_eq!(codes, defined);
}

/// A message of type `t` whose every field holds a value distinct from its neighbours,
/// so that a field found at the wrong offset shows.
fn sample(t: u8) -> Message {
    use cardgate_codec::*;
    let card = CardNo(0x1122_3344_5566_7788);
    match t {
        msg_type::HELLO => Message::Hello(Hello {
            terminal_id: 0x0102_0304_0506_0708,
            terminal_nonce: std::array::from_fn(|i| 0xa0 + i as u8),
            terminal_time_ms: 0x1718_191a_1b1c_1d1e,
        }),
        msg_type::CHALLENGE => Message::Challenge(Challenge {
            gateway_nonce: std::array::from_fn(|i| 0xb0 + i as u8),
            server_time_ms: 0x2728_292a_2b2c_2d2e,
        }),
        msg_type::PROOF => Message::Proof(Proof {
            proof: std::array::from_fn(|i| 0xc0 + i as u8),
        }),
        msg_type::SIGN_ON_OK => Message::SignOnOk(SignOnOk {
            server_time_ms: 0x3132_3334_3536_3738,
            last_tx_seq: 0x4142_4344_4546_4748,
            blacklist_version: 0x5152_5354_5556_5758,
            heartbeat_interval_s: 0x6162,
            pipeline_depth_max: 0x7172,
            flags: 0x8182_8384,
        }),
        msg_type::HEARTBEAT => Message::Heartbeat(Heartbeat {
            terminal_time_ms: 0x3132_3334_3536_3738,
            blacklist_version: 0x4142_4344_4546_4748,
        }),
        msg_type::HEARTBEAT_ACK => Message::HeartbeatAck(HeartbeatAck {
            server_time_ms: 0x3132_3334_3536_3738,
            blacklist_version: 0x4142_4344_4546_4748,
        }),
        msg_type::ERROR => Message::Error(ErrorFrame {
            code: ErrorCode::IdleTimeout,
            detail: 0x8182_8384,
        }),
        msg_type::PURCHASE => Message::Purchase(Purchase {
            tx_seq: 0x0102_0304_0506_0708,
            card,
            amount_fen: 0x2122_2324_2526_2728,
            terminal_time_ms: 0x3132_3334_3536_3738,
        }),
        msg_type::REVERSAL => Message::Reversal(Reversal {
            tx_seq: 0x0102_0304_0506_0708,
            original_tx_seq: 0x0a0b_0c0d_0e0f_1011,
            card,
            amount_fen: 0x2122_2324_2526_2728,
            terminal_time_ms: 0x3132_3334_3536_3738,
        }),
        msg_type::BALANCE_INQUIRY => Message::BalanceInquiry(BalanceInquiry { card }),
        msg_type::APPROVED => Message::Approved(Approved {
            tx_seq: 0x0102_0304_0506_0708,
            tx_id: 0x0a0b_0c0d_0e0f_1011,
            card,
            amount_fen: 0x2122_2324_2526_2728,
            balance_fen: 0x4142_4344_4546_4748,
            time_ms: 0x3132_3334_3536_3738,
        }),
        msg_type::DECLINED => Message::Declined(Declined {
            tx_seq: 0x0102_0304_0506_0708,
            card,
            reason: DeclineReason::OverDailyLimit,
            balance_fen: 0x4142_4344_4546_4748,
            time_ms: 0x3132_3334_3536_3738,
        }),
        msg_type::BALANCE => Message::Balance(Balance {
            card,
            status: CardStatusCode::Replaced,
            balance_fen: 0x4142_4344_4546_4748,
            spent_today_fen: 0x5152_5354_5556_5758,
            daily_limit_fen: 0x6162_6364_6566_6768,
        }),
        msg_type::BLACKLIST_PUSH => Message::BlacklistPush(cardgate_codec::BlacklistPush {
            version: 0x4142_4344_4546_4748,
            server_time_ms: 0x3132_3334_3536_3738,
        }),
        msg_type::BLACKLIST_SYNC => Message::BlacklistSync(cardgate_codec::BlacklistSync {
            since_version: 0x4142_4344_4546_4748,
            after_card: 0x5152_5354_5556_5758,
        }),
        msg_type::BLACKLIST_PAGE => Message::BlacklistPage(cardgate_codec::BlacklistPage {
            kind: cardgate_codec::BlacklistPageKind::Delta,
            flags: cardgate_codec::BLACKLIST_PAGE_LAST_IN_RUN | cardgate_codec::BLACKLIST_PAGE_MORE,
            added: 5,
            removed: 3,
            from_version: 0x4142_4344_4546_4748,
            to_version: 0x5152_5354_5556_5758,
            next_after_card: 0,
            cards: std::array::from_fn(|i| 0x6162_6364_6566_6700 + i as u64),
        }),
        msg_type::BLACKLIST_ACK => Message::BlacklistAck(cardgate_codec::BlacklistAck {
            version: 0x4142_4344_4546_4748,
        }),
        msg_type::OFFLINE_LIMITS => Message::OfflineLimits(cardgate_codec::OfflineLimits {
            sale_max_fen: 0x1112_1314_1516_1718,
            card_day_max_fen: 0x2122_2324_2526_2728,
            terminal_total_max_fen: 0x3132_3334_3536_3738,
            offline_minutes_max: 0x4142_4344,
            sales_max: 0x5152,
            batch_max: 0x6162,
        }),
        msg_type::OFFLINE_BATCH => Message::OfflineBatch(cardgate_codec::OfflineBatch {
            first_tx_seq: 0x0102_0304_0506_0708,
            count: 0x1112,
        }),
        msg_type::OFFLINE_SALE => Message::OfflineSale(cardgate_codec::OfflineSale {
            tx_seq: 0x0102_0304_0506_0708,
            card,
            amount_fen: 0x2122_2324_2526_2728,
            sale_time_ms: 0x3132_3334_3536_3738,
            mac: std::array::from_fn(|i| 0xd0 + i as u8),
        }),
        msg_type::OFFLINE_RESULT => Message::OfflineResult(cardgate_codec::OfflineResult {
            first_tx_seq: 0x0102_0304_0506_0708,
            count: 0x1112,
            status: cardgate_codec::OfflineStatus::BadMac,
            posted: 0x2122,
            duplicates: 0x3132,
            flagged: 0x4142,
            first_bad_seq: 0x5152_5354_5556_5758,
            last_tx_seq: 0x6162_6364_6566_6768,
        }),
        msg_type::ACCESS_CHECK => Message::AccessCheck(AccessCheck {
            event_seq: 0x0102_0304_0506_0708,
            card,
            door: 0x2122_2324,
            direction: Direction::Out,
            controller_time_ms: 0x3132_3334_3536_3738,
        }),
        msg_type::ACCESS_RESULT => Message::AccessResult(AccessResult {
            event_seq: 0x0102_0304_0506_0708,
            card,
            door: 0x2122_2324,
            reason: AccessReason::AntiPassback,
            cache_version: 0x4142_4344_4546_4748,
            gateway_time_ms: 0x3132_3334_3536_3738,
        }),
        msg_type::PUNCH => Message::Punch(Punch {
            event_seq: 0x0102_0304_0506_0708,
            card,
            controller_time_ms: 0x3132_3334_3536_3738,
        }),
        msg_type::PUNCH_RESULT => Message::PunchResult(PunchResult {
            event_seq: 0x0102_0304_0506_0708,
            card,
            status: PunchStatus::CardBlocked,
            gateway_time_ms: 0x3132_3334_3536_3738,
        }),
        msg_type::DOOR_CACHE_SYNC => Message::DoorCacheSync(DoorCacheSync {
            have_version: 0x4142_4344_4546_4748,
            after: Some(door_entry(0)),
            page_entries_max: 0x5152,
        }),
        msg_type::DOOR_CACHE_BULK => Message::DoorCacheBulk(
            DoorCacheBulk::new(
                DoorCachePageKind::Delta,
                DOOR_PAGE_LAST_IN_RUN | DOOR_PAGE_MORE,
                0x4142_4344_4546_4748,
                0x5152_5354_5556_5758,
                &[door_entry(1), door_entry(2), door_entry(3)],
                &[door_entry(4), door_entry(5)],
            )
            .expect("fits a bulk page")
            .with_passback(Passback::Timed, 0x6162),
        ),
        msg_type::DOOR_CACHE_PAGE => Message::DoorCachePage(
            DoorCachePage::new(
                DoorCachePageKind::Delta,
                DOOR_PAGE_LAST_IN_RUN | DOOR_PAGE_MORE,
                0x4142_4344_4546_4748,
                0x5152_5354_5556_5758,
                &[door_entry(1), door_entry(2), door_entry(3)],
                &[door_entry(4)],
            )
            .expect("a full page")
            .with_passback(Passback::Timed, 0x6162),
        ),
        msg_type::DOOR_SCHEDULE => Message::DoorSchedule(DoorSchedule {
            schedule: 0x0102_0304,
            flags: DOOR_SCHEDULE_FIRST,
            holiday_rule: HolidayRule::HolidayWindows,
            count: DOOR_SCHEDULE_WINDOWS_MAX as u8,
            windows: std::array::from_fn(|i| DoorWindow {
                day: (i % 8) as u8,
                start_min: 0x0100 + i as u16,
                end_min: 0x0200 + i as u16,
            }),
        }),
        msg_type::DOOR_HOLIDAYS => Message::DoorHolidays(DoorHolidays {
            flags: DOOR_HOLIDAYS_FIRST,
            count: DOOR_HOLIDAYS_MAX as u8,
            utc_offset_min: 0x0123,
            days: std::array::from_fn(|i| 0x4142_4300 + i as u32),
        }),
        msg_type::DOOR_CACHE_ACK => Message::DoorCacheAck(DoorCacheAck {
            version: 0x4142_4344_4546_4748,
        }),
        msg_type::DOOR_CACHE_PUSH => Message::DoorCachePush(DoorCachePush {
            version: 0x4142_4344_4546_4748,
            server_time_ms: 0x3132_3334_3536_3738,
        }),
        msg_type::DOOR_EVENTS_BATCH => Message::DoorEventsBatch(DoorEventsBatch {
            first_event_seq: 0x0102_0304_0506_0708,
            count: 0x1112,
        }),
        msg_type::DOOR_EVENT => Message::DoorEvent(DoorEvent {
            event_seq: 0x0102_0304_0506_0708,
            card,
            door: 0x2122_2324,
            direction: Direction::In,
            reason: AccessReason::Holiday,
            event_time_ms: 0x3132_3334_3536_3738,
            mac: std::array::from_fn(|i| 0xd0 + i as u8),
        }),
        msg_type::DOOR_EVENTS_RESULT => Message::DoorEventsResult(DoorEventsResult {
            first_event_seq: 0x0102_0304_0506_0708,
            count: 0x1112,
            status: DoorEventsStatus::BadMac,
            stored: 0x2122,
            duplicates: 0x3132,
            flagged: 0x4142,
            first_bad_seq: 0x5152_5354_5556_5758,
            last_event_seq: 0x6162_6364_6566_6768,
        }),
        other => panic!("no sample of type {other:#04x}"),
    }
}

/// A cache entry whose fields differ from each other and from entry `i + 1`'s.
fn door_entry(i: u8) -> cardgate_codec::DoorCacheEntry {
    let b = u32::from(i) << 4;
    cardgate_codec::DoorCacheEntry {
        card: cardgate_codec::CardNo(0x7172_7374_7576_7700 + u64::from(i)),
        schedule: 0x8182_8300 + b,
        valid_from_min: 0x9192_9300 + b,
        valid_to_min: 0xa1a2_a300 + b,
    }
}

fn entry_bytes(e: &cardgate_codec::DoorCacheEntry) -> Vec<u8> {
    let mut v = e.card.0.to_le_bytes().to_vec();
    v.extend_from_slice(&e.schedule.to_le_bytes());
    v.extend_from_slice(&e.valid_from_min.to_le_bytes());
    v.extend_from_slice(&e.valid_to_min.to_le_bytes());
    v
}

/// The little-endian bytes of the field called `name` in the doc, read from the struct
/// by name, so that the doc's offsets are checked against the encoder's output.
fn field_bytes(m: &Message, name: &str) -> Vec<u8> {
    let le = |v: u64| v.to_le_bytes().to_vec();
    let i = |v: i64| v.to_le_bytes().to_vec();
    match (m, name) {
        (Message::Hello(h), "terminal_id") => le(h.terminal_id),
        (Message::Hello(h), "terminal_nonce") => h.terminal_nonce.to_vec(),
        (Message::Hello(h), "terminal_time_ms") => i(h.terminal_time_ms),
        (Message::Challenge(c), "gateway_nonce") => c.gateway_nonce.to_vec(),
        (Message::Challenge(c), "server_time_ms") => i(c.server_time_ms),
        (Message::Proof(p), "proof") => p.proof.to_vec(),
        (Message::SignOnOk(s), "server_time_ms") => i(s.server_time_ms),
        (Message::SignOnOk(s), "last_tx_seq") => le(s.last_tx_seq),
        (Message::SignOnOk(s), "blacklist_version") => le(s.blacklist_version),
        (Message::SignOnOk(s), "heartbeat_interval_s") => s.heartbeat_interval_s.to_le_bytes().to_vec(),
        (Message::SignOnOk(s), "pipeline_depth_max") => s.pipeline_depth_max.to_le_bytes().to_vec(),
        (Message::SignOnOk(s), "flags") => s.flags.to_le_bytes().to_vec(),
        (Message::Heartbeat(h), "terminal_time_ms") => i(h.terminal_time_ms),
        (Message::Heartbeat(h), "blacklist_version") => le(h.blacklist_version),
        (Message::HeartbeatAck(h), "server_time_ms") => i(h.server_time_ms),
        (Message::HeartbeatAck(h), "blacklist_version") => le(h.blacklist_version),
        (Message::Error(e), "code") => e.code.code().to_le_bytes().to_vec(),
        (Message::Error(e), "detail") => e.detail.to_le_bytes().to_vec(),
        (Message::Purchase(p), "tx_seq") => le(p.tx_seq),
        (Message::Purchase(p), "card") => le(p.card.0),
        (Message::Purchase(p), "amount_fen") => i(p.amount_fen),
        (Message::Purchase(p), "terminal_time_ms") => i(p.terminal_time_ms),
        (Message::Reversal(r), "tx_seq") => le(r.tx_seq),
        (Message::Reversal(r), "original_tx_seq") => le(r.original_tx_seq),
        (Message::Reversal(r), "card") => le(r.card.0),
        (Message::Reversal(r), "amount_fen") => i(r.amount_fen),
        (Message::Reversal(r), "terminal_time_ms") => i(r.terminal_time_ms),
        (Message::BalanceInquiry(b), "card") => le(b.card.0),
        (Message::Approved(a), "tx_seq") => le(a.tx_seq),
        (Message::Approved(a), "tx_id") => le(a.tx_id),
        (Message::Approved(a), "card") => le(a.card.0),
        (Message::Approved(a), "amount_fen") => i(a.amount_fen),
        (Message::Approved(a), "balance_fen") => i(a.balance_fen),
        (Message::Approved(a), "time_ms") => i(a.time_ms),
        (Message::Declined(d), "tx_seq") => le(d.tx_seq),
        (Message::Declined(d), "card") => le(d.card.0),
        (Message::Declined(d), "reason") => d.reason.code().to_le_bytes().to_vec(),
        (Message::Declined(d), "balance_fen") => i(d.balance_fen),
        (Message::Declined(d), "time_ms") => i(d.time_ms),
        (Message::Balance(b), "card") => le(b.card.0),
        (Message::Balance(b), "status") => vec![b.status as u8],
        (Message::Balance(b), "balance_fen") => i(b.balance_fen),
        (Message::Balance(b), "spent_today_fen") => i(b.spent_today_fen),
        (Message::Balance(b), "daily_limit_fen") => i(b.daily_limit_fen),
        (Message::BlacklistPush(p), "version") => le(p.version),
        (Message::BlacklistPush(p), "server_time_ms") => i(p.server_time_ms),
        (Message::BlacklistSync(q), "since_version") => le(q.since_version),
        (Message::BlacklistSync(q), "after_card") => le(q.after_card),
        (Message::BlacklistPage(p), "kind") => vec![p.kind as u8],
        (Message::BlacklistPage(p), "flags") => vec![p.flags],
        (Message::BlacklistPage(p), "added") => vec![p.added],
        (Message::BlacklistPage(p), "removed") => vec![p.removed],
        (Message::BlacklistPage(p), "from_version") => le(p.from_version),
        (Message::BlacklistPage(p), "to_version") => le(p.to_version),
        (Message::BlacklistPage(p), "next_after_card") => le(p.next_after_card),
        (Message::BlacklistPage(p), "cards") => p.cards.iter().flat_map(|c| c.to_le_bytes()).collect(),
        (Message::BlacklistAck(a), "version") => le(a.version),
        (Message::OfflineLimits(l), "sale_max_fen") => i(l.sale_max_fen),
        (Message::OfflineLimits(l), "card_day_max_fen") => i(l.card_day_max_fen),
        (Message::OfflineLimits(l), "terminal_total_max_fen") => i(l.terminal_total_max_fen),
        (Message::OfflineLimits(l), "offline_minutes_max") => l.offline_minutes_max.to_le_bytes().to_vec(),
        (Message::OfflineLimits(l), "sales_max") => l.sales_max.to_le_bytes().to_vec(),
        (Message::OfflineLimits(l), "batch_max") => l.batch_max.to_le_bytes().to_vec(),
        (Message::OfflineBatch(b), "first_tx_seq") => le(b.first_tx_seq),
        (Message::OfflineBatch(b), "count") => b.count.to_le_bytes().to_vec(),
        (Message::OfflineSale(x), "tx_seq") => le(x.tx_seq),
        (Message::OfflineSale(x), "card") => le(x.card.0),
        (Message::OfflineSale(x), "amount_fen") => i(x.amount_fen),
        (Message::OfflineSale(x), "sale_time_ms") => i(x.sale_time_ms),
        (Message::OfflineSale(x), "mac") => x.mac.to_vec(),
        (Message::OfflineResult(r), "first_tx_seq") => le(r.first_tx_seq),
        (Message::OfflineResult(r), "count") => r.count.to_le_bytes().to_vec(),
        (Message::OfflineResult(r), "status") => vec![r.status as u8],
        (Message::OfflineResult(r), "posted") => r.posted.to_le_bytes().to_vec(),
        (Message::OfflineResult(r), "duplicates") => r.duplicates.to_le_bytes().to_vec(),
        (Message::OfflineResult(r), "flagged") => r.flagged.to_le_bytes().to_vec(),
        (Message::OfflineResult(r), "first_bad_seq") => le(r.first_bad_seq),
        (Message::OfflineResult(r), "last_tx_seq") => le(r.last_tx_seq),
        (Message::AccessCheck(a), "event_seq") => le(a.event_seq),
        (Message::AccessCheck(a), "card") => le(a.card.0),
        (Message::AccessCheck(a), "door") => a.door.to_le_bytes().to_vec(),
        (Message::AccessCheck(a), "direction") => vec![a.direction as u8],
        (Message::AccessCheck(a), "controller_time_ms") => i(a.controller_time_ms),
        (Message::AccessResult(a), "event_seq") => le(a.event_seq),
        (Message::AccessResult(a), "card") => le(a.card.0),
        (Message::AccessResult(a), "door") => a.door.to_le_bytes().to_vec(),
        (Message::AccessResult(a), "granted") => vec![u8::from(a.granted())],
        (Message::AccessResult(a), "reason") => a.reason.code().to_le_bytes().to_vec(),
        (Message::AccessResult(a), "cache_version") => le(a.cache_version),
        (Message::AccessResult(a), "gateway_time_ms") => i(a.gateway_time_ms),
        (Message::Punch(p), "event_seq") => le(p.event_seq),
        (Message::Punch(p), "card") => le(p.card.0),
        (Message::Punch(p), "controller_time_ms") => i(p.controller_time_ms),
        (Message::PunchResult(p), "event_seq") => le(p.event_seq),
        (Message::PunchResult(p), "card") => le(p.card.0),
        (Message::PunchResult(p), "status") => vec![p.status as u8],
        (Message::PunchResult(p), "gateway_time_ms") => i(p.gateway_time_ms),
        (Message::DoorCacheSync(q), "have_version") => le(q.have_version),
        (Message::DoorCacheSync(q), "after") => entry_bytes(&q.after.unwrap_or_default()),
        (Message::DoorCacheSync(q), "page_entries_max") => q.page_entries_max.to_le_bytes().to_vec(),
        (Message::DoorCacheBulk(p), "kind") => vec![p.kind as u8],
        (Message::DoorCacheBulk(p), "flags") => vec![p.flags],
        (Message::DoorCacheBulk(p), "passback") => vec![p.passback as u8],
        (Message::DoorCacheBulk(p), "added") => p.added().to_le_bytes().to_vec(),
        (Message::DoorCacheBulk(p), "removed") => p.removed().to_le_bytes().to_vec(),
        (Message::DoorCacheBulk(p), "passback_min") => p.passback_min.to_le_bytes().to_vec(),
        (Message::DoorCacheBulk(p), "from_version") => le(p.from_version),
        (Message::DoorCacheBulk(p), "to_version") => le(p.to_version),
        (Message::DoorCacheBulk(p), "entries") => p
            .added_entries()
            .chain(p.removed_entries())
            .flat_map(|e| entry_bytes(&e))
            .collect(),
        (Message::DoorCachePage(p), "kind") => vec![p.kind as u8],
        (Message::DoorCachePage(p), "flags") => vec![p.flags],
        (Message::DoorCachePage(p), "added") => vec![p.added],
        (Message::DoorCachePage(p), "removed") => vec![p.removed],
        (Message::DoorCachePage(p), "passback") => vec![p.passback as u8],
        (Message::DoorCachePage(p), "passback_min") => p.passback_min.to_le_bytes().to_vec(),
        (Message::DoorCachePage(p), "from_version") => le(p.from_version),
        (Message::DoorCachePage(p), "to_version") => le(p.to_version),
        (Message::DoorCachePage(p), "entries") => {
            let mut v: Vec<u8> = p
                .added_entries()
                .chain(p.removed_entries())
                .flat_map(|e| entry_bytes(&e))
                .collect();
            v.resize(20 * cardgate_codec::DOOR_CACHE_PAGE_ENTRIES_MAX, 0);
            v
        }
        (Message::DoorSchedule(s), "schedule") => s.schedule.to_le_bytes().to_vec(),
        (Message::DoorSchedule(s), "flags") => vec![s.flags],
        (Message::DoorSchedule(s), "holiday_rule") => vec![s.holiday_rule as u8],
        (Message::DoorSchedule(s), "count") => vec![s.count],
        (Message::DoorSchedule(s), "windows") => s
            .windows
            .iter()
            .flat_map(|w| {
                let mut v = vec![w.day, 0];
                v.extend_from_slice(&w.start_min.to_le_bytes());
                v.extend_from_slice(&w.end_min.to_le_bytes());
                v
            })
            .collect(),
        (Message::DoorHolidays(h), "flags") => vec![h.flags],
        (Message::DoorHolidays(h), "count") => vec![h.count],
        (Message::DoorHolidays(h), "utc_offset_min") => h.utc_offset_min.to_le_bytes().to_vec(),
        (Message::DoorHolidays(h), "days") => h.days.iter().flat_map(|d| d.to_le_bytes()).collect(),
        (Message::DoorCacheAck(a), "version") => le(a.version),
        (Message::DoorCachePush(p), "version") => le(p.version),
        (Message::DoorCachePush(p), "server_time_ms") => i(p.server_time_ms),
        (Message::DoorEventsBatch(b), "first_event_seq") => le(b.first_event_seq),
        (Message::DoorEventsBatch(b), "count") => b.count.to_le_bytes().to_vec(),
        (Message::DoorEvent(e), "event_seq") => le(e.event_seq),
        (Message::DoorEvent(e), "card") => le(e.card.0),
        (Message::DoorEvent(e), "door") => e.door.to_le_bytes().to_vec(),
        (Message::DoorEvent(e), "direction") => vec![e.direction as u8],
        (Message::DoorEvent(e), "granted") => vec![u8::from(e.granted())],
        (Message::DoorEvent(e), "reason") => e.reason.code().to_le_bytes().to_vec(),
        (Message::DoorEvent(e), "event_time_ms") => i(e.event_time_ms),
        (Message::DoorEvent(e), "mac") => e.mac.to_vec(),
        (Message::DoorEventsResult(r), "first_event_seq") => le(r.first_event_seq),
        (Message::DoorEventsResult(r), "count") => r.count.to_le_bytes().to_vec(),
        (Message::DoorEventsResult(r), "status") => vec![r.status as u8],
        (Message::DoorEventsResult(r), "stored") => r.stored.to_le_bytes().to_vec(),
        (Message::DoorEventsResult(r), "duplicates") => r.duplicates.to_le_bytes().to_vec(),
        (Message::DoorEventsResult(r), "flagged") => r.flagged.to_le_bytes().to_vec(),
        (Message::DoorEventsResult(r), "first_bad_seq") => le(r.first_bad_seq),
        (Message::DoorEventsResult(r), "last_event_seq") => le(r.last_event_seq),
        (m, name) => panic!("{m:?} has no field `{name}`"),
    }
}

#[test]
fn every_field_table_matches_the_encoder() {
    let mut documented = BTreeSet::new();
    let lines: Vec<&str> = DOC.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        // "### 6.8 PURCHASE (0x10, T→G, 32 bytes, MAC)"
        let Some(rest) = line.strip_prefix("### 6.") else {
            continue;
        };
        let (_, after) = rest.split_once(" (").expect("a message heading names its type");
        let t = parse_u8_hex(after.split(',').next().expect("type first"));
        assert!(documented.insert(t), "type {t:#04x} has two sections");
        let m = sample(t);
        let mut body = Vec::new();
        m.encode_body(&mut body);
        let length = match Message::body_shape(t).expect("a defined type") {
            BodyLen::Fixed(len) => {
                assert_eq!(len, body.len());
                len.to_string()
            }
            BodyLen::Items { head, item, .. } => format!("{head} + {item} × n"),
        };
        assert!(
            line.contains(&format!(", {length} bytes,")),
            "line {}: body length",
            n + 1
        );

        let rows: Vec<Vec<String>> = lines[n + 1..]
            .iter()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
            .collect();
        let mut at = 0;
        for r in &rows {
            // "20 × n": the rest of the body, whole entries (the last field of a bulk page).
            let size = match r[1].strip_suffix(" × n") {
                Some(item) => {
                    let item: usize = item.parse().unwrap();
                    assert_eq!((body.len() - at) % item, 0, "type {t:#04x}: whole items");
                    body.len() - at
                }
                None => r[1].parse::<usize>().unwrap(),
            };
            let (offset, field) = (r[0].parse::<usize>().unwrap(), &r[3]);
            assert_eq!(
                offset, at,
                "type {t:#04x} field `{field}`: offsets must follow each other"
            );
            let got = &body[offset..offset + size];
            let want = if field == "reserved" {
                vec![0; size]
            } else {
                field_bytes(&m, field)
            };
            assert_eq!(got, &want[..], "type {t:#04x} field `{field}` at offset {offset}");
            at += size;
        }
        assert_eq!(at, body.len(), "type {t:#04x}: the fields must cover the body");
    }
    let defined: BTreeSet<u8> = (0..=u8::MAX).filter(|t| Message::body_shape(*t).is_some()).collect();
    assert_eq!(documented, defined, "every message type has a field table");
}

#[test]
fn the_offline_status_table_matches_the_code() {
    let got: Vec<(u8, String)> = checked_table("offline-status")
        .iter()
        .map(|r| (r[0].parse().expect("a code"), r[1].clone()))
        .collect();
    let want: Vec<(u8, String)> = cardgate_codec::OfflineStatus::ALL
        .iter()
        .map(|s| (*s as u8, s.as_str().to_string()))
        .collect();
    assert_eq!(got, want);
}

/// A table of `(code, name)` rows after `<!-- check: NAME -->`, each row saying more.
fn code_table(name: &str, columns: usize) -> Vec<(u16, String)> {
    let rows = checked_table(name);
    assert!(
        rows.iter().all(|r| r.len() == columns && r[columns - 1].len() > 3),
        "every row of `{name}` has {columns} columns and says what it means"
    );
    rows.iter()
        .map(|r| (r[0].parse().expect("a code"), r[1].clone()))
        .collect()
}

#[test]
fn the_door_code_tables_match_the_code() {
    use cardgate_codec::{AccessReason, DoorEventsStatus, PunchStatus};
    let want: Vec<(u16, String)> = AccessReason::ALL
        .iter()
        .map(|r| (r.code(), r.as_str().to_string()))
        .collect();
    assert_eq!(code_table("access-reasons", 4), want);
    let want: Vec<(u16, String)> = PunchStatus::ALL
        .iter()
        .map(|s| (u16::from(*s as u8), s.as_str().to_string()))
        .collect();
    assert_eq!(code_table("punch-status", 3), want);
    let want: Vec<(u16, String)> = DoorEventsStatus::ALL
        .iter()
        .map(|s| (u16::from(*s as u8), s.as_str().to_string()))
        .collect();
    assert_eq!(code_table("door-events-status", 3), want);
}
