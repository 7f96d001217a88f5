//! Terminals as connections, against the real daemon: one session per terminal (a
//! sign-on replaces the terminal's silent old session at once), the connection limit
//! (connections that never sign on go first), lengths refused from the header, blacklist
//! versions the gateway never issued, and what is logged at info.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cardgate::server::SIGN_ON_HEADROOM;
use cardgate_codec::codec::Frame;
use cardgate_codec::frame::msg_type;
use cardgate_codec::{BlacklistAck, ErrorCode, FRAME_LEN_MAX, Message, PROTOCOL_VERSION, Side, TerminalCodec};
use cardgate_loadtest::client::{ClientError, TerminalClient};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::harness::*;

/// Far below the sign-on timeout (60 s in these tests) and the idle timeout (120 s): a
/// terminal served within it did not wait for either to free a place.
const SERVED_WITHIN: Duration = Duration::from_secs(15);

/// Generous: how long to wait for something the daemon does by itself.
const EVENTUALLY: Duration = Duration::from_secs(30);

/// A daemon with a configuration file holding `limits` (TOML lines).
fn daemon_with_limits(dir: &Path, limits: &str) -> Daemon {
    let config = dir.join("cardgate.toml");
    std::fs::write(&config, format!("[limits]\n{limits}\n")).unwrap();
    let data = dir.join("data");
    Daemon::start_with(&data, &["--config", config.to_str().unwrap()])
}

/// Reads frames until an ERROR, which must be `code`, and then the close.
async fn expect_error_and_close(framed: &mut Framed<TcpStream, TerminalCodec>, code: ErrorCode) {
    loop {
        match tokio::time::timeout(EVENTUALLY, framed.next()).await.expect("an ERROR") {
            Some(Ok(Frame {
                message: Message::Error(e),
                ..
            })) => {
                assert_eq!(e.code, code);
                break;
            }
            // A blacklist push may come first; nothing else may.
            Some(Ok(Frame {
                message: Message::BlacklistPush(_),
                ..
            })) => {}
            other => panic!("expected ERROR {code:?}, got {other:?}"),
        }
    }
    let end = tokio::time::timeout(EVENTUALLY, framed.next())
        .await
        .expect("the close");
    assert!(
        end.is_none() || matches!(end, Some(Err(_))),
        "the connection must close, got {end:?}"
    );
}

async fn sign_on_within(d: &Daemon, id: u64, limit: Duration) -> Result<TerminalClient, ClientError> {
    tokio::time::timeout(limit, TerminalClient::connect(d.terminal_addr(), id, &secret(id)))
        .await
        .unwrap_or_else(|_| panic!("terminal {id} was not served within {limit:?}"))
}

/// Polls a metric until it has `want`.
async fn metric_reaches(d: &Daemon, series: &str, want: f64) {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let got = d.metric(series).unwrap_or(0.0);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {got}, expected {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn approved(m: &Message) -> &cardgate_codec::Approved {
    match m {
        Message::Approved(a) => a,
        other => panic!("expected an approval, got {other:?}"),
    }
}

/// After a power cut, a canteen's terminals sign on again while the gateway still holds
/// their old sessions (silent: the dead terminals sent no FIN) and is at its limit.
#[tokio::test]
async fn a_terminal_signing_on_again_replaces_its_silent_session_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_with_limits(dir.path(), "connections_max = 4\nsign_on_timeout_ms = 60000");
    let mut old = Vec::new();
    for id in 1..=4 {
        old.push(d.terminal(id).await);
    }
    approved(&old[0].purchase(1, card(1), 5_00).await.unwrap());
    // The limit is four terminals: a fifth is refused, not left waiting.
    let r = sign_on_within(&d, 5, SERVED_WITHIN).await;
    assert!(
        matches!(r, Err(ClientError::Refused(ErrorCode::Overloaded))),
        "{:?}",
        r.err()
    );
    // The power comes back: each terminal signs on again and is served at once.
    let mut new = Vec::new();
    for id in 1..=4 {
        let t = sign_on_within(&d, id, SERVED_WITHIN).await.expect("signs on");
        assert_eq!(t.sign_on.last_tx_seq, if id == 1 { 1 } else { 0 });
        new.push(t);
    }
    // Each old session was closed, saying why.
    for mut o in old {
        expect_error_and_close(o.framed_mut(), ErrorCode::Superseded).await;
    }
    // The new sessions work, and the gateway still remembers the old session's numbers.
    let first = new[0].purchase(2, card(1), 5_00).await.unwrap();
    assert_eq!(approved(&first).balance_fen, DEMO_BALANCE_FEN - 10_00);
    assert!(matches!(
        new[0].purchase(1, card(1), 5_00).await.unwrap(),
        Message::Approved(a) if a.balance_fen == DEMO_BALANCE_FEN - 5_00
    ));
    assert_eq!(d.metric("cardgate_sessions_superseded_total"), Some(4.0));
    assert_eq!(
        d.metric("cardgate_connections_refused_total{code=\"superseded\"}"),
        Some(4.0)
    );
    assert_eq!(d.metric("cardgate_sign_ons_total{result=\"overloaded\"}"), Some(1.0));
    // Now that terminal 5 is refused and four are served, one leaving makes room.
    drop(new.pop());
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        match sign_on_within(&d, 5, SERVED_WITHIN).await {
            Ok(_) => break,
            Err(ClientError::Refused(ErrorCode::Overloaded)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("terminal 5: {e}"),
        }
    }
}

/// PROTOCOL.md 9.3 states the gateway's admission constants; they must be the code's.
#[test]
fn the_protocol_states_the_admission_limits_the_gateway_has() {
    let doc = include_str!("../../docs/PROTOCOL.md");
    assert!(doc.contains(&format!("up to {SIGN_ON_HEADROOM} more connections be in sign-on")));
    let grace = cardgate::server::SIGN_ON_GRACE;
    assert_eq!(grace, Duration::from_secs(1));
    assert!(doc.contains("in sign-on for at least 1 second"));
}

/// Connections that never sign on fill the room kept for sign-ons; a terminal coming
/// back still gets in, in place of the oldest of them.
#[tokio::test]
async fn connections_that_never_sign_on_go_first_when_the_limit_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_with_limits(dir.path(), "connections_max = 2\nsign_on_timeout_ms = 60000");
    let mut old = [d.terminal(1).await, d.terminal(2).await];
    let mut silent = Vec::new();
    for _ in 0..SIGN_ON_HEADROOM {
        let s = TcpStream::connect(d.terminal_addr()).await.unwrap();
        silent.push(Framed::new(s, TerminalCodec::new(Side::Terminal)));
    }
    metric_reaches(&d, "cardgate_connections", (2 + SIGN_ON_HEADROOM) as f64).await;
    metric_reaches(&d, "cardgate_connections_signing_on", SIGN_ON_HEADROOM as f64).await;

    // Every place is taken. Terminal 1 comes back: the oldest silent connection makes
    // room for it, and its sign-on replaces its old session.
    let mut back = sign_on_within(&d, 1, SERVED_WITHIN).await.expect("signs on");
    expect_error_and_close(&mut silent[0], ErrorCode::Overloaded).await;
    expect_error_and_close(old[0].framed_mut(), ErrorCode::Superseded).await;
    approved(&back.purchase(1, card(1), 1_00).await.unwrap());
    assert!(matches!(old[1].heartbeat().await, Ok(Message::HeartbeatAck(_))));
    assert_eq!(
        d.metric("cardgate_connections_refused_total{code=\"overloaded\"}"),
        Some(1.0),
        "one silent connection went, and only one"
    );
}

/// A HELLO whose length says 16,384 bytes (within the frame limit, but the length of no
/// message) is refused from its header, not after the sign-on timeout.
#[tokio::test]
async fn a_length_no_sign_on_message_has_is_refused_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut s = TcpStream::connect(d.terminal_addr()).await.unwrap();
    let mut header = Vec::new();
    header.extend_from_slice(&(FRAME_LEN_MAX as u32).to_le_bytes());
    header.extend_from_slice(&[PROTOCOL_VERSION, msg_type::HELLO, 0, 0]);
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&0u64.to_le_bytes());
    s.write_all(&header).await.unwrap();
    let mut framed = Framed::new(s, TerminalCodec::new(Side::Terminal));
    // Without the rule this would be `sign_on_timeout`, after five seconds.
    expect_error_and_close(&mut framed, ErrorCode::Malformed).await;
    assert_eq!(
        d.metric("cardgate_connections_refused_total{code=\"malformed\"}"),
        Some(1.0)
    );
}

/// A terminal holding a blacklist version above the gateway's (kept across a restore of
/// the gateway's data): its acknowledgement is not believed but counted, and its sync
/// brings it the full list at the gateway's version.
#[tokio::test]
async fn a_blacklist_version_the_gateway_never_issued_gets_the_full_list() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut t = d.terminal(1).await;
    let ours = t.sign_on.blacklist_version;
    let future = ours + 1_000;
    t.send(Message::BlacklistAck(BlacklistAck { version: future }))
        .await
        .unwrap();
    // Answered in order: once the heartbeat is, the acknowledgement was handled.
    assert!(matches!(t.heartbeat().await, Ok(Message::HeartbeatAck(_))));
    assert_eq!(d.metric("cardgate_blacklist_future_acks_total"), Some(1.0));
    t.blacklist_version = future;
    t.blacklist.insert(4242);
    let pages = t.blacklist_sync().await.unwrap();
    assert!(pages >= 1);
    assert_eq!(
        t.blacklist_version, ours,
        "the terminal now holds the gateway's version"
    );
    assert!(!t.blacklist.contains(&4242), "the full list replaced what it held");
    assert!(matches!(t.heartbeat().await, Ok(Message::HeartbeatAck(_))));
    assert_eq!(
        d.metric("cardgate_blacklist_future_acks_total"),
        Some(1.0),
        "the acknowledgement after the sync is believed"
    );
}

/// What anyone can cause (a refused sign-on, an idle connection) is counted and logged
/// at debug only; a signed-on terminal breaking the protocol is logged at info.
#[tokio::test]
async fn idle_timeouts_and_refused_sign_ons_are_counted_not_logged_at_info() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_with_limits(dir.path(), "idle_timeout_ms = 1500\nheartbeat_interval_s = 1");
    let mut idle = d.terminal(1).await;
    expect_error_and_close(idle.framed_mut(), ErrorCode::IdleTimeout).await;
    let r = TerminalClient::connect(d.terminal_addr(), 2, &secret(3)).await;
    assert!(
        matches!(r, Err(ClientError::Refused(ErrorCode::AuthFailed))),
        "{:?}",
        r.err()
    );
    // A signed-on terminal replays a frame: that one is worth a line.
    let mut t = d.terminal(4).await;
    let mut frame = BytesMut::new();
    tokio_util::codec::Encoder::encode(
        t.framed_mut().codec_mut(),
        (
            9,
            Message::Heartbeat(cardgate_codec::Heartbeat {
                terminal_time_ms: 0,
                blacklist_version: 0,
            }),
        ),
        &mut frame,
    )
    .unwrap();
    t.framed_mut().get_mut().write_all(&frame).await.unwrap();
    assert!(matches!(
        t.recv_answer().await.unwrap().message,
        Message::HeartbeatAck(_)
    ));
    t.framed_mut().get_mut().write_all(&frame).await.unwrap();
    expect_error_and_close(t.framed_mut(), ErrorCode::Replay).await;

    assert_eq!(
        d.metric("cardgate_connections_refused_total{code=\"idle_timeout\"}"),
        Some(1.0)
    );
    assert_eq!(
        d.metric("cardgate_connections_refused_total{code=\"auth_failed\"}"),
        Some(1.0)
    );
    assert_eq!(d.metric("cardgate_sign_ons_total{result=\"auth_failed\"}"), Some(1.0));
    let deadline = Instant::now() + EVENTUALLY;
    let closing: Vec<String> = loop {
        let lines: Vec<String> = d
            .log()
            .into_iter()
            .filter(|l| l.contains("closing terminal connection"))
            .collect();
        if !lines.is_empty() || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(closing.len(), 1, "{closing:?}");
    assert!(
        closing[0].contains("replay") && closing[0].contains("terminal.id=4"),
        "{closing:?}"
    );
}

/// Out of file descriptors, every accept fails at once. The gateway backs off, counts
/// the failures by kind and logs them once per interval, and serves again as soon as
/// descriptors are free. The daemon's limit is lowered from outside with `prlimit`.
#[tokio::test]
async fn out_of_descriptors_accepts_back_off_and_log_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let pid = d.pid();
    let held = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    // Room for a couple of connections, then EMFILE.
    let limit = held + 2;
    let prlimit = |soft: &str| {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
            .status()
            .expect("run prlimit");
        assert!(status.success(), "prlimit --nofile={soft}:");
    };
    let before = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile", "--output=SOFT", "--noheadings"])
        .output()
        .expect("run prlimit");
    let before = String::from_utf8_lossy(&before.stdout).trim().to_string();
    prlimit(&limit.to_string());
    let started = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(TcpStream::connect(d.terminal_addr()).await.unwrap());
    }
    // Wait until the failures are logged, then give the loop time to fail again.
    let deadline = Instant::now() + EVENTUALLY;
    while !d.log().iter().any(|l| l.contains("accept failed")) {
        assert!(Instant::now() < deadline, "no accept failure was logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Free the descriptors: the gateway closes what it accepted once the peers leave.
    drop(conns);
    prlimit(&before);
    let mut t = sign_on_within(&d, 1, SERVED_WITHIN).await.expect("served again");
    approved(&t.purchase(1, card(1), 1_00).await.unwrap());
    let failures = d
        .metric("cardgate_accept_errors_total{kind=\"emfile\"}")
        .expect("counted by kind");
    let lines = d.log().iter().filter(|l| l.contains("accept failed")).count() as u64;
    // One line per 30 s at most, however many failures (a loop without back-off made
    // some 50 a second).
    let allowed = 1 + started.elapsed().as_secs() / 30;
    assert!(failures >= 2.0, "{failures} failures");
    assert!(lines >= 1 && lines <= allowed, "{lines} lines for {failures} failures");
    assert!(
        failures < 60.0 * started.elapsed().as_secs_f64().max(1.0),
        "backing off, not spinning: {failures} failures"
    );
}
