//! The door controllers of a run (`--doors`): each signs on as demo controller
//! 100,000 + i, syncs its door group's cache in full, then checks random demo cards at
//! its door, alternating in and out, beside the POS terminals and in the same measured
//! window. A push or an answer naming a newer cache version makes it sync the delta
//! while it goes on checking. `--door-revoke-after` has the door admin revoke a
//! permission mid-window and measures how long until the controllers hold the new
//! version. `--door-offline-pct` takes some controllers off the network once: they
//! decide from their cache, sign on again, upload the events, and upload the first
//! batch a second time, which must store nothing twice.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cardgate_codec::{
    AccessCheck, AccessReason, CardNo, DOOR_EVENTS_BATCH_MAX, Direction, DoorCacheAck, DoorEvent, DoorEventsStatus,
    Heartbeat, Message,
};
use cardgate_ledger::demo::demo_card;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::watch;

use crate::client::{DoorSyncError, TerminalClient, now_ms};
use crate::doors::{CacheChangeReport, DoorCache, DoorOfflineReport, DoorReport, Passages, unexpected_reason};
pub use crate::fleet::{DEFAULT_DOOR_PAGE_ENTRIES, DoorConfig, RevokePlan};
use crate::fleet::{
    DOOR_SHARDS, DoorShared, Shared, TIMER_TICK, Timing, connect, exp_gap, failure_name, histogram, sleep_until,
};
use crate::offline::goes_offline;
use crate::percentiles::Percentiles;

/// Attempts at one batch of offline events (a system error or a cut connection is
/// retried) before the controller gives up on it.
const UPLOAD_ATTEMPTS: u32 = 5;

/// An offline controller loses the gateway when the run is this far along...
const OFFLINE_AT_MIN: f64 = 0.25;
/// ...plus a random part of this.
const OFFLINE_AT_SPAN: f64 = 0.5;

/// What one controller saw.
#[derive(Default)]
pub(crate) struct DoorTally {
    ready: u64,
    checks: u64,
    warmup: u64,
    by_reason: BTreeMap<&'static str, u64>,
    failures: BTreeMap<String, u64>,
    connection_errors: BTreeMap<String, u64>,
    unsolicited: BTreeMap<String, u64>,
    unanswered: u64,
    pushes: u64,
    runs: u64,
    pages: u64,
    offline: DoorOfflineReport,
    /// Controllers that heard of a version newer than theirs after the timed change but
    /// did not hold it when the run ended.
    change_behind: u64,
    /// The cache it ended with: (entries, version).
    held: Option<(u64, u64)>,
}

impl DoorTally {
    pub fn merge(&mut self, o: DoorTally, report: &mut DoorReport) {
        self.ready += o.ready;
        self.checks += o.checks;
        self.warmup += o.warmup;
        for (k, v) in o.by_reason {
            *self.by_reason.entry(k).or_default() += v;
        }
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
        self.pushes += o.pushes;
        self.runs += o.runs;
        self.pages += o.pages;
        self.offline.merge(&o.offline);
        self.change_behind += o.change_behind;
        if let Some((entries, version)) = o.held {
            let first = self.held.is_none();
            report.entries_min = if first {
                entries
            } else {
                report.entries_min.min(entries)
            };
            report.entries_max = report.entries_max.max(entries);
            report.version_min = if first {
                version
            } else {
                report.version_min.min(version)
            };
            report.version_max = report.version_max.max(version);
            self.held = Some((entries, version));
        }
    }

    fn failure(&mut self, shared: &Shared, what: String) {
        *self.failures.entry(what).or_default() += 1;
        shared.live.problems.fetch_add(1, Ordering::Relaxed);
    }

    fn connection_error(&mut self, shared: &Shared, what: String) {
        *self.connection_errors.entry(what).or_default() += 1;
        shared.live.problems.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a check asked, for judging its answer.
struct Asked {
    card: CardNo,
    direction: Direction,
    scheduled: Instant,
    sent: Instant,
    measured: bool,
}

/// A request of a controller waiting for its answer.
enum Pending {
    Check {
        request_id: u32,
        scheduled: Instant,
        sent: Instant,
        measured: bool,
        card: CardNo,
        direction: Direction,
    },
    Sync {
        request_id: u32,
        run: Vec<Message>,
        /// When the sync was sent or its last frame came: a run that stops coming for
        /// the answer timeout is a timeout like an unanswered check.
        progress: Instant,
    },
    Heartbeat {
        request_id: u32,
        sent: Instant,
    },
}

impl Pending {
    fn request_id(&self) -> u32 {
        match self {
            Pending::Check { request_id, .. }
            | Pending::Sync { request_id, .. }
            | Pending::Heartbeat { request_id, .. } => *request_id,
        }
    }

    fn sent(&self) -> Option<Instant> {
        match self {
            Pending::Check { sent, .. } | Pending::Heartbeat { sent, .. } => Some(*sent),
            // A long run keeps arriving: it is late only when it stops.
            Pending::Sync { progress, .. } => Some(*progress),
        }
    }
}

/// Brings the cache up to date after sign-on (`TerminalClient::door_sync`).
async fn sync_blocking(
    client: &mut TerminalClient,
    cache: &mut DoorCache,
    tally: &mut DoorTally,
) -> Result<(), String> {
    let (runs, pages) = client.door_sync(cache).await.map_err(|e| match e {
        DoorSyncError::Client(e) => format!("sync:{}", failure_name(&e)),
        other => other.to_string(),
    })?;
    tally.runs += runs;
    tally.pages += pages;
    Ok(())
}

/// One door controller, from sign-on to the end of the run.
pub(crate) async fn controller(
    shared: Arc<Shared>,
    n: u64,
    t0: Instant,
    mut timing: watch::Receiver<Timing>,
) -> DoorTally {
    let doors = &shared.doors;
    let cfg = &doors.cfg;
    let mut tally = DoorTally::default();
    let terminal_id = cfg.terminal_id(n);
    let door = u32::try_from(cfg.first_controller + n).unwrap_or(u32::MAX);
    let start_at = t0 + shared.cfg.ramp_up.mul_f64(n as f64 / cfg.controllers as f64);
    sleep_until(Some(start_at)).await;
    let offline = goes_offline(n, cfg.offline_pct);
    let mut cache = if cfg.keep_cache || offline {
        DoorCache::keeping()
    } else {
        DoorCache::counting()
    }
    .with_page_entries(cfg.page_entries);
    let connected = {
        let _slot = shared.connect_slots.acquire().await;
        let started = Instant::now();
        match connect(&shared, shared.cfg.terminals + n, terminal_id).await {
            Ok(mut client) => {
                DoorShared::record(&doors.sign_on_us, started.elapsed());
                let synced = Instant::now();
                match sync_blocking(&mut client, &mut cache, &mut tally).await {
                    Ok(()) => {
                        DoorShared::record(&doors.sync_us, synced.elapsed());
                        Ok(client)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(format!("sign_on:{}", failure_name(&e))),
        }
    };
    doors.done.fetch_add(1, Ordering::Relaxed);
    shared.sign_on_notify.notify_one();
    let mut client = match connected {
        Ok(c) => c,
        Err(e) => {
            tally.connection_error(&shared, e);
            return tally;
        }
    };
    tally.ready = 1;
    if shared.cfg.ramp_up.is_zero() && timing.wait_for(|t| t.steady_start.is_some() || t.stop).await.is_err() {
        return tally;
    }
    let rng = StdRng::seed_from_u64(shared.cfg.seed ^ terminal_id.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut rng = rng;
    let offline_at = offline.then(|| OFFLINE_AT_MIN + OFFLINE_AT_SPAN * rng.random::<f64>());
    let mut c = Controller {
        shared: &shared,
        n,
        terminal_id,
        door,
        rng,
        cache,
        next_in: true,
        sync_trigger: None,
        heard: (0, Instant::now()),
        resync: false,
        change_recorded: false,
        event_seq: client.sign_on.last_tx_seq,
        offline_at,
        passages: Passages::default(),
    };
    c.drive(&mut client, &mut timing, &mut tally).await;
    tally.held = Some((c.cache.count, c.cache.version));
    if let Some(mark) = doors.change_mark.get()
        && c.heard.1 >= *mark
        && c.heard.0 > c.cache.version
    {
        tally.change_behind += 1;
    }
    tally
}

struct Controller<'a> {
    shared: &'a Shared,
    n: u64,
    terminal_id: u64,
    door: u32,
    rng: StdRng,
    cache: DoorCache,
    /// The direction of the next check: a card goes in, the next one out, and so on.
    next_in: bool,
    /// When the controller first learned of a version newer than it holds.
    sync_trigger: Option<Instant>,
    /// The newest version it heard of, and when it first heard of it.
    heard: (u64, Instant),
    /// Sync after signing on again, whether or not a newer version was announced.
    resync: bool,
    change_recorded: bool,
    /// The last event number used, online and offline (one sequence).
    event_seq: u64,
    /// When (the run's progress, 0 to 1) this controller loses the gateway, if it does.
    offline_at: Option<f64>,
    /// Passages it let through, for anti-passback offline (kept by offline controllers).
    passages: Passages,
}

impl Controller<'_> {
    /// A random demo card, and the direction after the last one's.
    fn next_card(&mut self) -> (CardNo, Direction) {
        let card = demo_card(self.rng.random_range(1..=self.shared.cfg.accounts));
        let direction = if self.next_in { Direction::In } else { Direction::Out };
        self.next_in = !self.next_in;
        (card, direction)
    }

    fn check(&mut self, due: Instant, measured: bool, now: Instant) -> (Message, Pending) {
        let (card, direction) = self.next_card();
        let message = Message::AccessCheck(AccessCheck {
            // Filled in by the caller, which owns the sequence.
            event_seq: 0,
            card,
            door: self.door,
            direction,
            controller_time_ms: now_ms(),
        });
        let pending = Pending::Check {
            request_id: 0,
            scheduled: due,
            sent: now,
            measured,
            card,
            direction,
        };
        (message, pending)
    }

    fn newer(&mut self, version: u64, now: Instant) {
        if version > self.heard.0 {
            self.heard = (version, now);
        }
        if version > self.cache.version && self.sync_trigger.is_none() {
            self.sync_trigger = Some(now);
        }
    }

    async fn drive(
        &mut self,
        client: &mut TerminalClient,
        timing: &mut watch::Receiver<Timing>,
        tally: &mut DoorTally,
    ) {
        let shared = self.shared;
        let doors = &shared.doors;
        let cfg = &doors.cfg;
        let open_loop = cfg.rate.map(|r| Duration::from_secs_f64(cfg.controllers as f64 / r));
        let depth = match open_loop {
            None => 1,
            Some(_) => usize::from(
                client
                    .sign_on
                    .pipeline_depth_max
                    .min(shared.cfg.pipeline_max.unwrap_or(u16::MAX))
                    .max(2),
            ),
        };
        let heartbeat_every = Duration::from_secs(u64::from(client.sign_on.heartbeat_interval_s.max(1)));
        if let Some(v) = client.door_pushed_version.take() {
            self.newer(v, Instant::now());
        }
        let mut outstanding: VecDeque<Pending> = VecDeque::with_capacity(depth + 1);
        let base = Instant::now();
        let mut next_due = match open_loop {
            None => Some(base),
            Some(mean) => Some(base + exp_gap(&mut self.rng, mean)),
        };
        let mut last_sent = base;
        let mut stopping = false;
        loop {
            let now_timing = *timing.borrow_and_update();
            if now_timing.stop || next_due.is_some_and(|due| now_timing.deadline.is_some_and(|d| due >= d)) {
                next_due = None;
                stopping = true;
            }
            if let Some(at) = self.offline_at {
                // Due: send nothing more, go once the answers owed have come. At the end
                // of the run at the latest, but not after Ctrl-C.
                if now_timing.stop {
                    tally.offline.not_reached += 1;
                    self.offline_at = None;
                } else if (stopping || shared.progress(&now_timing) >= at) && outstanding.is_empty() {
                    self.offline_at = None;
                    if let Err(e) = self.offline_period(client, tally).await {
                        tally.connection_error(shared, e);
                        return;
                    }
                    last_sent = Instant::now();
                    if !stopping {
                        next_due = Some(match open_loop {
                            None => last_sent,
                            Some(mean) => last_sent + exp_gap(&mut self.rng, mean),
                        });
                    }
                    continue;
                }
            }
            let holding = self.offline_at.is_some_and(|at| shared.progress(&now_timing) >= at);
            if stopping && outstanding.is_empty() {
                return;
            }
            let syncing = outstanding.iter().any(|p| matches!(p, Pending::Sync { .. }));
            if (self.sync_trigger.is_some() || self.resync) && !syncing && !stopping && !holding {
                let id = match client.send(Message::DoorCacheSync(self.cache.next_sync())).await {
                    Ok(id) => id,
                    Err(e) => {
                        tally.connection_error(shared, failure_name(&e));
                        tally.unanswered += outstanding.len() as u64 + 1;
                        return;
                    }
                };
                outstanding.push_back(Pending::Sync {
                    request_id: id,
                    run: Vec::new(),
                    progress: Instant::now(),
                });
                last_sent = Instant::now();
                continue;
            }
            let checks = outstanding
                .iter()
                .filter(|p| matches!(p, Pending::Check { .. }))
                .count();
            let send_at = next_due.filter(|_| checks < depth && outstanding.len() <= depth && !holding);
            let wake_at = send_at.map(|s| s.checked_sub(TIMER_TICK).unwrap_or(s));
            let timeout_at = outstanding
                .iter()
                .filter_map(Pending::sent)
                .min()
                .map(|s| s + shared.cfg.answer_timeout);
            let heartbeat_at = (!stopping && !holding && outstanding.is_empty())
                .then_some(last_sent + heartbeat_every)
                .filter(|h| send_at.is_none_or(|s| s > *h));
            let watch_timing = now_timing.deadline.is_none() && !now_timing.stop;

            tokio::select! {
                biased;
                // Always listening: a push may come while nothing is owed.
                r = client.recv() => match r {
                    Ok(frame) => {
                        let now = Instant::now();
                        if frame.request_id == 0 {
                            match frame.message {
                                Message::DoorCachePush(p) => {
                                    tally.pushes += 1;
                                    self.newer(p.version, now);
                                }
                                other => {
                                    *tally.unsolicited.entry(format!("{:#04x}", other.msg_type())).or_default() += 1;
                                }
                            }
                            continue;
                        }
                        let Some(pos) = outstanding.iter().position(|p| p.request_id() == frame.request_id) else {
                            *tally.unsolicited.entry(format!("{:#04x}", frame.message.msg_type())).or_default() += 1;
                            continue;
                        };
                        match &mut outstanding[pos] {
                            Pending::Sync { run, progress, .. } => {
                                *progress = now;
                                let last = frame
                                    .message
                                    .door_page_flags()
                                    .is_some_and(|f| f & cardgate_codec::DOOR_PAGE_LAST_IN_RUN != 0);
                                run.push(frame.message);
                                if !last {
                                    continue;
                                }
                                let Some(Pending::Sync { run, .. }) = outstanding.remove(pos) else { continue };
                                if let Err(e) = self.finish_run(client, &run, tally).await {
                                    tally.connection_error(shared, e);
                                    tally.unanswered += outstanding.len() as u64;
                                    return;
                                }
                            }
                            Pending::Heartbeat { .. } => {
                                let _ = outstanding.remove(pos);
                                if !matches!(frame.message, Message::HeartbeatAck(_)) {
                                    tally.failure(shared, format!("heartbeat answered {:#04x}", frame.message.msg_type()));
                                }
                            }
                            Pending::Check { .. } => {
                                let Some(Pending::Check { scheduled, sent, measured, card, direction, .. }) =
                                    outstanding.remove(pos)
                                else {
                                    continue;
                                };
                                let asked = Asked { card, direction, scheduled, sent, measured };
                                self.answered(frame.message, asked, now, tally);
                                if open_loop.is_none() && !stopping {
                                    next_due = Some(now);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tally.connection_error(shared, failure_name(&e));
                        tally.unanswered += outstanding.len() as u64;
                        return;
                    }
                },
                _ = sleep_until(wake_at), if wake_at.is_some() => {
                    let Some(due) = send_at else { continue };
                    let fresh = *timing.borrow();
                    if fresh.stop || fresh.deadline.is_some_and(|d| due >= d) {
                        next_due = None;
                        stopping = true;
                        continue;
                    }
                    let now = Instant::now();
                    let (mut message, mut pending) = self.check(due, fresh.measured(due), now);
                    self.event_seq += 1;
                    if let Message::AccessCheck(c) = &mut message {
                        c.event_seq = self.event_seq;
                    }
                    match client.send(message).await {
                        Ok(id) => {
                            if let Pending::Check { request_id, .. } = &mut pending {
                                *request_id = id;
                            }
                        }
                        Err(e) => {
                            tally.connection_error(shared, failure_name(&e));
                            tally.unanswered += outstanding.len() as u64 + 1;
                            return;
                        }
                    }
                    outstanding.push_back(pending);
                    last_sent = now;
                    next_due = open_loop.map(|mean| due + exp_gap(&mut self.rng, mean));
                },
                _ = sleep_until(timeout_at), if timeout_at.is_some() => {
                    tally.connection_error(shared, "timeout".into());
                    tally.unanswered += outstanding.len() as u64;
                    return;
                },
                _ = sleep_until(heartbeat_at), if heartbeat_at.is_some() => {
                    let now = Instant::now();
                    match client.send(Message::Heartbeat(Heartbeat { terminal_time_ms: now_ms(), blacklist_version: 0 })).await {
                        Ok(id) => outstanding.push_back(Pending::Heartbeat { request_id: id, sent: now }),
                        Err(e) => {
                            tally.connection_error(shared, failure_name(&e));
                            return;
                        }
                    }
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

    fn answered(&mut self, answer: Message, asked: Asked, now: Instant, tally: &mut DoorTally) {
        let Asked {
            card,
            direction,
            scheduled,
            sent,
            measured,
        } = asked;
        let shared = self.shared;
        shared.live.answers.fetch_add(1, Ordering::Relaxed);
        let Message::AccessResult(r) = answer else {
            tally.failure(shared, format!("access_check answered {:#04x}", answer.msg_type()));
            return;
        };
        if r.card != card || r.door != self.door {
            tally.failure(shared, "access_check answered for another card or door".into());
        }
        if unexpected_reason(r.reason) {
            tally.failure(shared, format!("access_check {}", r.reason.as_str()));
        }
        if r.granted() && self.offline_at.is_some() {
            self.passages.record(card, direction, now_ms());
        }
        self.newer(r.cache_version, now);
        if measured {
            tally.checks += 1;
            *tally.by_reason.entry(r.reason.as_str()).or_default() += 1;
            let shard = &shared.doors.latency_us[(self.n % DOOR_SHARDS as u64) as usize];
            DoorShared::record(shard, now - scheduled.min(sent));
        } else {
            tally.warmup += 1;
        }
    }

    /// Applies a run that came in beside the checks, acknowledges what it switched to,
    /// and times the acknowledgement against the operator change being measured.
    async fn finish_run(
        &mut self,
        client: &mut TerminalClient,
        run: &[Message],
        tally: &mut DoorTally,
    ) -> Result<(), String> {
        tally.runs += 1;
        tally.pages += run.iter().filter(|m| m.door_page_flags().is_some()).count() as u64;
        match self.cache.apply_run(run) {
            Ok(out) => {
                if let Some(version) = out.ack {
                    client
                        .send(Message::DoorCacheAck(DoorCacheAck { version }))
                        .await
                        .map_err(|e| format!("ack:{}", failure_name(&e)))?;
                }
                if out.again {
                    return Ok(());
                }
                self.resync = false;
                let trigger = self.sync_trigger.take();
                if let (Some(mark), Some(trigger)) = (self.shared.doors.change_mark.get(), trigger)
                    && trigger >= *mark
                    && !self.change_recorded
                {
                    self.change_recorded = true;
                    DoorShared::record(&self.shared.doors.change_ack_us, Instant::now() - *mark);
                }
                // A version announced while this sync ran may be newer than the one it
                // reached: sync again, timed from when that one was heard of.
                if let Some(v) = client.door_pushed_version.take() {
                    self.newer(v, Instant::now());
                }
                if self.heard.0 > self.cache.version && self.sync_trigger.is_none() {
                    self.sync_trigger = Some(self.heard.1);
                }
            }
            Err(e) => {
                // Dropped whole; the trigger stays, so the sync starts again from the
                // version held.
                tally.failure(self.shared, format!("door cache: {e}"));
            }
        }
        Ok(())
    }
}

impl Controller<'_> {
    /// The controller loses the gateway (it hangs up, its answers all in), decides
    /// `offline_events` checks from its cache, signs on again and uploads them in
    /// batches, then sends the first batch once more: everything in it must come back
    /// a duplicate. `Err` when it could not sign on again: the controller is done.
    async fn offline_period(&mut self, client: &mut TerminalClient, tally: &mut DoorTally) -> Result<(), String> {
        let shared = self.shared;
        let cfg = &shared.doors.cfg;
        let rep = &mut tally.offline;
        rep.controllers += 1;
        client.hang_up(shared.cfg.answer_timeout).await;
        let mut events = Vec::with_capacity(cfg.offline_events as usize);
        for _ in 0..cfg.offline_events {
            let (card, direction) = self.next_card();
            let now = now_ms();
            let reason = self.cache.decide(card, direction, now, &self.passages);
            if reason == AccessReason::Granted {
                self.passages.record(card, direction, now);
            }
            self.event_seq += 1;
            *rep.by_reason.entry(reason.as_str().to_string()).or_default() += 1;
            events.push(client.door_event(self.event_seq, card, self.door, direction, reason, now));
        }
        rep.events += events.len() as u64;
        *client = connect(shared, shared.cfg.terminals + self.n, self.terminal_id)
            .await
            .map_err(|e| {
                rep.not_uploaded += events.len() as u64;
                format!("offline_reconnect:{}", failure_name(&e))
            })?;
        self.resync = true;
        for (i, batch) in events.chunks(usize::from(DOOR_EVENTS_BATCH_MAX)).enumerate() {
            if !self.upload(client, batch, rep, false).await? || i > 0 {
                continue;
            }
            self.upload(client, batch, rep, true).await?;
        }
        if let Some(v) = client.door_pushed_version.take() {
            self.newer(v, Instant::now());
        }
        Ok(())
    }

    /// One batch, retried after a system error or a cut connection; `Ok(true)` once
    /// accepted. `again`: a batch already accepted, sent to check that it stores nothing.
    async fn upload(
        &mut self,
        client: &mut TerminalClient,
        batch: &[DoorEvent],
        rep: &mut DoorOfflineReport,
        again: bool,
    ) -> Result<bool, String> {
        let shared = self.shared;
        let limit = shared.cfg.answer_timeout;
        let n = batch.len() as u64;
        for _ in 0..UPLOAD_ATTEMPTS {
            let r = tokio::time::timeout(limit, client.upload_door_events(batch)).await;
            let r = match r {
                Ok(Ok(r)) => r,
                Ok(Err(_)) | Err(_) => {
                    rep.cut_off += 1;
                    *client = connect(shared, shared.cfg.terminals + self.n, self.terminal_id)
                        .await
                        .map_err(|e| {
                            if !again {
                                rep.not_uploaded += n;
                            }
                            format!("offline_reconnect:{}", failure_name(&e))
                        })?;
                    continue;
                }
            };
            match r.status {
                DoorEventsStatus::Accepted => {
                    rep.accepted += 1;
                    let covers = r.first_event_seq == batch[0].event_seq
                        && u64::from(r.count) == n
                        && u64::from(r.stored) + u64::from(r.duplicates) == n;
                    if !covers {
                        rep.mismatched += 1;
                    }
                    if again {
                        rep.resent += n;
                        rep.resent_stored += u64::from(r.stored);
                        rep.resent_duplicates += u64::from(r.duplicates);
                    } else {
                        rep.stored += u64::from(r.stored);
                        rep.duplicates += u64::from(r.duplicates);
                        rep.flagged += u64::from(r.flagged);
                    }
                    return Ok(true);
                }
                DoorEventsStatus::SystemError => {
                    rep.system_error += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                DoorEventsStatus::BadMac | DoorEventsStatus::BadBatch => {
                    if r.status == DoorEventsStatus::BadMac {
                        rep.bad_mac += 1;
                    } else {
                        rep.bad_batch += 1;
                    }
                    if !again {
                        rep.not_uploaded += n;
                    }
                    return Ok(false);
                }
            }
        }
        if !again {
            rep.not_uploaded += n;
        }
        Ok(false)
    }
}

/// `--door-revoke-after`: the door admin revokes a permission this far into the window.
pub(crate) async fn revoke_step(
    shared: Arc<Shared>,
    plan: RevokePlan,
    mut timing: watch::Receiver<Timing>,
) -> CacheChangeReport {
    let mut report = CacheChangeReport {
        trigger: format!("revoke permission {}", plan.permission),
        ..CacheChangeReport::default()
    };
    let Ok(t) = timing
        .wait_for(|t| t.steady_start.is_some() || t.stop)
        .await
        .map(|t| *t)
    else {
        report.status = "not run: the run ended first".into();
        return report;
    };
    let Some(start) = t.steady_start else {
        report.status = "not run: the run ended first".into();
        return report;
    };
    let at = start + plan.after;
    tokio::select! {
        _ = sleep_until(Some(at)) => {}
        _ = timing.wait_for(|t| t.stop) => {
            report.status = "not run: the run ended first".into();
            return report;
        }
    }
    if timing.borrow().deadline.is_some_and(|d| Instant::now() >= d) {
        report.status = "not run: the window ended first".into();
        return report;
    }
    let sent = Instant::now();
    shared.doors.mark_change(sent);
    report.at_s = (sent - start).as_secs_f64();
    match plan.admin.revoke(plan.permission).await {
        Ok(()) => {
            report.api_ms = sent.elapsed().as_secs_f64() * 1000.0;
            report.status = "done".into();
        }
        Err(e) => {
            report.status = format!("failed: {e}");
            shared.live.problems.fetch_add(1, Ordering::Relaxed);
        }
    }
    report
}

/// The door part of the report, from the merged tallies and the shared histograms.
pub(crate) fn door_report(shared: &Shared, mut report: DoorReport, tally: DoorTally, measured_s: f64) -> DoorReport {
    let doors = &shared.doors;
    let cfg = &doors.cfg;
    let mut latency = histogram();
    for shard in &doors.latency_us {
        let _ = latency.add(&*shard.lock().unwrap_or_else(|p| p.into_inner()));
    }
    let p = |h: &Mutex<Histogram<u64>>| Percentiles::of_us(&h.lock().unwrap_or_else(|p| p.into_inner()));
    report.controllers = cfg.controllers;
    report.ready = tally.ready;
    report.first_controller = cfg.first_controller;
    report.mode = if cfg.rate.is_some() { "open" } else { "closed" };
    report.target_rate_per_s = cfg.rate;
    report.checks = tally.checks;
    report.throughput_per_s = tally.checks as f64 / measured_s;
    report.latency_ms = Percentiles::of_us(&latency);
    report.by_reason = tally.by_reason.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    report.warmup_checks = tally.warmup;
    report.sign_on_ms = p(&doors.sign_on_us);
    report.initial_sync_ms = p(&doors.sync_us);
    report.pushes = tally.pushes;
    report.runs = tally.runs;
    report.pages = tally.pages;
    report.failures = tally.failures;
    report.connection_errors = tally.connection_errors;
    report.unsolicited = tally.unsolicited;
    report.unanswered = tally.unanswered;
    report.offline = DoorOfflineReport {
        pct: cfg.offline_pct,
        events_each: cfg.offline_events,
        ..tally.offline
    };
    let acks = p(&doors.change_ack_us);
    report.cache_change.controllers_behind = tally.change_behind;
    report.cache_change.controllers_acked = acks.count;
    report.cache_change.ack_ms = acks;
    report
}
