//! One terminal connection: sign-on, then requests and answers until either side ends it.
//!
//! The connection reads frames in order and makes each decision before reading the next,
//! so a terminal's sequence numbers reach the ledger in the order it sent them. Answers
//! wait for their commit in a queue of at most `pipeline_depth_max`; while the queue is
//! full the connection stops reading, which is the terminal's backpressure. Every exit
//! path first answers what was decided, then sends an ERROR frame saying why it closes.
//!
//! A verified sign-on makes the connection its terminal's one session (`server`'s
//! admission): an older session of the same terminal is told to close (`superseded`),
//! and a sign-on over `limits.connections_max` terminals is refused (`overloaded`).
//!
//! Logging: whatever anyone on the network can cause (a refused sign-on, a connection
//! closed before or during sign-on, an idle timeout, a superseded session) is logged at
//! debug and counted (`cardgate_sign_ons_total{result}`,
//! `cardgate_connections_refused_total{code}`); only a signed-on terminal breaking the
//! protocol is logged at info.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use cardgate_codec::codec::Frame;
use cardgate_codec::crypto::SignOnInput;
use cardgate_codec::{
    BlacklistPush, Challenge, CodecError, DoorCachePush, DoorEvent, DoorEventsBatch, ErrorCode, ErrorFrame,
    HeartbeatAck, Message, OfflineBatch, OfflineSale, SIGN_ON_OFFLINE_LIMITS, Side, SignOnOk, TerminalCodec,
};
use cardgate_domain::model::TerminalKind;
use cardgate_ledger::{Ledger, Pending};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::{CancellationToken, ReusableBoxFuture};

use crate::admission::{Closer, Connection, SignOn};
use crate::config::Limits;
use crate::gate::Gate;
use crate::metrics::RequestKind;

/// Initial read and write buffer of a connection: a few frames. A terminal's frames are
/// under 100 bytes; the buffer grows only for a terminal that pipelines deeply.
const CONNECTION_BUF_BYTES: usize = 1024;

/// How long we try to deliver a closing ERROR frame to a peer that is not reading.
const ERROR_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a connection the gateway closes (superseded, or closed in sign-on to make
/// room) may take to deliver the answers it owes before it is dropped without them. The
/// terminal retries those on its new connection; a peer that stopped reading must not
/// keep its descriptor and place in the limits until TCP gives up on it.
const CLOSING_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

type Conn = Framed<TcpStream, TerminalCodec>;

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// The terminal closed the connection between frames.
    PeerClosed,
    /// The connection broke (reset, EOF inside a frame).
    Broken(std::io::Error),
    /// We close it, telling the terminal why.
    Refuse(ErrorCode),
}

impl End {
    fn from_codec(e: CodecError) -> End {
        match e {
            CodecError::Io(io) => End::Broken(io),
            other => End::Refuse(other.error_code()),
        }
    }
}

/// Counts open connections for as long as it lives.
struct ConnectionGauge;

impl ConnectionGauge {
    fn new() -> ConnectionGauge {
        metrics::gauge!("cardgate_connections").increment(1.0);
        ConnectionGauge
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!("cardgate_connections").decrement(1.0);
    }
}

pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ledger: Arc<Ledger>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    mut connection: Connection,
) {
    let _gauge = ConnectionGauge::new();
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::with_capacity(stream, TerminalCodec::new(Side::Gateway), CONNECTION_BUF_BYTES);

    let sign_on_timeout = Duration::from_millis(limits.sign_on_timeout_ms);
    let closer = connection.closer();
    // Subscribed before sign-on reads whether the terminal is enabled: a disable in
    // between is then a notice the session sees.
    let notices = ledger.terminal_notices();
    let mut claimed = None;
    let signed_on = tokio::select! {
        r = tokio::time::timeout(sign_on_timeout, sign_on(&mut conn, &ledger, &limits, &mut connection, &mut claimed)) => match r {
            Ok(r) => r,
            Err(_) => Err(End::Refuse(ErrorCode::SignOnTimeout)),
        },
        code = closer.closed() => Err(End::Refuse(code)),
        _ = shutdown.cancelled() => Err(End::Refuse(ErrorCode::ShuttingDown)),
    };
    let (terminal_id, end) = match signed_on {
        Ok((terminal_id, drift_ms)) => {
            metrics::counter!("cardgate_sign_ons_total", "result" => "ok").increment(1);
            ledger.session_opened(terminal_id, drift_ms).await;
            if matches!(
                ledger.terminal_kind(terminal_id),
                Some(TerminalKind::Door | TerminalKind::Attendance)
            ) {
                ledger.door_clock_drift(terminal_id, drift_ms);
            }
            tracing::debug!(terminal.id = terminal_id, %peer, "signed on");
            // Closed by the gateway and still not done: drop what it owes.
            let drain_cut = async {
                let code = closer.closed().await;
                tokio::time::sleep(CLOSING_DRAIN_TIMEOUT).await;
                code
            };
            tokio::pin!(drain_cut);
            let drain_gate = Gate::default();
            let end = tokio::select! {
                end = session(&mut conn, terminal_id, &ledger, &limits, &shutdown, &closer, notices) => end,
                code = drain_gate.wait(drain_cut.as_mut()) => End::Refuse(code),
            };
            ledger.session_closed(terminal_id).await;
            (Some(terminal_id), end)
        }
        Err(end) => {
            let result = match &end {
                End::Refuse(ErrorCode::AuthFailed) => "auth_failed",
                End::Refuse(ErrorCode::TerminalDisabled) => "disabled",
                End::Refuse(ErrorCode::SignOnTimeout) => "timeout",
                End::Refuse(ErrorCode::Overloaded) => "overloaded",
                _ => "aborted",
            };
            metrics::counter!("cardgate_sign_ons_total", "result" => result).increment(1);
            (None, end)
        }
    };
    // Before sign-on, the id the terminal claimed (unauthenticated); after, its own.
    let id = terminal_id.or(claimed);
    let authenticated = terminal_id.is_some();
    match end {
        End::PeerClosed => {
            tracing::debug!(terminal.id = %TerminalId(id), authenticated, %peer, "terminal closed the connection")
        }
        End::Broken(e) => {
            tracing::debug!(terminal.id = %TerminalId(id), authenticated, %peer, error = %e, "connection broke")
        }
        End::Refuse(code) => {
            metrics::counter!("cardgate_connections_refused_total", "code" => code.as_str()).increment(1);
            if logged_at_info(code, authenticated) {
                tracing::info!(terminal.id = %TerminalId(id), authenticated, %peer, code = code.as_str(), "closing terminal connection");
            } else if code != ErrorCode::ShuttingDown {
                tracing::debug!(terminal.id = %TerminalId(id), authenticated, %peer, code = code.as_str(), "closing terminal connection");
            }
            let frame = Message::Error(ErrorFrame { code, detail: 0 });
            let _ = tokio::time::timeout(ERROR_SEND_TIMEOUT, conn.send((0, frame))).await;
        }
    }
}

/// A terminal id in a log line: the number, or `none` when no HELLO came.
struct TerminalId(Option<u64>);

impl std::fmt::Display for TerminalId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("none"),
        }
    }
}

/// Whether closing a connection with `code` is worth an info line. Not when anyone on
/// the network can cause it (everything before sign-on) or it is routine for a
/// signed-on terminal (idle, superseded by its own new connection, shutdown): those are
/// counted, and logged at debug. A signed-on terminal breaking the protocol is a
/// terminal to look at.
fn logged_at_info(code: ErrorCode, authenticated: bool) -> bool {
    authenticated
        && !matches!(
            code,
            ErrorCode::IdleTimeout | ErrorCode::Superseded | ErrorCode::ShuttingDown | ErrorCode::Overloaded
        )
}

async fn next_frame(conn: &mut Conn) -> Result<Frame, End> {
    match conn.next().await {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(e)) => Err(End::from_codec(e)),
        None => Err(End::PeerClosed),
    }
}

async fn send(conn: &mut Conn, request_id: u32, message: Message) -> Result<(), End> {
    conn.send((request_id, message)).await.map_err(End::from_codec)
}

/// HELLO → CHALLENGE → PROOF → SIGN_ON_OK. An unknown terminal gets a challenge like any
/// other and fails at the proof, so the gateway does not reveal which ids exist. The id a
/// HELLO claims is noted in `claimed` for the log of a sign-on that fails.
async fn sign_on(
    conn: &mut Conn,
    ledger: &Ledger,
    limits: &Limits,
    connection: &mut Connection,
    claimed: &mut Option<u64>,
) -> Result<(u64, i64), End> {
    let frame = next_frame(conn).await?;
    let Message::Hello(hello) = frame.message else {
        return Err(End::Refuse(ErrorCode::UnexpectedMessage));
    };
    *claimed = Some(hello.terminal_id);
    let known = ledger.sign_on_secrets(hello.terminal_id);
    let input = SignOnInput {
        terminal_id: hello.terminal_id,
        terminal_nonce: hello.terminal_nonce,
        gateway_nonce: rand::random(),
    };
    let challenge = Challenge {
        gateway_nonce: input.gateway_nonce,
        server_time_ms: ledger.now_ms(),
    };
    send(conn, frame.request_id, Message::Challenge(challenge)).await?;

    let frame = next_frame(conn).await?;
    let Message::Proof(proof) = frame.message else {
        return Err(End::Refuse(ErrorCode::UnexpectedMessage));
    };
    let Some(known) = known else {
        return Err(End::Refuse(ErrorCode::AuthFailed));
    };
    // During a rekey's overlap the previous key signs on too; the session keys derive
    // from whichever key the terminal proved.
    let secret = if input.verify_proof(&known.current, &proof.proof) {
        known.current
    } else {
        match known.previous {
            Some(previous) if input.verify_proof(&previous, &proof.proof) => {
                metrics::counter!("cardgate_sign_ons_previous_key_total").increment(1);
                previous
            }
            _ => return Err(End::Refuse(ErrorCode::AuthFailed)),
        }
    };
    // Told only to a terminal that proved its key: others learn nothing of the registry.
    // Read after the caller subscribed to the terminal notices, so that a disable
    // between this read and the session's loop still reaches the session.
    if !ledger.terminal_enabled(hello.terminal_id) {
        return Err(End::Refuse(ErrorCode::TerminalDisabled));
    }
    // A door controller's or attendance clock's sequence is its events' (PROTOCOL.md
    // 11.2).
    let kind = ledger.terminal_kind(hello.terminal_id);
    let last_tx_seq = match kind {
        Some(TerminalKind::Door | TerminalKind::Attendance) => ledger.controller_last_event(hello.terminal_id),
        _ => known.last_seq,
    };
    match connection.signed_on(hello.terminal_id) {
        SignOn::New => {}
        SignOn::Superseded => {
            metrics::counter!("cardgate_sessions_superseded_total").increment(1);
            tracing::debug!(
                terminal.id = hello.terminal_id,
                "signed on again: closing its older session"
            );
        }
        SignOn::Full => return Err(End::Refuse(ErrorCode::Overloaded)),
    }
    ledger.touch_terminal(hello.terminal_id);
    conn.codec_mut().install_session(input.session_keys(&secret));
    let now = ledger.now_ms();
    // The terminal's clock against ours, as HELLO stated it (the completeness report's
    // drift; the round trip of sign-on is small beside what it is for).
    let drift_ms = hello.terminal_time_ms.saturating_sub(now);
    let offline = ledger.offline_limits(hello.terminal_id);
    let ok = SignOnOk {
        server_time_ms: now,
        last_tx_seq,
        // Only durable versions are announced (docs/PROTOCOL-blacklist.md).
        blacklist_version: ledger.blacklist().published(),
        heartbeat_interval_s: limits.heartbeat_interval_s,
        pipeline_depth_max: limits.pipeline_depth_max,
        flags: if offline.is_some() { SIGN_ON_OFFLINE_LIMITS } else { 0 },
    };
    conn.feed((frame.request_id, Message::SignOnOk(ok)))
        .await
        .map_err(End::from_codec)?;
    if let Some(o) = offline {
        conn.feed((0, Message::OfflineLimits(o)))
            .await
            .map_err(End::from_codec)?;
    }
    conn.flush().await.map_err(End::from_codec)?;
    Ok((hello.terminal_id, drift_ms))
}

/// An answer on its way: the request it answers, when it arrived, and its kind (its
/// latency is recorded by kind and by what the answer says).
struct InFlight {
    request_id: u32,
    received: Instant,
    kind: RequestKind,
    pending: Pending,
}

async fn session(
    conn: &mut Conn,
    terminal_id: u64,
    ledger: &Ledger,
    limits: &Limits,
    shutdown: &CancellationToken,
    closer: &Closer,
    notices: broadcast::Receiver<u64>,
) -> End {
    let depth = usize::from(limits.pipeline_depth_max);
    let idle_timeout = Duration::from_millis(limits.idle_timeout_ms);
    let mut inflight: VecDeque<InFlight> = VecDeque::with_capacity(depth);
    // An offline upload being received: its OFFLINE_BATCH and the sales so far. The
    // buffer is kept for the session, so a batch allocates nothing.
    let mut upload = Upload::default();
    let kind = ledger.terminal_kind(terminal_id).unwrap_or(TerminalKind::Pos);
    let mut doors = DoorUpload::default();
    // A door controller's cache version as last announced to it (SIGN_ON_OK does not
    // carry it: the controller syncs after sign-on and learns it there).
    let mut door_version = ledger.controller_cache_version(terminal_id);
    let mut door_changes = ledger.door_cache_changes();
    door_changes.mark_unchanged();
    let mut door_changed = ReusableBoxFuture::new(next_version(door_changes));
    let mut door_open = kind == TerminalKind::Door;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut end: Option<End> = None;
    // Blacklist versions as they become durable; the one at sign-on went in SIGN_ON_OK.
    // Both waits live across turns of the loop: a wait made afresh each turn registers
    // and unregisters itself under a lock every session shares, once per frame.
    let mut blacklist = ledger.blacklist().subscribe();
    blacklist.mark_unchanged();
    let mut blacklist_changed = ReusableBoxFuture::new(next_version(blacklist));
    let mut blacklist_open = true;
    // Notices of disabled terminals, waited on across turns like the blacklist.
    let mut disabled = ReusableBoxFuture::new(disabled_notice(notices, terminal_id, ledger));
    let mut notices_open = true;
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let closed = closer.closed();
    tokio::pin!(closed);
    // The rare waits, polled only after one of their own sources woke them (gate.rs).
    // They share one gate: a session's task is polled for every frame and every answer,
    // and each gate registers the task's waker at each poll.
    let rare_gate = Gate::default();

    loop {
        if end.is_some() && inflight.is_empty() {
            break;
        }
        let (blacklist_on, door_on, notices_on) = (blacklist_open, door_open, notices_open);
        tokio::select! {
            biased;
            answer = oldest(&mut inflight), if !inflight.is_empty() => {
                if let Err(e) = write_answers(conn, &mut inflight, answer).await {
                    return e;
                }
            }
            frame = conn.next(), if end.is_none() && inflight.len() < depth => {
                match frame {
                    None => end = Some(End::PeerClosed),
                    Some(Err(e)) => {
                        let e = End::from_codec(e);
                        if let End::Broken(_) = e {
                            return e;
                        }
                        end = Some(e);
                    }
                    Some(Ok(frame)) => {
                        idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                        if let Err(e) = handle(frame, terminal_id, kind, ledger, &mut inflight, &mut upload, &mut doors).await {
                            end = Some(e);
                        }
                    }
                }
            }
            rare = rare_gate.wait_with(|cx| {
                if blacklist_on && let Poll::Ready((rx, version)) = blacklist_changed.get_pin().poll(cx) {
                    return Poll::Ready(Rare::Blacklist(rx, version));
                }
                if door_on && let Poll::Ready((rx, changed)) = door_changed.get_pin().poll(cx) {
                    return Poll::Ready(Rare::DoorCache(rx, changed));
                }
                if notices_on && let Poll::Ready((rx, notice)) = disabled.get_pin().poll(cx) {
                    return Poll::Ready(Rare::Notice(rx, notice));
                }
                if cancelled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Rare::ShuttingDown);
                }
                closed.as_mut().poll(cx).map(Rare::Closed)
            }), if end.is_none() => match rare {
                Rare::Blacklist(_, None) => blacklist_open = false,
                Rare::Blacklist(rx, Some(version)) => {
                    blacklist_changed.set(next_version(rx));
                    match kind {
                        // A card lost or found moves every door group's cache version.
                        TerminalKind::Door => door_push(ledger, terminal_id, &mut door_version, &mut inflight),
                        TerminalKind::Attendance => {}
                        TerminalKind::Pos | TerminalKind::Kiosk => {
                            metrics::counter!("cardgate_blacklist_pushes_total").increment(1);
                            let push = BlacklistPush {
                                version,
                                server_time_ms: ledger.now_ms(),
                            };
                            // Unsolicited: request id 0, queued behind the answers already owed.
                            inflight.push_back(InFlight {
                                request_id: 0,
                                received: Instant::now(),
                                kind: RequestKind::BlacklistPush,
                                pending: Pending::ready(Message::BlacklistPush(push)),
                            });
                        }
                    }
                }
                Rare::DoorCache(_, None) => door_open = false,
                Rare::DoorCache(rx, Some(_)) => {
                    door_changed.set(next_version(rx));
                    door_push(ledger, terminal_id, &mut door_version, &mut inflight);
                }
                Rare::Notice(rx, notice) => match notice {
                    Notice::Disabled => end = Some(End::Refuse(ErrorCode::TerminalDisabled)),
                    Notice::Enabled => disabled.set(disabled_notice(rx, terminal_id, ledger)),
                    Notice::Gone => notices_open = false,
                },
                Rare::ShuttingDown => end = Some(End::Refuse(ErrorCode::ShuttingDown)),
                Rare::Closed(code) => end = Some(End::Refuse(code)),
            },
            _ = &mut idle, if end.is_none() => end = Some(End::Refuse(ErrorCode::IdleTimeout)),
        }
    }
    end.unwrap_or(End::PeerClosed)
}

/// What woke a session's rare waits: a durable blacklist or door cache version (`None`:
/// the ledger is gone), a terminal notice, shutdown, or its closer. Each wait's receiver
/// comes back with it, to re-arm the wait.
enum Rare {
    Blacklist(watch::Receiver<u64>, Option<u64>),
    DoorCache(watch::Receiver<u64>, Option<u64>),
    Notice(broadcast::Receiver<u64>, Notice),
    ShuttingDown,
    Closed(ErrorCode),
}

enum Notice {
    Disabled,
    /// A notice came (or some were missed) and the terminal is still enabled.
    Enabled,
    /// The ledger is gone.
    Gone,
}

/// Waits for a notice naming this terminal (or a gap in the notices) and re-reads
/// whether it is enabled, handing the receiver back to re-arm the wait.
async fn disabled_notice(
    mut rx: broadcast::Receiver<u64>,
    terminal_id: u64,
    ledger: &Ledger,
) -> (broadcast::Receiver<u64>, Notice) {
    loop {
        match rx.recv().await {
            Ok(id) if id != terminal_id => continue,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                let notice = if ledger.terminal_enabled(terminal_id) {
                    Notice::Enabled
                } else {
                    Notice::Disabled
                };
                return (rx, notice);
            }
            Err(broadcast::error::RecvError::Closed) => return (rx, Notice::Gone),
        }
    }
}

/// The next durable blacklist version (`None`: the ledger is gone), handing the
/// receiver back so that the wait can be re-armed in the same allocation.
async fn next_version(mut rx: watch::Receiver<u64>) -> (watch::Receiver<u64>, Option<u64>) {
    let version = match rx.changed().await {
        Ok(()) => Some(*rx.borrow_and_update()),
        Err(_) => None,
    };
    (rx, version)
}

/// Resolves when the oldest answer's commit is done. Commits complete in submission
/// order, so waiting on the oldest costs nothing.
async fn oldest(inflight: &mut VecDeque<InFlight>) -> cardgate_codec::Message {
    let front = inflight.front_mut().expect("called only when something is in flight");
    (&mut front.pending).await
}

/// Writes the oldest answer and every other one already resolved, then flushes once.
async fn write_answers(conn: &mut Conn, inflight: &mut VecDeque<InFlight>, first: Message) -> Result<(), End> {
    let mut answer = first;
    loop {
        let f = inflight.pop_front().expect("an answer came from the queue");
        crate::metrics::request_seconds(f.kind, &answer).record(f.received.elapsed().as_secs_f64());
        // An answer that is an ERROR (the journal failed under a door cache sync or a
        // punch) is not an answer: ERROR carries request id 0 and closes the connection
        // (PROTOCOL.md 6.7), after what was already answered; the rest of a run is not
        // sent after it.
        if let Message::Error(e) = answer {
            conn.flush().await.map_err(End::from_codec)?;
            inflight.clear();
            return Err(End::Refuse(e.code));
        }
        conn.feed((f.request_id, answer)).await.map_err(End::from_codec)?;
        match inflight.front_mut().and_then(|next| (&mut next.pending).now_or_never()) {
            Some(next) => answer = next,
            None => break,
        }
    }
    conn.flush().await.map_err(End::from_codec)
}

/// Queues a DOOR_CACHE_PUSH when the controller's group has a newer durable version
/// than the one last announced to it.
fn door_push(ledger: &Ledger, terminal_id: u64, announced: &mut u64, inflight: &mut VecDeque<InFlight>) {
    let version = ledger.controller_cache_version(terminal_id);
    if version <= *announced {
        return;
    }
    *announced = version;
    metrics::counter!("cardgate_door_cache_pushes_total").increment(1);
    inflight.push_back(InFlight {
        request_id: 0,
        received: Instant::now(),
        kind: RequestKind::DoorCachePush,
        pending: Pending::ready(Message::DoorCachePush(DoorCachePush {
            version,
            server_time_ms: ledger.now_ms(),
        })),
    });
}

/// A door controller's offline event upload in progress (docs/PROTOCOL.md 11.5).
#[derive(Default)]
struct DoorUpload {
    batch: Option<(u32, DoorEventsBatch, Instant)>,
    events: Vec<DoorEvent>,
}

/// Whether a terminal of `kind` may send `m` (docs/PROTOCOL.md section 11): door
/// controllers and attendance clocks only their own messages, the others none of those.
fn allowed(kind: TerminalKind, m: &Message) -> bool {
    let door = matches!(
        m,
        Message::AccessCheck(_)
            | Message::DoorCacheSync(_)
            | Message::DoorCacheAck(_)
            | Message::DoorEventsBatch(_)
            | Message::DoorEvent(_)
    );
    let punch = matches!(m, Message::Punch(_));
    match kind {
        TerminalKind::Door => door || matches!(m, Message::Heartbeat(_)),
        TerminalKind::Attendance => punch || matches!(m, Message::Heartbeat(_)),
        TerminalKind::Pos | TerminalKind::Kiosk => !door && !punch,
    }
}

/// An offline upload in progress (docs/PROTOCOL.md 8.6).
#[derive(Default)]
struct Upload {
    /// The batch's request id, header and arrival, while its sales arrive.
    batch: Option<(u32, OfflineBatch, Instant)>,
    sales: Vec<OfflineSale>,
}

async fn handle(
    frame: Frame,
    terminal_id: u64,
    kind: TerminalKind,
    ledger: &Ledger,
    inflight: &mut VecDeque<InFlight>,
    upload: &mut Upload,
    doors: &mut DoorUpload,
) -> Result<(), End> {
    let received = Instant::now();
    if !allowed(kind, &frame.message) {
        metrics::counter!("cardgate_door_unexpected_messages_total", "kind" => kind.as_str()).increment(1);
        return Err(End::Refuse(ErrorCode::UnexpectedMessage));
    }
    // While a door event batch is announced, only its events may come.
    if let Some((request_id, batch, started)) = doors.batch {
        let Message::DoorEvent(event) = frame.message else {
            return Err(End::Refuse(ErrorCode::UnexpectedMessage));
        };
        doors.events.push(event);
        if doors.events.len() < usize::from(batch.count) {
            return Ok(());
        }
        doors.batch = None;
        let pending = ledger.door_events_frame(terminal_id, &batch, &doors.events).await;
        doors.events.clear();
        inflight.push_back(InFlight {
            request_id,
            received: started,
            kind: RequestKind::DoorEventsUpload,
            pending,
        });
        return Ok(());
    }
    match frame.message {
        Message::AccessCheck(c) => {
            let pending = ledger.access_check_frame(terminal_id, &c).await;
            if let Message::AccessResult(r) = pending.peek()
                && r.reason == cardgate_codec::AccessReason::WrongGroup
            {
                metrics::counter!("cardgate_door_wrong_group_total").increment(1);
            }
            inflight.push_back(InFlight {
                request_id: frame.request_id,
                received,
                kind: RequestKind::AccessCheck,
                pending,
            });
            return Ok(());
        }
        Message::Punch(p) => {
            let pending = ledger.punch_frame(terminal_id, &p).await;
            inflight.push_back(InFlight {
                request_id: frame.request_id,
                received,
                kind: RequestKind::Punch,
                pending,
            });
            return Ok(());
        }
        Message::DoorCacheSync(sync) => {
            for pending in ledger.door_cache_sync_frames(terminal_id, &sync).await {
                inflight.push_back(InFlight {
                    request_id: frame.request_id,
                    received,
                    kind: RequestKind::DoorCacheSync,
                    pending,
                });
            }
            return Ok(());
        }
        Message::DoorCacheAck(a) => {
            ledger.door_cache_ack_frame(terminal_id, a.version);
            return Ok(());
        }
        Message::DoorEventsBatch(batch) => {
            if batch.count == 0 || batch.count > cardgate_codec::DOOR_EVENTS_BATCH_MAX {
                // Refused at once; its events, should they come, are unexpected.
                let pending = ledger.door_events_frame(terminal_id, &batch, &[]).await;
                inflight.push_back(InFlight {
                    request_id: frame.request_id,
                    received,
                    kind: RequestKind::DoorEventsUpload,
                    pending,
                });
            } else {
                doors.batch = Some((frame.request_id, batch, received));
            }
            return Ok(());
        }
        Message::DoorEvent(_) => return Err(End::Refuse(ErrorCode::UnexpectedMessage)),
        _ => {}
    }
    // While a batch is announced, only its sales may come.
    if let Some((request_id, batch, started)) = upload.batch {
        let Message::OfflineSale(sale) = frame.message else {
            return Err(End::Refuse(ErrorCode::UnexpectedMessage));
        };
        upload.sales.push(sale);
        if upload.sales.len() < usize::from(batch.count) {
            return Ok(());
        }
        upload.batch = None;
        let pending = ledger.offline_upload(terminal_id, &batch, &upload.sales).await;
        upload.sales.clear();
        inflight.push_back(InFlight {
            request_id,
            received: started,
            kind: RequestKind::OfflineUpload,
            pending,
        });
        return Ok(());
    }
    let (kind, pending) = match frame.message {
        Message::BlacklistSync(s) => {
            // A run of pages, answered in order; the first waits for a barrier.
            let pages = ledger.blacklist_sync(s.since_version, s.after_card).await;
            if pages.is_empty() {
                return Err(End::Refuse(ErrorCode::ServerError));
            }
            for pending in pages {
                inflight.push_back(InFlight {
                    request_id: frame.request_id,
                    received,
                    kind: RequestKind::BlacklistSync,
                    pending,
                });
            }
            return Ok(());
        }
        Message::BlacklistAck(a) => {
            blacklist_ack(ledger, terminal_id, a.version);
            return Ok(());
        }
        Message::Purchase(p) => (RequestKind::Purchase, ledger.purchase(terminal_id, &p).await),
        Message::Reversal(r) => (RequestKind::Reversal, ledger.reversal(terminal_id, &r).await),
        Message::BalanceInquiry(b) => (RequestKind::Balance, ledger.balance(terminal_id, b.card).await),
        Message::OfflineBatch(batch) => {
            let limit = ledger.offline_limits(terminal_id).map_or(0, |l| l.batch_max);
            if batch.count == 0 || batch.count > limit {
                // Refused at once (its sales, should it send them, are unexpected): a
                // terminal never holds a batch above the limit it was told.
                (
                    RequestKind::OfflineUpload,
                    ledger.offline_upload(terminal_id, &batch, &[]).await,
                )
            } else {
                upload.batch = Some((frame.request_id, batch, received));
                return Ok(());
            }
        }
        Message::Heartbeat(h) => {
            ledger.touch_terminal(terminal_id);
            blacklist_ack(ledger, terminal_id, h.blacklist_version);
            let ack = HeartbeatAck {
                server_time_ms: ledger.now_ms(),
                blacklist_version: ledger.blacklist().published(),
            };
            (RequestKind::Heartbeat, Pending::ready(Message::HeartbeatAck(ack)))
        }
        _ => return Err(End::Refuse(ErrorCode::UnexpectedMessage)),
    };
    inflight.push_back(InFlight {
        request_id: frame.request_id,
        received,
        kind,
        pending,
    });
    Ok(())
}

/// Records the blacklist version a terminal says it holds; one above every version the
/// gateway issued is not believed (`Ledger::blacklist_ack`), and counted.
fn blacklist_ack(ledger: &Ledger, terminal_id: u64, version: u64) {
    if !ledger.blacklist_ack(terminal_id, version) {
        metrics::counter!("cardgate_blacklist_future_acks_total").increment(1);
        tracing::debug!(
            terminal.id = terminal_id,
            version,
            "acknowledged a blacklist version never issued"
        );
    }
}
