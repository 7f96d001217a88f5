//! The terminal listener: accept under a connection cap, one task per connection, and a
//! drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cardgate_ledger::Ledger;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::session;

/// Pause after an accept error that means we are out of a resource (file descriptors,
/// memory): long enough not to spin, short enough that the loop never parks.
const ACCEPT_RESOURCE_BACKOFF: Duration = Duration::from_millis(20);

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
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    metrics::counter!("cardgate_accept_errors_total").increment(1);
                    if is_resource_exhaustion(&e) {
                        tracing::warn!(error = %e, "accept failed: out of resources; backing off");
                        tokio::time::sleep(ACCEPT_RESOURCE_BACKOFF).await;
                    } else {
                        tracing::debug!(error = %e, "accept failed");
                    }
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        metrics::counter!("cardgate_connections_accepted_total").increment(1);
        let ledger = ledger.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            session::serve(stream, peer, ledger, limits, shutdown).await;
            drop(permit);
        });
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

fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
