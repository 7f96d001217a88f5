//! `cardgate-null-gateway`: the yardstick for the gateway's own cost. It speaks the same
//! terminal protocol as `cardgate` (the codec crate: frames, sign-on with the demo
//! terminals' keys, a MAC and replay counter on every frame) on the same tokio runtime,
//! one task per connection, and answers every request at once: a purchase or reversal
//! APPROVED, a balance inquiry a fixed balance, a heartbeat its ack, a door controller's
//! ACCESS_CHECK granted and its DOOR_CACHE_SYNC a cache that lets every demo card
//! (`--demo-accounts`, 20,000 by default) pass at all times, version 1; an upload of
//! offline door events is checked (MACs, order) and answered, remembering only each
//! controller's highest event number, so that an upload sent twice comes back as
//! duplicates. No ledger, no
//! journal, no central store, no metrics. Driven by `cardgate-loadtest` in the same
//! session as `cardgate`, it is the transport's limit on that machine
//! (`bench/vs_null.sh` reports `cardgate`'s figures as ratios to it).
//!
//! ```sh
//! cardgate-null-gateway [--listen 127.0.0.1:7700] [--demo-accounts 20000]
//! ```
//!
//! It prints `listening kind="terminals" addr=...` like `cardgate`, so the bench scripts
//! start either the same way. Conservation cannot hold here (no balance ever moves); run
//! the load test against it without `--check-conservation`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cardgate_codec::codec::Frame;
use cardgate_codec::crypto::SignOnInput;
use cardgate_codec::{
    AccessReason, AccessResult, Approved, Balance, CardStatusCode, Challenge, DOOR_EVENTS_BATCH_MAX,
    DOOR_HOLIDAYS_FIRST, DOOR_HOLIDAYS_MAX, DOOR_PAGE_FIRST, DOOR_PAGE_LAST_IN_RUN, DOOR_PAGE_MORE,
    DOOR_SCHEDULE_ALWAYS, DOOR_VALID_FOREVER, DoorCacheBulk, DoorCacheEntry, DoorCachePageKind, DoorCacheSync,
    DoorEventsBatch, DoorEventsResult, DoorEventsStatus, DoorHolidays, ErrorCode, ErrorFrame, HeartbeatAck, Message,
    PunchResult, PunchStatus, Side, SignOnOk, TerminalCodec, TerminalSecret,
};
use cardgate_ledger::demo::{demo_card, demo_secret};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::codec::Framed;

/// As `cardgate`'s defaults (docs/ARCHITECTURE.md, "Limits"), so that the load test
/// pipelines alike against both.
const PIPELINE_DEPTH_MAX: u16 = 16;
const HEARTBEAT_INTERVAL_S: u16 = 30;
const LISTEN_BACKLOG: u32 = 4096;
/// As `cardgate`'s session: a few frames.
const CONNECTION_BUF_BYTES: usize = 1024;
/// The balance every answer reports.
const BALANCE_FEN: i64 = 1_000_00;

static TX_IDS: AtomicU64 = AtomicU64::new(1);

/// The demo accounts whose cards the door cache lists.
static ACCOUNTS: AtomicU64 = AtomicU64::new(20_000);

/// The highest offline door event number uploaded, per controller.
static EVENT_SEQS: LazyLock<Mutex<HashMap<u64, u64>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The one version of the door cache: it never changes here.
const DOOR_CACHE_VERSION: u64 = 1;
/// Pages per sync run, as `cardgate`'s.
const DOOR_RUN_PAGES: usize = 32;
/// Entries per sync run of a full list, as `cardgate`'s (`DOOR_SYNC_RUN_ENTRIES_MAX`).
const DOOR_RUN_ENTRIES: usize = 4_096;
/// UTC+8, the demo's business time zone.
const UTC_OFFSET_MIN: i16 = 480;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen: SocketAddr = match args.iter().position(|a| a == "--listen") {
        Some(i) => args
            .get(i + 1)
            .context("--listen needs an address")?
            .parse()
            .context("--listen")?,
        None => "127.0.0.1:7700".parse()?,
    };
    if let Some(i) = args.iter().position(|a| a == "--demo-accounts") {
        let n: u64 = args
            .get(i + 1)
            .context("--demo-accounts needs a number")?
            .parse()
            .context("--demo-accounts")?;
        ACCOUNTS.store(n, Ordering::Relaxed);
    }
    // The file descriptors 10,000 terminals need, as `cardgate` raises them.
    let _ = rlimit_nofile();
    // The same runtime as `cardgate serve`: one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let socket = if listen.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        eprintln!("listening kind=\"terminals\" addr={}", listener.local_addr()?);
        accept(listener).await;
        anyhow::Ok(())
    })
}

/// Raises the soft descriptor limit to the hard one.
fn rlimit_nofile() -> std::io::Result<()> {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard)
}

async fn accept(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream));
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

type Conn = Framed<TcpStream, TerminalCodec>;

async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::with_capacity(stream, TerminalCodec::new(Side::Gateway), CONNECTION_BUF_BYTES);
    let code = match sign_on(&mut conn).await {
        Ok((terminal_id, secret)) => {
            let mut state = Session {
                terminal_id,
                secret,
                upload: None,
            };
            session(&mut conn, &mut state).await
        }
        Err(code) => code,
    };
    if let Some(code) = code {
        let _ = conn.send((0, Message::Error(ErrorFrame { code, detail: 0 }))).await;
    }
}

async fn next(conn: &mut Conn) -> Result<Frame, Option<ErrorCode>> {
    match conn.next().await {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(e)) => Err(Some(e.error_code())),
        None => Err(None),
    }
}

/// HELLO → CHALLENGE → PROOF → SIGN_ON_OK, with the demo terminals' secrets.
async fn sign_on(conn: &mut Conn) -> Result<(u64, TerminalSecret), Option<ErrorCode>> {
    let frame = next(conn).await?;
    let Message::Hello(hello) = frame.message else {
        return Err(Some(ErrorCode::UnexpectedMessage));
    };
    let secret = demo_secret(hello.terminal_id);
    let input = SignOnInput {
        terminal_id: hello.terminal_id,
        terminal_nonce: hello.terminal_nonce,
        gateway_nonce: rand::random(),
    };
    let challenge = Challenge {
        gateway_nonce: input.gateway_nonce,
        server_time_ms: now_ms(),
    };
    conn.send((frame.request_id, Message::Challenge(challenge)))
        .await
        .map_err(|_| None)?;
    let frame = next(conn).await?;
    let Message::Proof(proof) = frame.message else {
        return Err(Some(ErrorCode::UnexpectedMessage));
    };
    if !input.verify_proof(&secret, &proof.proof) {
        return Err(Some(ErrorCode::AuthFailed));
    }
    conn.codec_mut().install_session(input.session_keys(&secret));
    let ok = SignOnOk {
        server_time_ms: now_ms(),
        last_tx_seq: 0,
        blacklist_version: 0,
        heartbeat_interval_s: HEARTBEAT_INTERVAL_S,
        pipeline_depth_max: PIPELINE_DEPTH_MAX,
        // No offline limits: the yardstick measures the transport, not offline selling.
        flags: 0,
    };
    conn.send((frame.request_id, Message::SignOnOk(ok)))
        .await
        .map_err(|_| None)?;
    Ok((hello.terminal_id, secret))
}

/// A signed-on terminal, and the upload of door events it is in the middle of.
struct Session {
    terminal_id: u64,
    secret: TerminalSecret,
    upload: Option<Upload>,
}

/// A DOOR_EVENTS_BATCH whose events are arriving.
struct Upload {
    request_id: u32,
    batch: DoorEventsBatch,
    got: u16,
    stored: u16,
    duplicates: u16,
    /// The first event whose MAC failed (the batch is then refused whole).
    bad_mac: Option<u64>,
    out_of_order: bool,
    prev: u64,
    seqs: Vec<u64>,
}

impl Session {
    fn upload_result(&self, u: &Upload, highest: u64) -> (u32, Message) {
        let status = if u.bad_mac.is_some() {
            DoorEventsStatus::BadMac
        } else if u.out_of_order {
            DoorEventsStatus::BadBatch
        } else {
            DoorEventsStatus::Accepted
        };
        let accepted = status == DoorEventsStatus::Accepted;
        let result = DoorEventsResult {
            first_event_seq: u.batch.first_event_seq,
            count: u.batch.count,
            status,
            stored: if accepted { u.stored } else { 0 },
            duplicates: if accepted { u.duplicates } else { 0 },
            flagged: 0,
            first_bad_seq: u.bad_mac.unwrap_or(0),
            last_event_seq: highest,
        };
        (u.request_id, Message::DoorEventsResult(result))
    }

    /// A DOOR_EVENTS_BATCH and its events (docs/PROTOCOL.md 11.5); `None` for a frame
    /// that is neither.
    fn door_upload(&mut self, frame: &Frame) -> Option<Result<Reply, ErrorCode>> {
        match (&frame.message, self.upload.as_mut()) {
            (Message::DoorEventsBatch(b), None) => {
                let upload = Upload {
                    request_id: frame.request_id,
                    batch: *b,
                    got: 0,
                    stored: 0,
                    duplicates: 0,
                    bad_mac: None,
                    out_of_order: false,
                    prev: 0,
                    seqs: Vec::with_capacity(usize::from(b.count.min(DOOR_EVENTS_BATCH_MAX))),
                };
                if b.count == 0 || b.count > DOOR_EVENTS_BATCH_MAX {
                    let mut refused = upload;
                    refused.out_of_order = true;
                    return Some(Ok(Reply::One(self.upload_result(&refused, 0))));
                }
                self.upload = Some(upload);
                Some(Ok(Reply::Nothing))
            }
            (Message::DoorEvent(e), Some(u)) => {
                let fields = cardgate_codec::crypto::DoorEventFields::of(self.terminal_id, e);
                if !cardgate_codec::crypto::verify_door_event_mac(&self.secret, &fields, &e.mac) {
                    u.bad_mac.get_or_insert(e.event_seq);
                }
                // The first is `first_event_seq`, each later one above the one before.
                let in_order = if u.got == 0 {
                    e.event_seq == u.batch.first_event_seq && e.event_seq > 0
                } else {
                    e.event_seq > u.prev
                };
                u.out_of_order |= !in_order;
                u.prev = e.event_seq;
                u.seqs.push(e.event_seq);
                u.got += 1;
                if u.got < u.batch.count {
                    return Some(Ok(Reply::Nothing));
                }
                let mut u = self.upload.take()?;
                let mut seqs = EVENT_SEQS.lock().unwrap_or_else(|p| p.into_inner());
                let highest = seqs.entry(self.terminal_id).or_insert(0);
                if u.bad_mac.is_none() && !u.out_of_order {
                    // Numbers at or below the highest held came before: duplicates.
                    let dup = u.seqs.iter().filter(|s| **s <= *highest).count();
                    u.duplicates = u16::try_from(dup).unwrap_or(u16::MAX);
                    u.stored = u.batch.count - u.duplicates;
                    *highest = (*highest).max(u.prev);
                }
                let h = *highest;
                drop(seqs);
                Some(Ok(Reply::One(self.upload_result(&u, h))))
            }
            (Message::DoorEvent(_), None) | (_, Some(_)) => Some(Err(ErrorCode::UnexpectedMessage)),
            _ => None,
        }
    }
}

/// Answers every frame as it is read; every frame already buffered is answered before
/// the socket is flushed once, as `cardgate` writes every answer that is ready at once.
async fn session(conn: &mut Conn, state: &mut Session) -> Option<ErrorCode> {
    loop {
        let frame = match next(conn).await {
            Ok(f) => f,
            Err(code) => return code,
        };
        let mut answer = state.door_upload(&frame).unwrap_or_else(|| answer(frame));
        loop {
            match answer {
                Ok(Reply::One(a)) => {
                    if conn.feed(a).await.is_err() {
                        return None;
                    }
                }
                Ok(Reply::Nothing) => {}
                Ok(Reply::Run(id, sync)) => {
                    for m in door_run(sync) {
                        if conn.feed((id, m)).await.is_err() {
                            return None;
                        }
                    }
                }
                Err(code) => return Some(code),
            }
            match conn.next().now_or_never() {
                Some(Some(Ok(f))) => answer = state.door_upload(&f).unwrap_or_else(|| self::answer(f)),
                Some(Some(Err(e))) => return Some(e.error_code()),
                Some(None) => return None,
                None => break,
            }
        }
        if conn.flush().await.is_err() {
            return None;
        }
    }
}

/// What a request gets: one answer, none (an acknowledgement), or a run of frames
/// under its request id (a door cache sync).
enum Reply {
    One((u32, Message)),
    Nothing,
    Run(u32, DoorCacheSync),
}

/// The answer to a DOOR_CACHE_SYNC (docs/PROTOCOL.md 11.3): the (empty) calendar, then
/// pages of the full list of every demo card, or one empty delta page when the
/// controller is current.
fn door_run(sync: DoorCacheSync) -> Vec<Message> {
    let accounts = ACCOUNTS.load(Ordering::Relaxed);
    let mut run = Vec::with_capacity(DOOR_RUN_PAGES + 1);
    if sync.after.is_none() {
        run.push(Message::DoorHolidays(DoorHolidays {
            flags: DOOR_HOLIDAYS_FIRST,
            count: 0,
            utc_offset_min: UTC_OFFSET_MIN,
            days: [0; DOOR_HOLIDAYS_MAX],
        }));
    }
    // Pages of the kind and size the controller asked for, as cardgate sends them.
    let per_page = sync.entries_per_page();
    let page = |kind, flags, from, entries: &[DoorCacheEntry]| {
        DoorCacheBulk::new(kind, flags, from, DOOR_CACHE_VERSION, entries, &[]).and_then(|p| sync.answer(p))
    };
    if sync.after.is_none() && sync.have_version == DOOR_CACHE_VERSION {
        run.extend(page(
            DoorCachePageKind::Delta,
            DOOR_PAGE_LAST_IN_RUN,
            DOOR_CACHE_VERSION,
            &[],
        ));
        return run;
    }
    // Demo card numbers are 1000000000 + account, so the cursor names the next account.
    let mut account = sync.after.map_or(1, |e| e.card.0.saturating_sub(demo_card(0).0) + 1);
    let mut in_run = 0;
    for i in 0..DOOR_RUN_PAGES {
        let entries: Vec<DoorCacheEntry> = (account..=accounts)
            .take(per_page.min(DOOR_RUN_ENTRIES - in_run))
            .map(|a| DoorCacheEntry {
                card: demo_card(a),
                schedule: DOOR_SCHEDULE_ALWAYS,
                valid_from_min: 0,
                valid_to_min: DOOR_VALID_FOREVER,
            })
            .collect();
        account += entries.len() as u64;
        in_run += entries.len();
        let done = account > accounts;
        let mut flags = 0;
        if i == 0 && sync.after.is_none() {
            flags |= DOOR_PAGE_FIRST;
        }
        if done || i + 1 == DOOR_RUN_PAGES || in_run == DOOR_RUN_ENTRIES {
            flags |= DOOR_PAGE_LAST_IN_RUN;
            if !done {
                flags |= DOOR_PAGE_MORE;
            }
        }
        run.extend(page(DoorCachePageKind::Full, flags, 0, &entries));
        if flags & DOOR_PAGE_LAST_IN_RUN != 0 {
            break;
        }
    }
    run
}

fn answer(frame: Frame) -> Result<Reply, ErrorCode> {
    let id = frame.request_id;
    let message = match frame.message {
        Message::Purchase(p) => Message::Approved(Approved {
            tx_seq: p.tx_seq,
            tx_id: TX_IDS.fetch_add(1, Ordering::Relaxed),
            card: p.card,
            amount_fen: p.amount_fen,
            balance_fen: BALANCE_FEN,
            time_ms: now_ms(),
        }),
        Message::Reversal(r) => Message::Approved(Approved {
            tx_seq: r.tx_seq,
            tx_id: TX_IDS.fetch_add(1, Ordering::Relaxed),
            card: r.card,
            amount_fen: r.amount_fen,
            balance_fen: BALANCE_FEN,
            time_ms: now_ms(),
        }),
        Message::BalanceInquiry(b) => Message::Balance(Balance {
            card: b.card,
            status: CardStatusCode::Active,
            balance_fen: BALANCE_FEN,
            spent_today_fen: 0,
            daily_limit_fen: 0,
        }),
        Message::Heartbeat(_) => Message::HeartbeatAck(HeartbeatAck {
            server_time_ms: now_ms(),
            blacklist_version: 0,
        }),
        Message::BlacklistAck(_) | Message::DoorCacheAck(_) => return Ok(Reply::Nothing),
        Message::AccessCheck(c) => Message::AccessResult(AccessResult {
            event_seq: c.event_seq,
            card: c.card,
            door: c.door,
            reason: AccessReason::Granted,
            cache_version: DOOR_CACHE_VERSION,
            gateway_time_ms: now_ms(),
        }),
        Message::Punch(p) => Message::PunchResult(PunchResult {
            event_seq: p.event_seq,
            card: p.card,
            status: PunchStatus::Recorded,
            gateway_time_ms: now_ms(),
        }),
        Message::DoorCacheSync(sync) => return Ok(Reply::Run(id, sync)),
        _ => return Err(ErrorCode::UnexpectedMessage),
    };
    Ok(Reply::One((id, message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries of a whole listing, run by run, as a controller asking for
    /// `page_entries_max` reads them; and the runs' sizes.
    fn listing(page_entries_max: u16) -> (Vec<u64>, Vec<usize>) {
        let mut cards = Vec::new();
        let mut runs = Vec::new();
        let mut after = None;
        loop {
            let run = door_run(DoorCacheSync {
                have_version: 0,
                after,
                page_entries_max,
            });
            let mut in_run = 0;
            let mut more = false;
            for m in &run {
                let entries: Vec<DoorCacheEntry> = match m {
                    Message::DoorCachePage(p) if page_entries_max == 0 => p.added_entries().collect(),
                    Message::DoorCacheBulk(p) if page_entries_max > 0 => p.added_entries().collect(),
                    Message::DoorHolidays(_) => continue,
                    other => panic!("asked for {page_entries_max}, got {other:?}"),
                };
                in_run += entries.len();
                cards.extend(entries.iter().map(|e| e.card.0));
                after = entries.last().copied().or(after);
                more = m.door_page_flags().is_some_and(|f| f & DOOR_PAGE_MORE != 0);
            }
            runs.push(in_run);
            if !more {
                return (cards, runs);
            }
        }
    }

    #[test]
    fn a_listing_comes_as_asked_in_runs_as_cardgate_bounds_them() {
        ACCOUNTS.store(10_000, Ordering::Relaxed);
        let all: Vec<u64> = (1..=10_000).map(|a| demo_card(a).0).collect();
        for (asked, per_run) in [(0u16, 128usize), (512, 4_096), (300, 4_096), (3, 96)] {
            let (cards, runs) = listing(asked);
            assert_eq!(cards, all, "asked {asked}: every card once, in order");
            assert!(runs.iter().all(|&n| n <= per_run), "asked {asked}: {runs:?}");
            assert_eq!(runs.len(), 10_000usize.div_ceil(per_run), "asked {asked}");
        }
        // A current controller gets one empty delta page of the kind it asked for.
        for (asked, bulk) in [(0u16, false), (512, true)] {
            let run = door_run(DoorCacheSync {
                have_version: DOOR_CACHE_VERSION,
                after: None,
                page_entries_max: asked,
            });
            assert_eq!(matches!(run.last(), Some(Message::DoorCacheBulk(_))), bulk, "{run:?}");
        }
    }
}
