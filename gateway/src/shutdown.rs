//! Shutdown as named phases, in an order that loses nothing: stop accepting → drain
//! sessions → last central flush → committer.
//!
//! * `stop_accepting`: every listener stops taking connections and every session is told
//!   to finish (one cancellation token). Immediate: it only signals.
//! * `drain_sessions`: terminals get the answers they are owed, operators' in-flight
//!   calls finish, then the connections close. Bounded by `limits.shutdown_grace_ms`.
//! * `central_flush`: one last attempt to ship everything durable to the central store.
//!   Bounded by `central.shutdown_flush_ms`; what it leaves ships after the next start.
//! * `committer`: the last ledger handle is dropped, so the committer commits what is
//!   queued, answers it, writes the final checkpoint and exits. Bounded by
//!   `COMMITTER_JOIN_MS`.
//!
//! The order is the argument: sessions must be gone before the last flush (they are
//! still producing entries), and the flush must be done before the committer exits (it
//! writes the flusher's cursor through the journal). A phase that overruns its deadline
//! is logged and the next one starts anyway, so a stuck connection cannot keep the
//! final checkpoint from being written.
//!
//! The phase is observable: `cardgate_shutdown_phase` (0 running, 1..=4 the phases in
//! order, 5 stopped), one `info` line per phase naming it, and `PhaseCell` in code.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::config::Config;

/// How long the committer gets to drain its queue and write the final checkpoint once
/// the last ledger handle is gone. A checkpoint of a million accounts takes seconds;
/// 30 s is far beyond a healthy disk and still short of what a service manager allows a
/// stop before it kills.
pub const COMMITTER_JOIN_MS: u64 = 30_000;

/// Time a phase gets beyond its own deadline before it is cut off: room for a phase that
/// honours its deadline itself (the flusher aborts its batch, the drain counts what it
/// leaves open) to do so and report, instead of being dropped mid-report.
pub const PHASE_SLACK_MS: u64 = 500;

/// Where the daemon is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running = 0,
    StopAccepting = 1,
    DrainSessions = 2,
    CentralFlush = 3,
    Committer = 4,
    Stopped = 5,
}

impl Phase {
    /// The name in logs and docs.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::StopAccepting => "stop_accepting",
            Phase::DrainSessions => "drain_sessions",
            Phase::CentralFlush => "central_flush",
            Phase::Committer => "committer",
            Phase::Stopped => "stopped",
        }
    }

    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::StopAccepting,
            2 => Phase::DrainSessions,
            3 => Phase::CentralFlush,
            4 => Phase::Committer,
            5 => Phase::Stopped,
            _ => Phase::Running,
        }
    }
}

/// The current phase, readable from anywhere; every change also sets the gauge.
#[derive(Clone, Debug, Default)]
pub struct PhaseCell(Arc<AtomicU8>);

impl PhaseCell {
    pub fn get(&self) -> Phase {
        Phase::from_u8(self.0.load(Ordering::Acquire))
    }

    pub fn set(&self, p: Phase) {
        self.0.store(p as u8, Ordering::Release);
        metrics::gauge!("cardgate_shutdown_phase").set(f64::from(p as u8));
    }
}

/// Each phase's deadline.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub drain_sessions: Duration,
    pub central_flush: Duration,
    pub committer: Duration,
}

impl Deadlines {
    pub fn of(config: &Config) -> Deadlines {
        Deadlines {
            drain_sessions: Duration::from_millis(config.limits.shutdown_grace_ms),
            central_flush: Duration::from_millis(config.central.shutdown_flush_ms),
            committer: Duration::from_millis(COMMITTER_JOIN_MS),
        }
    }
}

/// What each phase does: the daemon's, or a test's.
pub(crate) trait Stages {
    /// Signals every listener and session; must not wait.
    fn stop_accepting(&mut self);
    /// Waits for every session to close; true if all did within `deadline`.
    async fn drain_sessions(&mut self, deadline: Duration) -> bool;
    /// Ships what it can within `deadline`; returns the entries left unshipped.
    async fn central_flush(&mut self, deadline: Duration) -> u64;
    /// Lets the committer finish; true if it did within `deadline`.
    async fn committer(&mut self, deadline: Duration) -> bool;
}

/// How shutdown went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Phases that did not finish within their deadline.
    pub overran: Vec<Phase>,
    /// Entries the last flush did not ship (None: it was cut off).
    pub unshipped: Option<u64>,
    /// Whether the committer wrote its final checkpoint and exited.
    pub committer_finished: bool,
}

/// Runs every phase in order, each under its deadline.
pub(crate) async fn run<S: Stages>(stages: &mut S, deadlines: Deadlines, cell: &PhaseCell) -> Outcome {
    let mut out = Outcome::default();

    enter(cell, Phase::StopAccepting, None);
    stages.stop_accepting();

    let d = deadlines.drain_sessions;
    enter(cell, Phase::DrainSessions, Some(d));
    if bounded(d, stages.drain_sessions(d)).await != Some(true) {
        overran(&mut out, Phase::DrainSessions, d);
    }

    let d = deadlines.central_flush;
    enter(cell, Phase::CentralFlush, Some(d));
    out.unshipped = bounded(d, stages.central_flush(d)).await;
    match out.unshipped {
        None => overran(&mut out, Phase::CentralFlush, d),
        Some(0) => {}
        Some(n) => tracing::warn!(
            entries = n,
            "central store: entries not shipped at shutdown; they stay in the journal and ship after the next start"
        ),
    }

    let d = deadlines.committer;
    enter(cell, Phase::Committer, Some(d));
    out.committer_finished = bounded(d, stages.committer(d)).await == Some(true);
    if !out.committer_finished {
        overran(&mut out, Phase::Committer, d);
    }

    cell.set(Phase::Stopped);
    tracing::info!(phase = Phase::Stopped.name(), "stopped");
    out
}

fn enter(cell: &PhaseCell, phase: Phase, deadline: Option<Duration>) {
    cell.set(phase);
    match deadline {
        Some(d) => tracing::info!(
            phase = phase.name(),
            deadline_ms = d.as_millis() as u64,
            "shutdown phase"
        ),
        None => tracing::info!(phase = phase.name(), "shutdown phase"),
    }
}

fn overran(out: &mut Outcome, phase: Phase, deadline: Duration) {
    tracing::warn!(
        phase = phase.name(),
        deadline_ms = deadline.as_millis() as u64,
        "shutdown phase did not finish within its deadline; going on with the next"
    );
    out.overran.push(phase);
}

/// `work` under its deadline plus the slack; None if it was cut off.
async fn bounded<T>(deadline: Duration, work: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(deadline + Duration::from_millis(PHASE_SLACK_MS), work)
        .await
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the phase the cell showed when each stage ran, and can be told to hang.
    struct Fake {
        cell: PhaseCell,
        seen: Vec<(&'static str, Phase)>,
        hang_in: Option<Phase>,
        unshipped: u64,
    }

    impl Fake {
        async fn maybe_hang(&self, p: Phase) {
            if self.hang_in == Some(p) {
                std::future::pending::<()>().await;
            }
        }
    }

    impl Stages for Fake {
        fn stop_accepting(&mut self) {
            self.seen.push(("stop_accepting", self.cell.get()));
        }
        async fn drain_sessions(&mut self, _: Duration) -> bool {
            self.seen.push(("drain_sessions", self.cell.get()));
            self.maybe_hang(Phase::DrainSessions).await;
            true
        }
        async fn central_flush(&mut self, _: Duration) -> u64 {
            self.seen.push(("central_flush", self.cell.get()));
            self.maybe_hang(Phase::CentralFlush).await;
            self.unshipped
        }
        async fn committer(&mut self, _: Duration) -> bool {
            self.seen.push(("committer", self.cell.get()));
            self.maybe_hang(Phase::Committer).await;
            true
        }
    }

    fn deadlines() -> Deadlines {
        Deadlines {
            drain_sessions: Duration::from_millis(10_000),
            central_flush: Duration::from_millis(5_000),
            committer: Duration::from_millis(COMMITTER_JOIN_MS),
        }
    }

    fn fake(hang_in: Option<Phase>) -> Fake {
        Fake {
            cell: PhaseCell::default(),
            seen: Vec::new(),
            hang_in,
            unshipped: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn phases_run_in_order_and_each_is_current_while_it_runs() {
        let mut f = fake(None);
        f.unshipped = 3;
        let cell = f.cell.clone();
        assert_eq!(cell.get(), Phase::Running);
        let out = run(&mut f, deadlines(), &cell).await;
        assert_eq!(
            f.seen,
            [
                ("stop_accepting", Phase::StopAccepting),
                ("drain_sessions", Phase::DrainSessions),
                ("central_flush", Phase::CentralFlush),
                ("committer", Phase::Committer),
            ]
        );
        assert_eq!(cell.get(), Phase::Stopped);
        assert_eq!(
            out,
            Outcome {
                overran: vec![],
                unshipped: Some(3),
                committer_finished: true
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_phase_that_hangs_is_cut_at_its_deadline_and_the_next_phases_still_run() {
        for hang in [Phase::DrainSessions, Phase::CentralFlush, Phase::Committer] {
            let mut f = fake(Some(hang));
            let cell = f.cell.clone();
            let out = run(&mut f, deadlines(), &cell).await;
            assert_eq!(out.overran, vec![hang], "{hang:?}");
            assert_eq!(f.seen.len(), 4, "every phase ran after {hang:?} hung");
            assert_eq!(out.committer_finished, hang != Phase::Committer);
            assert_eq!(out.unshipped.is_none(), hang == Phase::CentralFlush);
            assert_eq!(cell.get(), Phase::Stopped);
        }
    }

    #[test]
    fn the_gauge_values_follow_the_order_of_the_phases() {
        let order = [
            Phase::Running,
            Phase::StopAccepting,
            Phase::DrainSessions,
            Phase::CentralFlush,
            Phase::Committer,
            Phase::Stopped,
        ];
        for (i, p) in order.iter().enumerate() {
            assert_eq!(*p as usize, i);
            assert_eq!(Phase::from_u8(i as u8), *p);
        }
        assert!(order.windows(2).all(|w| w[0] < w[1]));
    }
}
