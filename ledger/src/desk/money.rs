//! Desk money: cash top-ups, refunds paid out in cash, card fees, corrections with a
//! reason, and batch grants (补助) applied once per batch id and account.

use cardgate_domain::entry::{EntryBody, FeeKind, MoneyEntry, MoneyKind, MoneyMove, PayMethod};
use cardgate_domain::model::{AccountStatus, GrantMark};
use cardgate_domain::money::{from_fen, to_fen};
use cardgate_domain::rules::input::{BATCH_ITEMS_MAX, REASON_BYTES_MAX, check_amount, check_batch_id, check_text};
use rust_decimal::Decimal;

use super::{BatchReport, By, MoneyResult};
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::pay::fen;
use crate::records::{StateWrite, Writes};
use crate::txn::{Durable, Txn};

/// Before and after of one money movement, as a batch item's audit record keeps them.
pub(super) fn money_item(r: &MoneyResult) -> (String, String) {
    (
        serde_json::json!({ "balance": r.before.balance.to_string() }).to_string(),
        serde_json::json!({
            "balance": from_fen(r.movement.balance_after_fen).to_string(),
            "amount": from_fen(r.movement.amount_fen).to_string(),
            "tx_id": r.movement.tx_id,
        })
        .to_string(),
    )
}

fn invalid(msg: impl Into<String>) -> LedgerError {
    LedgerError::Invalid(msg.into())
}

/// One money movement as the desk asks for it.
struct Move<'a> {
    account: u64,
    kind: MoneyKind,
    /// The amount handled, always positive.
    amount_fen: i64,
    /// What it does to the balance.
    delta: Decimal,
    method: PayMethod,
    reason: &'a str,
}

impl Ledger {
    pub fn grant_mark(&self, batch_id: &str, account: u64) -> Option<GrantMark> {
        self.state.grant(batch_id, account)
    }

    /// Moves money on one account under its lock and sends it with the audit record
    /// `audit` gives; `grant` is the batch it belongs to, whose idempotency mark is set
    /// under the same lock.
    fn move_locked(
        &self,
        txn: Txn<'_>,
        actor: &cardgate_domain::operator::Actor,
        m: Move<'_>,
        grant: Option<&str>,
        extras: impl FnOnce(&MoneyResult, i64) -> super::Extras,
    ) -> Result<Durable<MoneyResult>, LedgerError> {
        let mut acct = self
            .state
            .account_mut(m.account)
            .ok_or_else(|| LedgerError::not_found("account", m.account))?;
        if acct.status == AccountStatus::Closed {
            return Err(invalid(format!("account {} is closed", m.account)));
        }
        let before = *acct;
        let after = acct
            .balance
            .checked_add(m.delta)
            .filter(|b| to_fen(*b).is_some())
            .ok_or_else(|| invalid("the balance would overflow"))?;
        if after < Decimal::ZERO {
            return Err(invalid(format!(
                "the balance {:.2} does not cover {:.2}",
                acct.balance,
                from_fen(m.amount_fen)
            )));
        }
        acct.balance = after;
        let tx_id = self.state.new_tx_id();
        let movement = MoneyMove {
            kind: m.kind,
            tx_id,
            account: m.account,
            amount_fen: m.amount_fen,
            balance_delta_fen: fen(m.delta),
            balance_after_fen: fen(after),
            method: m.method,
            reason: m.reason.to_string(),
        };
        let mut writes = Writes::new();
        writes.push(StateWrite::Account(*acct));
        if let Some(batch) = grant {
            // The idempotency mark, set under the account lock with the credit.
            let mark = GrantMark {
                batch_id: batch.to_string(),
                account: m.account,
                amount_fen: m.amount_fen,
                tx_id,
            };
            self.state.put_grant(mark.clone());
            writes.push(StateWrite::Grant(Box::new(mark)));
        }
        let body = EntryBody::Money(Box::new(MoneyEntry {
            actor: actor.clone(),
            movement: movement.clone(),
            batch_id: grant.map(str::to_string),
        }));
        let result = MoneyResult {
            entry_id: 0,
            before,
            movement,
        };
        let now = self.now_ms();
        let extras = extras(&result, now);
        Ok(self.send_with(txn, result, now, body, writes, tx_id, extras))
    }

    async fn money(&self, by: &By<'_, MoneyResult>, m: Move<'_>) -> Result<MoneyResult, LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        let sent = self.move_locked(txn, by.actor, m, None, |r, now| self.extras(by, r, now))?;
        let (mut r, entry_id) = sent.durable().await?;
        r.entry_id = entry_id;
        Ok(r)
    }

    /// Cash paid in at the desk.
    pub async fn top_up(
        &self,
        by: &By<'_, MoneyResult>,
        account: u64,
        amount_fen: i64,
    ) -> Result<MoneyResult, LedgerError> {
        check_amount(amount_fen)?;
        self.money(
            by,
            Move {
                account,
                kind: MoneyKind::TopUp,
                amount_fen,
                delta: from_fen(amount_fen),
                method: PayMethod::Cash,
                reason: "cash top-up",
            },
        )
        .await
    }

    /// Balance paid out in cash; never more than the balance.
    pub async fn refund(
        &self,
        by: &By<'_, MoneyResult>,
        account: u64,
        amount_fen: i64,
        reason: &str,
    ) -> Result<MoneyResult, LedgerError> {
        check_amount(amount_fen)?;
        check_text("reason", reason, REASON_BYTES_MAX, true)?;
        self.money(
            by,
            Move {
                account,
                kind: MoneyKind::Refund,
                amount_fen,
                delta: -from_fen(amount_fen),
                method: PayMethod::Cash,
                reason,
            },
        )
        .await
    }

    /// A card fee at the current parameters, paid in cash or from the balance.
    pub async fn fee(
        &self,
        by: &By<'_, MoneyResult>,
        account: u64,
        kind: FeeKind,
        method: PayMethod,
    ) -> Result<MoneyResult, LedgerError> {
        let account_kind = self
            .state
            .account(account)
            .ok_or_else(|| LedgerError::not_found("account", account))?
            .kind;
        let amount = kind.amount(&self.state.params(), account_kind);
        let amount_fen = fen(amount);
        if amount_fen <= 0 {
            return Err(invalid(format!("the {} fee is 0", kind.as_str())));
        }
        self.money(
            by,
            Move {
                account,
                kind: MoneyKind::Fee(kind),
                amount_fen,
                delta: match method {
                    PayMethod::Cash => Decimal::ZERO,
                    PayMethod::Balance => -amount,
                },
                method,
                reason: kind.as_str(),
            },
        )
        .await
    }

    /// A correction of either sign with a mandatory reason; the balance stays >= 0.
    pub async fn adjust(
        &self,
        by: &By<'_, MoneyResult>,
        account: u64,
        delta_fen: i64,
        reason: &str,
    ) -> Result<MoneyResult, LedgerError> {
        // Signed: the bound is on its size, and zero moves nothing.
        if delta_fen == 0 {
            return Err(invalid(
                "an adjustment of 0.00 changes nothing: give a positive or negative amount",
            ));
        }
        check_amount(delta_fen.checked_abs().unwrap_or(0))?;
        check_text("reason", reason, REASON_BYTES_MAX, true)?;
        self.money(
            by,
            Move {
                account,
                kind: MoneyKind::Adjustment,
                amount_fen: delta_fen.abs(),
                delta: from_fen(delta_fen),
                method: PayMethod::Cash,
                reason,
            },
        )
        .await
    }

    /// Credits a batch grant (补助), once per `(batch_id, account)` however often it is
    /// submitted. Every item is checked first: an unknown or closed account, a bad
    /// amount, an account named twice, or an account this batch already credited with
    /// a different amount changes nothing.
    pub async fn grant_batch(
        &self,
        by: &By<'_, BatchReport>,
        batch_id: &str,
        items: &[(u64, i64)],
    ) -> Result<BatchReport, LedgerError> {
        check_batch_id(batch_id)?;
        if items.is_empty() || items.len() > BATCH_ITEMS_MAX {
            return Err(invalid(format!("a batch names 1..={BATCH_ITEMS_MAX} accounts")));
        }
        let _batch = self.state.batch_lock().await;
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        let mut todo = Vec::with_capacity(items.len());
        let mut report = BatchReport {
            batch_id: batch_id.to_string(),
            ..Default::default()
        };
        for &(account, amount_fen) in items {
            check_amount(amount_fen).map_err(|e| invalid(format!("account {account}: {e}")))?;
            if !seen.insert(account) {
                return Err(invalid(format!("account {account} is named twice")));
            }
            match self.state.account(account) {
                None => return Err(LedgerError::not_found("account", account)),
                Some(a) if a.status == AccountStatus::Closed => {
                    return Err(invalid(format!("account {account} is closed")));
                }
                Some(_) => {}
            }
            match self.state.grant(batch_id, account) {
                Some(m) if m.amount_fen == amount_fen => report.already_done += 1,
                Some(m) => {
                    return Err(invalid(format!(
                        "batch {batch_id} already credited account {account} with {}, not {}",
                        from_fen(m.amount_fen),
                        from_fen(amount_fen)
                    )));
                }
                None => todo.push((account, amount_fen)),
            }
        }
        let mut last = None;
        for (account, amount_fen) in todo {
            let txn = Txn::begin(self.journal()).await?;
            // `batches` keeps other grants out; the mark is set under the account lock.
            let grant = Move {
                account,
                kind: MoneyKind::Grant,
                amount_fen,
                delta: from_fen(amount_fen),
                method: PayMethod::Cash,
                reason: "grant",
            };
            let item = |r: &MoneyResult, now| super::Extras {
                audit: self.audit_item_record(by, "money.grant", r, money_item(r), format!("batch {batch_id}"), now),
                answer: None,
            };
            match self.move_locked(txn, by.actor, grant, Some(batch_id), item) {
                Ok(sent) => {
                    report.applied += 1;
                    report.total_fen += amount_fen;
                    last = Some(sent);
                }
                // Closed by the desk since the check: leave it out and say so.
                Err(LedgerError::Invalid(_)) => report.skipped += 1,
                Err(e) => return Err(e),
            }
        }
        if let Some(sent) = last {
            // Commits complete in order: the last durable means all are.
            sent.durable().await?;
        }
        Ok(report)
    }
}
