//! The write-ahead store as patched (ledger/vendor/README.md): a new segment at the end
//! of sled's log file is written with zeros in full before anything goes into it, so that
//! a flush overwrites blocks the file already has instead of growing the file, and the
//! `fdatasync` after it has no file size to make durable. The file must therefore only
//! ever grow by whole segments, and a crash that leaves a zeroed segment with nothing in
//! it (after the zeros, before its header) must recover with every flushed batch.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

const SEGMENT: usize = 64 * 1024;

fn open(path: &Path) -> sled::Db {
    sled::Config::new()
        .path(path)
        .segment_size(SEGMENT)
        .flush_every_ms(None)
        .open()
        .expect("open sled")
}

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path.join("db")).expect("sled's log file").len()
}

fn key(n: u64) -> Vec<u8> {
    format!("k{n:06}").into_bytes()
}

fn value(n: u64) -> Vec<u8> {
    vec![(n % 251) as u8; 200]
}

/// Applies and flushes `count` one-key batches from `first`, as the committer does.
fn write_batches(path: &Path, db: &sled::Db, tree: &sled::Tree, first: u64, count: u64) {
    for n in first..first + count {
        let mut batch = sled::Batch::default();
        batch.insert(key(n), value(n));
        tree.apply_batch(batch).expect("apply batch");
        db.flush().expect("flush");
        let len = log_len(path);
        assert_eq!(
            len % SEGMENT as u64,
            0,
            "after batch {n} the log is {len} bytes: it grew by less than a segment"
        );
    }
}

fn assert_all(tree: &sled::Tree, count: u64) {
    for n in 0..count {
        assert_eq!(
            tree.get(key(n)).expect("read").as_deref(),
            Some(&value(n)[..]),
            "batch {n} after reopen"
        );
    }
}

#[test]
fn the_log_grows_by_whole_zeroed_segments_and_recovers_over_a_zeroed_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");
    {
        let db = open(&path);
        let tree = db.open_tree("t").expect("tree");
        // ~200 KiB of values: the log crosses several 64 KiB segments.
        write_batches(&path, &db, &tree, 0, 1_000);
    }

    // The state a crash leaves between writing a new segment's zeros and its header:
    // whole zero segments past the last one in use.
    let before = log_len(&path);
    let mut f = OpenOptions::new().append(true).open(path.join("db")).expect("log file");
    f.write_all(&vec![0u8; 2 * SEGMENT]).expect("append zero segments");
    f.sync_all().expect("sync");
    drop(f);
    assert_eq!(log_len(&path), before + 2 * SEGMENT as u64);

    {
        let db = open(&path);
        let tree = db.open_tree("t").expect("tree");
        assert_all(&tree, 1_000);
        // And the log goes on from there, over or past the zeroed segments.
        write_batches(&path, &db, &tree, 1_000, 1_000);
    }
    let db = open(&path);
    let tree = db.open_tree("t").expect("tree");
    assert_all(&tree, 2_000);
}
