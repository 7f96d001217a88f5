//! What a run found: the numbers it prints as a table and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::doors::DoorReport;
use crate::mix::Mix;
use crate::offline::UploadTally;
pub use crate::percentiles::Percentiles;
pub use crate::timeline::TimelineReport;

#[derive(Clone, Debug, Serialize)]
pub struct KindReport {
    /// Answers to requests due inside the measured window.
    pub answers: u64,
    pub throughput_per_s: f64,
    /// From when each request was due (open loop) or sent (closed loop) to its answer.
    pub latency_ms: Percentiles,
}

/// Money the gateway said it moved, over the whole run (ramp-up included).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Money {
    pub purchases_approved: u64,
    pub purchases_approved_fen: i128,
    pub reversals_approved: u64,
    pub reversals_approved_fen: i128,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LostCardReport {
    /// "skipped: ...", "done", or "not requested".
    pub status: String,
    pub requested: u64,
    /// Reports the operator API acknowledged.
    pub reported: u64,
    pub report_errors: u64,
    pub first_report_error: Option<String>,
    /// The slowest acknowledgement.
    pub report_max_ms: f64,
    /// Purchases sent with a card after its loss report was acknowledged...
    pub probes: u64,
    /// ...declined `card_lost`, as they must be...
    pub refused_as_lost: u64,
    /// ...and approved, which must never happen.
    pub approved: u64,
}

/// Terminals that went offline, what they sold, and what became of the uploads.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OfflineReport {
    /// Percent of terminals asked to go offline once, and sales each was to make.
    pub pct: u8,
    pub sales_each: u32,
    /// Terminals that went offline (and tried to come back).
    pub terminals: u64,
    /// Terminals meant to go offline that did not: the run was stopped first.
    pub not_reached: u64,
    /// Terminals that went offline told no limits, or limits that allow no sale: they
    /// could not sell.
    pub terminals_without_limits: u64,
    /// Sales made offline, and their amounts.
    pub made: u64,
    pub made_fen: i128,
    /// Sales not made because the offline limits were reached.
    pub short_of_limits: u64,
    /// The uploads: OFFLINE_RESULT's counts, what the gateway now holds, batches by how
    /// each attempt ended.
    #[serde(flatten)]
    pub upload: UploadTally,
}

impl OfflineReport {
    pub fn merge(&mut self, o: &OfflineReport) {
        self.terminals += o.terminals;
        self.not_reached += o.not_reached;
        self.terminals_without_limits += o.terminals_without_limits;
        self.made += o.made;
        self.made_fen += o.made_fen;
        self.short_of_limits += o.short_of_limits;
        self.upload.merge(&o.upload);
    }
}

/// The sequence numbers one terminal used, and those it skipped on purpose.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TerminalSequence {
    pub terminal: u64,
    /// The first number it used (none if it used none).
    pub first: Option<u64>,
    /// The last number it used (SIGN_ON_OK's `last_tx_seq` if it used none).
    pub last: u64,
    /// Numbers it used, online and offline.
    pub used: u64,
    /// Numbers it skipped, as inclusive ranges: what the completeness report must show
    /// missing for it (`missing`), exactly.
    pub skipped: Vec<(u64, u64)>,
}

/// Sequence numbers per terminal (filled when `--skip-every` or `--offline-pct` is given).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SequenceReport {
    /// One number skipped after every this many used (0: none skipped).
    pub skip_every: u64,
    /// Numbers skipped over the fleet.
    pub skipped: u64,
    /// By terminal id.
    pub terminals: Vec<TerminalSequence>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Conservation {
    pub cards: u64,
    pub before_fen: i128,
    pub purchases_approved_fen: i128,
    pub reversals_approved_fen: i128,
    /// Offline sales in batches the gateway accepted: each posted once, like a purchase.
    pub offline_posted_fen: i128,
    pub expected_after_fen: i128,
    pub after_fen: i128,
    /// "holds", "VIOLATED", or "inconclusive: <why>".
    pub verdict: String,
}

impl Conservation {
    pub fn holds(&self) -> bool {
        self.verdict == "holds"
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// "closed" (each terminal waits for its answer) or "open" (a target arrival rate).
    pub mode: &'static str,
    pub target_rate_per_s: Option<f64>,
    pub terminals: u64,
    pub signed_on: u64,
    pub accounts: u64,
    pub seed: u64,
    pub mix: Mix,
    pub source_addrs_used: usize,
    pub ramp_up_s: f64,
    /// The measured window: from the end of ramp-up to the deadline (or the last answer).
    pub measured_s: f64,
    pub answers: u64,
    pub throughput_per_s: f64,
    pub by_kind: BTreeMap<&'static str, KindReport>,
    /// Answers in the measured window, "kind answer".
    pub answers_by_code: BTreeMap<String, u64>,
    /// Answers to requests due during ramp-up (not in the figures above).
    pub warmup_answers: u64,
    /// Connect + sign-on, per terminal.
    pub sign_on_ms: Percentiles,
    /// Open loop: how late the generator sent requests after they were due. Large values
    /// mean the load generator, not the gateway, was short of CPU.
    pub generator_lag_ms: Option<Percentiles>,
    /// Answers the run did not expect, by why.
    pub failures: BTreeMap<String, u64>,
    /// Sign-on failures, broken connections, timeouts.
    pub connection_errors: BTreeMap<String, u64>,
    /// Frames that answered no request (pushed notices), by type.
    pub unsolicited: BTreeMap<String, u64>,
    /// Requests that got no answer (their connection broke or timed out).
    pub unanswered: u64,
    pub money: Money,
    pub lost_cards: LostCardReport,
    pub offline: OfflineReport,
    pub sequences: SequenceReport,
    pub conservation: Option<Conservation>,
    /// Door controllers beside the POS terminals (`--doors`).
    pub doors: Option<DoorReport>,
    /// Per 100 ms of the measured window (by when requests were due): answers, slow
    /// answers, the slowest; where a tail comes from.
    pub timeline: TimelineReport,
    /// Whether the run met every expectation; the process exits non-zero when not.
    pub ok: bool,
}

impl Report {
    /// Everything that makes the run fail, in words.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.signed_on < self.terminals {
            out.push(format!(
                "{} of {} terminals did not sign on",
                self.terminals - self.signed_on,
                self.terminals
            ));
        }
        for (k, v) in &self.failures {
            out.push(format!("{v} unexpected answers: {k}"));
        }
        for (k, v) in &self.connection_errors {
            out.push(format!("{v} connection errors: {k}"));
        }
        if self.unanswered > 0 {
            out.push(format!("{} requests unanswered", self.unanswered));
        }
        if self.lost_cards.report_errors > 0 {
            out.push(format!(
                "{} loss reports failed: {}",
                self.lost_cards.report_errors,
                self.lost_cards.first_report_error.as_deref().unwrap_or("?")
            ));
        }
        if self.lost_cards.approved > 0 {
            out.push(format!(
                "{} purchases approved with a card already reported lost",
                self.lost_cards.approved
            ));
        }
        let o = &self.offline;
        let u = &o.upload;
        if u.not_uploaded + u.unsure > 0 {
            out.push(format!(
                "{} offline sales not uploaded ({} of them perhaps posted: their batch's outcome is unknown)",
                u.not_uploaded + u.unsure,
                u.unsure
            ));
        }
        if u.batches.bad_mac + u.batches.bad_batch > 0 {
            out.push(format!(
                "offline batches refused: {} bad_mac, {} bad_batch",
                u.batches.bad_mac, u.batches.bad_batch
            ));
        }
        if u.mismatched > 0 {
            out.push(format!(
                "{} accepted offline batches whose result does not cover the batch",
                u.mismatched
            ));
        }
        if o.terminals_without_limits > 0 {
            out.push(format!(
                "{} offline terminals could not sell: told no offline limits (not POS terminals, or offline selling is off)",
                o.terminals_without_limits
            ));
        }
        if let Some(c) = &self.conservation
            && !c.holds()
        {
            out.push(format!("conservation: {}", c.verdict));
        }
        if let Some(d) = &self.doors {
            out.extend(d.problems());
        }
        out
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(
            w,
            "mode             {}{}",
            self.mode,
            self.target_rate_per_s
                .map(|r| format!(" loop at {r:.0} requests/s"))
                .unwrap_or_else(|| " loop".into())
        );
        let _ = writeln!(
            w,
            "terminals        {} ({} signed on, {} source address(es)); accounts {}; seed {}",
            self.terminals, self.signed_on, self.source_addrs_used, self.accounts, self.seed
        );
        let _ = writeln!(
            w,
            "mix              {}% reversals, {}% balance inquiries, rest purchases ({}% of them with lost cards once reported)",
            self.mix.reversal_pct, self.mix.balance_pct, self.mix.lost_probe_pct
        );
        let _ = writeln!(
            w,
            "window           {:.2} s measured after {:.1} s ramp-up ({} answers during ramp-up)",
            self.measured_s, self.ramp_up_s, self.warmup_answers
        );
        let _ = writeln!(
            w,
            "throughput       {:.0} answers/s ({} answers)",
            self.throughput_per_s, self.answers
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "{:<12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency ms", "answers", "per s", "p50", "p90", "p99", "p99.9", "max"
        );
        let row = |w: &mut String, name: &str, n: u64, rate: Option<f64>, p: &Percentiles| {
            let _ = writeln!(
                w,
                "{:<12} {:>10} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name,
                n,
                rate.map(|r| format!("{r:.0}")).unwrap_or_default(),
                p.p50,
                p.p90,
                p.p99,
                p.p999,
                p.max
            );
        };
        for (kind, k) in &self.by_kind {
            row(w, kind, k.answers, Some(k.throughput_per_s), &k.latency_ms);
        }
        row(w, "sign-on", self.sign_on_ms.count, None, &self.sign_on_ms);
        if let Some(lag) = &self.generator_lag_ms {
            row(w, "send lag", lag.count, None, lag);
        }
        let _ = writeln!(w);
        let _ = writeln!(w, "answers by code (measured window)");
        for (k, v) in &self.answers_by_code {
            let _ = writeln!(w, "  {k:<40} {v}");
        }
        let _ = writeln!(
            w,
            "money            {} purchases approved ({} fen), {} reversals approved ({} fen)",
            self.money.purchases_approved,
            self.money.purchases_approved_fen,
            self.money.reversals_approved,
            self.money.reversals_approved_fen
        );
        let l = &self.lost_cards;
        if l.requested == 0 {
            let _ = writeln!(w, "lost cards       not requested (--lost-cards)");
        } else {
            let _ = writeln!(
                w,
                "lost cards       {}: {} of {} reported (slowest {:.1} ms); {} purchases after the report, {} refused card_lost, {} approved",
                l.status, l.reported, l.requested, l.report_max_ms, l.probes, l.refused_as_lost, l.approved
            );
        }
        let o = &self.offline;
        if o.pct == 0 {
            let _ = writeln!(w, "offline          not requested (--offline-pct)");
        } else {
            let u = &o.upload;
            let b = &u.batches;
            let _ = writeln!(
                w,
                "offline          {} terminals went offline ({}% asked, {} not reached); {} sales made ({} fen), {} short of the limits",
                o.terminals, o.pct, o.not_reached, o.made, o.made_fen, o.short_of_limits
            );
            let _ = writeln!(
                w,
                "  uploaded       {} posted, {} duplicates, {} flagged; {} held ({} fen), {} not uploaded, {} unsure",
                u.posted, u.duplicates, u.flagged, u.held, u.held_fen, u.not_uploaded, u.unsure
            );
            let _ = writeln!(
                w,
                "  batches        {} accepted, {} system_error, {} cut off, {} bad_mac, {} bad_batch, {} reconnects failed",
                b.accepted, b.system_error, b.cut_off, b.bad_mac, b.bad_batch, b.reconnect_failed
            );
        }
        let q = &self.sequences;
        if q.skip_every > 0 {
            let _ = writeln!(
                w,
                "skipped numbers  {} (one after every {} used, on {} terminals; the ranges per terminal with --json)",
                q.skipped,
                q.skip_every,
                q.terminals.iter().filter(|t| !t.skipped.is_empty()).count()
            );
        }
        match &self.conservation {
            Some(c) => {
                let _ = writeln!(
                    w,
                    "conservation     {}: {} cards, before {} - purchases {} + reversals {} - offline {} = {} (expected) vs after {}",
                    c.verdict,
                    c.cards,
                    c.before_fen,
                    c.purchases_approved_fen,
                    c.reversals_approved_fen,
                    c.offline_posted_fen,
                    c.expected_after_fen,
                    c.after_fen
                );
            }
            None => {
                let _ = writeln!(w, "conservation     not checked (--check-conservation)");
            }
        }
        if let Some(d) = &self.doors {
            doors_table(w, d, &row);
        }
        if !self.unsolicited.is_empty() {
            let _ = writeln!(w, "unsolicited frames");
            for (k, v) in &self.unsolicited {
                let _ = writeln!(w, "  {k:<40} {v}");
            }
        }
        let _ = writeln!(
            w,
            "connection errors {}",
            if self.connection_errors.is_empty() { "none" } else { "" }
        );
        for (k, v) in &self.connection_errors {
            let _ = writeln!(w, "  {k:<40} {v}");
        }
        let problems = self.problems();
        if problems.is_empty() {
            let _ = writeln!(w, "result           ok");
        } else {
            let _ = writeln!(w, "result           FAILED");
            for p in problems {
                let _ = writeln!(w, "  {p}");
            }
        }
        s
    }
}

/// The door controllers' lines of the table.
fn doors_table(w: &mut String, d: &DoorReport, row: &impl Fn(&mut String, &str, u64, Option<f64>, &Percentiles)) {
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "doors            {} controllers ({} ready), {} loop{}; first controller {} (terminal {})",
        d.controllers,
        d.ready,
        d.mode,
        d.target_rate_per_s
            .map(|r| format!(" at {r:.0} checks/s"))
            .unwrap_or_default(),
        d.first_controller,
        crate::doors::DOOR_TERMINAL_BASE + d.first_controller
    );
    let _ = writeln!(
        w,
        "{:<12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "door ms", "answers", "per s", "p50", "p90", "p99", "p99.9", "max"
    );
    row(w, "access", d.checks, Some(d.throughput_per_s), &d.latency_ms);
    row(w, "sign-on", d.sign_on_ms.count, None, &d.sign_on_ms);
    row(w, "first sync", d.initial_sync_ms.count, None, &d.initial_sync_ms);
    let c = &d.cache_change;
    if c.controllers_acked > 0 {
        row(w, "change ack", c.controllers_acked, None, &c.ack_ms);
    }
    let _ = writeln!(
        w,
        "access answers by reason (measured window; {} during ramp-up)",
        d.warmup_checks
    );
    for (k, v) in &d.by_reason {
        let _ = writeln!(w, "  {k:<40} {v}");
    }
    let _ = writeln!(
        w,
        "door caches      entries {}..{}, versions {}..{}; {} pushes, {} sync runs, {} pages",
        d.entries_min, d.entries_max, d.version_min, d.version_max, d.pushes, d.runs, d.pages
    );
    if c.status != "not requested" {
        let _ = writeln!(
            w,
            "cache change     {} ({}): sent {:.2} s into the window, acknowledged by the API in {:.1} ms; \
             {} controllers synced and acked a newer version, the last {:.1} ms after it was sent; \
             {} heard of it but did not hold it at the end",
            c.trigger, c.status, c.at_s, c.api_ms, c.controllers_acked, c.ack_ms.max, c.controllers_behind
        );
    }
    let o = &d.offline;
    if o.pct > 0 {
        let _ = writeln!(
            w,
            "doors offline    {} controllers went offline ({}% asked, {} not reached); {} events decided from the cache",
            o.controllers, o.pct, o.not_reached, o.events
        );
        for (k, v) in &o.by_reason {
            let _ = writeln!(w, "  offline {k:<32} {v}");
        }
        let _ = writeln!(
            w,
            "  uploaded       {} stored, {} duplicates, {} flagged, {} not uploaded; sent again: {} events, {} duplicates, {} stored twice",
            o.stored, o.duplicates, o.flagged, o.not_uploaded, o.resent, o.resent_duplicates, o.resent_stored
        );
        let _ = writeln!(
            w,
            "  batches        {} accepted, {} system_error, {} cut off, {} bad_mac, {} bad_batch, {} mismatched",
            o.accepted, o.system_error, o.cut_off, o.bad_mac, o.bad_batch, o.mismatched
        );
    }
    for (k, v) in &d.unsolicited {
        let _ = writeln!(w, "  door unsolicited {k:<23} {v}");
    }
    for (k, v) in &d.connection_errors {
        let _ = writeln!(w, "  door connection error {k:<18} {v}");
    }
}
