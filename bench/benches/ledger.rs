//! The purchase decision in the ledger, with the committer running over sled in a
//! temporary directory (`$CARDGATE_BENCH_DIR`, see `bench/README.md`):
//!
//! - `decision`: `Ledger::purchase` up to the moment it hands back the `Pending` answer:
//!   the journal slot, the three locks, the rules, the submission. Commits happen off
//!   the clock (the queue is drained between timed passes).
//! - `durable/1`: one purchase, decided and awaited until its group commit (flush +
//!   fdatasync) is done: a lone terminal's service time.
//! - `durable/256`: 256 purchases decided back to back and awaited together: what group
//!   commit buys when many terminals pay at once.

// Amounts in fen are written yuan_fen (`12_50` is 12.50 yuan).
#![allow(clippy::inconsistent_digit_grouping)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use cardgate_bench::LedgerFixture;
use cardgate_codec::Message;
use cardgate_journal::QUEUE_DEPTH_MAX;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::future::join_all;

/// Decisions per timed pass: well below the journal queue, so that the decision path
/// never waits for the committer while it is being timed.
const DECISIONS_PER_PASS: u64 = (QUEUE_DEPTH_MAX / 4) as u64;

fn expect_approved(answer: &Message) {
    assert!(
        matches!(answer, Message::Approved(_)),
        "the benchmark must measure approvals, got {answer:?}"
    );
}

fn ledger(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut g = c.benchmark_group("ledger_purchase");

    g.throughput(Throughput::Elements(1));
    g.bench_function("decision", |b| {
        let mut fx = LedgerFixture::open(&rt);
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                let mut pending = Vec::with_capacity(DECISIONS_PER_PASS as usize);
                while left > 0 {
                    let n = left.min(DECISIONS_PER_PASS);
                    let purchases: Vec<_> = (0..n).map(|_| fx.next_purchase()).collect();
                    let ledger = fx.ledger().clone();
                    let started = Instant::now();
                    for (terminal, p) in &purchases {
                        pending.push(ledger.purchase(*terminal, p).await);
                    }
                    timed += started.elapsed();
                    // Commits complete in order: the last answer durable means all are.
                    if let Some(last) = pending.pop() {
                        expect_approved(&last.await);
                    }
                    pending.clear();
                    left -= n;
                }
                timed
            })
        });
    });

    g.bench_function(BenchmarkId::new("durable", 1), |b| {
        let mut fx = LedgerFixture::open(&rt);
        b.iter(|| {
            let (terminal, p) = fx.next_purchase();
            let ledger = fx.ledger().clone();
            let answer = rt.block_on(async move { ledger.purchase(terminal, &p).await.await });
            expect_approved(&answer);
            black_box(answer);
        });
    });

    const CONCURRENT: u64 = 256;
    g.throughput(Throughput::Elements(CONCURRENT));
    g.bench_function(BenchmarkId::new("durable", CONCURRENT), |b| {
        let mut fx = LedgerFixture::open(&rt);
        b.iter(|| {
            let purchases: Vec<_> = (0..CONCURRENT).map(|_| fx.next_purchase()).collect();
            let ledger = fx.ledger().clone();
            let answers = rt.block_on(async move {
                // Decided one after another, as connections hand them to the ledger,
                // then awaited together: they share group commits.
                let mut pending = Vec::with_capacity(purchases.len());
                for (t, p) in &purchases {
                    pending.push(ledger.purchase(*t, p).await);
                }
                join_all(pending).await
            });
            answers.iter().for_each(expect_approved);
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = ledger
}
criterion_main!(benches);
