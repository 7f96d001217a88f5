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
//! What Excel and WPS write, read as a data admin means it (docs/OPERATIONS.md says the
//! same to them):
//!
//! * **Encoding** (`decode`): a byte order mark decides (UTF-8, UTF-16LE, UTF-16BE);
//!   else a file with NUL bytes is UTF-16 without one, read only with a declared
//!   `charset=utf-16le`/`utf-16be`; else valid UTF-8 is UTF-8; else a declared charset
//!   is used; else a file that decodes as GB18030 without a single error is GB18030
//!   (Chinese Excel's "CSV"); else one error says the encoding is unknown and how to
//!   fix it. The report names the encoding used and why.
//! * **Delimiter**: tab when the header line has tabs and no comma (Excel's "Unicode
//!   text"), else comma.
//! * **Lines** are those a text editor shows: 1-based, the header's line counted, LF,
//!   CRLF and lone CR each one break, blank lines and line breaks inside quoted values
//!   counted. The csv reader's own line numbers are not used: they count CRLF wrongly
//!   and skip blank lines, so each record's line comes from its byte offset.
//! * **Empty rows** (blank lines, or only delimiters and spaces) are skipped and
//!   counted in `empty_rows`.
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

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use cardgate_codec::CardNo;

use cardgate_domain::entry::{EntryBody, ImportChunk, ImportCommitted, ImportItem, PersonUpdated};
use cardgate_domain::model::{AccountKind, Card, CardStatus, Person};
use cardgate_domain::rules::input::{
    NAME_BYTES_MAX, check_person_id, check_text, ids_differing_by_leading_zeros, normalize_identifier, parse_card_no,
    spreadsheet_mangling, without_leading_zeros,
};
use cardgate_journal::record::encode_record;
use encoding_rs::{DecoderResult, Encoding, GB18030, UTF_8, UTF_16BE, UTF_16LE};
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

const PERSON_ID: usize = 0;
const NAME: usize = 1;
const DEPARTMENT: usize = 2;
const KIND: usize = 3;
const CARD_NO: usize = 4;
const COLUMNS: [&str; 5] = ["person_id", "name", "department", "kind", "card_no"];

/// What a data admin is told to do with a file whose encoding cannot be told.
const SAVE_AS_UTF8: &str = "save it as \"CSV UTF-8 (Comma delimited)\" in Excel (WPS: CSV, UTF-8), \
    or give its charset, e.g. charset=gb18030";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// 1-based line in the file as a text editor shows it (the header is line 1 when
    /// nothing is above it). A row that runs over several lines is reported on its
    /// first.
    pub line: u64,
    /// The column, by its header name, when the error is about one value.
    pub column: Option<&'static str>,
    pub message: String,
}

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
}

pub fn staged_key(import_id: u64, index: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = PREFIX_STAGED;
    k[1..9].copy_from_slice(&import_id.to_be_bytes());
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
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

    fn plan_import(&self, bytes: &[u8], declared: Option<&'static Encoding>) -> Plan {
        let mut report = ImportReport::default();
        let mut errors = Errors::default();
        let mut plan_rows = Vec::new();
        let persons_seen = self.state.persons_len();
        match decode(bytes, declared) {
            Err(unreadable) => errors.push(unreadable.line, None, unreadable.message),
            Ok(decoded) => {
                report.encoding = Some(decoded.encoding);
                report.encoding_reason = Some(decoded.reason);
                // A byte order mark inside the decoded text: a second one, or GB18030's.
                let text = decoded.text.strip_prefix('\u{feff}').unwrap_or(&decoded.text);
                let delimiter = delimiter_of(text);
                report.delimiter = Some(if delimiter == b'\t' { "tab" } else { "comma" });
                plan_rows = self.check_rows(text, delimiter, &mut report, &mut errors);
            }
        }
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

    /// Checks every row of the decoded file, against the file and against the
    /// gateway's persons and cards, and reports every error: one kind of error never
    /// hides another. Returns what the rows without errors would do.
    fn check_rows(&self, text: &str, delimiter: u8, report: &mut ImportReport, errors: &mut Errors) -> Vec<Planned> {
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

        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            .from_reader(text.as_bytes());
        let mut lines = LineCounter::default();
        let mut header: Option<Header> = None;
        // The last line of the previous record: the lines between it and the next
        // record are blank lines the reader skipped.
        let mut previous_end = 0u64;
        // By person id without leading zeros: (line, id) of its first row.
        let mut seen_persons: HashMap<String, (u64, String)> = HashMap::new();
        let mut seen_cards: HashMap<u64, u64> = HashMap::new();
        let mut read_to_the_end = true;
        let delimiter_name = if delimiter == b'\t' { "tab" } else { "comma" };
        for rec in rdr.records() {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    // Not met on text with a flexible reader; reported should it be.
                    let line = e
                        .position()
                        .map(|p| lines.line_at(text, record_start(text, p.byte())))
                        .unwrap_or(0);
                    errors.push(line, None, format!("does not parse: {e}"));
                    if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                        break;
                    }
                    continue;
                }
            };
            let start = record_start(text, rec.position().map_or(0, |p| p.byte()));
            let line = lines.line_at(text, start);
            let end = line + rec.iter().map(line_breaks).sum::<u64>();
            report.empty_rows += line.saturating_sub(previous_end + 1) as usize;
            previous_end = end;
            if rec.iter().all(|f| f.trim().is_empty()) {
                report.empty_rows += 1;
                continue;
            }
            let Some(header) = &header else {
                header = Some(Header::read(&rec, line, errors));
                continue;
            };
            report.rows += 1;
            if report.rows > IMPORT_ROWS_MAX {
                errors.push(line, None, format!("more than {IMPORT_ROWS_MAX} rows: split the file"));
                read_to_the_end = false;
                break;
            }
            if header.found == 0 {
                // Not a header this import knows: every row would be noise.
                continue;
            }
            if rec.len() != header.len {
                let (n, h) = (rec.len(), header.len);
                let message = if end > line {
                    format!(
                        "the row runs from line {line} to line {end} and has {n} values, the header {h}: \
                         a double quote in it is probably not closed"
                    )
                } else if n > h {
                    format!(
                        "the row has {n} values, the header {h}: a value with a {delimiter_name} in it \
                         must be in double quotes"
                    )
                } else {
                    format!("the row has {n} values, the header {h}")
                };
                errors.push(line, None, message);
                continue;
            }
            let errors_before = errors.count;
            // Each column's value, or why it is not one; none when the column is
            // missing (reported at the header). Taken in the order of COLUMNS, so a
            // row's errors come in that order.
            let value = |c: usize| -> Option<Result<&str, String>> {
                let v = rec.get(header.col[c]?).unwrap_or("");
                if v.contains(['\r', '\n']) {
                    return Some(Err(format!(
                        "{} holds a line break (the row runs from line {line} to line {end}): remove it from the cell",
                        COLUMNS[c]
                    )));
                }
                Some(Ok(v))
            };
            let person_id = value(PERSON_ID)
                .map(|v| v.and_then(|raw| identifier(PERSON_ID, raw, |id| check_person_id(id).map_err(|r| r.0))));
            let person_id = errors.take(line, PERSON_ID, person_id);
            let name = value(NAME).map(|v| v.and_then(|v| text_value(NAME, v, true)));
            let name = errors.take(line, NAME, name);
            let department = value(DEPARTMENT).map(|v| v.and_then(|v| text_value(DEPARTMENT, v, false)));
            let department = errors.take(line, DEPARTMENT, department);
            let kind = value(KIND).map(|v| v.and_then(kind_value));
            let kind = errors.take(line, KIND, kind);
            let card = value(CARD_NO).map(|v| {
                v.and_then(|raw| identifier(CARD_NO, raw, |id| parse_card_no(id).map(|_| ()).map_err(|r| r.0)))
                    .and_then(|digits| parse_card_no(&digits).map_err(|r| r.0))
            });
            let card = errors.take(line, CARD_NO, card);

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
                continue;
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
                continue;
            };
            if errors.count > errors_before {
                continue;
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
        }
        if header.is_none() && errors.count == 0 {
            errors.push(
                1,
                None,
                format!(
                    "the file is empty: its first line must be the header {}",
                    COLUMNS.join(",")
                ),
            );
        }
        // Blank lines after the last record; a final line break ends a line, it does
        // not start one.
        if read_to_the_end {
            report.empty_rows += lines.lines_in(text).saturating_sub(previous_end) as usize;
        }
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

/// Every error counted, the first `IMPORT_ERRORS_LISTED_MAX` listed.
#[derive(Default)]
struct Errors {
    count: usize,
    listed: Vec<RowError>,
}

impl Errors {
    fn push(&mut self, line: u64, column: Option<&'static str>, message: String) {
        self.count += 1;
        if self.listed.len() < IMPORT_ERRORS_LISTED_MAX {
            self.listed.push(RowError { line, column, message });
        }
    }
}

impl Errors {
    /// The value, or its error pushed (on `line`, in column `c`).
    fn take<T>(&mut self, line: u64, c: usize, checked: Option<Result<T, String>>) -> Option<T> {
        match checked? {
            Ok(v) => Some(v),
            Err(message) => {
                self.push(line, Some(COLUMNS[c]), message);
                None
            }
        }
    }
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

/// The header: where each known column is.
struct Header {
    col: [Option<usize>; 5],
    /// Values in the header line: every row must have as many.
    len: usize,
    /// Known columns found: none means the first line is not a header (a data row,
    /// another file).
    found: usize,
}

impl Header {
    fn read(rec: &csv::StringRecord, line: u64, errors: &mut Errors) -> Header {
        let names: Vec<&str> = rec.iter().map(|n| n.trim().trim_start_matches('\u{feff}')).collect();
        let mut col = [None; 5];
        for (i, n) in names.iter().enumerate() {
            if let Some(c) = COLUMNS.iter().position(|c| c == n)
                && col[c].is_none()
            {
                col[c] = Some(i);
            }
        }
        let found = col.iter().flatten().count();
        let header = Header {
            col,
            len: names.len(),
            found,
        };
        let expected = COLUMNS.join(",");
        if found == 0 {
            // One error, not one per value: this line is not a header at all.
            let message = if names.len() == 1 && names[0].contains(';') {
                format!("the header's columns are separated by semicolons: separate them by commas, as in {expected}")
            } else {
                format!("line {line} must be the header, {expected}; it has none of these columns")
            };
            errors.push(line, None, message);
            return header;
        }
        for (i, n) in names.iter().enumerate() {
            match COLUMNS.iter().position(|c| c == n) {
                Some(c) if col[c] != Some(i) => {
                    errors.push(line, Some(COLUMNS[c]), format!("column {n} is in the header twice"))
                }
                Some(_) => {}
                None if n.is_empty() => errors.push(
                    line,
                    None,
                    format!(
                        "column {} of the header has no name: delete that column, or name it",
                        i + 1
                    ),
                ),
                None => errors.push(
                    line,
                    None,
                    format!("unknown column {n:?}: the columns are {}", COLUMNS.join(", ")),
                ),
            }
        }
        for (c, want) in COLUMNS.iter().enumerate() {
            if col[c].is_none() {
                errors.push(line, Some(want), format!("the header lacks column {want}"));
            }
        }
        header
    }
}

// ---- the file as text ------------------------------------------------------------------

/// The file as text, and how it was read.
struct Decoded<'a> {
    text: Cow<'a, str>,
    encoding: &'static str,
    reason: String,
}

/// A file whose encoding cannot be told, or that breaks the one it declares.
struct Unreadable {
    line: u64,
    message: String,
}

/// The encoding a `charset` parameter names.
fn declared_encoding(label: &str) -> Result<&'static Encoding, LedgerError> {
    match Encoding::for_label(label.trim().as_bytes()) {
        // "replacement" decodes anything to U+FFFD, x-user-defined to private-use
        // characters: neither gives names back.
        Some(e) if e != encoding_rs::REPLACEMENT && e != encoding_rs::X_USER_DEFINED => Ok(e),
        _ => Err(LedgerError::Invalid(format!(
            "charset {label:?} is not an encoding this import reads: use utf-8, gb18030, utf-16le or \
             utf-16be (or another WHATWG encoding label, such as big5)"
        ))),
    }
}

/// Reads the file's bytes as text, by the rule in the module's documentation.
fn decode<'a>(bytes: &'a [u8], declared: Option<&'static Encoding>) -> Result<Decoded<'a>, Unreadable> {
    let declared_note = |used: &'static Encoding| match declared {
        Some(d) if d != used => format!(" (charset={} was given, and not used)", d.name()),
        _ => String::new(),
    };
    if let Some((encoding, bom)) = Encoding::for_bom(bytes) {
        let text = decode_strict(encoding, &bytes[bom..]).map_err(|line| Unreadable {
            line,
            message: format!(
                "the file starts with a {0} byte order mark but is not valid {0} on line {line}: {SAVE_AS_UTF8}",
                encoding.name()
            ),
        })?;
        return Ok(Decoded {
            text,
            encoding: encoding.name(),
            reason: format!(
                "the file starts with a {} byte order mark{}",
                encoding.name(),
                declared_note(encoding)
            ),
        });
    }
    if let Some(nul) = bytes.iter().position(|b| *b == 0) {
        // Text has no NUL; UTF-16 has one in every ASCII character, on the odd bytes
        // when little-endian. Without a byte order mark, only a charset says which.
        if let Some(encoding) = declared.filter(|d| *d == UTF_16LE || *d == UTF_16BE) {
            let text = decode_strict(encoding, bytes).map_err(|line| not_as_declared(encoding, line))?;
            return Ok(Decoded {
                text,
                encoding: encoding.name(),
                reason: format!("the file holds NUL bytes, and charset={} was given", encoding.name()),
            });
        }
        let guess = if nul % 2 == 1 { "utf-16le" } else { "utf-16be" };
        return Err(Unreadable {
            line: 1,
            message: format!(
                "the file holds NUL bytes: it looks like UTF-16 (\"Unicode text\") without a byte order mark; \
                 save it as \"CSV UTF-8 (Comma delimited)\", or give charset={guess}"
            ),
        });
    }
    let utf8_error = match std::str::from_utf8(bytes) {
        Ok(text) => {
            return Ok(Decoded {
                text: Cow::Borrowed(text),
                encoding: UTF_8.name(),
                reason: format!("the file is valid UTF-8{}", declared_note(UTF_8)),
            });
        }
        Err(e) => e,
    };
    if let Some(encoding) = declared {
        let text = decode_strict(encoding, bytes).map_err(|line| not_as_declared(encoding, line))?;
        return Ok(Decoded {
            text,
            encoding: encoding.name(),
            reason: format!("the file is not UTF-8, and charset={} was given", encoding.name()),
        });
    }
    // Not UTF-8, no charset: Chinese Excel's "CSV" is GB18030 (GBK). A file in another
    // legacy encoding rarely decodes as GB18030 without a single error, and the report
    // says GB18030 was chosen, so that a dry run shows it before anything is imported.
    match decode_strict(GB18030, bytes) {
        Ok(text) => Ok(Decoded {
            text,
            encoding: GB18030.name(),
            reason: "the file is not UTF-8 and reads as GB18030 (GBK) without an error; no charset was given"
                .to_string(),
        }),
        Err(_) => {
            let line = 1 + line_breaks(&String::from_utf8_lossy(&bytes[..utf8_error.valid_up_to()]));
            Err(Unreadable {
                line,
                message: format!(
                    "the file is not UTF-8 (line {line} is the first line that is not) and not GB18030 either, \
                     so its encoding is unknown: {SAVE_AS_UTF8}"
                ),
            })
        }
    }
}

fn not_as_declared(encoding: &'static Encoding, line: u64) -> Unreadable {
    Unreadable {
        line,
        message: format!(
            "the file is not valid {0} on line {line}, though charset={0} was given: check the charset, or \
             save the file as \"CSV UTF-8 (Comma delimited)\"",
            encoding.name()
        ),
    }
}

/// Decodes without replacement characters; on a malformed sequence, the line it is on.
fn decode_strict<'a>(encoding: &'static Encoding, bytes: &'a [u8]) -> Result<Cow<'a, str>, u64> {
    if encoding == UTF_8 {
        return std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|e| 1 + line_breaks(&String::from_utf8_lossy(&bytes[..e.valid_up_to()])));
    }
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let mut text = String::new();
    let mut rest = bytes;
    loop {
        let room = decoder
            .max_utf8_buffer_length_without_replacement(rest.len())
            .unwrap_or(rest.len().saturating_mul(3));
        text.reserve(room);
        let (result, read) = decoder.decode_to_string_without_replacement(rest, &mut text, true);
        rest = &rest[read..];
        match result {
            DecoderResult::InputEmpty => return Ok(Cow::Owned(text)),
            DecoderResult::OutputFull => continue,
            // What was decoded ends where the malformed sequence starts.
            DecoderResult::Malformed(..) => return Err(1 + line_breaks(&text)),
        }
    }
}

/// Tab when the header line (the first with anything in it) has tabs and no comma, as
/// Excel's "Unicode text" writes; else comma.
fn delimiter_of(text: &str) -> u8 {
    let header = text.split(['\r', '\n']).find(|l| !l.trim().is_empty()).unwrap_or("");
    if header.contains('\t') && !header.contains(',') {
        b'\t'
    } else {
        b','
    }
}

/// Line breaks as a text editor counts them: CRLF, lone CR and LF are one each.
fn line_breaks(s: &str) -> u64 {
    let b = s.as_bytes();
    (0..b.len())
        .filter(|&i| b[i] == b'\r' || (b[i] == b'\n' && (i == 0 || b[i - 1] != b'\r')))
        .count() as u64
}

/// Where a record's first value starts. The reader's position is where it began
/// looking, which is before the line break that ended the previous record when that
/// was CRLF, and before any blank lines it skipped. A record cannot start with a line
/// break (a quoted one starts with the quote), so skipping them is exact.
fn record_start(text: &str, byte: u64) -> usize {
    let b = text.as_bytes();
    let mut i = (byte as usize).min(b.len());
    while i < b.len() && (b[i] == b'\r' || b[i] == b'\n') {
        i += 1;
    }
    i
}

/// Lines of a text, counted forward record by record (records come in order), so a
/// file is scanned once.
#[derive(Default)]
struct LineCounter {
    at: usize,
    breaks: u64,
}

impl LineCounter {
    /// The 1-based line `offset` is on; offsets must not go backwards.
    fn line_at(&mut self, text: &str, offset: usize) -> u64 {
        let b = text.as_bytes();
        let offset = offset.min(b.len()).max(self.at);
        for i in self.at..offset {
            if b[i] == b'\r' || (b[i] == b'\n' && (i == 0 || b[i - 1] != b'\r')) {
                self.breaks += 1;
            }
        }
        self.at = offset;
        self.breaks + 1
    }

    /// Lines in the whole text: a final line break ends the last line.
    fn lines_in(&mut self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        let last = self.line_at(text, text.len());
        if text.ends_with(['\r', '\n']) { last - 1 } else { last }
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
