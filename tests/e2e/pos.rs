//! POS terminals against the real daemon: sign-on, purchases, declines, idempotency,
//! reversals, concurrency, hostile frames, crash recovery.

use cardgate_codec::{DeclineReason, ErrorCode, Message};
use cardgate_loadtest::client::{ClientError, TerminalClient};

use crate::harness::*;

#[tokio::test]
async fn sign_on_with_the_right_key_and_buy_lunch() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut t = d.terminal(1).await;
    let answer = t.purchase(1, card(1), 12_50).await.unwrap();
    let Message::Approved(a) = answer else {
        panic!("expected approval, got {answer:?}")
    };
    assert_eq!(a.balance_fen, DEMO_BALANCE_FEN - 12_50);
    assert_eq!(a.amount_fen, 12_50);
    assert_eq!(a.tx_seq, 1);
}

#[tokio::test]
async fn sign_on_with_a_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let wrong = secret(2);
    let r = TerminalClient::connect(d.terminal_addr(), 1, &wrong).await;
    assert!(
        matches!(r, Err(ClientError::Refused(ErrorCode::AuthFailed))),
        "{:?}",
        r.err()
    );
    // An unknown terminal is refused the same way.
    let r = TerminalClient::connect(d.terminal_addr(), 999_999, &secret(999_999)).await;
    assert!(
        matches!(r, Err(ClientError::Refused(ErrorCode::AuthFailed))),
        "{:?}",
        r.err()
    );
    // The gateway still serves everyone else.
    let mut t = d.terminal(1).await;
    assert!(matches!(t.balance(card(1)).await.unwrap(), Message::Balance(_)));
    let _ = DeclineReason::UnknownCard;
}
