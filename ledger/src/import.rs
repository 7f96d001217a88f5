//! CSV batch import of persons and cards, as departments send them (data admin).
//!
//! ```text
//! person_id,name,department,kind,card_no
//! 2024001234,张三,计算机学院,student,6222000012345678
//! ```
//!
//! Every row is validated before anything changes: required fields, the card number's
//! format, the kind, duplicates inside the file and against existing persons and cards.
//! Any error and nothing is applied; the answer lists every error by line and column.
//! A row for a known person with unchanged fields is left alone, so re-importing a file
//! changes nothing; a changed file reports what it adds, updates and leaves alone. Card
//! lifecycle after issue (lost, replaced, cancelled) belongs to the desk: a known
//! person's row must name one of their cards, whatever its status.
//!
//! ## Files as spreadsheets save them
//!
//! Encoding, delimiter, line numbers and empty rows are read as `sheet.rs` says (and
//! docs/OPERATIONS.md says the same to the data admin). What is particular to persons:
//!
//! * **Identifiers** (person_id, card_no) are normalised (`normalize_identifier`:
//!   full-width forms to ASCII, U+3000 and other spaces trimmed); a number a spreadsheet
//!   mangled (scientific notation, decimals, thousands separators) is named as such.
//!   Names and departments are kept as written, trimmed.
//! * **Leading zeros**: a new person id that differs from an existing or an earlier
//!   row's only by leading zeros (0099000300, 99000300) is an error naming both.
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

use cardgate_domain::access::{CacheCause, Subject};
use cardgate_domain::entry::{EntryBody, EntryRecord, ImportChunk, ImportCommitted, ImportItem, PersonUpdated};
use cardgate_domain::model::{AccountKind, Card, CardStatus, Person};
use cardgate_domain::rules::input::{
    NAME_BYTES_MAX, check_person_id, check_text, ids_differing_by_leading_zeros, normalize_identifier, parse_card_no,
    spreadsheet_mangling, without_leading_zeros,
};
use cardgate_journal::record::encode_record;
use encoding_rs::Encoding;
use serde::Serialize;
use smallvec::{SmallVec, smallvec};

use crate::desk::By;
use crate::desk::new_account;
use crate::error::LedgerError;
use crate::ledger::Ledger;
pub use crate::records::staged_key;
use crate::records::{StateWrite, Writes};
use crate::sheet::{Errors, declared_encoding, read_sheet};
pub use crate::sheet::{IMPORT_ERRORS_LISTED_MAX, RowError};
use crate::txn::Txn;

/// The largest file accepted: 100,000 rows of ~80 bytes is 8 MB; this leaves room for
/// long names while bounding what one request makes us hold.
pub const IMPORT_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Rows per file: a whole campus.
pub const IMPORT_ROWS_MAX: usize = 200_000;
/// Encoded bytes of one `ImportChunk`: below the 4 KiB journal segment, so a chunk never
/// makes a segment (or a sled node) larger than the committer's bound.
pub const IMPORT_CHUNK_BYTES_MAX: usize = 3 * 1024;

const PERSON_ID: usize = 0;
const NAME: usize = 1;
const DEPARTMENT: usize = 2;
const KIND: usize = 3;
const CARD_NO: usize = 4;
const COLUMNS: [&str; 5] = ["person_id", "name", "department", "kind", "card_no"];

#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    pub import_id: u64,
    /// Rows with something in them, the header not counted.
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
    /// The encoding the file was read in ("UTF-8", "gb18030", "UTF-16LE", ...); none
    /// when it could not be read.
    pub encoding: Option<&'static str>,
    /// Why that encoding: a byte order mark, valid UTF-8, the charset given, or the
    /// GB18030 rule.
    pub encoding_reason: Option<String>,
    /// "comma", or "tab" when the header line has tabs and no comma.
    pub delimiter: Option<&'static str>,
    /// Blank lines and rows of only delimiters and spaces: skipped, counted here.
    pub empty_rows: usize,
    /// The first rows without errors as read (`SAMPLE_ROWS` of them), so that whoever
    /// checks the dry run sees the names as decoded: a wrong encoding shows as mojibake
    /// here, where no rule can tell it.
    pub sample: Vec<SampleRow>,
    /// What the import changed, as audit targets (`person:ID`, `account:N`, `card:N`),
    /// so that "who changed this account" finds the import too; for at most
    /// `AUDIT_TARGET_PERSONS_MAX` persons (a whole campus would make one audit record of
    /// megabytes): beyond, the record names the import alone, and says so.
    #[serde(skip)]
    pub touched: Vec<String>,
    /// Persons changed beyond those named in `touched`.
    #[serde(skip)]
    pub touched_beyond: usize,
}

/// Persons an import's audit record names one by one.
pub const AUDIT_TARGET_PERSONS_MAX: usize = 1_000;

/// Rows shown in `ImportReport::sample`.
pub const SAMPLE_ROWS: usize = 5;

/// One row of the file as the import read it.
#[derive(Clone, Debug, Serialize)]
pub struct SampleRow {
    pub line: u64,
    pub person_id: String,
    pub name: String,
    pub department: String,
    pub kind: &'static str,
    pub card_no: String,
}

struct Row {
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
    /// Persons when validation looked: another count at the commit means someone
    /// opened a person meanwhile, and the leading-zero rule is checked again.
    persons_seen: usize,
}

impl Ledger {
    /// Validates and, unless `dry_run` or any row is bad, applies a CSV import, its
    /// encoding detected (see the module's documentation).
    pub async fn import_csv(
        &self,
        by: &By<'_, ImportReport>,
        csv: &[u8],
        dry_run: bool,
    ) -> Result<ImportReport, LedgerError> {
        self.import_csv_with_charset(by, csv, None, dry_run).await
    }

    /// As `import_csv`, with the charset the caller declared (a WHATWG label:
    /// `gb18030`, `gbk`, `utf-16le`, `big5`, ...), used where the file has no byte
    /// order mark and is not valid UTF-8. An unknown label is refused.
    pub async fn import_csv_with_charset(
        &self,
        by: &By<'_, ImportReport>,
        csv: &[u8],
        charset: Option<&str>,
        dry_run: bool,
    ) -> Result<ImportReport, LedgerError> {
        if csv.len() > IMPORT_BYTES_MAX {
            return Err(LedgerError::Invalid(format!(
                "the file is larger than {IMPORT_BYTES_MAX} bytes"
            )));
        }
        let declared = charset.map(declared_encoding).transpose()?;
        let _batch = self.state.batch_lock().await;
        self.remove_staged_of_checkpointed_imports().await?;
        let plan = self.plan_import(csv, declared);
        let mut report = plan.report;
        if report.error_count > 0 || dry_run {
            return Ok(report);
        }
        if plan.adds.is_empty() && plan.updates.is_empty() && plan.kind_changes.is_empty() {
            report.applied = true;
            return Ok(report);
        }
        // 53 bits: a JSON number a browser or jq reads exactly (the answer and the audit
        // trail show it as one); far more than imports will ever be made.
        let import_id = rand::random::<u64>() >> 11;
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
        // Every person the import adds or changes (fields or kind), for the audit trail.
        let mut named = HashSet::new();
        let changed = items
            .iter()
            .map(|item| match item {
                ImportItem::Add { person, card, .. } => (person.id.clone(), person.account, Some(card.no)),
                ImportItem::Update { person } => (person.id.clone(), person.account, None),
            })
            .chain(
                plan.kind_changes
                    .iter()
                    .map(|(account, _, person)| (person.id.clone(), *account, None)),
            );
        for (person, account, card) in changed {
            if !named.insert(person.clone()) {
                continue;
            }
            if named.len() > AUDIT_TARGET_PERSONS_MAX {
                report.touched_beyond += 1;
                continue;
            }
            report.touched.push(format!("person:{person}"));
            report.touched.push(format!("account:{account}"));
            if let Some(card) = card {
                report.touched.push(format!("card:{}", card.0));
            }
        }

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
            let persons_opened = self.state.persons_len() != plan.persons_seen;
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
                    // At most PERSON_ID_BYTES_MAX look-ups a person, and only when someone
                    // was opened.
                    if persons_opened
                        && let Some(other) =
                            ids_differing_by_leading_zeros(&person.id).find(|o| self.state.has_person(o))
                    {
                        return Err(LedgerError::Invalid(format!(
                            "person {other} was opened at the desk during the import, and {} differs from it \
                             only by leading zeros; nothing was imported",
                            person.id
                        )));
                    }
                }
            }
            // Door groups whose lines the import moves: a department's or a kind's
            // permissions reach the cards it adds and the persons it moves between
            // departments. They are moved on as whole lists with the commit (an import
            // can touch thousands of cards: more than a delta carries).
            let mut departments: HashSet<String> = HashSet::new();
            let mut kinds: HashSet<AccountKind> = HashSet::new();
            for item in chunks.iter().flatten() {
                match item {
                    ImportItem::Add { person, account, .. } => {
                        departments.insert(person.department.clone());
                        kinds.insert(account.kind);
                    }
                    ImportItem::Update { person } => {
                        if let Some(old) = self.state.person(&person.id)
                            && old.department != person.department
                        {
                            departments.insert(old.department);
                            departments.insert(person.department.clone());
                        }
                    }
                }
            }
            let mut access = self.state.access().write();
            let moved = access.bump_whole_lists(|p| match &p.subject {
                Subject::Department(d) => departments.contains(d),
                Subject::Kind(k) => kinds.contains(k),
                Subject::Person(_) => false,
            });
            let mut writes = Writes::new();
            let more = Self::cache_moved_entry(&moved, CacheCause::Imported, 0, now, &mut writes);
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
            let sent = self.send_desk_more(txn, by, committed, now, body, more, writes, 0);
            for item in chunks.iter().flatten() {
                self.apply_item(item);
            }
            drop(access);
            (sent, !moved.is_empty())
        };
        let (sent, moved) = sent;
        let (_, marker_id) = sent.durable().await?;
        self.publish_door_moves(moved);
        self.state
            .staged_imports()
            .push((marker_id, import_id, chunks.len() as u32));

        // 3. Kind changes, each under its account's lock.
        let mut last = None;
        let mut moved_any = false;
        for (account, kind, person) in &plan.kind_changes {
            let txn = Txn::begin(self.journal()).await?;
            // A kind's permissions: the groups they are on move on with the change, as
            // whole lists (the account's cards are not looked up card by card here).
            let mut access = self.state.access().write();
            let Some(mut acct) = self.state.account_mut(*account) else {
                continue;
            };
            let old_kind = acct.kind;
            acct.kind = *kind;
            let moved =
                access.bump_whole_lists(|p| matches!(p.subject, Subject::Kind(k) if k == old_kind || k == *kind));
            moved_any |= !moved.is_empty();
            let mut writes = Writes::new();
            writes.push(StateWrite::Person(Box::new(person.clone())));
            writes.push(StateWrite::Account(*acct));
            let body = EntryBody::PersonUpdated(Box::new(PersonUpdated {
                actor: by.actor.clone(),
                person: person.clone(),
                kind: *kind,
                import_id,
            }));
            let mut entries: SmallVec<[EntryRecord; 1]> = smallvec![EntryRecord { time_ms: now, body }];
            entries.extend(Self::cache_moved_entry(
                &moved,
                CacheCause::Imported,
                *account,
                now,
                &mut writes,
            ));
            last = Some(txn.send_all((), entries, writes, 0));
            drop(acct);
            drop(access);
            self.state.put_person(person.clone());
        }
        if let Some(sent) = last {
            sent.durable().await?;
        }
        self.publish_door_moves(moved_any);
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

    fn plan_import(&self, bytes: &[u8], declared: Option<&'static Encoding>) -> Plan {
        let mut report = ImportReport::default();
        let mut errors = Errors::default();
        let persons_seen = self.state.persons_len();
        let plan_rows = self.check_rows(bytes, declared, &mut report, &mut errors);
        report.error_count = errors.count;
        report.errors = errors.listed;
        let mut plan = Plan {
            adds: Vec::new(),
            updates: Vec::new(),
            kind_changes: Vec::new(),
            report,
            persons_seen,
        };
        if plan.report.error_count > 0 {
            // Nothing of a file with a bad row: the counts above say what the good
            // rows would have done.
            return plan;
        }
        for planned in plan_rows {
            match planned {
                Planned::Add(row) => plan.adds.push(row),
                Planned::Update {
                    person,
                    fields_changed,
                    kind_change,
                } => {
                    if fields_changed {
                        plan.updates.push(person.clone());
                    }
                    if let Some((account, kind)) = kind_change {
                        plan.kind_changes.push((account, kind, person));
                    }
                }
            }
        }
        plan
    }

    /// Checks every row of the file, against the file and against the gateway's
    /// persons and cards, and reports every error: one kind of error never hides
    /// another. Returns what the rows without errors would do.
    fn check_rows(
        &self,
        bytes: &[u8],
        declared: Option<&'static Encoding>,
        report: &mut ImportReport,
        errors: &mut Errors,
    ) -> Vec<Planned> {
        let mut planned = Vec::new();
        // The gateway's side, looked up once: cards by account (not one pass per row),
        // and the persons whose id starts with a zero, by the id without them.
        let mut cards_by_account: HashMap<u64, HashSet<u64>> = HashMap::new();
        self.state.for_each_card(|c| {
            cards_by_account.entry(c.account).or_default().insert(c.no.0);
        });
        let zero_led: HashMap<String, String> = self
            .state
            .persons_where(|p| p.id.starts_with('0'))
            .into_iter()
            .map(|p| (without_leading_zeros(&p.id).to_string(), p.id))
            .collect();
        // An existing person whose id differs from `id` only by leading zeros.
        let zero_twin = |id: &str| -> Option<String> {
            let bare = without_leading_zeros(id);
            if bare != id && self.state.has_person(bare) {
                return Some(bare.to_string());
            }
            zero_led.get(bare).filter(|other| *other != id).cloned()
        };
        // By person id without leading zeros: (line, id) of its first row.
        let mut seen_persons: HashMap<String, (u64, String)> = HashMap::new();
        let mut seen_cards: HashMap<u64, u64> = HashMap::new();
        let read = read_sheet(bytes, declared, &COLUMNS, IMPORT_ROWS_MAX, errors, |row, errors| {
            let line = row.line;
            let errors_before = errors.count;
            // Taken in the order of COLUMNS, so a row's errors come in that order.
            let person_id = row.take(errors, PERSON_ID, |raw| {
                identifier(PERSON_ID, raw, |id| check_person_id(id).map_err(|r| r.0))
            });
            let name = row.take(errors, NAME, |v| text_value(NAME, v, true));
            let department = row.take(errors, DEPARTMENT, |v| text_value(DEPARTMENT, v, false));
            let kind = row.take(errors, KIND, kind_value);
            let card = row.take(errors, CARD_NO, |raw| {
                identifier(CARD_NO, raw, |id| parse_card_no(id).map(|_| ()).map_err(|r| r.0))
                    .and_then(|digits| parse_card_no(&digits).map_err(|r| r.0))
            });

            // Against the rest of the file.
            if let Some(id) = &person_id {
                match seen_persons.get(without_leading_zeros(id)) {
                    Some((first, other)) if other == id => {
                        errors.push(
                            line,
                            Some(COLUMNS[PERSON_ID]),
                            format!("person {id} is also on line {first}"),
                        );
                    }
                    Some((first, other)) => errors.push(
                        line,
                        Some(COLUMNS[PERSON_ID]),
                        format!(
                            "person {id} differs from {other} on line {first} only by leading zeros: \
                             a spreadsheet drops them from a column not formatted as text"
                        ),
                    ),
                    None => {
                        seen_persons.insert(without_leading_zeros(id).to_string(), (line, id.clone()));
                    }
                }
            }
            if let Some(c) = card {
                match seen_cards.get(&c.0) {
                    Some(first) => errors.push(
                        line,
                        Some(COLUMNS[CARD_NO]),
                        format!("card {} is also on line {first}", c.0),
                    ),
                    None => {
                        seen_cards.insert(c.0, line);
                    }
                }
            }
            // Against the gateway's persons and cards.
            let (Some(person_id), Some(card)) = (person_id, card) else {
                return;
            };
            let existing_card = self.state.card(card).map(|c| c.account);
            let existing = self.state.person(&person_id);
            match &existing {
                None => {
                    if let Some(other) = zero_twin(&person_id) {
                        errors.push(
                            line,
                            Some(COLUMNS[PERSON_ID]),
                            format!(
                                "person {person_id} differs from the existing person {other} only by leading \
                                 zeros: if it is the same person, write {other} (format the column as text so \
                                 the spreadsheet keeps zeros); ids that differ only so are refused"
                            ),
                        );
                    }
                    if let Some(a) = existing_card {
                        errors.push(
                            line,
                            Some(COLUMNS[CARD_NO]),
                            format!("card {} already belongs to account {a}", card.0),
                        );
                    } else if let Err(e) = self.check_issuable(card) {
                        errors.push(line, Some(COLUMNS[CARD_NO]), e.to_string());
                    }
                }
                Some(p) => {
                    let theirs = cards_by_account.get(&p.account).is_some_and(|s| s.contains(&card.0));
                    if !theirs {
                        let message = match existing_card {
                            Some(a) => format!("card {} belongs to account {a}, not to {}", card.0, p.id),
                            None => format!(
                                "person {} already has a card; issuing another is a desk operation",
                                p.id
                            ),
                        };
                        errors.push(line, Some(COLUMNS[CARD_NO]), message);
                    }
                }
            }
            let (Some(name), Some(department), Some(kind)) = (name, department, kind) else {
                return;
            };
            if errors.count > errors_before {
                return;
            }
            if report.sample.len() < SAMPLE_ROWS {
                report.sample.push(SampleRow {
                    line,
                    person_id: person_id.clone(),
                    name: name.clone(),
                    department: department.clone(),
                    kind: kind.as_str(),
                    card_no: card.0.to_string(),
                });
            }
            match existing {
                None => {
                    report.added += 1;
                    planned.push(Planned::Add(Row {
                        person_id,
                        name,
                        department,
                        kind,
                        card,
                    }));
                }
                Some(p) => {
                    let kind_now = self.state.account(p.account).map(|a| a.kind);
                    let mut after = p.clone();
                    after.name = name;
                    after.department = department;
                    let fields_changed = after != p;
                    let kind_changed = kind_now != Some(kind);
                    if kind_changed {
                        report.kind_changed += 1;
                    }
                    if fields_changed || kind_changed {
                        report.updated += 1;
                        planned.push(Planned::Update {
                            person: after,
                            fields_changed,
                            kind_change: kind_changed.then_some((p.account, kind)),
                        });
                    } else {
                        report.unchanged += 1;
                    }
                }
            }
        });
        report.rows = read.rows;
        report.empty_rows = read.empty_rows;
        report.encoding = read.encoding;
        report.encoding_reason = read.encoding_reason;
        report.delimiter = read.delimiter;
        planned
    }
}

/// What a checked row without errors would do.
enum Planned {
    Add(Row),
    Update {
        person: Person,
        fields_changed: bool,
        kind_change: Option<(u64, AccountKind)>,
    },
}

/// An identifier column's value in ASCII (`normalize_identifier`), or why it is not
/// one: empty, a number a spreadsheet mangled, or what `check` says.
fn identifier(c: usize, raw: &str, check: impl Fn(&str) -> Result<(), String>) -> Result<String, String> {
    let id = normalize_identifier(raw);
    if id.is_empty() {
        return Err(format!("{} is empty", COLUMNS[c]));
    }
    if let Some(cause) = spreadsheet_mangling(&id) {
        return Err(format!("{} {raw:?}: {cause}", COLUMNS[c]));
    }
    check(&id).map_err(|e| format!("{} {raw:?}: {e}", COLUMNS[c]))?;
    Ok(id)
}

/// A name or department: kept as written, trimmed.
fn text_value(c: usize, v: &str, required: bool) -> Result<String, String> {
    let v = v.trim();
    check_text(COLUMNS[c], v, NAME_BYTES_MAX, required).map_err(|r| r.0)?;
    Ok(v.to_string())
}

fn kind_value(raw: &str) -> Result<AccountKind, String> {
    // Spreadsheets capitalise a cell's first letter ("Student").
    let k = raw.trim().to_ascii_lowercase();
    AccountKind::parse(&k).ok_or_else(|| {
        if k.is_empty() {
            "kind is empty: one of student, staff, temporary".to_string()
        } else {
            format!("kind {:?} is not one of student, staff, temporary", raw.trim())
        }
    })
}

impl crate::desk::Targets for ImportReport {
    fn targets(&self) -> Vec<String> {
        let mut t = vec![format!("import:{}", self.import_id)];
        t.extend(self.touched.iter().cloned());
        t
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
