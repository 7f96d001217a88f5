//! Waits a session keeps open for rare events (shutdown, its closer, a blacklist or door
//! cache version, a disabled-terminal notice), polled only after their own source woke
//! them.
//!
//! A session's task is woken for every frame and every answer, and `select!` polls each
//! of its branches every time. Most of those waits sit on primitives every session
//! shares: polling a pending `CancellationToken::cancelled()` locks the token's mutex and
//! its `Notify`'s waiter list, a `watch` change wait and a `broadcast` receive lock theirs,
//! so with thousands of sessions on two runtime workers each request took half a dozen
//! locks the other worker was taking too, for events that happen a few times a day. A
//! [`Gate`] gives the wrapped future a waker of its own: the future is polled once to
//! register it, then again only after that waker fired. Between times, polling costs an
//! atomic swap and the registration of the task's waker on the gate (both in the gate's
//! own memory).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Polls one rarely-ready future on behalf of a task, only when the future's own waker
/// was woken (or it was never polled, or it was just replaced after completing).
pub(crate) struct Gate {
    bell: Arc<Bell>,
    /// The waker handed to the gated future: rings the bell.
    waker: Waker,
}

struct Bell {
    /// Set when the gated future must be polled at the task's next turn.
    rung: AtomicBool,
    /// The task to wake when the bell rings.
    task: AtomicWaker,
}

impl Wake for Bell {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // The flag before the wake-up, and the task registers itself before it reads the
        // flag (`Gate::poll`): a ring between the two is seen at this turn or the next.
        self.rung.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for Gate {
    fn default() -> Self {
        let bell = Arc::new(Bell {
            // A future that was never polled has registered nothing: poll it first.
            rung: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(bell.clone());
        Gate { bell, waker }
    }
}

impl Gate {
    /// Polls `fut` if its waker fired since it was last polled, else registers the task
    /// and answers pending. Use one gate per future: after the future completed, the
    /// caller may replace it (re-arm a wait) and the next poll polls the new one.
    pub(crate) fn poll<F: Future + ?Sized>(&self, fut: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.poll_with(cx, |cx| fut.poll(cx))
    }

    /// As [`Gate::poll`], for a poll function: `poll` gets the gate's context, and may
    /// poll several rare futures with it (a session's rare waits share one gate, so that
    /// each turn of the session registers its waker once, not once per wait).
    pub(crate) fn poll_with<T>(&self, cx: &mut Context<'_>, poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        self.bell.task.register(cx.waker());
        if !self.bell.rung.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let out = poll(&mut Context::from_waker(&self.waker));
        if out.is_ready() {
            // Whatever replaces it has registered nothing yet, and a poll function that
            // answered one of its waits may have others ready too.
            self.bell.rung.store(true, Ordering::Release);
        }
        out
    }

    /// `fut` as a future polled through this gate.
    pub(crate) fn wait<'a, F: Future + ?Sized>(
        &'a self,
        mut fut: Pin<&'a mut F>,
    ) -> impl Future<Output = F::Output> + 'a {
        std::future::poll_fn(move |cx| self.poll(fut.as_mut(), cx))
    }

    /// `poll` as a future polled through this gate ([`Gate::poll_with`]).
    pub(crate) fn wait_with<'a, T>(
        &'a self,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T> + 'a,
    ) -> impl Future<Output = T> + 'a {
        std::future::poll_fn(move |cx| self.poll_with(cx, &mut poll))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::sync::{Notify, watch};

    use super::*;

    /// Counts its polls; ready once `notify` has woken it.
    struct Counted<'a> {
        polls: &'a AtomicUsize,
        notified: Pin<Box<tokio::sync::futures::Notified<'a>>>,
    }

    impl Future for Counted<'_> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.notified.as_mut().poll(cx)
        }
    }

    #[tokio::test]
    async fn a_gated_future_is_polled_once_to_register_then_only_when_woken() {
        let notify = Notify::new();
        let polls = AtomicUsize::new(0);
        let mut counted = Counted {
            polls: &polls,
            notified: Box::pin(notify.notified()),
        };
        let gate = Gate::default();
        let mut fut = Pin::new(&mut counted);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..100 {
            assert!(gate.poll(fut.as_mut(), &mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled only to register its waker");
        notify.notify_waiters();
        assert!(gate.poll(fut.as_mut(), &mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn the_task_is_woken_when_the_source_fires_from_another_task() {
        let (tx, mut rx) = watch::channel(0u64);
        let gate = Gate::default();
        let setter = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send_replace(7);
            tx
        });
        let r = {
            let changed = std::pin::pin!(rx.changed());
            tokio::time::timeout(Duration::from_secs(5), gate.wait(changed)).await
        };
        assert!(matches!(r, Ok(Ok(()))), "the gated wait saw the change: {r:?}");
        assert_eq!(*rx.borrow(), 7);
        let _tx = setter.await;
    }

    #[tokio::test]
    async fn a_replaced_future_is_polled_at_the_next_turn() {
        let (tx, rx) = watch::channel(0u64);
        let gate = Gate::default();
        let mut wait = tokio_util::sync::ReusableBoxFuture::new(next_change(rx));
        tx.send_replace(1);
        let (rx, v) = gate.wait(wait.get_pin()).await;
        assert_eq!(v, 1);
        // Re-armed without the old waker firing again: the new wait must register.
        wait.set(next_change(rx));
        let poll = futures::FutureExt::now_or_never(gate.wait(wait.get_pin()));
        assert!(poll.is_none(), "nothing changed yet");
        tx.send_replace(2);
        let r = tokio::time::timeout(Duration::from_secs(5), gate.wait(wait.get_pin())).await;
        assert!(matches!(r, Ok((_, 2))), "the second change reached the re-armed wait");
    }

    async fn next_change(mut rx: watch::Receiver<u64>) -> (watch::Receiver<u64>, u64) {
        let _ = rx.changed().await;
        let v = *rx.borrow_and_update();
        (rx, v)
    }
}
