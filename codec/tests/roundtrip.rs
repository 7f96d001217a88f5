//! Property tests: every message with arbitrary field values survives encode → decode,
//! with and without a session, in both directions and however the stream is split; and
//! arbitrary bytes never make the decoder panic or accept a frame it cannot account for.

mod common;

use bytes::BytesMut;
use cardgate_codec::crypto::SignOnInput;
use cardgate_codec::*;
use common::*;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn card() -> impl Strategy<Value = CardNo> {
    any::<u64>().prop_map(CardNo)
}

fn decline_reason() -> impl Strategy<Value = DeclineReason> {
    proptest::sample::select(DeclineReason::ALL.to_vec())
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(ErrorCode::ALL.to_vec())
}

fn access_reason() -> impl Strategy<Value = AccessReason> {
    proptest::sample::select(AccessReason::ALL.to_vec())
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::In), Just(Direction::Out)]
}

fn door_entry() -> impl Strategy<Value = DoorCacheEntry> {
    (card(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(card, schedule, valid_from_min, valid_to_min)| {
        DoorCacheEntry {
            card,
            schedule,
            valid_from_min,
            valid_to_min,
        }
    })
}

fn door_window() -> impl Strategy<Value = DoorWindow> {
    (0u8..=DOOR_WINDOW_HOLIDAY, 0u16..1440, 1u16..=1440).prop_map(|(day, start_min, end_min)| DoorWindow {
        day,
        start_min,
        end_min,
    })
}

/// The fields of a door cache page of up to `max` entries (a full page only adds).
#[derive(Clone, Debug)]
struct PageFields {
    kind: DoorCachePageKind,
    flags: u8,
    from_version: u64,
    to_version: u64,
    added: Vec<DoorCacheEntry>,
    removed: Vec<DoorCacheEntry>,
    passback: Passback,
    passback_min: u16,
}

fn door_page(max: usize) -> impl Strategy<Value = PageFields> {
    (
        any::<bool>(),
        0u8..8,
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(door_entry(), 0..=max),
        0..=max,
        (0u8..3, any::<u16>()),
    )
        .prop_map(
            move |(full, flags, from_version, to_version, mut added, split, (passback, passback_min))| {
                let (kind, split) = if full {
                    (DoorCachePageKind::Full, added.len())
                } else {
                    (DoorCachePageKind::Delta, split.min(added.len()))
                };
                let removed = added.split_off(split);
                PageFields {
                    kind,
                    flags,
                    from_version,
                    to_version,
                    added,
                    removed,
                    passback: Passback::from_code(passback).expect("0..3"),
                    passback_min,
                }
            },
        )
}

/// The door access and attendance messages, every field arbitrary within its domain.
fn door_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (1u64.., card(), any::<u32>(), direction(), any::<i64>()).prop_map(
            |(event_seq, card, door, direction, controller_time_ms)| Message::AccessCheck(AccessCheck {
                event_seq,
                card,
                door,
                direction,
                controller_time_ms,
            })
        ),
        (
            any::<u64>(),
            card(),
            any::<u32>(),
            access_reason(),
            any::<u64>(),
            any::<i64>()
        )
            .prop_map(
                |(event_seq, card, door, reason, cache_version, gateway_time_ms)| Message::AccessResult(AccessResult {
                    event_seq,
                    card,
                    door,
                    reason,
                    cache_version,
                    gateway_time_ms,
                })
            ),
        (1u64.., card(), any::<i64>()).prop_map(|(event_seq, card, controller_time_ms)| Message::Punch(Punch {
            event_seq,
            card,
            controller_time_ms,
        })),
        (
            any::<u64>(),
            card(),
            proptest::sample::select(PunchStatus::ALL.to_vec()),
            any::<i64>()
        )
            .prop_map(
                |(event_seq, card, status, gateway_time_ms)| Message::PunchResult(PunchResult {
                    event_seq,
                    card,
                    status,
                    gateway_time_ms,
                })
            ),
        (
            any::<u64>(),
            proptest::option::of(door_entry().prop_filter("card 0 means none", |e| e.card.0 != 0)),
            any::<u16>(),
        )
            .prop_map(
                |(have_version, after, page_entries_max)| Message::DoorCacheSync(DoorCacheSync {
                    have_version,
                    after,
                    page_entries_max
                })
            ),
        door_page(DOOR_CACHE_BULK_ENTRIES_MAX).prop_map(|p| {
            let page = DoorCacheBulk::new(p.kind, p.flags, p.from_version, p.to_version, &p.added, &p.removed)
                .expect("fits a bulk page")
                .with_passback(p.passback, p.passback_min);
            assert_eq!(page.added_entries().collect::<Vec<_>>(), p.added);
            assert_eq!(page.removed_entries().collect::<Vec<_>>(), p.removed);
            Message::DoorCacheBulk(page)
        }),
        door_page(DOOR_CACHE_PAGE_ENTRIES_MAX).prop_map(|p| {
            Message::DoorCachePage(
                DoorCachePage::new(p.kind, p.flags, p.from_version, p.to_version, &p.added, &p.removed)
                    .expect("fits a page")
                    .with_passback(p.passback, p.passback_min),
            )
        }),
        (
            1u32..,
            0u8..2,
            any::<bool>(),
            proptest::collection::vec(door_window(), 0..=DOOR_SCHEDULE_WINDOWS_MAX)
        )
            .prop_map(|(schedule, flags, holiday, ws)| {
                let mut windows = [DoorWindow::default(); DOOR_SCHEDULE_WINDOWS_MAX];
                windows[..ws.len()].copy_from_slice(&ws);
                Message::DoorSchedule(DoorSchedule {
                    schedule,
                    flags,
                    holiday_rule: if holiday {
                        HolidayRule::HolidayWindows
                    } else {
                        HolidayRule::Ignore
                    },
                    count: ws.len() as u8,
                    windows,
                })
            }),
        (
            0u8..2,
            -840i16..=840,
            proptest::collection::vec(any::<u32>(), 0..=DOOR_HOLIDAYS_MAX)
        )
            .prop_map(|(flags, utc_offset_min, ds)| {
                let mut days = [0u32; DOOR_HOLIDAYS_MAX];
                days[..ds.len()].copy_from_slice(&ds);
                Message::DoorHolidays(DoorHolidays {
                    flags,
                    count: ds.len() as u8,
                    utc_offset_min,
                    days,
                })
            }),
        any::<u64>().prop_map(|version| Message::DoorCacheAck(DoorCacheAck { version })),
        (any::<u64>(), any::<i64>()).prop_map(|(version, server_time_ms)| Message::DoorCachePush(DoorCachePush {
            version,
            server_time_ms
        })),
        (any::<u64>(), any::<u16>())
            .prop_map(|(first_event_seq, count)| Message::DoorEventsBatch(DoorEventsBatch { first_event_seq, count })),
        (
            any::<u64>(),
            card(),
            any::<u32>(),
            direction(),
            access_reason(),
            any::<i64>(),
            any::<[u8; 16]>()
        )
            .prop_map(|(event_seq, card, door, direction, reason, event_time_ms, mac)| {
                Message::DoorEvent(DoorEvent {
                    event_seq,
                    card,
                    door,
                    direction,
                    reason,
                    event_time_ms,
                    mac,
                })
            }),
        (
            any::<u64>(),
            any::<u16>(),
            proptest::sample::select(DoorEventsStatus::ALL.to_vec()),
            any::<[u16; 3]>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(first_event_seq, count, status, [stored, duplicates, flagged], first_bad_seq, last_event_seq)| {
                    Message::DoorEventsResult(DoorEventsResult {
                        first_event_seq,
                        count,
                        status,
                        stored,
                        duplicates,
                        flagged,
                        first_bad_seq,
                        last_event_seq,
                    })
                }
            ),
    ]
}

fn card_status() -> impl Strategy<Value = CardStatusCode> {
    (0u8..=6).prop_map(|c| CardStatusCode::from_code(c).expect("0..=6 are the card states"))
}

/// Any message of protocol version 1, every field arbitrary within its type.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![pos_message(), door_message()]
}

/// The sign-on, money and control messages.
fn pos_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), any::<[u8; 16]>(), any::<i64>()).prop_map(|(terminal_id, terminal_nonce, terminal_time_ms)| {
            Message::Hello(Hello {
                terminal_id,
                terminal_nonce,
                terminal_time_ms,
            })
        }),
        (any::<[u8; 16]>(), any::<i64>()).prop_map(|(gateway_nonce, server_time_ms)| Message::Challenge(Challenge {
            gateway_nonce,
            server_time_ms
        })),
        any::<[u8; 32]>().prop_map(|proof| Message::Proof(Proof { proof })),
        (
            any::<i64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u16>(),
            any::<u16>(),
            any::<u32>()
        )
            .prop_map(
                |(server_time_ms, last_tx_seq, blacklist_version, heartbeat_interval_s, pipeline_depth_max, flags)| {
                    Message::SignOnOk(SignOnOk {
                        server_time_ms,
                        last_tx_seq,
                        blacklist_version,
                        heartbeat_interval_s,
                        pipeline_depth_max,
                        flags,
                    })
                }
            ),
        (any::<i64>(), any::<u64>()).prop_map(|(terminal_time_ms, blacklist_version)| Message::Heartbeat(Heartbeat {
            terminal_time_ms,
            blacklist_version
        })),
        (any::<i64>(), any::<u64>()).prop_map(|(server_time_ms, blacklist_version)| Message::HeartbeatAck(
            HeartbeatAck {
                server_time_ms,
                blacklist_version
            }
        )),
        (error_code(), any::<u32>()).prop_map(|(code, detail)| Message::Error(ErrorFrame { code, detail })),
        (any::<u64>(), card(), any::<i64>(), any::<i64>()).prop_map(|(tx_seq, card, amount_fen, terminal_time_ms)| {
            Message::Purchase(Purchase {
                tx_seq,
                card,
                amount_fen,
                terminal_time_ms,
            })
        }),
        (any::<u64>(), any::<u64>(), card(), any::<i64>(), any::<i64>()).prop_map(
            |(tx_seq, original_tx_seq, card, amount_fen, terminal_time_ms)| Message::Reversal(Reversal {
                tx_seq,
                original_tx_seq,
                card,
                amount_fen,
                terminal_time_ms,
            })
        ),
        card().prop_map(|card| Message::BalanceInquiry(BalanceInquiry { card })),
        (
            any::<u64>(),
            any::<u64>(),
            card(),
            any::<i64>(),
            any::<i64>(),
            any::<i64>()
        )
            .prop_map(
                |(tx_seq, tx_id, card, amount_fen, balance_fen, time_ms)| Message::Approved(Approved {
                    tx_seq,
                    tx_id,
                    card,
                    amount_fen,
                    balance_fen,
                    time_ms,
                })
            ),
        (any::<u64>(), card(), decline_reason(), any::<i64>(), any::<i64>()).prop_map(
            |(tx_seq, card, reason, balance_fen, time_ms)| Message::Declined(Declined {
                tx_seq,
                card,
                reason,
                balance_fen,
                time_ms,
            })
        ),
        (card(), card_status(), any::<i64>(), any::<i64>(), any::<i64>()).prop_map(
            |(card, status, balance_fen, spent_today_fen, daily_limit_fen)| Message::Balance(Balance {
                card,
                status,
                balance_fen,
                spent_today_fen,
                daily_limit_fen,
            })
        ),
    ]
}

fn sign_on_input() -> impl Strategy<Value = SignOnInput> {
    (any::<u64>(), any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(terminal_id, terminal_nonce, gateway_nonce)| {
        SignOnInput {
            terminal_id,
            terminal_nonce,
            gateway_nonce,
        }
    })
}

/// Decodes everything in `bytes`, fed to the decoder in pieces ending at `cuts`.
fn decode_all(codec: &mut TerminalCodec, bytes: &[u8], cuts: &[usize]) -> Vec<cardgate_codec::codec::Frame> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    ends.push(bytes.len());
    ends.sort_unstable();
    for end in ends {
        buf.extend_from_slice(&bytes[fed..end.max(fed)]);
        fed = fed.max(end);
        while let Some(f) = codec.decode(&mut buf).expect("a valid stream decodes") {
            out.push(f);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips_in_a_session_both_ways(
        input in sign_on_input(),
        secret in any::<[u8; 32]>(),
        messages in proptest::collection::vec((any::<u32>(), message()), 1..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let secret = TerminalSecret(secret);
        for (sender, receiver) in [(Side::Terminal, Side::Gateway), (Side::Gateway, Side::Terminal)] {
            // A gateway refuses DOOR_CACHE_BULK from its header (it only sends them).
            let messages: Vec<&(u32, Message)> = messages
                .iter()
                .filter(|(_, m)| receiver == Side::Terminal || !matches!(m, Message::DoorCacheBulk(_)))
                .collect();
            let mut tx = TerminalCodec::new(sender);
            let mut rx = TerminalCodec::new(receiver);
            tx.install_session(input.session_keys(&secret));
            rx.install_session(input.session_keys(&secret));
            let mut bytes = BytesMut::new();
            for (id, m) in &messages {
                tokio_util::codec::Encoder::encode(&mut tx, (*id, m.clone()), &mut bytes).unwrap();
            }
            let got = decode_all(&mut rx, &bytes, &cuts);
            prop_assert_eq!(got.len(), messages.len());
            for (i, (f, (id, m))) in got.iter().zip(messages.iter().copied()).enumerate() {
                prop_assert_eq!(f.request_id, *id);
                prop_assert_eq!(f.counter, i as u64 + 1);
                prop_assert_eq!(&f.message, m);
            }
        }
    }

    #[test]
    fn every_message_round_trips_without_a_session_or_is_refused_for_lacking_one(
        id in any::<u32>(),
        m in message(),
    ) {
        let mut tx = TerminalCodec::new(Side::Terminal);
        let bytes = encode(&mut tx, id, m.clone());
        prop_assert_eq!(bytes.len(), 4 + HEADER_LEN + m.encoded_body_len());
        let r = TerminalCodec::new(Side::Gateway).decode(&mut BytesMut::from(&bytes[..]));
        if Side::Gateway.accepts_unauthenticated(m.msg_type()) {
            let f = r.unwrap().unwrap();
            prop_assert_eq!((f.request_id, f.counter, f.message), (id, 0, m));
        } else {
            let refused = matches!(r, Err(CodecError::Unauthenticated { msg_type }) if msg_type == m.msg_type());
            prop_assert!(refused);
        }
    }

    #[test]
    fn a_body_decodes_and_re_encodes_to_the_same_bytes(m in message()) {
        let mut body = Vec::new();
        m.encode_body(&mut body);
        prop_assert_eq!(body.len(), m.encoded_body_len());
        prop_assert!(Message::body_shape(m.msg_type()).unwrap().accepts(body.len()));
        let back = Message::decode_body(m.msg_type(), &body).unwrap();
        prop_assert_eq!(&back, &m);
        let mut again = Vec::new();
        back.encode_body(&mut again);
        prop_assert_eq!(again, body);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_accepted_frames_account_for_their_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        session in any::<bool>(),
    ) {
        let mut codec = TerminalCodec::new(Side::Gateway);
        if session {
            codec.install_session(input(1, 2).session_keys(&secret()));
        }
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    // An accepted frame is exactly its length prefix long, and (having no
                    // session or no key) is one of the frames allowed in the clear.
                    let len = u32::from_le_bytes(bytes[bytes.len() - before..][..4].try_into().unwrap()) as usize;
                    prop_assert_eq!(before - buf.len(), 4 + len);
                    prop_assert!(Side::Gateway.accepts_unauthenticated(f.message.msg_type()));
                }
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before);
                    break;
                }
                Err(_) => break,
            }
        }
    }

    #[test]
    fn random_mutations_of_a_macd_frame_are_never_accepted_as_something_else(
        m in message(),
        at in any::<usize>(),
        xor in 1u8..,
    ) {
        let input = input(1, 2);
        let (mut t, _) = signed_on_pair(&input);
        let good = encode(&mut t, 1, m).to_vec();
        let mut bad = good.clone();
        let i = at % bad.len();
        bad[i] ^= xor;
        let (_, mut g) = signed_on_pair(&input);
        let r = g.decode(&mut BytesMut::from(&bad[..]));
        let accepted = matches!(r, Ok(Some(_)));
        prop_assert!(!accepted, "byte {} ^ {:#04x} was accepted", i, xor);
    }
}

/// A frame that is nearly valid: right length prefix and a correct MAC (usually), with
/// the version, type, flags, counter and body chosen freely but mostly right, so that
/// many frames get past the MAC to the counter and body checks.
fn nearly_valid_frame() -> impl Strategy<Value = (RawFrame, bool)> {
    let types = vec![
        0x01u8, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0f, 0x10, 0x11, 0x12, 0x20, 0x21, 0x22, 0x40, 0x41, 0x42, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4d,
    ];
    (
        prop_oneof![4 => Just(PROTOCOL_VERSION), 1 => any::<u8>()],
        prop_oneof![4 => proptest::sample::select(types), 1 => any::<u8>()],
        prop_oneof![4 => Just(0u16), 1 => any::<u16>()],
        any::<u32>(),
        prop_oneof![4 => 0u64..8, 1 => any::<u64>()],
        prop_oneof![9 => Just(true), 1 => Just(false)],
    )
        .prop_flat_map(|(version, msg_type, flags, request_id, counter, with_mac)| {
            // A bulk page's head and three entries; a random count rarely matches them.
            let exact = Message::body_shape(msg_type).map_or(8, |s| match s {
                BodyLen::Fixed(n) => n,
                BodyLen::Items { head, item, .. } => head + 3 * item,
            });
            let body = prop_oneof![
                4 => proptest::collection::vec(any::<u8>(), exact),
                1 => proptest::collection::vec(any::<u8>(), 0..112),
            ];
            body.prop_map(move |body| {
                (
                    RawFrame {
                        version,
                        msg_type,
                        flags,
                        request_id,
                        counter,
                        body,
                    },
                    with_mac,
                )
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn nearly_valid_macd_frames_are_accepted_only_by_the_rules(
        frames in proptest::collection::vec(nearly_valid_frame(), 1..8),
    ) {
        let input = input(1, 2);
        let (k_up, _) = raw_keys(&input, &secret());
        let (_, mut g) = signed_on_pair(&input);
        let mut stream = Vec::new();
        for (raw, with_mac) in &frames {
            stream.extend_from_slice(&raw.bytes(with_mac.then_some(&k_up)));
        }
        let mut buf = BytesMut::from(&stream[..]);
        let mut last = 0;
        for (raw, with_mac) in &frames {
            let f = match g.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) | Err(_) => break,
            };
            // Whatever was accepted is exactly what was sent, under the rules.
            prop_assert_eq!(raw.version, PROTOCOL_VERSION);
            prop_assert_eq!(raw.msg_type, f.message.msg_type());
            prop_assert_eq!(raw.request_id, f.request_id);
            prop_assert_eq!(raw.flags & !cardgate_codec::frame::FLAG_MAC, 0);
            let mut body = Vec::new();
            f.message.encode_body(&mut body);
            prop_assert_eq!(body.len(), raw.body.len());
            if *with_mac {
                prop_assert!(raw.counter > last);
                last = raw.counter;
            } else {
                let refused_sign_on = matches!(f.message, Message::Error(_));
                prop_assert!(refused_sign_on && last == 0);
            }
        }
    }
}
