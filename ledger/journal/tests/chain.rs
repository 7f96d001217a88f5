//! The hash chain, with a schema of its own: every entry gets a hash linked to the one
//! before it, and `chain::verify` finds, at the right entry, one changed byte, one
//! changed hash, one removed entry, a removed segment, two entries swapped, a changed
//! checkpoint or pruning anchor, and the newest entry removed; and it starts the chain
//! after the entries of a journal written before it.

use cardgate_journal::chain::{self, ChainReport, GENESIS};
use cardgate_journal::record::encode_record;
use cardgate_journal::segment;
use cardgate_journal::store::{key_meta, key_segment, key_u64, meta};
use cardgate_journal::{
    ChainPoint, CheckpointPolicy, CommitResult, CommitterHandle, Db, Journal, Schema, StoreError, Submission, Write,
    sled,
};
use smallvec::SmallVec;
use tokio::sync::oneshot;

struct Toy;

impl Schema for Toy {
    type Entry = String;
    type Record = (u64, u64);
    type Key = u64;

    fn encode_entry(entry: &String, out: &mut Vec<u8>) {
        // Pruning reads a time from the front of an entry: a fixed one, long past.
        out.extend_from_slice(&1i64.to_le_bytes());
        out.extend_from_slice(entry.as_bytes());
    }

    fn key(record: &(u64, u64)) -> Option<u64> {
        Some(record.0)
    }

    fn commit_write(record: &(u64, u64)) -> Write {
        (key_u64(b'X', record.0).as_ref().into(), Some(encode_record(&record.1)))
    }

    fn checkpoint_writes<'a>(
        _tree: &sled::Tree,
        records: impl Iterator<Item = &'a (u64, u64)>,
    ) -> Result<Vec<Write>, StoreError> {
        Ok(records
            .map(|(k, v)| (key_u64(b'X', *k).as_ref().into(), Some(encode_record(v))))
            .collect())
    }
}

fn time_of(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(*bytes.first_chunk::<8>()?))
}

struct Open {
    db: Db,
    journal: Journal<Toy>,
    committer: CommitterHandle,
}

fn open_db(dir: &std::path::Path) -> Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Db::open(dir) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("open: {e}"),
        }
    }
}

fn open(dir: &std::path::Path) -> Open {
    let db = open_db(dir);
    let next = db.get_meta_u64(meta::NEXT_ENTRY_ID).unwrap().unwrap_or(1);
    let checkpoint = db.get_meta_u64(meta::CHECKPOINT_ID).unwrap().unwrap_or(0);
    let store = db.store().unwrap();
    let (journal, committer) = Journal::<Toy>::start(
        db.clone(),
        Box::new(store),
        next,
        checkpoint,
        CheckpointPolicy::default(),
    )
    .unwrap();
    Open { db, journal, committer }
}

fn close(o: Open) -> Db {
    drop(o.journal);
    o.committer.join();
    o.db
}

async fn submit(j: &Journal<Toy>, texts: &[&str], records: &[(u64, u64)]) -> CommitResult {
    let (done, wait) = oneshot::channel::<CommitResult>();
    j.reserve().await.unwrap().send(Submission {
        entries: texts.iter().map(|t| t.to_string()).collect(),
        records: records.iter().copied().collect::<SmallVec<_>>(),
        mark: 0,
        force_sync: false,
        done: Some(done),
    });
    wait.await.unwrap()
}

/// Entries 1..=12: six one-entry segments, then one segment of six.
async fn twelve_entries(dir: &std::path::Path) -> Db {
    let o = open(dir);
    for i in 1..=6 {
        submit(&o.journal, &[&format!("entry {i}")], &[(i, i)]).await.unwrap();
    }
    submit(
        &o.journal,
        &["entry 7", "entry 8", "entry 9", "entry 10", "entry 11", "entry 12"],
        &[(7, 7)],
    )
    .await
    .unwrap();
    close(o)
}

fn verify(db: &Db) -> ChainReport {
    chain::verify(db, u64::MAX).unwrap()
}

/// The segment holding `first`, as stored.
fn segment_bytes(db: &Db, first: u64) -> Vec<u8> {
    db.tree.get(key_segment(first)).unwrap().expect("segment").to_vec()
}

/// Rewrites a segment from its entries, each `(bytes, hash)`.
fn rewrite(db: &Db, first: u64, entries: &[(Vec<u8>, Option<[u8; 32]>)]) {
    let mut seg = Vec::new();
    for (bytes, hash) in entries {
        segment::push(&mut seg, bytes, hash.as_ref());
    }
    db.tree.insert(key_segment(first), seg).unwrap();
}

fn parsed(db: &Db, first: u64) -> Vec<(Vec<u8>, Option<[u8; 32]>)> {
    let bytes = segment_bytes(db, first);
    segment::entries(first, &bytes)
        .unwrap()
        .iter()
        .map(|e| (e.bytes.to_vec(), e.hash.copied()))
        .collect()
}

fn kinds(r: &ChainReport) -> Vec<(u64, &'static str)> {
    r.faults.iter().map(|f| (f.entry_id, f.kind)).collect()
}

#[tokio::test]
async fn a_clean_journal_verifies_from_the_genesis_through_restarts_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let db = twelve_entries(dir.path()).await;
    // A restart goes on with the chain, and the final checkpoint records its hash.
    drop(db);
    let o = open(dir.path());
    submit(&o.journal, &["entry 13"], &[(13, 13)]).await.unwrap();
    let db = close(o);
    let r = verify(&db);
    assert_eq!(r.faults, vec![], "{r:?}");
    assert_eq!(
        (r.chain_start, r.first_entry_id, r.last_entry_id),
        (Some(1), Some(1), Some(13))
    );
    assert_eq!((r.entries, r.unhashed, r.anchored_at), (13, 0, Some(0)));
    let head = db.get_meta_point(meta::CHAIN_HEAD).unwrap().unwrap();
    assert_eq!(Some(head), r.head, "the recorded head is the last entry's hash");
    let checkpoint = db.get_meta_point(meta::CHECKPOINT_CHAIN).unwrap().unwrap();
    assert_eq!(checkpoint, head, "the final checkpoint records the hash at its entry");
    assert_eq!(r.checkpoint, Some(checkpoint));
    // And each hash is the link from the one before, as anyone can recompute it.
    let mut prev = GENESIS;
    for e in db.read_entries(0, usize::MAX, |b| Ok::<_, String>(b.to_vec())).unwrap() {
        prev = chain::link(&prev, e.id, &e.record);
        assert_eq!(e.hash, Some(prev), "entry {}", e.id);
    }
}

#[tokio::test]
async fn one_flipped_byte_is_found_at_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db = twelve_entries(dir.path()).await;
    let mut seg = parsed(&db, 7);
    seg[2].0[10] ^= 0x01; // entry 9
    rewrite(&db, 7, &seg);
    let r = verify(&db);
    assert_eq!(kinds(&r), vec![(9, "changed")], "{r:?}");
    assert!(
        r.faults[0].detail.contains("bytes were changed"),
        "{}",
        r.faults[0].detail
    );
    assert_eq!(r.faults[0].found, chain::to_hex(&seg[2].1.unwrap()));
}

#[tokio::test]
async fn a_changed_hash_is_told_from_changed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = twelve_entries(dir.path()).await;
    let mut seg = parsed(&db, 7);
    let mut h = seg[1].1.unwrap();
    h[0] ^= 0x80; // entry 8's stored hash
    seg[1].1 = Some(h);
    rewrite(&db, 7, &seg);
    let r = verify(&db);
    assert_eq!(kinds(&r), vec![(8, "changed")], "{r:?}");
    assert!(
        r.faults[0].detail.contains("stored hash was changed"),
        "{}",
        r.faults[0].detail
    );
}

#[tokio::test]
async fn one_removed_entry_is_named_whether_inside_a_segment_or_a_whole_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = twelve_entries(dir.path()).await;
    let mut seg = parsed(&db, 7);
    seg.remove(3); // entry 10
    rewrite(&db, 7, &seg);
    let r = verify(&db);
    assert_eq!(kinds(&r), vec![(10, "missing")], "{r:?}");
    assert_eq!(r.faults[0].last_id, 10);

    let dir = tempfile::tempdir().unwrap();
    let db = twelve_entries(dir.path()).await;
    db.tree.remove(key_segment(4)).unwrap();
    let r = verify(&db);
    assert_eq!(kinds(&r), vec![(4, "missing")], "{r:?}");
    assert_eq!(r.faults[0].last_id, 4);
}

#[tokio::test]
async fn swapped_entries_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let db = twelve_entries(dir.path()).await;
    let mut seg = parsed(&db, 7);
    seg.swap(1, 2); // entries 8 and 9
    rewrite(&db, 7, &seg);
    let r = verify(&db);
    assert!(!r.faults.is_empty(), "a reordering must not verify");
    assert_eq!(r.faults[0].entry_id, 8, "{r:?}");
}

#[tokio::test]
async fn the_newest_entry_removed_is_found_by_the_recorded_head() {
    let dir = tempfile::tempdir().unwrap();
    let db = twelve_entries(dir.path()).await;
    let mut seg = parsed(&db, 7);
    seg.pop(); // entry 12
    rewrite(&db, 7, &seg);
    let r = verify(&db);
    assert_eq!(kinds(&r), vec![(12, "missing")], "{r:?}");
}

#[tokio::test]
async fn pruning_keeps_the_chain_anchored_and_a_changed_anchor_or_checkpoint_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let db = twelve_entries(dir.path()).await;
    let pruned = db.prune_journal(4, i64::MAX, 100, time_of).unwrap();
    assert_eq!(pruned.through_id, 4);
    let base = db.get_meta_point(meta::CHAIN_BASE).unwrap().unwrap();
    assert_eq!(base.id, 4);
    assert_eq!(
        db.entry_hash(4).unwrap(),
        Some(base.hash),
        "the anchor stands for the pruned entry"
    );
    let r = verify(&db);
    assert_eq!(r.faults, vec![], "{r:?}");
    assert_eq!((r.first_entry_id, r.anchored_at), (Some(5), Some(4)));

    // A hold keeps pruning off (a backup reading the journal).
    let hold = db.hold_pruning();
    assert_eq!(db.prune_journal(6, i64::MAX, 100, time_of).unwrap().segments, 0);
    drop(hold);

    let mut forged = base;
    forged.hash[5] ^= 1;
    db.tree
        .insert(key_meta(meta::CHAIN_BASE), forged.encode().to_vec())
        .unwrap();
    let r = verify(&db);
    assert_eq!(
        kinds(&r),
        vec![(5, "changed")],
        "entry 5 no longer links to the anchor: {r:?}"
    );

    db.tree
        .insert(key_meta(meta::CHAIN_BASE), base.encode().to_vec())
        .unwrap();
    let mut checkpoint = db.get_meta_point(meta::CHECKPOINT_CHAIN).unwrap().unwrap();
    checkpoint.hash[0] ^= 1;
    db.tree
        .insert(key_meta(meta::CHECKPOINT_CHAIN), checkpoint.encode().to_vec())
        .unwrap();
    let r = verify(&db);
    assert_eq!(kinds(&r), vec![(12, "checkpoint")], "{r:?}");
}

#[tokio::test]
async fn a_journal_from_before_the_chain_starts_it_after_its_last_entry() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Three entries as a build before the chain wrote them: no hash, no chain meta.
        let db = open_db(dir.path());
        let mut seg = Vec::new();
        for text in ["old 1", "old 2", "old 3"] {
            let mut e = Vec::new();
            Toy::encode_entry(&text.to_string(), &mut e);
            segment::push(&mut seg, &e, None);
        }
        db.tree.insert(key_segment(1), seg).unwrap();
        db.tree
            .insert(key_meta(meta::NEXT_ENTRY_ID), 4u64.to_be_bytes().to_vec())
            .unwrap();
        db.db.flush().unwrap();
    }
    let o = open(dir.path());
    submit(&o.journal, &["new 4", "new 5"], &[(1, 1)]).await.unwrap();
    let db = close(o);
    assert_eq!(db.get_meta_u64(meta::CHAIN_START).unwrap(), Some(4));
    let r = verify(&db);
    assert_eq!(r.faults, vec![], "{r:?}");
    assert_eq!((r.entries, r.unhashed, r.anchored_at), (5, 3, Some(0)));
    let e = db.read_entries(3, 1, |b| Ok::<_, String>(b.to_vec())).unwrap();
    assert_eq!(e[0].hash, Some(chain::link(&GENESIS, 4, &e[0].record)));
    assert_eq!(
        db.get_meta_point(meta::CHAIN_HEAD).unwrap().map(|p: ChainPoint| p.id),
        Some(5)
    );
}
