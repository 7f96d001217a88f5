//! The card lifecycle at the desk: issue (开卡), report lost (挂失), unfreeze (解挂),
//! freeze, record a bad card (坏卡), replace (补卡) and cancel (注销), one at a time or a
//! graduating class at once.
//!
//! "Report lost" is one downward chain: the card (locked) → the rule
//! (`rules::card::transition`) → the blacklist (locked) → one submission carrying the
//! card, the blacklist change and the audit record → the journal → the new version
//! published to the sessions once durable. From the moment the card's status changes
//! in memory every purchase with it is declined.

use std::collections::HashMap;

use cardgate_codec::CardNo;
use cardgate_domain::access::CacheCause;
use cardgate_domain::entry::{
    AccountLeft, CardAction, CardChange, EntryBody, FeeKind, MoneyKind, MoneyMove, PayMethod,
};
use cardgate_domain::model::{Account, AccountStatus, BlacklistChange, Card, CardStatus};
use cardgate_domain::money::from_fen;
use cardgate_domain::rules::card::{check_expiry, listed, transition};
use cardgate_domain::rules::input::{BATCH_ITEMS_MAX, check_batch_id, check_card_no};
use rust_decimal::Decimal;

use super::{BatchReport, By, CardResult};
use crate::doors::new_card_moves;
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::pay::fen;
use crate::records::{StateWrite, Writes};
use crate::txn::{Durable, Txn};

/// Before and after of one card change, as a batch item's audit record keeps them.
fn card_item(r: &CardResult) -> (String, String) {
    let cards = |cards: &[Card]| -> Vec<serde_json::Value> {
        cards
            .iter()
            .map(|c| serde_json::json!({ "card_no": c.no.0.to_string(), "status": c.status.as_str() }))
            .collect()
    };
    let before = serde_json::json!({
        "cards": cards(&r.before),
        "account": r.account_before.map(|a| serde_json::json!({
            "balance": a.balance.to_string(), "status": a.status.as_str(),
        })),
    });
    let after = serde_json::json!({
        "cards": cards(&r.change.cards),
        "account": r.change.account.map(|a| serde_json::json!({
            "balance": from_fen(a.balance_fen).to_string(), "status": a.status.as_str(),
        })),
        "money": r.change.money.as_ref().map(|m| serde_json::json!({
            "kind": m.kind.as_str(), "amount": from_fen(m.amount_fen).to_string(), "tx_id": m.tx_id,
        })),
    });
    (before.to_string(), after.to_string())
}

fn invalid(msg: impl Into<String>) -> LedgerError {
    LedgerError::Invalid(msg.into())
}

impl Ledger {
    /// Issues a new card on an account (开卡). A temporary card expires at `expires_ms`
    /// and may carry the temporary-card fee.
    pub async fn issue_card_desk(
        &self,
        by: &By<'_, CardResult>,
        account: u64,
        no: CardNo,
        expires_ms: Option<i64>,
        fee: Option<(FeeKind, PayMethod)>,
    ) -> Result<CardResult, LedgerError> {
        check_card_no(no)?;
        check_expiry(expires_ms, self.now_ms())?;
        let txn = Txn::begin(self.journal()).await?;
        let (sent, moved) = {
            let _desk = self.state.desk_lock();
            // Before the card and the account (state.rs's lock order): a controller's sync
            // reads the door config, then cards and accounts.
            let mut access = self.state.access().write();
            if self.state.has_card(no) {
                return Err(invalid(format!("card {} already exists", no.0)));
            }
            self.check_issuable(no)?;
            let now = self.now_ms();
            let person = self.state.person_of_account(account);
            let card = Card {
                no,
                account,
                status: CardStatus::Active,
                expires_ms,
                issued_ms: now,
            };
            let mut acct = self
                .state
                .account_mut(account)
                .ok_or_else(|| LedgerError::not_found("account", account))?;
            if acct.status == AccountStatus::Closed {
                return Err(invalid(format!("account {account} is closed")));
            }
            let acct_before = *acct;
            let money = match fee {
                None => None,
                Some((kind, method)) => Some(self.charge_fee(&mut acct, kind, method, "card issued")?),
            };
            let mut writes = Writes::new();
            writes.push(StateWrite::Card(card));
            writes.push(StateWrite::Account(*acct));
            let tx_id = money.as_ref().map(|m| m.tx_id).unwrap_or(0);
            let change = CardChange {
                actor: by.actor.clone(),
                action: CardAction::Issue,
                cards: vec![card],
                account: None,
                money,
                blacklist: vec![],
                batch_id: None,
            };
            let result = CardResult {
                entry_id: 0,
                before: vec![],
                change: change.clone(),
                account_before: Some(acct_before),
                blacklist_version: self.state.blacklist().version(),
            };
            let body = EntryBody::CardChanged(Box::new(change));
            let moved = new_card_moves(&mut access, &card, &acct, person.as_ref(), self.tz_offset_minutes());
            let more = Self::cache_moved_entry(&moved, CacheCause::CardIssued, account, now, &mut writes);
            let sent = self.send_desk_more(txn, by, result, now, body, more, writes, tx_id);
            drop(acct);
            self.state.put_card(card);
            (sent, !moved.is_empty())
        };
        let (mut result, entry_id) = sent.durable().await?;
        result.entry_id = entry_id;
        self.publish_door_moves(moved);
        Ok(result)
    }

    /// Debits (or records in cash) a card fee on a locked account.
    fn charge_fee(
        &self,
        acct: &mut Account,
        kind: FeeKind,
        method: PayMethod,
        reason: &str,
    ) -> Result<MoneyMove, LedgerError> {
        let amount = kind.amount(&self.state.params(), acct.kind);
        let delta = match method {
            PayMethod::Cash => Decimal::ZERO,
            PayMethod::Balance => {
                if acct.balance < amount {
                    return Err(invalid(format!(
                        "the balance {:.2} does not cover the {} fee of {:.2}; take it in cash",
                        acct.balance,
                        kind.as_str(),
                        amount
                    )));
                }
                -amount
            }
        };
        acct.balance += delta;
        Ok(MoneyMove {
            kind: MoneyKind::Fee(kind),
            tx_id: self.state.new_tx_id(),
            account: acct.id,
            amount_fen: fen(amount),
            balance_delta_fen: fen(delta),
            balance_after_fen: fen(acct.balance),
            method,
            reason: reason.to_string(),
        })
    }

    /// Report lost (挂失), unfreeze (解挂), freeze, or record a bad card (坏卡). Returns once
    /// durable; from the moment the card's status changed in memory (before this
    /// returns) every purchase with it is declined.
    pub async fn card_status(
        &self,
        by: &By<'_, CardResult>,
        no: CardNo,
        action: CardAction,
    ) -> Result<CardResult, LedgerError> {
        if !matches!(
            action,
            CardAction::Lost | CardAction::Unfreeze | CardAction::Freeze | CardAction::Bad
        ) {
            return Err(invalid(format!("{} is not a status change", action.as_str())));
        }
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let mut card = self
                .state
                .card_mut(no)
                .ok_or_else(|| LedgerError::not_found("card", no.0))?;
            let to = transition(card.status, action)?;
            if action == CardAction::Unfreeze
                && self
                    .state
                    .account(card.account)
                    .is_none_or(|a| a.status == AccountStatus::Closed)
            {
                return Err(invalid(format!("account {} is closed", card.account)));
            }
            let before = *card;
            card.status = to;
            let after = *card;
            let now = self.now_ms();
            let mut blacklist = self.state.blacklist().lock();
            let changes = blacklist.set(&[(no, listed(to))]);
            let mut writes = Writes::new();
            writes.push(StateWrite::Card(after));
            writes.extend(self.listing_writes(&changes, now));
            let change = CardChange {
                actor: by.actor.clone(),
                action,
                cards: vec![after],
                account: None,
                money: None,
                blacklist: changes,
                batch_id: None,
            };
            let result = CardResult {
                entry_id: 0,
                before: vec![before],
                blacklist_version: self.state.blacklist().version(),
                change: change.clone(),
                account_before: None,
            };
            let sent = self.send_desk(
                txn,
                by,
                result,
                now,
                EntryBody::CardChanged(Box::new(change)),
                writes,
                0,
            );
            drop(blacklist);
            sent
        };
        self.publish(sent).await
    }

    /// Waits for a card change to be durable, then announces its blacklist version.
    async fn publish(&self, sent: Durable<CardResult>) -> Result<CardResult, LedgerError> {
        let (mut result, entry_id) = sent.durable().await?;
        result.entry_id = entry_id;
        self.publish_blacklist(&result.change.blacklist);
        Ok(result)
    }

    fn publish_blacklist(&self, changes: &[BlacklistChange]) {
        if let Some(v) = changes.iter().map(|c| c.version).max() {
            self.state.blacklist().publish(v);
        }
    }

    /// Replaces a card (补卡): a new number on the same account, so the balance carries
    /// over; the old card is refused everywhere from this moment.
    pub async fn replace_card(
        &self,
        by: &By<'_, CardResult>,
        old: CardNo,
        new: CardNo,
        fee: Option<PayMethod>,
    ) -> Result<CardResult, LedgerError> {
        check_card_no(new)?;
        let txn = Txn::begin(self.journal()).await?;
        let (sent, moved) = {
            let _desk = self.state.desk_lock();
            // Before the card and the account, as in `issue_card_desk`.
            let mut access = self.state.access().write();
            if self.state.has_card(new) {
                return Err(invalid(format!("card {} already exists", new.0)));
            }
            self.check_issuable(new)?;
            let mut card = self
                .state
                .card_mut(old)
                .ok_or_else(|| LedgerError::not_found("card", old.0))?;
            let to = transition(card.status, CardAction::Replace)?;
            let mut acct = self
                .state
                .account_mut(card.account)
                .ok_or_else(|| LedgerError::not_found("account", card.account))?;
            if acct.status == AccountStatus::Closed {
                return Err(invalid(format!("account {} is closed", acct.id)));
            }
            let acct_before = *acct;
            let money = match fee {
                None => None,
                Some(method) => Some(self.charge_fee(&mut acct, FeeKind::Replacement, method, "card replaced")?),
            };
            let before = *card;
            card.status = to;
            let old_after = *card;
            let now = self.now_ms();
            let new_card = Card {
                no: new,
                account: before.account,
                status: CardStatus::Active,
                expires_ms: before.expires_ms,
                issued_ms: now,
            };
            let tx_id = money.as_ref().map(|m| m.tx_id).unwrap_or(0);
            let mut blacklist = self.state.blacklist().lock();
            let changes = blacklist.set(&[(old, true)]);
            let mut writes = Writes::new();
            writes.push(StateWrite::Card(old_after));
            writes.push(StateWrite::Card(new_card));
            writes.push(StateWrite::Account(*acct));
            writes.extend(self.listing_writes(&changes, now));
            let change = CardChange {
                actor: by.actor.clone(),
                action: CardAction::Replace,
                cards: vec![old_after, new_card],
                account: None,
                money,
                blacklist: changes,
                batch_id: None,
            };
            let result = CardResult {
                entry_id: 0,
                before: vec![before],
                blacklist_version: self.state.blacklist().version(),
                change: change.clone(),
                account_before: Some(acct_before),
            };
            let body = EntryBody::CardChanged(Box::new(change));
            // The new number joins the door caches here; the old one leaves them through
            // the blacklist, as any blocked card does.
            let person = self.state.person_of_account(acct.id);
            let moved = new_card_moves(&mut access, &new_card, &acct, person.as_ref(), self.tz_offset_minutes());
            let more = Self::cache_moved_entry(&moved, CacheCause::CardReplaced, acct.id, now, &mut writes);
            let sent = self.send_desk_more(txn, by, result, now, body, more, writes, tx_id);
            drop(blacklist);
            drop(acct);
            drop(card);
            self.state.put_card(new_card);
            (sent, !moved.is_empty())
        };
        let result = self.publish(sent).await?;
        self.publish_door_moves(moved);
        Ok(result)
    }

    /// Cancels the account behind `no` (注销): every card of it that can still be used
    /// or replaced is cancelled, the remaining balance is paid out and recorded, the
    /// account is closed.
    pub async fn cancel_card(&self, by: &By<'_, CardResult>, no: CardNo) -> Result<CardResult, LedgerError> {
        let account = self
            .state
            .card(no)
            .map(|c| c.account)
            .ok_or_else(|| LedgerError::not_found("card", no.0))?;
        let cards = self.cards_of(account).into_iter().map(|c| c.no).collect::<Vec<_>>();
        let txn = Txn::begin(self.journal()).await?;
        let sent = self.cancel_locked(txn, by.actor, account, &cards, None, |r, now| self.extras(by, r, now))?;
        self.publish(sent).await
    }

    /// The synchronous part of a cancellation; `cards` are the account's cards.
    /// `audit` gives the record that travels with it, from its result.
    fn cancel_locked(
        &self,
        txn: Txn<'_>,
        actor: &cardgate_domain::operator::Actor,
        account: u64,
        cards: &[CardNo],
        batch_id: Option<&str>,
        extras: impl FnOnce(&CardResult, i64) -> super::Extras,
    ) -> Result<Durable<CardResult>, LedgerError> {
        let _desk = self.state.desk_lock();
        match self.state.account(account) {
            None => return Err(LedgerError::not_found("account", account)),
            Some(a) if a.status == AccountStatus::Closed => {
                return Err(invalid(format!("account {account} is already closed")));
            }
            Some(_) => {}
        }
        // Each card is final once cancelled, so nothing else changes it after we let go
        // of it; cards are taken one at a time because two may share a map shard.
        let mut before = Vec::new();
        let mut after = Vec::new();
        for no in cards {
            if let Some(mut c) = self.state.card_mut(*no)
                && c.account == account
                && let Ok(to) = transition(c.status, CardAction::Cancel)
            {
                before.push(*c);
                c.status = to;
                after.push(*c);
            }
        }
        let mut acct = self
            .state
            .account_mut(account)
            .expect("checked above under the desk lock, and accounts are never removed");
        let acct_before = *acct;
        let refund = acct.balance;
        acct.balance = from_fen(0);
        acct.status = AccountStatus::Closed;
        let now = self.now_ms();
        let money = (refund > Decimal::ZERO).then(|| MoneyMove {
            kind: MoneyKind::CancelRefund,
            tx_id: self.state.new_tx_id(),
            account,
            amount_fen: fen(refund),
            balance_delta_fen: -fen(refund),
            balance_after_fen: 0,
            method: PayMethod::Cash,
            reason: "account cancelled".into(),
        });
        let tx_id = money.as_ref().map(|m| m.tx_id).unwrap_or(0);
        let listing: Vec<(CardNo, bool)> = after.iter().map(|c| (c.no, true)).collect();
        let mut blacklist = self.state.blacklist().lock();
        let changes = blacklist.set(&listing);
        let mut writes = Writes::new();
        writes.extend(after.iter().map(|c| StateWrite::Card(*c)));
        writes.push(StateWrite::Account(*acct));
        writes.extend(self.listing_writes(&changes, now));
        let change = CardChange {
            actor: actor.clone(),
            action: CardAction::Cancel,
            cards: after,
            account: Some(AccountLeft {
                id: account,
                status: AccountStatus::Closed,
                balance_fen: 0,
            }),
            money,
            blacklist: changes,
            batch_id: batch_id.map(str::to_string),
        };
        let result = CardResult {
            entry_id: 0,
            before,
            blacklist_version: self.state.blacklist().version(),
            change: change.clone(),
            account_before: Some(acct_before),
        };
        let extras = extras(&result, now);
        let body = EntryBody::CardChanged(Box::new(change));
        let sent = self.send_with(txn, result, now, body, writes, tx_id, extras);
        drop(blacklist);
        drop(acct);
        Ok(sent)
    }

    /// Cancels the accounts of `person_ids` (a graduating class), all or nothing: every
    /// id is checked first and an unknown one changes nothing. Accounts already closed
    /// count as done, so a batch cut short by a crash is finished by submitting it again.
    pub async fn cancel_batch(
        &self,
        by: &By<'_, (BatchReport, Vec<CardResult>)>,
        batch_id: &str,
        person_ids: &[String],
    ) -> Result<(BatchReport, Vec<CardResult>), LedgerError> {
        check_batch_id(batch_id)?;
        if person_ids.is_empty() || person_ids.len() > BATCH_ITEMS_MAX {
            return Err(invalid(format!("a batch names 1..={BATCH_ITEMS_MAX} persons")));
        }
        let _batch = self.state.batch_lock().await;
        let mut accounts = Vec::with_capacity(person_ids.len());
        let mut unknown = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for id in person_ids {
            if !seen.insert(id.as_str()) {
                return Err(invalid(format!("person {id} is named twice")));
            }
            match self.state.account_of_person(id) {
                Some(a) => accounts.push(a),
                None => unknown.push(id.clone()),
            }
        }
        if !unknown.is_empty() {
            // Ids that name nothing are 404, as a single unknown id is (nothing applied).
            let count = unknown.len();
            unknown.truncate(20);
            let listed = unknown.join(", ");
            return Err(LedgerError::NotFoundNamed {
                what: if count == 1 { "person" } else { "persons" },
                name: if count > 20 {
                    format!("{listed}, ... ({count} in all)")
                } else {
                    listed
                },
            });
        }
        let mut by_account: HashMap<u64, Vec<CardNo>> = HashMap::new();
        self.state
            .for_each_card(|c| by_account.entry(c.account).or_default().push(c.no));
        let mut report = BatchReport {
            batch_id: batch_id.to_string(),
            ..Default::default()
        };
        let mut sent = Vec::new();
        for account in accounts {
            if self
                .state
                .account(account)
                .is_none_or(|a| a.status == AccountStatus::Closed)
            {
                report.already_done += 1;
                continue;
            }
            let txn = Txn::begin(self.journal()).await?;
            let cards = by_account.get(&account).map(Vec::as_slice).unwrap_or(&[]);
            let item = |r: &CardResult, now| super::Extras {
                audit: self.audit_item_record(by, "card.cancel", r, card_item(r), format!("batch {batch_id}"), now),
                answer: None,
            };
            sent.push(self.cancel_locked(txn, by.actor, account, cards, Some(batch_id), item)?);
            report.applied += 1;
        }
        // Commits complete in order; each is awaited before its result is used.
        let mut results = Vec::with_capacity(sent.len());
        for s in sent {
            let (mut r, entry_id) = s.durable().await?;
            r.entry_id = entry_id;
            report.total_fen += r.change.money.as_ref().map(|m| m.amount_fen).unwrap_or(0);
            self.publish_blacklist(&r.change.blacklist);
            results.push(r);
        }
        report.blacklist_version = self.state.blacklist().version();
        Ok((report, results))
    }
}

impl Ledger {
    /// The records a submission leaves for blacklist changes made at `now_ms`: each
    /// change in its log slot, and when each card joined the list (what an offline sale
    /// uploaded later is judged by). Sets the join times in memory too; called under the
    /// list's lock, before the submission is sent.
    pub(crate) fn listing_writes(
        &self,
        changes: &[BlacklistChange],
        now_ms: i64,
    ) -> impl Iterator<Item = crate::records::StateWrite> + use<> {
        let mut out = Vec::with_capacity(changes.len() * 2);
        for c in changes {
            let since = c.listed.then_some(now_ms);
            self.state.set_listed_since(c.card, since);
            out.push(crate::records::StateWrite::Blacklist(*c));
            out.push(crate::records::StateWrite::Listed(c.card, since));
        }
        out.into_iter()
    }
}
