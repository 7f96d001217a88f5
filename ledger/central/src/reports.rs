//! What the business-day reports read from the central store: per terminal and kind the
//! day's movements, the day's declines, and sales of earlier days that arrived late. A
//! sale counts on its business day: an online one when the gateway decided it
//! (`time_ms`), an offline one when it was sold (`terminal_time_ms`, the time the
//! gateway accepted for it). Amounts come back as integer fen, signed as stored (a
//! purchase negative).

use sqlx::Row;

use crate::postgres::PgCentral;
use crate::schema::{id_of_sql, sql_id};
use crate::sqlite::SqliteCentral;
use crate::{CentralError, CentralStore, classify, fen_of};

/// An offline sale is posted at most this long before its sale time (the gateway's
/// tolerance for a terminal clock ahead of its own), so a day's sales are all posted at
/// or after the day's start minus it: the lower bound that lets the time index serve.
const POSTED_BEFORE_SOLD_MS: i64 = 10 * 60_000;

/// One terminal's movements of one kind on a day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindTotal {
    pub terminal: u64,
    pub merchant: u64,
    /// `purchase`, `reversal`, `offline_purchase`.
    pub kind: String,
    pub count: u64,
    /// Signed as stored: purchases negative, reversals positive.
    pub sum_fen: i64,
}

/// A sale of an earlier day posted on this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LateSale {
    pub entry_id: u64,
    pub terminal: u64,
    pub merchant: u64,
    pub sale_time_ms: i64,
    pub amount_fen: i64,
}

const KIND_TOTALS_SQLITE: &str = "SELECT terminal_id, COALESCE(merchant_id, 0), kind, COUNT(*), SUM(amount_fen) \
     FROM transactions WHERE gateway_id = ? AND terminal_id IS NOT NULL AND entry_id <= ? AND time_ms >= ? \
     AND ((kind = 'offline_purchase' AND terminal_time_ms >= ? AND terminal_time_ms < ?) \
       OR (kind <> 'offline_purchase' AND time_ms >= ? AND time_ms < ?)) \
     GROUP BY terminal_id, COALESCE(merchant_id, 0), kind ORDER BY 1, 3";

const KIND_TOTALS_PG: &str = "SELECT terminal_id, COALESCE(merchant_id, 0), kind, COUNT(*), SUM(amount) \
     FROM transactions WHERE gateway_id = $1 AND terminal_id IS NOT NULL AND entry_id <= $2 AND time_ms >= $3 \
     AND ((kind = 'offline_purchase' AND terminal_time_ms >= $4 AND terminal_time_ms < $5) \
       OR (kind <> 'offline_purchase' AND time_ms >= $6 AND time_ms < $7)) \
     GROUP BY terminal_id, COALESCE(merchant_id, 0), kind ORDER BY 1, 3";

const DECLINES_SQLITE: &str = "SELECT terminal_id, COUNT(*) FROM declines WHERE gateway_id = ? AND time_ms >= ? \
     AND time_ms < ? GROUP BY terminal_id ORDER BY 1";
const DECLINES_PG: &str = "SELECT terminal_id, COUNT(*) FROM declines WHERE gateway_id = $1 AND time_ms >= $2 \
     AND time_ms < $3 GROUP BY terminal_id ORDER BY 1";

const LATE_SQLITE: &str = "SELECT entry_id, terminal_id, COALESCE(merchant_id, 0), terminal_time_ms, -amount_fen \
     FROM transactions WHERE gateway_id = ? AND kind = 'offline_purchase' AND time_ms >= ? AND time_ms < ? \
     AND terminal_time_ms < ? ORDER BY entry_id";
const LATE_PG: &str = "SELECT entry_id, terminal_id, COALESCE(merchant_id, 0), terminal_time_ms, -amount \
     FROM transactions WHERE gateway_id = $1 AND kind = 'offline_purchase' AND time_ms >= $2 AND time_ms < $3 \
     AND terminal_time_ms < $4 ORDER BY entry_id";

impl CentralStore {
    /// Every terminal's movements on the business day `[start_ms, end_ms)`, by kind,
    /// counting only entries up to `through_entry`.
    pub async fn terminal_day_totals(
        &self,
        gateway_id: u64,
        start_ms: i64,
        end_ms: i64,
        through_entry: u64,
    ) -> Result<Vec<KindTotal>, CentralError> {
        let posted_from = start_ms - POSTED_BEFORE_SOLD_MS;
        let through = sql_id(through_entry.min(i64::MAX as u64));
        match self {
            CentralStore::Sqlite(SqliteCentral { pool, .. }) => {
                let rows = sqlx::query(KIND_TOTALS_SQLITE)
                    .bind(sql_id(gateway_id))
                    .bind(through)
                    .bind(posted_from)
                    .bind(start_ms)
                    .bind(end_ms)
                    .bind(start_ms)
                    .bind(end_ms)
                    .fetch_all(pool)
                    .await
                    .map_err(classify)?;
                rows.iter()
                    .map(|r| {
                        Ok(KindTotal {
                            terminal: id_of_sql(r.try_get(0).map_err(classify)?),
                            merchant: id_of_sql(r.try_get(1).map_err(classify)?),
                            kind: r.try_get(2).map_err(classify)?,
                            count: count_of(r.try_get(3).map_err(classify)?),
                            sum_fen: r.try_get(4).map_err(classify)?,
                        })
                    })
                    .collect()
            }
            CentralStore::Postgres(PgCentral { pool, .. }) => {
                let rows = sqlx::query(KIND_TOTALS_PG)
                    .bind(sql_id(gateway_id))
                    .bind(through)
                    .bind(posted_from)
                    .bind(start_ms)
                    .bind(end_ms)
                    .bind(start_ms)
                    .bind(end_ms)
                    .fetch_all(pool)
                    .await
                    .map_err(classify)?;
                rows.iter()
                    .map(|r| {
                        Ok(KindTotal {
                            terminal: id_of_sql(r.try_get(0).map_err(classify)?),
                            merchant: id_of_sql(r.try_get(1).map_err(classify)?),
                            kind: r.try_get(2).map_err(classify)?,
                            count: count_of(r.try_get(3).map_err(classify)?),
                            sum_fen: fen_of(r.try_get(4).map_err(classify)?)?,
                        })
                    })
                    .collect()
            }
        }
    }

    /// Declined requests per terminal decided in `[start_ms, end_ms)`.
    pub async fn day_declines(
        &self,
        gateway_id: u64,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<(u64, u64)>, CentralError> {
        let rows: Vec<(i64, i64)> = match self {
            CentralStore::Sqlite(SqliteCentral { pool, .. }) => sqlx::query_as(DECLINES_SQLITE)
                .bind(sql_id(gateway_id))
                .bind(start_ms)
                .bind(end_ms)
                .fetch_all(pool)
                .await
                .map_err(classify)?,
            CentralStore::Postgres(PgCentral { pool, .. }) => sqlx::query_as(DECLINES_PG)
                .bind(sql_id(gateway_id))
                .bind(start_ms)
                .bind(end_ms)
                .fetch_all(pool)
                .await
                .map_err(classify)?,
        };
        Ok(rows.into_iter().map(|(t, n)| (id_of_sql(t), count_of(n))).collect())
    }

    /// Offline sales posted in `[start_ms, end_ms)` that were sold before `sold_before_ms`
    /// (an earlier day), with their entry ids, amounts positive.
    pub async fn late_sales(
        &self,
        gateway_id: u64,
        start_ms: i64,
        end_ms: i64,
        sold_before_ms: i64,
    ) -> Result<Vec<LateSale>, CentralError> {
        match self {
            CentralStore::Sqlite(SqliteCentral { pool, .. }) => {
                let rows = sqlx::query(LATE_SQLITE)
                    .bind(sql_id(gateway_id))
                    .bind(start_ms)
                    .bind(end_ms)
                    .bind(sold_before_ms)
                    .fetch_all(pool)
                    .await
                    .map_err(classify)?;
                rows.iter()
                    .map(|r| {
                        Ok(LateSale {
                            entry_id: id_of_sql(r.try_get(0).map_err(classify)?),
                            terminal: id_of_sql(r.try_get(1).map_err(classify)?),
                            merchant: id_of_sql(r.try_get(2).map_err(classify)?),
                            sale_time_ms: r.try_get(3).map_err(classify)?,
                            amount_fen: r.try_get(4).map_err(classify)?,
                        })
                    })
                    .collect()
            }
            CentralStore::Postgres(PgCentral { pool, .. }) => {
                let rows = sqlx::query(LATE_PG)
                    .bind(sql_id(gateway_id))
                    .bind(start_ms)
                    .bind(end_ms)
                    .bind(sold_before_ms)
                    .fetch_all(pool)
                    .await
                    .map_err(classify)?;
                rows.iter()
                    .map(|r| {
                        Ok(LateSale {
                            entry_id: id_of_sql(r.try_get(0).map_err(classify)?),
                            terminal: id_of_sql(r.try_get(1).map_err(classify)?),
                            merchant: id_of_sql(r.try_get(2).map_err(classify)?),
                            sale_time_ms: r.try_get(3).map_err(classify)?,
                            amount_fen: fen_of(r.try_get(4).map_err(classify)?)?,
                        })
                    })
                    .collect()
            }
        }
    }
}

fn count_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
