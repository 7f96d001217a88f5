//! The system admin's inventory sheet: a CSV of terminals, as an asset register keeps
//! them, imported all or nothing.
//!
//! ```text
//! id,kind,merchant,door_group,name,place,serial,responsible,installed,status,installer
//! 3001,pos,12,,一食堂 3号窗口,一食堂,SN-88120031,王工,2026-09-01,installed,李师傅
//! ```
//!
//! A row with a new id registers the terminal with a new key, handed to the row's
//! `installer` (recorded as a key handout); a row with a known id changes its inventory
//! record (moved, renamed, sent for repair, retired) and leaves its key alone; an
//! unchanged row is left alone, so importing the same sheet again changes nothing. Every
//! row is checked first, against the sheet and the registry (duplicate ids and serials,
//! unknown merchants and door groups, a POS terminal on a door group, a retired terminal
//! brought back), every error listed by line and column; one error and nothing is
//! imported. The file is read as a spreadsheet saved it (`sheet.rs`).
//!
//! All the rows go in one journal submission: one commit, so a crash leaves the whole
//! sheet imported or none of it. That bounds a sheet to `INVENTORY_ROWS_MAX` rows.

use std::collections::HashMap;

use cardgate_domain::entry::{EntryBody, EntryRecord, TerminalAction, TerminalEntry};
use cardgate_domain::model::{InventoryStatus, KeyHandout, TerminalKind, TerminalRecord};
use cardgate_domain::rules::input::{NAME_BYTES_MAX, check_text, normalize_identifier};
use cardgate_domain::rules::registry::check_status_change;
use serde::Serialize;
use smallvec::SmallVec;

use crate::desk::{By, Targets};
use crate::error::LedgerError;
use crate::keys::new_secret;
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes};
use crate::sheet::{Errors, RowError, declared_encoding, read_sheet};
use crate::txn::Txn;

/// Rows one sheet may hold: every terminal of a large campus, in one commit of a few
/// megabytes.
pub const INVENTORY_ROWS_MAX: usize = 20_000;

const ID: usize = 0;
const KIND: usize = 1;
const MERCHANT: usize = 2;
const DOOR_GROUP: usize = 3;
const NAME: usize = 4;
const PLACE: usize = 5;
const SERIAL: usize = 6;
const RESPONSIBLE: usize = 7;
const INSTALLED: usize = 8;
const STATUS: usize = 9;
const INSTALLER: usize = 10;
pub const INVENTORY_COLUMNS: [&str; 11] = [
    "id",
    "kind",
    "merchant",
    "door_group",
    "name",
    "place",
    "serial",
    "responsible",
    "installed",
    "status",
    "installer",
];

/// What an inventory sheet did, or would do. Never holds a key.
#[derive(Clone, Debug, Default, Serialize)]
pub struct InventoryReport {
    pub rows: usize,
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// False when the sheet was refused or this was a dry run.
    pub applied: bool,
    pub error_count: usize,
    pub errors: Vec<RowError>,
    pub encoding: Option<&'static str>,
    pub encoding_reason: Option<String>,
    pub delimiter: Option<&'static str>,
    pub empty_rows: usize,
    /// The terminals registered, by id (their keys go to the caller once, beside this).
    pub registered: Vec<u64>,
}

impl Targets for InventoryReport {
    fn targets(&self) -> Vec<String> {
        let mut t: Vec<String> = self.registered.iter().map(|id| format!("terminal:{id}")).collect();
        t.insert(0, "inventory".into());
        t
    }
}

/// A terminal's new key from an import: shown to the caller once.
pub struct IssuedKey {
    pub terminal: u64,
    pub key_generation: u32,
    pub secret: [u8; 32],
}

/// A checked row.
enum Planned {
    New {
        record: TerminalRecord,
        installer: String,
    },
    Change {
        before: Box<TerminalRecord>,
        after: TerminalRecord,
    },
}

impl Ledger {
    /// Checks an inventory sheet and, unless `dry_run` or any row is bad, imports it in
    /// one commit. Returns the report and the keys of the terminals it registered.
    pub async fn import_inventory(
        &self,
        by: &By<'_, InventoryReport>,
        csv: &[u8],
        charset: Option<&str>,
        dry_run: bool,
    ) -> Result<(InventoryReport, Vec<IssuedKey>), LedgerError> {
        if csv.len() > crate::import::IMPORT_BYTES_MAX {
            return Err(LedgerError::Invalid(format!(
                "the file is larger than {} bytes",
                crate::import::IMPORT_BYTES_MAX
            )));
        }
        let declared = charset.map(declared_encoding).transpose()?;
        if !dry_run {
            // Refused before reading when nothing could be sealed.
            self.terminal_key()?;
        }
        let txn = Txn::begin(self.journal()).await?;
        let _desk = self.state.desk_lock();
        let mut report = InventoryReport::default();
        let mut errors = Errors::default();
        let planned = self.check_inventory(csv, declared, &mut report, &mut errors);
        report.error_count = errors.count;
        report.errors = errors.listed;
        if report.error_count > 0 || dry_run {
            return Ok((report, Vec::new()));
        }
        report.applied = true;
        if planned.is_empty() {
            return Ok((report, Vec::new()));
        }
        let key = self.terminal_key()?.clone();
        let now = self.now_ms();
        let mut entries: Vec<EntryRecord> = Vec::with_capacity(planned.len());
        let mut writes = Writes::new();
        let mut records = Vec::with_capacity(planned.len());
        let mut handouts = Vec::new();
        let mut keys = Vec::new();
        let mut closed = Vec::new();
        for p in planned {
            let (action, record, handout) = match p {
                Planned::New { mut record, installer } => {
                    let secret = new_secret();
                    record.key = key.seal(record.id, 1, &secret);
                    record.updated_ms = now;
                    keys.push(IssuedKey {
                        terminal: record.id,
                        key_generation: 1,
                        secret,
                    });
                    let handout = KeyHandout {
                        terminal: record.id,
                        key_generation: 1,
                        issued_by: by.actor.clone(),
                        handed_to: installer,
                        time_ms: now,
                    };
                    (TerminalAction::Registered, record, Some(handout))
                }
                Planned::Change { before, mut after } => {
                    after.updated_ms = now;
                    if before.enabled && !after.enabled {
                        closed.push(after.id);
                    }
                    (TerminalAction::Changed, after, None)
                }
            };
            writes.push(StateWrite::TerminalRecord(Box::new(record.clone())));
            if let Some(h) = &handout {
                writes.push(StateWrite::Handout(Box::new(h.clone())));
                handouts.push(h.clone());
            }
            entries.push(EntryRecord {
                time_ms: now,
                body: EntryBody::TerminalSet(Box::new(TerminalEntry {
                    actor: by.actor.clone(),
                    action,
                    terminal: record.clone(),
                    handout,
                })),
            });
            records.push(record);
        }
        let first = entries.remove(0);
        let more: SmallVec<[EntryRecord; 1]> = entries.into_iter().collect();
        let extras = self.extras(by, &report, now);
        let sent = self.send_with_more(txn, report, now, first.body, more, writes, extras);
        for r in records {
            self.state.put_terminal_record(r)?;
        }
        self.state.handouts().extend(handouts);
        drop(_desk);
        let (report, _) = sent.durable().await?;
        for id in closed {
            self.notify_terminal(id);
        }
        Ok((report, keys))
    }

    /// Checks every row against the sheet and the registry; every error is pushed.
    fn check_inventory(
        &self,
        csv: &[u8],
        declared: Option<&'static encoding_rs::Encoding>,
        report: &mut InventoryReport,
        errors: &mut Errors,
    ) -> Vec<Planned> {
        let mut planned = Vec::new();
        let mut seen_ids: HashMap<u64, u64> = HashMap::new();
        let mut seen_serials: HashMap<String, u64> = HashMap::new();
        let columns = &INVENTORY_COLUMNS;
        let read = read_sheet(csv, declared, columns, INVENTORY_ROWS_MAX, errors, |row, errors| {
            let line = row.line;
            let before = errors.count;
            let id = row.take(errors, ID, |raw| match normalize_identifier(raw).parse::<u64>() {
                Ok(0) | Err(_) => Err(format!("id {raw:?} is not a terminal id (a whole number above 0)")),
                Ok(id) => Ok(id),
            });
            let kind = row.take(errors, KIND, |raw| {
                let k = raw.trim().to_ascii_lowercase();
                TerminalKind::parse(&k)
                    .ok_or_else(|| format!("kind {:?} is not one of pos, door, attendance, kiosk", raw.trim()))
            });
            let number = |what: &'static str| {
                move |raw: &str| -> Result<u64, String> {
                    let v = normalize_identifier(raw);
                    if v.is_empty() {
                        return Ok(0);
                    }
                    v.parse::<u64>()
                        .map_err(|_| format!("{what} {raw:?} is not an id (a whole number, or empty)"))
                }
            };
            let merchant = row.take(errors, MERCHANT, number("merchant"));
            let door_group = row.take(errors, DOOR_GROUP, number("door_group"));
            let text = |c: usize, required: bool| {
                move |v: &str| -> Result<String, String> {
                    let v = v.trim();
                    check_text(INVENTORY_COLUMNS[c], v, NAME_BYTES_MAX, required).map_err(|r| r.0)?;
                    Ok(v.to_string())
                }
            };
            let name = row.take(errors, NAME, text(NAME, true));
            let place = row.take(errors, PLACE, text(PLACE, false));
            let serial = row.take(errors, SERIAL, |raw| Ok(normalize_identifier(raw)));
            let responsible = row.take(errors, RESPONSIBLE, text(RESPONSIBLE, false));
            let installed = row.take(errors, INSTALLED, |raw| {
                let v = raw.trim();
                if !v.is_empty() && cardgate_domain::clock::parse_local_date(v, 0).is_none() {
                    return Err(format!("installed {v:?} is not a date YYYY-MM-DD"));
                }
                Ok(v.to_string())
            });
            let status = row.take(errors, STATUS, |raw| {
                let s = raw.trim().to_ascii_lowercase();
                if s.is_empty() {
                    return Ok(InventoryStatus::Installed);
                }
                InventoryStatus::parse(&s).ok_or_else(|| {
                    format!(
                        "status {:?} is not one of in_stock, installed, under_repair, retired",
                        raw.trim()
                    )
                })
            });
            let installer = row.take(errors, INSTALLER, text(INSTALLER, false));

            if let Some(id) = id {
                match seen_ids.get(&id) {
                    Some(first) => errors.push(line, Some("id"), format!("terminal {id} is also on line {first}")),
                    None => {
                        seen_ids.insert(id, line);
                    }
                }
            }
            if let Some(s) = &serial
                && !s.is_empty()
            {
                match seen_serials.get(s) {
                    Some(first) => errors.push(line, Some("serial"), format!("serial {s:?} is also on line {first}")),
                    None => {
                        seen_serials.insert(s.clone(), line);
                    }
                }
            }
            let (
                Some(id),
                Some(kind),
                Some(merchant),
                Some(door_group),
                Some(name),
                Some(place),
                Some(serial),
                Some(responsible),
                Some(installed),
                Some(status),
                Some(installer),
            ) = (
                id,
                kind,
                merchant,
                door_group,
                name,
                place,
                serial,
                responsible,
                installed,
                status,
                installer,
            )
            else {
                return;
            };
            let existing = if self.state.has_terminal(id) {
                match self.record_of(id) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        errors.push(line, Some("id"), e.to_string());
                        return;
                    }
                }
            } else {
                None
            };
            let mut after = existing.clone().unwrap_or_else(|| TerminalRecord {
                id,
                kind,
                merchant_id: 0,
                door_group: 0,
                name: String::new(),
                place: String::new(),
                serial: String::new(),
                responsible: String::new(),
                installed: String::new(),
                status,
                enabled: status != InventoryStatus::Retired,
                key_generation: 1,
                // Sealed when the sheet is imported; a dry run needs no key.
                key: cardgate_domain::model::SealedKey {
                    nonce: [0; 12],
                    ciphertext: Vec::new(),
                },
                previous_key: None,
                previous_until_ms: 0,
                updated_ms: 0,
            });
            if let Some(e) = &existing {
                if e.kind != kind {
                    errors.push(
                        line,
                        Some("kind"),
                        format!(
                            "terminal {id} is a {} terminal; a device of another kind is a new terminal",
                            e.kind.as_str()
                        ),
                    );
                }
                if let Err(r) = check_status_change(e.status, status) {
                    errors.push(line, Some("status"), r.0);
                }
                let missing = self.state.terminal(id).map_or(0, |t| t.seen.missing());
                if status == InventoryStatus::Retired && e.status != InventoryStatus::Retired && missing > 0 {
                    errors.push(
                        line,
                        Some("status"),
                        format!(
                            "terminal {id} has {missing} sequence numbers never received (offline sales it may still \
                             hold): let it upload them, or retire it through the API with retire_with_missing"
                        ),
                    );
                }
            } else if installer.is_empty() {
                errors.push(
                    line,
                    Some("installer"),
                    format!("terminal {id} is new: name the installer who receives its key"),
                );
            }
            after.merchant_id = merchant;
            after.door_group = door_group;
            after.name = name;
            after.place = place;
            after.serial = serial;
            after.responsible = responsible;
            after.installed = installed;
            after.status = status;
            if status == InventoryStatus::Retired {
                after.enabled = false;
            }
            if let Err(e) = self.check_record(&after) {
                let column = match &e {
                    LedgerError::NotFound { what, .. } if *what == "merchant" => Some("merchant"),
                    _ if e.to_string().starts_with("merchant ") => Some("merchant"),
                    LedgerError::NotFound { what, .. } if *what == "door group" => Some("door_group"),
                    _ if e.to_string().contains("serial") => Some("serial"),
                    _ => None,
                };
                errors.push(line, column, e.to_string());
            }
            if errors.count > before {
                return;
            }
            match existing {
                None => {
                    report.added += 1;
                    planned.push(Planned::New {
                        record: after,
                        installer,
                    });
                }
                Some(before) if before == after => report.unchanged += 1,
                Some(before) => {
                    report.updated += 1;
                    planned.push(Planned::Change {
                        before: Box::new(before),
                        after,
                    });
                }
            }
        });
        report.rows = read.rows;
        report.empty_rows = read.empty_rows;
        report.encoding = read.encoding;
        report.encoding_reason = read.encoding_reason;
        report.delimiter = read.delimiter;
        report.registered = planned
            .iter()
            .filter_map(|p| match p {
                Planned::New { record, .. } => Some(record.id),
                Planned::Change { .. } => None,
            })
            .collect();
        planned
    }
}
