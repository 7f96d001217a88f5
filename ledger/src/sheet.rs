//! Reading a CSV file as a spreadsheet saved it, for every import of the gateway
//! (persons and cards, the terminal inventory): the encoding, the delimiter, the lines
//! as a text editor counts them, the header, and every error by line and column. What
//! the rows mean is the importer's; how they are read is here, once.
//!
//! * **Encoding** (`decode`): a byte order mark decides (UTF-8, UTF-16LE, UTF-16BE);
//!   else a file with NUL bytes is UTF-16 without one, read only with a declared
//!   `charset=utf-16le`/`utf-16be`; else valid UTF-8 is UTF-8; else a declared charset
//!   is used; else a file that decodes as GB18030 without a single error is GB18030
//!   (Chinese Excel's "CSV"); else one error says the encoding is unknown and how to
//!   fix it. The report names the encoding used and why.
//! * **Delimiter**: tab when the header line has tabs and no comma (Excel's "Unicode
//!   text"), else comma.
//! * **Lines** are those a text editor shows: 1-based, the header's line counted, LF,
//!   CRLF and lone CR each one break, blank lines and line breaks inside quoted values
//!   counted. The csv reader's own line numbers are not used: they count CRLF wrongly
//!   and skip blank lines, so each record's line comes from its byte offset.
//! * **Empty rows** (blank lines, or only delimiters and spaces) are skipped and
//!   counted.

use std::borrow::Cow;

use encoding_rs::{DecoderResult, Encoding, GB18030, UTF_8, UTF_16BE, UTF_16LE};
use serde::Serialize;

use crate::error::LedgerError;

/// Errors listed in one answer; the count is exact beyond it.
pub const IMPORT_ERRORS_LISTED_MAX: usize = 1_000;

/// What a data admin is told to do with a file whose encoding cannot be told.
const SAVE_AS_UTF8: &str = "save it as \"CSV UTF-8 (Comma delimited)\" in Excel (WPS: CSV, UTF-8), \
    or give its charset, e.g. charset=gb18030";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// 1-based line in the file as a text editor shows it (the header is line 1 when
    /// nothing is above it). A row that runs over several lines is reported on its
    /// first.
    pub line: u64,
    /// The column, by its header name, when the error is about one value.
    pub column: Option<&'static str>,
    pub message: String,
}

/// How a file was read, for its report.
#[derive(Clone, Debug, Default)]
pub(crate) struct FileRead {
    /// Rows with something in them, the header not counted.
    pub rows: usize,
    pub empty_rows: usize,
    pub encoding: Option<&'static str>,
    pub encoding_reason: Option<String>,
    pub delimiter: Option<&'static str>,
}

/// Every error counted, the first `IMPORT_ERRORS_LISTED_MAX` listed.
#[derive(Default)]
pub(crate) struct Errors {
    pub count: usize,
    pub listed: Vec<RowError>,
}

impl Errors {
    pub fn push(&mut self, line: u64, column: Option<&'static str>, message: String) {
        self.count += 1;
        if self.listed.len() < IMPORT_ERRORS_LISTED_MAX {
            self.listed.push(RowError { line, column, message });
        }
    }
}

/// One row of a sheet, with the header's columns.
pub(crate) struct SheetRow<'r> {
    pub line: u64,
    /// The row's last line (a quoted value may hold line breaks).
    pub end: u64,
    rec: &'r csv::StringRecord,
    header: &'r Header,
    columns: &'static [&'static str],
}

impl SheetRow<'_> {
    /// Column `c`'s value, or why it is not one (a line break in a cell); none when
    /// the column is not in the header (reported there).
    pub fn value(&self, c: usize) -> Option<Result<&str, String>> {
        let v = self.rec.get(self.header.col[c]?).unwrap_or("");
        if v.contains(['\r', '\n']) {
            return Some(Err(format!(
                "{} holds a line break (the row runs from line {} to line {}): remove it from the cell",
                self.columns[c], self.line, self.end
            )));
        }
        Some(Ok(v))
    }

    /// Column `c`'s value checked by `check`: the value, or its error pushed (on this
    /// row's line, in that column).
    pub fn take<T>(&self, errors: &mut Errors, c: usize, check: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        match self.value(c)?.and_then(check) {
            Ok(v) => Some(v),
            Err(message) => {
                errors.push(self.line, Some(self.columns[c]), message);
                None
            }
        }
    }
}

/// Reads `bytes` as a sheet with the header `columns` (in any order, all required) and
/// hands each row with something in it to `row`, in file order. At most `rows_max` rows
/// are read; more is an error. File-level errors (encoding, header, row length) are
/// pushed to `errors`; a row with the wrong number of values is not handed on.
pub(crate) fn read_sheet(
    bytes: &[u8],
    declared: Option<&'static Encoding>,
    columns: &'static [&'static str],
    rows_max: usize,
    errors: &mut Errors,
    mut row: impl FnMut(&SheetRow<'_>, &mut Errors),
) -> FileRead {
    let mut read = FileRead::default();
    let decoded = match decode(bytes, declared) {
        Err(unreadable) => {
            errors.push(unreadable.line, None, unreadable.message);
            return read;
        }
        Ok(decoded) => decoded,
    };
    read.encoding = Some(decoded.encoding);
    read.encoding_reason = Some(decoded.reason);
    // A byte order mark inside the decoded text: a second one, or GB18030's.
    let text = decoded.text.strip_prefix('\u{feff}').unwrap_or(&decoded.text);
    let delimiter = delimiter_of(text);
    read.delimiter = Some(if delimiter == b'\t' { "tab" } else { "comma" });
    let delimiter_name = if delimiter == b'\t' { "tab" } else { "comma" };

    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(text.as_bytes());
    let mut lines = LineCounter::default();
    let mut header: Option<Header> = None;
    // The last line of the previous record: the lines between it and the next
    // record are blank lines the reader skipped.
    let mut previous_end = 0u64;
    let mut read_to_the_end = true;
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                // Not met on text with a flexible reader; reported should it be.
                let line = e
                    .position()
                    .map(|p| lines.line_at(text, record_start(text, p.byte())))
                    .unwrap_or(0);
                errors.push(line, None, format!("does not parse: {e}"));
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
                continue;
            }
        };
        let start = record_start(text, rec.position().map_or(0, |p| p.byte()));
        let line = lines.line_at(text, start);
        let end = line + rec.iter().map(line_breaks).sum::<u64>();
        read.empty_rows += line.saturating_sub(previous_end + 1) as usize;
        previous_end = end;
        if rec.iter().all(|f| f.trim().is_empty()) {
            read.empty_rows += 1;
            continue;
        }
        let Some(header) = &header else {
            header = Some(Header::read(&rec, line, columns, errors));
            continue;
        };
        read.rows += 1;
        if read.rows > rows_max {
            errors.push(line, None, format!("more than {rows_max} rows: split the file"));
            read_to_the_end = false;
            break;
        }
        if header.found == 0 {
            // Not a header this import knows: every row would be noise.
            continue;
        }
        if rec.len() != header.len {
            let (n, h) = (rec.len(), header.len);
            let message = if end > line {
                format!(
                    "the row runs from line {line} to line {end} and has {n} values, the header {h}: \
                     a double quote in it is probably not closed"
                )
            } else if n > h {
                format!(
                    "the row has {n} values, the header {h}: a value with a {delimiter_name} in it \
                     must be in double quotes"
                )
            } else {
                format!("the row has {n} values, the header {h}")
            };
            errors.push(line, None, message);
            continue;
        }
        let r = SheetRow {
            line,
            end,
            rec: &rec,
            header,
            columns,
        };
        row(&r, errors);
    }
    if header.is_none() && errors.count == 0 {
        errors.push(
            1,
            None,
            format!(
                "the file is empty: its first line must be the header {}",
                columns.join(",")
            ),
        );
    }
    // Blank lines after the last record; a final line break ends a line, it does
    // not start one.
    if read_to_the_end {
        read.empty_rows += lines.lines_in(text).saturating_sub(previous_end) as usize;
    }
    read
}

/// The header: where each known column is.
struct Header {
    col: Vec<Option<usize>>,
    /// Values in the header line: every row must have as many.
    len: usize,
    /// Known columns found: none means the first line is not a header (a data row,
    /// another file).
    found: usize,
}

impl Header {
    fn read(rec: &csv::StringRecord, line: u64, columns: &'static [&'static str], errors: &mut Errors) -> Header {
        let names: Vec<&str> = rec.iter().map(|n| n.trim().trim_start_matches('\u{feff}')).collect();
        let mut col = vec![None; columns.len()];
        for (i, n) in names.iter().enumerate() {
            if let Some(c) = columns.iter().position(|c| c == n)
                && col[c].is_none()
            {
                col[c] = Some(i);
            }
        }
        let found = col.iter().flatten().count();
        let expected = columns.join(",");
        if found == 0 {
            // One error, not one per value: this line is not a header at all.
            let message = if names.len() == 1 && names[0].contains(';') {
                format!("the header's columns are separated by semicolons: separate them by commas, as in {expected}")
            } else {
                format!("line {line} must be the header, {expected}; it has none of these columns")
            };
            errors.push(line, None, message);
            return Header {
                col,
                len: names.len(),
                found,
            };
        }
        for (i, n) in names.iter().enumerate() {
            match columns.iter().position(|c| c == n) {
                Some(c) if col[c] != Some(i) => {
                    errors.push(line, Some(columns[c]), format!("column {n} is in the header twice"))
                }
                Some(_) => {}
                None if n.is_empty() => errors.push(
                    line,
                    None,
                    format!(
                        "column {} of the header has no name: delete that column, or name it",
                        i + 1
                    ),
                ),
                None => errors.push(
                    line,
                    None,
                    format!("unknown column {n:?}: the columns are {}", columns.join(", ")),
                ),
            }
        }
        for (c, want) in columns.iter().enumerate() {
            if col[c].is_none() {
                errors.push(line, Some(want), format!("the header lacks column {want}"));
            }
        }
        Header {
            col,
            len: names.len(),
            found,
        }
    }
}

/// The file as text, and how it was read.
struct Decoded<'a> {
    text: Cow<'a, str>,
    encoding: &'static str,
    reason: String,
}

/// A file whose encoding cannot be told, or that breaks the one it declares.
struct Unreadable {
    line: u64,
    message: String,
}

/// The encoding a `charset` parameter names.
pub(crate) fn declared_encoding(label: &str) -> Result<&'static Encoding, LedgerError> {
    match Encoding::for_label(label.trim().as_bytes()) {
        // "replacement" decodes anything to U+FFFD, x-user-defined to private-use
        // characters: neither gives names back.
        Some(e) if e != encoding_rs::REPLACEMENT && e != encoding_rs::X_USER_DEFINED => Ok(e),
        _ => Err(LedgerError::Invalid(format!(
            "charset {label:?} is not an encoding this import reads: use utf-8, gb18030, utf-16le or \
             utf-16be (or another WHATWG encoding label, such as big5)"
        ))),
    }
}

/// Reads the file's bytes as text, by the rule in the module's documentation.
fn decode<'a>(bytes: &'a [u8], declared: Option<&'static Encoding>) -> Result<Decoded<'a>, Unreadable> {
    let declared_note = |used: &'static Encoding| match declared {
        Some(d) if d != used => format!(" (charset={} was given, and not used)", d.name()),
        _ => String::new(),
    };
    if let Some((encoding, bom)) = Encoding::for_bom(bytes) {
        let text = decode_strict(encoding, &bytes[bom..]).map_err(|line| Unreadable {
            line,
            message: format!(
                "the file starts with a {0} byte order mark but is not valid {0} on line {line}: {SAVE_AS_UTF8}",
                encoding.name()
            ),
        })?;
        return Ok(Decoded {
            text,
            encoding: encoding.name(),
            reason: format!(
                "the file starts with a {} byte order mark{}",
                encoding.name(),
                declared_note(encoding)
            ),
        });
    }
    if let Some(nul) = bytes.iter().position(|b| *b == 0) {
        // Text has no NUL; UTF-16 has one in every ASCII character, on the odd bytes
        // when little-endian. Without a byte order mark, only a charset says which.
        if let Some(encoding) = declared.filter(|d| *d == UTF_16LE || *d == UTF_16BE) {
            let text = decode_strict(encoding, bytes).map_err(|line| not_as_declared(encoding, line))?;
            return Ok(Decoded {
                text,
                encoding: encoding.name(),
                reason: format!("the file holds NUL bytes, and charset={} was given", encoding.name()),
            });
        }
        let guess = if nul % 2 == 1 { "utf-16le" } else { "utf-16be" };
        return Err(Unreadable {
            line: 1,
            message: format!(
                "the file holds NUL bytes: it looks like UTF-16 (\"Unicode text\") without a byte order mark; \
                 save it as \"CSV UTF-8 (Comma delimited)\", or give charset={guess}"
            ),
        });
    }
    let utf8_error = match std::str::from_utf8(bytes) {
        Ok(text) => {
            return Ok(Decoded {
                text: Cow::Borrowed(text),
                encoding: UTF_8.name(),
                reason: format!("the file is valid UTF-8{}", declared_note(UTF_8)),
            });
        }
        Err(e) => e,
    };
    if let Some(encoding) = declared {
        let text = decode_strict(encoding, bytes).map_err(|line| not_as_declared(encoding, line))?;
        return Ok(Decoded {
            text,
            encoding: encoding.name(),
            reason: format!("the file is not UTF-8, and charset={} was given", encoding.name()),
        });
    }
    // Not UTF-8, no charset: Chinese Excel's "CSV" is GB18030 (GBK). A file in another
    // legacy encoding rarely decodes as GB18030 without a single error, and the report
    // says GB18030 was chosen, so that a dry run shows it before anything is imported.
    match decode_strict(GB18030, bytes) {
        Ok(text) => Ok(Decoded {
            text,
            encoding: GB18030.name(),
            reason: "the file is not UTF-8 and reads as GB18030 (GBK) without an error; no charset was given"
                .to_string(),
        }),
        Err(_) => {
            let line = 1 + line_breaks(&String::from_utf8_lossy(&bytes[..utf8_error.valid_up_to()]));
            Err(Unreadable {
                line,
                message: format!(
                    "the file is not UTF-8 (line {line} is the first line that is not) and not GB18030 either, \
                     so its encoding is unknown: {SAVE_AS_UTF8}"
                ),
            })
        }
    }
}

fn not_as_declared(encoding: &'static Encoding, line: u64) -> Unreadable {
    Unreadable {
        line,
        message: format!(
            "the file is not valid {0} on line {line}, though charset={0} was given: check the charset, or \
             save the file as \"CSV UTF-8 (Comma delimited)\"",
            encoding.name()
        ),
    }
}

/// Decodes without replacement characters; on a malformed sequence, the line it is on.
fn decode_strict<'a>(encoding: &'static Encoding, bytes: &'a [u8]) -> Result<Cow<'a, str>, u64> {
    if encoding == UTF_8 {
        return std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|e| 1 + line_breaks(&String::from_utf8_lossy(&bytes[..e.valid_up_to()])));
    }
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let mut text = String::new();
    let mut rest = bytes;
    loop {
        let room = decoder
            .max_utf8_buffer_length_without_replacement(rest.len())
            .unwrap_or(rest.len().saturating_mul(3));
        text.reserve(room);
        let (result, read) = decoder.decode_to_string_without_replacement(rest, &mut text, true);
        rest = &rest[read..];
        match result {
            DecoderResult::InputEmpty => return Ok(Cow::Owned(text)),
            DecoderResult::OutputFull => continue,
            // What was decoded ends where the malformed sequence starts.
            DecoderResult::Malformed(..) => return Err(1 + line_breaks(&text)),
        }
    }
}

/// Tab when the header line (the first with anything in it) has tabs and no comma, as
/// Excel's "Unicode text" writes; else comma.
fn delimiter_of(text: &str) -> u8 {
    let header = text.split(['\r', '\n']).find(|l| !l.trim().is_empty()).unwrap_or("");
    if header.contains('\t') && !header.contains(',') {
        b'\t'
    } else {
        b','
    }
}

/// Line breaks as a text editor counts them: CRLF, lone CR and LF are one each.
pub(crate) fn line_breaks(s: &str) -> u64 {
    let b = s.as_bytes();
    (0..b.len())
        .filter(|&i| b[i] == b'\r' || (b[i] == b'\n' && (i == 0 || b[i - 1] != b'\r')))
        .count() as u64
}

/// Where a record's first value starts. The reader's position is where it began
/// looking, which is before the line break that ended the previous record when that
/// was CRLF, and before any blank lines it skipped. A record cannot start with a line
/// break (a quoted one starts with the quote), so skipping them is exact.
fn record_start(text: &str, byte: u64) -> usize {
    let b = text.as_bytes();
    let mut i = (byte as usize).min(b.len());
    while i < b.len() && (b[i] == b'\r' || b[i] == b'\n') {
        i += 1;
    }
    i
}

/// Lines of a text, counted forward record by record (records come in order), so a
/// file is scanned once.
#[derive(Default)]
struct LineCounter {
    at: usize,
    breaks: u64,
}

impl LineCounter {
    /// The 1-based line `offset` is on; offsets must not go backwards.
    fn line_at(&mut self, text: &str, offset: usize) -> u64 {
        let b = text.as_bytes();
        let offset = offset.min(b.len()).max(self.at);
        for i in self.at..offset {
            if b[i] == b'\r' || (b[i] == b'\n' && (i == 0 || b[i - 1] != b'\r')) {
                self.breaks += 1;
            }
        }
        self.at = offset;
        self.breaks + 1
    }

    /// Lines in the whole text: a final line break ends the last line.
    fn lines_in(&mut self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        let last = self.line_at(text, text.len());
        if text.ends_with(['\r', '\n']) { last - 1 } else { last }
    }
}
