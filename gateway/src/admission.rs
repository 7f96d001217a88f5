//! Admission of terminal connections (docs/PROTOCOL.md 9.3): how many may be signed on
//! and in sign-on, which one goes to make room, one session per terminal, and the
//! handle that closes a connection with a reason. The listener (`server.rs`) admits,
//! the session (`session.rs`) signs on and closes; both use this, neither the other.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use cardgate_codec::ErrorCode;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

#[cfg(test)]
mod tests {
    use super::*;

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
