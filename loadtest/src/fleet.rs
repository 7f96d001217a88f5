//! What one run's simulated devices share: what the run is asked to do (`RunConfig` for
//! the POS terminals, `DoorConfig` for the door controllers), its clock (`Timing`), the
//! live counters, the sharded latency histograms, the cards reported lost, and how a
//! device connects (source addresses, admission). The POS terminals (`run`) and the door
//! controllers (`door_fleet`) both drive through it; it knows neither.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use cardgate_codec::CardNo;
use cardgate_ledger::demo::demo_secret;
use hdrhistogram::Histogram;
use rand::RngExt;
use rand::rngs::StdRng;
use tokio::sync::{Notify, Semaphore};

use crate::client::{ClientError, TerminalClient};
use crate::desk::HttpDoorAdmin;
use crate::doors::DOOR_TERMINAL_BASE;
use crate::mix::{Kind, Mix};
use crate::source::SourceAddrs;
use crate::timeline::Timeline;

/// Door latency histograms are sharded like the POS ones.
pub(crate) const DOOR_SHARDS: usize = 16;

/// Latency histograms are sharded by terminal so that recording rarely waits on a lock;
/// a few shards per core is plenty.
pub(crate) const HISTOGRAM_SHARDS: usize = 16;

/// The slowest latency a histogram holds (µs): two minutes, beyond any answer timeout.
const LATENCY_US_MAX: u64 = 120_000_000;

/// Significant digits kept by the histograms: 0.1 % resolution at every magnitude.
const LATENCY_SIGFIG: u8 = 3;

/// tokio's timer resolution.
pub(crate) const TIMER_TICK: Duration = Duration::from_millis(1);

/// Everything a run needs to know.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: SocketAddr,
    pub terminals: u64,
    pub first_terminal: u64,
    pub accounts: u64,
    /// Measured window length; `None` runs until `requests` are sent.
    pub duration: Option<Duration>,
    /// Requests to send in total (ramp-up included).
    pub requests: Option<u64>,
    pub ramp_up: Duration,
    /// Open loop at this many requests per second across the fleet; `None` is a closed
    /// loop.
    pub rate: Option<f64>,
    /// Open loop: at most this many unanswered per connection (and never more than the
    /// gateway's `pipeline_depth_max`).
    pub pipeline_max: Option<u16>,
    pub mix: Mix,
    pub amount_min_fen: i64,
    pub amount_max_fen: i64,
    pub connect_concurrency: usize,
    pub answer_timeout: Duration,
    /// Explicit source addresses (round-robin); empty means automatic.
    pub source_addrs: Vec<IpAddr>,
    pub seed: u64,
    /// Cards to report lost halfway through the measured window.
    pub lost_cards: u64,
    pub check_conservation: bool,
    /// Connections the balance scans use.
    pub scan_connections: u64,
    pub progress: bool,
    /// Percent of terminals (rounded up) that lose the gateway once during the run.
    pub offline_pct: u8,
    /// Sales each of them makes while offline (fewer if its offline limits stop it).
    pub offline_sales: u32,
    /// Leave one sequence number unused after every this many (0: never).
    pub skip_every: u64,
}

impl RunConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.validate_with(0)
    }

    /// As `validate`, for a run that also drives `doors` door controllers: then it may
    /// have no POS terminal.
    pub fn validate_with(&self, doors: u64) -> Result<(), String> {
        if self.terminals == 0 && doors == 0 {
            return Err("--terminals must be at least 1".into());
        }
        if self.accounts == 0 {
            return Err("--accounts must be at least 1".into());
        }
        if self.first_terminal == 0 {
            return Err("terminal ids start at 1".into());
        }
        if !(0 < self.amount_min_fen && self.amount_min_fen <= self.amount_max_fen) {
            return Err("need 0 < --amount-min-fen <= --amount-max-fen".into());
        }
        if self.duration.is_none() && self.requests.is_none() {
            return Err("give --duration or --requests".into());
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0)
        {
            return Err("--rate must be a positive number of requests per second".into());
        }
        if self.lost_cards > self.accounts {
            return Err("--lost-cards cannot exceed --accounts".into());
        }
        if self.connect_concurrency == 0 {
            return Err("--connect-concurrency must be at least 1".into());
        }
        if self.offline_pct > 100 {
            return Err("--offline-pct must not exceed 100".into());
        }
        if (self.offline_pct > 0) != (self.offline_sales > 0) {
            return Err("--offline-pct and --offline-sales go together (both above 0)".into());
        }
        self.mix.validate()
    }
}

/// What the door part of a run is asked to do.
#[derive(Clone, Debug)]
pub struct DoorConfig {
    /// Door controllers (0: none).
    pub controllers: u64,
    /// The first controller's number: terminal id 100,000 + it, door it.
    pub first_controller: u64,
    /// Open loop: access checks per second across the controllers; `None` is a closed
    /// loop (each controller checks the next card when the last is answered).
    pub rate: Option<f64>,
    /// Keep every cache entry (as a controller that decides offline must) instead of
    /// counting them: about 1 MB per controller with the demo's 20,000 cards.
    pub keep_cache: bool,
    /// What the controllers ask for in DOOR_CACHE_SYNC: 0 for DOOR_CACHE_PAGEs of four
    /// entries, else DOOR_CACHE_BULK frames of up to this many.
    pub page_entries: u16,
    pub revoke: Option<RevokePlan>,
    /// Percent of controllers (rounded up) that lose the gateway once, between a quarter
    /// and three quarters of the run, and decide `offline_events` checks from their
    /// cache (these keep their cache whatever `keep_cache` says).
    pub offline_pct: u8,
    pub offline_events: u32,
}

/// What a simulated controller asks for unless told otherwise: the gateway's largest
/// pages, as a controller with the memory for a 10 KB frame would.
pub const DEFAULT_DOOR_PAGE_ENTRIES: u16 = cardgate_codec::DOOR_CACHE_BULK_ENTRIES_MAX as u16;

/// Revoke one permission this long into the measured window.
#[derive(Clone, Debug)]
pub struct RevokePlan {
    pub after: Duration,
    pub permission: u64,
    pub admin: HttpDoorAdmin,
}

impl DoorConfig {
    pub fn none() -> DoorConfig {
        DoorConfig {
            controllers: 0,
            first_controller: 1,
            rate: None,
            keep_cache: false,
            page_entries: DEFAULT_DOOR_PAGE_ENTRIES,
            revoke: None,
            offline_pct: 0,
            offline_events: 0,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.first_controller == 0 {
            return Err("door controllers are numbered from 1".into());
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0)
        {
            return Err("--door-rate must be a positive number of checks per second".into());
        }
        if self.controllers == 0 && (self.rate.is_some() || self.revoke.is_some() || self.offline_pct > 0) {
            return Err("--door-rate, --door-revoke-after and --door-offline-pct need --doors".into());
        }
        if self.offline_pct > 100 {
            return Err("--door-offline-pct must not exceed 100".into());
        }
        if (self.offline_pct > 0) != (self.offline_events > 0) {
            return Err("--door-offline-pct and --door-offline-events go together (both above 0)".into());
        }
        Ok(())
    }

    pub fn terminal_id(&self, n: u64) -> u64 {
        DOOR_TERMINAL_BASE + self.first_controller + n
    }
}

/// What the controllers share.
pub(crate) struct DoorShared {
    pub(crate) cfg: DoorConfig,
    pub(crate) latency_us: Vec<Mutex<Histogram<u64>>>,
    pub(crate) sign_on_us: Mutex<Histogram<u64>>,
    pub(crate) sync_us: Mutex<Histogram<u64>>,
    pub(crate) change_ack_us: Mutex<Histogram<u64>>,
    /// Controllers done with sign-on and the first sync (or failed at it).
    pub(crate) done: AtomicU64,
    /// When the operator change the controllers are timed against was sent.
    pub(crate) change_mark: OnceLock<Instant>,
}

impl DoorShared {
    pub fn new(cfg: DoorConfig) -> DoorShared {
        DoorShared {
            cfg,
            latency_us: (0..DOOR_SHARDS).map(|_| Mutex::new(histogram())).collect(),
            sign_on_us: Mutex::new(histogram()),
            sync_us: Mutex::new(histogram()),
            change_ack_us: Mutex::new(histogram()),
            done: AtomicU64::new(0),
            change_mark: OnceLock::new(),
        }
    }

    /// Times the controllers' syncs from `at`, unless an earlier change is being timed.
    pub fn mark_change(&self, at: Instant) -> bool {
        self.change_mark.set(at).is_ok()
    }

    pub(crate) fn record(h: &Mutex<Histogram<u64>>, d: Duration) {
        let _ = h.lock().unwrap_or_else(|p| p.into_inner()).record(micros(d));
    }
}

/// The run's clock, published to every terminal.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Timing {
    /// Set when the last terminal has signed on (or failed to).
    pub(crate) steady_start: Option<Instant>,
    /// End of the measured window (runs by duration).
    pub(crate) deadline: Option<Instant>,
    /// Stop sending now (Ctrl-C).
    pub(crate) stop: bool,
}

impl Timing {
    pub(crate) fn measured(&self, due: Instant) -> bool {
        self.steady_start.is_some_and(|s| due >= s) && self.deadline.is_none_or(|d| due < d)
    }
}

/// Live counters for the progress bar.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) phase: AtomicU8,
    pub(crate) signed_on: AtomicU64,
    pub(crate) sign_on_done: AtomicU64,
    pub(crate) answers: AtomicU64,
    pub(crate) problems: AtomicU64,
    pub(crate) scanned: Arc<AtomicU64>,
}

pub(crate) const PHASE_SCAN_BEFORE: u8 = 0;
pub(crate) const PHASE_CONNECT: u8 = 1;
pub(crate) const PHASE_RUN: u8 = 2;
pub(crate) const PHASE_DRAIN: u8 = 3;
pub(crate) const PHASE_SCAN_AFTER: u8 = 4;

/// Cards reported lost, and when the report was acknowledged.
#[derive(Default)]
pub(crate) struct LostCards {
    any: AtomicBool,
    inner: RwLock<(HashMap<CardNo, Instant>, Vec<CardNo>)>,
}

impl LostCards {
    pub(crate) fn add(&self, card: CardNo, acked: Instant) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        g.0.insert(card, acked);
        g.1.push(card);
        self.any.store(true, Ordering::Release);
    }

    pub(crate) fn contains(&self, card: CardNo) -> bool {
        self.acked_before(card, Instant::now())
    }

    pub(crate) fn acked_before(&self, card: CardNo, t: Instant) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.0.get(&card).is_some_and(|acked| *acked <= t)
    }

    pub(crate) fn pick(&self, rng: &mut StdRng) -> Option<CardNo> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if g.1.is_empty() {
            return None;
        }
        Some(g.1[rng.random_range(0..g.1.len())])
    }
}

/// Latency histograms of one shard.
pub(crate) struct Shard {
    pub(crate) latency_us: Vec<Histogram<u64>>,
    pub(crate) lag_us: Histogram<u64>,
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG).expect("constant histogram bounds are valid")
}

impl Shard {
    pub(crate) fn new() -> Shard {
        Shard {
            latency_us: (0..Kind::COUNT).map(|_| histogram()).collect(),
            lag_us: histogram(),
        }
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, LATENCY_US_MAX)
}

pub(crate) struct Shared {
    pub(crate) cfg: RunConfig,
    pub(crate) sources: Arc<SourceAddrs>,
    pub(crate) connect_slots: Semaphore,
    /// Requests left to send (runs by count); may go below zero.
    pub(crate) budget: AtomicI64,
    pub(crate) shards: Vec<Mutex<Shard>>,
    pub(crate) sign_on_us: Mutex<Histogram<u64>>,
    pub(crate) live: Live,
    pub(crate) sign_on_notify: Notify,
    pub(crate) lost: LostCards,
    pub(crate) doors: DoorShared,
    pub(crate) timeline: Timeline,
}

impl Shared {
    /// How far along the run is, 0 to 1: by requests sent, or by time in the measured
    /// window, whichever is further.
    pub(crate) fn progress(&self, timing: &Timing) -> f64 {
        let mut p: f64 = 0.0;
        if let Some(n) = self.cfg.requests.filter(|n| *n > 0) {
            let sent = (n as i64).saturating_sub(self.budget.load(Ordering::Relaxed)).max(0);
            p = sent as f64 / n as f64;
        }
        if let (Some(s), Some(d)) = (timing.steady_start, timing.deadline)
            && d > s
        {
            p = p.max(Instant::now().saturating_duration_since(s).as_secs_f64() / (d - s).as_secs_f64());
        }
        p
    }

    pub(crate) fn shard(&self, index: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(index % HISTOGRAM_SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

pub fn failure_name(e: &ClientError) -> String {
    match e {
        ClientError::Connect(e) => format!("connect:{:?}", e.kind()),
        ClientError::Codec(_) => "protocol_error".into(),
        ClientError::Refused(code) => format!("refused:{}", code.as_str()),
        ClientError::Closed => "closed_by_gateway".into(),
        ClientError::Unexpected(_) => "unexpected_message".into(),
        ClientError::Timeout(_) => "timeout".into(),
    }
}

/// A random exponential gap with the given mean: Poisson arrivals.
pub(crate) fn exp_gap(rng: &mut StdRng, mean: Duration) -> Duration {
    let u: f64 = rng.random();
    mean.mul_f64(-(1.0 - u).ln())
}

pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Connects terminal `index`, moving to the next source address when one runs out of
/// ports.
pub(crate) async fn connect(shared: &Shared, index: u64, terminal_id: u64) -> Result<TerminalClient, ClientError> {
    let secret = demo_secret(terminal_id);
    let (mut at, mut source) = shared.sources.first(index);
    let mut tries = 1;
    loop {
        match TerminalClient::connect_from(shared.cfg.target, source, terminal_id, &secret).await {
            Err(ClientError::Connect(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::AddrInUse
                ) =>
            {
                match shared.sources.next_after(at, tries) {
                    Some((next, s)) => {
                        at = next;
                        source = s;
                        tries += 1;
                    }
                    None => return Err(ClientError::Connect(e)),
                }
            }
            r => return r,
        }
    }
}
