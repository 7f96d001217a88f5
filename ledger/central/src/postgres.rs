//! The central store in PostgreSQL (or a PostgreSQL-compatible distributed SQL engine).
//! Money is `NUMERIC(18,2)`: exact, in yuan, as the university's reports expect; the
//! gateway converts to and from integer fen exactly (`money.rs`).
//!
//! Each table of a batch is written by one statement over arrays (`UNNEST`), so a batch
//! of thousands of entries costs a handful of round trips and the statements stay few
//! and prepared. What makes shipping exactly once is `protocol.rs`'s, not this file's.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use super::protocol::Dialect;
use super::schema::{Batch, SCHEMA_VERSION, id_of_sql, sql_id};
use super::statements::CopyText;
use super::{AccountTotal, CentralError, StoredTx, classify, fen_of};
use cardgate_domain::money::from_fen;

/// How long the flusher waits for a connection before counting the store unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections: the flusher writes one batch at a time; one more lets a reader (start-up
/// cursor check, reconciliation) in without waiting behind a batch.
const CONNECTIONS_MAX: u32 = 2;

/// Serializes migrations of gateways that start at once against one database
/// (`pg_advisory_xact_lock` key; any constant the university's other systems do not use).
const MIGRATION_LOCK_KEY: i64 = 0x6361_7264_6761_7465; // "cardgate"

const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS gateways (
    gateway_id        BIGINT PRIMARY KEY,
    shipped_entry_id  BIGINT NOT NULL,
    shipped_time_ms   BIGINT NOT NULL,
    updated_ms        BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    gateway_id         BIGINT NOT NULL,
    tx_id              BIGINT NOT NULL,
    entry_id           BIGINT NOT NULL,
    kind               TEXT   NOT NULL,
    account_id         BIGINT NOT NULL,
    card_no            BIGINT,
    terminal_id        BIGINT,
    terminal_seq       BIGINT,
    merchant_id        BIGINT,
    amount             NUMERIC(18,2) NOT NULL,
    balance_after      NUMERIC(18,2) NOT NULL,
    time_ms            BIGINT NOT NULL,
    terminal_time_ms   BIGINT,
    original_tx_id     BIGINT,
    operator           TEXT,
    PRIMARY KEY (gateway_id, tx_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS transactions_entry ON transactions (gateway_id, entry_id);
-- Only indexes that grow in arrival order (see ARCHITECTURE.md, "Central store").
CREATE INDEX IF NOT EXISTS transactions_time ON transactions (gateway_id, time_ms);
CREATE TABLE IF NOT EXISTS declines (
    gateway_id         BIGINT NOT NULL,
    entry_id           BIGINT NOT NULL,
    kind               TEXT   NOT NULL,
    terminal_id        BIGINT NOT NULL,
    terminal_seq       BIGINT NOT NULL,
    merchant_id        BIGINT NOT NULL,
    card_no            BIGINT NOT NULL,
    account_id         BIGINT,
    -- As the terminal asked: any i64 of fen, so wider than a balance.
    amount             NUMERIC(21,2) NOT NULL,
    reason_code        INTEGER NOT NULL,
    reason             TEXT   NOT NULL,
    balance            NUMERIC(18,2) NOT NULL,
    time_ms            BIGINT NOT NULL,
    terminal_time_ms   BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, entry_id)
);
CREATE INDEX IF NOT EXISTS declines_time ON declines (gateway_id, time_ms);
CREATE TABLE IF NOT EXISTS events (
    gateway_id   BIGINT NOT NULL,
    entry_id     BIGINT NOT NULL,
    kind         TEXT   NOT NULL,
    time_ms      BIGINT NOT NULL,
    account_id   BIGINT,
    card_no      BIGINT,
    terminal_id  BIGINT,
    operator     TEXT,
    payload      JSONB  NOT NULL,
    PRIMARY KEY (gateway_id, entry_id)
);
CREATE INDEX IF NOT EXISTS events_kind_time ON events (gateway_id, kind, time_ms);
CREATE TABLE IF NOT EXISTS accounts (
    gateway_id           BIGINT NOT NULL,
    account_id           BIGINT NOT NULL,
    kind                 TEXT   NOT NULL,
    status               TEXT   NOT NULL,
    opening_balance      NUMERIC(18,2) NOT NULL,
    balance              NUMERIC(18,2) NOT NULL,
    single_payment_max   NUMERIC(18,2),
    daily_max            NUMERIC(18,2),
    opened_ms            BIGINT NOT NULL,
    updated_ms           BIGINT NOT NULL,
    entry_id             BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, account_id)
);
CREATE TABLE IF NOT EXISTS cards (
    gateway_id   BIGINT NOT NULL,
    card_no      BIGINT NOT NULL,
    account_id   BIGINT NOT NULL,
    status       TEXT   NOT NULL,
    expires_ms   BIGINT,
    issued_ms    BIGINT NOT NULL,
    updated_ms   BIGINT NOT NULL,
    entry_id     BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, card_no)
);
CREATE INDEX IF NOT EXISTS cards_account ON cards (gateway_id, account_id);
CREATE TABLE IF NOT EXISTS terminals (
    gateway_id   BIGINT  NOT NULL,
    terminal_id  BIGINT  NOT NULL,
    kind         TEXT    NOT NULL,
    merchant_id  BIGINT  NOT NULL,
    enabled      BOOLEAN NOT NULL,
    name         TEXT    NOT NULL,
    place        TEXT    NOT NULL,
    updated_ms   BIGINT  NOT NULL,
    entry_id     BIGINT  NOT NULL,
    PRIMARY KEY (gateway_id, terminal_id)
);
"#;

/// Migrations in order: (version, script). Append only.
const MIGRATIONS: &[(i64, &str)] = &[(1, SCHEMA_V1), (2, super::integrity::PG_V2)];

const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].0 == SCHEMA_VERSION);

pub struct PgCentral {
    pub(crate) pool: PgPool,
    describe: String,
}

impl PgCentral {
    /// Must be called inside a tokio runtime; does not connect.
    pub fn open(url: &str) -> Result<PgCentral, CentralError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| CentralError::Config(e.to_string()))?;
        let options = super::statement_logging(options);
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(PgCentral {
            pool,
            describe: super::redact(url),
        })
    }

    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn migrate(&self) -> Result<i64, CentralError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_version (
                version     BIGINT PRIMARY KEY,
                applied_ms  BIGINT NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        let found: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_version")
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
            sqlx::query("INSERT INTO schema_version (version, applied_ms) VALUES ($1, $2)")
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
        let v: Option<i64> = sqlx::query_scalar("SELECT shipped_entry_id FROM gateways WHERE gateway_id = $1")
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
            "SELECT tx_id, entry_id, kind, account_id, amount, balance_after FROM transactions \
             WHERE gateway_id = $1 ORDER BY tx_id",
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
                    amount_fen: fen_of(r.try_get(4).map_err(classify)?)?,
                    balance_after_fen: fen_of(r.try_get(5).map_err(classify)?)?,
                })
            })
            .collect()
    }

    pub async fn account_totals(&self, gateway_id: u64) -> Result<Vec<AccountTotal>, CentralError> {
        let rows = sqlx::query(
            "SELECT a.account_id, a.opening_balance, a.balance, COALESCE(SUM(t.amount), 0)::NUMERIC(20,2), \
                    COUNT(t.tx_id) \
             FROM accounts a LEFT JOIN transactions t \
               ON t.gateway_id = a.gateway_id AND t.account_id = a.account_id \
             WHERE a.gateway_id = $1 GROUP BY a.account_id, a.opening_balance, a.balance ORDER BY a.account_id",
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
                    opening_balance_fen: fen_of(r.try_get(1).map_err(classify)?)?,
                    balance_fen: fen_of(r.try_get(2).map_err(classify)?)?,
                    transactions_fen: fen_of(r.try_get(3).map_err(classify)?)?,
                    transactions: u64::try_from(count).unwrap_or(0),
                })
            })
            .collect()
    }

    pub async fn entry_ids(&self, gateway_id: u64) -> Result<Vec<u64>, CentralError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT entry_id FROM transactions WHERE gateway_id = $1 \
             UNION SELECT entry_id FROM declines WHERE gateway_id = $1 \
             UNION SELECT entry_id FROM events WHERE gateway_id = $1 \
             ORDER BY 1",
        )
        .bind(sql_id(gateway_id))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(ids.into_iter().map(id_of_sql).collect())
    }

    pub async fn event_payloads(&self, gateway_id: u64) -> Result<Vec<String>, CentralError> {
        sqlx::query_scalar("SELECT payload::TEXT FROM events WHERE gateway_id = $1 ORDER BY entry_id")
            .bind(sql_id(gateway_id))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)
    }
}

impl Dialect for PgCentral {
    type Db = Postgres;

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, CentralError> {
        self.pool.begin().await.map_err(classify)
    }

    /// Creates the gateway's row if it is new, then locks it (`FOR UPDATE`), so that two
    /// writers for one gateway, which should never exist, queue rather than interleave.
    async fn lock_cursor(
        tx: &mut Transaction<'static, Postgres>,
        gateway_id: u64,
        now_ms: i64,
    ) -> Result<u64, CentralError> {
        let gw = sql_id(gateway_id);
        sqlx::query(
            "INSERT INTO gateways (gateway_id, shipped_entry_id, shipped_time_ms, updated_ms) VALUES ($1, 0, 0, $2) \
             ON CONFLICT (gateway_id) DO NOTHING",
        )
        .bind(gw)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(classify)?;
        let central: i64 = sqlx::query_scalar("SELECT shipped_entry_id FROM gateways WHERE gateway_id = $1 FOR UPDATE")
            .bind(gw)
            .fetch_one(&mut **tx)
            .await
            .map_err(classify)?;
        Ok(id_of_sql(central))
    }

    async fn write_rows(tx: &mut Transaction<'static, Postgres>, b: &Batch, central: u64) -> Result<(), CentralError> {
        let gw = sql_id(b.gateway_id);
        // The append-only tables by COPY: no statement to plan, no array to take apart,
        // no conflict check per row (`protocol.rs`: with the cursor locked, these rows are
        // absent, and one found anyway is refused). The rows of entries the store already
        // holds are left out.
        let mut copy = CopyText::default();
        for t in b.transactions.iter().filter(|r| r.entry_id > central) {
            copy.id(gw);
            copy.id(sql_id(t.tx_id));
            copy.id(sql_id(t.entry_id));
            copy.text(t.kind);
            copy.id(sql_id(t.account));
            copy.opt_id(t.card.map(sql_id));
            copy.opt_id(t.terminal.map(sql_id));
            copy.opt_id(t.terminal_seq.map(sql_id));
            copy.opt_id(t.merchant.map(sql_id));
            copy.money(t.amount_fen);
            copy.money(t.balance_after_fen);
            copy.id(t.time_ms);
            copy.opt_id(t.terminal_time_ms);
            copy.opt_id(t.original_tx_id.map(sql_id));
            copy.opt_text(t.operator.as_deref());
            copy.end_row();
        }
        copy.send(
            tx,
            "COPY transactions (gateway_id, tx_id, entry_id, kind, account_id, card_no, terminal_id, terminal_seq, \
             merchant_id, amount, balance_after, time_ms, terminal_time_ms, original_tx_id, operator) FROM STDIN",
        )
        .await?;

        for d in b.declines.iter().filter(|r| r.entry_id > central) {
            copy.id(gw);
            copy.id(sql_id(d.entry_id));
            copy.text(d.kind);
            copy.id(sql_id(d.terminal));
            copy.id(sql_id(d.terminal_seq));
            copy.id(sql_id(d.merchant));
            copy.id(sql_id(d.card));
            copy.opt_id(d.account.map(sql_id));
            copy.money(d.amount_fen);
            copy.id(i64::from(d.reason_code));
            copy.text(d.reason);
            copy.money(d.balance_fen);
            copy.id(d.time_ms);
            copy.id(d.terminal_time_ms);
            copy.end_row();
        }
        copy.send(
            tx,
            "COPY declines (gateway_id, entry_id, kind, terminal_id, terminal_seq, merchant_id, card_no, account_id, \
             amount, reason_code, reason, balance, time_ms, terminal_time_ms) FROM STDIN",
        )
        .await?;

        for e in b.events.iter().filter(|r| r.entry_id > central) {
            copy.id(gw);
            copy.id(sql_id(e.entry_id));
            copy.text(e.kind);
            copy.id(e.time_ms);
            copy.opt_id(e.account.map(sql_id));
            copy.opt_id(e.card.map(sql_id));
            copy.opt_id(e.terminal.map(sql_id));
            copy.opt_text(e.operator.as_deref());
            copy.text(&jsonb_safe(&e.payload));
            copy.end_row();
        }
        copy.send(
            tx,
            "COPY events (gateway_id, entry_id, kind, time_ms, account_id, card_no, terminal_id, operator, payload) \
             FROM STDIN",
        )
        .await?;

        let accounts: Vec<_> = b.account_records().collect();
        if !accounts.is_empty() {
            let a = &accounts;
            sqlx::query(
                "INSERT INTO accounts (gateway_id, account_id, kind, status, opening_balance, balance, \
                 single_payment_max, daily_max, opened_ms, updated_ms, entry_id) \
                 SELECT $1, * FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::NUMERIC[], $6::NUMERIC[], \
                 $7::NUMERIC[], $8::NUMERIC[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[]) \
                 ON CONFLICT (gateway_id, account_id) DO UPDATE SET kind = excluded.kind, status = excluded.status, \
                 balance = excluded.balance, single_payment_max = excluded.single_payment_max, \
                 daily_max = excluded.daily_max, updated_ms = excluded.updated_ms, entry_id = excluded.entry_id \
                 WHERE accounts.entry_id < excluded.entry_id",
            )
            .bind(gw)
            .bind(a.iter().map(|r| sql_id(r.account)).collect::<Vec<_>>())
            .bind(a.iter().map(|r| r.kind).collect::<Vec<_>>())
            .bind(a.iter().map(|r| r.status).collect::<Vec<_>>())
            .bind(
                a.iter()
                    .map(|r| from_fen(r.opening_balance_fen))
                    .collect::<Vec<Decimal>>(),
            )
            .bind(a.iter().map(|r| from_fen(r.balance_fen)).collect::<Vec<Decimal>>())
            .bind(
                a.iter()
                    .map(|r| r.single_payment_max_fen.map(from_fen))
                    .collect::<Vec<_>>(),
            )
            .bind(a.iter().map(|r| r.daily_max_fen.map(from_fen)).collect::<Vec<_>>())
            .bind(a.iter().map(|r| r.opened_ms).collect::<Vec<_>>())
            .bind(a.iter().map(|r| r.updated_ms).collect::<Vec<_>>())
            .bind(a.iter().map(|r| sql_id(r.entry_id)).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
        }

        let balances: Vec<_> = b.balances().collect();
        if !balances.is_empty() {
            let x = &balances;
            // One probe of the primary key per account the batch touched. Left to
            // itself the planner hashes the whole `accounts` table of this gateway for
            // every batch, a cost that grows with the campus rather than with the batch
            // (measured: a sequential scan of every account per batch). Only for this
            // transaction.
            sqlx::raw_sql("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
                .execute(&mut **tx)
                .await
                .map_err(classify)?;
            sqlx::query(
                "UPDATE accounts SET balance = COALESCE(v.balance, accounts.balance), \
                 kind = COALESCE(v.kind, accounts.kind), status = COALESCE(v.status, accounts.status), \
                 updated_ms = v.updated_ms, entry_id = v.entry_id \
                 FROM UNNEST($2::BIGINT[], $3::NUMERIC[], $4::BIGINT[], $5::BIGINT[], $6::TEXT[], $7::TEXT[]) \
                 AS v (account_id, balance, updated_ms, entry_id, kind, status) \
                 WHERE accounts.gateway_id = $1 AND accounts.account_id = v.account_id \
                 AND accounts.entry_id < v.entry_id",
            )
            .bind(gw)
            .bind(x.iter().map(|r| sql_id(r.account)).collect::<Vec<_>>())
            .bind(
                x.iter()
                    .map(|r| r.balance_fen.map(from_fen))
                    .collect::<Vec<Option<Decimal>>>(),
            )
            .bind(x.iter().map(|r| r.updated_ms).collect::<Vec<_>>())
            .bind(x.iter().map(|r| sql_id(r.entry_id)).collect::<Vec<_>>())
            .bind(x.iter().map(|r| r.kind).collect::<Vec<Option<&str>>>())
            .bind(x.iter().map(|r| r.status).collect::<Vec<Option<&str>>>())
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
        }

        if !b.cards.is_empty() {
            let c: Vec<_> = b.cards.values().collect();
            sqlx::query(
                "INSERT INTO cards (gateway_id, card_no, account_id, status, expires_ms, issued_ms, updated_ms, \
                 entry_id) \
                 SELECT $1, * FROM UNNEST($2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[], \
                 $7::BIGINT[], $8::BIGINT[]) \
                 ON CONFLICT (gateway_id, card_no) DO UPDATE SET account_id = excluded.account_id, \
                 status = excluded.status, expires_ms = excluded.expires_ms, issued_ms = excluded.issued_ms, \
                 updated_ms = excluded.updated_ms, entry_id = excluded.entry_id \
                 WHERE cards.entry_id < excluded.entry_id",
            )
            .bind(gw)
            .bind(c.iter().map(|r| sql_id(r.card)).collect::<Vec<_>>())
            .bind(c.iter().map(|r| sql_id(r.account)).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.status).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.expires_ms).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.issued_ms).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.updated_ms).collect::<Vec<_>>())
            .bind(c.iter().map(|r| sql_id(r.entry_id)).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
        }

        if !b.terminals.is_empty() {
            let t: Vec<_> = b.terminals.values().collect();
            sqlx::query(
                "INSERT INTO terminals (gateway_id, terminal_id, kind, merchant_id, enabled, name, place, updated_ms, \
                 entry_id) \
                 SELECT $1, * FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::BOOLEAN[], $6::TEXT[], \
                 $7::TEXT[], $8::BIGINT[], $9::BIGINT[]) \
                 ON CONFLICT (gateway_id, terminal_id) DO UPDATE SET kind = excluded.kind, \
                 merchant_id = excluded.merchant_id, enabled = excluded.enabled, name = excluded.name, \
                 place = excluded.place, updated_ms = excluded.updated_ms, entry_id = excluded.entry_id \
                 WHERE terminals.entry_id < excluded.entry_id",
            )
            .bind(gw)
            .bind(t.iter().map(|r| sql_id(r.terminal)).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.kind).collect::<Vec<_>>())
            .bind(t.iter().map(|r| sql_id(r.merchant)).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.enabled).collect::<Vec<_>>())
            .bind(t.iter().map(|r| pg_text(&r.name)).collect::<Vec<_>>())
            .bind(t.iter().map(|r| pg_text(&r.place)).collect::<Vec<_>>())
            .bind(t.iter().map(|r| r.updated_ms).collect::<Vec<_>>())
            .bind(t.iter().map(|r| sql_id(r.entry_id)).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
        }

        super::integrity::write_pg(tx, b, central, &mut copy).await
    }

    async fn stored_hash(
        tx: &mut Transaction<'static, Postgres>,
        gateway_id: u64,
        entry_id: u64,
    ) -> Result<Option<[u8; 32]>, CentralError> {
        super::integrity::stored_hash_pg(tx, gateway_id, entry_id).await
    }

    async fn set_cursor(tx: &mut Transaction<'static, Postgres>, b: &Batch, now_ms: i64) -> Result<(), CentralError> {
        let gw = sql_id(b.gateway_id);
        sqlx::query(
            "UPDATE gateways SET shipped_entry_id = $2, shipped_time_ms = $3, updated_ms = $4 WHERE gateway_id = $1",
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

/// PostgreSQL text cannot hold NUL; an operator-typed name with one must not stall the
/// flusher forever, so it is stored with U+FFFD in its place.
fn pg_text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// `jsonb` refuses the escape `\u0000`; JSON text that has one gets U+FFFD instead. Walks
/// the escapes so that an escaped backslash followed by `u0000` is left alone.
fn jsonb_safe(json: &str) -> Cow<'_, str> {
    if !json.contains("\\u0000") {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let esc = &rest[at..];
        if let Some(after) = esc.strip_prefix("\\u0000") {
            out.push_str("\\ufffd");
            rest = after;
        } else {
            // Any other escape is two characters or starts with them: copy both.
            let two = esc.char_indices().nth(2).map_or(esc.len(), |(i, _)| i);
            out.push_str(&esc[..two]);
            rest = &esc[two..];
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_never_reaches_postgres_text() {
        assert_eq!(pg_text("a\0b"), "a\u{FFFD}b");
        let json = serde_json::to_string("a\0b\\u0000").unwrap();
        let safe = jsonb_safe(&json);
        assert_eq!(
            serde_json::from_str::<String>(&safe).unwrap(),
            "a\u{FFFD}b\\u0000",
            "the typed text `\\u0000` is kept"
        );
        assert!(matches!(jsonb_safe("{\"a\":1}"), Cow::Borrowed(_)));
    }
}
