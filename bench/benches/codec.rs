//! The frame codec with its MAC, on the gateway's side of a signed-on session: decoding
//! (and verifying) a PURCHASE, encoding (and MACing) its APPROVED answer.

// Amounts in fen are written yuan_fen (`12_50` is 12.50 yuan).
#![allow(clippy::inconsistent_digit_grouping)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cardgate_bench::session_codecs;
use cardgate_codec::{Approved, CardNo, Message, Purchase};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::{Decoder, Encoder};

/// Frames encoded ahead of each timed decode pass: the decoder refuses a replayed
/// counter, so every decoded frame must be fresh; this bounds the memory they take.
const FRAMES_PER_PASS: u64 = 10_000;

fn purchase(seq: u64) -> Message {
    Message::Purchase(Purchase {
        tx_seq: seq,
        card: CardNo(1_000_000_042),
        amount_fen: 12_50,
        terminal_time_ms: 1_780_000_000_000,
    })
}

fn approved(seq: u64) -> Message {
    Message::Approved(Approved {
        tx_seq: seq,
        tx_id: seq,
        card: CardNo(1_000_000_042),
        amount_fen: 12_50,
        balance_fen: 987_50,
        time_ms: 1_780_000_000_000,
    })
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));

    g.bench_function("decode_purchase_with_mac", |b| {
        let (mut gateway, mut terminal) = session_codecs();
        let mut seq = 0u64;
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(FRAMES_PER_PASS);
                let mut wire = BytesMut::new();
                for _ in 0..n {
                    seq += 1;
                    terminal.encode((seq as u32, purchase(seq)), &mut wire).expect("encode");
                }
                let started = Instant::now();
                for _ in 0..n {
                    let frame = gateway
                        .decode(&mut wire)
                        .expect("a valid frame")
                        .expect("a whole frame");
                    black_box(frame);
                }
                timed += started.elapsed();
                left -= n;
            }
            timed
        });
    });

    g.bench_function("encode_approved_with_mac", |b| {
        let (mut gateway, _) = session_codecs();
        let mut out = BytesMut::with_capacity(1024);
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            out.clear();
            gateway.encode((seq as u32, approved(seq)), &mut out).expect("encode");
            black_box(&out);
        });
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
