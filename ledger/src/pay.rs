//! The hot path: purchases, reversals and balance inquiries from terminals.
//!
//! A money request goes only down: the journal slot (`Txn`), the terminal's entry, the
//! card (read), the account, the rule (`cardgate_domain::rules::purchase`, a verdict),
//! the submission sent while the account is still locked, and a `Pending` answer that
//! may be sent once the committer reports it durable. It never enters the desk.
//!
//! Idempotency: a terminal's transaction sequence numbers strictly increase. Each
//! terminal remembers the outcome of sequence number `s` in slot `s % SEQ_SLOTS`, and
//! answers from it exactly the numbers the protocol promises (docs/PROTOCOL.md 8.2): `s`
//! is answerable, for a retry or as a reversal's original, if and only if it was used
//! and `highest - SEQ_SLOTS < s`, where `highest` counts the request being decided. A
//! slot that still holds an older number (its successors were skipped) is not answered:
//! the rule depends on the numbers alone, so a terminal can predict every answer. Memory
//! per terminal is fixed. The slots are checkpointed and rebuilt by replay like every
//! other record, and `last_seq` with them. Nothing here reads sled.

use cardgate_codec::{Approved, Balance, CardNo, CardStatusCode, DeclineReason, Declined, Message, Purchase, Reversal};
use cardgate_domain::entry::{EntryBody, EntryRecord, TxEntry};
use cardgate_domain::model::{Exception, ExceptionKind, Outcome, SeqRecord, TxKind};
use cardgate_domain::money::{from_fen, to_fen};
use cardgate_domain::rules::purchase::{self as rules, Verdict};
use rust_decimal::Decimal;
use smallvec::{SmallVec, smallvec};

use crate::ledger::Ledger;
pub use crate::records::seq_record_of;
use crate::records::{StateWrite, Writes};
use crate::state::TerminalState;
use crate::txn::{Pending, Txn};

/// A money request as the ledger sees it.
#[derive(Clone, Copy, Debug)]
struct Request {
    kind: TxKind,
    seq: u64,
    card: CardNo,
    amount_fen: i64,
    original_seq: u64,
    terminal_time_ms: i64,
}

/// Fen of an amount the ledger computed: whole fen within `i64` by construction.
pub(crate) fn fen(value: Decimal) -> i64 {
    to_fen(value).expect("ledger amounts are whole fen within i64")
}

/// The answer a remembered outcome gives.
pub fn answer_of(rec: &SeqRecord) -> Message {
    match rec.outcome {
        Outcome::Approved {
            tx_id,
            balance_after_fen,
        } => Message::Approved(Approved {
            tx_seq: rec.seq,
            tx_id,
            card: rec.card,
            amount_fen: rec.amount_fen,
            balance_fen: balance_after_fen,
            time_ms: rec.time_ms,
        }),
        Outcome::Declined { reason, balance_fen } => Message::Declined(Declined {
            tx_seq: rec.seq,
            card: rec.card,
            reason: DeclineReason::from_code(reason).unwrap_or(DeclineReason::SystemError),
            balance_fen,
            time_ms: rec.time_ms,
        }),
    }
}

impl Ledger {
    pub async fn purchase(&self, terminal_id: u64, p: &Purchase) -> Pending {
        self.decide(
            terminal_id,
            Request {
                kind: TxKind::Purchase,
                seq: p.tx_seq,
                card: p.card,
                amount_fen: p.amount_fen,
                original_seq: 0,
                terminal_time_ms: p.terminal_time_ms,
            },
        )
        .await
    }

    pub async fn reversal(&self, terminal_id: u64, r: &Reversal) -> Pending {
        self.decide(
            terminal_id,
            Request {
                kind: TxKind::Reversal,
                seq: r.tx_seq,
                card: r.card,
                amount_fen: r.amount_fen,
                original_seq: r.original_tx_seq,
                terminal_time_ms: r.terminal_time_ms,
            },
        )
        .await
    }

    /// A balance inquiry; answered once everything it observed is durable.
    pub async fn balance(&self, terminal_id: u64, card_no: CardNo) -> Pending {
        let now = self.now_ms();
        let declined = |reason| {
            Message::Declined(Declined {
                tx_seq: 0,
                card: card_no,
                reason,
                balance_fen: 0,
                time_ms: now,
            })
        };
        let Ok(txn) = Txn::begin(self.journal()).await else {
            return Pending::ready(declined(DeclineReason::SystemError));
        };
        let s = &self.state;
        let enabled = s.terminal(terminal_id).map(|t| t.info.enabled);
        let answer = if enabled != Some(true) {
            declined(DeclineReason::TerminalNotAllowed)
        } else {
            match s.card(card_no) {
                None => declined(DeclineReason::UnknownCard),
                Some(card) => match s.account(card.account) {
                    None => declined(DeclineReason::UnknownCard),
                    Some(acct) => {
                        let limits = acct.effective_limits(&s.params());
                        let status = match card.refusal(now) {
                            Some(DeclineReason::CardExpired) => CardStatusCode::Expired,
                            _ => card.status.wire(),
                        };
                        Message::Balance(Balance {
                            card: card_no,
                            status,
                            balance_fen: fen(acct.balance),
                            spent_today_fen: fen(rules::spent_today(&acct, self.day_of(now))),
                            daily_limit_fen: fen(limits.daily_max),
                        })
                    }
                },
            }
        };
        txn.barrier(answer).into()
    }

    async fn decide(&self, terminal_id: u64, req: Request) -> Pending {
        let Ok(txn) = Txn::begin(self.journal()).await else {
            return Pending::ready(self.declined(&req, DeclineReason::SystemError, 0));
        };
        match req.kind {
            TxKind::Purchase => METRICS.purchases.increment(1),
            TxKind::Reversal => METRICS.reversals.increment(1),
            TxKind::OfflinePurchase => unreachable!("offline sales are uploaded (offline.rs), not decided"),
        }
        let Some(mut term) = self.state.terminal_mut(terminal_id) else {
            return Pending::ready(self.declined(&req, DeclineReason::TerminalNotAllowed, 0));
        };
        if req.seq == 0 {
            return Pending::ready(self.declined(&req, DeclineReason::StaleSequence, 0));
        }
        if req.seq <= term.last_seq() {
            let answer = match term.answerable(req.seq, req.seq) {
                Some(rec) if rec.same_request(req.kind, req.card, req.amount_fen, req.original_seq) => {
                    METRICS.retries.increment(1);
                    answer_of(rec)
                }
                Some(_) => self.declined(&req, DeclineReason::Duplicate, 0),
                None => self.declined(&req, DeclineReason::StaleSequence, 0),
            };
            // The original may still be on its way to disk: answer after a barrier.
            return txn.barrier(answer).into();
        }
        match req.kind {
            TxKind::Purchase => self.purchase_fresh(&mut term, &req, txn),
            TxKind::Reversal => self.reversal_fresh(&mut term, &req, txn),
            TxKind::OfflinePurchase => unreachable!("offline sales are uploaded (offline.rs), not decided"),
        }
    }

    fn declined(&self, req: &Request, reason: DeclineReason, balance_fen: i64) -> Message {
        Message::Declined(Declined {
            tx_seq: req.seq,
            card: req.card,
            reason,
            balance_fen,
            time_ms: self.now_ms(),
        })
    }

    /// The journal entry of a decision, declined with "system error" until decided.
    fn tx_entry(&self, term: &TerminalState, req: &Request) -> TxEntry {
        TxEntry {
            kind: req.kind,
            tx_id: 0,
            terminal: term.info.id,
            merchant_id: term.info.merchant_id,
            seq: req.seq,
            original_seq: req.original_seq,
            original_tx_id: 0,
            card: req.card,
            account: 0,
            amount_fen: req.amount_fen,
            outcome: declined(DeclineReason::SystemError, 0),
            terminal_time_ms: req.terminal_time_ms,
            single_limit_fen: 0,
            daily_limit_fen: 0,
            spent_today_after_fen: 0,
            blacklist_version: self.state.blacklist().version(),
        }
    }

    fn purchase_fresh(&self, term: &mut TerminalState, req: &Request, txn: Txn<'_>) -> Pending {
        let now = self.now_ms();
        let mut entry = self.tx_entry(term, req);
        if let Some(reason) = rules::terminal_refusal(term.info.kind, term.info.enabled, req.amount_fen) {
            entry.account = self.account_of_card(req.card);
            entry.outcome = declined(reason, 0);
            return self.finish(term, now, entry, Writes::new(), txn);
        }
        // Read-locked: a desk change to the card waits until this decision is sent.
        let Some(card) = self.state.card_ref(req.card) else {
            entry.outcome = declined(DeclineReason::UnknownCard, 0);
            return self.finish(term, now, entry, Writes::new(), txn);
        };
        entry.account = card.account;
        let Some(mut acct) = self.state.account_mut(card.account) else {
            tracing::error!(card = %req.card, account = card.account, "card points at a missing account");
            entry.outcome = declined(DeclineReason::UnknownCard, 0);
            return self.finish(term, now, entry, Writes::new(), txn);
        };
        let today = self.day_of(now);
        let verdict = rules::purchase(&card, &acct, &self.state.params(), now, today, from_fen(req.amount_fen));
        let mut writes = Writes::new();
        match verdict {
            Verdict::CardRefused(reason) => entry.outcome = declined(reason, 0),
            Verdict::Decline {
                reason,
                balance,
                spent_today,
                limits,
            } => {
                entry.outcome = declined(reason, fen(balance));
                entry.single_limit_fen = fen(limits.single_payment_max);
                entry.daily_limit_fen = fen(limits.daily_max);
                entry.spent_today_after_fen = fen(spent_today);
            }
            Verdict::Approve {
                balance_after,
                spent_today_after,
                limits,
            } => {
                debug_assert!(balance_after >= Decimal::ZERO);
                acct.balance = balance_after;
                acct.spent_today = spent_today_after;
                acct.day = today;
                let tx_id = self.state.new_tx_id();
                entry.tx_id = tx_id;
                entry.outcome = Outcome::Approved {
                    tx_id,
                    balance_after_fen: fen(balance_after),
                };
                entry.single_limit_fen = fen(limits.single_payment_max);
                entry.daily_limit_fen = fen(limits.daily_max);
                entry.spent_today_after_fen = fen(spent_today_after);
                writes.push(StateWrite::Account(*acct));
            }
        }
        // Sent while the account is locked, so the journal orders this account's changes.
        self.finish(term, now, entry, writes, txn)
    }

    fn reversal_fresh(&self, term: &mut TerminalState, req: &Request, txn: Txn<'_>) -> Pending {
        let now = self.now_ms();
        let mut entry = self.tx_entry(term, req);
        // Recorded on every decline too, so that the account's history shows it.
        entry.account = self.account_of_card(req.card);
        if let Some(reason) = rules::terminal_refusal(term.info.kind, term.info.enabled, req.amount_fen) {
            entry.outcome = declined(reason, 0);
            return self.finish(term, now, entry, Writes::new(), txn);
        }
        // Counting the reversal's own number, which is about to take its slot: an
        // original 32 or more below it is forgotten even while its slot still holds it.
        let original = term.answerable(req.original_seq, req.seq).copied();
        let original_tx_id = match rules::reversal_target(original.as_ref(), req.card, req.amount_fen) {
            Ok(id) => id,
            Err(reason) => {
                entry.outcome = declined(reason, 0);
                return self.finish(term, now, entry, Writes::new(), txn);
            }
        };
        let original = original.expect("a reversal target was found");
        entry.original_tx_id = original_tx_id;
        entry.account = original.account;
        let Some(mut acct) = self.state.account_mut(original.account) else {
            tracing::error!(account = original.account, "approved purchase names a missing account");
            entry.outcome = declined(DeclineReason::SystemError, 0);
            return self.finish(term, now, entry, Writes::new(), txn);
        };
        if let Err(reason) = rules::may_credit(&acct) {
            // The account was closed (its balance paid out) since the purchase: the
            // money cannot go back into it. The desk owes the refund in cash, and sees
            // it as an exception raised with this decision.
            entry.outcome = declined(reason, 0);
            let exception = Exception {
                id: self.state.new_exception_id(),
                time_ms: now,
                kind: ExceptionKind::RefundOwed,
                account: original.account,
                card: req.card,
                terminal: term.info.id,
                seq: req.seq,
                tx_id: original_tx_id,
                amount_fen: req.amount_fen,
                detail: format!(
                    "reversal of purchase tx {original_tx_id} (terminal {} seq {}) after account {} was closed",
                    term.info.id, req.original_seq, original.account
                ),
                resolved: None,
            };
            drop(acct);
            return self.finish_with(term, now, entry, Writes::new(), Some(exception), txn);
        }
        let today = self.day_of(now);
        let (balance_after, spent_after) =
            rules::refund(&acct, from_fen(req.amount_fen), self.day_of(original.time_ms), today);
        acct.balance = balance_after;
        acct.spent_today = spent_after;
        acct.day = today;
        let tx_id = self.state.new_tx_id();
        entry.tx_id = tx_id;
        entry.outcome = Outcome::Approved {
            tx_id,
            balance_after_fen: fen(balance_after),
        };
        entry.spent_today_after_fen = fen(spent_after);
        let reversed = term
            .recent_mut(req.original_seq)
            .expect("found above, under the same lock");
        reversed.reversed_by = Some(req.seq);
        let reversed = *reversed;
        let mut writes = Writes::new();
        writes.push(StateWrite::Account(*acct));
        writes.push(StateWrite::Seq(reversed));
        self.finish(term, now, entry, writes, txn)
    }

    /// The account a card number belongs to (0 when the card is unknown).
    fn account_of_card(&self, card: CardNo) -> u64 {
        self.state.card(card).map(|c| c.account).unwrap_or(0)
    }

    /// Records the outcome for idempotency, sends the submission, and hands back the
    /// answer to send once it is durable.
    fn finish(&self, term: &mut TerminalState, now: i64, entry: TxEntry, writes: Writes, txn: Txn<'_>) -> Pending {
        self.finish_with(term, now, entry, writes, None, txn)
    }

    /// As `finish`, with an exception raised by the decision in the same submission.
    fn finish_with(
        &self,
        term: &mut TerminalState,
        now: i64,
        entry: TxEntry,
        mut writes: Writes,
        exception: Option<Exception>,
        txn: Txn<'_>,
    ) -> Pending {
        let rec = seq_record_of(&entry, now);
        assert!(rec.seq > term.last_seq(), "a fresh decision has a new sequence number");
        // docs/PROTOCOL.md 7.1: only these declines carry the balance.
        debug_assert!(match entry.outcome {
            Outcome::Declined { reason, balance_fen } =>
                balance_fen == 0 || DeclineReason::from_code(reason).is_some_and(DeclineReason::shows_balance),
            Outcome::Approved { .. } => true,
        });
        if term.remember(rec) {
            // Numbers skipped: the terminal's gaps are part of what is durable.
            writes.push(StateWrite::Gaps(Box::new(term.gaps_record())));
        }
        writes.push(StateWrite::Seq(rec));
        if let Outcome::Declined { reason, .. } = entry.outcome
            && let Some(counter) = METRICS.declines.get(usize::from(reason))
        {
            counter.increment(1);
        }
        let mut entries: SmallVec<[EntryRecord; 1]> = smallvec![EntryRecord {
            time_ms: now,
            body: EntryBody::Tx(entry),
        }];
        if let Some(e) = &exception {
            writes.push(StateWrite::Exception(Box::new(e.clone())));
            entries.push(EntryRecord {
                time_ms: now,
                body: EntryBody::Exception(Box::new(e.clone())),
            });
        }
        let sent = txn.send_all(answer_of(&rec), entries, writes, entry.tx_id);
        if let Some(e) = exception {
            metrics::counter!("cardgate_exceptions_raised_total", "kind" => e.kind.as_str()).increment(1);
            self.state.put_exception(e);
        }
        sent.into()
    }
}

fn declined(reason: DeclineReason, balance_fen: i64) -> Outcome {
    Outcome::Declined {
        reason: reason.code(),
        balance_fen,
    }
}

/// Per-decision metrics, registered once: building a labelled key on every call cost
/// an allocation and ~3% of the gateway's CPU under load. Registered on first use,
/// which is after the daemon installs its recorder.
struct LedgerMetrics {
    purchases: metrics::Counter,
    reversals: metrics::Counter,
    retries: metrics::Counter,
    /// Indexed by decline reason code.
    declines: Vec<metrics::Counter>,
}

static METRICS: std::sync::LazyLock<LedgerMetrics> = std::sync::LazyLock::new(|| {
    let max = DeclineReason::ALL.iter().map(|r| r.code()).max().unwrap_or(0);
    let declines = (0..=max)
        .map(|code| {
            let reason = DeclineReason::from_code(code).map(|r| r.as_str()).unwrap_or("unknown");
            metrics::counter!("cardgate_declines_total", "reason" => reason)
        })
        .collect();
    LedgerMetrics {
        purchases: metrics::counter!("cardgate_decisions_total", "kind" => "purchase"),
        reversals: metrics::counter!("cardgate_decisions_total", "kind" => "reversal"),
        retries: metrics::counter!("cardgate_retries_total"),
        declines,
    }
});
