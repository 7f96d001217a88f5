//! The integrity check, whole: the journal's half (`cardgate_ledger::integrity`: the hash
//! chain, balances against their history, the checkpoint, memory) and the central
//! store's half here: every entry hash the store holds against the journal's, each
//! account's balance and each business day's totals as of the store's cursor against the
//! gateway's, the store's balances against its own transactions, and the day closes.
//!
//! Runs on a running gateway (admin API, daily schedule) or on a stopped data directory
//! (`cardgate check --data`). Every mismatch is reported with what it is about (entry,
//! account, day) and the values expected and found, counted per check in
//! `cardgate_integrity_mismatches{check}`, and never corrected.

use std::collections::BTreeMap;

use cardgate_central::CentralStore;
use cardgate_journal::chain::{Hash, to_hex};
use cardgate_journal::store::meta as journal_meta;
use cardgate_journal::{Db, StoreError};
use cardgate_ledger::integrity::{JournalCheck, Mismatch, check_journal};
use cardgate_ledger::{Ledger, LedgerError};
use serde::Serialize;
use serde_json::{Value, json};

/// What the admin API and the schedules share for backups and checks.
#[derive(Default)]
pub struct Durability {
    /// Where backups go when a call names no directory (`backup.dir`).
    pub backup_dir: Option<std::path::PathBuf>,
    /// The central store the check compares with (its own connections, apart from the
    /// flusher's).
    pub central: Option<std::sync::Arc<CentralStore>>,
    /// The last check's report, for `GET /api/v1/integrity/checks/last`.
    pub last: std::sync::Mutex<Option<Report>>,
    /// One check and one backup at a time: a second caller waits for the first.
    pub checking: tokio::sync::Mutex<()>,
    pub backing_up: tokio::sync::Mutex<()>,
}

impl Durability {
    /// Runs a check on the running gateway, one at a time, and keeps its report.
    pub async fn check(&self, ledger: &Ledger) -> Result<Report, CheckError> {
        let _one = self.checking.lock().await;
        let report = run_live(ledger, self.central.as_deref()).await?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        Ok(report)
    }
}

/// Every check's name: the `check` label's whole set. A central store that could not be
/// read is not among them: it is a check not made (`Report::central_unchecked`), not
/// records that disagree, and must not page as tampering does.
pub const CHECKS: [&str; 9] = [
    "chain",
    "checkpoint",
    "balance",
    "memory",
    "central_hash",
    "central_account",
    "central_day",
    "central_internal",
    "day_close",
];

/// Entry hashes read from the central store per query.
const HASH_PAGE: usize = 50_000;

/// One run's findings.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// No mismatch, and every part checked.
    pub ok: bool,
    /// Why the central half was not checked (the store could not be read), if it was not.
    pub central_unchecked: Option<String>,
    pub started_ms: i64,
    pub took_ms: u64,
    pub gateway_id: u64,
    /// The journal was checked through this entry; the central store as of its cursor.
    pub through_entry_id: u64,
    pub checkpoint_id: u64,
    pub central: Option<Value>,
    pub counts: BTreeMap<&'static str, u64>,
    pub mismatches: Vec<Value>,
    pub chain: Value,
    pub accounts_checked: usize,
    pub movements_checked: u64,
    pub hashes_checked: u64,
    pub days_checked: u64,
    pub sequences: Value,
}

impl Report {
    pub fn mismatches_total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The report as the API answers it and `cardgate check` prints it, with its
    /// `result`, so that whoever reads it (the CLI's exit code) does not judge it again.
    pub fn json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("result".into(), Value::from(self.result()));
            o.insert("summary".into(), Value::from(self.summary()));
        }
        v
    }

    /// One line for the audit trail and the log.
    pub fn summary(&self) -> String {
        if let (Some(why), 0) = (&self.central_unchecked, self.mismatches_total()) {
            return format!(
                "INCOMPLETE: no mismatch in the journal through entry {} ({} accounts, {} movements), \
                 but the central store was not checked: {why}",
                self.through_entry_id, self.accounts_checked, self.movements_checked
            );
        }
        if self.ok {
            format!(
                "clean: chain through entry {}, {} accounts, {} movements, {} central hashes, {} days",
                self.through_entry_id,
                self.accounts_checked,
                self.movements_checked,
                self.hashes_checked,
                self.days_checked
            )
        } else {
            let found: Vec<String> = self
                .counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            let unchecked = match &self.central_unchecked {
                Some(why) => format!("; the central store was not checked: {why}"),
                None => String::new(),
            };
            format!(
                "MISMATCHES through entry {}: {}{unchecked}",
                self.through_entry_id,
                found.join(", ")
            )
        }
    }

    /// Sets `cardgate_integrity_*` from this run.
    pub fn record_metrics(&self) {
        for check in CHECKS {
            metrics::gauge!("cardgate_integrity_mismatches", "check" => check)
                .set(self.counts.get(check).copied().unwrap_or(0) as f64);
        }
        metrics::gauge!("cardgate_integrity_last_run_timestamp_seconds").set(self.started_ms as f64 / 1000.0);
        metrics::gauge!("cardgate_integrity_last_run_ok").set(if self.ok { 1.0 } else { 0.0 });
        metrics::gauge!("cardgate_integrity_central_unchecked").set(if self.central_unchecked.is_some() {
            1.0
        } else {
            0.0
        });
        metrics::histogram!("cardgate_integrity_run_seconds").record(self.took_ms as f64 / 1000.0);
        metrics::counter!("cardgate_integrity_runs_total", "result" => self.result()).increment(1);
    }

    /// `cardgate_integrity_runs_total`'s `result`: `mismatch` over `incomplete` over `ok`.
    pub fn result(&self) -> &'static str {
        match (self.mismatches_total(), &self.central_unchecked) {
            (1.., _) => "mismatch",
            (0, Some(_)) => "incomplete",
            (0, None) => "ok",
        }
    }
}

/// The families at zero, so that alerts on them work before the first run.
/// The integrity and backup series an alert reads, at 0 from start-up; what they mean
/// is in `metrics::FAMILIES`.
pub fn register_metrics() {
    for check in CHECKS {
        metrics::gauge!("cardgate_integrity_mismatches", "check" => check).set(0.0);
    }
    for result in ["ok", "mismatch", "incomplete", "error"] {
        metrics::counter!("cardgate_integrity_runs_total", "result" => result).increment(0);
    }
    metrics::gauge!("cardgate_integrity_central_unchecked").set(0.0);
    for result in ["ok", "error"] {
        metrics::counter!("cardgate_backups_total", "result" => result).increment(0);
    }
    metrics::counter!("cardgate_day_closes_total").increment(0);
    // 0 until a backup completes in this process: the stale-backup alert waits for one.
    metrics::gauge!("cardgate_backup_last_success_timestamp_seconds").set(0.0);
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What is checked: a running gateway, or a stopped data directory.
pub enum Source<'a> {
    Live(&'a Ledger),
    Stopped { db: &'a Db, tz_offset_minutes: i32 },
}

impl Source<'_> {
    fn db(&self) -> &Db {
        match self {
            Source::Live(l) => l.db(),
            Source::Stopped { db, .. } => db,
        }
    }

    fn gateway_id(&self) -> Result<u64, StoreError> {
        Ok(self
            .db()
            .get_meta_u64(cardgate_ledger::records::meta::GATEWAY_ID)?
            .unwrap_or(0))
    }
}

fn mismatch_json(m: &Mismatch) -> Value {
    json!({
        "check": m.check,
        "entry_id": m.entry_id,
        "account": m.account,
        "day": m.day,
        "expected": m.expected,
        "found": m.found,
        "detail": m.detail,
    })
}

/// A finding of `check`, about `at` (entry, account, day), expected and found.
fn push(check: &mut JournalCheck, c: &'static str, at: At, values: (String, String), detail: String) {
    check.push(Mismatch {
        check: c,
        entry_id: at.0,
        account: at.1,
        day: at.2,
        expected: values.0,
        found: values.1,
        detail,
    });
}

/// What a finding is about: an entry, an account, a business day.
type At = (Option<u64>, Option<u64>, Option<String>);

/// Runs the whole check. `central`: the store to compare with, if any.
pub async fn run(source: Source<'_>, central: Option<&CentralStore>, now_ms: i64) -> Result<Report, CheckError> {
    let started = std::time::Instant::now();
    let gateway_id = source.gateway_id()?;
    let (cursor, central_error) = match central {
        None => (None, None),
        Some(store) => match store.cursor(gateway_id).await {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(e.to_string())),
        },
    };
    let mut check = match &source {
        Source::Live(l) => l.check_journal(cursor).await?,
        Source::Stopped { db, tz_offset_minutes } => {
            let db = (*db).clone();
            let tz = *tz_offset_minutes;
            tokio::task::spawn_blocking(move || {
                let through = db.get_meta_u64(journal_meta::NEXT_ENTRY_ID)?.unwrap_or(1) - 1;
                check_journal(&db, through, tz, cursor.map(|c| c.min(through)))
            })
            .await
            .map_err(|e| LedgerError::Invalid(format!("integrity check: {e}")))??
        }
    };
    let mut hashes_checked = 0u64;
    let mut days_checked = 0u64;
    let mut central_json = None;
    let mut central_unchecked = central_error.map(|e| format!("the central store could not be read: {e}"));
    if let (Some(store), Some(at)) = (central, check.at_cursor.clone()) {
        let k = at.cursor;
        central_json = Some(json!({ "store": store.describe(), "cursor": k }));
        let tz = check.tz_offset_minutes;
        match compare_central(&source, store, gateway_id, &mut check, &at, tz).await {
            Ok((h, d)) => {
                hashes_checked = h;
                days_checked = d;
            }
            // What it found before the store stopped answering stands.
            Err(e) => central_unchecked = Some(format!("the central store could not be read (at cursor {k}): {e}")),
        }
    }
    // The store holds more of this gateway than its journal (restored from an older
    // backup, or another gateway with its id): the journal reaches only so far, so the
    // comparison above stopped at its last entry, and the rest is a finding of its own.
    if let (Some(store), Some(c)) = (central, cursor.filter(|c| *c > check.through)) {
        let through = check.through;
        central_json = Some(json!({ "store": store.describe(), "cursor": c, "compared_through": through }));
        push(
            &mut check,
            "central_hash",
            (Some(c), None, None),
            (format!("at most {through}"), c.to_string()),
            format!("the central store holds this gateway's entries through {c}, beyond this journal's {through}"),
        );
    }

    let counts: BTreeMap<&'static str, u64> = CHECKS
        .iter()
        .map(|c| (*c, check.counts.get(c).copied().unwrap_or(0)))
        .collect();
    let ok = counts.values().all(|n| *n == 0) && central_unchecked.is_none();
    let chain = &check.chain;
    Ok(Report {
        ok,
        central_unchecked,
        started_ms: now_ms,
        took_ms: started.elapsed().as_millis() as u64,
        gateway_id,
        through_entry_id: check.through,
        checkpoint_id: check.checkpoint_id,
        central: central_json,
        counts,
        mismatches: check.mismatches.iter().map(mismatch_json).collect(),
        chain: json!({
            "chain_start": chain.chain_start,
            "first_entry_id": chain.first_entry_id,
            "last_entry_id": chain.last_entry_id,
            "entries": chain.entries,
            "entries_before_the_chain": chain.unhashed,
            "anchored_at": chain.anchored_at,
            "head_hash": chain.head.map(|h| to_hex(&h.hash)),
            "checkpoint_hash": chain.checkpoint.map(|h| to_hex(&h.hash)),
        }),
        accounts_checked: check.accounts,
        movements_checked: check.movements,
        hashes_checked,
        days_checked,
        sequences: json!({
            "terminals": check.sequences.terminals,
            "terminals_with_gaps": check.sequences.terminals_with_gaps,
            "numbers_missing": check.sequences.numbers_missing,
            "gaps": check.sequences.gaps.iter().map(|g| json!({"terminal": g.terminal, "from": g.from, "to": g.to})).collect::<Vec<_>>(),
        }),
    })
}

/// The central store's half; returns (hashes checked, days checked).
async fn compare_central(
    source: &Source<'_>,
    store: &CentralStore,
    gateway_id: u64,
    check: &mut JournalCheck,
    at: &cardgate_ledger::integrity::AtCursor,
    tz: i32,
) -> Result<(u64, u64), cardgate_central::CentralError> {
    let k = at.cursor;
    let day = cardgate_ledger::days::day_str;

    // Every account: the store's own sums, and its balance at the cursor against ours.
    for a in store.account_sums(gateway_id, k).await? {
        if a.opening_balance_fen + a.transactions_fen != a.balance_fen {
            push(
                check,
                "central_internal",
                (None, Some(a.account), None),
                (
                    (a.opening_balance_fen + a.transactions_fen).to_string(),
                    a.balance_fen.to_string(),
                ),
                format!(
                    "the central store's balance of account {} is not its opening balance plus its transactions",
                    a.account
                ),
            );
        }
        if let Some(ours) = at.balances.get(&a.account)
            && *ours != a.through_fen
        {
            push(
                check,
                "central_account",
                (Some(k), Some(a.account), None),
                (ours.to_string(), a.through_fen.to_string()),
                format!(
                    "account {}: the gateway's balance at entry {k} is not the central store's opening balance plus its transactions through {k}",
                    a.account
                ),
            );
        }
    }

    // Every business day the journal holds whole.
    let theirs: BTreeMap<i32, (u64, i64)> = store
        .day_totals(gateway_id, tz, k)
        .await?
        .into_iter()
        .map(|t| (t.day, (t.transactions, t.amount_fen)))
        .collect();
    let mut days = 0u64;
    let full = |d: i32| at.full_days_from.is_none_or(|f| d >= f);
    let all_days: std::collections::BTreeSet<i32> = theirs
        .keys()
        .chain(at.day_totals.keys())
        .copied()
        .filter(|d| full(*d))
        .collect();
    for d in all_days {
        days += 1;
        let ours = at.day_totals.get(&d).copied().unwrap_or((0, 0));
        let found = theirs.get(&d).copied().unwrap_or((0, 0));
        if ours != found {
            push(
                check,
                "central_day",
                (None, None, Some(day(d))),
                (
                    format!("{} transactions, {} fen", ours.0, ours.1),
                    format!("{} transactions, {} fen", found.0, found.1),
                ),
                format!(
                    "business day {}: the central store's transactions through entry {k} do not add up to the gateway's",
                    day(d)
                ),
            );
        }
    }

    // Every entry hash, for the entries the journal still holds.
    let db = source.db().clone();
    let first = check.chain.first_entry_id.unwrap_or(k + 1);
    let mut after = first.saturating_sub(1);
    let mut hashes = 0u64;
    while after < k {
        let page = store.entry_hashes(gateway_id, after, HASH_PAGE).await?;
        let page_end = page.last().map_or(k, |(id, _)| (*id).min(k));
        let from = after;
        let ours = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || -> Result<Vec<(u64, Option<Hash>)>, StoreError> {
                let n = usize::try_from(page_end - from).unwrap_or(usize::MAX);
                Ok(db
                    .read_entries(from, n, |_| Ok::<(), String>(()))?
                    .into_iter()
                    .map(|e| (e.id, e.hash))
                    .collect())
            })
            .await
            .map_err(|e| cardgate_central::CentralError::Data(format!("journal reader: {e}")))?
            .map_err(|e| cardgate_central::CentralError::Data(format!("journal: {e}")))?
        };
        let theirs: BTreeMap<u64, [u8; 32]> = page.into_iter().filter(|(id, _)| *id <= k).collect();
        for (id, hash) in ours {
            let Some(hash) = hash else { continue };
            hashes += 1;
            match theirs.get(&id) {
                Some(t) if *t == hash => {}
                t => push(
                    check,
                    "central_hash",
                    (Some(id), None, None),
                    (to_hex(&hash), t.map_or("missing".into(), to_hex)),
                    format!("entry {id}'s hash in the central store is not the journal's"),
                ),
            }
        }
        if page_end <= after {
            break;
        }
        after = page_end;
    }

    // The day closes: the store's against the journal's.
    let journal_closes: BTreeMap<String, cardgate_domain::entry::DayClose> =
        check.day_closes.iter().map(|(_, c)| (day(c.day), c.clone())).collect();
    for c in store.day_closes(gateway_id).await? {
        if let Some(ours) = journal_closes.get(&c.day)
            && (ours.hash != c.hash || ours.last_entry_id != c.last_entry_id)
        {
            push(
                check,
                "day_close",
                (Some(c.entry_id), None, Some(c.day.clone())),
                (
                    format!("entry {} {}", ours.last_entry_id, to_hex(&ours.hash)),
                    format!("entry {} {}", c.last_entry_id, to_hex(&c.hash)),
                ),
                "the central store's close of the day is not the journal's".into(),
            );
        }
        let held = db
            .entry_hash(c.last_entry_id)
            .map_err(|e| cardgate_central::CentralError::Data(e.to_string()))?;
        if let Some(h) = held
            && h != c.hash
        {
            push(
                check,
                "day_close",
                (Some(c.last_entry_id), None, Some(c.day.clone())),
                (to_hex(&h), to_hex(&c.hash)),
                format!(
                    "the day's last entry {} no longer has the hash its close recorded",
                    c.last_entry_id
                ),
            );
        }
        // A complete close's totals against the store's transactions of that day.
        if c.complete
            && c.last_entry_id <= k
            && let Some(d) = cardgate_domain::clock::parse_local_date(&c.day, 0).map(|ms| (ms / 86_400_000) as i32)
            && full(d)
        {
            let found = theirs.get(&d).copied().unwrap_or((0, 0));
            if (c.transactions, c.transactions_fen) != found {
                push(
                    check,
                    "day_close",
                    (Some(c.entry_id), None, Some(c.day.clone())),
                    (
                        format!("{} transactions, {} fen", c.transactions, c.transactions_fen),
                        format!("{} transactions, {} fen", found.0, found.1),
                    ),
                    "the day's close and the central store's transactions of the day differ".into(),
                );
            }
        }
    }
    Ok((hashes, days))
}

/// Runs the check on a running gateway and records its metrics and log line (the caller
/// audits it: the API call's record, or the schedule's).
pub async fn run_live(ledger: &Ledger, central: Option<&CentralStore>) -> Result<Report, CheckError> {
    let r = run(Source::Live(ledger), central, ledger.now_ms()).await;
    match &r {
        Ok(report) => {
            report.record_metrics();
            match report.result() {
                "ok" => tracing::info!(summary = %report.summary(), "integrity check"),
                "incomplete" => tracing::warn!(summary = %report.summary(), "integrity check incomplete"),
                _ => tracing::error!(summary = %report.summary(), "integrity check found mismatches"),
            }
        }
        Err(e) => {
            metrics::counter!("cardgate_integrity_runs_total", "result" => "error").increment(1);
            tracing::error!(error = %e, "integrity check could not run");
        }
    }
    r
}
