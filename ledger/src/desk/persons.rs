//! Persons and their accounts: opened at the desk (or by an import), looked up by person
//! id or account, renamed, moved between departments or account kinds.

use cardgate_domain::access::CacheCause;
use cardgate_domain::entry::{EntryBody, PersonOpened, PersonUpdated};
use cardgate_domain::model::{Account, AccountKind, AccountStatus, Card, Person};
use cardgate_domain::money::from_fen;
use cardgate_domain::rules::input::{NAME_BYTES_MAX, check_person_id, check_text, ids_differing_by_leading_zeros};

use super::{By, NewPerson};
use crate::doors::{Holder, holder_moves};
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes};
use crate::txn::Txn;

/// A new account of `kind`: active, empty, on the kind's limits.
pub(crate) fn new_account(id: u64, kind: AccountKind) -> Account {
    Account {
        id,
        kind,
        status: AccountStatus::Active,
        balance: from_fen(0),
        limits: None,
        day: 0,
        spent_today: from_fen(0),
    }
}

impl Ledger {
    pub fn person(&self, person_id: &str) -> Option<Person> {
        self.state.person(person_id)
    }

    pub fn person_of_account(&self, account: u64) -> Option<Person> {
        self.state.person_of_account(account)
    }

    /// Every person of a department (a graduating class), by person id.
    pub fn persons_in_department(&self, department: &str) -> Vec<Person> {
        let mut v = self.state.persons_where(|p| p.department == department);
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Persons whose name contains `text` or whose person id is `text`, by person id, at
    /// most `limit`. A scan of every person: a desk looks up one customer at a time,
    /// and a campus has tens of thousands of persons, not millions.
    pub fn find_persons(&self, text: &str, limit: usize) -> Vec<Person> {
        let text = text.trim();
        if text.is_empty() {
            return Vec::new();
        }
        let mut v = self.state.persons_where(|p| p.id == text || p.name.contains(text));
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.truncate(limit);
        v
    }

    pub fn persons_count(&self) -> usize {
        self.state.persons_len()
    }

    /// Every card pointing at `account`, by card number.
    pub fn cards_of(&self, account: u64) -> Vec<Card> {
        let mut v = Vec::new();
        self.state.for_each_card(|c| {
            if c.account == account {
                v.push(*c);
            }
        });
        v.sort_by_key(|c| c.no.0);
        v
    }

    /// Opens a person with a new account (balance 0).
    pub async fn open_person(
        &self,
        by: &By<'_, (Person, Account)>,
        p: NewPerson,
    ) -> Result<(Person, Account), LedgerError> {
        check_person_id(&p.id)?;
        check_text("name", &p.name, NAME_BYTES_MAX, true)?;
        check_text("department", &p.department, NAME_BYTES_MAX, false)?;
        let _batch = self.state.batch_lock().await;
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            if self.state.has_person(&p.id) {
                return Err(LedgerError::Invalid(format!("person {} already exists", p.id)));
            }
            // Refused, as in an import: an id that lost or gained leading zeros in a
            // spreadsheet would give the same person a second account. At most
            // PERSON_ID_BYTES_MAX look-ups, no index.
            if let Some(other) = ids_differing_by_leading_zeros(&p.id).find(|o| self.state.has_person(o)) {
                return Err(LedgerError::Invalid(format!(
                    "person {other} already exists, and {} differs from it only by leading zeros: \
                     if it is the same person, use {other}; ids that differ only so are refused",
                    p.id
                )));
            }
            let id = self.state.new_account_id();
            let now = self.now_ms();
            let account = new_account(id, p.kind);
            let person = Person {
                account: id,
                id: p.id,
                name: p.name,
                department: p.department,
                created_ms: now,
            };
            let mut writes = Writes::new();
            writes.push(StateWrite::Person(Box::new(person.clone())));
            writes.push(StateWrite::Account(account));
            let body = EntryBody::PersonOpened(Box::new(PersonOpened {
                actor: by.actor.clone(),
                person: person.clone(),
                account,
            }));
            let sent = self.send_desk(txn, by, (person.clone(), account), now, body, writes, 0);
            self.state.put_account(account);
            self.state.put_person(person);
            sent
        };
        Ok(sent.durable().await?.0)
    }

    /// Changes a person's name, department or kind (the account's kind, which selects
    /// the limits and fees). `None` keeps a field. Returns (person, account) before and
    /// after.
    pub async fn update_person(
        &self,
        by: &By<'_, (Person, Account, Person, Account)>,
        person_id: &str,
        name: Option<String>,
        department: Option<String>,
        kind: Option<AccountKind>,
    ) -> Result<(Person, Account, Person, Account), LedgerError> {
        if let Some(n) = &name {
            check_text("name", n, NAME_BYTES_MAX, true)?;
        }
        if let Some(d) = &department {
            check_text("department", d, NAME_BYTES_MAX, false)?;
        }
        let _batch = self.state.batch_lock().await;
        let txn = Txn::begin(self.journal()).await?;
        let (sent, moved) = {
            let _desk = self.state.desk_lock();
            let before = self.state.person(person_id).ok_or_else(|| LedgerError::NotFoundNamed {
                what: "person",
                name: person_id.to_string(),
            })?;
            let mut after = before.clone();
            if let Some(n) = name {
                after.name = n;
            }
            if let Some(d) = department {
                after.department = d;
            }
            // A department's or a kind's permissions follow the person: their cards'
            // door lines may move. The cards are read before the door config is locked
            // (the desk lock keeps them as they are) so that door checks are not held up
            // by the scan.
            let door_relevant = after.department != before.department
                || kind.is_some_and(|k| self.state.account(before.account).is_some_and(|a| a.kind != k));
            let cards = if door_relevant {
                self.cards_of(before.account)
            } else {
                Vec::new()
            };
            let mut access = self.state.access().write();
            let mut acct = self
                .state
                .account_mut(before.account)
                .ok_or_else(|| LedgerError::not_found("account", before.account))?;
            let acct_before = *acct;
            if let Some(k) = kind {
                acct.kind = k;
            }
            let mut writes = Writes::new();
            writes.push(StateWrite::Person(Box::new(after.clone())));
            writes.push(StateWrite::Account(*acct));
            let body = EntryBody::PersonUpdated(Box::new(PersonUpdated {
                actor: by.actor.clone(),
                person: after.clone(),
                kind: acct.kind,
                import_id: 0,
            }));
            let now = self.now_ms();
            let moved = holder_moves(
                &mut access,
                &[(
                    Holder {
                        cards: &cards,
                        account: &acct_before,
                        person: Some(&before),
                    },
                    Holder {
                        cards: &cards,
                        account: &acct,
                        person: Some(&after),
                    },
                )],
                self.tz_offset_minutes(),
            );
            let more = Self::cache_moved_entry(&moved, CacheCause::PersonChanged, acct.id, now, &mut writes);
            let result = (before, acct_before, after.clone(), *acct);
            let sent = self.send_desk_more(txn, by, result, now, body, more, writes, 0);
            drop(acct);
            self.state.put_person(after);
            (sent, !moved.is_empty())
        };
        let result = sent.durable().await?.0;
        self.publish_door_moves(moved);
        Ok(result)
    }
}
