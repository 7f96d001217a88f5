//! The business-day reports the system admin and the data admin work from: the daily
//! completeness check (every terminal's day complete and correct, proven against the
//! journal and the central store) and the merchants' settlement (商户结算), closed once.
//!
//! The gateway's side comes from its journal (`Ledger::journal_day`); the central
//! store's from its own queries (`CentralStore::terminal_day_totals`). A day is complete
//! when it has ended, the journal still holds it, the central store holds everything the
//! journal does, both agree terminal by terminal to the fen, no sequence number next to
//! the day's is missing, and no terminal that went offline during it is still away (it
//! may hold sales of the day not uploaded yet).

use std::collections::{BTreeMap, BTreeSet};

use cardgate_central::CentralStore;
use cardgate_central::reports::KindTotal;
use cardgate_domain::clock::{business_day, format_local};
use cardgate_domain::entry::SettlementClose;
use cardgate_domain::model::{SettlementDay, TerminalKind};
use cardgate_domain::operator::Actor;
use cardgate_ledger::Ledger;
use cardgate_ledger::completeness::{JournalDay, TerminalDay};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;

/// One terminal's movements of the day as the central store holds them (positive fen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CentralFigures {
    pub online_count: u64,
    pub online_fen: i64,
    pub reversal_count: u64,
    pub reversal_fen: i64,
    pub offline_count: u64,
    pub offline_fen: i64,
    pub declined_count: u64,
}

impl CentralFigures {
    fn add(&mut self, t: &KindTotal) {
        match t.kind.as_str() {
            "purchase" => {
                self.online_count += t.count;
                self.online_fen -= t.sum_fen;
            }
            "reversal" => {
                self.reversal_count += t.count;
                self.reversal_fen += t.sum_fen;
            }
            "offline_purchase" => {
                self.offline_count += t.count;
                self.offline_fen -= t.sum_fen;
            }
            _ => {}
        }
    }

    fn of_journal(d: &TerminalDay) -> CentralFigures {
        CentralFigures {
            online_count: d.online_count,
            online_fen: d.online_fen,
            reversal_count: d.reversal_count,
            reversal_fen: d.reversal_fen,
            offline_count: d.offline_count,
            offline_fen: d.offline_fen,
            declined_count: d.declined_count,
        }
    }
}

/// A terminal's line of the completeness report.
#[derive(Clone, Debug, Serialize)]
pub struct TerminalLine {
    pub terminal: u64,
    pub kind: &'static str,
    pub merchant: u64,
    pub gateway: CentralFigures,
    pub central: Option<CentralFigures>,
    /// Both sides agree (none when the central store could not be asked).
    pub matches: Option<bool>,
    pub exceptions: u64,
    pub sign_ons: u64,
    pub drift_last_ms: Option<i64>,
    pub drift_max_ms: Option<i64>,
    pub online_ms: i64,
    pub offline_ms: i64,
    pub seq_min: Option<u64>,
    pub seq_max: Option<u64>,
    pub missing: Vec<(u64, u64)>,
    pub connected: bool,
    pub offline_since_ms: Option<i64>,
    pub last_seen_ms: i64,
    pub complete: bool,
    pub problems: Vec<String>,
}

/// A merchant's line: its terminals' figures added up.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MerchantLine {
    pub merchant: u64,
    pub name: String,
    pub terminals: u64,
    pub gateway: CentralFigures,
    pub central: Option<CentralFigures>,
    pub complete: bool,
}

/// The daily completeness report.
#[derive(Clone, Debug, Serialize)]
pub struct Completeness {
    pub date: String,
    pub day: i32,
    /// `complete`, `incomplete`, or `open` (the day has not ended).
    pub status: &'static str,
    pub problems: Vec<String>,
    pub journal_covers_day: bool,
    pub journal_through_entry: u64,
    pub central_reachable: bool,
    pub central_through_entry: Option<u64>,
    pub terminals: Vec<TerminalLine>,
    pub merchants: Vec<MerchantLine>,
    pub totals: CentralFigures,
}

fn date_of(day: i32) -> String {
    let (y, m, d) = cardgate_domain::clock::civil_from_days(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The completeness report of business day `day`.
pub async fn completeness(ledger: &std::sync::Arc<Ledger>, central: Option<&CentralStore>, day: i32) -> Completeness {
    let tz = ledger.tz_offset_minutes();
    let l = ledger.clone();
    let journal = tokio::task::spawn_blocking(move || l.journal_day(day)).await;
    let journal: JournalDay = match journal {
        Ok(Ok(j)) => j,
        Ok(Err(e)) => {
            return failed(day, format!("the journal could not be read: {e}"));
        }
        Err(e) => return failed(day, format!("the journal scan failed: {e}")),
    };
    let (start, end) = (journal.start_ms, journal.end_ms);
    let now = ledger.now_ms();
    let gateway_id = ledger.gateway_id();
    let mut problems = Vec::new();
    let mut central_ok = false;
    let mut central_cursor = None;
    let mut central_by_terminal: BTreeMap<u64, CentralFigures> = BTreeMap::new();
    if let Some(c) = central {
        let queried = async {
            let cursor = c.cursor(gateway_id).await?;
            let totals = c.terminal_day_totals(gateway_id, start, end, u64::MAX).await?;
            let declines = c.day_declines(gateway_id, start, end).await?;
            Ok::<_, cardgate_central::CentralError>((cursor, totals, declines))
        }
        .await;
        match queried {
            Ok((cursor, totals, declines)) => {
                central_ok = true;
                central_cursor = Some(cursor);
                for t in &totals {
                    central_by_terminal.entry(t.terminal).or_default().add(t);
                }
                for (terminal, n) in declines {
                    central_by_terminal.entry(terminal).or_default().declined_count = n;
                }
                if cursor < journal.through_entry {
                    problems.push(format!(
                        "the central store holds entries through {cursor}, the journal through {}: it is behind",
                        journal.through_entry
                    ));
                }
            }
            Err(e) => problems.push(format!("the central store could not be asked: {e}")),
        }
    } else {
        problems.push("no central store is configured".into());
    }
    if journal.before_first_entry {
        problems.push(format!(
            "the gateway's journal begins after {}: it has no record of that day",
            date_of(day)
        ));
    } else if !journal.covered {
        problems.push(format!(
            "the journal no longer holds the whole day (central.journal_retention_s): the gateway's side is partial for {}",
            date_of(day)
        ));
    }

    // Every terminal with business that day, and every enabled POS terminal.
    let mut ids: BTreeSet<u64> = journal.terminals.keys().copied().collect();
    ids.extend(central_by_terminal.keys().copied());
    let inventory = ledger.terminal_inventory();
    for t in &inventory {
        if t.kind == TerminalKind::Pos.as_str() && t.enabled {
            ids.insert(t.id);
        }
    }
    let elapsed = now.min(end) - start;
    let mut terminals = Vec::with_capacity(ids.len());
    for id in ids {
        let view = inventory.iter().find(|t| t.id == id);
        let live = ledger.terminal_live(id);
        let d = journal.terminals.get(&id).cloned().unwrap_or(TerminalDay {
            terminal: id,
            merchant: view.map_or(0, |v| v.merchant_id),
            ..TerminalDay::default()
        });
        let gateway = CentralFigures::of_journal(&d);
        let central = central_ok.then(|| central_by_terminal.get(&id).copied().unwrap_or_default());
        let matches = central.map(|c| c == gateway);
        let mut p = Vec::new();
        for (lo, hi) in &d.missing {
            p.push(if lo == hi {
                format!("sequence number {lo} missing")
            } else {
                format!("sequence numbers {lo}..={hi} missing")
            });
        }
        if matches == Some(false) {
            p.push("the central store's figures differ from the journal's".into());
        }
        let connected = view.is_some_and(|v| v.connected);
        let offline_since = live.as_ref().and_then(|l| l.offline_since_ms);
        let active = d.seq_max.is_some() || d.sign_ons > 0 || d.online_ms > 0;
        if !connected
            && active
            && view.is_some_and(|v| v.kind == TerminalKind::Pos.as_str() && v.enabled)
            && offline_since.is_some_and(|t| t < end)
        {
            p.push(format!(
                "offline since {} and not back: it may hold offline sales of the day",
                format_local(offline_since.unwrap_or(0), tz)
            ));
        }
        terminals.push(TerminalLine {
            terminal: id,
            kind: view.map_or("unknown", |v| v.kind),
            merchant: d.merchant,
            gateway,
            central,
            matches,
            exceptions: d.exceptions,
            sign_ons: d.sign_ons,
            drift_last_ms: d.drift_last_ms,
            drift_max_ms: d.drift_max_ms,
            online_ms: d.online_ms,
            offline_ms: (elapsed - d.online_ms).max(0),
            seq_min: d.seq_min,
            seq_max: d.seq_max,
            missing: d.missing.clone(),
            connected,
            offline_since_ms: offline_since,
            last_seen_ms: view.map_or(0, |v| v.last_seen_ms),
            complete: p.is_empty(),
            problems: p,
        });
    }

    let mut merchants: BTreeMap<u64, MerchantLine> = BTreeMap::new();
    let mut totals = CentralFigures::default();
    for t in &terminals {
        let m = merchants.entry(t.merchant).or_insert_with(|| MerchantLine {
            merchant: t.merchant,
            name: ledger.merchant(t.merchant).map(|m| m.name).unwrap_or_default(),
            central: central_ok.then(CentralFigures::default),
            complete: true,
            ..MerchantLine::default()
        });
        m.terminals += 1;
        add(&mut m.gateway, &t.gateway);
        add(&mut totals, &t.gateway);
        if let (Some(mc), Some(tc)) = (m.central.as_mut(), t.central.as_ref()) {
            add(mc, tc);
        }
        m.complete &= t.complete;
    }
    let terminal_problems = terminals.iter().filter(|t| !t.complete).count();
    if terminal_problems > 0 {
        problems.push(format!("{terminal_problems} terminal(s) with a problem (see each)"));
    }
    let status = if now < end {
        "open"
    } else if problems.is_empty() {
        "complete"
    } else {
        "incomplete"
    };
    Completeness {
        date: date_of(day),
        day,
        status,
        problems,
        journal_covers_day: journal.covered && !journal.before_first_entry,
        journal_through_entry: journal.through_entry,
        central_reachable: central_ok,
        central_through_entry: central_cursor,
        terminals,
        merchants: merchants.into_values().collect(),
        totals,
    }
}

fn add(to: &mut CentralFigures, f: &CentralFigures) {
    to.online_count += f.online_count;
    to.online_fen += f.online_fen;
    to.reversal_count += f.reversal_count;
    to.reversal_fen += f.reversal_fen;
    to.offline_count += f.offline_count;
    to.offline_fen += f.offline_fen;
    to.declined_count += f.declined_count;
}

fn failed(day: i32, why: String) -> Completeness {
    Completeness {
        date: date_of(day),
        day,
        status: "incomplete",
        problems: vec![why],
        journal_covers_day: false,
        journal_through_entry: 0,
        central_reachable: false,
        central_through_entry: None,
        terminals: Vec::new(),
        merchants: Vec::new(),
        totals: CentralFigures::default(),
    }
}

/// A report as CSV: one line per terminal, then one per merchant.
pub fn completeness_csv(r: &Completeness, tz: i32) -> String {
    let mut out = String::from(
        "date,level,id,merchant,online_count,online,offline_count,offline,reversal_count,reversals,declined,\
         central_matches,missing,exceptions,sign_ons,drift_max_ms,offline_minutes,last_seen,complete,problems\n",
    );
    let yuan = |fen: i64| cardgate_domain::money::from_fen(fen).to_string();
    for t in &r.terminals {
        let missing: Vec<String> = t.missing.iter().map(|(a, b)| format!("{a}-{b}")).collect();
        out.push_str(&format!(
            "{},terminal,{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\"\n",
            r.date,
            t.terminal,
            t.merchant,
            t.gateway.online_count,
            yuan(t.gateway.online_fen),
            t.gateway.offline_count,
            yuan(t.gateway.offline_fen),
            t.gateway.reversal_count,
            yuan(t.gateway.reversal_fen),
            t.gateway.declined_count,
            t.matches.map_or("unknown".into(), |m| m.to_string()),
            missing.join(" "),
            t.exceptions,
            t.sign_ons,
            t.drift_max_ms.map_or(String::new(), |d| d.to_string()),
            t.offline_ms / 60_000,
            if t.last_seen_ms > 0 {
                format_local(t.last_seen_ms, tz)
            } else {
                String::new()
            },
            t.complete,
            t.problems.join("; ").replace('"', "'"),
        ));
    }
    for m in &r.merchants {
        out.push_str(&format!(
            "{},merchant,{},{},{},{},{},{},{},{},{},{},,,,,,,{},\n",
            r.date,
            m.merchant,
            m.merchant,
            m.gateway.online_count,
            yuan(m.gateway.online_fen),
            m.gateway.offline_count,
            yuan(m.gateway.offline_fen),
            m.gateway.reversal_count,
            yuan(m.gateway.reversal_fen),
            m.gateway.declined_count,
            m.central.map_or("unknown".into(), |c| (c == m.gateway).to_string()),
            m.complete,
        ));
    }
    out
}

// ---- settlement ---------------------------------------------------------------------------

/// Why a settlement could not be computed or closed.
#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    #[error("no central store is configured: settlement reads it")]
    NoCentral,
    #[error("{0}")]
    Central(#[from] cardgate_central::CentralError),
    #[error("the day has not ended: it closes after {0}")]
    NotEnded(String),
    #[error(
        "the central store holds entries through {central}, the journal through {journal}: wait until it caught up, \
         then close"
    )]
    Behind { central: u64, journal: u64 },
}

/// The settlement of `day` from the central store, through entry `through` (the
/// store's cursor when none), with late sales of earlier closed days as adjustments.
pub async fn settlement(
    ledger: &Ledger,
    central: &CentralStore,
    day: i32,
    actor: &Actor,
) -> Result<SettlementClose, SettlementError> {
    let gateway_id = ledger.gateway_id();
    let tz = ledger.tz_offset_minutes();
    let (start, end) = ledger.day_bounds(day);
    let through = central.cursor(gateway_id).await?;
    let totals = central.terminal_day_totals(gateway_id, start, end, through).await?;
    let late = central.late_sales(gateway_id, start, end, start).await?;
    let now = ledger.now_ms();
    let mut by_merchant: BTreeMap<u64, SettlementDay> = BTreeMap::new();
    let blank = |merchant: u64| SettlementDay {
        day,
        merchant,
        count: 0,
        gross_fen: 0,
        reversal_count: 0,
        reversals_fen: 0,
        adjustment_count: 0,
        adjustments_fen: 0,
        net_fen: 0,
        fee_rate_bp: ledger.merchant(merchant).map_or(0, |m| m.fee_rate_bp),
        fee_fen: 0,
        through_entry: through,
        closed_by: actor.clone(),
        closed_ms: now,
    };
    for t in &totals {
        let m = by_merchant.entry(t.merchant).or_insert_with(|| blank(t.merchant));
        match t.kind.as_str() {
            "purchase" | "offline_purchase" => {
                m.count += t.count;
                m.gross_fen -= t.sum_fen;
            }
            "reversal" => {
                m.reversal_count += t.count;
                m.reversals_fen += t.sum_fen;
            }
            _ => {}
        }
    }
    // A sale of an earlier day that arrived after that day was closed.
    for s in &late {
        let sold = business_day(s.sale_time_ms, tz);
        if ledger.settlement(sold).is_some_and(|c| s.entry_id > c.through_entry) {
            let m = by_merchant.entry(s.merchant).or_insert_with(|| blank(s.merchant));
            m.adjustment_count += 1;
            m.adjustments_fen += s.amount_fen;
        }
    }
    for m in by_merchant.values_mut() {
        m.net_fen = m.gross_fen - m.reversals_fen + m.adjustments_fen;
        m.fee_fen = fee(m.net_fen, m.fee_rate_bp);
    }
    Ok(SettlementClose {
        actor: actor.clone(),
        day,
        through_entry: through,
        merchants: by_merchant.into_values().collect(),
    })
}

/// The centre's fee on `net_fen` at `bp` basis points, rounded half away from zero to
/// the fen.
pub fn fee(net_fen: i64, bp: u32) -> i64 {
    let v = Decimal::from(net_fen) * Decimal::from(bp) / Decimal::from(10_000u32);
    v.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
        .to_i64()
        .unwrap_or(0)
}

/// How long a close waits for the central store to take what the journal holds.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Checks that `day` may be closed now: it has ended, and the central store holds
/// everything the journal held when the close was asked for (waiting up to `CLOSE_WAIT`
/// for the flusher, which ships within a second when it keeps up).
pub async fn may_close(ledger: &Ledger, central: &CentralStore, day: i32) -> Result<(), SettlementError> {
    let (_, end) = ledger.day_bounds(day);
    if ledger.now_ms() < end {
        return Err(SettlementError::NotEnded(format_local(end, ledger.tz_offset_minutes())));
    }
    let journal = ledger
        .journal()
        .stats
        .durable_entry_id
        .load(std::sync::atomic::Ordering::Acquire);
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    loop {
        let central = central.cursor(ledger.gateway_id()).await?;
        if central >= journal {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SettlementError::Behind { central, journal });
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::fee;

    #[test]
    fn fees_round_half_away_from_zero_to_the_fen() {
        assert_eq!(fee(8_987_50, 150), 134_81); // 134.8125
        assert_eq!(fee(100, 50), 1); // 0.5 fen
        assert_eq!(fee(99, 50), 0); // 0.495
        assert_eq!(fee(-100, 50), -1);
        assert_eq!(fee(0, 150), 0);
    }
}
