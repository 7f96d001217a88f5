//! The journal alone, with a schema of its own: entries are strings, records are
//! `(key, value)` pairs. What it must do whatever it carries: give entries consecutive
//! ids in submission order, answer nothing before it is durable, keep what it
//! acknowledged across a restart, checkpoint the newest record per key, refuse every
//! write after a failed one, and prune only what it is told to.

use std::sync::atomic::Ordering;

use cardgate_journal::record::{decode_record, encode_record};
use cardgate_journal::sled;
use cardgate_journal::store::{key_u64, meta};
use cardgate_journal::{
    CheckpointPolicy, CommitResult, CommitterHandle, Db, FaultSwitch, FaultyStore, Journal, JournalError, Schema,
    StoreError, Submission, Write,
};
use smallvec::SmallVec;
use tokio::sync::oneshot;

/// Entries: `(time_ms, text)`; records: `(key, value)` under prefix `'X'`, or a record
/// with key 0 written with its commit.
struct Toy;

const PREFIX: u8 = b'X';

fn encode_entry(time_ms: i64, text: &str) -> Vec<u8> {
    let mut out = time_ms.to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

fn decode_entry(bytes: &[u8]) -> Result<(i64, String), String> {
    let (t, text) = bytes.split_first_chunk::<8>().ok_or("short entry")?;
    Ok((
        i64::from_le_bytes(*t),
        String::from_utf8(text.to_vec()).map_err(|e| e.to_string())?,
    ))
}

impl Schema for Toy {
    type Entry = (i64, String);
    type Record = (u64, u64);
    type Key = u64;

    fn encode_entry(entry: &(i64, String), out: &mut Vec<u8>) {
        out.extend_from_slice(&encode_entry(entry.0, &entry.1));
    }

    fn key(record: &(u64, u64)) -> Option<u64> {
        (record.0 != 0).then_some(record.0)
    }

    fn commit_write(record: &(u64, u64)) -> Write {
        (key_u64(PREFIX, 0).as_ref().into(), Some(encode_record(&record.1)))
    }

    fn checkpoint_writes<'a>(
        _tree: &sled::Tree,
        records: impl Iterator<Item = &'a (u64, u64)>,
    ) -> Result<Vec<Write>, StoreError> {
        Ok(records
            .map(|(k, v)| (key_u64(PREFIX, *k).as_ref().into(), Some(encode_record(v))))
            .collect())
    }
}

struct Open {
    db: Db,
    journal: Journal<Toy>,
    committer: CommitterHandle,
}

fn open(dir: &std::path::Path, policy: CheckpointPolicy, switch: Option<FaultSwitch>) -> Open {
    // sled's I/O threads may hold the previous instance's lock for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match Db::open(dir) {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("open: {e}"),
        }
    };
    let next = db.get_meta_u64(meta::NEXT_ENTRY_ID).unwrap().unwrap_or(1);
    let checkpoint = db.get_meta_u64(meta::CHECKPOINT_ID).unwrap().unwrap_or(0);
    let store = db.store().unwrap();
    let store: Box<dyn cardgate_journal::Store> = match switch {
        Some(switch) => Box::new(FaultyStore { inner: store, switch }),
        None => Box::new(store),
    };
    let (journal, committer) = Journal::<Toy>::start(db.clone(), store, next, checkpoint, policy).unwrap();
    Open { db, journal, committer }
}

fn close(o: Open) -> Db {
    drop(o.journal);
    o.committer.join();
    o.db
}

async fn submit(j: &Journal<Toy>, texts: &[&str], records: &[(u64, u64)]) -> oneshot::Receiver<CommitResult> {
    let (done, wait) = oneshot::channel();
    j.reserve().await.unwrap().send(Submission {
        entries: texts.iter().map(|t| (7, t.to_string())).collect(),
        records: records.iter().copied().collect::<SmallVec<_>>(),
        mark: 0,
        force_sync: false,
        done: Some(done),
    });
    wait
}

fn all_entries(db: &Db) -> Vec<(u64, String)> {
    db.read_entries(0, usize::MAX, decode_entry)
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.record.1))
        .collect()
}

#[tokio::test]
async fn entries_get_consecutive_ids_in_order_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), CheckpointPolicy::default(), None);
    // Queued back to back: they share group commits, and keep their order.
    let mut waits = Vec::new();
    for i in 0..500 {
        waits.push(submit(&o.journal, &[&format!("e{i}")], &[]).await);
    }
    let two = submit(&o.journal, &["op", "its audit"], &[]).await;
    let barrier = submit(&o.journal, &[], &[]).await;
    for (i, w) in waits.into_iter().enumerate() {
        assert_eq!(w.await.unwrap().unwrap(), i as u64 + 1);
    }
    assert_eq!(two.await.unwrap().unwrap(), 501, "the id of the first of two entries");
    assert_eq!(barrier.await.unwrap().unwrap(), 0, "a barrier carries no entry");
    assert!(
        o.journal.stats.commits.load(Ordering::Relaxed) < 502,
        "group commit: fewer flushes than submissions"
    );
    assert_eq!(o.journal.stats.durable_entry_id.load(Ordering::Acquire), 502);
    let db = close(o);
    drop(db);

    let o = open(dir.path(), CheckpointPolicy::default(), None);
    let entries = all_entries(&o.db);
    assert_eq!(entries.len(), 502);
    assert_eq!(entries[0], (1, "e0".into()));
    assert_eq!(entries[500], (501, "op".into()));
    assert_eq!(entries[501], (502, "its audit".into()));
    // Ids carry on after a restart.
    assert_eq!(submit(&o.journal, &["next"], &[]).await.await.unwrap().unwrap(), 503);
    close(o);
}

#[tokio::test]
async fn a_checkpoint_keeps_the_newest_record_per_key_and_direct_writes_go_with_their_commit() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), CheckpointPolicy::default(), None);
    submit(&o.journal, &["a"], &[(1, 10), (2, 20)])
        .await
        .await
        .unwrap()
        .unwrap();
    submit(&o.journal, &["b"], &[(1, 11)]).await.await.unwrap().unwrap();
    // Key 0: written with its commit, before any checkpoint.
    submit(&o.journal, &[], &[(0, 99)]).await.await.unwrap().unwrap();
    let direct = o.db.get_record::<u64>(&key_u64(PREFIX, 0)).unwrap();
    assert_eq!(direct, Some(99));
    assert_eq!(o.db.get_record::<u64>(&key_u64(PREFIX, 1)).unwrap(), None, "not yet");
    let db = close(o);
    // The final checkpoint at shutdown: the newest value per key, through the last entry.
    assert_eq!(db.get_record::<u64>(&key_u64(PREFIX, 1)).unwrap(), Some(11));
    assert_eq!(db.get_record::<u64>(&key_u64(PREFIX, 2)).unwrap(), Some(20));
    assert_eq!(db.get_meta_u64(meta::CHECKPOINT_ID).unwrap(), Some(2));
    let raw = db.tree.get(key_u64(PREFIX, 1)).unwrap().unwrap();
    assert_eq!(decode_record::<u64>(b"X", &raw).unwrap(), 11);
}

#[tokio::test]
async fn a_failed_write_poisons_the_journal_until_restart_and_nothing_of_it_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let switch = FaultSwitch::default();
    let o = open(dir.path(), CheckpointPolicy::default(), Some(switch.clone()));
    submit(&o.journal, &["kept"], &[]).await.await.unwrap().unwrap();
    switch.set(FaultSwitch::FAIL_SYNC);
    let failed = submit(&o.journal, &["never acknowledged"], &[]).await.await.unwrap();
    assert!(matches!(failed, Err(JournalError::Poisoned(_))));
    switch.set(FaultSwitch::NONE);
    assert!(o.journal.is_poisoned());
    assert!(matches!(o.journal.reserve().await, Err(JournalError::Poisoned(_))));
    assert_eq!(o.journal.stats.durable_entry_id.load(Ordering::Acquire), 1);
    drop(close(o));

    let switch = FaultSwitch::default();
    let o = open(dir.path(), CheckpointPolicy::default(), Some(switch.clone()));
    switch.set(FaultSwitch::FAIL_APPLY);
    let failed = submit(&o.journal, &["not applied"], &[]).await.await.unwrap();
    assert!(matches!(failed, Err(JournalError::Poisoned(_))));
    let db = close(o);
    let texts: Vec<String> = all_entries(&db).into_iter().map(|(_, t)| t).collect();
    assert!(texts.contains(&"kept".to_string()));
    assert!(
        !texts.contains(&"not applied".to_string()),
        "a failed apply writes nothing"
    );
}

#[tokio::test]
async fn pruning_removes_whole_old_segments_only_up_to_what_it_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), CheckpointPolicy::default(), None);
    // Big entries, so that segments fill and there are many of them.
    let text = "x".repeat(1000);
    for _ in 0..40 {
        submit(&o.journal, &[&text], &[]).await.await.unwrap().unwrap();
    }
    let time = |b: &[u8]| decode_entry(b).ok().map(|(t, _)| t);
    // Nothing is older than time 7.
    let none = o.db.prune_journal(40, 7, 1000, time).unwrap();
    assert_eq!(none.segments, 0);
    let p = o.db.prune_journal(20, 8, 1000, time).unwrap();
    assert!(p.segments > 0 && p.through_id <= 20, "{p:?}");
    let left = all_entries(&o.db);
    assert_eq!(left.first().map(|e| e.0), Some(p.through_id + 1), "a contiguous tail");
    assert_eq!(left.last().map(|e| e.0), Some(40));
    assert_eq!(o.db.first_entry_id().unwrap(), Some(p.through_id + 1));
    close(o);
}

#[test]
fn the_journal_knows_no_domain_type() {
    // The test above runs the journal with a schema of this file's own; nothing else is
    // needed to build it. This test states the intent: the crate's dependencies are
    // sled, tokio and its own small helpers, never a cardgate crate.
    let manifest = include_str!("../Cargo.toml");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .unwrap_or("");
    assert!(!deps.contains("cardgate"), "{deps}");
}
