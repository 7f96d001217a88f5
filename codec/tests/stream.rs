//! The codec over a byte stream, fed the hard way: one byte per read, odd-sized reads
//! that split frames anywhere, several frames in one read, EOF in every position, and a
//! hostile length prefix. Everything goes through tokio-util's `FramedRead`, as on a real
//! connection.

mod common;

use cardgate_codec::codec::Frame;
use cardgate_codec::crypto::SignOnInput;
use cardgate_codec::{Challenge, CodecError, FRAME_LEN_MAX, Hello, Message, Proof, Side, TerminalCodec};
use common::*;
use futures::{FutureExt, StreamExt};
use tokio_util::codec::FramedRead;

/// What a terminal sends on a fresh connection: the sign-on frames in the clear, then
/// MACed requests, as one byte stream. Returns the stream, the frames it holds and the
/// offset at which each frame ends.
fn terminal_stream(input: &SignOnInput) -> (Vec<u8>, Vec<(u32, Message)>, Vec<usize>) {
    let mut t = TerminalCodec::new(Side::Terminal);
    let hello = Message::Hello(Hello {
        terminal_id: input.terminal_id,
        terminal_nonce: input.terminal_nonce,
        terminal_time_ms: 1_772_424_300_000,
    });
    let proof = Message::Proof(Proof {
        proof: input.proof(&secret()),
    });
    let mut sent = vec![(1, hello.clone()), (2, proof.clone())];
    let mut bytes = encode(&mut t, 1, hello).to_vec();
    let mut ends = vec![bytes.len()];
    bytes.extend_from_slice(&encode(&mut t, 2, proof));
    ends.push(bytes.len());
    t.install_session(input.session_keys(&secret()));
    for (i, m) in [purchase(1), heartbeat(), purchase(2), purchase(3)]
        .into_iter()
        .enumerate()
    {
        let id = 3 + i as u32;
        bytes.extend_from_slice(&encode(&mut t, id, m.clone()));
        sent.push((id, m));
        ends.push(bytes.len());
    }
    (bytes, sent, ends)
}

/// Reads every frame as the gateway does, installing the session after PROOF (when the
/// next frames may already sit in the read buffer). Returns the frames and how the
/// stream ended.
async fn read_as_gateway(reader: ChunkedRead, input: &SignOnInput) -> (Vec<Frame>, Option<CodecError>) {
    let mut framed = FramedRead::new(reader, TerminalCodec::new(Side::Gateway));
    let mut frames = Vec::new();
    loop {
        match framed.next().await {
            None => return (frames, None),
            Some(Err(e)) => return (frames, Some(e)),
            Some(Ok(f)) => {
                if let Message::Proof(_) = f.message {
                    framed.decoder_mut().install_session(input.session_keys(&secret()));
                }
                frames.push(f);
            }
        }
    }
}

fn assert_frames(got: &[Frame], sent: &[(u32, Message)]) {
    let got: Vec<(u32, Message)> = got.iter().map(|f| (f.request_id, f.message.clone())).collect();
    assert_eq!(got, sent);
}

#[tokio::test]
async fn one_byte_per_read() {
    let input = input(1, 2);
    let (bytes, sent, _) = terminal_stream(&input);
    let (got, end) = read_as_gateway(ChunkedRead::split(&bytes, &[1], Then::Eof), &input).await;
    assert!(end.is_none(), "{end:?}");
    assert_frames(&got, &sent);
    // Counters: the two sign-on frames carry 0, the MACed ones 1, 2, 3, 4.
    let counters: Vec<u64> = got.iter().map(|f| f.counter).collect();
    assert_eq!(counters, [0, 0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn odd_sized_reads_split_frames_anywhere() {
    let input = input(1, 2);
    let (bytes, sent, _) = terminal_stream(&input);
    for sizes in [
        &[2][..],
        &[3],
        &[5, 7],
        &[13, 1, 64],
        &[47],
        &[63, 2],
        &[100, 3, 17],
        &[bytes.len()],
    ] {
        let (got, end) = read_as_gateway(ChunkedRead::split(&bytes, sizes, Then::Eof), &input).await;
        assert!(end.is_none(), "reads of {sizes:?}: {end:?}");
        assert_frames(&got, &sent);
    }
}

#[tokio::test]
async fn every_split_point_of_every_frame_pair() {
    // Two reads, split at every byte: covers splits inside the prefix, the header, the
    // body and the MAC of every frame, and frames that arrive together.
    let input = input(1, 2);
    let (bytes, sent, _) = terminal_stream(&input);
    for at in 1..bytes.len() {
        let reader = ChunkedRead::new([bytes[..at].to_vec(), bytes[at..].to_vec()], Then::Eof);
        let (got, end) = read_as_gateway(reader, &input).await;
        assert!(end.is_none(), "split at {at}: {end:?}");
        assert_frames(&got, &sent);
    }
}

#[tokio::test]
async fn two_frames_in_one_read_including_the_first_macd_one() {
    // PROOF and the first MACed PURCHASE in one read: the session is installed after
    // PROOF is returned and before the PURCHASE already in the buffer is decoded.
    let input = input(1, 2);
    let (bytes, sent, ends) = terminal_stream(&input);
    let reader = ChunkedRead::new(
        [
            bytes[..ends[0]].to_vec(),
            bytes[ends[0]..ends[2]].to_vec(),
            bytes[ends[2]..].to_vec(),
        ],
        Then::Eof,
    );
    let (got, end) = read_as_gateway(reader, &input).await;
    assert!(end.is_none(), "{end:?}");
    assert_frames(&got, &sent);
}

#[tokio::test]
async fn eof_between_frames_is_a_clean_close() {
    let input = input(1, 2);
    let (bytes, sent, ends) = terminal_stream(&input);
    // Cut after each frame.
    for (frames, cut) in ends.iter().enumerate() {
        let (got, end) = read_as_gateway(ChunkedRead::split(&bytes[..*cut], &[5], Then::Eof), &input).await;
        assert!(end.is_none(), "cut at {cut}: {end:?}");
        assert_frames(&got, &sent[..=frames]);
    }
    // A connection that closes before sending anything is clean too.
    let (got, end) = read_as_gateway(ChunkedRead::new([], Then::Eof), &input).await;
    assert!(got.is_empty() && end.is_none());
}

#[tokio::test]
async fn eof_inside_a_frame_is_an_error() {
    let input = input(1, 2);
    let (bytes, sent, ends) = terminal_stream(&input);
    assert_eq!(ends.last(), Some(&bytes.len()));
    for cut in 1..bytes.len() {
        if ends.contains(&cut) {
            continue;
        }
        let (got, end) = read_as_gateway(ChunkedRead::split(&bytes[..cut], &[9], Then::Eof), &input).await;
        let complete = ends.iter().filter(|e| **e <= cut).count();
        assert_frames(&got, &sent[..complete]);
        match end {
            Some(CodecError::Io(e)) => assert_eq!(e.to_string(), "bytes remaining on stream", "cut at {cut}"),
            other => panic!("cut at {cut}: expected an i/o error, got {other:?}"),
        }
    }
}

#[test]
fn a_prefix_claiming_a_gibibyte_fails_at_once_without_buffering() {
    // Only the 4-byte prefix arrives and the peer then goes quiet: the very first poll
    // must fail, not wait for (or reserve room for) the rest.
    let reader = ChunkedRead::new([(1u32 << 30).to_le_bytes().to_vec()], Then::Stall);
    let mut framed = FramedRead::new(reader, TerminalCodec::new(Side::Gateway));
    match framed.next().now_or_never() {
        Some(Some(Err(CodecError::FrameTooLarge { len }))) => assert_eq!(len, 1 << 30),
        other => panic!("expected FrameTooLarge at once, got {other:?}"),
    }
    assert!(
        framed.read_buffer().capacity() <= 64 * 1024,
        "the buffer grew to {} bytes",
        framed.read_buffer().capacity()
    );
    // And the stream is finished after the error.
    assert!(matches!(framed.next().now_or_never(), Some(None)));
}

#[test]
fn the_largest_allowed_length_waits_for_its_bytes_and_one_more_is_refused() {
    let at_limit = ChunkedRead::new([(FRAME_LEN_MAX as u32).to_le_bytes().to_vec()], Then::Stall);
    let mut framed = FramedRead::new(at_limit, TerminalCodec::new(Side::Gateway));
    assert!(
        framed.next().now_or_never().is_none(),
        "a frame at the limit is simply incomplete"
    );

    let above = ChunkedRead::new([(FRAME_LEN_MAX as u32 + 1).to_le_bytes().to_vec()], Then::Stall);
    let mut framed = FramedRead::new(above, TerminalCodec::new(Side::Gateway));
    assert!(matches!(
        framed.next().now_or_never(),
        Some(Some(Err(CodecError::FrameTooLarge { len }))) if len == FRAME_LEN_MAX + 1
    ));
}

#[tokio::test]
async fn the_terminal_reads_the_gateway_stream_the_same_way() {
    // The other direction: CHALLENGE in the clear, then SIGN_ON_OK and answers MACed with
    // the down key, one byte per read.
    let input = input(3, 4);
    let mut g = TerminalCodec::new(Side::Gateway);
    let challenge = Message::Challenge(Challenge {
        gateway_nonce: input.gateway_nonce,
        server_time_ms: 5,
    });
    let mut bytes = encode(&mut g, 1, challenge.clone()).to_vec();
    g.install_session(input.session_keys(&secret()));
    let answers = [
        Message::SignOnOk(cardgate_codec::SignOnOk {
            server_time_ms: 6,
            last_tx_seq: 0,
            blacklist_version: 0,
            heartbeat_interval_s: 30,
            pipeline_depth_max: 16,
            flags: 0,
        }),
        heartbeat_ack(),
    ];
    for (i, m) in answers.iter().enumerate() {
        bytes.extend_from_slice(&encode(&mut g, 2 + i as u32, m.clone()));
    }
    let mut framed = FramedRead::new(
        ChunkedRead::split(&bytes, &[1], Then::Eof),
        TerminalCodec::new(Side::Terminal),
    );
    let first = framed.next().await.expect("a frame").expect("valid");
    assert_eq!(first.message, challenge);
    // The terminal knows the keys once it has sent PROOF, before SIGN_ON_OK arrives.
    framed.decoder_mut().install_session(input.session_keys(&secret()));
    for (i, m) in answers.iter().enumerate() {
        let f = framed.next().await.expect("a frame").expect("valid");
        assert_eq!((f.request_id, f.counter, &f.message), (2 + i as u32, 1 + i as u64, m));
    }
    assert!(framed.next().await.is_none());
}

fn heartbeat_ack() -> Message {
    Message::HeartbeatAck(cardgate_codec::HeartbeatAck {
        server_time_ms: 7,
        blacklist_version: 8,
    })
}
