//! Master data created without an operator: the demo campus, tests and bulk loads. Each
//! record is one entry carrying it whole; the desk's operations (`desk/`) are how
//! operators change records afterwards.

use cardgate_domain::access::CacheCause;
use cardgate_domain::entry::{EntryBody, EntryRecord};
use cardgate_domain::model::{Account, Card, Params, Terminal};
use cardgate_domain::money::to_fen;
use rust_decimal::Decimal;
use smallvec::{SmallVec, smallvec};

use crate::doors::new_card_moves;
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes};
use crate::txn::Txn;

fn valid_opening(a: &Account) -> Result<(), LedgerError> {
    if a.balance < Decimal::ZERO || to_fen(a.balance).is_none() {
        return Err(LedgerError::Invalid(format!(
            "account {}: opening balance {} is not valid",
            a.id, a.balance
        )));
    }
    Ok(())
}

impl Ledger {
    /// Opens an account; fails if the id is taken.
    pub async fn open_account(&self, account: Account) -> Result<u64, LedgerError> {
        valid_opening(&account)?;
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            if self.state.has_account(account.id) {
                return Err(LedgerError::exists("account", account.id));
            }
            let mut records = Writes::new();
            records.push(StateWrite::Account(account));
            let sent = txn.send((), self.now_ms(), EntryBody::AccountOpened(account), records, 0);
            self.state.put_account(account);
            sent
        };
        Ok(sent.durable().await?.1)
    }

    /// Issues a card on an existing account; fails if the number is taken.
    pub async fn issue_card(&self, card: Card) -> Result<u64, LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        let (sent, moved) = {
            let _desk = self.state.desk_lock();
            let mut access = self.state.access().write();
            let Some(account) = self.state.account(card.account) else {
                return Err(LedgerError::not_found("account", card.account));
            };
            if self.state.has_card(card.no) {
                return Err(LedgerError::exists("card", card.no.0));
            }
            let person = self.state.person_of_account(account.id);
            let now = self.now_ms();
            let mut records = Writes::new();
            records.push(StateWrite::Card(card));
            let moved = new_card_moves(&mut access, &card, &account, person.as_ref(), self.tz_offset_minutes());
            let mut entries: SmallVec<[EntryRecord; 1]> = smallvec![EntryRecord {
                time_ms: now,
                body: EntryBody::CardIssued(card),
            }];
            entries.extend(Self::cache_moved_entry(
                &moved,
                CacheCause::CardIssued,
                account.id,
                now,
                &mut records,
            ));
            let sent = txn.send_all((), entries, records, 0);
            self.state.put_card(card);
            (sent, !moved.is_empty())
        };
        let id = sent.durable().await?.1;
        self.publish_door_moves(moved);
        Ok(id)
    }

    /// Replaces the business parameters; effective for the next decision.
    pub async fn set_params(&self, params: Params) -> Result<u64, LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let mut records = Writes::new();
            records.push(StateWrite::Params(Box::new(params)));
            let sent = txn.send((), self.now_ms(), EntryBody::ParamsSet(params), records, 0);
            self.state.set_params(params);
            sent
        };
        Ok(sent.durable().await?.1)
    }

    /// Creates many terminals, accounts and cards at once (the demo campus, large
    /// loads): submitted back to back and awaited once, so that they share a few group
    /// commits instead of one each. Fails without changing anything if any id is taken;
    /// callers must not create the same ids concurrently. Terminals given here are written
    /// as before the registry, secret in clear (`register_terminal_unsealed`): tests and
    /// old-format fixtures pass them; the demo campus registers its terminals sealed.
    pub async fn bulk_create(
        &self,
        terminals: Vec<Terminal>,
        accounts: &[Account],
        cards: &[Card],
    ) -> Result<(), LedgerError> {
        let mut new_accounts = std::collections::HashSet::with_capacity(accounts.len());
        for a in accounts {
            if self.state.has_account(a.id) || !new_accounts.insert(a.id) {
                return Err(LedgerError::exists("account", a.id));
            }
            valid_opening(a)?;
        }
        let mut new_cards = std::collections::HashSet::with_capacity(cards.len());
        for c in cards {
            if self.state.has_card(c.no) || !new_cards.insert(c.no) {
                return Err(LedgerError::exists("card", c.no.0));
            }
            if !new_accounts.contains(&c.account) && !self.state.has_account(c.account) {
                return Err(LedgerError::not_found("account", c.account));
            }
        }
        for t in &terminals {
            if self.state.has_terminal(t.id) {
                return Err(LedgerError::exists("terminal", t.id));
            }
        }
        let now = self.now_ms();
        let mut last = None;
        for t in terminals {
            let txn = Txn::begin(self.journal()).await?;
            let records = [StateWrite::Terminal(Box::new(t.clone()))].into_iter().collect();
            last = Some(txn.send((), now, EntryBody::TerminalRegistered(t.clone()), records, 0));
            self.state.put_terminal(t);
        }
        for a in accounts {
            let txn = Txn::begin(self.journal()).await?;
            let records = [StateWrite::Account(*a)].into_iter().collect();
            last = Some(txn.send((), now, EntryBody::AccountOpened(*a), records, 0));
            self.state.put_account(*a);
        }
        for c in cards {
            let txn = Txn::begin(self.journal()).await?;
            let records = [StateWrite::Card(*c)].into_iter().collect();
            last = Some(txn.send((), now, EntryBody::CardIssued(*c), records, 0));
            self.state.put_card(*c);
        }
        // Cards that door permissions reach (a kind's, a department's, a person's) join
        // the controllers' caches: every group with a live permission is moved on as a
        // whole list, once, after the cards.
        let mut moved = false;
        if !cards.is_empty() {
            let txn = Txn::begin(self.journal()).await?;
            let _desk = self.state.desk_lock();
            let mut access = self.state.access().write();
            let changes = access.bump_whole_lists(|_| true);
            let mut records = Writes::new();
            let entries = Self::cache_moved_entry(&changes, CacheCause::Imported, 0, now, &mut records);
            if !entries.is_empty() {
                moved = true;
                last = Some(txn.send_all((), entries, records, 0));
            }
        }
        // The committer completes submissions in order: the last one durable means all are.
        if let Some(sent) = last {
            sent.durable().await?;
        }
        self.publish_door_moves(moved);
        Ok(())
    }
}
