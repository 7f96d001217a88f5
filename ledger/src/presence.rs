//! Which terminals are connected, and which have gone quiet, by kind: what the gateway's
//! gauges show an operator without naming a terminal in a metric.

use cardgate_domain::model::TerminalKind;

use crate::ledger::Ledger;

/// Counts indexed as `TerminalKind::ALL`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TerminalPresence {
    /// Terminals with a signed-on session now.
    pub connected: [u64; TerminalKind::ALL.len()],
    /// Enabled terminals without a session whose last authenticated contact (sign-on or
    /// heartbeat) is older than the bound. A terminal not heard from since `since_ms`
    /// (the gateway's start: the last contact is not kept across restarts) counts from
    /// then, so one that never comes back after a restart shows too.
    pub offline: [u64; TerminalKind::ALL.len()],
}

impl Ledger {
    /// One pass over the terminals. `offline_after_ms` is how long an enabled terminal
    /// may be silent and unconnected before it counts as offline.
    pub fn terminal_presence(&self, since_ms: i64, offline_after_ms: i64) -> TerminalPresence {
        let now = self.now_ms();
        let mut p = TerminalPresence::default();
        self.state.for_each_terminal(|t| {
            let Some(i) = TerminalKind::ALL.iter().position(|k| *k == t.info.kind) else {
                return;
            };
            if t.sessions > 0 {
                p.connected[i] += 1;
            } else if t.info.enabled && now - t.last_seen_ms.max(since_ms) > offline_after_ms {
                p.offline[i] += 1;
            }
        });
        p
    }
}
