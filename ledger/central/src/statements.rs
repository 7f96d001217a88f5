//! How a batch's rows become statements, for each back end, with no connection of its
//! own: SQLite's multi-row `INSERT ... VALUES` in a few fixed shapes, prepared once and
//! reused (`Shaped`), and PostgreSQL's `COPY ... FROM STDIN` text (`CopyText`). The
//! dialects (`sqlite.rs`, `postgres.rs`) and the integrity tables (`integrity.rs`) all
//! write through these, so they sit beneath all three.

use std::sync::OnceLock;

use sqlx::error::BoxDynError;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, Postgres, Sqlite, Transaction};

use crate::{CentralError, classify};
use cardgate_domain::money::from_fen;

/// Rows per multi-row statement, largest first. Every statement the flusher runs has
/// one of these shapes, so that each is prepared once per connection and reused (sqlx
/// keeps prepared statements by their text, and the text is built once: `Shaped`); a batch of n rows takes n / 256 statements
/// of the largest shape and at most 7 of each smaller one. One statement per row would
/// cost a round trip to sqlx's SQLite worker thread per row; one statement per batch, a
/// new statement to parse and plan every time.
const SHAPES: [usize; 4] = [256, 32, 4, 1];

/// SQLite's limit on bound parameters per statement (SQLITE_MAX_VARIABLE_NUMBER, since
/// 3.32; the bundled library is newer): the widest row (15 columns) in the largest shape,
/// plus the balance update's trailing gateway id, must stay under it.
const BINDS_MAX: usize = 32_766;

const _: () = assert!(SHAPES[0] * 15 < BINDS_MAX);

/// `rows` cut into statements of the shapes above.
pub(crate) fn shaped<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = SHAPES.into_iter().find(|&s| s <= rows.len())?;
        let (head, tail) = rows.split_at(n);
        rows = tail;
        Some(head)
    })
}

/// One multi-row statement in each of the shapes: its text, built once per process (not
/// per batch: building it was a tenth of the flusher's work), and how to bind a row.
pub(crate) struct Shaped {
    texts: OnceLock<[String; SHAPES.len()]>,
    /// Up to `VALUES`.
    head: &'static str,
    columns: usize,
    /// After the rows; its placeholders are bound after them (`trailing`).
    tail: &'static str,
}

impl Shaped {
    pub(crate) const fn new(head: &'static str, columns: usize, tail: &'static str) -> Shaped {
        Shaped {
            texts: OnceLock::new(),
            head,
            columns,
            tail,
        }
    }

    fn text(&'static self, rows: usize) -> &'static str {
        let texts = self.texts.get_or_init(|| {
            SHAPES.map(|n| {
                let row = format!("({})", vec!["?"; self.columns].join(", "));
                format!("{} VALUES {}{}", self.head, vec![row; n].join(", "), self.tail)
            })
        });
        let at = SHAPES
            .iter()
            .position(|&s| s == rows)
            .expect("rows come cut by `shaped`");
        &texts[at]
    }

    /// Writes `rows`, cut into shapes, binding each row with `bind` and then `trailing`.
    pub(crate) async fn write<T>(
        &'static self,
        tx: &mut Transaction<'static, Sqlite>,
        rows: &[T],
        trailing: &[i64],
        mut bind: impl FnMut(&mut SqliteArguments, &T) -> Result<(), BoxDynError>,
    ) -> Result<(), CentralError> {
        for chunk in shaped(rows) {
            // Sized up front: grown value by value, the argument list of a 256-row
            // statement was reallocated a dozen times, its thousands of values copied
            // each time.
            let mut args = SqliteArguments::default();
            args.reserve(chunk.len() * self.columns + trailing.len(), 0);
            let bound: Result<(), BoxDynError> = chunk
                .iter()
                .try_for_each(|row| bind(&mut args, row))
                .and_then(|()| trailing.iter().try_for_each(|v| args.add(*v)));
            bound.map_err(|e| CentralError::Data(format!("binding a row: {e}")))?;
            sqlx::query_with(self.text(chunk.len()), args)
                .execute(&mut **tx)
                .await
                .map_err(classify)?;
        }
        Ok(())
    }
}

/// Rows in the text format of `COPY ... FROM STDIN`: columns separated by tabs, rows
/// ended by newlines, `\N` for NULL, and a backslash before any backslash, tab, newline
/// or carriage return inside a value. One buffer, reused from table to table.
#[derive(Default)]
pub(crate) struct CopyText {
    buf: Vec<u8>,
    /// Rows in `buf`.
    rows: u64,
    /// A column was written in the current row: the next one needs a tab first.
    in_row: bool,
}

impl CopyText {
    fn column(&mut self) {
        if self.in_row {
            self.buf.push(b'\t');
        }
        self.in_row = true;
    }

    pub(crate) fn id(&mut self, v: i64) {
        self.column();
        self.buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    pub(crate) fn opt_id(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.id(v),
            None => self.null(),
        }
    }

    /// Fen as the `NUMERIC` yuan the column holds, written by `Decimal` (two places).
    pub(crate) fn money(&mut self, fen: i64) {
        use std::io::Write;
        self.column();
        // Writing into a Vec cannot fail.
        let _ = write!(self.buf, "{}", from_fen(fen));
    }

    pub(crate) fn text(&mut self, s: &str) {
        self.column();
        let mut rest = s.as_bytes();
        // Runs without anything to escape are copied whole.
        while let Some(at) = rest.iter().position(|c| matches!(c, b'\\' | b'\t' | b'\n' | b'\r' | 0)) {
            self.buf.extend_from_slice(&rest[..at]);
            match rest[at] {
                b'\\' => self.buf.extend_from_slice(b"\\\\"),
                b'\t' => self.buf.extend_from_slice(b"\\t"),
                b'\n' => self.buf.extend_from_slice(b"\\n"),
                b'\r' => self.buf.extend_from_slice(b"\\r"),
                // PostgreSQL text cannot hold NUL (see `pg_text`).
                _ => self.buf.extend_from_slice("\u{FFFD}".as_bytes()),
            }
            rest = &rest[at + 1..];
        }
        self.buf.extend_from_slice(rest);
    }

    /// A `BYTEA` in its hex form, `\x` and two digits a byte, with the backslash doubled
    /// as the text format wants.
    pub(crate) fn bytea(&mut self, v: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.column();
        self.buf.extend_from_slice(b"\\\\x");
        for b in v {
            self.buf.push(HEX[usize::from(b >> 4)]);
            self.buf.push(HEX[usize::from(b & 0xf)]);
        }
    }

    pub(crate) fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    pub(crate) fn null(&mut self) {
        self.column();
        self.buf.extend_from_slice(b"\\N");
    }

    pub(crate) fn end_row(&mut self) {
        self.buf.push(b'\n');
        self.rows += 1;
        self.in_row = false;
    }

    /// Sends the rows gathered with `statement` (a `COPY ... FROM STDIN`) and empties
    /// the buffer; nothing when there are none.
    pub(crate) async fn send(
        &mut self,
        tx: &mut Transaction<'static, Postgres>,
        statement: &str,
    ) -> Result<(), CentralError> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut copy = tx.copy_in_raw(statement).await.map_err(classify)?;
        copy.send(self.buf.as_slice()).await.map_err(classify)?;
        let written = copy.finish().await.map_err(classify)?;
        if written != self.rows {
            return Err(CentralError::Data(format!(
                "COPY wrote {written} rows of {}",
                self.rows
            )));
        }
        self.buf.clear();
        self.rows = 0;
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

    #[test]
    fn copy_rows_escape_what_the_text_format_gives_meaning_to() {
        let mut c = CopyText::default();
        c.id(-7);
        c.opt_id(None);
        c.money(-12_50);
        c.money(5);
        c.text("tab\there\nnew\\back\rcr\0nul");
        c.opt_text(None);
        c.end_row();
        c.id(1);
        c.bytea(&[0x00, 0x5c, 0xff]);
        c.end_row();
        assert_eq!(
            String::from_utf8(c.buf.clone()).unwrap(),
            "-7\t\\N\t-12.50\t0.05\ttab\\there\\nnew\\\\back\\rcr\u{FFFD}nul\t\\N\n1\t\\\\x005cff\n"
        );
        assert_eq!(c.rows, 2);
    }
}
