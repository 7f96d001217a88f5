//! Daemon configuration: a TOML file, then environment variables and command-line flags
//! on top of it. `docs/CONFIGURATION.md` documents every key; `cardgate.toml` at the
//! repository root is an example that the tests load, so neither can drift from this file.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything `cardgate serve` needs. Every field has a default, so an empty file (or
/// none) is a valid configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where terminals connect.
    pub listen: ListenAddr,
    /// Where Prometheus scrapes `/metrics`; `""` in the file disables the listener.
    #[serde(deserialize_with = "optional_listen")]
    pub metrics_listen: Option<ListenAddr>,
    /// The operators' HTTP/JSON API; `""` in the file disables it. Loopback by default:
    /// put a TLS proxy in front of it before exposing it to the desk's network.
    #[serde(deserialize_with = "optional_listen")]
    pub admin_listen: Option<ListenAddr>,
    /// sled's directory: the journal and the state it recovers from.
    pub data_dir: PathBuf,
    /// Local time offset from UTC for the business day (UTC+8: 480).
    pub tz_offset_minutes: i32,
    /// A file holding the terminal key: 64 hex digits (32 random bytes) that seal every
    /// terminal's secret at rest, so that the data directory and its backups never hold
    /// one in clear. Kept off the data directory's disk. The environment variable
    /// `CARDGATE_TERMINAL_KEY` (the same 64 hex digits) takes precedence. Without either,
    /// terminals cannot be registered (a demo uses the published demo key).
    pub terminal_key_file: Option<PathBuf>,
    pub limits: Limits,
    pub demo: Demo,
    pub central: Central,
    /// Log lines as `text` (one human-readable line each) or `json` (one object per
    /// line, for a log shipper). Flag `--log-format`. Timestamps are RFC 3339 in the
    /// business time zone (`tz_offset_minutes`), offset included, in both.
    pub log_format: LogFormat,
    pub health: Health,
    pub offline: Offline,
    pub backup: Backup,
    pub integrity: Integrity,
    pub doors: Doors,
    pub attendance: Attendance,
}

/// Door controllers and attendance clocks (docs/OPERATIONS.md, "Doors").
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Doors {
    /// A controller's or clock's clock further than this from the gateway's (at sign-on
    /// or in any message) is counted in `cardgate_door_clock_drift_alarms_total` and
    /// logged: its offline events' times, and the windows it applies offline, are off
    /// by as much.
    pub clock_drift_max_ms: i64,
}

impl Default for Doors {
    fn default() -> Doors {
        Doors {
            clock_drift_max_ms: 60_000,
        }
    }
}

/// The working hours the attendance sheet judges late, early and absent against.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Attendance {
    /// `HH:MM` local time the working day starts.
    pub work_start: String,
    /// `HH:MM` local time it ends.
    pub work_end: String,
    /// Minutes after the start an arrival still counts as in time.
    pub late_grace_min: u16,
    /// Working weekdays, 1 = Monday .. 7 = Sunday; holidays of the door calendar are
    /// days off whatever the weekday.
    pub workdays: Vec<u8>,
}

impl Default for Attendance {
    fn default() -> Attendance {
        Attendance {
            work_start: "08:00".into(),
            work_end: "17:00".into(),
            late_grace_min: 5,
            workdays: vec![1, 2, 3, 4, 5],
        }
    }
}

fn hh_mm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
}

impl Attendance {
    pub fn work_hours(&self) -> Result<cardgate_domain::rules::attendance::WorkHours, String> {
        let start = hh_mm(&self.work_start).ok_or("attendance.work_start must be HH:MM")?;
        let end = hh_mm(&self.work_end).ok_or("attendance.work_end must be HH:MM")?;
        if end <= start {
            return Err("attendance.work_end must be after attendance.work_start".into());
        }
        if self.late_grace_min > 240 {
            return Err("attendance.late_grace_min must be 0..=240".into());
        }
        let mut workdays = [false; 7];
        for d in &self.workdays {
            if !(1..=7).contains(d) {
                return Err("attendance.workdays are 1 (Monday) to 7 (Sunday)".into());
            }
            workdays[usize::from(*d - 1)] = true;
        }
        Ok(cardgate_domain::rules::attendance::WorkHours {
            start_min: start,
            end_min: end,
            late_grace_min: self.late_grace_min,
            workdays,
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What POS terminals may sell while they cannot reach the gateway: told at every
/// sign-on (OFFLINE_LIMITS, docs/PROTOCOL.md 8.6); an uploaded sale beyond them is still
/// posted, and flagged for the card desk.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Offline {
    /// The most one offline sale may be: a meal.
    pub sale_max_fen: i64,
    /// The most one card may spend offline on one terminal in a local day: two meals.
    pub card_day_max_fen: i64,
    /// Offline sales a terminal may hold not yet uploaded, in fen: a window's busy hour.
    pub terminal_total_max_fen: i64,
    /// How long after its last contact with the gateway a terminal may still sell
    /// offline; also how old an uploaded sale may be before its time is suspect.
    pub offline_minutes_max: u32,
    /// Offline sales a terminal may hold not yet uploaded.
    pub sales_max: u16,
    /// Sales one upload batch may carry (1..=64): each batch is checked whole.
    pub batch_max: u16,
}

impl Default for Offline {
    fn default() -> Offline {
        let d = cardgate_ledger::OFFLINE_LIMITS_DEFAULT;
        Offline {
            sale_max_fen: d.sale_max_fen,
            card_day_max_fen: d.card_day_max_fen,
            terminal_total_max_fen: d.terminal_total_max_fen,
            offline_minutes_max: d.offline_minutes_max,
            sales_max: d.sales_max,
            batch_max: d.batch_max,
        }
    }
}

impl Offline {
    pub fn limits(&self) -> cardgate_codec::OfflineLimits {
        cardgate_codec::OfflineLimits {
            sale_max_fen: self.sale_max_fen,
            card_day_max_fen: self.card_day_max_fen,
            terminal_total_max_fen: self.terminal_total_max_fen,
            offline_minutes_max: self.offline_minutes_max,
            sales_max: self.sales_max,
            batch_max: self.batch_max,
        }
    }
}

/// What `/readyz` and the terminal gauges judge by (docs/OPERATIONS.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// While the central store is unreachable, `/readyz` stays ready up to this many
    /// unshipped entries: the journal keeps them safely, but past this the central
    /// store is too far behind to call the gateway healthy (at a lunch peak of ~2,000
    /// decisions a second, 1,000,000 is about eight minutes; quieter hours, hours).
    pub central_backlog_entries_max: u64,
    /// An enabled terminal without a session and not heard from (sign-on, heartbeat)
    /// for this long counts in `cardgate_terminals_offline`. Terminals heartbeat every
    /// `limits.heartbeat_interval_s` and are closed after `limits.idle_timeout_ms`
    /// silent, so five minutes is several missed heartbeats and a failed reconnect.
    pub terminal_offline_after_s: u64,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            central_backlog_entries_max: 1_000_000,
            terminal_offline_after_s: 300,
        }
    }
}

/// Backups (OPERATIONS.md, "Backups"): where scheduled ones go, when, and how many stay.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backup {
    /// The directory backups are written into, each in a directory of its own; also
    /// where `POST /api/v1/backups` writes when the call names none. Put it on another
    /// disk than `data_dir`.
    pub dir: Option<PathBuf>,
    /// `HH:MM` local business time for a daily backup into `dir`; none (or `"off"`): no
    /// schedule.
    pub daily_at: Option<String>,
    /// Scheduled backups kept in `dir` (older ones are removed after a new one is
    /// complete); 0 keeps all. Backups made by hand are never removed.
    pub keep: usize,
}

/// The integrity check's schedule (OPERATIONS.md, "The integrity check").
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Integrity {
    /// `HH:MM` local business time for the daily check; `"off"`: only by hand.
    pub daily_at: Option<String>,
}

impl Default for Integrity {
    fn default() -> Integrity {
        Integrity {
            daily_at: Some("03:30".into()),
        }
    }
}

/// `HH:MM` → minutes after local midnight.
pub fn parse_time_of_day(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.trim().len() == 5).then_some(h * 60 + m)
}

/// Every limit the daemon enforces, with units in the name.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Terminals signed on at once; up to `server::SIGN_ON_HEADROOM` more connections
    /// may be in sign-on beyond it (docs/PROTOCOL.md 9.3).
    pub connections_max: usize,
    /// The kernel's accept queue. A campus fleet reconnects at once after a network
    /// blip; tokio's default of 1,024 made some of 5,000 terminals wait a second here.
    pub listen_backlog: u32,
    /// From accept to SIGN_ON_OK.
    pub sign_on_timeout_ms: u64,
    /// A signed-on connection that sends nothing for this long is closed; terminals send
    /// heartbeats every `heartbeat_interval_s`.
    pub idle_timeout_ms: u64,
    pub heartbeat_interval_s: u16,
    /// Requests one connection may have awaiting answers; beyond it we stop reading.
    pub pipeline_depth_max: u16,
    /// On shutdown, how long connections (terminals' and operators') get to receive
    /// their in-flight answers.
    pub shutdown_grace_ms: u64,
    /// Admin API connections held at once; further ones wait in the kernel's backlog.
    pub admin_connections_max: usize,
}

/// Default cap on admin API connections. The card centre has tens of desk machines and
/// a browser keeps up to six connections to one host, so 256 admits all of them at
/// once; what it bounds is memory: each connection may buffer a request body of up to
/// 64 KiB (more only for an authenticated bulk call), so the cap holds that to 16 MiB.
pub const ADMIN_CONNECTIONS_DEFAULT_MAX: usize = 256;

/// The central store every committed entry is shipped to, and how.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Central {
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`. None: the SQLite file
    /// `central.db` in `data_dir`, so a demo needs nothing installed.
    pub url: Option<String>,
    /// Entries shipped per SQL transaction, at most.
    pub batch_entries_max: usize,
    /// The longest an entry waits for its batch to fill: how far the central store may
    /// lag behind a quiet gateway.
    pub batch_wait_ms: u64,
    /// Retries back off exponentially up to this.
    pub retry_backoff_max_ms: u64,
    /// A batch the store has not committed by then is abandoned and retried.
    pub batch_timeout_ms: u64,
    /// Shipped journal entries stay in sled this long before they are pruned: time to
    /// re-ship them if the central store is restored from a backup.
    pub journal_retention_s: u64,
    /// On shutdown, how long the last flush may take; what it does not ship is shipped
    /// after the next start.
    pub shutdown_flush_ms: u64,
    /// The oldest unshipped entry older than this: the central store is behind (a
    /// warning once a minute, `cardgate_central_keeping_up` 0).
    pub lag_warn_s: u64,
    /// While a SQLite central store keeps within this (the oldest entry of each batch
    /// younger than it), its batches (the flusher's work and the writer thread) run at a
    /// background CPU priority, below the terminals' threads. 0: always at the normal
    /// priority.
    pub yield_below_ms: u64,
}

/// The demo campus `serve --demo` creates on first start.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Demo {
    pub accounts: u64,
    pub pos_terminals: u64,
    pub balance_fen: i64,
    /// Door controllers 100,000 + i, one door each, groups of ten doors.
    pub door_controllers: u64,
    /// Attendance clocks 200,000 + j.
    pub attendance_clocks: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)).into(),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9700)).into()),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7780)).into()),
            data_dir: PathBuf::from("data"),
            tz_offset_minutes: 480,
            terminal_key_file: None,
            limits: Limits::default(),
            demo: Demo::default(),
            central: Central::default(),
            log_format: LogFormat::Text,
            health: Health::default(),
            offline: Offline::default(),
            backup: Backup {
                keep: 14,
                ..Backup::default()
            },
            integrity: Integrity::default(),
            doors: Doors::default(),
            attendance: Attendance::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections_max: 20_000,
            listen_backlog: 4096,
            sign_on_timeout_ms: 5_000,
            idle_timeout_ms: 120_000,
            heartbeat_interval_s: 30,
            pipeline_depth_max: 16,
            shutdown_grace_ms: 10_000,
            admin_connections_max: ADMIN_CONNECTIONS_DEFAULT_MAX,
        }
    }
}

impl Default for Central {
    fn default() -> Central {
        let f = cardgate_central::FlusherConfig::default();
        Central {
            url: None,
            batch_entries_max: f.batch_entries_max,
            batch_wait_ms: f.batch_wait.as_millis() as u64,
            retry_backoff_max_ms: f.retry_backoff_max.as_millis() as u64,
            batch_timeout_ms: f.batch_timeout.as_millis() as u64,
            journal_retention_s: f.journal_retention.as_secs(),
            shutdown_flush_ms: 5_000,
            lag_warn_s: f.lag_warn.as_secs(),
            yield_below_ms: f.yield_below.as_millis() as u64,
        }
    }
}

impl Central {
    pub fn flusher(&self) -> cardgate_central::FlusherConfig {
        cardgate_central::FlusherConfig {
            batch_entries_max: self.batch_entries_max,
            batch_wait: Duration::from_millis(self.batch_wait_ms),
            retry_backoff_max: Duration::from_millis(self.retry_backoff_max_ms),
            batch_timeout: Duration::from_millis(self.batch_timeout_ms),
            journal_retention: Duration::from_secs(self.journal_retention_s),
            lag_warn: Duration::from_secs(self.lag_warn_s),
            yield_below: Duration::from_millis(self.yield_below_ms),
            ..cardgate_central::FlusherConfig::default()
        }
    }
}

impl Default for Demo {
    fn default() -> Demo {
        let d = cardgate_ledger::demo::DemoCampus::default();
        Demo {
            accounts: d.accounts,
            pos_terminals: d.pos_terminals,
            balance_fen: d.balance_fen,
            door_controllers: 500,
            attendance_clocks: 10,
        }
    }
}

/// A listener address as the operator writes it: `IP:PORT`, `[IPv6]:PORT` or
/// `HOST:PORT`. A host name is resolved when the listener is bound, not when the file
/// is read, so that a name that stops resolving is reported with the listener it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddr(String);

impl ListenAddr {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The addresses the name stands for, in the resolver's order (the order clients
    /// using the same name try them in).
    pub fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(addr) = self.0.parse::<SocketAddr>() {
            return Ok(vec![addr]);
        }
        let addrs: Vec<SocketAddr> = self.0.to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name resolves to no address",
            ));
        }
        Ok(addrs)
    }
}

/// The key whose value starts at byte `at` of a TOML text, with its section: the text
/// before `=` on that line, after the last `[section]` line above it.
fn key_at(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let (key, _) = text[line_start..line_end].split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<ListenAddr, String> {
        let s = s.trim();
        if s.parse::<SocketAddr>().is_ok() {
            return Ok(ListenAddr(s.to_string()));
        }
        let bad = || format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:7700, localhost:7700 or [::1]:7700)");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        port.parse::<u16>().map_err(|_| bad())?;
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if host.is_empty() || !host.chars().all(name_char) {
            return Err(bad());
        }
        Ok(ListenAddr(s.to_string()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> ListenAddr {
        ListenAddr(a.to_string())
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ListenAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A listener that may be switched off: `""` is off.
fn optional_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ListenAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

impl Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Each variant's message is complete on its own: the cause is part of it, not a
/// `source`, so that printing the error and its chain does not say it twice.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("the configuration file {path} is not valid: {error}")]
    Parse { path: PathBuf, error: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The environment variable that gives the terminal key (64 hex digits).
pub const TERMINAL_KEY_ENV: &str = "CARDGATE_TERMINAL_KEY";

impl Config {
    /// The terminal key: from `CARDGATE_TERMINAL_KEY`, else `terminal_key_file`, else,
    /// for a demo, the published demo key; else none.
    pub fn terminal_key(&self, demo: bool) -> Result<Option<cardgate_ledger::keys::TerminalKey>, ConfigError> {
        use cardgate_ledger::keys::TerminalKey;
        if let Ok(hex) = std::env::var(TERMINAL_KEY_ENV) {
            return TerminalKey::from_hex(&hex)
                .map(Some)
                .map_err(|e| ConfigError::Invalid(format!("{TERMINAL_KEY_ENV}: {e}")));
        }
        if let Some(path) = &self.terminal_key_file {
            // Not "the configuration file": the key file it names.
            let text = std::fs::read_to_string(path).map_err(|error| {
                ConfigError::Invalid(format!("cannot read terminal_key_file {}: {error}", path.display()))
            })?;
            return TerminalKey::from_hex(&text)
                .map(Some)
                .map_err(|e| ConfigError::Invalid(format!("terminal_key_file {}: {e}", path.display())));
        }
        Ok(demo.then(TerminalKey::demo))
    }

    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::parse(&text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            error,
        })
    }

    /// Parses a configuration file's text. The error is one line (the TOML parser's own
    /// message draws the offending line under it, which a log cannot show well).
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let message = e.message();
            let at = e
                .span()
                .map(|span| {
                    let start = span.start.min(text.len());
                    let line = text[..start].matches('\n').count() + 1;
                    // The parser's message for a wrong type names no key ("invalid type:
                    // string, expected usize"): the key is the one on that line, in the
                    // section above it.
                    match key_at(text, start) {
                        // Messages that name the key already (an unknown field) keep
                        // theirs: the key said twice reads as two faults.
                        Some(key) if !message.contains(key.rsplit('.').next().unwrap_or(&key)) => {
                            format!("line {line}: `{key}`: ")
                        }
                        _ => format!("line {line}: "),
                    }
                })
                .unwrap_or_default();
            format!("{at}{message}")
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if let Err(m) = self.attendance.work_hours() {
            return bad(&m);
        }
        if self.doors.clock_drift_max_ms <= 0 {
            return bad("doors.clock_drift_max_ms must be above 0");
        }
        if self.demo.door_controllers > 99_999 || self.demo.attendance_clocks > 99_999 {
            return bad("demo.door_controllers and demo.attendance_clocks are at most 99999");
        }
        if l.connections_max == 0 {
            return bad("limits.connections_max must be at least 1");
        }
        if l.admin_connections_max == 0 {
            return bad("limits.admin_connections_max must be at least 1");
        }
        if l.pipeline_depth_max == 0 || usize::from(l.pipeline_depth_max) > cardgate_ledger::records::SEQ_SLOTS {
            // Retries after a reconnect must find their answers in memory.
            return bad("limits.pipeline_depth_max must be 1..=32 (the remembered outcomes per terminal)");
        }
        if l.sign_on_timeout_ms == 0 {
            return bad("limits.sign_on_timeout_ms must be above 0");
        }
        if l.idle_timeout_ms == 0 {
            return bad("limits.idle_timeout_ms must be above 0");
        }
        if u64::from(l.heartbeat_interval_s) * 1000 >= l.idle_timeout_ms {
            return bad("limits.heartbeat_interval_s must be below limits.idle_timeout_ms");
        }
        if !(-720..=840).contains(&self.tz_offset_minutes) {
            return bad("tz_offset_minutes must be within -720..=840");
        }
        let o = &self.offline;
        if o.sale_max_fen < 0 || o.card_day_max_fen < 0 || o.terminal_total_max_fen < 0 {
            return bad("offline limits cannot be negative (0 switches offline selling off)");
        }
        if o.batch_max == 0 || o.batch_max > cardgate_domain::rules::offline::OFFLINE_BATCH_MAX {
            return bad("offline.batch_max must be 1..=64");
        }
        if self.health.terminal_offline_after_s == 0 {
            return bad("health.terminal_offline_after_s must be above 0");
        }
        // The flusher's own rules, named as this file names them (its fields are not keys
        // an operator can find).
        if let Err(e) = self.central.flusher().validate() {
            let key = match e.field {
                "batch_entries_max" => "central.batch_entries_max",
                "retry_backoff_max" => "central.retry_backoff_max_ms",
                "batch_timeout" => "central.batch_timeout_ms",
                "lag_warn" => "central.lag_warn_s",
                other => other,
            };
            return Err(ConfigError::Invalid(format!("{key} {}", e.rule)));
        }
        for (key, v) in [
            ("backup.daily_at", &self.backup.daily_at),
            ("integrity.daily_at", &self.integrity.daily_at),
        ] {
            if let Some(v) = v
                && v != "off"
                && parse_time_of_day(v).is_none()
            {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be HH:MM (local time), not {v:?}"
                )));
            }
        }
        if self.backup.daily_at.as_deref().is_some_and(|v| v != "off") && self.backup.dir.is_none() {
            return bad("backup.daily_at needs backup.dir (where the daily backups go)");
        }
        if let Some(d) = &self.backup.dir
            && !d.is_absolute()
        {
            return bad("backup.dir must be an absolute path");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.listen, Config::default().listen);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("lisen = \"127.0.0.1:1\"").is_err());
        assert!(
            Config::parse("[limits]\nadmin_connections_max = 0")
                .unwrap()
                .validate()
                .is_err()
        );
        assert!(toml::from_str::<Config>("[limits]\nconnection_max = 3").is_err());
    }

    #[test]
    fn the_central_store_defaults_to_sqlite_and_its_limits_are_validated() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.central.url, None);
        let mut c: Config = toml::from_str("[central]\nurl = \"postgres://u@h/db\"\nbatch_entries_max = 0").unwrap();
        assert_eq!(c.central.url.as_deref(), Some("postgres://u@h/db"));
        assert!(c.validate().is_err());
        c.central.batch_entries_max = 100;
        c.validate().unwrap();
        c.central.batch_entries_max = cardgate_central::flusher::BATCH_ENTRIES_LIMIT + 1;
        assert!(c.validate().is_err());
        assert!(toml::from_str::<Config>("[central]\nbatch_size = 3").is_err());
        let c: Config = toml::from_str("[central]\nlag_warn_s = 0").unwrap();
        let e = c
            .validate()
            .expect_err("a zero lag threshold would call every batch late");
        assert!(e.to_string().contains("central.lag_warn_s"), "named as configured: {e}");
        let c: Config = toml::from_str("[central]\nlag_warn_s = 30").unwrap();
        assert_eq!(c.central.flusher().lag_warn, Duration::from_secs(30));
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_and_line() {
        let e = Config::parse("tz_offset_minutes = 480\n\n[limits]\n# many\nconnections_max = \"many\"\n")
            .expect_err("a string is no count");
        assert!(e.starts_with("line 5: `limits.connections_max`: "), "{e}");
        let e = Config::parse("tz_offset_minutes = \"east\"\n").expect_err("not a number");
        assert!(e.starts_with("line 1: `tz_offset_minutes`: "), "{e}");
        let e = Config::parse("[limits]\nconnection_max = 1\n").expect_err("misspelt");
        assert_eq!(e.matches("connection_max").count(), 1, "named once: {e}");
        let e = Config::parse("[limits]\nsign_on_timeout_ms = 0\n")
            .unwrap()
            .validate()
            .expect_err("zero");
        assert!(e.to_string().contains("limits.sign_on_timeout_ms"), "{e}");
    }

    /// Every key of the configuration as `section.key` (top-level keys bare).
    fn keys() -> Vec<String> {
        let mut all = Config::default();
        // Optional keys are listed too: give each a value so that it serializes.
        all.central.url = Some("sqlite://x".into());
        let serde_json::Value::Object(top) = serde_json::to_value(&all).unwrap() else {
            panic!("a config serializes to a table")
        };
        let mut keys = Vec::new();
        for (k, v) in top {
            match v {
                serde_json::Value::Object(section) => keys.extend(section.keys().map(|s| format!("{k}.{s}"))),
                _ => keys.push(k),
            }
        }
        keys
    }

    const EXAMPLE: &str = include_str!("../../cardgate.toml");
    const DOC: &str = include_str!("../../docs/CONFIGURATION.md");

    #[test]
    fn the_example_file_is_valid_and_sets_every_key_to_its_default() {
        let example = Config::parse(EXAMPLE).unwrap();
        example.validate().unwrap();
        assert_eq!(
            serde_json::to_value(&example).unwrap(),
            serde_json::to_value(Config::default()).unwrap()
        );
    }

    #[test]
    fn every_key_is_in_the_example_file_and_in_the_configuration_doc() {
        let mut section = String::new();
        let mut in_example = Vec::new();
        for line in EXAMPLE.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = format!("{s}.");
                continue;
            }
            // A commented-out key shows an optional key's form without setting it.
            let line = line.strip_prefix("# ").unwrap_or(line);
            if let Some((k, _)) = line.split_once(" = ") {
                in_example.push(format!("{section}{k}"));
            }
        }
        for key in keys() {
            assert!(in_example.contains(&key), "{key} is missing from cardgate.toml");
            assert!(
                DOC.contains(&format!("| `{key}` |")),
                "{key} is missing from docs/CONFIGURATION.md"
            );
        }
        assert_eq!(keys().len(), in_example.len(), "cardgate.toml has a key the code lacks");
    }

    #[test]
    fn listen_addresses_take_ips_and_host_names_and_switch_off_with_an_empty_string() {
        for ok in ["127.0.0.1:7700", "localhost:7700", "[::1]:0", "gw-1.campus.example:80"] {
            assert!(ok.parse::<ListenAddr>().is_ok(), "{ok}");
        }
        for bad in ["7700", "localhost", "localhost:99999", ":7700", "a b:1", "http://x:1"] {
            let e = bad.parse::<ListenAddr>().unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
        let c = Config::parse("listen = \"localhost:7700\"\nadmin_listen = \"\"").unwrap();
        assert_eq!(c.listen.as_str(), "localhost:7700");
        assert!(c.admin_listen.is_none());
        assert!(c.metrics_listen.is_some());
        assert!(!c.listen.resolve().unwrap().is_empty());
    }

    #[test]
    fn a_bad_file_is_one_line_naming_the_line_and_the_key() {
        let e = Config::parse("data_dir = \"d\"\n[limits]\nconnection_max = 3\n").unwrap_err();
        assert!(e.starts_with("line 3: ") && e.contains("connection_max"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = Config::parse("listen = \"nowhere\"").unwrap_err();
        assert!(e.contains("HOST:PORT") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn log_format_and_health_keys_parse() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.log_format, LogFormat::Text);
        let c: Config = toml::from_str(
            "log_format = \"json\"\n[health]\ncentral_backlog_entries_max = 5\nterminal_offline_after_s = 60",
        )
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.health.central_backlog_entries_max, 5);
        assert_eq!(c.health.terminal_offline_after_s, 60);
        c.validate().unwrap();
        assert!(toml::from_str::<Config>("log_format = \"xml\"").is_err());
        assert!(toml::from_str::<Config>("[health]\noffline_after_s = 1").is_err());
    }

    #[test]
    fn schedules_are_validated() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(
            c.integrity.daily_at.as_deref(),
            Some("03:30"),
            "the daily check is on by default"
        );
        assert_eq!((c.backup.dir.as_ref(), c.backup.keep), (None, 14));
        let mut c: Config = toml::from_str("[backup]\ndir = \"/srv/backup\"\ndaily_at = \"02:15\"\nkeep = 3").unwrap();
        c.validate().unwrap();
        c.backup.daily_at = Some("25:00".into());
        assert!(c.validate().is_err());
        c.backup.daily_at = Some("2:15".into());
        assert!(c.validate().is_err());
        c.backup.daily_at = Some("02:15".into());
        c.backup.dir = None;
        assert!(c.validate().is_err(), "a schedule needs a directory");
        c.backup.dir = Some("relative".into());
        c.backup.daily_at = None;
        assert!(c.validate().is_err());
        assert_eq!(parse_time_of_day("00:00"), Some(0));
        assert_eq!(parse_time_of_day("23:59"), Some(1439));
        assert!(toml::from_str::<Config>("[integrity]\nat = \"03:00\"").is_err());
        let c: Config = toml::from_str("[integrity]\ndaily_at = \"off\"").unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn limits_are_validated() {
        let mut c: Config = toml::from_str("[limits]\npipeline_depth_max = 64").unwrap();
        assert!(c.validate().is_err());
        c.limits.pipeline_depth_max = 16;
        c.limits.heartbeat_interval_s = 200;
        assert!(c.validate().is_err());
    }
}
