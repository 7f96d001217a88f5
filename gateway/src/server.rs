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

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use cardgate_codec::ErrorCode;
use cardgate_ledger::Ledger;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::session;

/// Connections that may be in sign-on beyond `limits.connections_max` signed-on
/// terminals. After a power cut a canteen's terminals (tens, a building's few hundred)
/// come back within seconds, each signing on in two round trips; 256 lets such a wave
/// sign on without waiting while costing at most 256 file descriptors and buffers of
/// ~2 KiB each.
pub const SIGN_ON_HEADROOM: usize = 256;

/// How long a connection may be in sign-on before it can be closed to make room for a
/// newer one. A terminal signs on in two round trips, milliseconds on a campus network;
/// a connection still in sign-on after a second is slow, dead or hostile. Younger ones
/// are left alone so that a wave of reconnecting terminals does not close its own.
pub const SIGN_ON_GRACE: Duration = Duration::from_secs(1);

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

// ---- admission --------------------------------------------------------------------

/// Asks one connection to close, saying why; the connection sends that code in its
/// closing ERROR.
#[derive(Default)]
pub(crate) struct Closer {
    token: CancellationToken,
    code: OnceLock<ErrorCode>,
}

impl Closer {
    /// The first reason given wins.
    pub(crate) fn close(&self, code: ErrorCode) {
        if self.code.set(code).is_ok() {
            self.token.cancel();
        }
    }

    /// Resolves once someone asked this connection to close, with the reason.
    pub(crate) async fn closed(&self) -> ErrorCode {
        self.token.cancelled().await;
        self.code.get().copied().unwrap_or(ErrorCode::ServerError)
    }
}

#[derive(Default)]
struct Registry {
    /// Connections alive: admitted and not yet dropped, in sign-on or not.
    open: usize,
    next_id: u64,
    /// Connections in sign-on that may be closed to make room, oldest (lowest id) first.
    signing_on: BTreeMap<u64, (tokio::time::Instant, Arc<Closer>)>,
    /// Each signed-on terminal's one session: its connection id and closer.
    sessions: HashMap<u64, (u64, Arc<Closer>)>,
}

/// The connections the gateway holds, and the limits it holds them to.
pub(crate) struct Connections {
    registry: Mutex<Registry>,
    /// Wakes the accept loop waiting for room when a connection ends.
    changed: Notify,
    /// `limits.connections_max`: signed-on terminals at once.
    sessions_max: usize,
}

/// What a verified sign-on may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignOn {
    /// Served: the terminal had no session.
    New,
    /// Served: the terminal's older session was told to close (`superseded`).
    Superseded,
    /// Refused: as many terminals as `connections_max` are signed on already.
    Full,
}

impl Connections {
    pub(crate) fn new(sessions_max: usize) -> Connections {
        Connections {
            registry: Mutex::new(Registry::default()),
            changed: Notify::new(),
            sessions_max,
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic elsewhere under this lock leaves counts that are still counts.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until one more connection fits, closing the oldest connection in sign-on
    /// that has had its grace when the limits are reached.
    pub(crate) async fn make_room(&self) {
        let limit = self.sessions_max + SIGN_ON_HEADROOM;
        loop {
            let wake = {
                let mut r = self.registry();
                if r.open < limit {
                    return;
                }
                match r.signing_on.first_key_value().map(|(id, (since, _))| (*id, *since)) {
                    Some((id, since)) if since.elapsed() >= SIGN_ON_GRACE => {
                        if let Some((_, closer)) = r.signing_on.remove(&id) {
                            closer.close(ErrorCode::Overloaded);
                        }
                        metrics::gauge!("cardgate_connections_signing_on").set(r.signing_on.len() as f64);
                        // Its slot is free once its task has sent the ERROR and ended.
                        None
                    }
                    Some((_, since)) => Some(since + SIGN_ON_GRACE),
                    None => None,
                }
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        _ = self.changed.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }

    /// Registers a new connection, in sign-on.
    pub(crate) fn admit(self: &Arc<Self>) -> Connection {
        let closer = Arc::new(Closer::default());
        let mut r = self.registry();
        r.open += 1;
        r.next_id += 1;
        let id = r.next_id;
        r.signing_on.insert(id, (tokio::time::Instant::now(), closer.clone()));
        metrics::gauge!("cardgate_connections_signing_on").set(r.signing_on.len() as f64);
        Connection {
            id,
            terminal: None,
            closer,
            connections: self.clone(),
        }
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        let r = self.registry();
        (r.open, r.signing_on.len(), r.sessions.len())
    }
}

/// One admitted connection; its place in the limits is given back when it is dropped.
pub(crate) struct Connection {
    id: u64,
    terminal: Option<u64>,
    closer: Arc<Closer>,
    connections: Arc<Connections>,
}

impl Connection {
    /// What tells this connection to close, and why.
    pub(crate) fn closer(&self) -> Arc<Closer> {
        self.closer.clone()
    }

    /// The terminal's proof verified: the connection leaves sign-on and becomes the
    /// terminal's one session, unless too many terminals are signed on.
    pub(crate) fn signed_on(&mut self, terminal_id: u64) -> SignOn {
        let c = self.connections.clone();
        let mut r = c.registry();
        r.signing_on.remove(&self.id);
        metrics::gauge!("cardgate_connections_signing_on").set(r.signing_on.len() as f64);
        let outcome = match r.sessions.get(&terminal_id) {
            Some(_) => SignOn::Superseded,
            None if r.sessions.len() >= c.sessions_max => return SignOn::Full,
            None => SignOn::New,
        };
        if let Some((_, older)) = r.sessions.insert(terminal_id, (self.id, self.closer.clone())) {
            older.close(ErrorCode::Superseded);
        }
        self.terminal = Some(terminal_id);
        outcome
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut r = self.connections.registry();
        r.open -= 1;
        if r.signing_on.remove(&self.id).is_some() {
            metrics::gauge!("cardgate_connections_signing_on").set(r.signing_on.len() as f64);
        }
        if let Some(t) = self.terminal
            && r.sessions.get(&t).is_some_and(|(id, _)| *id == self.id)
        {
            r.sessions.remove(&t);
        }
        drop(r);
        self.connections.changed.notify_one();
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

    #[test]
    fn a_sign_on_supersedes_the_terminals_older_session_and_the_limit_holds() {
        let c = Arc::new(Connections::new(2));
        let mut a = c.admit();
        let mut b = c.admit();
        assert_eq!(c.counts(), (2, 2, 0));
        assert_eq!(a.signed_on(7), SignOn::New);
        assert_eq!(b.signed_on(8), SignOn::New);
        assert_eq!(c.counts(), (2, 0, 2));
        // Terminal 7 again: its older session is told to close, the new one is served.
        let mut a2 = c.admit();
        assert_eq!(a2.signed_on(7), SignOn::Superseded);
        assert_eq!(a.closer.code.get(), Some(&ErrorCode::Superseded));
        assert!(b.closer.code.get().is_none());
        // The older session ending does not take the newer one's place with it.
        drop(a);
        assert_eq!(c.counts(), (2, 0, 2));
        // A third terminal is over the limit of two.
        let mut d = c.admit();
        assert_eq!(d.signed_on(9), SignOn::Full);
        drop(d);
        drop(b);
        let mut e = c.admit();
        assert_eq!(e.signed_on(9), SignOn::New);
        drop(a2);
        drop(e);
        assert_eq!(c.counts(), (0, 0, 0));
    }

    #[tokio::test]
    async fn at_the_limit_the_oldest_connection_in_sign_on_goes_to_make_room() {
        let c = Arc::new(Connections::new(1));
        let mut session = c.admit();
        assert_eq!(session.signed_on(1), SignOn::New);
        let waiting: Vec<Connection> = (0..SIGN_ON_HEADROOM).map(|_| c.admit()).collect();
        assert_eq!(c.counts(), (SIGN_ON_HEADROOM + 1, SIGN_ON_HEADROOM, 1));
        // Full: making room waits for the oldest in sign-on to have had its grace, then
        // closes it (and only it) and waits for it to end.
        let room = tokio::spawn({
            let c = c.clone();
            async move { c.make_room().await }
        });
        let oldest = waiting.first().expect("one").closer.clone();
        tokio::time::timeout(Duration::from_secs(60), oldest.closed())
            .await
            .expect("the oldest in sign-on is closed once it had its grace");
        assert_eq!(oldest.code.get(), Some(&ErrorCode::Overloaded));
        assert!(waiting[1..].iter().all(|w| w.closer.code.get().is_none()));
        assert!(
            session.closer.code.get().is_none(),
            "a session is never closed for room"
        );
        assert!(!room.is_finished());
        let mut waiting = waiting.into_iter();
        drop(waiting.next());
        room.await.expect("room once the closed connection ended");
    }
}
