//! POS terminals against the real daemon over real TCP: sign-on, purchases, declines,
//! idempotency, reversals, concurrency, hostile frames, shutdown and crash recovery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cardgate_codec::codec::Frame;
use cardgate_codec::{CardNo, DeclineReason, ErrorCode, Message, Purchase};
use cardgate_loadtest::client::{ClientError, TerminalClient, now_ms};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Encoder;

use crate::harness::*;

fn approved(m: &Message) -> &cardgate_codec::Approved {
    match m {
        Message::Approved(a) => a,
        other => panic!("expected an approval, got {other:?}"),
    }
}

fn reason(m: &Message) -> DeclineReason {
    match m {
        Message::Declined(d) => d.reason,
        other => panic!("expected a decline, got {other:?}"),
    }
}

fn purchase(seq: u64, card: CardNo, amount_fen: i64) -> Message {
    Message::Purchase(Purchase {
        tx_seq: seq,
        card,
        amount_fen,
        terminal_time_ms: now_ms(),
    })
}

/// Reads the next frame; expects the gateway to send ERROR `code` and close.
async fn expect_closed_with(client: &mut TerminalClient, code: ErrorCode) {
    let framed = client.framed_mut();
    match tokio::time::timeout(Duration::from_secs(10), framed.next())
        .await
        .expect("an answer")
    {
        Some(Ok(Frame {
            message: Message::Error(e),
            ..
        })) => assert_eq!(e.code, code),
        other => panic!("expected ERROR {code:?}, got {other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(10), framed.next())
        .await
        .expect("close");
    assert!(
        end.is_none() || matches!(end, Some(Err(_))),
        "connection must close, got {end:?}"
    );
}

#[tokio::test]
async fn sign_on_with_the_right_key_and_buy_lunch() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut t = d.terminal(1).await;
    assert_eq!(t.sign_on.last_tx_seq, 0);
    assert!(t.sign_on.pipeline_depth_max >= 1);
    let answer = t.purchase(1, card(1), 12_50).await.unwrap();
    let a = approved(&answer);
    assert_eq!(a.balance_fen, DEMO_BALANCE_FEN - 12_50);
    assert_eq!(a.amount_fen, 12_50);
    assert_eq!(a.tx_seq, 1);
    assert!(matches!(t.heartbeat().await.unwrap(), Message::HeartbeatAck(_)));
    // The gateway remembers the terminal's last number for its next sign-on.
    drop(t);
    assert_eq!(d.terminal(1).await.sign_on.last_tx_seq, 1);
}

#[tokio::test]
async fn sign_on_with_a_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let r = TerminalClient::connect(d.terminal_addr(), 1, &secret(2)).await;
    assert!(
        matches!(r, Err(ClientError::Refused(ErrorCode::AuthFailed))),
        "{:?}",
        r.err()
    );
    // An unknown terminal is refused the same way: ids are not revealed.
    let r = TerminalClient::connect(d.terminal_addr(), 999_999, &secret(999_999)).await;
    assert!(
        matches!(r, Err(ClientError::Refused(ErrorCode::AuthFailed))),
        "{:?}",
        r.err()
    );
    let mut t = d.terminal(1).await;
    assert!(matches!(t.balance(card(1)).await.unwrap(), Message::Balance(_)));
    assert_eq!(
        d.metric("cardgate_sign_ons_total{result=\"auth_failed\"}"),
        Some(2.0),
        "refused sign-ons are counted"
    );
}

#[tokio::test]
async fn declines_carry_their_reason_and_move_no_money() {
    // The daily limit and spent-today are the business day's.
    crate::business_day::today_lasts_the_test();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut t = d.terminal(1).await;
    // Account 1 is a student: 200.00 per payment, 600.00 per day.
    assert_eq!(
        reason(&t.purchase(1, CardNo(42), 100).await.unwrap()),
        DeclineReason::UnknownCard
    );
    assert_eq!(
        reason(&t.purchase(2, card(1), 0).await.unwrap()),
        DeclineReason::InvalidAmount
    );
    assert_eq!(
        reason(&t.purchase(3, card(1), 200_01).await.unwrap()),
        DeclineReason::OverSingleLimit
    );
    for seq in 4..7 {
        approved(&t.purchase(seq, card(1), 200_00).await.unwrap());
    }
    assert_eq!(
        reason(&t.purchase(7, card(1), 1).await.unwrap()),
        DeclineReason::OverDailyLimit
    );
    // Account 10 is staff: 500.00 per payment, 2,000.00 per day, balance 1,000.00.
    approved(&t.purchase(8, card(10), 500_00).await.unwrap());
    approved(&t.purchase(9, card(10), 500_00).await.unwrap());
    assert_eq!(
        reason(&t.purchase(10, card(10), 1).await.unwrap()),
        DeclineReason::InsufficientFunds
    );
    let Message::Balance(b) = t.balance(card(1)).await.unwrap() else {
        panic!()
    };
    assert_eq!(b.balance_fen, DEMO_BALANCE_FEN - 600_00);
    assert_eq!(b.spent_today_fen, 600_00);
    let Message::Balance(b) = t.balance(card(10)).await.unwrap() else {
        panic!()
    };
    assert_eq!(b.balance_fen, 0);
}

#[tokio::test]
async fn a_retry_on_a_new_connection_and_after_a_restart_gets_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut t = d.terminal(3).await;
    let first = t.purchase(1, card(3), 45_00).await.unwrap();
    approved(&first);
    assert_eq!(t.purchase(1, card(3), 45_00).await.unwrap(), first);
    drop(t);
    let mut t = d.terminal(3).await;
    assert_eq!(t.purchase(1, card(3), 45_00).await.unwrap(), first);
    assert_eq!(
        reason(&t.purchase(1, card(3), 46_00).await.unwrap()),
        DeclineReason::Duplicate
    );
    drop(t);
    // After a crash (the journal replayed) and after a clean stop (the final checkpoint
    // alone): the same memory of what was answered.
    d.kill9();
    let d = Daemon::start(dir.path());
    let mut t = d.terminal(3).await;
    assert_eq!(t.sign_on.last_tx_seq, 1);
    assert_eq!(t.purchase(1, card(3), 45_00).await.unwrap(), first);
    let second = t.purchase(2, card(3), 5_00).await.unwrap();
    approved(&second);
    drop(t);
    assert!(d.terminate().success());
    let d = Daemon::start(dir.path());
    let mut t = d.terminal(3).await;
    assert_eq!(t.sign_on.last_tx_seq, 2, "a clean stop forgot the terminal's numbers");
    assert_eq!(t.purchase(1, card(3), 45_00).await.unwrap(), first);
    assert_eq!(t.purchase(2, card(3), 5_00).await.unwrap(), second);
    let Message::Balance(b) = t.balance(card(3)).await.unwrap() else {
        panic!()
    };
    assert_eq!(b.balance_fen, DEMO_BALANCE_FEN - 50_00, "debited once each");
}

#[tokio::test]
async fn a_reversal_refunds_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut t = d.terminal(4).await;
    approved(&t.purchase(1, card(4), 18_00).await.unwrap());
    let r = t.reversal(2, 1, card(4), 18_00).await.unwrap();
    assert_eq!(approved(&r).balance_fen, DEMO_BALANCE_FEN);
    assert_eq!(t.reversal(2, 1, card(4), 18_00).await.unwrap(), r, "a retried reversal");
    assert_eq!(
        reason(&t.reversal(3, 1, card(4), 18_00).await.unwrap()),
        DeclineReason::AlreadyReversed
    );
    assert_eq!(
        reason(&t.reversal(4, 77, card(4), 18_00).await.unwrap()),
        DeclineReason::OriginalNotFound
    );
    let Message::Balance(b) = t.balance(card(4)).await.unwrap() else {
        panic!()
    };
    assert_eq!(b.balance_fen, DEMO_BALANCE_FEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_terminals_paying_from_one_account_never_overdraw_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = Arc::new(Daemon::start(dir.path()));
    // Account 20 is staff (500.00 / 2,000.00 limits) with 1,000.00: 66 payments of 15.00 fit.
    let mut tasks = tokio::task::JoinSet::new();
    for id in 1..=100u64 {
        let d = d.clone();
        tasks.spawn(async move {
            let mut t = d.terminal(id).await;
            t.purchase(1, card(20), 15_00).await.unwrap()
        });
    }
    let mut approvals = 0i64;
    while let Some(answer) = tasks.join_next().await {
        match answer.unwrap() {
            Message::Approved(a) => {
                approvals += 1;
                assert!(a.balance_fen >= 0);
            }
            other => assert_eq!(reason(&other), DeclineReason::InsufficientFunds),
        }
    }
    assert_eq!(approvals, 66);
    let mut t = d.terminal(101).await;
    let Message::Balance(b) = t.balance(card(20)).await.unwrap() else {
        panic!()
    };
    assert_eq!(b.balance_fen, DEMO_BALANCE_FEN - 66 * 15_00);
}

#[tokio::test]
async fn a_replayed_frame_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut t = d.terminal(5).await;
    // Capture the exact bytes of one authenticated purchase frame.
    let mut captured = BytesMut::new();
    t.framed_mut()
        .codec_mut()
        .encode((77, purchase(1, card(5), 10_00)), &mut captured)
        .unwrap();
    t.framed_mut().get_mut().write_all(&captured).await.unwrap();
    let answer = t.recv().await.unwrap();
    assert_eq!(answer.request_id, 77);
    approved(&answer.message);
    // The same bytes again on the same session: the counter did not grow.
    t.framed_mut().get_mut().write_all(&captured).await.unwrap();
    expect_closed_with(&mut t, ErrorCode::Replay).await;
    // On a new session the captured frame fails its MAC: every session has a fresh key.
    let mut t2 = d.terminal(5).await;
    t2.framed_mut().get_mut().write_all(&captured).await.unwrap();
    expect_closed_with(&mut t2, ErrorCode::BadMac).await;
    let mut t3 = d.terminal(6).await;
    let Message::Balance(b) = t3.balance(card(5)).await.unwrap() else {
        panic!()
    };
    assert_eq!(b.balance_fen, DEMO_BALANCE_FEN - 10_00, "debited once");
    assert!(
        d.metric("cardgate_connections_refused_total{code=\"replay\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut bystander = d.terminal(7).await;
    approved(&bystander.purchase(1, card(7), 1_00).await.unwrap());

    // A frame with an unknown message type, correctly MACed: malformed.
    let mut t = d.terminal(8).await;
    let mut frame = BytesMut::new();
    t.framed_mut()
        .codec_mut()
        .encode((1, purchase(1, card(8), 1)), &mut frame)
        .unwrap();
    frame[5] = 0x7E;
    t.framed_mut().get_mut().write_all(&frame).await.unwrap();
    // An unknown type has no length at all: refused from the header, before the MAC.
    expect_closed_with(&mut t, ErrorCode::Malformed).await;

    // A length prefix far above the limit: refused at once, without sending a body.
    let mut t = d.terminal(9).await;
    t.framed_mut()
        .get_mut()
        .write_all(&(1u32 << 30).to_le_bytes())
        .await
        .unwrap();
    expect_closed_with(&mut t, ErrorCode::FrameTooLarge).await;

    // Garbage before sign-on.
    let mut raw = tokio::net::TcpStream::connect(d.terminal_addr()).await.unwrap();
    raw.write_all(&[20, 0, 0, 0, 9, 1, 0, 0]).await.unwrap();
    raw.write_all(&[0u8; 16]).await.unwrap();
    let mut raw =
        tokio_util::codec::Framed::new(raw, cardgate_codec::TerminalCodec::new(cardgate_codec::Side::Terminal));
    match tokio::time::timeout(Duration::from_secs(10), raw.next()).await.unwrap() {
        Some(Ok(Frame {
            message: Message::Error(e),
            ..
        })) => assert_eq!(e.code, ErrorCode::UnsupportedVersion),
        other => panic!("{other:?}"),
    }

    // A purchase before sign-on.
    let raw = tokio::net::TcpStream::connect(d.terminal_addr()).await.unwrap();
    let mut raw =
        tokio_util::codec::Framed::new(raw, cardgate_codec::TerminalCodec::new(cardgate_codec::Side::Terminal));
    let mut bytes = BytesMut::new();
    cardgate_codec::codec::encode_frame(None, 0, 1, &purchase(1, card(8), 1), &mut bytes);
    raw.get_mut().write_all(&bytes).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), raw.next()).await.unwrap() {
        Some(Ok(Frame {
            message: Message::Error(e),
            ..
        })) => assert_eq!(e.code, ErrorCode::UnexpectedMessage),
        other => panic!("{other:?}"),
    }

    // The bystander never noticed.
    approved(&bystander.purchase(2, card(7), 1_00).await.unwrap());
}

/// What one terminal was told, and what it had in flight when the gateway died.
#[derive(Clone, Copy, Default)]
struct Told {
    approved_fen: i64,
    last_acked_seq: u64,
    in_flight: Option<(u64, i64)>,
}

/// Terminal `id` buys on its own account (`id`) until the connection dies.
async fn buy_until_cut(addr: std::net::SocketAddr, id: u64, told: Arc<std::sync::Mutex<Told>>) {
    let Ok(mut t) = TerminalClient::connect(addr, id, &secret(id)).await else {
        return;
    };
    let mut seq = 0;
    loop {
        seq += 1;
        let amount = 1_00 + (seq as i64 % 7) * 10;
        told.lock().unwrap().in_flight = Some((seq, amount));
        match t.purchase(seq, card(id), amount).await {
            Ok(answer) => {
                let mut told = told.lock().unwrap();
                told.in_flight = None;
                told.last_acked_seq = seq;
                match answer {
                    Message::Approved(a) => told.approved_fen += a.amount_fen,
                    Message::Declined(d) => assert_ne!(d.reason, DeclineReason::SystemError),
                    other => panic!("{other:?}"),
                }
            }
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hard_kill_under_load_keeps_every_acknowledged_purchase_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let addr = d.terminal_addr();
    let terminals = 40u64;
    let told: HashMap<u64, Arc<std::sync::Mutex<Told>>> = (1..=terminals)
        .map(|id| (id, Arc::new(std::sync::Mutex::new(Told::default()))))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (&id, t) in &told {
        tasks.spawn(buy_until_cut(addr, id, t.clone()));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    d.kill9();
    while tasks.join_next().await.is_some() {}

    let d = Daemon::start(dir.path());
    let mut total_acked = 0;
    for id in 1..=terminals {
        let told = *told[&id].lock().unwrap();
        let mut expected_spent = told.approved_fen;
        total_acked += told.last_acked_seq;
        let mut t = d.terminal(id).await;
        assert!(
            t.sign_on.last_tx_seq >= told.last_acked_seq,
            "terminal {id}: an acknowledged number was lost"
        );
        assert!(
            t.sign_on.last_tx_seq <= told.last_acked_seq + 1,
            "terminal {id}: a number it never sent"
        );
        // The request that was in flight: the terminal retries it with the same number and
        // learns its fate; it is applied at most once either way.
        if let Some((seq, amount)) = told.in_flight {
            let again = t.purchase(seq, card(id), amount).await.unwrap();
            if let Message::Approved(a) = again {
                expected_spent += a.amount_fen;
                assert_eq!(t.purchase(seq, card(id), amount).await.unwrap(), again);
            }
        }
        let Message::Balance(b) = t.balance(card(id)).await.unwrap() else {
            panic!()
        };
        assert_eq!(
            b.balance_fen,
            DEMO_BALANCE_FEN - expected_spent,
            "terminal/account {id}"
        );
    }
    assert!(
        total_acked > terminals,
        "the load actually ran ({total_acked} acknowledged)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_answers_what_is_in_flight_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let addr = d.terminal_addr();
    let told: HashMap<u64, Arc<std::sync::Mutex<Told>>> = (1..=20u64)
        .map(|id| (id, Arc::new(std::sync::Mutex::new(Told::default()))))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (&id, t) in &told {
        tasks.spawn(buy_until_cut(addr, id, t.clone()));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = d.terminate();
    assert!(status.success(), "clean exit, got {status:?}");
    while tasks.join_next().await.is_some() {}

    let d = Daemon::start(dir.path());
    assert!(
        d.log()
            .iter()
            .any(|l| l.contains("recovered") && l.contains("replayed=0")),
        "a clean shutdown leaves nothing to replay: {:?}",
        d.log()
    );
    for (id, told) in &told {
        let told = *told.lock().unwrap();
        let mut t = d.terminal(*id).await;
        let mut expected_spent = told.approved_fen;
        if let Some((seq, amount)) = told.in_flight
            && let Message::Approved(a) = t.purchase(seq, card(*id), amount).await.unwrap()
        {
            expected_spent += a.amount_fen;
        }
        let Message::Balance(b) = t.balance(card(*id)).await.unwrap() else {
            panic!()
        };
        assert_eq!(b.balance_fen, DEMO_BALANCE_FEN - expected_spent, "account {id}");
    }
}
