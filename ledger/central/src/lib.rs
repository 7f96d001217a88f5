//! The central store: the university's database of one-card data, where reports,
//! reconciliation and other systems read what the gateway decided. The gateway stays
//! the authority for balances; the flusher (`flusher.rs`) ships every committed journal
//! entry there exactly once, in batches, and keeps going through outages of any length.
//!
//! Two back ends with one schema (`schema.rs`) and one behaviour: an embedded SQLite
//! file (the default, so `serve --demo` needs nothing installed) and PostgreSQL, for a
//! real deployment and, through its wire protocol, PostgreSQL-compatible distributed SQL
//! engines. Both use sqlx's runtime query API, so building needs no database.
//!
//! One batch is one SQL transaction: its rows, and the gateway's cursor in the
//! `gateways` table moved from the batch's first entry to its last. The transaction
//! refuses a batch that would leave a gap, and every row is keyed so that writing it again
//! changes nothing (`protocol.rs`, once for both back ends); see `docs/ARCHITECTURE.md`,
//! "Central store", for the whole argument.
//!
//! Each batch also carries its entries' chain hashes, which the store keeps
//! (`entry_hashes`) with each closed business day (`day_closes`), and the store refuses a
//! batch that does not link to the hash it holds for its last entry; `integrity.rs` holds
//! those tables and the queries the integrity check compares with the gateway.
//!
//! This crate reads the journal (`cardgate-journal`) and knows the entries
//! (`cardgate-domain`); it never depends on the ledger, so it can be tested against a
//! journal on disk with no decisions running, and nothing it does can hold a terminal up.

#![forbid(unsafe_code)]

pub mod flusher;
pub mod integrity;
pub mod postgres;
pub mod priority;
pub mod protocol;
pub mod reports;
pub mod schema;
pub mod sqlite;
pub mod statements;

use std::path::Path;

pub use flusher::{Flusher, FlusherConfig, FlusherHandle, FlusherHealth, FlusherMonitor, FlusherStatus, StuckEntry};
pub use schema::{Batch, SCHEMA_VERSION};

use cardgate_domain::money::to_fen;

/// Why the central store could not do what was asked, and whether trying again helps.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    /// The operator's URL is wrong: fix the configuration.
    #[error("central store URL: {0}")]
    Config(String),
    /// Could not reach the store, or it refused or dropped the connection: retry.
    #[error("central store unreachable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The store is reachable but busy (another writer holds the SQLite file): retry.
    #[error("central store busy: {0}")]
    Busy(#[source] sqlx::Error),
    /// The store answered with an error: retrying may help if it was transient.
    #[error("central store: {0}")]
    Database(#[source] sqlx::Error),
    /// The store refuses what it was given (a constraint, a trigger, a value it will not
    /// take): the same rows will be refused again until someone changes the store.
    #[error("central store refused the batch: {0}")]
    Refused(#[source] sqlx::Error),
    /// The store was migrated by a newer gateway: upgrade this one.
    #[error("the central store's schema is version {found}; this build knows up to {supported}")]
    SchemaTooNew { found: i64, supported: i64 },
    /// The store lacks entries this batch builds on (restored from an old backup, or a
    /// different database): the flusher never writes past a gap.
    #[error(
        "the central store holds this gateway's entries through {central}, but the next batch starts at \
         {first}: entries {central}+1..{first} are missing there"
    )]
    Gap { central: u64, first: u64 },
    /// The store holds entries this journal has never made durable: the data directory
    /// was restored from an old backup, or two gateways share one id. Nothing is shipped
    /// until an operator looks.
    #[error("the central store holds this gateway's entries through {central}, beyond this journal's {durable}")]
    Ahead { central: u64, durable: u64 },
    /// The store's chain and this journal's part at the store's last entry: the store
    /// was fed by another journal (a data directory restored from a backup while the
    /// store went on, or two gateways with one id). Nothing is shipped until an operator
    /// looks (OPERATIONS.md, "Restore").
    #[error(
        "the central store's hash of this gateway's entry {entry_id} is {central}, this journal's is {journal}: the \
         store holds another history from there on (a restored data directory?); nothing is shipped until an \
         operator reconciles it"
    )]
    Diverged {
        entry_id: u64,
        central: String,
        journal: String,
    },
    /// The store returned a value the gateway cannot represent.
    #[error("central store returned {0}")]
    Data(String),
}

impl CentralError {
    /// A short stable label for `cardgate_central_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            CentralError::Config(_) => "config",
            CentralError::Unavailable(_) => "unavailable",
            CentralError::Busy(_) => "busy",
            CentralError::Database(_) => "database",
            CentralError::Refused(_) => "refused",
            CentralError::SchemaTooNew { .. } => "schema",
            CentralError::Gap { .. } => "gap",
            CentralError::Ahead { .. } => "ahead",
            CentralError::Diverged { .. } => "diverged",
            CentralError::Data(_) => "data",
        }
    }

    /// Whether the store answered what it was asked (with a refusal or an error): false
    /// when it could not be reached, its file is locked by another writer, or the URL
    /// leads nowhere.
    pub fn store_answered(&self) -> bool {
        !matches!(
            self,
            CentralError::Unavailable(_) | CentralError::Busy(_) | CentralError::Config(_)
        )
    }

    /// True when the outage is the store's or the network's, expected to pass by itself.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CentralError::Unavailable(_) | CentralError::Busy(_) | CentralError::Database(_)
        )
    }
}

/// Sorts a driver error into whose problem it is.
pub(crate) fn classify(e: sqlx::Error) -> CentralError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => CentralError::Unavailable(e),
        sqlx::Error::Database(db) => {
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
            let code = db.code();
            let busy = code
                .as_deref()
                .and_then(|c| c.parse::<i64>().ok())
                .is_some_and(|c| c & 0xff == 5 || c & 0xff == 6);
            // PostgreSQL class 08 (connection exception), 57P (operator intervention:
            // shutdown, crash, cannot connect now), 28 (the login refused: no such role,
            // wrong password), 3D000 (no such database) and 53 (insufficient resources,
            // e.g. too many connections): the server answered, but nothing can be
            // stored there, which is what an operator means by "unreachable".
            let gone = code.as_deref().is_some_and(|c| {
                ["08", "57P", "28", "3D000", "53"]
                    .iter()
                    .any(|class| c.starts_with(class))
            });
            // What the data itself was refused for: PostgreSQL classes 22 (data
            // exception), 23 (integrity constraint), 42 (syntax or access rule), 44
            // (check option), P0 (raised by a trigger or function); SQLite's
            // CONSTRAINT (19, also a trigger's RAISE), MISMATCH (20) and RANGE (25).
            // (A PostgreSQL SQLSTATE has five characters; SQLite's codes are numbers of
            // at most four digits.)
            let refused = code.as_deref().is_some_and(|c| {
                if c.len() == 5 {
                    ["22", "23", "42", "44", "P0"].iter().any(|class| c.starts_with(class))
                } else {
                    c.parse::<i64>().is_ok_and(|n| matches!(n & 0xff, 19 | 20 | 25))
                }
            });
            if busy {
                CentralError::Busy(e)
            } else if gone {
                CentralError::Unavailable(e)
            } else if refused {
                CentralError::Refused(e)
            } else {
                CentralError::Database(e)
            }
        }
        sqlx::Error::Configuration(_) => CentralError::Config(e.to_string()),
        _ => CentralError::Database(e),
    }
}

/// One transaction the store holds, as read back (reconciliation, tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTx {
    pub tx_id: u64,
    pub entry_id: u64,
    pub kind: String,
    pub account: u64,
    pub amount_fen: i64,
    pub balance_after_fen: i64,
}

/// One account as the store sees it: its current balance, and what the transactions
/// it holds add up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountTotal {
    pub account: u64,
    pub opening_balance_fen: i64,
    pub balance_fen: i64,
    /// The sum of the account's transactions' signed amounts.
    pub transactions_fen: i64,
    pub transactions: u64,
}

/// A central store of either kind.
pub enum CentralStore {
    Sqlite(sqlite::SqliteCentral),
    Postgres(postgres::PgCentral),
}

impl CentralStore {
    /// Parses `url` (`sqlite://PATH` or `postgres://…`) without connecting: the gateway
    /// must start and serve terminals while the store is down.
    pub fn open(url: &str) -> Result<CentralStore, CentralError> {
        if url.starts_with("sqlite:") {
            Ok(CentralStore::Sqlite(sqlite::SqliteCentral::open(url)?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(CentralStore::Postgres(postgres::PgCentral::open(url)?))
        } else {
            Err(CentralError::Config(format!(
                "{:?} is neither sqlite://PATH nor postgres://...",
                redact(url)
            )))
        }
    }

    /// A SQLite file at `path`, created on first use.
    pub fn open_sqlite_file(path: &Path) -> CentralStore {
        CentralStore::Sqlite(sqlite::SqliteCentral::open_file(path))
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            CentralStore::Sqlite(_) => "sqlite",
            CentralStore::Postgres(_) => "postgres",
        }
    }

    /// Where the store is, without credentials, for logs.
    pub fn describe(&self) -> String {
        match self {
            CentralStore::Sqlite(s) => s.describe(),
            CentralStore::Postgres(p) => p.describe(),
        }
    }

    /// Whether the store's work yields the CPU while it keeps up (`priority.rs`): only
    /// SQLite's, which runs in this process; PostgreSQL's is in its server's processes,
    /// which the gateway does not schedule.
    pub fn yields(&self) -> bool {
        matches!(self, CentralStore::Sqlite(_))
    }

    /// A SQLite store's writer thread at a background CPU priority or the normal one
    /// (`SqliteCentral::set_background`).
    pub async fn set_background(&self, background: bool) {
        match self {
            CentralStore::Sqlite(s) => s.set_background(background).await,
            CentralStore::Postgres(_) => {}
        }
    }

    /// Creates or upgrades the schema to `SCHEMA_VERSION`; returns the version found.
    pub async fn migrate(&self) -> Result<i64, CentralError> {
        match self {
            CentralStore::Sqlite(s) => s.migrate().await,
            CentralStore::Postgres(p) => p.migrate().await,
        }
    }

    /// The last entry id of `gateway_id` the store holds (0 for none).
    pub async fn cursor(&self, gateway_id: u64) -> Result<u64, CentralError> {
        match self {
            CentralStore::Sqlite(s) => s.cursor(gateway_id).await,
            CentralStore::Postgres(p) => p.cursor(gateway_id).await,
        }
    }

    /// Writes `batch` in one transaction and moves the gateway's cursor to its last
    /// entry; returns the cursor after. Writing a batch the store already holds, in part
    /// or whole, changes nothing it held. Refuses (`Gap`) a batch that starts after the
    /// store's cursor + 1.
    pub async fn write(&self, batch: &Batch, now_ms: i64) -> Result<u64, CentralError> {
        if batch.is_empty() {
            return self.cursor(batch.gateway_id).await;
        }
        match self {
            CentralStore::Sqlite(s) => protocol::write(s, batch, now_ms).await,
            CentralStore::Postgres(p) => protocol::write(p, batch, now_ms).await,
        }
    }

    /// Every gateway the store has heard from, with its cursor.
    pub async fn gateways(&self) -> Result<Vec<(u64, u64)>, CentralError> {
        match self {
            CentralStore::Sqlite(s) => s.gateways().await,
            CentralStore::Postgres(p) => p.gateways().await,
        }
    }

    /// Every transaction of `gateway_id`, in tx id order.
    pub async fn transactions(&self, gateway_id: u64) -> Result<Vec<StoredTx>, CentralError> {
        match self {
            CentralStore::Sqlite(s) => s.transactions(gateway_id).await,
            CentralStore::Postgres(p) => p.transactions(gateway_id).await,
        }
    }

    /// Every account of `gateway_id` with its balance and its transactions' sum.
    pub async fn account_totals(&self, gateway_id: u64) -> Result<Vec<AccountTotal>, CentralError> {
        match self {
            CentralStore::Sqlite(s) => s.account_totals(gateway_id).await,
            CentralStore::Postgres(p) => p.account_totals(gateway_id).await,
        }
    }

    /// The distinct entry ids of `gateway_id` found in `transactions`, `declines` and
    /// `events`, sorted: `1..=cursor` when nothing is missing (each table's key refuses a
    /// double; a desk money entry lands in both `transactions` and `events`).
    pub async fn entry_ids(&self, gateway_id: u64) -> Result<Vec<u64>, CentralError> {
        match self {
            CentralStore::Sqlite(s) => s.entry_ids(gateway_id).await,
            CentralStore::Postgres(p) => p.entry_ids(gateway_id).await,
        }
    }

    /// Every event payload of `gateway_id`, in entry order (tests and audits).
    pub async fn event_payloads(&self, gateway_id: u64) -> Result<Vec<String>, CentralError> {
        match self {
            CentralStore::Sqlite(s) => s.event_payloads(gateway_id).await,
            CentralStore::Postgres(p) => p.event_payloads(gateway_id).await,
        }
    }

    /// Closes the connections.
    pub async fn close(&self) {
        match self {
            CentralStore::Sqlite(s) => s.close().await,
            CentralStore::Postgres(p) => p.close().await,
        }
    }
}

/// `url` without its password.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// Statement logging for the store's connections. sqlx logs every statement at debug and
/// any statement slower than a second at warn, with its whole text: hundreds of
/// characters per line while the flusher catches up, where seconds per batch are by
/// design. A batch's time is in `cardgate_central_batch_seconds`, and a flusher behind
/// says so itself once a minute; every failure comes back to the flusher as an error,
/// which counts and logs it. So statements go to trace, and only a statement slower than
/// `SLOW_STATEMENT` to debug.
pub(crate) fn statement_logging<O: sqlx::ConnectOptions>(options: O) -> O {
    options
        .log_statements(log::LevelFilter::Trace)
        .log_slow_statements(log::LevelFilter::Debug, SLOW_STATEMENT)
}

/// A statement this slow is logged at debug (see `statement_logging`).
pub const SLOW_STATEMENT: std::time::Duration = std::time::Duration::from_secs(5);

/// A fen amount read back from the store, which must be whole fen within `i64`.
pub(crate) fn fen_of(value: rust_decimal::Decimal) -> Result<i64, CentralError> {
    to_fen(value).ok_or_else(|| CentralError::Data(format!("amount {value} is not a whole number of fen")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x?sslmode=disable"),
            "postgres://u@db:5432/x?sslmode=disable"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact("sqlite://data/central.db"), "sqlite://data/central.db");
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused_before_any_connection() {
        assert!(matches!(
            CentralStore::open("mysql://u:pw@h/db"),
            Err(CentralError::Config(m)) if !m.contains("pw")
        ));
        assert!(CentralStore::open("postgres://u@127.0.0.1:1/db").is_ok());
        assert!(CentralStore::open("sqlite://some/where.db").is_ok());
    }
}
