//! The lunch-rush load generator against the real daemon: every answer is one the run
//! expects, and the money it says moved is exactly the money that moved (conservation
//! read back through the protocol). Runs are bounded by request count, never by time.

use std::time::Duration;

use cardgate_codec::CardNo;
use cardgate_loadtest::desk::{CardDesk, DeskError, HttpCardDesk};
use cardgate_loadtest::mix::Mix;
use cardgate_loadtest::report::Report;
use cardgate_loadtest::run::{RunConfig, run};

use crate::harness::*;

fn config(d: &Daemon, terminals: u64, requests: u64) -> RunConfig {
    RunConfig {
        target: d.terminal_addr(),
        terminals,
        first_terminal: 1,
        accounts: DEMO_ACCOUNTS,
        duration: None,
        requests: Some(requests),
        ramp_up: Duration::ZERO,
        rate: None,
        pipeline_max: None,
        mix: Mix {
            reversal_pct: 10,
            balance_pct: 10,
            lost_probe_pct: 0,
        },
        amount_min_fen: 100,
        amount_max_fen: 1_500,
        connect_concurrency: 16,
        answer_timeout: Duration::from_secs(30),
        source_addrs: vec![],
        seed: 42,
        lost_cards: 0,
        check_conservation: true,
        scan_connections: 4,
        progress: false,
    }
}

async fn go(cfg: RunConfig) -> Report {
    run(cfg, None::<HttpCardDesk>, std::future::pending())
        .await
        .expect("the run completes")
}

fn assert_clean(r: &Report, requests: u64) {
    assert!(r.ok, "{}", r.table());
    assert_eq!(r.answers + r.warmup_answers, requests, "{}", r.table());
    let c = r.conservation.as_ref().expect("checked");
    assert!(c.holds(), "{}", r.table());
    assert_eq!(c.cards, DEMO_ACCOUNTS);
    assert_eq!(
        c.before_fen - c.after_fen,
        c.purchases_approved_fen - c.reversals_approved_fen
    );
    assert!(
        r.money.purchases_approved > 0 && r.money.reversals_approved > 0,
        "{}",
        r.table()
    );
}

#[tokio::test]
async fn a_closed_loop_mix_moves_exactly_the_money_it_was_told_about() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let r = go(config(&d, 20, 2_000)).await;
    assert_clean(&r, 2_000);
    assert_eq!(r.mode, "closed");
    assert!(r.answers_by_code.contains_key("balance ok"), "{}", r.table());
}

#[tokio::test]
async fn an_open_loop_with_pipelining_stays_exact_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    // 40 due per terminal per second: with pipelining, several are often unanswered
    // at once on one connection.
    let r = go(RunConfig {
        rate: Some(2_000.0),
        ..config(&d, 50, 1_500)
    })
    .await;
    assert_clean(&r, 1_500);
    assert_eq!(r.mode, "open");
    assert!(r.generator_lag_ms.is_some());
}

#[tokio::test]
async fn terminals_the_gateway_does_not_know_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let r = go(RunConfig {
        check_conservation: false,
        ..config(&d, DEMO_TERMINALS + 5, 200)
    })
    .await;
    assert!(!r.ok);
    assert_eq!(r.signed_on, DEMO_TERMINALS);
    assert_eq!(r.connection_errors.get("sign_on:refused:auth_failed"), Some(&5));
}

/// Says every loss report was acknowledged, and reports nothing.
struct LyingDesk;

impl CardDesk for LyingDesk {
    async fn report_lost(&self, _card: CardNo) -> Result<(), DeskError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_lost_card_that_still_pays_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let cfg = RunConfig {
        lost_cards: 2,
        mix: Mix {
            reversal_pct: 0,
            balance_pct: 0,
            lost_probe_pct: 50,
        },
        ..config(&d, 10, 1_000)
    };
    let r = run(cfg, Some(LyingDesk), std::future::pending()).await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.lost_cards.reported, 2);
    assert!(r.lost_cards.probes > 0, "{}", r.table());
    assert!(r.lost_cards.approved > 0, "{}", r.table());
    assert!(
        r.failures.keys().any(|k| k.contains("lost_card_approved")),
        "{}",
        r.table()
    );
    // The money is still exact: the approvals happened and were counted.
    assert!(r.conservation.as_ref().unwrap().holds(), "{}", r.table());
}
