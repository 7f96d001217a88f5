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
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use super::protocol::Dialect;
use super::schema::{Batch, SCHEMA_VERSION, id_of_sql, sql_id};
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
/// pages, 4 MiB) made one batch in every two or three pay for a checkpoint; 16,000
/// (64 MiB) spreads that over many batches. Readers see everything either way.
const WAL_AUTOCHECKPOINT_PAGES_PRAGMA: &str = "16000";

/// Rows per multi-row statement, largest first. Every statement the flusher runs has
/// one of these shapes, so that each is prepared once per connection and reused (sqlx
/// keeps prepared statements by their text); a batch of n rows takes n / 256 statements
/// of the largest shape and at most 7 of each smaller one. One statement per row would
/// cost a round trip to sqlx's SQLite worker thread per row; one statement per batch, a
/// new statement to parse and plan every time.
const SHAPES: [usize; 4] = [256, 32, 4, 1];

/// SQLite's limit on bound parameters per statement (SQLITE_MAX_VARIABLE_NUMBER, since
/// 3.32; the bundled library is newer): the widest row (15 columns) in the largest shape,
/// plus the balance update's trailing gateway id, must stay under it.
const BINDS_MAX: usize = 32_766;

const _: () = assert!(SHAPES[0] * 15 + 1 <= BINDS_MAX);

/// `rows` cut into statements of the shapes above.
fn shaped<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = SHAPES.into_iter().find(|&s| s <= rows.len())?;
        let (head, tail) = rows.split_at(n);
        rows = tail;
        Some(head)
    })
}

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

/// Migrations in order: (version, script). Append only.
const MIGRATIONS: &[(i64, &str)] = &[(1, SCHEMA_V1)];

const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].0 == SCHEMA_VERSION);

pub struct SqliteCentral {
    pool: SqlitePool,
    describe: String,
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
        let options = super::statement_logging(options);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        SqliteCentral { pool, describe }
    }

    pub fn describe(&self) -> String {
        self.describe.clone()
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
        // Plain inserts of the rows of entries after the cursor: those before it are in
        // the store, those after it cannot be (`protocol.rs`), and one found anyway is
        // refused rather than skipped.
        let transactions: Vec<_> = b.transactions.iter().filter(|r| r.entry_id > central).collect();
        for chunk in shaped(&transactions) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO transactions (gateway_id, tx_id, entry_id, kind, account_id, card_no, terminal_id, \
                 terminal_seq, merchant_id, amount_fen, balance_after_fen, time_ms, terminal_time_ms, \
                 original_tx_id, operator) ",
            );
            q.push_values(chunk, |mut r, t| {
                r.push_bind(gw)
                    .push_bind(sql_id(t.tx_id))
                    .push_bind(sql_id(t.entry_id))
                    .push_bind(t.kind)
                    .push_bind(sql_id(t.account))
                    .push_bind(t.card.map(sql_id))
                    .push_bind(t.terminal.map(sql_id))
                    .push_bind(t.terminal_seq.map(sql_id))
                    .push_bind(t.merchant.map(sql_id))
                    .push_bind(t.amount_fen)
                    .push_bind(t.balance_after_fen)
                    .push_bind(t.time_ms)
                    .push_bind(t.terminal_time_ms)
                    .push_bind(t.original_tx_id.map(sql_id))
                    .push_bind(t.operator.clone());
            });
            q.build().execute(&mut **tx).await.map_err(classify)?;
        }

        let declines: Vec<_> = b.declines.iter().filter(|r| r.entry_id > central).collect();
        for chunk in shaped(&declines) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO declines (gateway_id, entry_id, kind, terminal_id, terminal_seq, merchant_id, card_no, \
                 account_id, amount_fen, reason_code, reason, balance_fen, time_ms, terminal_time_ms) ",
            );
            q.push_values(chunk, |mut r, d| {
                r.push_bind(gw)
                    .push_bind(sql_id(d.entry_id))
                    .push_bind(d.kind)
                    .push_bind(sql_id(d.terminal))
                    .push_bind(sql_id(d.terminal_seq))
                    .push_bind(sql_id(d.merchant))
                    .push_bind(sql_id(d.card))
                    .push_bind(d.account.map(sql_id))
                    .push_bind(d.amount_fen)
                    .push_bind(d.reason_code)
                    .push_bind(d.reason)
                    .push_bind(d.balance_fen)
                    .push_bind(d.time_ms)
                    .push_bind(d.terminal_time_ms);
            });
            q.build().execute(&mut **tx).await.map_err(classify)?;
        }

        let events: Vec<_> = b.events.iter().filter(|r| r.entry_id > central).collect();
        for chunk in shaped(&events) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (gateway_id, entry_id, kind, time_ms, account_id, card_no, terminal_id, \
                 operator, payload) ",
            );
            q.push_values(chunk, |mut r, e| {
                r.push_bind(gw)
                    .push_bind(sql_id(e.entry_id))
                    .push_bind(e.kind)
                    .push_bind(e.time_ms)
                    .push_bind(e.account.map(sql_id))
                    .push_bind(e.card.map(sql_id))
                    .push_bind(e.terminal.map(sql_id))
                    .push_bind(e.operator.clone())
                    .push_bind(e.payload.clone());
            });
            q.build().execute(&mut **tx).await.map_err(classify)?;
        }

        let accounts: Vec<_> = b.account_records().collect();
        for chunk in shaped(&accounts) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO accounts (gateway_id, account_id, kind, status, opening_balance_fen, balance_fen, \
                 single_payment_max_fen, daily_max_fen, opened_ms, updated_ms, entry_id) ",
            );
            q.push_values(chunk, |mut r, a| {
                r.push_bind(gw)
                    .push_bind(sql_id(a.account))
                    .push_bind(a.kind)
                    .push_bind(a.status)
                    .push_bind(a.opening_balance_fen)
                    .push_bind(a.balance_fen)
                    .push_bind(a.single_payment_max_fen)
                    .push_bind(a.daily_max_fen)
                    .push_bind(a.opened_ms)
                    .push_bind(a.updated_ms)
                    .push_bind(sql_id(a.entry_id));
            });
            q.push(
                " ON CONFLICT (gateway_id, account_id) DO UPDATE SET kind = excluded.kind, status = excluded.status, \
                 balance_fen = excluded.balance_fen, single_payment_max_fen = excluded.single_payment_max_fen, \
                 daily_max_fen = excluded.daily_max_fen, updated_ms = excluded.updated_ms, \
                 entry_id = excluded.entry_id WHERE accounts.entry_id < excluded.entry_id",
            );
            q.build().execute(&mut **tx).await.map_err(classify)?;
        }

        let balances: Vec<_> = b.balances().collect();
        for chunk in shaped(&balances) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "WITH v (account_id, balance_fen, kind, status, updated_ms, entry_id) AS (",
            );
            q.push_values(chunk, |mut r, x| {
                r.push_bind(sql_id(x.account))
                    .push_bind(x.balance_fen)
                    .push_bind(x.kind)
                    .push_bind(x.status)
                    .push_bind(x.updated_ms)
                    .push_bind(sql_id(x.entry_id));
            });
            q.push(
                ") UPDATE accounts SET balance_fen = COALESCE(v.balance_fen, accounts.balance_fen), \
                 kind = COALESCE(v.kind, accounts.kind), status = COALESCE(v.status, accounts.status), \
                 updated_ms = v.updated_ms, entry_id = v.entry_id FROM v WHERE accounts.gateway_id = ",
            );
            q.push_bind(gw);
            q.push(" AND accounts.account_id = v.account_id AND accounts.entry_id < v.entry_id");
            q.build().execute(&mut **tx).await.map_err(classify)?;
        }

        let cards: Vec<_> = b.cards.values().collect();
        for chunk in shaped(&cards) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO cards (gateway_id, card_no, account_id, status, expires_ms, issued_ms, updated_ms, \
                 entry_id) ",
            );
            q.push_values(chunk, |mut r, c| {
                r.push_bind(gw)
                    .push_bind(sql_id(c.card))
                    .push_bind(sql_id(c.account))
                    .push_bind(c.status)
                    .push_bind(c.expires_ms)
                    .push_bind(c.issued_ms)
                    .push_bind(c.updated_ms)
                    .push_bind(sql_id(c.entry_id));
            });
            q.push(
                " ON CONFLICT (gateway_id, card_no) DO UPDATE SET account_id = excluded.account_id, \
                 status = excluded.status, expires_ms = excluded.expires_ms, issued_ms = excluded.issued_ms, \
                 updated_ms = excluded.updated_ms, entry_id = excluded.entry_id \
                 WHERE cards.entry_id < excluded.entry_id",
            );
            q.build().execute(&mut **tx).await.map_err(classify)?;
        }

        let terminals: Vec<_> = b.terminals.values().collect();
        for chunk in shaped(&terminals) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO terminals (gateway_id, terminal_id, kind, merchant_id, enabled, name, place, updated_ms, \
                 entry_id) ",
            );
            q.push_values(chunk, |mut r, t| {
                r.push_bind(gw)
                    .push_bind(sql_id(t.terminal))
                    .push_bind(t.kind)
                    .push_bind(sql_id(t.merchant))
                    .push_bind(t.enabled)
                    .push_bind(t.name.clone())
                    .push_bind(t.place.clone())
                    .push_bind(t.updated_ms)
                    .push_bind(sql_id(t.entry_id));
            });
            q.push(
                " ON CONFLICT (gateway_id, terminal_id) DO UPDATE SET kind = excluded.kind, \
                 merchant_id = excluded.merchant_id, enabled = excluded.enabled, name = excluded.name, \
                 place = excluded.place, updated_ms = excluded.updated_ms, entry_id = excluded.entry_id \
                 WHERE terminals.entry_id < excluded.entry_id",
            );
            q.build().execute(&mut **tx).await.map_err(classify)?;
        }

        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_has_one_of_the_few_shapes_and_all_rows_are_covered() {
        for n in [0usize, 1, 3, 4, 31, 255, 256, 257, 16_000, 16_383] {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = shaped(&rows).collect();
            assert!(chunks.iter().all(|c| SHAPES.contains(&c.len())), "{n}");
            assert_eq!(chunks.concat(), rows, "{n}: every row once, in order");
            let smaller = chunks.iter().filter(|c| c.len() < SHAPES[0]).count();
            assert!(smaller <= 3 * 7, "{n}: {smaller} statements below the largest shape");
        }
    }
}
