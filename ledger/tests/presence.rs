//! The terminal counts behind `cardgate_terminals_connected` and
//! `cardgate_terminals_offline`: connected by kind, and enabled terminals silent past the
//! bound, counted from the gateway's start when never heard from.

mod common;

use cardgate_domain::model::TerminalKind;
use common::*;

const OFFLINE_AFTER_MS: i64 = 300_000;

fn index(kind: TerminalKind) -> usize {
    TerminalKind::ALL.iter().position(|k| *k == kind).unwrap()
}

#[tokio::test]
async fn terminals_count_as_offline_after_the_bound_and_disabled_ones_never() {
    let f = Fixture::new().await;
    let started = LUNCH_MS;
    let (pos, door) = (index(TerminalKind::Pos), index(TerminalKind::Door));

    let p = f.ledger.terminal_presence(started, OFFLINE_AFTER_MS);
    assert_eq!(p.offline, [0; 4], "nobody is offline before the bound has passed");
    assert_eq!(p.connected, [0; 4]);

    f.ledger.touch_terminal(POS);
    f.ledger.session_opened(POS, 0).await;
    f.clock.advance(OFFLINE_AFTER_MS + 1_000);
    let p = f.ledger.terminal_presence(started, OFFLINE_AFTER_MS);
    assert_eq!(p.connected[pos], 1);
    assert_eq!(p.connected.iter().sum::<u64>(), 1);
    // POS_2 and the door were never heard from; the disabled POS does not count.
    assert_eq!(p.offline[pos], 1);
    assert_eq!(p.offline[door], 1);
    assert_eq!(p.offline.iter().sum::<u64>(), 2);

    // POS closes its session: last heard from at the start, so it is offline at once.
    f.ledger.session_closed(POS).await;
    // POS_2 heartbeats now: no longer offline.
    f.ledger.touch_terminal(POS_2);
    let p = f.ledger.terminal_presence(started, OFFLINE_AFTER_MS);
    assert_eq!(p.connected, [0; 4]);
    assert_eq!(p.offline[pos], 1, "POS is offline, POS_2 was just heard from");
    assert_eq!(p.offline[door], 1);

    f.clock.advance(OFFLINE_AFTER_MS + 1_000);
    let p = f.ledger.terminal_presence(started, OFFLINE_AFTER_MS);
    assert_eq!(p.offline[pos], 2, "POS_2 has been silent past the bound too");
}
