//! Where a SQLite central store's CPU runs while it keeps up: below the terminals. A batch
//! is tens of milliseconds of CPU at the POS peak (reading the journal, building rows,
//! binding them, SQLite's own work); on two cores shared with the terminals' runtime it
//! queued their answers behind it. While the store is within `central.yield_below_ms`
//! that work runs at nice `BACKGROUND_NICE`, and the kernel gives the terminals the CPU
//! first; once it falls behind, it runs at the flusher's normal priority again
//! (`flusher.rs`, `choose_priority`).
//!
//! An unprivileged process can lower a thread's priority but never raise it again, and a
//! thread inherits the nice value of the thread that starts it. So a lowered thread is
//! never asked to work at the normal priority: the background work hops to a runtime of
//! its own whose threads are lowered as they start (`BackgroundRuntime`), and threads that
//! must be able to come back (the SQLite connection's worker) are started from the
//! flusher's own thread, which is never lowered.

use std::future::Future;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinError;
use tokio_util::task::AbortOnDropHandle;

/// The nice value of the central store's work while the store keeps up: below the
/// terminals' runtime workers and the committer (0). In alternated runs at 20,000
/// purchases/s, lowering the SQLite writer took the purchase p99 from 3.4-3.7 ms to
/// 2.7-2.8 ms (docs/PERFORMANCE.md 5.11); lowering the flusher's own thread as well took
/// it at 10,000 terminals from 4.7-5.1 ms to 3.4-3.6 ms (5.11, from outside; 5.12's
/// slower host was too noisy at 10,000 terminals to confirm or refute it).
pub const BACKGROUND_NICE: i32 = 10;

/// The name of the background runtime's threads (within Linux's 15 bytes).
pub const BACKGROUND_THREAD: &str = "cg-central-bg";

/// Sets `BACKGROUND_NICE` on the process's thread named `name` (Linux keeps nice values
/// per thread).
#[cfg(target_os = "linux")]
pub(crate) fn lower_thread(name: &str) -> std::io::Result<()> {
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let tid = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        let Some(tid) = tid else { continue };
        return rustix::process::setpriority_process(Some(tid), BACKGROUND_NICE).map_err(std::io::Error::from);
    }
    Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no such thread"))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_thread(_name: &str) -> std::io::Result<()> {
    Err(unsupported())
}

/// Sets `BACKGROUND_NICE` on the calling thread (on Linux, `setpriority` with pid 0
/// applies to the calling thread alone).
#[cfg(target_os = "linux")]
fn lower_current_thread() -> std::io::Result<()> {
    rustix::process::setpriority_process(None, BACKGROUND_NICE).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn lower_current_thread() -> std::io::Result<()> {
    Err(unsupported())
}

#[cfg(not(target_os = "linux"))]
fn unsupported() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Unsupported, "per-thread priority is Linux only")
}

/// A one-worker runtime whose threads (its worker and its blocking pool) run at
/// `BACKGROUND_NICE`. Shut down without blocking when dropped: the flusher that owns it
/// ends inside another runtime, where a blocking drop would panic.
pub struct BackgroundRuntime {
    handle: Handle,
    /// Taken only by `drop`.
    runtime: Option<Runtime>,
}

impl BackgroundRuntime {
    pub fn start() -> std::io::Result<BackgroundRuntime> {
        Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(BACKGROUND_THREAD)
            .on_thread_start(|| {
                if let Err(e) = lower_current_thread() {
                    // The work still runs, at the priority it inherited.
                    tracing::debug!(error = %e, "central store: cannot lower a background thread's priority");
                }
            })
            .enable_all()
            .build()
            .map(|rt| BackgroundRuntime {
                handle: rt.handle().clone(),
                runtime: Some(rt),
            })
    }

    /// Runs `work` on this runtime and waits for it; dropping the returned future (the
    /// flusher's batch timeout) cancels the work, as dropping `work` itself would.
    pub async fn run<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Result<T, JoinError> {
        AbortOnDropHandle::new(self.handle.spawn(work)).await
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
