//! Daemon configuration: a TOML file, then command-line flags on top of it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything `cardgate serve` needs. Every field has a default, so an empty file (or
/// none) is a valid configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where terminals connect.
    pub listen: SocketAddr,
    /// Where Prometheus scrapes `/metrics`; none disables the listener.
    pub metrics_listen: Option<SocketAddr>,
    /// The operators' HTTP/JSON API; none disables it. Loopback by default: put a TLS
    /// proxy in front of it before exposing it to the desk's network.
    pub admin_listen: Option<SocketAddr>,
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
}

/// Every limit the daemon enforces, with units in the name.
#[derive(Clone, Debug, Deserialize)]
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
    /// On shutdown, how long connections get to receive their in-flight answers.
    pub shutdown_grace_ms: u64,
}

/// The central store every committed entry is shipped to, and how.
#[derive(Clone, Debug, Deserialize)]
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
}

/// The demo campus `serve --demo` creates on first start.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Demo {
    pub accounts: u64,
    pub pos_terminals: u64,
    pub balance_fen: i64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: ([127, 0, 0, 1], 7700).into(),
            metrics_listen: Some(([127, 0, 0, 1], 9700).into()),
            admin_listen: Some(([127, 0, 0, 1], 7780).into()),
            data_dir: PathBuf::from("data"),
            tz_offset_minutes: 480,
            terminal_key_file: None,
            limits: Limits::default(),
            demo: Demo::default(),
            central: Central::default(),
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{0}")]
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
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if l.connections_max == 0 {
            return bad("limits.connections_max must be at least 1");
        }
        if l.pipeline_depth_max == 0 || usize::from(l.pipeline_depth_max) > cardgate_ledger::records::SEQ_SLOTS {
            // Retries after a reconnect must find their answers in memory.
            return bad("limits.pipeline_depth_max must be 1..=32 (the remembered outcomes per terminal)");
        }
        if l.sign_on_timeout_ms == 0 || l.idle_timeout_ms == 0 {
            return bad("timeouts must be above 0");
        }
        if u64::from(l.heartbeat_interval_s) * 1000 >= l.idle_timeout_ms {
            return bad("limits.heartbeat_interval_s must be below limits.idle_timeout_ms");
        }
        if !(-720..=840).contains(&self.tz_offset_minutes) {
            return bad("tz_offset_minutes must be within -720..=840");
        }
        if let Err(e) = self.central.flusher().validate() {
            return Err(ConfigError::Invalid(format!("central: {e}")));
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
        assert!(
            c.validate().is_err(),
            "a zero lag threshold would call every batch late"
        );
        let c: Config = toml::from_str("[central]\nlag_warn_s = 30").unwrap();
        assert_eq!(c.central.flusher().lag_warn, Duration::from_secs(30));
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
