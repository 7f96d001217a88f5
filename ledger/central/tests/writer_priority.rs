//! The central store's work yields the CPU while the store keeps up and gets the normal
//! priority back when it falls behind (`central.yield_below_ms`): the batches' reading
//! and building on the flusher's background threads, and a SQLite store's writer thread.
//! A test binary of its own: the threads it looks at must be this test's alone.

#![cfg(target_os = "linux")]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use cardgate_central::priority::{BACKGROUND_NICE, BACKGROUND_THREAD};
use cardgate_central::{CentralStore, Flusher, FlusherConfig};
use common::*;

/// The SQLite connections' worker threads alive now: (name, nice).
fn writers() -> Vec<(String, i32)> {
    threads("cg-sqlite-")
}

/// The threads alive now whose names start with `prefix`: (name, nice).
fn threads(prefix: &str) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim_end();
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // After the ")" that ends the name: state is field 3, nice field 19.
        let nice: i32 = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .nth(16)
            .unwrap()
            .parse()
            .unwrap();
        out.push((comm.to_string(), nice));
    }
    out.sort();
    out
}

/// This thread's nice value: what a thread it starts inherits.
fn own_nice() -> i32 {
    rustix::process::getpriority_process(None).unwrap()
}

// One test: the threads each part looks at must be its own.
#[tokio::test]
async fn the_writer_yields_while_the_store_keeps_up_and_stops_when_it_falls_behind() {
    never_yields_when_yield_below_is_zero().await;
    the_connection_is_opened_by_its_caller().await;
    postgres_never_yields().await;
    let base = own_nice();
    assert!(
        base < BACKGROUND_NICE,
        "the test runs below the background priority already"
    );
    let (_dir, url) = temp_sqlite();
    let mut f = Fixture::new().await;
    let config = FlusherConfig {
        batch_entries_max: 50,
        batch_wait: Duration::from_secs(3600),
        yield_below: Duration::from_secs(1),
        ..FlusherConfig::default()
    };
    for _ in 0..50 {
        f.buy(1, 1).await;
    }
    let h = Flusher::start(f.source(), CentralStore::open(&url).unwrap(), config).unwrap();
    until("the first batch", || h.status.cursor.load(Ordering::Acquire) == 50).await;
    // The batch's oldest entry was fresh: its writer yields.
    let first = writers();
    assert_eq!(first.len(), 1, "one connection: {first:?}");
    assert_eq!(first[0].1, BACKGROUND_NICE, "{first:?}");

    // Five entries wait 45 s for their batch: the store is behind when it fills.
    for _ in 0..5 {
        f.buy(1, 1).await;
    }
    f.clock.advance(45_000);
    for _ in 0..45 {
        f.buy(1, 1).await;
    }
    until("the late batch", || h.status.cursor.load(Ordering::Acquire) == 100).await;
    let behind = writers();
    assert_eq!(behind.len(), 1, "the yielding connection was closed: {behind:?}");
    assert_ne!(behind[0].0, first[0].0, "a new writer thread");
    assert_eq!(behind[0].1, base, "at the priority of the flusher's thread: {behind:?}");
    // The late batch was read where the first batch's age put it: on the background
    // runtime, whose worker and blocking threads all run lowered.
    let background = threads(BACKGROUND_THREAD);
    assert!(
        background.len() >= 2,
        "a blocking thread of the background runtime read the journal: {background:?}"
    );
    assert!(
        background.iter().all(|(_, nice)| *nice == BACKGROUND_NICE),
        "{background:?}"
    );

    // Back within half of yield_below: it yields again.
    for _ in 0..50 {
        f.buy(1, 1).await;
    }
    until("the third batch", || h.status.cursor.load(Ordering::Acquire) == 150).await;
    until("the writer to yield again", || {
        writers() == vec![(behind[0].0.clone(), BACKGROUND_NICE)]
    })
    .await;
    h.shutdown(Duration::from_secs(10)).await;
}

/// With `yield_below` zero the writer keeps the normal priority.
async fn never_yields_when_yield_below_is_zero() {
    let base = own_nice();
    let (_dir, url) = temp_sqlite();
    let mut f = Fixture::new().await;
    let config = FlusherConfig {
        batch_entries_max: 10,
        batch_wait: Duration::ZERO,
        yield_below: Duration::ZERO,
        ..FlusherConfig::default()
    };
    for _ in 0..30 {
        f.buy(1, 1).await;
    }
    let h = Flusher::start(f.source(), CentralStore::open(&url).unwrap(), config).unwrap();
    let durable = f.durable();
    until("every batch", || h.status.cursor.load(Ordering::Acquire) == durable).await;
    let w = writers();
    assert!(!w.is_empty() && w.iter().all(|(_, nice)| *nice == base), "{w:?}");
    assert_eq!(threads(BACKGROUND_THREAD), vec![], "no background threads");
    h.shutdown(Duration::from_secs(10)).await;
    until("its writer thread to end", || writers().is_empty()).await;
}

/// `set_background` opens the connection itself, from the flusher's thread, before a
/// batch on the lowered runtime could: a connection opened there would be lowered for
/// good. Closing a lowered one opens the next at once, at the caller's priority.
async fn the_connection_is_opened_by_its_caller() {
    let base = own_nice();
    let (_dir, url) = temp_sqlite();
    let store = CentralStore::open(&url).unwrap();
    assert_eq!(writers(), vec![], "opening the store does not connect");
    store.set_background(true).await;
    let lowered = writers();
    assert_eq!(lowered.len(), 1, "{lowered:?}");
    assert_eq!(lowered[0].1, BACKGROUND_NICE, "{lowered:?}");
    store.set_background(false).await;
    until("the lowered writer thread to end", || {
        !writers().iter().any(|(name, _)| *name == lowered[0].0)
    })
    .await;
    let normal = writers();
    assert_eq!(normal.len(), 1, "the next connection is open already: {normal:?}");
    assert_eq!(normal[0].1, base, "{normal:?}");
    store.close().await;
    until("its writer thread to end", || writers().is_empty()).await;
}

/// A PostgreSQL store's work is in its server: its flusher starts no background threads
/// and keeps its batches on its own thread.
async fn postgres_never_yields() {
    let f = Fixture::new().await;
    // Never reached: the store is opened lazily, and the flusher only retries.
    let store = CentralStore::open("postgres://cardgate@127.0.0.1:1/none").unwrap();
    assert!(!store.yields());
    let config = FlusherConfig {
        yield_below: Duration::from_secs(1),
        ..FlusherConfig::default()
    };
    let h = Flusher::start(f.source(), store, config).unwrap();
    // A runtime's threads start just after `build` returns; 300 ms is ample for them to
    // appear (waiting for the first failed attempt to reach the store would take 10 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(threads(BACKGROUND_THREAD), vec![], "no background threads");
    h.shutdown(Duration::from_secs(1)).await;
}
