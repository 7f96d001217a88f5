//! CSV batch import of persons and cards, as departments send them (data admin).
//!
//! ```text
//! person_id,name,department,kind,card_no
//! 2024001234,张三,计算机学院,student,6222000012345678
//! ```
//!
//! Every row is validated before anything changes: required fields, the card number's
//! format, the kind, duplicates inside the file and against existing cards. Any error
//! and nothing is applied; the answer lists the errors by line. A row for a known person
//! with unchanged fields is left alone, so re-importing a file changes nothing; a changed
//! file reports what it adds, updates and leaves alone. Card lifecycle after issue (lost,
//! replaced, cancelled) belongs to the desk: a known person's row must name one of their
//! cards, whatever its status.
//!
//! ## All or nothing, even across a crash
//!
//! An import of 100,000 rows is far larger than one journal entry may be (entries are
//! packed into segments of 4 KiB; see `journal.rs`), so it is written in two steps:
//!
//! 1. **Stage.** The new and updated records go into `ImportChunk` entries of at most
//!    `IMPORT_CHUNK_BYTES_MAX`, submitted back to back and awaited once. Each chunk is
//!    also written, with its commit, under a staging key (`'Z' import chunk`) that does not
//!    depend on checkpoints. Nothing is applied yet, in memory or by replay.
//! 2. **Commit.** One small `ImportCommitted` entry, sent with every state record the
//!    import creates; only after it is queued do the records appear in memory.
//!
//! Replay keeps the chunks it meets aside and applies them at the commit entry, reading
//! any chunk that lies before the checkpoint from its staging key. A crash before the
//! commit entry is durable leaves the chunks unapplied: the import did not happen, and
//! the data admin runs it again. Staging keys are removed at the next start-up (when every
//! import is either applied and checkpointed or abandoned) and, while running, by the
//! next import once the checkpoint has passed the earlier one's commit.
//!
//! A kind change of an existing person (student → staff) moves the account's limits, so
//! it is made after the commit under each account's lock, one `PersonUpdated` entry
//! each (the account's other fields change under purchases meanwhile, which is why they
//! cannot ride in the commit). A crash in between leaves some kind changes undone;
//! importing the file again reports them as updates and makes them.

use std::collections::{HashMap, HashSet};

use cardgate_codec::CardNo;

use cardgate_domain::entry::{EntryBody, ImportChunk, ImportCommitted, ImportItem, PersonUpdated};
use cardgate_domain::model::{AccountKind, Card, CardStatus, Person};
use cardgate_domain::rules::input::{NAME_BYTES_MAX, check_person_id, check_text, parse_card_no};
use cardgate_journal::record::encode_record;
use serde::Serialize;

use crate::desk::By;
use crate::desk::new_account;
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{PREFIX_STAGED, StateWrite, Writes};
use crate::txn::Txn;

/// The largest file accepted: 100,000 rows of ~80 bytes is 8 MB; this leaves room for
/// long names while bounding what one request makes us hold.
pub const IMPORT_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Rows per file: a whole campus.
pub const IMPORT_ROWS_MAX: usize = 200_000;
/// Errors listed in one answer; the count is exact beyond it.
pub const IMPORT_ERRORS_LISTED_MAX: usize = 1_000;
/// Encoded bytes of one `ImportChunk`: below the 4 KiB journal segment, so a chunk never
/// makes a segment (or a sled node) larger than the committer's bound.
pub const IMPORT_CHUNK_BYTES_MAX: usize = 3 * 1024;

const COLUMNS: [&str; 5] = ["person_id", "name", "department", "kind", "card_no"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// 1-based line in the file (the header is line 1).
    pub line: u64,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    pub import_id: u64,
    pub rows: usize,
    pub added: usize,
    pub updated: usize,
    /// Of `updated`: persons whose kind (student/staff/temporary) changed.
    pub kind_changed: usize,
    pub unchanged: usize,
    /// False when the file was refused or this was a dry run.
    pub applied: bool,
    pub error_count: usize,
    pub errors: Vec<RowError>,
}

pub fn staged_key(import_id: u64, index: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = PREFIX_STAGED;
    k[1..9].copy_from_slice(&import_id.to_be_bytes());
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

struct Row {
    line: u64,
    person_id: String,
    name: String,
    department: String,
    kind: AccountKind,
    card: CardNo,
}

/// What validation decided.
struct Plan {
    adds: Vec<Row>,
    updates: Vec<Person>,
    /// (account, kind, person) for kind changes.
    kind_changes: Vec<(u64, AccountKind, Person)>,
    report: ImportReport,
}

impl Ledger {
    /// Validates and, unless `dry_run` or any row is bad, applies a CSV import.
    pub async fn import_csv(
        &self,
        by: &By<'_, ImportReport>,
        csv: &[u8],
        dry_run: bool,
    ) -> Result<ImportReport, LedgerError> {
        if csv.len() > IMPORT_BYTES_MAX {
            return Err(LedgerError::Invalid(format!(
                "the file is larger than {IMPORT_BYTES_MAX} bytes"
            )));
        }
        let _batch = self.state.batch_lock().await;
        self.remove_staged_of_checkpointed_imports().await?;
        let plan = self.plan_import(csv);
        let mut report = plan.report;
        if report.error_count > 0 || dry_run {
            return Ok(report);
        }
        if plan.adds.is_empty() && plan.updates.is_empty() && plan.kind_changes.is_empty() {
            report.applied = true;
            return Ok(report);
        }
        let import_id = rand::random::<u64>() >> 1;
        report.import_id = import_id;
        let now = self.now_ms();

        // The records, with account ids above every existing one.
        let mut items = Vec::with_capacity(plan.adds.len() + plan.updates.len());
        for row in &plan.adds {
            let id = self.state.new_account_id();
            items.push(ImportItem::Add {
                person: Person {
                    account: id,
                    id: row.person_id.clone(),
                    name: row.name.clone(),
                    department: row.department.clone(),
                    created_ms: now,
                },
                account: new_account(id, row.kind),
                card: Card {
                    no: row.card,
                    account: id,
                    status: CardStatus::Active,
                    expires_ms: None,
                    issued_ms: now,
                },
            });
        }
        items.extend(plan.updates.iter().cloned().map(|person| ImportItem::Update { person }));

        // 1. Stage.
        let mut chunks: Vec<Vec<ImportItem>> = Vec::new();
        let mut current = Vec::new();
        let mut bytes = 0;
        for item in items {
            let len = postcard::to_allocvec(&item)
                .map(|v| v.len())
                .unwrap_or(IMPORT_CHUNK_BYTES_MAX);
            if !current.is_empty() && bytes + len > IMPORT_CHUNK_BYTES_MAX {
                chunks.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += len;
            current.push(item);
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        let mut last = None;
        for (index, items) in chunks.iter().enumerate() {
            let txn = Txn::begin(self.journal()).await?;
            let index = index as u32;
            let mut writes = Writes::new();
            writes.push(StateWrite::Staged(
                staged_key(import_id, index).to_vec(),
                Some(encode_record(items)),
            ));
            let body = EntryBody::ImportChunk(Box::new(ImportChunk {
                import_id,
                index,
                items: items.clone(),
            }));
            last = Some(txn.send((), now, body, writes, 0));
        }
        if let Some(sent) = last {
            sent.durable().await?;
        }

        // 2. Commit, then make the records visible.
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            // The desk may have issued a card or opened a person since validation.
            for item in chunks.iter().flatten() {
                if let ImportItem::Add { person, card, .. } = item {
                    if self.state.has_card(card.no) {
                        return Err(LedgerError::Invalid(format!(
                            "card {} was issued at the desk during the import; nothing was imported",
                            card.no.0
                        )));
                    }
                    if self.state.has_person(&person.id) {
                        return Err(LedgerError::Invalid(format!(
                            "person {} was opened at the desk during the import; nothing was imported",
                            person.id
                        )));
                    }
                }
            }
            let mut writes = Writes::new();
            for item in chunks.iter().flatten() {
                match item {
                    ImportItem::Add { person, account, card } => {
                        writes.push(StateWrite::Person(Box::new(person.clone())));
                        writes.push(StateWrite::Account(*account));
                        writes.push(StateWrite::Card(*card));
                    }
                    ImportItem::Update { person } => writes.push(StateWrite::Person(Box::new(person.clone()))),
                }
            }
            let body = EntryBody::ImportCommitted(Box::new(ImportCommitted {
                actor: by.actor.clone(),
                import_id,
                chunks: chunks.len() as u32,
                rows: report.rows as u64,
                added: report.added as u64,
                updated: report.updated as u64,
                kind_changed: report.kind_changed as u64,
                unchanged: report.unchanged as u64,
            }));
            // The report as it stands once the commit is durable: the kind changes
            // after it belong to the same import.
            let mut committed = report.clone();
            committed.applied = true;
            let sent = self.send_desk(txn, by, committed, now, body, writes, 0);
            for item in chunks.iter().flatten() {
                self.apply_item(item);
            }
            sent
        };
        let (_, marker_id) = sent.durable().await?;
        self.state
            .staged_imports()
            .push((marker_id, import_id, chunks.len() as u32));

        // 3. Kind changes, each under its account's lock.
        let mut last = None;
        for (account, kind, person) in &plan.kind_changes {
            let txn = Txn::begin(self.journal()).await?;
            let Some(mut acct) = self.state.account_mut(*account) else {
                continue;
            };
            acct.kind = *kind;
            let mut writes = Writes::new();
            writes.push(StateWrite::Person(Box::new(person.clone())));
            writes.push(StateWrite::Account(*acct));
            let body = EntryBody::PersonUpdated(Box::new(PersonUpdated {
                actor: by.actor.clone(),
                person: person.clone(),
                kind: *kind,
                import_id,
            }));
            last = Some(txn.send((), now, body, writes, 0));
            drop(acct);
            self.state.put_person(person.clone());
        }
        if let Some(sent) = last {
            sent.durable().await?;
        }
        report.applied = true;
        metrics::counter!("cardgate_import_rows_total", "result" => "added").increment(report.added as u64);
        metrics::counter!("cardgate_import_rows_total", "result" => "updated").increment(report.updated as u64);
        Ok(report)
    }

    /// Removes the staging keys of earlier imports whose commit a durable checkpoint
    /// already covers (replay no longer needs them).
    async fn remove_staged_of_checkpointed_imports(&self) -> Result<(), LedgerError> {
        let checkpoint = self
            .journal()
            .stats
            .durable_checkpoint_id
            .load(std::sync::atomic::Ordering::Acquire);
        let done: Vec<(u64, u64, u32)> = {
            let mut staged = self.state.staged_imports();
            let (done, keep) = staged.drain(..).partition(|(marker, _, _)| *marker <= checkpoint);
            *staged = keep;
            done
        };
        if done.is_empty() {
            return Ok(());
        }
        let mut writes = Writes::new();
        for (_, import_id, chunks) in done {
            for i in 0..chunks {
                writes.push(StateWrite::Staged(staged_key(import_id, i).to_vec(), None));
            }
        }
        Txn::begin(self.journal()).await?.write_direct(writes).durable().await?;
        Ok(())
    }

    fn plan_import(&self, csv: &[u8]) -> Plan {
        let mut report = ImportReport::default();
        let mut errors: Vec<RowError> = Vec::new();
        let mut err = |line: u64, message: String, report: &mut ImportReport| {
            report.error_count += 1;
            if errors.len() < IMPORT_ERRORS_LISTED_MAX {
                errors.push(RowError { line, message });
            }
        };
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .flexible(false)
            .from_reader(csv);
        let mut col = [usize::MAX; 5];
        match rdr.headers() {
            Ok(h) => {
                let names: Vec<&str> = h.iter().collect();
                for (i, want) in COLUMNS.iter().enumerate() {
                    match names.iter().position(|n| n == want) {
                        Some(p) => col[i] = p,
                        None => err(1, format!("the header lacks column {want}"), &mut report),
                    }
                }
                for n in &names {
                    if !COLUMNS.contains(n) {
                        err(1, format!("unknown column {n:?}"), &mut report);
                    }
                }
            }
            Err(e) => err(1, format!("the header does not parse: {e}"), &mut report),
        }
        let mut rows = Vec::new();
        if report.error_count == 0 {
            let mut seen_persons: HashMap<String, u64> = HashMap::new();
            let mut seen_cards: HashMap<u64, u64> = HashMap::new();
            for rec in rdr.records() {
                let rec = match rec {
                    Ok(r) => r,
                    Err(e) => {
                        let line = e.position().map(|p| p.line()).unwrap_or(0);
                        err(line, format!("does not parse: {e}"), &mut report);
                        if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                            break;
                        }
                        continue;
                    }
                };
                report.rows += 1;
                if report.rows > IMPORT_ROWS_MAX {
                    err(0, format!("more than {IMPORT_ROWS_MAX} rows"), &mut report);
                    break;
                }
                let line = rec.position().map(|p| p.line()).unwrap_or(0);
                let field = |i: usize| rec.get(col[i]).unwrap_or("").to_string();
                let (person_id, name, department, kind, card) = (field(0), field(1), field(2), field(3), field(4));
                let mut bad = Vec::new();
                if let Err(e) = check_person_id(&person_id) {
                    bad.push(format!("person_id: {e}"));
                }
                if let Err(e) = check_text("name", &name, NAME_BYTES_MAX, true) {
                    bad.push(e.to_string());
                }
                if let Err(e) = check_text("department", &department, NAME_BYTES_MAX, false) {
                    bad.push(e.to_string());
                }
                let kind = match AccountKind::parse(&kind) {
                    Some(k) => Some(k),
                    None => {
                        bad.push(format!("kind {kind:?} is not one of student, staff, temporary"));
                        None
                    }
                };
                let card = match parse_card_no(&card) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        bad.push(format!("card_no {card:?}: {e}"));
                        None
                    }
                };
                if !person_id.is_empty()
                    && let Some(first) = seen_persons.insert(person_id.clone(), line)
                {
                    bad.push(format!("person {person_id} is also on line {first}"));
                }
                if let Some(c) = card
                    && let Some(first) = seen_cards.insert(c.0, line)
                {
                    bad.push(format!("card {} is also on line {first}", c.0));
                }
                if !bad.is_empty() {
                    err(line, bad.join("; "), &mut report);
                    continue;
                }
                if let (Some(kind), Some(card)) = (kind, card) {
                    rows.push(Row {
                        line,
                        person_id,
                        name,
                        department,
                        kind,
                        card,
                    });
                }
            }
        }
        let mut plan = Plan {
            adds: Vec::new(),
            updates: Vec::new(),
            kind_changes: Vec::new(),
            report,
        };
        if plan.report.error_count == 0 {
            // Against the gateway's records: one pass over the cards, not one per row.
            let mut cards_by_account: HashMap<u64, HashSet<u64>> = HashMap::new();
            self.state.for_each_card(|c| {
                cards_by_account.entry(c.account).or_default().insert(c.no.0);
            });
            for row in rows {
                let existing_card = self.state.card(row.card).map(|c| c.account);
                match self.state.person(&row.person_id) {
                    None => {
                        if let Some(a) = existing_card {
                            err(
                                row.line,
                                format!("card {} already belongs to account {a}", row.card.0),
                                &mut plan.report,
                            );
                            continue;
                        }
                        plan.report.added += 1;
                        plan.adds.push(row);
                    }
                    Some(p) => {
                        let theirs = cards_by_account
                            .get(&p.account)
                            .is_some_and(|s| s.contains(&row.card.0));
                        if !theirs {
                            let msg = match existing_card {
                                Some(a) => format!("card {} belongs to account {a}, not to {}", row.card.0, p.id),
                                None => format!(
                                    "person {} already has a card; issuing another is a desk operation",
                                    p.id
                                ),
                            };
                            err(row.line, msg, &mut plan.report);
                            continue;
                        }
                        let kind_now = self.state.account(p.account).map(|a| a.kind);
                        let mut after = p.clone();
                        after.name = row.name;
                        after.department = row.department;
                        let fields_changed = after != p;
                        let kind_changed = kind_now != Some(row.kind);
                        if fields_changed {
                            plan.updates.push(after.clone());
                        }
                        if kind_changed {
                            plan.kind_changes.push((p.account, row.kind, after));
                            plan.report.kind_changed += 1;
                        }
                        if fields_changed || kind_changed {
                            plan.report.updated += 1;
                        } else {
                            plan.report.unchanged += 1;
                        }
                    }
                }
            }
        }
        plan.report.errors = errors;
        if plan.report.error_count > 0 {
            plan.adds.clear();
            plan.updates.clear();
            plan.kind_changes.clear();
        }
        plan
    }
}

impl crate::desk::Targets for ImportReport {
    fn targets(&self) -> Vec<String> {
        vec![format!("import:{}", self.import_id)]
    }
}

impl Ledger {
    fn apply_item(&self, item: &ImportItem) {
        match item {
            ImportItem::Add { person, account, card } => {
                self.state.put_account(*account);
                self.state.put_card(*card);
                self.state.put_person(person.clone());
            }
            ImportItem::Update { person } => self.state.put_person(person.clone()),
        }
    }
}
