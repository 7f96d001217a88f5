//! What the central store keeps of the journal's hash chain, and what the integrity
//! check reads back: every entry's chain hash (`entry_hashes`), each closed business
//! day (`day_closes`), and the totals per day and per account that are compared with
//! the gateway's own.
//!
//! One table per thing rather than a column on `transactions`, `declines` and `events`:
//! an entry's rows are spread over those three (a desk money movement lands in two), and
//! the hash belongs to the entry, once. Both back ends have the same two tables (schema
//! version 2); `entry_hashes` grows in entry order like the other tables' keys.
//!
//! Each batch also carries the hash of the entry before it (`Batch::prev_hash`), and the
//! write checks that it (or, for a batch overlapping what the store holds, the batch's
//! own hash of that entry) is the hash the store holds for its last entry: a journal
//! that is no longer the one the store was fed (a data directory restored from a backup
//! while the store went on) can never append to the store's chain (`Diverged`).

use rust_decimal::Decimal;
use sqlx::{Arguments, Postgres, Row, Sqlite, Transaction};

pub use crate::schema::DayCloseRow;
use crate::schema::{Batch, id_of_sql, sql_id};
use crate::statements::{CopyText, Shaped};
use crate::{CentralError, CentralStore, classify, fen_of};
use cardgate_domain::money::from_fen;

/// Schema version 2 in SQLite: entry hashes and day closes.
pub(crate) const SQLITE_V2: &str = r#"
CREATE TABLE IF NOT EXISTS entry_hashes (
    gateway_id   INTEGER NOT NULL,
    entry_id     INTEGER NOT NULL,
    hash         BLOB    NOT NULL,
    PRIMARY KEY (gateway_id, entry_id)
);
CREATE TABLE IF NOT EXISTS day_closes (
    gateway_id          INTEGER NOT NULL,
    business_day        TEXT    NOT NULL,
    tz_offset_minutes   INTEGER NOT NULL,
    first_entry_id      INTEGER NOT NULL,
    last_entry_id       INTEGER NOT NULL,
    hash                BLOB    NOT NULL,
    transactions        INTEGER NOT NULL,
    transactions_fen    INTEGER NOT NULL,
    complete            INTEGER NOT NULL,
    entry_id            INTEGER NOT NULL,
    closed_ms           INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, business_day)
);
"#;

/// Schema version 2 in PostgreSQL.
pub(crate) const PG_V2: &str = r#"
CREATE TABLE IF NOT EXISTS entry_hashes (
    gateway_id   BIGINT NOT NULL,
    entry_id     BIGINT NOT NULL,
    hash         BYTEA  NOT NULL,
    PRIMARY KEY (gateway_id, entry_id)
);
CREATE TABLE IF NOT EXISTS day_closes (
    gateway_id            BIGINT  NOT NULL,
    business_day          DATE    NOT NULL,
    tz_offset_minutes     INTEGER NOT NULL,
    first_entry_id        BIGINT  NOT NULL,
    last_entry_id         BIGINT  NOT NULL,
    hash                  BYTEA   NOT NULL,
    transactions          BIGINT  NOT NULL,
    transactions_amount   NUMERIC(20,2) NOT NULL,
    complete              BOOLEAN NOT NULL,
    entry_id              BIGINT  NOT NULL,
    closed_ms             BIGINT  NOT NULL,
    PRIMARY KEY (gateway_id, business_day)
);
"#;

/// One business day's approved money movements in `transactions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayTotal {
    /// Days since 1970-01-01 in local business time.
    pub day: i32,
    pub transactions: u64,
    pub amount_fen: i64,
}

/// The hash the store holds for `entry_id` of `gateway_id` (SQLite), inside a batch's
/// transaction.
pub(crate) async fn stored_hash_sqlite(
    tx: &mut Transaction<'static, Sqlite>,
    gateway_id: u64,
    entry_id: u64,
) -> Result<Option<[u8; 32]>, CentralError> {
    let v: Option<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM entry_hashes WHERE gateway_id = ? AND entry_id = ?")
        .bind(sql_id(gateway_id))
        .bind(sql_id(entry_id))
        .fetch_optional(&mut **tx)
        .await
        .map_err(classify)?;
    Ok(v.and_then(|h| h.try_into().ok()))
}

pub(crate) async fn stored_hash_pg(
    tx: &mut Transaction<'static, Postgres>,
    gateway_id: u64,
    entry_id: u64,
) -> Result<Option<[u8; 32]>, CentralError> {
    let v: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM entry_hashes WHERE gateway_id = $1 AND entry_id = $2")
            .bind(sql_id(gateway_id))
            .bind(sql_id(entry_id))
            .fetch_optional(&mut **tx)
            .await
            .map_err(classify)?;
    Ok(v.and_then(|h| h.try_into().ok()))
}

/// Every entry's hash (SQLite), in the fixed shapes of `sqlite.rs`'s other inserts, and
/// `OR FAIL` as they are (no statement journal: see there).
static INSERT_HASHES_SQLITE: Shaped =
    Shaped::new("INSERT OR FAIL INTO entry_hashes (gateway_id, entry_id, hash)", 3, "");

/// Writes the entry hashes and day closes of a batch's entries after `central` (the
/// cursor just locked), in its transaction (SQLite). Plain inserts, as for the other
/// append-only tables (`protocol.rs`): those rows cannot be in the store, and one found
/// there anyway is refused.
pub(crate) async fn write_sqlite(
    tx: &mut Transaction<'static, Sqlite>,
    b: &Batch,
    central: u64,
) -> Result<(), CentralError> {
    let gw = sql_id(b.gateway_id);
    let hashes: Vec<_> = b.hashes.iter().filter(|(id, _)| *id > central).collect();
    INSERT_HASHES_SQLITE
        .write(tx, &hashes, &[], |a, (id, hash)| {
            a.add(gw)?;
            a.add(sql_id(*id))?;
            a.add(hash.to_vec())
        })
        .await?;
    for c in b.day_closes.iter().filter(|c| c.entry_id > central) {
        sqlx::query(
            "INSERT INTO day_closes (gateway_id, business_day, tz_offset_minutes, first_entry_id, last_entry_id, \
             hash, transactions, transactions_fen, complete, entry_id, closed_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(gw)
        .bind(&c.day)
        .bind(c.tz_offset_minutes)
        .bind(sql_id(c.first_entry_id))
        .bind(sql_id(c.last_entry_id))
        .bind(c.hash.to_vec())
        .bind(sql_id(c.transactions))
        .bind(c.transactions_fen)
        .bind(c.complete)
        .bind(sql_id(c.entry_id))
        .bind(c.closed_ms)
        .execute(&mut **tx)
        .await
        .map_err(classify)?;
    }
    Ok(())
}

/// Writes the entry hashes and day closes of a batch's entries after `central`
/// (PostgreSQL), in its transaction: the hashes by COPY in `copy`'s buffer, as the other
/// append-only tables (`protocol.rs`), so that one found there anyway is refused.
pub(crate) async fn write_pg(
    tx: &mut Transaction<'static, Postgres>,
    b: &Batch,
    central: u64,
    copy: &mut CopyText,
) -> Result<(), CentralError> {
    let gw = sql_id(b.gateway_id);
    for (id, hash) in b.hashes.iter().filter(|(id, _)| *id > central) {
        copy.id(gw);
        copy.id(sql_id(*id));
        copy.bytea(hash);
        copy.end_row();
    }
    copy.send(tx, "COPY entry_hashes (gateway_id, entry_id, hash) FROM STDIN")
        .await?;
    for c in b.day_closes.iter().filter(|c| c.entry_id > central) {
        sqlx::query(
            "INSERT INTO day_closes (gateway_id, business_day, tz_offset_minutes, first_entry_id, last_entry_id, \
             hash, transactions, transactions_amount, complete, entry_id, closed_ms) \
             VALUES ($1, $2::DATE, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(gw)
        .bind(&c.day)
        .bind(c.tz_offset_minutes)
        .bind(sql_id(c.first_entry_id))
        .bind(sql_id(c.last_entry_id))
        .bind(c.hash.to_vec())
        .bind(sql_id(c.transactions))
        .bind(from_fen(c.transactions_fen))
        .bind(c.complete)
        .bind(sql_id(c.entry_id))
        .bind(c.closed_ms)
        .execute(&mut **tx)
        .await
        .map_err(classify)?;
    }
    Ok(())
}

fn hash_of(v: Vec<u8>, entry_id: u64) -> Result<[u8; 32], CentralError> {
    v.try_into()
        .map_err(|_| CentralError::Data(format!("entry {entry_id}'s hash is not 32 bytes")))
}

impl CentralStore {
    /// The hash the store holds for one of the gateway's entries.
    pub async fn entry_hash(&self, gateway_id: u64, entry_id: u64) -> Result<Option<[u8; 32]>, CentralError> {
        let page = self.entry_hashes(gateway_id, entry_id.saturating_sub(1), 1).await?;
        Ok(page.into_iter().find(|(id, _)| *id == entry_id).map(|(_, h)| h))
    }

    /// Up to `limit` entry hashes of `gateway_id` after `after`, in entry order.
    pub async fn entry_hashes(
        &self,
        gateway_id: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, [u8; 32])>, CentralError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(i64, Vec<u8>)> = match self {
            CentralStore::Sqlite(s) => {
                sqlx::query_as(
                    "SELECT entry_id, hash FROM entry_hashes WHERE gateway_id = ? AND entry_id > ? \
                     ORDER BY entry_id LIMIT ?",
                )
                .bind(sql_id(gateway_id))
                .bind(sql_id(after))
                .bind(limit)
                .fetch_all(s.pool())
                .await
            }
            CentralStore::Postgres(p) => {
                sqlx::query_as(
                    "SELECT entry_id, hash FROM entry_hashes WHERE gateway_id = $1 AND entry_id > $2 \
                     ORDER BY entry_id LIMIT $3",
                )
                .bind(sql_id(gateway_id))
                .bind(sql_id(after))
                .bind(limit)
                .fetch_all(p.pool())
                .await
            }
        }
        .map_err(classify)?;
        rows.into_iter()
            .map(|(id, h)| {
                let id = id_of_sql(id);
                Ok((id, hash_of(h, id)?))
            })
            .collect()
    }

    /// Every closed day of `gateway_id`, in day order.
    pub async fn day_closes(&self, gateway_id: u64) -> Result<Vec<DayCloseRow>, CentralError> {
        let rows = match self {
            CentralStore::Sqlite(s) => sqlx::query(
                "SELECT business_day, tz_offset_minutes, first_entry_id, last_entry_id, hash, transactions, \
                     transactions_fen, complete, entry_id, closed_ms FROM day_closes WHERE gateway_id = ? \
                     ORDER BY business_day",
            )
            .bind(sql_id(gateway_id))
            .fetch_all(s.pool())
            .await
            .map_err(classify)?
            .iter()
            .map(|r| -> Result<_, sqlx::Error> {
                Ok((
                    r.try_get::<String, _>(0)?,
                    r.try_get::<i32, _>(1)?,
                    r.try_get::<i64, _>(2)?,
                    r.try_get::<i64, _>(3)?,
                    r.try_get::<Vec<u8>, _>(4)?,
                    r.try_get::<i64, _>(5)?,
                    r.try_get::<i64, _>(6)?,
                    r.try_get::<bool, _>(7)?,
                    r.try_get::<i64, _>(8)?,
                    r.try_get::<i64, _>(9)?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(classify)?,
            CentralStore::Postgres(p) => {
                let rows = sqlx::query(
                    "SELECT business_day::TEXT, tz_offset_minutes, first_entry_id, last_entry_id, hash, \
                     transactions, transactions_amount, complete, entry_id, closed_ms FROM day_closes \
                     WHERE gateway_id = $1 ORDER BY business_day",
                )
                .bind(sql_id(gateway_id))
                .fetch_all(p.pool())
                .await
                .map_err(classify)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let amount: Decimal = r.try_get(6).map_err(classify)?;
                    out.push((
                        r.try_get::<String, _>(0).map_err(classify)?,
                        r.try_get::<i32, _>(1).map_err(classify)?,
                        r.try_get::<i64, _>(2).map_err(classify)?,
                        r.try_get::<i64, _>(3).map_err(classify)?,
                        r.try_get::<Vec<u8>, _>(4).map_err(classify)?,
                        r.try_get::<i64, _>(5).map_err(classify)?,
                        fen_of(amount)?,
                        r.try_get::<bool, _>(7).map_err(classify)?,
                        r.try_get::<i64, _>(8).map_err(classify)?,
                        r.try_get::<i64, _>(9).map_err(classify)?,
                    ));
                }
                out
            }
        };
        rows.into_iter()
            .map(|(day, tz, first, last, hash, n, fen, complete, entry, closed)| {
                let last_entry_id = id_of_sql(last);
                Ok(DayCloseRow {
                    day,
                    tz_offset_minutes: tz,
                    first_entry_id: id_of_sql(first),
                    last_entry_id,
                    hash: hash_of(hash, last_entry_id)?,
                    transactions: id_of_sql(n),
                    transactions_fen: fen,
                    complete,
                    entry_id: id_of_sql(entry),
                    closed_ms: closed,
                })
            })
            .collect()
    }

    /// Approved money movements per business day (local time `tz_offset_minutes` ahead
    /// of UTC) in `transactions`, of the entries through `through`, in day order.
    pub async fn day_totals(
        &self,
        gateway_id: u64,
        tz_offset_minutes: i32,
        through: u64,
    ) -> Result<Vec<DayTotal>, CentralError> {
        let offset_ms = i64::from(tz_offset_minutes) * 60_000;
        let rows: Vec<(i64, i64, i64)> = match self {
            CentralStore::Sqlite(s) => sqlx::query_as(
                "SELECT (time_ms + ?2) / 86400000 AS day, COUNT(*), COALESCE(SUM(amount_fen), 0) \
                     FROM transactions WHERE gateway_id = ?1 AND entry_id <= ?3 GROUP BY day ORDER BY day",
            )
            .bind(sql_id(gateway_id))
            .bind(offset_ms)
            .bind(sql_id(through))
            .fetch_all(s.pool())
            .await
            .map_err(classify)?,
            CentralStore::Postgres(p) => {
                let rows = sqlx::query(
                    "SELECT (time_ms + $2) / 86400000 AS day, COUNT(*), COALESCE(SUM(amount), 0)::NUMERIC(20,2) \
                     FROM transactions WHERE gateway_id = $1 AND entry_id <= $3 GROUP BY day ORDER BY day",
                )
                .bind(sql_id(gateway_id))
                .bind(offset_ms)
                .bind(sql_id(through))
                .fetch_all(p.pool())
                .await
                .map_err(classify)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let sum: Decimal = r.try_get(2).map_err(classify)?;
                    out.push((
                        r.try_get::<i64, _>(0).map_err(classify)?,
                        r.try_get::<i64, _>(1).map_err(classify)?,
                        fen_of(sum)?,
                    ));
                }
                out
            }
        };
        rows.into_iter()
            .map(|(day, n, fen)| {
                Ok(DayTotal {
                    day: i32::try_from(day).map_err(|_| CentralError::Data(format!("business day {day}")))?,
                    transactions: u64::try_from(n).unwrap_or(0),
                    amount_fen: fen,
                })
            })
            .collect()
    }

    /// Every account of `gateway_id`: its opening balance, its balance now, what all its
    /// transactions add up to, and the balance its transactions through entry `through`
    /// leave. One statement, so the first three are one snapshot.
    pub async fn account_sums(&self, gateway_id: u64, through: u64) -> Result<Vec<AccountSum>, CentralError> {
        let rows = match self {
            CentralStore::Sqlite(s) => {
                let rows: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
                    "SELECT a.account_id, a.opening_balance_fen, a.balance_fen, COALESCE(SUM(t.amount_fen), 0), \
                            COALESCE(SUM(CASE WHEN t.entry_id <= ?2 THEN t.amount_fen ELSE 0 END), 0) \
                     FROM accounts a LEFT JOIN transactions t \
                       ON t.gateway_id = a.gateway_id AND t.account_id = a.account_id \
                     WHERE a.gateway_id = ?1 GROUP BY a.account_id ORDER BY a.account_id",
                )
                .bind(sql_id(gateway_id))
                .bind(sql_id(through))
                .fetch_all(s.pool())
                .await
                .map_err(classify)?;
                rows
            }
            CentralStore::Postgres(p) => {
                let rows = sqlx::query(
                    "SELECT a.account_id, a.opening_balance, a.balance, COALESCE(SUM(t.amount), 0)::NUMERIC(20,2), \
                            COALESCE(SUM(CASE WHEN t.entry_id <= $2 THEN t.amount ELSE 0 END), 0)::NUMERIC(20,2) \
                     FROM accounts a LEFT JOIN transactions t \
                       ON t.gateway_id = a.gateway_id AND t.account_id = a.account_id \
                     WHERE a.gateway_id = $1 GROUP BY a.account_id, a.opening_balance, a.balance \
                     ORDER BY a.account_id",
                )
                .bind(sql_id(gateway_id))
                .bind(sql_id(through))
                .fetch_all(p.pool())
                .await
                .map_err(classify)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push((
                        r.try_get::<i64, _>(0).map_err(classify)?,
                        fen_of(r.try_get(1).map_err(classify)?)?,
                        fen_of(r.try_get(2).map_err(classify)?)?,
                        fen_of(r.try_get(3).map_err(classify)?)?,
                        fen_of(r.try_get(4).map_err(classify)?)?,
                    ));
                }
                out
            }
        };
        Ok(rows
            .into_iter()
            .map(|(account, opening, balance, all, through_sum)| AccountSum {
                account: id_of_sql(account),
                opening_balance_fen: opening,
                balance_fen: balance,
                transactions_fen: all,
                through_fen: opening + through_sum,
            })
            .collect())
    }
}

/// One account as the store holds it, for the integrity check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountSum {
    pub account: u64,
    pub opening_balance_fen: i64,
    pub balance_fen: i64,
    /// What all its transactions add up to.
    pub transactions_fen: i64,
    /// Its opening balance plus its transactions through the entry asked about.
    pub through_fen: i64,
}
