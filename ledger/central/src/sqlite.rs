//! The central store in an embedded SQLite file: the default, so that a demo or a small
//! site needs nothing installed. Money is `INTEGER` fen (columns named `_fen`): sqlx's
//! exact decimal support covers PostgreSQL only, and fen are exact.
//!
//! One connection (SQLite has one writer at a time anyway), WAL so that report readers
//! never block the flusher, `synchronous = FULL` so that a commit the flusher counted as
//! shipped survives a power cut, and transactions opened `IMMEDIATE` so that the write
//! lock is taken up front instead of failing on upgrade when a reader got in between.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use std::sync::{Arc, Mutex};

use sqlx::{Arguments, Row, Sqlite, Transaction};

use super::priority::{BACKGROUND_NICE, lower_thread};
use super::protocol::Dialect;
use super::schema::{Batch, SCHEMA_VERSION, id_of_sql, sql_id};
use super::statements::Shaped;
use super::{AccountTotal, CentralError, StoredTx, classify};

/// How long a write waits for another process's lock on the file before it fails and
/// the flusher backs off. Long enough to ride out a report's short write, short enough
/// that a stuck lock shows up in the error metrics within seconds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the flusher waits for the connection before counting the store unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite's page cache for the flusher's connection, as `cache_size` takes it (negative:
/// KiB). The default 2 MiB made every batch's inserts into the random-order indexes
/// (by account, by card) read pages back from the OS once the file outgrew it; 64 MiB
/// keeps the index pages a batch touches in memory.
const CACHE_KIB_PRAGMA: &str = "-65536";

/// WAL pages before SQLite copies them back into the database file. The default (1,000
/// pages, 4 MiB) made one batch in every two or three pay for a checkpoint. 16,000
/// (64 MiB) spread that over many batches, but each checkpoint then wrote 35-45 MB to the
/// database file and `fsync`ed it, and on the data directory's disk that burst stalled
/// the journal's flushes, which every answer waits for, by 80-140 ms every ~11 s at
/// 20,000 purchases/s. 2,000 (8 MiB) makes it one checkpoint a second of ~8 MB: flushes
/// over 50 ms fell from 58 to 6 in nine alternated runs, for ~7 % less idle drain rate
/// (docs/PERFORMANCE.md 5.10). Readers see everything either way.
const WAL_AUTOCHECKPOINT_PAGES_PRAGMA: &str = "2000";

/// The few distinct `&'static str` values rows carry (kinds, statuses, decline
/// reasons), each bound as one shared `Arc<str>`: sqlx binds a `&str` by copying it into
/// a new `String`, an allocation on the flusher and a free on SQLite's worker thread for
/// every row, where a shared one is a reference count. One per batch; a handful of
/// entries, searched in order.
#[derive(Default)]
struct Interned(Vec<(&'static str, Arc<str>)>);

impl Interned {
    fn get(&mut self, s: &'static str) -> Arc<str> {
        if let Some((_, shared)) = self.0.iter().find(|(k, _)| *k == s) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        self.0.push((s, shared.clone()));
        shared
    }

    fn opt(&mut self, s: Option<&'static str>) -> Option<Arc<str>> {
        s.map(|s| self.get(s))
    }
}

// The flusher's per-entry statements say `OR FAIL`, where SQLite's default is `OR ABORT`.
// Both stop the statement with the same constraint error; ABORT also undoes the rows the
// statement wrote before it, and to be able to, SQLite keeps a statement journal of
// every page a multi-row statement changes (beyond 64 KiB a temporary file: the balance
// update, a page of `accounts` per row, made as many `pwrite`s as the WAL itself). The
// flusher never keeps a transaction whose statement failed: every error drops the
// batch's transaction, which rolls back all of it (`protocol::write`), so undoing one
// statement first is work for nothing. The upserts keep the default; they are rare
// (desk and import entries).
static INSERT_TRANSACTIONS: Shaped = Shaped::new(
    "INSERT OR FAIL INTO transactions (gateway_id, tx_id, entry_id, kind, account_id, card_no, terminal_id, terminal_seq, \
     merchant_id, amount_fen, balance_after_fen, time_ms, terminal_time_ms, original_tx_id, operator)",
    15,
    "",
);
static INSERT_DECLINES: Shaped = Shaped::new(
    "INSERT OR FAIL INTO declines (gateway_id, entry_id, kind, terminal_id, terminal_seq, merchant_id, card_no, account_id, \
     amount_fen, reason_code, reason, balance_fen, time_ms, terminal_time_ms)",
    14,
    "",
);
static INSERT_EVENTS: Shaped = Shaped::new(
    "INSERT OR FAIL INTO events (gateway_id, entry_id, kind, time_ms, account_id, card_no, terminal_id, operator, payload)",
    9,
    "",
);
static UPSERT_ACCOUNTS: Shaped = Shaped::new(
    "INSERT INTO accounts (gateway_id, account_id, kind, status, opening_balance_fen, balance_fen, \
     single_payment_max_fen, daily_max_fen, opened_ms, updated_ms, entry_id)",
    11,
    " ON CONFLICT (gateway_id, account_id) DO UPDATE SET kind = excluded.kind, status = excluded.status, \
     balance_fen = excluded.balance_fen, single_payment_max_fen = excluded.single_payment_max_fen, \
     daily_max_fen = excluded.daily_max_fen, updated_ms = excluded.updated_ms, entry_id = excluded.entry_id \
     WHERE accounts.entry_id < excluded.entry_id",
);
/// The balances a batch leaves, one set-based update; binds the gateway id after the rows.
static UPDATE_BALANCES: Shaped = Shaped::new(
    "WITH v (account_id, balance_fen, kind, status, updated_ms, entry_id) AS (",
    6,
    ") UPDATE OR FAIL accounts SET balance_fen = COALESCE(v.balance_fen, accounts.balance_fen), \
     kind = COALESCE(v.kind, accounts.kind), status = COALESCE(v.status, accounts.status), \
     updated_ms = v.updated_ms, entry_id = v.entry_id FROM v WHERE accounts.gateway_id = ? \
     AND accounts.account_id = v.account_id AND accounts.entry_id < v.entry_id",
);
static UPSERT_CARDS: Shaped = Shaped::new(
    "INSERT INTO cards (gateway_id, card_no, account_id, status, expires_ms, issued_ms, updated_ms, entry_id)",
    8,
    " ON CONFLICT (gateway_id, card_no) DO UPDATE SET account_id = excluded.account_id, status = excluded.status, \
     expires_ms = excluded.expires_ms, issued_ms = excluded.issued_ms, updated_ms = excluded.updated_ms, \
     entry_id = excluded.entry_id WHERE cards.entry_id < excluded.entry_id",
);
static UPSERT_TERMINALS: Shaped = Shaped::new(
    "INSERT INTO terminals (gateway_id, terminal_id, kind, merchant_id, enabled, name, place, updated_ms, entry_id)",
    9,
    " ON CONFLICT (gateway_id, terminal_id) DO UPDATE SET kind = excluded.kind, merchant_id = excluded.merchant_id, \
     enabled = excluded.enabled, name = excluded.name, place = excluded.place, updated_ms = excluded.updated_ms, \
     entry_id = excluded.entry_id WHERE terminals.entry_id < excluded.entry_id",
);

/// Schema version 1. `IF NOT EXISTS` everywhere: the script is safe to re-run after a
/// crash between creating the tables and recording the version.
const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS gateways (
    gateway_id        INTEGER PRIMARY KEY,
    shipped_entry_id  INTEGER NOT NULL,
    shipped_time_ms   INTEGER NOT NULL,
    updated_ms        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    gateway_id         INTEGER NOT NULL,
    tx_id              INTEGER NOT NULL,
    entry_id           INTEGER NOT NULL,
    kind               TEXT    NOT NULL,
    account_id         INTEGER NOT NULL,
    card_no            INTEGER,
    terminal_id        INTEGER,
    terminal_seq       INTEGER,
    merchant_id        INTEGER,
    amount_fen         INTEGER NOT NULL,
    balance_after_fen  INTEGER NOT NULL,
    time_ms            INTEGER NOT NULL,
    terminal_time_ms   INTEGER,
    original_tx_id     INTEGER,
    operator           TEXT,
    PRIMARY KEY (gateway_id, tx_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS transactions_entry ON transactions (gateway_id, entry_id);
-- Only indexes that grow in arrival order (see ARCHITECTURE.md, "Central store").
CREATE INDEX IF NOT EXISTS transactions_time ON transactions (gateway_id, time_ms);
CREATE TABLE IF NOT EXISTS declines (
    gateway_id         INTEGER NOT NULL,
    entry_id           INTEGER NOT NULL,
    kind               TEXT    NOT NULL,
    terminal_id        INTEGER NOT NULL,
    terminal_seq       INTEGER NOT NULL,
    merchant_id        INTEGER NOT NULL,
    card_no            INTEGER NOT NULL,
    account_id         INTEGER,
    amount_fen         INTEGER NOT NULL,
    reason_code        INTEGER NOT NULL,
    reason             TEXT    NOT NULL,
    balance_fen        INTEGER NOT NULL,
    time_ms            INTEGER NOT NULL,
    terminal_time_ms   INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, entry_id)
);
CREATE INDEX IF NOT EXISTS declines_time ON declines (gateway_id, time_ms);
CREATE TABLE IF NOT EXISTS events (
    gateway_id   INTEGER NOT NULL,
    entry_id     INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    time_ms      INTEGER NOT NULL,
    account_id   INTEGER,
    card_no      INTEGER,
    terminal_id  INTEGER,
    operator     TEXT,
    payload      TEXT    NOT NULL,
    PRIMARY KEY (gateway_id, entry_id)
);
CREATE INDEX IF NOT EXISTS events_kind_time ON events (gateway_id, kind, time_ms);
CREATE TABLE IF NOT EXISTS accounts (
    gateway_id               INTEGER NOT NULL,
    account_id               INTEGER NOT NULL,
    kind                     TEXT    NOT NULL,
    status                   TEXT    NOT NULL,
    opening_balance_fen      INTEGER NOT NULL,
    balance_fen              INTEGER NOT NULL,
    single_payment_max_fen   INTEGER,
    daily_max_fen            INTEGER,
    opened_ms                INTEGER NOT NULL,
    updated_ms               INTEGER NOT NULL,
    entry_id                 INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, account_id)
);
CREATE TABLE IF NOT EXISTS cards (
    gateway_id   INTEGER NOT NULL,
    card_no      INTEGER NOT NULL,
    account_id   INTEGER NOT NULL,
    status       TEXT    NOT NULL,
    expires_ms   INTEGER,
    issued_ms    INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    entry_id     INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, card_no)
);
CREATE INDEX IF NOT EXISTS cards_account ON cards (gateway_id, account_id);
CREATE TABLE IF NOT EXISTS terminals (
    gateway_id   INTEGER NOT NULL,
    terminal_id  INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    merchant_id  INTEGER NOT NULL,
    enabled      INTEGER NOT NULL,
    name         TEXT    NOT NULL,
    place        TEXT    NOT NULL,
    updated_ms   INTEGER NOT NULL,
    entry_id     INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, terminal_id)
);
"#;

fn lock(w: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    w.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Migrations in order: (version, script). Append only.
const MIGRATIONS: &[(i64, &str)] = &[(1, SCHEMA_V1), (2, super::integrity::SQLITE_V2)];

const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].0 == SCHEMA_VERSION);

pub struct SqliteCentral {
    pub(crate) pool: SqlitePool,
    describe: String,
    /// The connection's worker thread, and whether it was given the background priority.
    writer: Arc<Mutex<Writer>>,
}

/// The SQLite connection's worker thread (sqlx runs each connection on a thread of its
/// own, named by us so that it can be found among the process's threads).
#[derive(Default)]
struct Writer {
    /// The name of the newest worker thread, set as sqlx spawns it.
    thread: Option<String>,
    /// The worker thread last given `BACKGROUND_NICE` (or tried: once per thread).
    tried: Option<String>,
    /// Whether that worked: only then does the normal priority need a new connection.
    lowered: bool,
}

impl SqliteCentral {
    /// Must be called inside a tokio runtime; does not touch the file.
    pub fn open(url: &str) -> Result<SqliteCentral, CentralError> {
        let options = SqliteConnectOptions::from_str(url).map_err(|e| CentralError::Config(e.to_string()))?;
        Ok(SqliteCentral::with_options(options, url.to_string()))
    }

    pub fn open_file(path: &Path) -> SqliteCentral {
        let options = SqliteConnectOptions::new().filename(path);
        SqliteCentral::with_options(options, format!("sqlite://{}", path.display()))
    }

    fn with_options(options: SqliteConnectOptions, describe: String) -> SqliteCentral {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("cache_size", CACHE_KIB_PRAGMA)
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES_PRAGMA);
        let writer = Arc::new(Mutex::new(Writer::default()));
        let named = writer.clone();
        let options = options.thread_name(move |id| {
            // Within the 15 bytes Linux keeps of a thread's name.
            let name = format!("cg-sqlite-{id}");
            lock(&named).thread = Some(name.clone());
            name
        });
        let options = super::statement_logging(options);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // Never replaced for its age: a replacement opened by a batch on the lowered
            // runtime would start lowered (`set_background`), and one embedded file
            // gains nothing from a fresh connection.
            .max_lifetime(None)
            .connect_lazy_with(options);
        SqliteCentral { pool, describe, writer }
    }

    /// Readies the writer for the next batch at the background priority (`background`,
    /// nice `BACKGROUND_NICE`) or the normal one. Called on the flusher's own thread,
    /// which is never lowered, before the batch's write, which may run on a lowered one
    /// (`priority.rs`): a connection opened there would start its worker thread lowered
    /// for good, since a thread inherits its starter's nice value and an unprivileged
    /// process cannot raise a thread's priority again. So the connection is opened here,
    /// before the batch takes it, and the normal priority comes with a new one: the
    /// lowered connection is closed and another opened from this thread. Best effort:
    /// where the thread cannot be found or reniced it keeps the priority it has, and where
    /// the store cannot be opened the batch's write reports why.
    pub async fn set_background(&self, background: bool) {
        // Opens the connection if there is none (or sqlx found it broken); dropped at the
        // end, it goes back to the pool for the batch.
        let Ok(conn) = self.pool.acquire().await else { return };
        let (thread, tried, lowered) = {
            let w = lock(&self.writer);
            (w.thread.clone(), w.tried.clone(), w.lowered)
        };
        let Some(thread) = thread else { return };
        if background {
            if tried.as_deref() == Some(thread.as_str()) {
                return;
            }
            let result = lower_thread(&thread);
            match &result {
                Ok(()) => {
                    tracing::debug!(thread = %thread, nice = BACKGROUND_NICE, "central store: SQLite writer yields to the terminals");
                    metrics::gauge!("cardgate_central_writer_yielding").set(1.0);
                }
                Err(e) => {
                    tracing::debug!(thread = %thread, error = %e, "central store: cannot lower the SQLite writer's priority");
                }
            }
            let mut w = lock(&self.writer);
            w.tried = Some(thread);
            w.lowered = result.is_ok();
        } else if lowered && tried.as_deref() == Some(thread.as_str()) {
            let _ = conn.close().await;
            lock(&self.writer).lowered = false;
            metrics::gauge!("cardgate_central_writer_yielding").set(0.0);
            if let Ok(fresh) = self.pool.acquire().await {
                drop(fresh);
                tracing::debug!("central store: SQLite writer back at normal priority (new connection)");
            }
        }
    }

    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn migrate(&self) -> Result<i64, CentralError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(classify)?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_version (
                version     INTEGER PRIMARY KEY,
                applied_ms  INTEGER NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        let found: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
        if found > SCHEMA_VERSION {
            return Err(CentralError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for &(version, script) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
            sqlx::raw_sql(script).execute(&mut *tx).await.map_err(classify)?;
            sqlx::query("INSERT INTO schema_version (version, applied_ms) VALUES (?, ?)")
                .bind(version)
                .bind(cardgate_domain::Clock::now_ms(&cardgate_domain::SystemClock))
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)?;
        Ok(found)
    }

    pub async fn cursor(&self, gateway_id: u64) -> Result<u64, CentralError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT shipped_entry_id FROM gateways WHERE gateway_id = ?")
            .bind(sql_id(gateway_id))
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        Ok(v.map_or(0, id_of_sql))
    }

    pub async fn gateways(&self) -> Result<Vec<(u64, u64)>, CentralError> {
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("SELECT gateway_id, shipped_entry_id FROM gateways ORDER BY gateway_id")
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
        Ok(rows.into_iter().map(|(g, c)| (id_of_sql(g), id_of_sql(c))).collect())
    }

    pub async fn transactions(&self, gateway_id: u64) -> Result<Vec<StoredTx>, CentralError> {
        let rows = sqlx::query(
            "SELECT tx_id, entry_id, kind, account_id, amount_fen, balance_after_fen FROM transactions \
             WHERE gateway_id = ? ORDER BY tx_id",
        )
        .bind(sql_id(gateway_id))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|r| {
                Ok(StoredTx {
                    tx_id: id_of_sql(r.try_get(0).map_err(classify)?),
                    entry_id: id_of_sql(r.try_get(1).map_err(classify)?),
                    kind: r.try_get(2).map_err(classify)?,
                    account: id_of_sql(r.try_get(3).map_err(classify)?),
                    amount_fen: r.try_get(4).map_err(classify)?,
                    balance_after_fen: r.try_get(5).map_err(classify)?,
                })
            })
            .collect()
    }

    pub async fn account_totals(&self, gateway_id: u64) -> Result<Vec<AccountTotal>, CentralError> {
        let rows = sqlx::query(
            "SELECT a.account_id, a.opening_balance_fen, a.balance_fen, \
                    COALESCE(SUM(t.amount_fen), 0), COUNT(t.tx_id) \
             FROM accounts a LEFT JOIN transactions t \
               ON t.gateway_id = a.gateway_id AND t.account_id = a.account_id \
             WHERE a.gateway_id = ? GROUP BY a.account_id ORDER BY a.account_id",
        )
        .bind(sql_id(gateway_id))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|r| {
                let count: i64 = r.try_get(4).map_err(classify)?;
                Ok(AccountTotal {
                    account: id_of_sql(r.try_get(0).map_err(classify)?),
                    opening_balance_fen: r.try_get(1).map_err(classify)?,
                    balance_fen: r.try_get(2).map_err(classify)?,
                    transactions_fen: r.try_get(3).map_err(classify)?,
                    transactions: u64::try_from(count).unwrap_or(0),
                })
            })
            .collect()
    }

    pub async fn entry_ids(&self, gateway_id: u64) -> Result<Vec<u64>, CentralError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT entry_id FROM transactions WHERE gateway_id = ?1 \
             UNION SELECT entry_id FROM declines WHERE gateway_id = ?1 \
             UNION SELECT entry_id FROM events WHERE gateway_id = ?1 \
             ORDER BY 1",
        )
        .bind(sql_id(gateway_id))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(ids.into_iter().map(id_of_sql).collect())
    }

    pub async fn event_payloads(&self, gateway_id: u64) -> Result<Vec<String>, CentralError> {
        sqlx::query_scalar("SELECT payload FROM events WHERE gateway_id = ? ORDER BY entry_id")
            .bind(sql_id(gateway_id))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }
}

impl Dialect for SqliteCentral {
    type Db = Sqlite;

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, CentralError> {
        // IMMEDIATE: the write lock is taken up front, so the cursor read below cannot
        // be overtaken by another writer.
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(classify)
    }

    async fn lock_cursor(
        tx: &mut Transaction<'static, Sqlite>,
        gateway_id: u64,
        _now_ms: i64,
    ) -> Result<u64, CentralError> {
        let central: Option<i64> = sqlx::query_scalar("SELECT shipped_entry_id FROM gateways WHERE gateway_id = ?")
            .bind(sql_id(gateway_id))
            .fetch_optional(&mut **tx)
            .await
            .map_err(classify)?;
        Ok(central.map_or(0, id_of_sql))
    }

    async fn write_rows(tx: &mut Transaction<'static, Sqlite>, b: &Batch, central: u64) -> Result<(), CentralError> {
        let gw = sql_id(b.gateway_id);
        let mut s = Interned::default();
        // Plain inserts of the rows of entries after the cursor: those before it are in
        // the store, those after it cannot be (`protocol.rs`), and one found anyway is
        // refused rather than skipped.
        let transactions: Vec<_> = b.transactions.iter().filter(|r| r.entry_id > central).collect();
        INSERT_TRANSACTIONS
            .write(tx, &transactions, &[], |a, t| {
                a.add(gw)?;
                a.add(sql_id(t.tx_id))?;
                a.add(sql_id(t.entry_id))?;
                a.add(s.get(t.kind))?;
                a.add(sql_id(t.account))?;
                a.add(t.card.map(sql_id))?;
                a.add(t.terminal.map(sql_id))?;
                a.add(t.terminal_seq.map(sql_id))?;
                a.add(t.merchant.map(sql_id))?;
                a.add(t.amount_fen)?;
                a.add(t.balance_after_fen)?;
                a.add(t.time_ms)?;
                a.add(t.terminal_time_ms)?;
                a.add(t.original_tx_id.map(sql_id))?;
                a.add(t.operator.clone())
            })
            .await?;

        let declines: Vec<_> = b.declines.iter().filter(|r| r.entry_id > central).collect();
        INSERT_DECLINES
            .write(tx, &declines, &[], |a, d| {
                a.add(gw)?;
                a.add(sql_id(d.entry_id))?;
                a.add(s.get(d.kind))?;
                a.add(sql_id(d.terminal))?;
                a.add(sql_id(d.terminal_seq))?;
                a.add(sql_id(d.merchant))?;
                a.add(sql_id(d.card))?;
                a.add(d.account.map(sql_id))?;
                a.add(d.amount_fen)?;
                a.add(d.reason_code)?;
                a.add(s.get(d.reason))?;
                a.add(d.balance_fen)?;
                a.add(d.time_ms)?;
                a.add(d.terminal_time_ms)
            })
            .await?;

        let events: Vec<_> = b.events.iter().filter(|r| r.entry_id > central).collect();
        INSERT_EVENTS
            .write(tx, &events, &[], |a, e| {
                a.add(gw)?;
                a.add(sql_id(e.entry_id))?;
                a.add(s.get(e.kind))?;
                a.add(e.time_ms)?;
                a.add(e.account.map(sql_id))?;
                a.add(e.card.map(sql_id))?;
                a.add(e.terminal.map(sql_id))?;
                a.add(e.operator.clone())?;
                a.add(e.payload.clone())
            })
            .await?;

        let accounts: Vec<_> = b.account_records().collect();
        UPSERT_ACCOUNTS
            .write(tx, &accounts, &[], |a, r| {
                a.add(gw)?;
                a.add(sql_id(r.account))?;
                a.add(s.get(r.kind))?;
                a.add(s.get(r.status))?;
                a.add(r.opening_balance_fen)?;
                a.add(r.balance_fen)?;
                a.add(r.single_payment_max_fen)?;
                a.add(r.daily_max_fen)?;
                a.add(r.opened_ms)?;
                a.add(r.updated_ms)?;
                a.add(sql_id(r.entry_id))
            })
            .await?;

        let balances: Vec<_> = b.balances().collect();
        UPDATE_BALANCES
            .write(tx, &balances, &[gw], |a, x| {
                a.add(sql_id(x.account))?;
                a.add(x.balance_fen)?;
                a.add(s.opt(x.kind))?;
                a.add(s.opt(x.status))?;
                a.add(x.updated_ms)?;
                a.add(sql_id(x.entry_id))
            })
            .await?;

        let cards: Vec<_> = b.cards.values().collect();
        UPSERT_CARDS
            .write(tx, &cards, &[], |a, c| {
                a.add(gw)?;
                a.add(sql_id(c.card))?;
                a.add(sql_id(c.account))?;
                a.add(s.get(c.status))?;
                a.add(c.expires_ms)?;
                a.add(c.issued_ms)?;
                a.add(c.updated_ms)?;
                a.add(sql_id(c.entry_id))
            })
            .await?;

        let terminals: Vec<_> = b.terminals.values().collect();
        UPSERT_TERMINALS
            .write(tx, &terminals, &[], |a, t| {
                a.add(gw)?;
                a.add(sql_id(t.terminal))?;
                a.add(s.get(t.kind))?;
                a.add(sql_id(t.merchant))?;
                a.add(t.enabled)?;
                a.add(t.name.clone())?;
                a.add(t.place.clone())?;
                a.add(t.updated_ms)?;
                a.add(sql_id(t.entry_id))
            })
            .await?;

        super::integrity::write_sqlite(tx, b, central).await
    }

    async fn stored_hash(
        tx: &mut Transaction<'static, Sqlite>,
        gateway_id: u64,
        entry_id: u64,
    ) -> Result<Option<[u8; 32]>, CentralError> {
        super::integrity::stored_hash_sqlite(tx, gateway_id, entry_id).await
    }

    async fn set_cursor(tx: &mut Transaction<'static, Sqlite>, b: &Batch, now_ms: i64) -> Result<(), CentralError> {
        let gw = sql_id(b.gateway_id);
        sqlx::query(
            "INSERT INTO gateways (gateway_id, shipped_entry_id, shipped_time_ms, updated_ms) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (gateway_id) DO UPDATE SET shipped_entry_id = excluded.shipped_entry_id, \
             shipped_time_ms = excluded.shipped_time_ms, updated_ms = excluded.updated_ms",
        )
        .bind(gw)
        .bind(sql_id(b.last_entry_id))
        .bind(b.last_time_ms)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(classify)?;
        Ok(())
    }
}
