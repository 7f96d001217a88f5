//! The card desk's blank card stock (库存卡): deliveries received as ranges of card
//! numbers, cards drawn from it when issued (a card issued with a number in a delivery's
//! range was drawn from stock), blanks spoiled or sent back, and the weekly count
//! (每周清点库存卡) compared with what the records say should be on hand.

use std::collections::BTreeSet;

use cardgate_codec::CardNo;
use cardgate_domain::entry::{EntryBody, StockEntry};
use cardgate_domain::model::{StockBatch, StockCount, StockRemoval};
use cardgate_domain::rules::input::{NAME_BYTES_MAX, REASON_BYTES_MAX, check_card_no, check_text};
use cardgate_domain::rules::registry::check_stock_batch;
use serde::Serialize;

use crate::desk::{By, Targets};
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{StateWrite, StockRemoved, Writes};
use crate::txn::Txn;

/// Card numbers one spoilage, return or count may list: a count of a full cupboard.
pub const STOCK_LIST_CARDS_MAX: usize = 200_000;

fn invalid(msg: impl Into<String>) -> LedgerError {
    LedgerError::Invalid(msg.into())
}

/// The stock as the records have it now.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StockReport {
    pub batches: usize,
    pub received: u64,
    /// Cards issued with a number from a delivery.
    pub issued: u64,
    pub spoiled: u64,
    pub returned: u64,
    /// What should be on hand: received − issued − spoiled − returned.
    pub expected: u64,
}

/// A weekly count against the records.
#[derive(Clone, Debug, Serialize)]
pub struct CountResult {
    pub count: StockCountView,
    pub report: StockReport,
    /// expected − counted: positive when cards are missing.
    pub discrepancy: i64,
    /// With a listed count: cards that should be on hand and were not counted...
    pub missing: Vec<String>,
    /// ...and cards counted that the records do not have on hand.
    pub unexpected: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StockCountView {
    pub id: u64,
    pub date: String,
    pub counted: u64,
    pub expected: u64,
    pub by: String,
}

impl Targets for StockBatch {
    fn targets(&self) -> Vec<String> {
        vec![format!("stock_batch:{}", self.id)]
    }
}

impl Targets for CountResult {
    fn targets(&self) -> Vec<String> {
        vec![format!("stock_count:{}", self.count.id)]
    }
}

impl Targets for StockReport {
    fn targets(&self) -> Vec<String> {
        vec!["stock".into()]
    }
}

impl Ledger {
    /// What the records say is on hand, and how it came to be.
    pub fn stock_report(&self) -> StockReport {
        let stock = self.state.stock();
        let mut r = StockReport {
            batches: stock.batches.len(),
            received: stock.batches.iter().map(|b| b.size()).sum(),
            ..StockReport::default()
        };
        self.state.for_each_card(|c| {
            if stock.batch_of(c.no).is_some() {
                r.issued += 1;
            }
        });
        for rm in stock.removed.values() {
            match rm.how {
                StockRemoval::Spoiled => r.spoiled += 1,
                StockRemoval::Returned => r.returned += 1,
            }
        }
        r.expected = r.received.saturating_sub(r.issued + r.spoiled + r.returned);
        r
    }

    pub fn stock_batches(&self) -> Vec<StockBatch> {
        self.state.stock().batches.clone()
    }

    /// Whether a card number may be issued as far as the stock goes: not one recorded
    /// spoiled or returned.
    pub(crate) fn check_issuable(&self, no: CardNo) -> Result<(), LedgerError> {
        match self.state.stock().removed.get(&no.0) {
            Some(r) => Err(invalid(format!(
                "card {} was recorded as {} and is not in stock",
                no.0,
                r.how.as_str()
            ))),
            None => Ok(()),
        }
    }

    /// Records a delivery of blank cards numbered `first..=last`.
    pub async fn receive_stock(
        &self,
        by: &By<'_, StockBatch>,
        first: CardNo,
        last: CardNo,
        received: &str,
        supplier: &str,
    ) -> Result<StockBatch, LedgerError> {
        check_stock_batch(first, last)?;
        check_text("supplier", supplier, NAME_BYTES_MAX, true)?;
        self.check_not_future("received", received)?;
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            // Blank cards: a number already issued is in someone's hand, not in a box. The
            // smaller side is walked (the range or the issued cards), before the stock's
            // lock is taken.
            let mut issued: Vec<u64> = Vec::new();
            if last.0 - first.0 < self.state.cards_len() as u64 {
                issued.extend((first.0..=last.0).filter(|n| self.state.has_card(CardNo(*n))).take(3));
            } else {
                self.state.for_each_card(|c| {
                    if (first.0..=last.0).contains(&c.no.0) {
                        issued.push(c.no.0);
                    }
                });
                issued.sort_unstable();
                issued.truncate(3);
            }
            if let Some(n) = issued.first() {
                let shown: Vec<String> = issued.iter().map(u64::to_string).collect();
                return Err(invalid(format!(
                    "card {n} is already issued (of {first}..={last}: {}): a delivery holds blank cards",
                    shown.join(", "),
                    first = first.0,
                    last = last.0,
                )));
            }
            let mut stock = self.state.stock();
            if let Some(b) = stock
                .batches
                .iter()
                .find(|b| b.first.0 <= last.0 && first.0 <= b.last.0)
            {
                return Err(invalid(format!(
                    "cards {}..={} overlap delivery {} ({}..={})",
                    first.0, last.0, b.id, b.first.0, b.last.0
                )));
            }
            let now = self.now_ms();
            let batch = StockBatch {
                id: stock.batches.iter().map(|b| b.id).max().unwrap_or(0) + 1,
                first,
                last,
                received: received.to_string(),
                supplier: supplier.to_string(),
                received_by: by.actor.clone(),
                time_ms: now,
            };
            let mut writes = Writes::new();
            writes.push(StateWrite::StockBatch(Box::new(batch.clone())));
            let body = EntryBody::Stock(Box::new(StockEntry::Received(batch.clone())));
            let sent = self.send_desk(txn, by, batch.clone(), now, body, writes, 0);
            stock.batches.push(batch);
            sent
        };
        Ok(sent.durable().await?.0)
    }

    /// Records blank cards spoiled (damaged before issue) or returned to the supplier:
    /// each must be in a delivery, not issued, and not already removed.
    pub async fn remove_stock(
        &self,
        by: &By<'_, StockReport>,
        how: StockRemoval,
        cards: &[CardNo],
        note: &str,
    ) -> Result<StockReport, LedgerError> {
        check_text("note", note, REASON_BYTES_MAX, true)?;
        if cards.is_empty() || cards.len() > STOCK_LIST_CARDS_MAX {
            return Err(invalid(format!("name 1..={STOCK_LIST_CARDS_MAX} cards")));
        }
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let mut seen = BTreeSet::new();
            {
                let stock = self.state.stock();
                for no in cards {
                    check_card_no(*no)?;
                    if !seen.insert(no.0) {
                        return Err(invalid(format!("card {} is named twice", no.0)));
                    }
                    if stock.batch_of(*no).is_none() {
                        return Err(invalid(format!("card {} is in no delivery", no.0)));
                    }
                    if self.state.has_card(*no) {
                        return Err(invalid(format!("card {} was issued", no.0)));
                    }
                    if let Some(r) = stock.removed.get(&no.0) {
                        return Err(invalid(format!("card {} is already recorded {}", no.0, r.how.as_str())));
                    }
                }
            }
            let now = self.now_ms();
            let mut writes = Writes::new();
            let removed: Vec<StockRemoved> = cards
                .iter()
                .map(|no| StockRemoved {
                    card: *no,
                    how,
                    note: note.to_string(),
                    time_ms: now,
                })
                .collect();
            writes.extend(removed.iter().map(|r| StateWrite::StockRemoved(Box::new(r.clone()))));
            let body = EntryBody::Stock(Box::new(StockEntry::Removed {
                actor: by.actor.clone(),
                how,
                cards: cards.to_vec(),
                note: note.to_string(),
                time_ms: now,
            }));
            {
                let mut stock = self.state.stock();
                for r in removed {
                    stock.removed.insert(r.card.0, r);
                }
            }
            let report = self.stock_report();
            self.send_desk(txn, by, report, now, body, writes, 0)
        };
        Ok(sent.durable().await?.0)
    }

    /// Records the weekly count of blanks on hand and compares it with the records. With
    /// the card numbers counted, the differences are listed card by card.
    pub async fn count_stock(
        &self,
        by: &By<'_, CountResult>,
        date: &str,
        counted: u64,
        counted_cards: &[CardNo],
    ) -> Result<CountResult, LedgerError> {
        // What is on hand is compared with what the records expect now: a count is of
        // today. One dated another day would be judged against today's figure.
        let (day, today) = self.day_and_today("date", date)?;
        if day != today {
            return Err(invalid(format!(
                "date {date:?}: a count is of the cards on hand now, dated today ({})",
                crate::days::day_str(today)
            )));
        }
        if counted_cards.len() > STOCK_LIST_CARDS_MAX {
            return Err(invalid(format!("a count lists at most {STOCK_LIST_CARDS_MAX} cards")));
        }
        if !counted_cards.is_empty() && counted_cards.len() as u64 != counted {
            return Err(invalid(format!(
                "counted is {counted} but {} card numbers are listed",
                counted_cards.len()
            )));
        }
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let report = self.stock_report();
            let (missing, unexpected) = if counted_cards.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                self.compare_count(counted_cards)
            };
            let now = self.now_ms();
            let count = StockCount {
                id: self.state.stock().counts.iter().map(|c| c.id).max().unwrap_or(0) + 1,
                date: date.to_string(),
                counted,
                expected: report.expected,
                counted_cards: counted_cards.to_vec(),
                by: by.actor.clone(),
                time_ms: now,
            };
            let result = CountResult {
                count: StockCountView {
                    id: count.id,
                    date: count.date.clone(),
                    counted,
                    expected: report.expected,
                    by: by.actor.name.clone(),
                },
                discrepancy: report.expected as i64 - counted as i64,
                report,
                missing,
                unexpected,
            };
            let mut writes = Writes::new();
            writes.push(StateWrite::StockCount(Box::new(count.clone())));
            let body = EntryBody::Stock(Box::new(StockEntry::Counted(count.clone())));
            let sent = self.send_desk(txn, by, result, now, body, writes, 0);
            self.state.stock().counts.push(count);
            sent
        };
        Ok(sent.durable().await?.0)
    }

    /// A local date as a business day, beside today's.
    fn day_and_today(&self, what: &str, date: &str) -> Result<(i32, i32), LedgerError> {
        let tz = self.tz_offset_minutes();
        let today = cardgate_domain::clock::business_day(self.now_ms(), tz);
        let ms = cardgate_domain::clock::parse_local_date(date, tz)
            .ok_or_else(|| invalid(format!("{what} {date:?} is not a date YYYY-MM-DD")))?;
        Ok((cardgate_domain::clock::business_day(ms, tz), today))
    }

    /// A local date that is today or earlier.
    fn check_not_future(&self, what: &str, date: &str) -> Result<(), LedgerError> {
        let (day, today) = self.day_and_today(what, date)?;
        if day > today {
            return Err(invalid(format!(
                "{what} {date:?} is after today ({})",
                crate::days::day_str(today)
            )));
        }
        Ok(())
    }

    /// Cards on hand by the records and not counted, and counted but not on hand.
    fn compare_count(&self, counted: &[CardNo]) -> (Vec<String>, Vec<String>) {
        let stock = self.state.stock();
        let on_hand = |no: u64| {
            stock.batch_of(CardNo(no)).is_some() && !stock.removed.contains_key(&no) && !self.state.has_card(CardNo(no))
        };
        let counted: BTreeSet<u64> = counted.iter().map(|c| c.0).collect();
        let unexpected = counted.iter().filter(|n| !on_hand(**n)).map(u64::to_string).collect();
        let mut missing = Vec::new();
        for b in &stock.batches {
            for n in b.first.0..=b.last.0 {
                if on_hand(n) && !counted.contains(&n) {
                    missing.push(n.to_string());
                }
            }
        }
        (missing, unexpected)
    }

    /// Every count, newest last.
    pub fn stock_counts(&self) -> Vec<StockCountView> {
        self.state
            .stock()
            .counts
            .iter()
            .map(|c| StockCountView {
                id: c.id,
                date: c.date.clone(),
                counted: c.counted,
                expected: c.expected,
                by: c.by.name.clone(),
            })
            .collect()
    }
}
