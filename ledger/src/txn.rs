//! The one write protocol, in one type: reserve a journal slot (the only wait, taken
//! before any lock), take the locks, change memory, send the submission while the locks
//! are still held (so the journal holds each record's changes in the order they were
//! made), and let the result out only once the commit is durable.
//!
//! `Txn` is the reserved slot; sending consumes it and hands back a `Durable<T>`, whose
//! value cannot be reached without awaiting the commit. `Pending` is the same for a
//! terminal's answer, which turns into "system error" if the commit fails.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use cardgate_codec::{DeclineReason, Declined, Message};
use cardgate_domain::entry::{EntryBody, EntryRecord};
use cardgate_journal::{CommitResult, JournalError};
use smallvec::{SmallVec, smallvec};
use tokio::sync::{mpsc, oneshot};

use crate::records::{Journal, LedgerSchema, Submission, Writes};

/// A reserved journal slot. Take it before any lock; send exactly one submission on it
/// while the locks that made the change are held.
pub(crate) struct Txn<'a> {
    permit: mpsc::Permit<'a, Submission>,
}

impl<'a> Txn<'a> {
    /// Reserves the slot, waiting while the journal's queue is full (backpressure).
    pub(crate) async fn begin(journal: &'a Journal) -> Result<Txn<'a>, JournalError> {
        Ok(Txn {
            permit: journal.reserve().await?,
        })
    }

    /// Sends one entry and the records it left; `mark` is the tx id it used (0 for
    /// none). `value` is released by `Durable` once the commit is durable.
    pub(crate) fn send<T>(self, value: T, time_ms: i64, body: EntryBody, records: Writes, mark: u64) -> Durable<T> {
        self.send_all(value, smallvec![EntryRecord { time_ms, body }], records, mark)
    }

    /// Sends several entries as one submission: durable together or not at all.
    pub(crate) fn send_all<T>(
        self,
        value: T,
        entries: SmallVec<[EntryRecord; 1]>,
        records: Writes,
        mark: u64,
    ) -> Durable<T> {
        let (done, wait) = oneshot::channel();
        self.permit.send(Submission {
            entries,
            records,
            mark,
            force_sync: false,
            done: Some(done),
        });
        Durable { value, wait }
    }

    /// Sends records that are written with the commit itself and carry no entry (meta
    /// values, removing staged chunks): nothing replay needs to see.
    pub(crate) fn write_direct(self, records: Writes) -> Durable<()> {
        debug_assert!(
            records
                .iter()
                .all(|r| <LedgerSchema as cardgate_journal::Schema>::key(r).is_none()),
            "state records need an entry that replay can apply"
        );
        let (done, wait) = oneshot::channel();
        self.permit.send(Submission {
            entries: smallvec![],
            records,
            mark: 0,
            force_sync: false,
            done: Some(done),
        });
        Durable { value: (), wait }
    }

    /// Sends a barrier: `value` (something observed, which may not be durable yet) is
    /// released once everything submitted before it is.
    pub(crate) fn barrier<T>(self, value: T) -> Durable<T> {
        let (done, wait) = oneshot::channel();
        self.permit.send(Submission::barrier(done));
        Durable { value, wait }
    }
}

/// A result that may be used only once the commit it depends on is durable.
#[must_use = "a result may be used only once its commit is durable: await `durable()`"]
pub struct Durable<T> {
    value: T,
    wait: oneshot::Receiver<CommitResult>,
}

impl<T> Durable<T> {
    /// The same wait for a value made from this one (before it is released).
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Durable<U> {
        Durable {
            value: f(self.value),
            wait: self.wait,
        }
    }

    /// The value and the id of the submission's first entry (0 for a barrier), once
    /// durable.
    pub async fn durable(self) -> Result<(T, u64), JournalError> {
        let id = self.wait.await.map_err(|_| JournalError::Closed)??;
        Ok((self.value, id))
    }
}

/// A terminal's answer that may be sent once the decision (or everything it observed)
/// is durable; "system error" if the journal failed.
#[must_use = "an answer must wait for its commit"]
pub struct Pending {
    answer: Message,
    wait: Option<oneshot::Receiver<CommitResult>>,
    /// What to answer if the commit fails (else the money answer's "system error").
    failed: Option<Message>,
}

impl Pending {
    /// An answer that needs no commit (it observed nothing that could be undurable).
    pub fn ready(answer: Message) -> Pending {
        Pending {
            answer,
            wait: None,
            failed: None,
        }
    }

    /// An answer released once durable, or `failed` if the commit fails.
    pub(crate) fn from_durable(d: Durable<Message>, failed: Message) -> Pending {
        Pending {
            answer: d.value,
            wait: Some(d.wait),
            failed: Some(failed),
        }
    }

    /// A run of frames: the first waits for the commit (`failed` instead if it
    /// fails), the others follow it in order.
    pub(crate) fn run(d: Durable<Vec<Message>>, failed: Message) -> Vec<Pending> {
        let mut frames = d.value.into_iter();
        let Some(first) = frames.next() else {
            return vec![Pending::ready(failed)];
        };
        let mut out = vec![Pending {
            answer: first,
            wait: Some(d.wait),
            failed: Some(failed),
        }];
        out.extend(frames.map(Pending::ready));
        out
    }

    /// The answer it will give once durable (not to be sent before: for counting).
    pub fn peek(&self) -> &Message {
        &self.answer
    }

    /// The answer, once durable.
    pub async fn resolve(self) -> Message {
        self.await
    }
}

impl From<Durable<Message>> for Pending {
    fn from(d: Durable<Message>) -> Pending {
        Pending {
            answer: d.value,
            wait: Some(d.wait),
            failed: None,
        }
    }
}

/// Polling a `Pending` waits for its commit, so a connection can keep its unanswered
/// requests in a plain queue and await the oldest.
impl Future for Pending {
    type Output = Message;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Message> {
        let this = &mut *self;
        // The answer is handed out once, and what stays behind is a "system error": a
        // `Pending` polled again after it was ready gives that, never the answer twice
        // and never an answer whose commit failed.
        let take = |answer: &mut Message| std::mem::replace(answer, system_error_for(answer));
        match &mut this.wait {
            None => Poll::Ready(take(&mut this.answer)),
            Some(wait) => match Pin::new(wait).poll(cx) {
                Poll::Ready(Ok(Ok(_))) => {
                    this.wait = None;
                    Poll::Ready(take(&mut this.answer))
                }
                Poll::Ready(_) => {
                    this.wait = None;
                    let undurable = take(&mut this.answer);
                    Poll::Ready(this.failed.take().unwrap_or_else(|| system_error_for(&undurable)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

fn system_error_for(answer: &Message) -> Message {
    let (tx_seq, card, time_ms) = match answer {
        Message::Approved(a) => (a.tx_seq, a.card, a.time_ms),
        Message::Declined(d) => (d.tx_seq, d.card, d.time_ms),
        Message::Balance(b) => (0, b.card, 0),
        // Not a money answer (a blacklist page, ...): a DECLINED of no sale would be
        // read as a page. The protocol's word for the gateway failing is ERROR
        // `server_error`, which the session sends with request id 0 and closes on.
        _ => {
            return Message::Error(cardgate_codec::ErrorFrame {
                code: cardgate_codec::ErrorCode::ServerError,
                detail: 0,
            });
        }
    };
    Message::Declined(Declined {
        tx_seq,
        card,
        reason: DeclineReason::SystemError,
        balance_fen: 0,
        time_ms,
    })
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use cardgate_codec::{Approved, CardNo, DeclineReason, HeartbeatAck, Message};

    use super::*;

    fn approved() -> Message {
        Message::Approved(Approved {
            tx_seq: 9,
            tx_id: 1,
            card: CardNo(7),
            amount_fen: 100,
            balance_fen: 900,
            time_ms: 5,
        })
    }

    fn poll(p: &mut Pending) -> Poll<Message> {
        Pin::new(p).poll(&mut Context::from_waker(Waker::noop()))
    }

    fn declined_for_system_error(m: &Message) -> bool {
        matches!(m, Message::Declined(d) if d.reason == DeclineReason::SystemError)
    }

    #[test]
    fn an_answer_is_handed_out_once_and_never_after_its_commit_failed() {
        // Durable: the answer, then (polled again) a system error, not the answer twice.
        let (tx, rx) = oneshot::channel();
        let mut p = Pending::from(Durable {
            value: approved(),
            wait: rx,
        });
        assert!(poll(&mut p).is_pending());
        tx.send(Ok(1)).unwrap();
        assert_eq!(poll(&mut p), Poll::Ready(approved()));
        assert!(matches!(poll(&mut p), Poll::Ready(m) if declined_for_system_error(&m)));

        // The commit failed: the failure answer, and polled again never the undurable one.
        let (tx, rx) = oneshot::channel();
        let failed = Message::HeartbeatAck(HeartbeatAck {
            server_time_ms: 2,
            blacklist_version: 1,
        });
        let mut p = Pending::from_durable(
            Durable {
                value: approved(),
                wait: rx,
            },
            failed.clone(),
        );
        tx.send(Err(JournalError::Closed)).unwrap();
        assert_eq!(poll(&mut p), Poll::Ready(failed));
        assert!(matches!(poll(&mut p), Poll::Ready(m) if declined_for_system_error(&m)));

        // Without a failure answer of its own, a money answer fails as a declined
        // system error for the same request.
        let (tx, rx) = oneshot::channel();
        let mut p = Pending::from(Durable {
            value: approved(),
            wait: rx,
        });
        drop(tx);
        let Poll::Ready(Message::Declined(d)) = poll(&mut p) else {
            panic!("a declined system error")
        };
        assert_eq!((d.tx_seq, d.card, d.reason), (9, CardNo(7), DeclineReason::SystemError));
    }
}
