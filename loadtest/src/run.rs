//! The load generator: a fleet of demo terminals driving one gateway.
//!
//! Each terminal is one task with one connection. Terminals connect spread over the
//! ramp-up (at most `connect_concurrency` signing on at once); the measured window starts
//! when the last has signed on. In a closed loop each terminal sends its next request as
//! soon as the previous is answered, which finds the gateway's maximum throughput and
//! makes latency equal to terminals / throughput. In an open loop requests are due at
//! Poisson arrival times, `rate` per second across the fleet, whatever the gateway does;
//! a terminal keeps up to the gateway's `pipeline_depth_max` unanswered, and latency
//! counts from when a request was due, so a stall shows in full (no coordinated
//! omission).
//!
//! With `offline_pct`, some terminals lose the gateway once, at a point between a
//! quarter and three quarters of the run (at its end at the latest): each waits for its
//! answers, hangs up, sells `offline_sales` within its OFFLINE_LIMITS, signs on again
//! and uploads them (`offline`) before it goes on selling online. With `skip_every`,
//! every terminal leaves a sequence number unused after every so many, and the report
//! names them, so that the gateway's completeness report can be checked against it.
//!
//! Latencies go to a few shared, sharded histograms (one per terminal would cost
//! gigabytes at 10,000 terminals); everything else is tallied per terminal and merged at
//! the end.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cardgate_codec::{BalanceInquiry, CardNo, Heartbeat, Message, OfflineResult, OfflineSale, Purchase, Reversal};
use cardgate_ledger::demo::demo_card;
use cardgate_ledger::records::SEQ_SLOTS;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::{Notify, Semaphore, watch};

use crate::client::{ClientError, TerminalClient, now_ms};
use crate::conservation::{BalanceSum, ScanError, ScanPlan, sum_balances};
use crate::desk::CardDesk;
use crate::door_fleet::{DoorTally, controller, door_report, revoke_step};
use crate::doors::{CacheChangeReport, DoorReport};
use crate::fleet::{
    DoorConfig, DoorShared, HISTOGRAM_SHARDS, Live, LostCards, PHASE_CONNECT, PHASE_DRAIN, PHASE_RUN, PHASE_SCAN_AFTER,
    PHASE_SCAN_BEFORE, Shard, Shared, TIMER_TICK, Timing, connect, exp_gap, histogram, micros, sleep_until,
};
pub use crate::fleet::{RunConfig, failure_name};
use crate::mix::{AnswerCode, Kind, Sent, classify};
use crate::offline::{
    OfflineBudget, RetryPolicy, SeqCounter, Uplink, UploadTally, goes_offline, next_sale, reconnect, upload_all,
};
use crate::report::{
    Conservation, KindReport, LostCardReport, Money, OfflineReport, Percentiles, Report, SequenceReport,
    TerminalSequence,
};
use crate::source::SourceAddrs;
use crate::timeline::Timeline;

/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Approved purchases a terminal remembers as candidates for reversal. The gateway
/// remembers `SEQ_SLOTS` sequence numbers, so older ones could not be reversed anyway.
const REVERSIBLE_MAX: usize = SEQ_SLOTS;

/// An offline terminal loses the gateway when the run is this far along (by requests
/// sent or time passed)...
const OFFLINE_AT_MIN: f64 = 0.25;
/// ...plus a random part of this, so that the fleet does not go offline in one moment.
const OFFLINE_AT_SPAN: f64 = 0.5;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("reading the balances before the run: {0}")]
    ScanBefore(ScanError),
    #[error("reading the balances after the run: {0}")]
    ScanAfter(ScanError),
    #[error("{0}")]
    Config(String),
}

/// What one terminal saw.
#[derive(Default)]
struct Tally {
    measured: HashMap<(Kind, AnswerCode), u64>,
    measured_by_kind: [u64; Kind::COUNT],
    warmup_answers: u64,
    failures: BTreeMap<String, u64>,
    connection_errors: BTreeMap<String, u64>,
    unsolicited: BTreeMap<String, u64>,
    unanswered: u64,
    money: Money,
    lost_probes: u64,
    lost_refused: u64,
    lost_approved: u64,
    signed_on: bool,
    offline: OfflineReport,
    sequences: Vec<TerminalSequence>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        for (k, v) in o.measured {
            *self.measured.entry(k).or_default() += v;
        }
        for (a, b) in self.measured_by_kind.iter_mut().zip(o.measured_by_kind) {
            *a += b;
        }
        self.warmup_answers += o.warmup_answers;
        for (map, other) in [
            (&mut self.failures, o.failures),
            (&mut self.connection_errors, o.connection_errors),
            (&mut self.unsolicited, o.unsolicited),
        ] {
            for (k, v) in other {
                *map.entry(k).or_default() += v;
            }
        }
        self.unanswered += o.unanswered;
        self.money.purchases_approved += o.money.purchases_approved;
        self.money.purchases_approved_fen += o.money.purchases_approved_fen;
        self.money.reversals_approved += o.money.reversals_approved;
        self.money.reversals_approved_fen += o.money.reversals_approved_fen;
        self.lost_probes += o.lost_probes;
        self.lost_refused += o.lost_refused;
        self.lost_approved += o.lost_approved;
        self.offline.merge(&o.offline);
        self.sequences.extend(o.sequences);
    }
}

async fn terminal(shared: Arc<Shared>, index: u64, t0: Instant, mut timing: watch::Receiver<Timing>) -> Tally {
    let mut tally = Tally::default();
    let cfg = &shared.cfg;
    let terminal_id = cfg.first_terminal + index;
    let start_at = t0 + cfg.ramp_up.mul_f64(index as f64 / cfg.terminals as f64);
    sleep_until(Some(start_at)).await;
    let connected = {
        let _slot = shared.connect_slots.acquire().await;
        let started = Instant::now();
        let r = connect(&shared, index, terminal_id).await;
        if r.is_ok() {
            let us = micros(started.elapsed());
            let _ = shared.sign_on_us.lock().unwrap_or_else(|p| p.into_inner()).record(us);
        }
        r
    };
    shared.live.sign_on_done.fetch_add(1, Ordering::Relaxed);
    shared.sign_on_notify.notify_one();
    let mut client = match connected {
        Ok(c) => c,
        Err(e) => {
            *tally
                .connection_errors
                .entry(format!("sign_on:{}", failure_name(&e)))
                .or_default() += 1;
            shared.live.problems.fetch_add(1, Ordering::Relaxed);
            return tally;
        }
    };
    tally.signed_on = true;
    shared.live.signed_on.fetch_add(1, Ordering::Relaxed);
    if cfg.ramp_up.is_zero() {
        // Everyone starts together once the fleet is up.
        if timing.wait_for(|t| t.steady_start.is_some() || t.stop).await.is_err() {
            return tally;
        }
    }
    let mut t = Terminal {
        shared: &shared,
        index,
        rng: StdRng::seed_from_u64(cfg.seed ^ terminal_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        seqs: SeqCounter::new(client.sign_on.last_tx_seq, cfg.skip_every),
        reversible: VecDeque::with_capacity(REVERSIBLE_MAX),
    };
    drive(&mut t, &mut client, &mut timing, &mut tally).await;
    if cfg.skip_every > 0 || cfg.offline_pct > 0 {
        tally.sequences.push(TerminalSequence {
            terminal: terminal_id,
            first: t.seqs.first(),
            last: t.seqs.last(),
            used: t.seqs.used(),
            skipped: t.seqs.skipped(),
        });
    }
    tally
}

/// The request a terminal sends next.
struct Next {
    message: Message,
    sent: Sent,
}

struct Terminal<'a> {
    shared: &'a Shared,
    index: u64,
    rng: StdRng,
    /// Sequence numbers, online and offline.
    seqs: SeqCounter,
    /// Approved purchases of this terminal, oldest first: (seq, card, amount).
    reversible: VecDeque<(u64, CardNo, i64)>,
}

impl Terminal<'_> {
    fn random_card(&mut self) -> CardNo {
        demo_card(self.rng.random_range(1..=self.shared.cfg.accounts))
    }

    fn build(&mut self, kind: Kind, due: Instant, measured: bool, now: Instant) -> Next {
        let cfg = &self.shared.cfg;
        let sent = |kind, seq, original_seq, card, amount_fen, lost| Sent {
            kind,
            request_id: 0,
            seq,
            original_seq,
            card,
            amount_fen,
            scheduled: due,
            sent: now,
            measured,
            card_lost_acked: lost,
        };
        match kind {
            Kind::Reversal => {
                let next_seq = self.seqs.peek();
                // Only purchases the gateway still remembers can be reversed.
                while let Some(&(s, _, _)) = self.reversible.front() {
                    if next_seq - s >= SEQ_SLOTS as u64 {
                        self.reversible.pop_front();
                    } else {
                        break;
                    }
                }
                if self.reversible.is_empty() {
                    return self.build(Kind::Purchase, due, measured, now);
                }
                let pick = self.rng.random_range(0..self.reversible.len());
                let Some((original, card, amount)) = self.reversible.remove(pick) else {
                    return self.build(Kind::Purchase, due, measured, now);
                };
                let next_seq = self.seqs.take();
                Next {
                    message: Message::Reversal(Reversal {
                        tx_seq: next_seq,
                        original_tx_seq: original,
                        card,
                        amount_fen: amount,
                        terminal_time_ms: now_ms(),
                    }),
                    sent: sent(Kind::Reversal, next_seq, original, card, amount, false),
                }
            }
            Kind::Purchase => {
                let probe = cfg.mix.lost_probe_pct > 0 && self.rng.random_range(0..100u8) < cfg.mix.lost_probe_pct;
                let card = match probe.then(|| self.shared.lost.pick(&mut self.rng)).flatten() {
                    Some(c) => c,
                    None => self.random_card(),
                };
                let lost = self.shared.lost.acked_before(card, now);
                let amount = self.rng.random_range(cfg.amount_min_fen..=cfg.amount_max_fen);
                let seq = self.seqs.take();
                Next {
                    message: Message::Purchase(Purchase {
                        tx_seq: seq,
                        card,
                        amount_fen: amount,
                        terminal_time_ms: now_ms(),
                    }),
                    sent: sent(Kind::Purchase, seq, 0, card, amount, lost),
                }
            }
            Kind::Balance => {
                let card = self.random_card();
                Next {
                    message: Message::BalanceInquiry(BalanceInquiry { card }),
                    sent: sent(Kind::Balance, 0, 0, card, 0, false),
                }
            }
            Kind::Heartbeat => Next {
                message: Message::Heartbeat(Heartbeat {
                    terminal_time_ms: now_ms(),
                    blacklist_version: 0,
                }),
                sent: sent(Kind::Heartbeat, 0, 0, CardNo(0), 0, false),
            },
        }
    }

    fn answered(&mut self, sent: &Sent, answer: &Message, now: Instant, tally: &mut Tally) {
        let v = classify(sent, answer);
        let shared = self.shared;
        shared.live.answers.fetch_add(1, Ordering::Relaxed);
        if sent.measured {
            *tally.measured.entry((sent.kind, v.code)).or_default() += 1;
            tally.measured_by_kind[sent.kind.index()] += 1;
            let mut shard = shared.shard(self.index);
            // From when it was due; from when it was sent if that was a little earlier.
            let due = sent.scheduled.min(sent.sent);
            let us = micros(now - due);
            let _ = shard.latency_us[sent.kind.index()].record(us);
            drop(shard);
            shared.timeline.record(due, us);
        } else {
            tally.warmup_answers += 1;
        }
        if v.debited_fen > 0 {
            tally.money.purchases_approved += 1;
            tally.money.purchases_approved_fen += i128::from(v.debited_fen);
        }
        if v.refunded_fen > 0 {
            tally.money.reversals_approved += 1;
            tally.money.reversals_approved_fen += i128::from(v.refunded_fen);
        }
        if sent.card_lost_acked {
            tally.lost_probes += 1;
            match v.code {
                AnswerCode::Approved => tally.lost_approved += 1,
                AnswerCode::Declined(cardgate_codec::DeclineReason::CardLost) => tally.lost_refused += 1,
                _ => {}
            }
        }
        match v.problem {
            Some(p) => {
                *tally
                    .failures
                    .entry(format!("{} {p} ({})", sent.kind.as_str(), v.code.name()))
                    .or_default() += 1;
                shared.live.problems.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                if sent.kind == Kind::Purchase && v.code == AnswerCode::Approved {
                    if self.reversible.len() >= REVERSIBLE_MAX {
                        self.reversible.pop_front();
                    }
                    self.reversible.push_back((sent.seq, sent.card, sent.amount_fen));
                }
            }
        }
    }
}

/// One terminal's loss of the gateway: when it is due (the run's progress, 0 to 1).
struct OfflinePlan {
    at: f64,
    /// Send nothing more; go offline once the answers owed have come.
    due: bool,
}

async fn drive(
    t: &mut Terminal<'_>,
    client: &mut TerminalClient,
    timing: &mut watch::Receiver<Timing>,
    tally: &mut Tally,
) {
    let shared = t.shared;
    let index = t.index;
    let cfg = &shared.cfg;
    let open_loop = cfg.rate.map(|r| Duration::from_secs_f64(cfg.terminals as f64 / r));
    let depth = match open_loop {
        None => 1,
        Some(_) => usize::from(
            client
                .sign_on
                .pipeline_depth_max
                .min(cfg.pipeline_max.unwrap_or(u16::MAX))
                .max(1),
        ),
    };
    let heartbeat_every = Duration::from_secs(u64::from(client.sign_on.heartbeat_interval_s.max(1)));
    let mut offline = goes_offline(index, cfg.offline_pct).then(|| OfflinePlan {
        at: OFFLINE_AT_MIN + OFFLINE_AT_SPAN * t.rng.random::<f64>(),
        due: false,
    });
    let mut outstanding: VecDeque<Sent> = VecDeque::with_capacity(depth);
    let base = Instant::now();
    let mut next_due: Option<Instant> = match open_loop {
        None => Some(base),
        // A random phase, so that the fleet does not send in lockstep.
        Some(mean) => Some(base + exp_gap(&mut t.rng, mean)),
    };
    let mut last_sent = base;
    let mut stopping = false;

    loop {
        let now_timing = *timing.borrow_and_update();
        if now_timing.stop || next_due.is_some_and(|due| now_timing.deadline.is_some_and(|d| due >= d)) {
            next_due = None;
            stopping = true;
        }
        if let Some(plan) = offline.as_mut() {
            // At the end of the run by count or time, now at the latest; not after Ctrl-C.
            if !plan.due && !now_timing.stop && (stopping || shared.progress(&now_timing) >= plan.at) {
                plan.due = true;
            }
            if now_timing.stop {
                tally.offline.not_reached += 1;
                offline = None;
            } else if plan.due && outstanding.is_empty() {
                offline = None;
                if offline_period(t, client, tally).await.is_err() {
                    return;
                }
                let now = Instant::now();
                last_sent = now;
                if !stopping {
                    next_due = Some(match open_loop {
                        None => now,
                        // The due times that passed while offline were sold offline.
                        Some(mean) => now + exp_gap(&mut t.rng, mean),
                    });
                }
                continue;
            }
        }
        if stopping && outstanding.is_empty() {
            return;
        }
        let holding = offline.as_ref().is_some_and(|p| p.due);
        let send_at = next_due.filter(|_| outstanding.len() < depth && !holding);
        // Timers fire on a 1 ms tick, at or after the instant asked for; waking a tick
        // early and sending then keeps the generator's own lateness out of the figures.
        let wake_at = send_at.map(|s| s.checked_sub(TIMER_TICK).unwrap_or(s));
        let timeout_at = outstanding.front().map(|o| o.sent + cfg.answer_timeout);
        let heartbeat_at = (!stopping && !holding && outstanding.is_empty())
            .then_some(last_sent + heartbeat_every)
            .filter(|h| send_at.is_none_or(|s| s > *h));
        let watch_timing = now_timing.deadline.is_none() && !now_timing.stop;

        tokio::select! {
            biased;
            r = client.recv(), if !outstanding.is_empty() => match r {
                Ok(frame) => {
                    let now = Instant::now();
                    let Some(pos) = outstanding.iter().position(|o| o.request_id == frame.request_id) else {
                        *tally
                            .unsolicited
                            .entry(format!("{:#04x}", frame.message.msg_type()))
                            .or_default() += 1;
                        continue;
                    };
                    let Some(sent) = outstanding.remove(pos) else { continue };
                    t.answered(&sent, &frame.message, now, tally);
                    if open_loop.is_none() && !stopping && sent.kind != Kind::Heartbeat {
                        next_due = Some(now);
                    }
                }
                Err(e) => {
                    *tally.connection_errors.entry(failure_name(&e)).or_default() += 1;
                    tally.unanswered += outstanding.len() as u64;
                    shared.live.problems.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            _ = sleep_until(wake_at), if wake_at.is_some() => {
                let Some(due) = send_at else { continue };
                // The window may have opened or closed while this terminal waited.
                let fresh = *timing.borrow();
                if fresh.stop || fresh.deadline.is_some_and(|d| due >= d) {
                    next_due = None;
                    stopping = true;
                    continue;
                }
                if shared.budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
                    next_due = None;
                    stopping = true;
                    continue;
                }
                let now = Instant::now();
                let kind = cfg.mix.pick(t.rng.random_range(0..100u8));
                let measured = fresh.measured(due);
                let mut next = t.build(kind, due, measured, now);
                if measured && open_loop.is_some() {
                    let _ = shared.shard(index).lag_us.record(micros(now.saturating_duration_since(due)));
                }
                match client.send(next.message).await {
                    Ok(id) => next.sent.request_id = id,
                    Err(e) => {
                        *tally.connection_errors.entry(failure_name(&e)).or_default() += 1;
                        tally.unanswered += outstanding.len() as u64 + 1;
                        shared.live.problems.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                outstanding.push_back(next.sent);
                last_sent = now;
                next_due = match open_loop {
                    Some(mean) => Some(due + exp_gap(&mut t.rng, mean)),
                    None => None,
                };
            },
            _ = sleep_until(timeout_at), if timeout_at.is_some() => {
                *tally.connection_errors.entry("timeout".into()).or_default() += 1;
                tally.unanswered += outstanding.len() as u64;
                shared.live.problems.fetch_add(1, Ordering::Relaxed);
                return;
            },
            _ = sleep_until(heartbeat_at), if heartbeat_at.is_some() => {
                let now = Instant::now();
                let measured = timing.borrow().measured(now);
                let mut next = t.build(Kind::Heartbeat, now, measured, now);
                match client.send(next.message).await {
                    Ok(id) => next.sent.request_id = id,
                    Err(e) => {
                        *tally.connection_errors.entry(failure_name(&e)).or_default() += 1;
                        shared.live.problems.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                outstanding.push_back(next.sent);
                last_sent = now;
            },
            r = timing.changed(), if watch_timing => {
                if r.is_err() {
                    stopping = true;
                    next_due = None;
                }
            },
        }
    }
}

/// The gateway as an offline terminal's uploads reach it: its connection, replaced by a
/// new sign-on when one breaks.
struct RunUplink<'a> {
    shared: &'a Shared,
    index: u64,
    client: &'a mut TerminalClient,
}

impl Uplink for RunUplink<'_> {
    async fn upload(&mut self, sales: &[OfflineSale]) -> Result<OfflineResult, ClientError> {
        let limit = self.shared.cfg.answer_timeout;
        tokio::time::timeout(limit, self.client.upload(sales))
            .await
            .map_err(|_| ClientError::Timeout(limit))?
    }

    async fn reconnect(&mut self) -> Result<(), ClientError> {
        let terminal_id = self.shared.cfg.first_terminal + self.index;
        *self.client = connect(self.shared, self.index, terminal_id).await?;
        Ok(())
    }

    fn batch_max(&self) -> u16 {
        self.client.offline_limits.map_or(1, |l| l.batch_max)
    }
}

/// The terminal loses the gateway (it hangs up once its answers have come), sells
/// offline within the limits it was told at sign-on, signs on again and uploads.
/// `Err` when it could not sign on again: the terminal is done.
async fn offline_period(t: &mut Terminal<'_>, client: &mut TerminalClient, tally: &mut Tally) -> Result<(), ()> {
    let shared = t.shared;
    let cfg = &shared.cfg;
    tally.offline.terminals += 1;
    let limits = client.offline_limits;
    client.hang_up(cfg.answer_timeout).await;
    // Not a POS terminal, or told not to sell offline: it only waits for the gateway.
    let budget = limits.map(OfflineBudget::new).filter(OfflineBudget::open);
    if budget.is_none() {
        tally.offline.terminals_without_limits += 1;
    }
    let wanted = cfg.offline_sales as usize;
    let mut sales: Vec<OfflineSale> = Vec::with_capacity(wanted.min(usize::from(limits.map_or(0, |l| l.sales_max))));
    if let Some(mut budget) = budget {
        let lost = &shared.lost;
        let accounts = cfg.accounts;
        // A terminal refuses cards on its blacklist: the run's lost cards, once reported.
        let pick = |rng: &mut StdRng| {
            let card = demo_card(rng.random_range(1..=accounts));
            (!lost.contains(card)).then_some(card)
        };
        while sales.len() < wanted {
            let Some((card, amount)) = next_sale(&budget, &mut t.rng, cfg.amount_min_fen, cfg.amount_max_fen, pick)
            else {
                break;
            };
            budget.record(card, amount);
            let seq = t.seqs.take();
            sales.push(client.offline_sale(seq, card, amount, now_ms()));
            tally.offline.made_fen += i128::from(amount);
        }
    }
    tally.offline.made += sales.len() as u64;
    tally.offline.short_of_limits += (wanted - sales.len()) as u64;

    let policy = RetryPolicy::LOAD_TEST;
    let mut up = RunUplink {
        shared,
        index: t.index,
        client,
    };
    let mut upload = UploadTally::default();
    let r = match reconnect(&mut up, &policy, &mut t.rng, &mut upload.batches).await {
        Ok(()) => upload_all(&mut up, &sales, &policy, &mut t.rng, &mut upload).await,
        Err(e) => {
            upload.not_uploaded += sales.len() as u64;
            Err(e)
        }
    };
    tally.offline.upload.merge(&upload);
    match r {
        Ok(()) => Ok(()),
        Err(e) => {
            *tally
                .connection_errors
                .entry(format!("offline_reconnect:{}", failure_name(&e)))
                .or_default() += 1;
            shared.live.problems.fetch_add(1, Ordering::Relaxed);
            Err(())
        }
    }
}

/// Reports `cfg.lost_cards` cards lost halfway through the measured window.
async fn lost_card_step<D: CardDesk>(
    shared: Arc<Shared>,
    desk: D,
    mut timing: watch::Receiver<Timing>,
) -> LostCardReport {
    let cfg = &shared.cfg;
    let mut report = LostCardReport {
        status: "done".into(),
        requested: cfg.lost_cards,
        ..LostCardReport::default()
    };
    let Ok(t) = timing
        .wait_for(|t| t.steady_start.is_some() || t.stop)
        .await
        .map(|t| *t)
    else {
        report.status = "not run: the run ended first".into();
        return report;
    };
    match (t.steady_start, t.deadline) {
        (Some(s), Some(d)) => {
            tokio::select! {
                _ = sleep_until(Some(s + (d - s) / 2)) => {}
                _ = timing.wait_for(|t| t.stop) => {
                    report.status = "not run: the run ended first".into();
                    return report;
                }
            }
        }
        _ => {
            // By count: halfway through the budget.
            let half = cfg.requests.unwrap_or(0) as i64 / 2;
            while shared.budget.load(Ordering::Relaxed) > half && !timing.borrow().stop {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x1057_CA4D);
    let mut accounts = BTreeSet::new();
    while (accounts.len() as u64) < cfg.lost_cards {
        accounts.insert(rng.random_range(1..=cfg.accounts));
    }
    for account in accounts {
        if timing.borrow().stop {
            break;
        }
        let card = demo_card(account);
        let asked = Instant::now();
        // The doors' caches drop the card too: time their syncs from the first report.
        shared.doors.mark_change(asked);
        match desk.report_lost(card).await {
            Ok(()) => {
                let acked = Instant::now();
                shared.lost.add(card, acked);
                report.reported += 1;
                report.report_max_ms = report.report_max_ms.max((acked - asked).as_secs_f64() * 1000.0);
            }
            Err(e) => {
                report.report_errors += 1;
                report.first_report_error.get_or_insert_with(|| e.to_string());
                shared.live.problems.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    report
}

fn progress_bar(enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {prefix:>16} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Redraws the bar from the live counters until `done` fires.
async fn tick_progress(bar: ProgressBar, shared: Arc<Shared>, timing: watch::Receiver<Timing>, done: Arc<Notify>) {
    let mut tick = tokio::time::interval(PROGRESS_TICK);
    let mut last = (Instant::now(), 0u64);
    let mut rate = 0.0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.notified() => return,
        }
        let live = &shared.live;
        let cfg = &shared.cfg;
        let answers = live.answers.load(Ordering::Relaxed);
        let now = Instant::now();
        let dt = (now - last.0).as_secs_f64();
        if dt > 0.0 {
            rate = (answers - last.1) as f64 / dt;
        }
        last = (now, answers);
        let problems = live.problems.load(Ordering::Relaxed);
        match live.phase.load(Ordering::Relaxed) {
            PHASE_SCAN_BEFORE | PHASE_SCAN_AFTER => {
                bar.set_prefix(if live.phase.load(Ordering::Relaxed) == PHASE_SCAN_BEFORE {
                    "balances before"
                } else {
                    "balances after"
                });
                bar.set_length(cfg.accounts);
                bar.set_position(live.scanned.load(Ordering::Relaxed));
                bar.set_message(format!("{} cards", cfg.accounts));
            }
            PHASE_CONNECT | PHASE_RUN | PHASE_DRAIN => {
                let t = *timing.borrow();
                let signed_on = live.signed_on.load(Ordering::Relaxed);
                match (t.steady_start, t.deadline, cfg.requests) {
                    (Some(s), Some(d), _) => {
                        bar.set_prefix("measuring");
                        bar.set_length((d - s).as_millis() as u64);
                        bar.set_position(now.saturating_duration_since(s).as_millis() as u64);
                    }
                    (Some(_), None, Some(n)) => {
                        bar.set_prefix("measuring");
                        bar.set_length(n);
                        bar.set_position(n.saturating_sub(shared.budget.load(Ordering::Relaxed).max(0) as u64));
                    }
                    _ => {
                        bar.set_prefix("ramping up");
                        bar.set_length(cfg.terminals);
                        bar.set_position(live.sign_on_done.load(Ordering::Relaxed));
                    }
                }
                let doors = shared.doors.cfg.controllers;
                let door_part = if doors > 0 {
                    format!(
                        " · {}/{doors} doors through sign-on and sync",
                        shared.doors.done.load(Ordering::Relaxed)
                    )
                } else {
                    String::new()
                };
                bar.set_message(format!(
                    "{signed_on}/{} signed on{door_part} · {answers} answers · {rate:.0}/s · {problems} problems",
                    cfg.terminals
                ));
            }
            _ => {}
        }
    }
}

/// Runs the whole thing: balances before, the fleet, the lost-card step, balances
/// after, and the report. When `stop` completes (Ctrl-C), terminals stop sending, wait
/// for their answers, and the run reports what it has.
pub async fn run<D, S>(cfg: RunConfig, desk: Option<D>, stop: S) -> Result<Report, RunError>
where
    D: CardDesk,
    S: std::future::Future<Output = ()> + Send + 'static,
{
    run_with_doors(cfg, DoorConfig::none(), desk, stop).await
}

/// `run`, with door controllers checking cards beside the POS terminals (`door_fleet`).
pub async fn run_with_doors<D, S>(
    cfg: RunConfig,
    doors: DoorConfig,
    desk: Option<D>,
    stop: S,
) -> Result<Report, RunError>
where
    D: CardDesk,
    S: std::future::Future<Output = ()> + Send + 'static,
{
    cfg.validate_with(doors.controllers).map_err(RunError::Config)?;
    doors.validate().map_err(RunError::Config)?;
    let target_loopback_v4 = matches!(cfg.target.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let sources = Arc::new(if cfg.source_addrs.is_empty() {
        SourceAddrs::automatic(target_loopback_v4)
    } else {
        SourceAddrs::explicit(cfg.source_addrs.clone())
    });
    let shared = Arc::new(Shared {
        sources: sources.clone(),
        connect_slots: Semaphore::new(cfg.connect_concurrency),
        budget: AtomicI64::new(cfg.requests.map(|r| r.min(i64::MAX as u64) as i64).unwrap_or(i64::MAX)),
        shards: (0..HISTOGRAM_SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
        sign_on_us: Mutex::new(histogram()),
        live: Live::default(),
        sign_on_notify: Notify::new(),
        lost: LostCards::default(),
        doors: DoorShared::new(doors),
        timeline: Timeline::new(),
        cfg,
    });
    let cfg = &shared.cfg;
    let (timing_tx, timing_rx) = watch::channel(Timing::default());
    let bar = progress_bar(cfg.progress);
    let progress_done = Arc::new(Notify::new());
    let ticker = tokio::spawn(tick_progress(
        bar.clone(),
        shared.clone(),
        timing_rx.clone(),
        progress_done.clone(),
    ));
    {
        let timing_tx = timing_tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop => timing_tx.send_modify(|t| t.stop = true),
                _ = timing_tx.closed() => {}
            }
        });
    }

    let plan = ScanPlan {
        target: cfg.target,
        first_terminal: cfg.first_terminal,
        connections: cfg.scan_connections.min(cfg.terminals).max(1),
        accounts: cfg.accounts,
        answer_timeout: cfg.answer_timeout,
    };
    let before = if cfg.check_conservation {
        shared.live.phase.store(PHASE_SCAN_BEFORE, Ordering::Relaxed);
        Some(
            sum_balances(&plan, &sources, shared.live.scanned.clone())
                .await
                .map_err(RunError::ScanBefore)?,
        )
    } else {
        None
    };

    shared.live.phase.store(PHASE_CONNECT, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..cfg.terminals {
        tasks.spawn(terminal(shared.clone(), index, t0, timing_rx.clone()));
    }
    let door_count = shared.doors.cfg.controllers;
    let mut door_tasks = tokio::task::JoinSet::new();
    for n in 0..door_count {
        door_tasks.spawn(controller(shared.clone(), n, t0, timing_rx.clone()));
    }
    // The measured window opens when every terminal has signed on (or failed to), every
    // door controller has synced its cache (or failed to), and not before the ramp-up
    // is over.
    while (shared.live.sign_on_done.load(Ordering::Relaxed) < cfg.terminals
        || shared.doors.done.load(Ordering::Relaxed) < door_count)
        && !timing_rx.borrow().stop
    {
        tokio::select! {
            _ = shared.sign_on_notify.notified() => {}
            _ = tokio::time::sleep(PROGRESS_TICK) => {}
        }
    }
    let steady_start = Instant::now().max(t0 + cfg.ramp_up);
    sleep_until(Some(steady_start)).await;
    timing_tx.send_modify(|t| {
        t.steady_start = Some(steady_start);
        t.deadline = cfg.duration.map(|d| steady_start + d);
    });
    shared.live.phase.store(PHASE_RUN, Ordering::Relaxed);
    let lost_task = match desk {
        Some(desk) if cfg.lost_cards > 0 => Some(tokio::spawn(lost_card_step(shared.clone(), desk, timing_rx.clone()))),
        _ => None,
    };
    let revoke_task = shared
        .doors
        .cfg
        .revoke
        .clone()
        .map(|plan| tokio::spawn(revoke_step(shared.clone(), plan, timing_rx.clone())));

    let mut tally = Tally::default();
    let mut signed_on = 0;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(t) => {
                signed_on += u64::from(t.signed_on);
                tally.merge(t);
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
        if shared.live.phase.load(Ordering::Relaxed) == PHASE_RUN
            && timing_rx.borrow().deadline.is_some_and(|d| Instant::now() >= d)
        {
            shared.live.phase.store(PHASE_DRAIN, Ordering::Relaxed);
        }
    }
    let mut door_tally = DoorTally::default();
    let mut door_part = DoorReport::default();
    while let Some(r) = door_tasks.join_next().await {
        match r {
            Ok(t) => door_tally.merge(t, &mut door_part),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let ended = Instant::now();
    let timing = *timing_rx.borrow();
    let measured_s = match timing.deadline {
        Some(d) if !timing.stop => (d - steady_start).as_secs_f64(),
        _ => ended.saturating_duration_since(steady_start).as_secs_f64(),
    }
    .max(1e-9);
    let timeline = shared
        .timeline
        .report(steady_start, timing.deadline.filter(|_| !timing.stop).unwrap_or(ended));
    timing_tx.send_modify(|t| t.stop = true);

    let lost_cards = match lost_task {
        Some(task) => {
            let mut r = task.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            r.probes = tally.lost_probes;
            r.refused_as_lost = tally.lost_refused;
            r.approved = tally.lost_approved;
            r
        }
        None if cfg.lost_cards > 0 => LostCardReport {
            status: "skipped: no --lost-card-endpoint given (the operator API reports cards lost)".into(),
            requested: cfg.lost_cards,
            ..LostCardReport::default()
        },
        None => LostCardReport {
            status: "not requested".into(),
            ..LostCardReport::default()
        },
    };

    door_part.cache_change = match revoke_task {
        Some(task) => task.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        None if lost_cards.reported > 0 && door_count > 0 => CacheChangeReport {
            status: "done".into(),
            trigger: "card reported lost".into(),
            // The slowest report's answer: with one lost card, that report's.
            api_ms: lost_cards.report_max_ms,
            ..CacheChangeReport::default()
        },
        None => CacheChangeReport {
            status: "not requested".into(),
            ..CacheChangeReport::default()
        },
    };
    let doors = (door_count > 0).then(|| door_report(&shared, door_part, door_tally, measured_s));

    let conservation = match before {
        Some(before) => {
            shared.live.phase.store(PHASE_SCAN_AFTER, Ordering::Relaxed);
            shared.live.scanned.store(0, Ordering::Relaxed);
            let after = sum_balances(&plan, &sources, shared.live.scanned.clone())
                .await
                .map_err(RunError::ScanAfter)?;
            Some(conservation(before, after, &tally))
        }
        None => None,
    };
    progress_done.notify_one();
    let _ = ticker.await;
    bar.finish_and_clear();

    let mut by_kind = BTreeMap::new();
    let mut merged: Vec<Histogram<u64>> = (0..Kind::COUNT).map(|_| histogram()).collect();
    let mut lag = histogram();
    for shard in &shared.shards {
        let s = shard.lock().unwrap_or_else(|p| p.into_inner());
        for (m, h) in merged.iter_mut().zip(&s.latency_us) {
            let _ = m.add(h);
        }
        let _ = lag.add(&s.lag_us);
    }
    for kind in Kind::ALL {
        let answers = tally.measured_by_kind[kind.index()];
        if answers == 0 {
            continue;
        }
        by_kind.insert(
            kind.as_str(),
            KindReport {
                answers,
                throughput_per_s: answers as f64 / measured_s,
                latency_ms: Percentiles::of_us(&merged[kind.index()]),
            },
        );
    }
    let answers: u64 = tally.measured_by_kind.iter().sum();
    let answers_by_code = tally
        .measured
        .iter()
        .map(|((kind, code), n)| (format!("{} {}", kind.as_str(), code.name()), *n))
        .collect();
    let sign_on_ms = Percentiles::of_us(&shared.sign_on_us.lock().unwrap_or_else(|p| p.into_inner()));
    let mut sequences = std::mem::take(&mut tally.sequences);
    sequences.sort_by_key(|t| t.terminal);
    let mut report = Report {
        mode: if cfg.rate.is_some() { "open" } else { "closed" },
        target_rate_per_s: cfg.rate,
        terminals: cfg.terminals,
        signed_on,
        accounts: cfg.accounts,
        seed: cfg.seed,
        mix: cfg.mix,
        source_addrs_used: sources.in_use(),
        ramp_up_s: cfg.ramp_up.as_secs_f64(),
        measured_s,
        answers,
        throughput_per_s: answers as f64 / measured_s,
        by_kind,
        answers_by_code,
        warmup_answers: tally.warmup_answers,
        sign_on_ms,
        generator_lag_ms: cfg.rate.map(|_| Percentiles::of_us(&lag)),
        failures: tally.failures,
        connection_errors: tally.connection_errors,
        unsolicited: tally.unsolicited,
        unanswered: tally.unanswered,
        money: tally.money,
        lost_cards,
        offline: OfflineReport {
            pct: cfg.offline_pct,
            sales_each: cfg.offline_sales,
            ..tally.offline
        },
        sequences: SequenceReport {
            skip_every: cfg.skip_every,
            skipped: sequences.iter().map(|t| t.skipped.len() as u64).sum(),
            terminals: sequences,
        },
        conservation,
        doors,
        timeline,
        ok: false,
    };
    report.ok = report.problems().is_empty();
    Ok(report)
}

fn conservation(before: BalanceSum, after: BalanceSum, tally: &Tally) -> Conservation {
    let offline = &tally.offline.upload;
    let expected =
        before.total_fen - tally.money.purchases_approved_fen + tally.money.reversals_approved_fen - offline.held_fen;
    let system_errors: u64 = tally
        .failures
        .iter()
        .filter(|(k, _)| k.contains("system_error"))
        .map(|(_, v)| v)
        .sum();
    let verdict = if tally.unanswered > 0 {
        format!(
            "inconclusive: {} requests got no answer, so whether they moved money is unknown",
            tally.unanswered
        )
    } else if system_errors > 0 {
        format!("inconclusive: {system_errors} system errors")
    } else if offline.unsure > 0 {
        format!(
            "inconclusive: {} offline sales were given up after an upload whose outcome is unknown",
            offline.unsure
        )
    } else if before.cards != after.cards {
        format!(
            "inconclusive: read {} cards before, {} after",
            before.cards, after.cards
        )
    } else if expected == after.total_fen {
        "holds".into()
    } else {
        format!(
            "VIOLATED by {} fen (or something else moved money on these cards during the run)",
            after.total_fen - expected
        )
    };
    Conservation {
        cards: after.cards,
        before_fen: before.total_fen,
        purchases_approved_fen: tally.money.purchases_approved_fen,
        reversals_approved_fen: tally.money.reversals_approved_fen,
        offline_posted_fen: offline.held_fen,
        expected_after_fen: expected,
        after_fen: after.total_fen,
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::Mix;

    #[test]
    fn the_window_measures_requests_due_inside_it() {
        let s = Instant::now();
        let t = Timing {
            steady_start: Some(s),
            deadline: Some(s + Duration::from_secs(10)),
            stop: false,
        };
        assert!(!t.measured(s - Duration::from_millis(1)));
        assert!(t.measured(s));
        assert!(t.measured(s + Duration::from_secs(9)));
        assert!(!t.measured(s + Duration::from_secs(10)));
        assert!(!Timing::default().measured(s));
    }

    #[test]
    fn poisson_gaps_average_their_mean() {
        let mut rng = StdRng::seed_from_u64(7);
        let mean = Duration::from_millis(10);
        let n = 20_000;
        let total: Duration = (0..n).map(|_| exp_gap(&mut rng, mean)).sum();
        let avg_ms = total.as_secs_f64() * 1000.0 / n as f64;
        assert!((9.5..10.5).contains(&avg_ms), "mean gap {avg_ms} ms");
    }

    #[test]
    fn conservation_needs_every_answer() {
        let before = BalanceSum {
            cards: 10,
            total_fen: 10_000,
        };
        let mut tally = Tally::default();
        tally.money.purchases_approved_fen = 300;
        tally.money.reversals_approved_fen = 100;
        let after = BalanceSum {
            cards: 10,
            total_fen: 9_800,
        };
        assert!(conservation(before, after, &tally).holds());
        let off = BalanceSum {
            cards: 10,
            total_fen: 9_700,
        };
        assert!(
            conservation(before, off, &tally)
                .verdict
                .starts_with("VIOLATED by -100")
        );
        tally.unanswered = 1;
        assert!(conservation(before, after, &tally).verdict.starts_with("inconclusive"));
    }

    #[test]
    fn offline_sales_the_gateway_accepted_move_money_like_purchases() {
        let before = BalanceSum {
            cards: 10,
            total_fen: 10_000,
        };
        let mut tally = Tally::default();
        tally.money.purchases_approved_fen = 300;
        tally.offline.upload.held_fen = 250;
        let after = BalanceSum {
            cards: 10,
            total_fen: 9_450,
        };
        let c = conservation(before, after, &tally);
        assert!(c.holds(), "{c:?}");
        assert_eq!(c.offline_posted_fen, 250);
        // Without them the same balances would not add up.
        tally.offline.upload.held_fen = 0;
        assert!(
            conservation(before, after, &tally)
                .verdict
                .starts_with("VIOLATED by -250")
        );
        // A batch given up after an upload whose outcome is unknown: nobody can say.
        tally.offline.upload.held_fen = 250;
        tally.offline.upload.unsure = 3;
        assert!(conservation(before, after, &tally).verdict.starts_with("inconclusive"));
    }

    #[test]
    fn configs_that_cannot_run_are_refused() {
        let ok = RunConfig {
            target: "127.0.0.1:7700".parse().unwrap(),
            terminals: 10,
            first_terminal: 1,
            accounts: 100,
            duration: Some(Duration::from_secs(1)),
            requests: None,
            ramp_up: Duration::ZERO,
            rate: None,
            pipeline_max: None,
            mix: Mix {
                reversal_pct: 5,
                balance_pct: 10,
                lost_probe_pct: 1,
            },
            amount_min_fen: 100,
            amount_max_fen: 1_500,
            connect_concurrency: 256,
            answer_timeout: Duration::from_secs(10),
            source_addrs: vec![],
            seed: 1,
            lost_cards: 0,
            check_conservation: false,
            scan_connections: 8,
            progress: false,
            offline_pct: 0,
            offline_sales: 0,
            skip_every: 0,
        };
        assert!(ok.validate().is_ok());
        let bad = [
            RunConfig {
                terminals: 0,
                ..ok.clone()
            },
            RunConfig {
                rate: Some(0.0),
                ..ok.clone()
            },
            RunConfig {
                duration: None,
                ..ok.clone()
            },
            RunConfig {
                lost_cards: 101,
                ..ok.clone()
            },
            RunConfig {
                amount_min_fen: 0,
                ..ok.clone()
            },
            RunConfig {
                offline_pct: 101,
                offline_sales: 1,
                ..ok.clone()
            },
            RunConfig {
                offline_pct: 10,
                ..ok.clone()
            },
            RunConfig {
                offline_sales: 10,
                ..ok.clone()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
    }
}
