//! Sales a POS terminal made while it could not reach the gateway, uploaded when it can
//! (docs/PROTOCOL.md, section 8.6).
//!
//! A batch is checked whole first: its shape (sequence numbers strictly increasing,
//! amounts in range, a count within the limit) and every sale's MAC under the
//! terminal's key (its previous key too, for sales made before a rekey reached it). One
//! bad and nothing of the batch is posted. Then each sale is posted on its own, under its
//! account's lock like a purchase, exactly once by its sequence number: a number the
//! gateway already holds is a duplicate (a batch sent again, or cut off and resent), not
//! posted again. What should not have been sold (`rules::offline`) is posted and flagged
//! as an exception for the card desk in the same submission; a sale with nothing to
//! debit is recorded declined, with its exception. The answer waits for a barrier behind
//! every sale of the batch.

use cardgate_codec::crypto::verify_offline_sale_mac;
use cardgate_codec::{
    DeclineReason, Message, OfflineBatch, OfflineLimits, OfflineResult, OfflineSale, OfflineStatus, TerminalSecret,
};
use cardgate_domain::entry::{EntryBody, EntryRecord, TxEntry};
use cardgate_domain::model::{Exception, ExceptionKind, Outcome, TerminalKind, TxKind};
use cardgate_domain::money::{AMOUNT_FEN_MAX, from_fen};
use cardgate_domain::rules::offline::{SaleFacts, SaleVerdict, offline_sale, plausible_time};
use cardgate_domain::rules::purchase::spent_today;
use smallvec::{SmallVec, smallvec};

use crate::ledger::Ledger;
use crate::pay::fen;
use crate::records::seq_record_of;
use crate::records::{StateWrite, Writes};
use crate::txn::{Pending, Txn};

/// What became of one sale.
enum Posted {
    Posted { flagged: bool },
    Duplicate,
}

impl Ledger {
    /// The offline limits a terminal is told at sign-on: a POS terminal's, none for
    /// other kinds (they never sell).
    pub fn offline_limits(&self, terminal_id: u64) -> Option<OfflineLimits> {
        let t = self.state.terminal(terminal_id)?;
        (t.info.kind == TerminalKind::Pos).then_some(self.config.offline)
    }

    /// Posts an upload batch (`sales` are the batch's OFFLINE_SALEs, as many as it
    /// announced); the answer is the batch's OFFLINE_RESULT.
    pub async fn offline_upload(&self, terminal_id: u64, batch: &OfflineBatch, sales: &[OfflineSale]) -> Pending {
        let limits = self.config.offline;
        let result = |status, posted, duplicates, flagged, first_bad_seq, last_tx_seq| {
            Message::OfflineResult(OfflineResult {
                first_tx_seq: batch.first_tx_seq,
                count: batch.count,
                status,
                posted,
                duplicates,
                flagged,
                first_bad_seq,
                last_tx_seq,
            })
        };
        let (secrets, last_seq, is_pos) = match self.state.terminal(terminal_id) {
            Some(t) => (
                [
                    Some(TerminalSecret(t.info.secret)),
                    t.previous.map(|(s, _)| TerminalSecret(s)),
                ],
                t.last_seq(),
                t.info.kind == TerminalKind::Pos && t.info.enabled,
            ),
            None => return Pending::ready(result(OfflineStatus::BadBatch, 0, 0, 0, 0, 0)),
        };
        if !is_pos || !well_formed(batch, sales, &limits) {
            metrics::counter!("cardgate_offline_batches_total", "status" => "bad_batch").increment(1);
            return Pending::ready(result(OfflineStatus::BadBatch, 0, 0, 0, 0, last_seq));
        }
        let forged = sales.iter().find(|s| {
            !secrets.iter().flatten().any(|k| {
                verify_offline_sale_mac(k, terminal_id, s.tx_seq, s.card.0, s.amount_fen, s.sale_time_ms, &s.mac)
            })
        });
        if let Some(bad) = forged {
            metrics::counter!("cardgate_offline_batches_total", "status" => "bad_mac").increment(1);
            tracing::debug!(
                terminal.id = terminal_id,
                tx_seq = bad.tx_seq,
                "offline upload refused: a MAC fails"
            );
            return Pending::ready(result(OfflineStatus::BadMac, 0, 0, 0, bad.tx_seq, last_seq));
        }
        let (mut posted, mut duplicates, mut flagged) = (0u16, 0u16, 0u16);
        for sale in sales {
            match self.post_offline_sale(terminal_id, sale, &limits).await {
                Some(Posted::Posted { flagged: f }) => {
                    posted += 1;
                    flagged += u16::from(f);
                }
                Some(Posted::Duplicate) => duplicates += 1,
                None => {
                    metrics::counter!("cardgate_offline_batches_total", "status" => "system_error").increment(1);
                    return Pending::ready(result(OfflineStatus::SystemError, 0, 0, 0, 0, last_seq));
                }
            }
        }
        metrics::counter!("cardgate_offline_sales_total", "result" => "posted").increment(u64::from(posted));
        metrics::counter!("cardgate_offline_sales_total", "result" => "duplicate").increment(u64::from(duplicates));
        metrics::counter!("cardgate_offline_batches_total", "status" => "accepted").increment(1);
        let Ok(txn) = Txn::begin(self.journal()).await else {
            return Pending::ready(result(OfflineStatus::SystemError, 0, 0, 0, 0, last_seq));
        };
        let last = self.state.terminal(terminal_id).map_or(last_seq, |t| t.last_seq());
        // Every sale above was sent before this barrier: the answer waits for all of them.
        txn.barrier(result(OfflineStatus::Accepted, posted, duplicates, flagged, 0, last))
            .into()
    }

    /// Posts one verified sale, unless its number was seen. `None`: the journal failed.
    async fn post_offline_sale(&self, terminal_id: u64, sale: &OfflineSale, limits: &OfflineLimits) -> Option<Posted> {
        let txn = Txn::begin(self.journal()).await.ok()?;
        let now = self.now_ms();
        let mut term = self.state.terminal_mut(terminal_id)?;
        if term.seen.contains(sale.tx_seq) {
            return Some(Posted::Duplicate);
        }
        let plausible = plausible_time(limits, sale.sale_time_ms, now);
        // A sale whose clock cannot be believed counts on the day it was uploaded.
        let sale_time = if plausible { sale.sale_time_ms } else { now };
        let sale_day = self.day_of(sale_time);
        let today = self.day_of(now);
        let card = self.state.card(sale.card);
        // Read before the account's lock: the blacklist's lock comes after it.
        let listed_since = self.state.listed_since(sale.card);
        let card_day_before = term
            .offline_card_day
            .get(&(sale.card.0, sale_day))
            .copied()
            .unwrap_or(0);
        let mut account = card.and_then(|c| self.state.account_mut(c.account));
        let facts = SaleFacts {
            card: card.as_ref(),
            account: account.as_deref(),
            listed_since_ms: listed_since,
            amount_fen: sale.amount_fen,
            sale_time_ms: sale.sale_time_ms,
            upload_ms: now,
            card_day_before_fen: card_day_before,
        };
        let verdict = offline_sale(limits, &facts);
        let mut entry = TxEntry {
            kind: TxKind::OfflinePurchase,
            tx_id: 0,
            terminal: terminal_id,
            merchant_id: term.info.merchant_id,
            seq: sale.tx_seq,
            original_seq: 0,
            original_tx_id: 0,
            card: sale.card,
            account: card.map_or(0, |c| c.account),
            amount_fen: sale.amount_fen,
            outcome: Outcome::Declined {
                reason: DeclineReason::UnknownCard.code(),
                balance_fen: 0,
            },
            terminal_time_ms: sale_time,
            single_limit_fen: limits.sale_max_fen,
            daily_limit_fen: limits.card_day_max_fen,
            spent_today_after_fen: 0,
            blacklist_version: self.state.blacklist().version(),
        };
        let mut writes = Writes::new();
        let kinds: SmallVec<[ExceptionKind; 2]> = match verdict {
            SaleVerdict::Post { balance_after, flags } => {
                let acct = account.as_mut().expect("a posted sale has an account");
                let spent = spent_today(acct, today)
                    + if sale_day == today {
                        from_fen(sale.amount_fen)
                    } else {
                        0.into()
                    };
                acct.balance = balance_after;
                acct.spent_today = spent;
                acct.day = today;
                let tx_id = self.state.new_tx_id();
                entry.tx_id = tx_id;
                entry.outcome = Outcome::Approved {
                    tx_id,
                    balance_after_fen: fen(balance_after),
                };
                entry.spent_today_after_fen = fen(spent);
                writes.push(StateWrite::Account(**acct));
                term.add_offline_spending(sale.card.0, sale_day, sale.amount_fen);
                // Durable with the sale: a restart does not start the per-card sums again.
                writes.push(StateWrite::OfflineDays(Box::new(term.offline_days_record(today))));
                flags
            }
            SaleVerdict::Refuse(kind) => {
                let reason = match kind {
                    ExceptionKind::OfflineClosedAccount => DeclineReason::AccountBlocked,
                    _ => DeclineReason::UnknownCard,
                };
                entry.outcome = Outcome::Declined {
                    reason: reason.code(),
                    balance_fen: 0,
                };
                smallvec![kind]
            }
        };
        let balance_after_fen = match entry.outcome {
            Outcome::Approved { balance_after_fen, .. } => balance_after_fen,
            Outcome::Declined { .. } => 0,
        };
        let rec = seq_record_of(&entry, now);
        if term.remember(rec) {
            writes.push(StateWrite::Gaps(Box::new(term.gaps_record())));
        }
        writes.push(StateWrite::Seq(rec));
        let mut entries: SmallVec<[EntryRecord; 1]> = smallvec![EntryRecord {
            time_ms: now,
            body: EntryBody::Tx(entry),
        }];
        let mut exceptions = Vec::with_capacity(kinds.len());
        for kind in &kinds {
            let amount_fen = match kind {
                // What the holder owes.
                ExceptionKind::OfflineOverdraft => -balance_after_fen,
                _ => sale.amount_fen,
            };
            let e = Exception {
                id: self.state.new_exception_id(),
                time_ms: now,
                kind: *kind,
                account: entry_account(&entries),
                card: sale.card,
                terminal: terminal_id,
                seq: sale.tx_seq,
                tx_id: entry_tx_id(&entries),
                amount_fen,
                detail: describe(*kind, sale, plausible, balance_after_fen),
                resolved: None,
            };
            writes.push(StateWrite::Exception(Box::new(e.clone())));
            entries.push(EntryRecord {
                time_ms: now,
                body: EntryBody::Exception(Box::new(e.clone())),
            });
            exceptions.push(e);
        }
        let mark = entry_tx_id(&entries);
        // Sent while the terminal and the account are locked, like a purchase.
        drop(txn.send_all((), entries, writes, mark));
        drop(account);
        drop(term);
        for e in exceptions {
            metrics::counter!("cardgate_exceptions_raised_total", "kind" => e.kind.as_str()).increment(1);
            self.state.put_exception(e);
        }
        Some(Posted::Posted {
            flagged: !kinds.is_empty(),
        })
    }
}

fn entry_account(entries: &[EntryRecord]) -> u64 {
    match entries.first().map(|e| &e.body) {
        Some(EntryBody::Tx(t)) => t.account,
        _ => 0,
    }
}

fn entry_tx_id(entries: &[EntryRecord]) -> u64 {
    match entries.first().map(|e| &e.body) {
        Some(EntryBody::Tx(t)) => t.tx_id,
        _ => 0,
    }
}

/// The shape rules of a batch (docs/PROTOCOL.md 8.6), before any MAC is looked at.
fn well_formed(batch: &OfflineBatch, sales: &[OfflineSale], limits: &OfflineLimits) -> bool {
    let count_ok = batch.count >= 1 && batch.count <= limits.batch_max && usize::from(batch.count) == sales.len();
    count_ok
        && sales
            .first()
            .is_some_and(|s| s.tx_seq == batch.first_tx_seq && s.tx_seq != 0)
        && sales.windows(2).all(|w| w[0].tx_seq < w[1].tx_seq)
        && sales.iter().all(|s| (1..=AMOUNT_FEN_MAX).contains(&s.amount_fen))
}

/// The exception's words for the card desk.
fn describe(kind: ExceptionKind, sale: &OfflineSale, plausible: bool, balance_after_fen: i64) -> String {
    let what = format!(
        "offline sale seq {} of {} fen at terminal time {}",
        sale.tx_seq, sale.amount_fen, sale.sale_time_ms
    );
    match kind {
        ExceptionKind::OfflineOverdraft => format!("{what}: balance after {balance_after_fen} fen"),
        ExceptionKind::OfflineCardBlocked => format!("{what}: the card was blocked then"),
        ExceptionKind::OfflineOverLimit => format!("{what}: over the offline limits"),
        ExceptionKind::OfflineClockSuspect if !plausible => {
            format!("{what}: the terminal's clock is implausible; counted on the upload's day")
        }
        ExceptionKind::OfflineUnknownCard => format!("{what}: unknown card, not posted"),
        ExceptionKind::OfflineClosedAccount => format!("{what}: the account is closed, not posted"),
        _ => what,
    }
}
