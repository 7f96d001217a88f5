//! The terminal listener: accept, admit under the connection limits, one task per
//! connection, and a drain on shutdown.
//!
//! Admission (docs/PROTOCOL.md 9.3). `limits.connections_max` bounds the terminals signed
//! on at once. Up to `SIGN_ON_HEADROOM` connections more may be in sign-on beyond it, so
//! that a terminal coming back after a power cut can always sign on even at the limit;
//! its sign-on supersedes the session the gateway still holds for it (silent, never
//! closed by the dead terminal) at once, instead of after the idle timeout. When the
//! headroom is full as well, the oldest connection still in sign-on that has had
//! `SIGN_ON_GRACE` is closed (`overloaded`) for each newcomer: connections that never
//! signed on go first, and a signed-on session is never closed to make room. While no
//! connection can go, the newcomer waits, and the ones after it wait in the kernel's
//! backlog, so the gateway holds at most one connection beyond its limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cardgate_ledger::Ledger;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Connections;
pub use crate::admission::{SIGN_ON_GRACE, SIGN_ON_HEADROOM};
use crate::config::Limits;
use crate::session;

/// The first pause after an accept error that means we are out of a resource (file
/// descriptors, memory): every accept fails at once then, and retrying at once spins.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// The longest pause between failing accepts: a terminal waits at most this long in the
/// backlog once descriptors are free again.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accept errors are logged at most once per this interval, with how many were not.
/// Running out of descriptors lasts as long as the connections holding them: minutes.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves terminals until `shutdown` fires, then waits for every connection to answer
/// what it decided and close (bounded by `shutdown_grace_ms`).
pub async fn run(listener: TcpListener, ledger: Arc<Ledger>, limits: Arc<Limits>, shutdown: CancellationToken) {
    let connections = Arc::new(Connections::new(limits.connections_max));
    let tracker = TaskTracker::new();
    let mut errors = AcceptErrors::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    if let Some(pause) = errors.failed(&e, Instant::now()) {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.cancelled() => break,
                        }
                    }
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        errors.succeeded();
        // The one connection held beyond the limits: it waits here for room.
        tokio::select! {
            _ = connections.make_room() => {}
            _ = shutdown.cancelled() => break,
        }
        metrics::counter!("cardgate_connections_accepted_total").increment(1);
        let connection = connections.admit();
        let ledger = ledger.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(session::serve(stream, peer, ledger, limits, shutdown, connection));
    }
    drop(listener);
    tracker.close();
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "connections still open after the shutdown grace period"
        );
    }
}

// ---- accept errors ----------------------------------------------------------------

/// What the accept loop does about failed accepts: counts each by kind, backs off
/// exponentially while accepts fail for want of a resource, and logs at most once per
/// interval. Out of descriptors, every accept fails at once; retried without a pause the
/// loop spun, and logged each failure (~48 a second for two minutes).
struct AcceptErrors {
    /// The pause after the next resource failure; reset by a successful accept.
    backoff: Duration,
    log: LogLimiter,
}

impl AcceptErrors {
    fn new() -> AcceptErrors {
        AcceptErrors {
            backoff: ACCEPT_BACKOFF_MIN,
            log: LogLimiter::new(ACCEPT_ERROR_LOG_INTERVAL),
        }
    }

    /// Counts and maybe logs a failed accept; returns how long to pause, if at all.
    fn failed(&mut self, e: &std::io::Error, now: Instant) -> Option<Duration> {
        let kind = accept_error_kind(e);
        metrics::counter!("cardgate_accept_errors_total", "kind" => kind).increment(1);
        if !is_resource_exhaustion(e) {
            // The peer gave up before we accepted it: its business, not ours.
            tracing::debug!(error = %e, kind, "accept failed");
            return None;
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
        if let Some(suppressed) = self.log.allow(now) {
            tracing::warn!(
                error = %e,
                kind,
                suppressed,
                backoff_ms = pause.as_millis() as u64,
                "accept failed: out of resources; backing off (one line per {}s)",
                ACCEPT_ERROR_LOG_INTERVAL.as_secs()
            );
        }
        Some(pause)
    }

    fn succeeded(&mut self) {
        self.backoff = ACCEPT_BACKOFF_MIN;
    }
}

/// Lets one log line through per `interval` and counts the ones it holds back, so that
/// a condition repeating thousands of times a second is still seen, with its count.
pub(crate) struct LogLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log now, saying that `n` lines were held back since the last one.
    /// `None`: hold this one back.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The label of `cardgate_accept_errors_total`.
fn accept_error_kind(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => "emfile",
        Some(libc::ENFILE) => "enfile",
        Some(libc::ENOBUFS) => "enobufs",
        Some(libc::ENOMEM) => "enomem",
        Some(libc::ECONNABORTED) => "econnaborted",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_lets_one_line_through_per_interval_and_counts_the_rest() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = LogLimiter::new(10 * s);
        assert_eq!(l.allow(t0), Some(0), "the first line goes out");
        // 48 a second for two minutes, as when descriptors ran out.
        let mut out = Vec::new();
        for i in 1..=48 * 120u32 {
            let now = t0 + s * i / 48;
            if let Some(n) = l.allow(now) {
                out.push((now - t0, n));
            }
        }
        assert_eq!(out.len(), 12, "one line per 10 s over 120 s: {out:?}");
        assert_eq!(out[0], (10 * s, 479), "what was held back is counted");
        assert!(out.iter().all(|(_, n)| *n == 479), "{out:?}");
        // A quiet spell, then a single failure: it goes out at once and says so.
        assert_eq!(l.allow(t0 + 1000 * s), Some(0));
        assert_eq!(l.allow(t0 + 1000 * s), None);
        assert_eq!(l.allow(t0 + 1010 * s), Some(1));
    }

    #[test]
    fn accept_errors_back_off_exponentially_up_to_the_cap_and_reset_on_success() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let mut e = AcceptErrors::new();
        let now = Instant::now();
        let pauses: Vec<Duration> = (0..10).map(|_| e.failed(&emfile, now).expect("a pause")).collect();
        let ms: Vec<u128> = pauses.iter().map(|p| p.as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        e.succeeded();
        assert_eq!(e.failed(&emfile, now), Some(ACCEPT_BACKOFF_MIN));
        // A peer that reset before we accepted it is no reason to pause.
        let aborted = std::io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(e.failed(&aborted, now), None);
        assert_eq!(accept_error_kind(&aborted), "econnaborted");
        assert_eq!(accept_error_kind(&emfile), "emfile");
    }
}
