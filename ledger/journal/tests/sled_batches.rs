//! The write-ahead store as patched (ledger/vendor/README.md): the buffer holding an
//! atomic batch's manifest is synced together with the buffer written after it. Every
//! flushed batch must come back after a reopen, and a flush must never wait on a
//! manifest nobody syncs, also while another thread inserts (as the checkpointer does)
//! and fills buffers that sled's I/O pool writes, and across segment boundaries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const BATCHES: u64 = 1_500;

fn open(path: &std::path::Path) -> sled::Db {
    sled::Config::new()
        .path(path)
        // Small segments, so that a manifest's buffer and the next one often fall in
        // different segments and are synced apart.
        .segment_size(4096)
        .flush_every_ms(None)
        .open()
        .expect("open sled")
}

fn batch_key(n: u64, k: u64) -> Vec<u8> {
    format!("b{n:06}-{k}").into_bytes()
}

#[test]
fn batches_flushed_beside_concurrent_inserts_all_come_back_after_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let writer_path = path.clone();
    let (done, finished) = mpsc::channel();
    let writer = thread::spawn(move || {
        let db = open(&writer_path);
        let tree = db.open_tree("t").expect("tree");
        let stop = Arc::new(AtomicBool::new(false));
        let inserter = {
            let tree = tree.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tree.insert(format!("c{:06}", i % 5_000), vec![7u8; 300])
                        .expect("insert");
                    i += 1;
                }
            })
        };
        for n in 0..BATCHES {
            let mut batch = sled::Batch::default();
            // Empty batches too: their manifest is cancelled, not written.
            for k in 0..n % 5 {
                batch.insert(batch_key(n, k), vec![1u8; 120]);
            }
            tree.apply_batch(batch).expect("apply batch");
            db.flush().expect("flush");
        }
        stop.store(true, Ordering::Relaxed);
        inserter.join().expect("inserter");
        db.flush().expect("final flush");
        // Closed before the reopen: sled holds a lock on its file while open.
        drop(tree);
        drop(db);
        done.send(()).expect("report");
    });
    // A flush waiting on a manifest's buffer that nobody syncs would hang here.
    finished
        .recv_timeout(Duration::from_secs(120))
        .expect("every batch was applied and flushed without hanging");
    writer.join().expect("writer");

    let db = open(&path);
    let tree = db.open_tree("t").expect("tree");
    let mut found = 0u64;
    for n in 0..BATCHES {
        for k in 0..n % 5 {
            let value = tree.get(batch_key(n, k)).expect("read");
            assert_eq!(
                value.as_deref(),
                Some(&[1u8; 120][..]),
                "batch {n} key {k} after reopen"
            );
            found += 1;
        }
    }
    assert_eq!(found, (0..BATCHES).map(|n| n % 5).sum::<u64>());
}
