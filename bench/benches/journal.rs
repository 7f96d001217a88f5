//! A group commit of N purchase decisions into sled: the committer packs N journal
//! entries into segments, applies them in one batch with the meta records, flushes,
//! `fdatasync`s the log, and completes N submissions. N = 1, 64, 512, 4096
//! (`BATCH_ENTRIES_MAX`).
//!
//! To make the N decisions land in exactly one commit, a "plug" (an empty forced sync)
//! goes first and is held inside the store's `sync` until all N are queued; the clock
//! starts when the plug is released and stops when the last of the N is durable.

// Amounts in fen are written yuan_fen (`12_50` is 12.50 yuan).
#![allow(clippy::inconsistent_digit_grouping)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cardgate_bench::{bench_dir, measuring, purchase_submission};
use cardgate_journal::{BATCH_ENTRIES_MAX, CommitResult, Db, SledStore, Store, StoreError};
use cardgate_ledger::records::{Journal, Submission};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::oneshot;

/// The sled store with a hold on the next `sync` after `armed` is set.
struct PluggedStore {
    inner: SledStore,
    armed: Arc<AtomicBool>,
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

impl Store for PluggedStore {
    fn apply(&mut self, batch: sled::Batch) -> Result<(), StoreError> {
        self.inner.apply(batch)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if self.armed.swap(false, Ordering::AcqRel) {
            // The plug wrote nothing; it only holds the committer.
            let _ = self.entered.send(());
            let _ = self.release.recv();
            return Ok(());
        }
        self.inner.sync()
    }
}

fn group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut g = c.benchmark_group("journal_group_commit");
    let sizes: &[u64] = if measuring() { &[1, 64, 512, 4096] } else { &[1, 64] };
    for &n in sizes {
        assert!(
            n as usize <= BATCH_ENTRIES_MAX,
            "one commit takes at most BATCH_ENTRIES_MAX"
        );
        g.throughput(Throughput::Elements(n));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            let dir = tempfile::Builder::new()
                .prefix("cardgate-bench-journal-")
                .tempdir_in(bench_dir())
                .expect("a benchmark directory");
            let db = Db::open(dir.path()).expect("open sled");
            let armed = Arc::new(AtomicBool::new(false));
            let (entered_tx, entered) = mpsc::channel();
            let (release, release_rx) = mpsc::channel();
            let store = PluggedStore {
                inner: db.store().expect("the sled log file"),
                armed: armed.clone(),
                entered: entered_tx,
                release: release_rx,
            };
            let (journal, committer) = Journal::start(db.clone(), Box::new(store), 1, 0, Default::default()).unwrap();
            let mut next = 0u64;
            let mut split = 0u64;
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let commits_before = journal.stats.commits.load(Ordering::Relaxed);
                        armed.store(true, Ordering::Release);
                        let plug = plug(&journal).await;
                        entered.recv().expect("the committer holds the plug");
                        let mut last = None;
                        for _ in 0..n {
                            let (done, wait) = oneshot::channel();
                            next += 1;
                            journal
                                .reserve()
                                .await
                                .expect("journal open")
                                .send(purchase_submission(next, done));
                            last = Some(wait);
                        }
                        let started = Instant::now();
                        release.send(()).expect("release the plug");
                        let _ = plug.await;
                        if let Some(last) = last {
                            last.await.expect("committer alive").expect("commit succeeds");
                        }
                        timed += started.elapsed();
                        // The plug, then the N in one commit; a checkpoint's own sync
                        // (every 10 s) may slip in between, and is counted.
                        if journal.stats.commits.load(Ordering::Relaxed) - commits_before != 2 {
                            split += 1;
                        }
                    }
                    timed
                })
            });
            if split > 0 {
                eprintln!("note: {split} iterations of N={n} shared their commit with a checkpoint sync");
            }
            drop(journal);
            committer.join();
        });
    }
    g.finish();
}

async fn plug(journal: &Journal) -> oneshot::Receiver<CommitResult> {
    let (done, wait) = oneshot::channel();
    let mut sub = Submission::barrier(done);
    sub.force_sync = true;
    journal.reserve().await.expect("journal open").send(sub);
    wait
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = group_commit
}
criterion_main!(benches);
