//! The system admin's registry: merchants (商户), door groups, and every terminal (POS,
//! door controller, attendance clock, kiosk) with its inventory record and its key.
//!
//! A terminal's secret is generated here and handed back once, to be loaded into the
//! device by an installer, who is recorded (授权卡 records: who received which key, when,
//! from whom); the registry keeps it only sealed (`keys.rs`). A rekey gives a new secret
//! and keeps the old one valid for an overlap, so that a canteen's terminals can be
//! loaded during a working day. Disabling a terminal refuses it at once: its sessions
//! are told to close (`terminal_notices`) and it cannot sign on again until enabled.
//! Disabling a merchant disables its POS terminals in the same submission.

use cardgate_domain::entry::{DoorGroupEntry, EntryBody, EntryRecord, MerchantEntry, TerminalAction, TerminalEntry};
use cardgate_domain::model::{
    DoorGroup, InventoryStatus, KeyHandout, Merchant, MerchantKind, TerminalKind, TerminalRecord,
};
use cardgate_domain::rules::input::{NAME_BYTES_MAX, check_text};
use cardgate_domain::rules::registry::{
    REKEY_OVERLAP_MAX_MS, check_attachment, check_merchant, check_status_change, check_terminal_text,
};
use serde::Serialize;
use smallvec::SmallVec;

use crate::desk::{By, Targets};
use crate::doors::DoorCacheView;
use crate::error::LedgerError;
use crate::keys::{TerminalKey, new_secret};
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes};
use crate::txn::Txn;

fn invalid(msg: impl Into<String>) -> LedgerError {
    LedgerError::Invalid(msg.into())
}

/// A merchant to create.
#[derive(Clone, Debug)]
pub struct NewMerchant {
    pub name: String,
    pub kind: MerchantKind,
    pub place: String,
    pub contact: String,
    pub fee_rate_bp: u32,
}

/// Changes to a merchant; `None` keeps a field.
#[derive(Clone, Debug, Default)]
pub struct MerchantPatch {
    pub name: Option<String>,
    pub kind: Option<MerchantKind>,
    pub place: Option<String>,
    pub contact: Option<String>,
    pub fee_rate_bp: Option<u32>,
    pub enabled: Option<bool>,
}

/// A terminal to register.
#[derive(Clone, Debug)]
pub struct NewTerminal {
    pub id: u64,
    pub kind: TerminalKind,
    pub merchant_id: u64,
    pub door_group: u64,
    pub name: String,
    pub place: String,
    pub serial: String,
    pub responsible: String,
    pub installed: String,
    pub status: InventoryStatus,
    /// Who receives the key (the installer); recorded.
    pub handed_to: String,
}

/// Changes to a terminal's inventory record; `None` keeps a field.
#[derive(Clone, Debug, Default)]
pub struct TerminalPatch {
    pub merchant_id: Option<u64>,
    pub door_group: Option<u64>,
    pub name: Option<String>,
    pub place: Option<String>,
    pub serial: Option<String>,
    pub responsible: Option<String>,
    pub installed: Option<String>,
    pub status: Option<InventoryStatus>,
    /// Retire it even though sequence numbers below its highest never arrived (offline
    /// sales it may still hold): the system admin decided they are lost.
    pub retire_with_missing: bool,
}

/// A terminal as the inventory reports it: the record (never its key) and what the
/// gateway sees of it live.
#[derive(Clone, Debug, Serialize)]
pub struct TerminalView {
    pub id: u64,
    pub kind: &'static str,
    pub merchant_id: u64,
    pub door_group: u64,
    pub name: String,
    pub place: String,
    pub serial: String,
    pub responsible: String,
    pub installed: String,
    pub status: &'static str,
    pub enabled: bool,
    pub key_generation: u32,
    /// Until when the previous key still signs on (0: no overlap).
    pub previous_key_until_ms: i64,
    pub connected: bool,
    /// Since when it has had a session, or since when it has had none (since this
    /// gateway started: live state).
    pub online_since_ms: Option<i64>,
    pub offline_since_ms: Option<i64>,
    pub last_seen_ms: i64,
    pub blacklist_version: u64,
    /// A door controller's door cache (`Ledger::door_cache_views`: its acknowledgement
    /// is live state, 0 until it acknowledges after this gateway started); `None` for
    /// any other terminal.
    pub door_cache: Option<DoorCacheView>,
    /// Its clock minus the gateway's at its last sign-on.
    pub drift_ms: i64,
    pub last_tx_seq: u64,
    /// Ranges of sequence numbers below `last_tx_seq` never received, and how many
    /// numbers they hold.
    pub open_gaps: Vec<(u64, u64)>,
    pub missing: u64,
}

/// A registration or rekey: the record, and the secret, shown once.
pub struct Issued {
    pub terminal: TerminalRecord,
    pub secret: [u8; 32],
}

impl Targets for Merchant {
    fn targets(&self) -> Vec<String> {
        vec![format!("merchant:{}", self.id)]
    }
}

impl Targets for (Merchant, Merchant) {
    fn targets(&self) -> Vec<String> {
        vec![format!("merchant:{}", self.1.id)]
    }
}

impl Targets for DoorGroup {
    fn targets(&self) -> Vec<String> {
        vec![format!("door_group:{}", self.id)]
    }
}

impl Targets for TerminalRecord {
    fn targets(&self) -> Vec<String> {
        vec![format!("terminal:{}", self.id)]
    }
}

impl Targets for (TerminalRecord, TerminalRecord) {
    fn targets(&self) -> Vec<String> {
        vec![format!("terminal:{}", self.1.id)]
    }
}

impl Ledger {
    pub(crate) fn terminal_key(&self) -> Result<&TerminalKey, LedgerError> {
        self.state.terminal_key().ok_or_else(|| {
            invalid(
                "no terminal key is configured (terminal_key_file or CARDGATE_TERMINAL_KEY): terminal keys \
                 cannot be sealed, so terminals cannot be registered or changed",
            )
        })
    }

    // ---- merchants ----------------------------------------------------------------------

    pub fn merchants(&self) -> Vec<Merchant> {
        self.state.merchants()
    }

    pub fn merchant(&self, id: u64) -> Option<Merchant> {
        self.state.merchant(id)
    }

    pub async fn create_merchant(&self, by: &By<'_, Merchant>, m: NewMerchant) -> Result<Merchant, LedgerError> {
        check_merchant(&m.name, &m.place, &m.contact, m.fee_rate_bp)?;
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            if self.state.merchants().iter().any(|x| x.name == m.name) {
                return Err(invalid(format!("a merchant named {:?} exists", m.name)));
            }
            let now = self.now_ms();
            let merchant = Merchant {
                id: self.state.new_merchant_id(),
                name: m.name,
                kind: m.kind,
                place: m.place,
                contact: m.contact,
                fee_rate_bp: m.fee_rate_bp,
                enabled: true,
                created_ms: now,
            };
            let mut writes = Writes::new();
            writes.push(StateWrite::Merchant(Box::new(merchant.clone())));
            let body = EntryBody::MerchantSet(Box::new(MerchantEntry {
                actor: by.actor.clone(),
                merchant: merchant.clone(),
            }));
            let sent = self.send_desk(txn, by, merchant.clone(), now, body, writes, 0);
            self.state.put_merchant(merchant);
            sent
        };
        Ok(sent.durable().await?.0)
    }

    /// Changes a merchant. Disabling it disables its POS terminals, in the same
    /// submission; enabling it again leaves them disabled (each is enabled by hand).
    pub async fn change_merchant(
        &self,
        by: &By<'_, (Merchant, Merchant)>,
        id: u64,
        p: MerchantPatch,
    ) -> Result<(Merchant, Merchant), LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        let (sent, closed) = {
            let _desk = self.state.desk_lock();
            let before = self
                .state
                .merchant(id)
                .ok_or_else(|| LedgerError::not_found("merchant", id))?;
            let mut after = before.clone();
            if let Some(v) = p.name {
                after.name = v;
            }
            if let Some(v) = p.kind {
                after.kind = v;
            }
            if let Some(v) = p.place {
                after.place = v;
            }
            if let Some(v) = p.contact {
                after.contact = v;
            }
            if let Some(v) = p.fee_rate_bp {
                after.fee_rate_bp = v;
            }
            if let Some(v) = p.enabled {
                after.enabled = v;
            }
            check_merchant(&after.name, &after.place, &after.contact, after.fee_rate_bp)?;
            let now = self.now_ms();
            let mut writes = Writes::new();
            writes.push(StateWrite::Merchant(Box::new(after.clone())));
            let mut more: SmallVec<[EntryRecord; 1]> = SmallVec::new();
            let mut disabled = Vec::new();
            if before.enabled && !after.enabled {
                for mut r in self.records_where(|r| r.merchant_id == id && r.kind == TerminalKind::Pos && r.enabled)? {
                    r.enabled = false;
                    r.updated_ms = now;
                    writes.push(StateWrite::TerminalRecord(Box::new(r.clone())));
                    more.push(EntryRecord {
                        time_ms: now,
                        body: EntryBody::TerminalSet(Box::new(TerminalEntry {
                            actor: by.actor.clone(),
                            action: TerminalAction::Disabled,
                            terminal: r.clone(),
                            handout: None,
                        })),
                    });
                    disabled.push(r);
                }
            }
            let body = EntryBody::MerchantSet(Box::new(MerchantEntry {
                actor: by.actor.clone(),
                merchant: after.clone(),
            }));
            let extras = self.extras(by, &(before.clone(), after.clone()), now);
            let sent = self.send_with_more(txn, (before, after.clone()), now, body, more, writes, extras);
            self.state.put_merchant(after);
            let mut closed = Vec::with_capacity(disabled.len());
            for r in disabled {
                closed.push(r.id);
                self.state.put_terminal_record(r)?;
            }
            (sent, closed)
        };
        let (result, _) = sent.durable().await?;
        for id in closed {
            self.notify_terminal(id);
        }
        Ok(result)
    }

    // ---- door groups ----------------------------------------------------------------------

    pub fn door_groups(&self) -> Vec<DoorGroup> {
        self.state.door_groups()
    }

    pub async fn create_door_group(
        &self,
        by: &By<'_, DoorGroup>,
        name: &str,
        place: &str,
    ) -> Result<DoorGroup, LedgerError> {
        check_text("name", name, NAME_BYTES_MAX, true)?;
        check_text("place", place, NAME_BYTES_MAX, false)?;
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            if self.state.door_groups().iter().any(|g| g.name == name) {
                return Err(invalid(format!("a door group named {name:?} exists")));
            }
            let now = self.now_ms();
            let group = DoorGroup {
                id: self.state.new_door_group_id(),
                name: name.to_string(),
                place: place.to_string(),
                created_ms: now,
            };
            let mut writes = Writes::new();
            writes.push(StateWrite::DoorGroup(Box::new(group.clone())));
            let body = EntryBody::DoorGroupSet(Box::new(DoorGroupEntry {
                actor: by.actor.clone(),
                group: group.clone(),
            }));
            let sent = self.send_desk(txn, by, group.clone(), now, body, writes, 0);
            self.state.put_door_group(group);
            sent
        };
        Ok(sent.durable().await?.0)
    }

    // ---- terminals --------------------------------------------------------------------------

    /// The inventory: every terminal, by id, with what the gateway sees of it live.
    pub fn terminal_inventory(&self) -> Vec<TerminalView> {
        let mut out = Vec::new();
        self.state.for_each_terminal(|t| {
            let r = t.record.as_ref();
            out.push(TerminalView {
                id: t.info.id,
                kind: t.info.kind.as_str(),
                merchant_id: t.info.merchant_id,
                door_group: r.map_or(0, |r| r.door_group),
                name: t.info.name.clone(),
                place: t.info.place.clone(),
                serial: r.map_or_else(String::new, |r| r.serial.clone()),
                responsible: r.map_or_else(String::new, |r| r.responsible.clone()),
                installed: r.map_or_else(String::new, |r| r.installed.clone()),
                status: r.map_or(InventoryStatus::Installed, |r| r.status).as_str(),
                enabled: t.info.enabled,
                key_generation: r.map_or(0, |r| r.key_generation),
                previous_key_until_ms: t.previous.map_or(0, |(_, until)| until),
                connected: t.sessions > 0,
                online_since_ms: t.online_since_ms,
                offline_since_ms: t.offline_since_ms,
                last_seen_ms: t.last_seen_ms,
                blacklist_version: t.blacklist_acked,
                door_cache: None,
                drift_ms: t.drift_ms,
                last_tx_seq: t.last_seq(),
                // At most a few listed here; the completeness report has them all.
                open_gaps: t.seen.gaps.iter().rev().take(16).rev().copied().collect(),
                missing: t.seen.missing(),
            });
        });
        out.sort_by_key(|t| t.id);
        // After the walk over the terminals, so that no two of the state's locks are held
        // at once.
        let caches = self.door_cache_views();
        for t in &mut out {
            t.door_cache = caches.get(&t.id).copied();
            // A controller's or clock's numbers are its events' (what its SIGN_ON_OK
            // says), not the sales' memory, which it never uses.
            if t.kind == TerminalKind::Door.as_str() || t.kind == TerminalKind::Attendance.as_str() {
                t.last_tx_seq = self.controller_last_event(t.id);
            }
        }
        out
    }

    /// The registry record of a terminal; a terminal registered before the registry
    /// gets one now (its current secret sealed), so that every change writes a record.
    pub(crate) fn record_of(&self, id: u64) -> Result<TerminalRecord, LedgerError> {
        let t = self
            .state
            .terminal(id)
            .ok_or_else(|| LedgerError::not_found("terminal", id))?;
        if let Some(r) = &t.record {
            return Ok(r.clone());
        }
        let key = self.terminal_key()?;
        Ok(TerminalRecord {
            id,
            kind: t.info.kind,
            merchant_id: t.info.merchant_id,
            door_group: 0,
            name: t.info.name.clone(),
            place: t.info.place.clone(),
            serial: format!("legacy-{id}"),
            responsible: String::new(),
            installed: String::new(),
            status: InventoryStatus::Installed,
            enabled: t.info.enabled,
            key_generation: 1,
            key: key.seal(id, 1, &t.info.secret),
            previous_key: None,
            previous_until_ms: 0,
            updated_ms: self.now_ms(),
        })
    }

    fn records_where(&self, f: impl Fn(&TerminalRecord) -> bool) -> Result<Vec<TerminalRecord>, LedgerError> {
        let mut ids = Vec::new();
        self.state.for_each_terminal(|t| ids.push(t.info.id));
        let mut out = Vec::new();
        for id in ids {
            let r = self.record_of(id)?;
            if f(&r) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Checks what a terminal record is attached to against the registry.
    pub(crate) fn check_record(&self, r: &TerminalRecord) -> Result<(), LedgerError> {
        check_attachment(r.kind, r.merchant_id, r.door_group)?;
        check_terminal_text(&r.name, &r.place, &r.serial, &r.responsible)?;
        if !r.installed.is_empty() && cardgate_domain::clock::parse_local_date(&r.installed, 0).is_none() {
            return Err(invalid(format!("installed {:?} is not a date YYYY-MM-DD", r.installed)));
        }
        if r.merchant_id != 0 {
            let m = self
                .state
                .merchant(r.merchant_id)
                .ok_or_else(|| LedgerError::not_found("merchant", r.merchant_id))?;
            // One rule for every way a terminal gets its merchant (registered, moved,
            // imported, enabled): an enabled terminal never sells for a disabled merchant.
            if r.enabled && !m.enabled {
                return Err(invalid(format!(
                    "merchant {} is disabled: enable the merchant first, or disable the terminal",
                    m.id
                )));
            }
        }
        if r.door_group != 0 && self.state.door_group(r.door_group).is_none() {
            return Err(LedgerError::not_found("door group", r.door_group));
        }
        if let Some(other) = self.state.terminal_of_serial(&r.serial)
            && other != r.id
        {
            return Err(invalid(format!("serial {:?} is terminal {other}'s", r.serial)));
        }
        Ok(())
    }

    /// Registers a terminal with a new secret, returned once, and records who received
    /// it.
    pub async fn register_terminal_new(
        &self,
        by: &By<'_, TerminalRecord>,
        t: NewTerminal,
    ) -> Result<Issued, LedgerError> {
        self.register_with_secret(by, t, new_secret()).await
    }

    /// As `register_terminal_new` with a given secret: the demo campus's terminals have
    /// secrets derived from a published master secret.
    pub(crate) async fn register_with_secret(
        &self,
        by: &By<'_, TerminalRecord>,
        t: NewTerminal,
        secret: [u8; 32],
    ) -> Result<Issued, LedgerError> {
        let mut issued = self.register_many(by, vec![(t, secret)]).await?;
        Ok(issued.remove(0))
    }

    /// Registers terminals back to back, sharing group commits (the demo campus, an
    /// inventory file): all are checked first, and one refused registers none.
    pub(crate) async fn register_many(
        &self,
        by: &By<'_, TerminalRecord>,
        items: Vec<(NewTerminal, [u8; 32])>,
    ) -> Result<Vec<Issued>, LedgerError> {
        let key = self.terminal_key()?.clone();
        let now = self.now_ms();
        let mut records = Vec::with_capacity(items.len());
        {
            let _desk = self.state.desk_lock();
            let mut ids = std::collections::HashSet::with_capacity(items.len());
            let mut serials = std::collections::HashSet::with_capacity(items.len());
            for (t, secret) in items {
                check_text("handed_to", &t.handed_to, NAME_BYTES_MAX, true)?;
                if t.id == 0 {
                    return Err(invalid("terminal id 0 is not a terminal"));
                }
                if self.state.has_terminal(t.id) || !ids.insert(t.id) {
                    return Err(LedgerError::exists("terminal", t.id));
                }
                if !serials.insert(t.serial.clone()) {
                    return Err(invalid(format!("serial {:?} is named twice", t.serial)));
                }
                let record = TerminalRecord {
                    id: t.id,
                    kind: t.kind,
                    merchant_id: t.merchant_id,
                    door_group: t.door_group,
                    name: t.name,
                    place: t.place,
                    serial: t.serial,
                    responsible: t.responsible,
                    installed: t.installed,
                    status: t.status,
                    enabled: t.status != InventoryStatus::Retired,
                    key_generation: 1,
                    key: key.seal(t.id, 1, &secret),
                    previous_key: None,
                    previous_until_ms: 0,
                    updated_ms: now,
                };
                self.check_record(&record)?;
                let handout = KeyHandout {
                    terminal: t.id,
                    key_generation: 1,
                    issued_by: by.actor.clone(),
                    handed_to: t.handed_to,
                    time_ms: now,
                };
                records.push((record, handout, secret));
            }
        }
        let mut last = None;
        let mut issued = Vec::with_capacity(records.len());
        for (record, handout, secret) in records {
            let txn = Txn::begin(self.journal()).await?;
            let _desk = self.state.desk_lock();
            // Checked above; the desk lock was let go while waiting for a journal slot.
            if self.state.has_terminal(record.id) {
                return Err(LedgerError::exists("terminal", record.id));
            }
            last = Some(self.send_terminal(txn, by, TerminalAction::Registered, record.clone(), Some(handout), now)?);
            issued.push(Issued {
                terminal: record,
                secret,
            });
        }
        if let Some(sent) = last {
            // Commits complete in order: the last durable means all are.
            sent.durable().await?;
        }
        Ok(issued)
    }

    /// Sends a terminal's new record (and the key handout, if any) and puts it in place.
    fn send_terminal(
        &self,
        txn: Txn<'_>,
        by: &By<'_, TerminalRecord>,
        action: TerminalAction,
        record: TerminalRecord,
        handout: Option<KeyHandout>,
        now: i64,
    ) -> Result<crate::txn::Durable<TerminalRecord>, LedgerError> {
        let mut writes = Writes::new();
        writes.push(StateWrite::TerminalRecord(Box::new(record.clone())));
        if let Some(h) = &handout {
            writes.push(StateWrite::Handout(Box::new(h.clone())));
        }
        let body = EntryBody::TerminalSet(Box::new(TerminalEntry {
            actor: by.actor.clone(),
            action,
            terminal: record.clone(),
            handout: handout.clone(),
        }));
        let extras = self.extras(by, &record, now);
        let sent = self.send_with_more(txn, record.clone(), now, body, SmallVec::new(), writes, extras);
        self.state.put_terminal_record(record)?;
        if let Some(h) = handout {
            self.state.handouts().push(h);
        }
        Ok(sent)
    }

    /// Changes a terminal's inventory record (moves it, renames it, sends it for repair,
    /// retires it). Retiring disables it for good.
    pub async fn change_terminal(
        &self,
        by: &By<'_, (TerminalRecord, TerminalRecord)>,
        id: u64,
        p: TerminalPatch,
    ) -> Result<(TerminalRecord, TerminalRecord), LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        let (sent, before, close) = {
            let _desk = self.state.desk_lock();
            let before = self.record_of(id)?;
            let mut after = before.clone();
            if let Some(v) = p.merchant_id {
                after.merchant_id = v;
            }
            if let Some(v) = p.door_group {
                after.door_group = v;
            }
            if let Some(v) = p.name {
                after.name = v;
            }
            if let Some(v) = p.place {
                after.place = v;
            }
            if let Some(v) = p.serial {
                after.serial = v;
            }
            if let Some(v) = p.responsible {
                after.responsible = v;
            }
            if let Some(v) = p.installed {
                after.installed = v;
            }
            if let Some(v) = p.status {
                check_status_change(before.status, v)?;
                after.status = v;
                if v == InventoryStatus::Retired && before.status != InventoryStatus::Retired {
                    // A terminal that may still hold offline sales must upload them
                    // first: once retired it never signs on again.
                    let missing = self.state.terminal(id).map_or(0, |t| t.seen.missing());
                    if missing > 0 && !p.retire_with_missing {
                        return Err(invalid(format!(
                            "terminal {id} has {missing} sequence numbers never received (offline sales it may still \
                             hold): let it sign on and upload them first, or retire it with retire_with_missing"
                        )));
                    }
                    after.enabled = false;
                }
            }
            self.check_record(&after)?;
            let now = self.now_ms();
            after.updated_ms = now;
            let close = before.enabled && !after.enabled;
            let sent = self.send_pair(txn, by, TerminalAction::Changed, before.clone(), after, now)?;
            (sent, before, close)
        };
        let (after, _) = sent.durable().await?;
        if close {
            self.notify_terminal(id);
        }
        Ok((before, after))
    }

    /// Enables or disables a terminal. Disabled, it cannot sign on, and its sessions are
    /// closed at once; a retired terminal cannot be enabled.
    pub async fn set_terminal_enabled(
        &self,
        by: &By<'_, (TerminalRecord, TerminalRecord)>,
        id: u64,
        enabled: bool,
    ) -> Result<(TerminalRecord, TerminalRecord), LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        let (sent, before) = {
            let _desk = self.state.desk_lock();
            let before = self.record_of(id)?;
            if before.enabled == enabled {
                return Err(invalid(format!(
                    "terminal {id} is already {}",
                    if enabled { "enabled" } else { "disabled" }
                )));
            }
            if enabled && before.status == InventoryStatus::Retired {
                return Err(invalid(format!("terminal {id} is retired")));
            }
            if enabled
                && let Some(m) = self.state.merchant(before.merchant_id)
                && !m.enabled
            {
                return Err(invalid(format!("merchant {} is disabled; enable it first", m.id)));
            }
            let now = self.now_ms();
            let mut after = before.clone();
            after.enabled = enabled;
            after.updated_ms = now;
            let action = if enabled {
                TerminalAction::Enabled
            } else {
                TerminalAction::Disabled
            };
            (self.send_pair(txn, by, action, before.clone(), after, now)?, before)
        };
        let (after, _) = sent.durable().await?;
        if !enabled {
            self.notify_terminal(id);
        }
        Ok((before, after))
    }

    /// Gives a terminal a new secret, returned once; the old one still signs on for
    /// `overlap_ms`, then is refused.
    pub async fn rekey_terminal(
        &self,
        by: &By<'_, (TerminalRecord, TerminalRecord)>,
        id: u64,
        overlap_ms: i64,
        handed_to: &str,
    ) -> Result<(TerminalRecord, Issued), LedgerError> {
        check_text("handed_to", handed_to, NAME_BYTES_MAX, true)?;
        if !(0..=REKEY_OVERLAP_MAX_MS).contains(&overlap_ms) {
            return Err(invalid(format!(
                "the overlap must be 0..={} hours",
                REKEY_OVERLAP_MAX_MS / 3_600_000
            )));
        }
        let key = self.terminal_key()?.clone();
        let secret = new_secret();
        let txn = Txn::begin(self.journal()).await?;
        let (sent, before) = {
            let _desk = self.state.desk_lock();
            let before = self.record_of(id)?;
            if before.status == InventoryStatus::Retired {
                return Err(invalid(format!("terminal {id} is retired")));
            }
            let now = self.now_ms();
            let generation = before.key_generation + 1;
            let mut after = before.clone();
            after.key_generation = generation;
            after.key = key.seal(id, generation, &secret);
            // Resealed under the generation it now answers to, so the binding holds.
            let current = key.open(id, before.key_generation, &before.key)?;
            after.previous_key = (overlap_ms > 0).then(|| key.seal(id, generation - 1, &current));
            after.previous_until_ms = if overlap_ms > 0 { now + overlap_ms } else { 0 };
            after.updated_ms = now;
            let handout = KeyHandout {
                terminal: id,
                key_generation: generation,
                issued_by: by.actor.clone(),
                handed_to: handed_to.to_string(),
                time_ms: now,
            };
            let mut writes = Writes::new();
            writes.push(StateWrite::TerminalRecord(Box::new(after.clone())));
            writes.push(StateWrite::Handout(Box::new(handout.clone())));
            let body = EntryBody::TerminalSet(Box::new(TerminalEntry {
                actor: by.actor.clone(),
                action: TerminalAction::Rekeyed,
                terminal: after.clone(),
                handout: Some(handout.clone()),
            }));
            let pair = (before.clone(), after.clone());
            let extras = self.extras(by, &pair, now);
            let sent = self.send_with_more(txn, after.clone(), now, body, SmallVec::new(), writes, extras);
            self.state.put_terminal_record(after)?;
            self.state.handouts().push(handout);
            (sent, before)
        };
        let (after, _) = sent.durable().await?;
        Ok((
            before,
            Issued {
                terminal: after,
                secret,
            },
        ))
    }

    /// Sends a terminal's change with its before and after as the audited result.
    fn send_pair(
        &self,
        txn: Txn<'_>,
        by: &By<'_, (TerminalRecord, TerminalRecord)>,
        action: TerminalAction,
        before: TerminalRecord,
        after: TerminalRecord,
        now: i64,
    ) -> Result<crate::txn::Durable<TerminalRecord>, LedgerError> {
        let mut writes = Writes::new();
        writes.push(StateWrite::TerminalRecord(Box::new(after.clone())));
        let body = EntryBody::TerminalSet(Box::new(TerminalEntry {
            actor: by.actor.clone(),
            action,
            terminal: after.clone(),
            handout: None,
        }));
        let extras = self.extras(by, &(before, after.clone()), now);
        let sent = self.send_with_more(txn, after.clone(), now, body, SmallVec::new(), writes, extras);
        self.state.put_terminal_record(after)?;
        Ok(sent)
    }

    /// Who received which terminal's key, when and from whom; newest last.
    pub fn key_handouts(&self) -> Vec<KeyHandout> {
        let mut v = self.state.handouts().clone();
        v.sort_by_key(|h| (h.time_ms, h.terminal, h.key_generation));
        v
    }

    /// The secrets a terminal may sign on with now: its key, and during a rekey's
    /// overlap the previous one. `None` for an unknown terminal.
    pub fn sign_on_secrets(&self, terminal_id: u64) -> Option<SignOnSecrets> {
        let t = self.state.terminal(terminal_id).filter(|t| !t.locked)?;
        let now = self.now_ms();
        Some(SignOnSecrets {
            current: cardgate_codec::TerminalSecret(t.info.secret),
            previous: t
                .previous
                .filter(|(_, until)| now < *until)
                .map(|(s, _)| cardgate_codec::TerminalSecret(s)),
            last_seq: t.last_seq(),
            enabled: t.info.enabled,
        })
    }

    /// Whether a terminal may work now (a session re-reads it after missing notices).
    pub fn terminal_enabled(&self, terminal_id: u64) -> bool {
        self.state.terminal(terminal_id).is_some_and(|t| t.info.enabled)
    }

    /// Terminals whose sealed keys this ledger could not open (opened without the
    /// terminal key): a daemon must not serve terminals so.
    pub fn locked_terminals(&self) -> usize {
        let mut n = 0;
        self.state.for_each_terminal(|t| n += usize::from(t.locked));
        n
    }

    /// Tells the sessions of a terminal that it changed (disabled): they close.
    pub(crate) fn notify_terminal(&self, id: u64) {
        // Nobody listening (no session of it) is fine.
        let _ = self.state.terminal_notices().send(id);
    }

    /// Notices of terminals that changed (a disable): each session of the terminal named
    /// closes. A session that lags behind the channel re-reads its terminal instead.
    pub fn terminal_notices(&self) -> tokio::sync::broadcast::Receiver<u64> {
        self.state.terminal_notices().subscribe()
    }
}

/// What sign-on may accept for a terminal.
pub struct SignOnSecrets {
    pub current: cardgate_codec::TerminalSecret,
    /// The previous key, while a rekey's overlap lasts.
    pub previous: Option<cardgate_codec::TerminalSecret>,
    pub last_seq: u64,
    pub enabled: bool,
}
