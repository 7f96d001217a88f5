//! Backups of a gateway's data directory, taken while it runs, and their restore.
//!
//! **The backup point.** A backup is the state records exactly as of the checkpoint id
//! `C` (read holding the checkpoint gate, so no checkpoint writes while they are read),
//! and every journal entry the journal holds through `P`, the durable entry id when the
//! backup began (pruning is held off until the journal is read). Restoring it and
//! starting the gateway replays `C+1..=P` onto the records: exactly the state the gateway
//! had when entry `P` became durable. Every decision acknowledged before the backup began
//! is at or before `P` (nothing is acknowledged before it is durable); nothing after `P`
//! is in the backup, neither as an entry nor in a record. The committer never waits: the
//! terminals go on being answered while the backup is written.
//!
//! **The files.** A backup is a directory `cardgate-backup-<gateway>-<local time>-<P>`:
//! `state.cgb` (every key of the sled tree but the journal's, the meta values set to
//! match `P`), `journal.cgb` (the journal's segments through `P`), `manifest.json` (what
//! it is, the entry id and chain hash it ends at, and the SHA-256 of every file), and
//! `SHA256SUMS` (the same sums, for `sha256sum -c`). It is written as `NAME.partial` and
//! renamed when complete, so a backup cut short never looks like one.
//!
//! **Sealed.** The data files are sealed with ChaCha20-Poly1305 under a key derived from
//! the terminal key (`TerminalKey::derive`): a backup holds balances, names and, for
//! terminals registered before the registry sealed keys, terminal secrets, and none of it
//! may lie on a backup disk in clear. The file is a run of frames (`[len u32 LE][nonce
//! 12][ciphertext]`), each bound to its file, its position and whether it is the last, so
//! a frame moved, dropped or cut off does not open. The SHA-256 sums cover the sealed
//! bytes, so a backup's completeness is checked without the key.
//!
//! **Restore** checks everything before it changes anything: the manifest, every file's
//! size and sum, every frame, the entry count, the chain hash at `P`; builds the database
//! beside the data directory; and only then moves it in (the database it replaces, with
//! `--force`, is moved aside, never deleted).

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use cardgate_journal::chain::{self, ChainPoint, to_hex};
use cardgate_journal::segment;
use cardgate_journal::store::{PREFIX_JOURNAL, id_of_key, key_meta, key_segment, meta};
use cardgate_journal::{Db, StoreError};

use crate::keys::TerminalKey;
use crate::records::meta as ledger_meta;

/// The backup format this build writes and reads.
pub const BACKUP_FORMAT: u32 = 1;

/// Plaintext bytes per sealed frame: large enough that sealing costs nothing next to the
/// disk, small enough that a reader holds one frame at a time.
pub const FRAME_BYTES_MAX: usize = 1 << 20;

/// The largest sealed frame a reader accepts (a frame's length is read from the file).
const SEALED_FRAME_BYTES_MAX: usize = FRAME_BYTES_MAX + 64 * 1024;

pub const STATE_FILE: &str = "state.cgb";
pub const JOURNAL_FILE: &str = "journal.cgb";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SUMS_FILE: &str = "SHA256SUMS";

/// The restore's note in the restored database, which the gateway audits at its next
/// start (`meta` key).
pub const RESTORED_META: &str = "restored_from";

/// The purpose label of the backup's sealing key.
const KEY_PURPOSE: &str = "backup-v1";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("i/o on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} is not a complete backup: {1}")]
    Incomplete(PathBuf, String),
    #[error("the backup's manifest is not valid: {0}")]
    Manifest(String),
    #[error("{file} is damaged: its SHA-256 is {found}, the manifest says {expected}")]
    Checksum {
        file: String,
        expected: String,
        found: String,
    },
    #[error("{file} is damaged at frame {frame}: it does not open with the backup key")]
    Sealed { file: String, frame: u64 },
    #[error("the terminal key given is not the one this backup was sealed with")]
    WrongKey,
    #[error("the backup does not add up: {0}")]
    Content(String),
    #[error("{0} is in use by a running cardgate: stop it before restoring")]
    InUse(PathBuf),
    #[error(
        "{0} already holds a gateway database; restore with --force to move it aside (to {0}.replaced-TIME) and \
         restore in its place"
    )]
    NotEmpty(PathBuf),
    #[error("a backup needs the terminal key (it seals the backup): set CARDGATE_TERMINAL_KEY or terminal_key_file")]
    NoKey,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file of the backup and its checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSum {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What a backup is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub gateway_id: u64,
    pub created_ms: i64,
    /// `created_ms` in local business time, for people.
    pub created_local: String,
    pub tz_offset_minutes: i32,
    /// The backup point: the last entry in it, and its chain hash (empty if it has none).
    pub entry_id: u64,
    pub entry_hash: String,
    /// The entry the state records reflect; recovery replays the journal after it.
    pub checkpoint_id: u64,
    /// The first entry the journal in the backup holds (0 if none).
    pub first_entry_id: u64,
    pub entries: u64,
    pub records: u64,
    pub chain_start: Option<u64>,
    /// Identifies the sealing key without revealing it: a restore with another key is
    /// refused by name before anything is opened.
    pub key_id: String,
    pub files: Vec<FileSum>,
}

struct Sealer {
    cipher: ChaCha20Poly1305,
    key_id: String,
}

impl Sealer {
    fn new(key: &TerminalKey) -> Sealer {
        let k = key.derive(KEY_PURPOSE);
        let id: [u8; 32] = Sha256::digest(k).into();
        Sealer {
            cipher: ChaCha20Poly1305::new(&k.into()),
            key_id: to_hex(&id)[..16].to_string(),
        }
    }
}

fn aad(file: &str, index: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + file.len());
    a.extend_from_slice(b"cardgate-backup-v1\0");
    a.extend_from_slice(file.as_bytes());
    a.push(0);
    a.extend_from_slice(&index.to_be_bytes());
    a.push(u8::from(last));
    a
}

/// Writes `(key, value)` items into a sealed file, hashing what it writes.
struct SealedWriter<'a> {
    name: &'static str,
    path: PathBuf,
    out: BufWriter<File>,
    sha: Sha256,
    bytes: u64,
    sealer: &'a Sealer,
    plain: Vec<u8>,
    frames: u64,
    items: u64,
}

impl<'a> SealedWriter<'a> {
    fn create(dir: &Path, name: &'static str, sealer: &'a Sealer) -> Result<SealedWriter<'a>, BackupError> {
        let path = dir.join(name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(SealedWriter {
            name,
            path,
            out: BufWriter::new(file),
            sha: Sha256::new(),
            bytes: 0,
            sealer,
            plain: Vec::with_capacity(FRAME_BYTES_MAX),
            frames: 0,
            items: 0,
        })
    }

    fn item(&mut self, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        let len = |n: usize| u32::try_from(n).expect("sled keys and values are far below 4 GiB");
        if !self.plain.is_empty() && self.plain.len() + 8 + key.len() + value.len() > FRAME_BYTES_MAX {
            self.seal(false)?;
        }
        self.plain.extend_from_slice(&len(key.len()).to_le_bytes());
        self.plain.extend_from_slice(key);
        self.plain.extend_from_slice(&len(value.len()).to_le_bytes());
        self.plain.extend_from_slice(value);
        self.items += 1;
        Ok(())
    }

    fn seal(&mut self, last: bool) -> Result<(), BackupError> {
        let nonce: [u8; 12] = rand::random();
        let aad = aad(self.name, self.frames, last);
        let sealed = self
            .sealer
            .cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &self.plain,
                    aad: &aad,
                },
            )
            .expect("a frame of at most 1 MiB seals");
        let len = u32::try_from(sealed.len()).expect("a frame is far below 4 GiB");
        for part in [&len.to_le_bytes()[..], &nonce[..], &sealed[..]] {
            self.out.write_all(part).map_err(io(&self.path))?;
            self.sha.update(part);
            self.bytes += part.len() as u64;
        }
        self.frames += 1;
        self.plain.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(FileSum, u64), BackupError> {
        self.seal(true)?;
        let file = self.out.into_inner().map_err(|e| BackupError::Io {
            path: self.path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(&self.path))?;
        Ok((
            FileSum {
                name: self.name.to_string(),
                bytes: self.bytes,
                sha256: to_hex(&self.sha.finalize().into()),
            },
            self.items,
        ))
    }
}

/// Reads the items of a sealed file, checking every frame.
fn read_sealed(
    dir: &Path,
    name: &str,
    sealer: &Sealer,
    mut item: impl FnMut(&[u8], &[u8]) -> Result<(), BackupError>,
) -> Result<u64, BackupError> {
    let path = dir.join(name);
    let mut r = BufReader::new(File::open(&path).map_err(io(&path))?);
    let damaged = |frame: u64| BackupError::Sealed {
        file: name.to_string(),
        frame,
    };
    let mut index = 0u64;
    let mut items = 0u64;
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            // The last frame says it is last; a file that ends before one was cut off.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(damaged(index)),
            Err(e) => return Err(io(&path)(e)),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > SEALED_FRAME_BYTES_MAX {
            return Err(damaged(index));
        }
        let mut nonce = [0u8; 12];
        r.read_exact(&mut nonce).map_err(|_| damaged(index))?;
        buf.resize(len, 0);
        r.read_exact(&mut buf).map_err(|_| damaged(index))?;
        let open = |last: bool| {
            sealer.cipher.decrypt(
                &nonce.into(),
                Payload {
                    msg: &buf,
                    aad: &aad(name, index, last),
                },
            )
        };
        let (plain, last) = match open(false) {
            Ok(p) => (p, false),
            Err(_) => (open(true).map_err(|_| damaged(index))?, true),
        };
        let mut rest = &plain[..];
        while !rest.is_empty() {
            let take = |rest: &mut &[u8]| -> Option<Vec<u8>> {
                let (n, tail) = rest.split_first_chunk::<4>()?;
                let n = u32::from_le_bytes(*n) as usize;
                let (v, tail) = (tail.get(..n)?, tail.get(n..)?);
                *rest = tail;
                Some(v.to_vec())
            };
            let k = take(&mut rest).ok_or_else(|| damaged(index))?;
            let v = take(&mut rest).ok_or_else(|| damaged(index))?;
            item(&k, &v)?;
            items += 1;
        }
        index += 1;
        if last {
            let mut extra = [0u8; 1];
            if r.read(&mut extra).map_err(io(&path))? != 0 {
                return Err(damaged(index));
            }
            return Ok(items);
        }
    }
}

fn sha256_file(path: &Path) -> Result<(u64, String), BackupError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf).map_err(io(path))?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((n, to_hex(&h.finalize().into())))
}

fn fsync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// What a finished backup is and where.
#[derive(Clone, Debug)]
pub struct BackupDone {
    pub path: PathBuf,
    pub manifest: Manifest,
}

/// What the caller tells a backup about the gateway.
pub struct BackupOf<'a> {
    pub db: &'a Db,
    pub gateway_id: u64,
    pub tz_offset_minutes: i32,
    pub now_ms: i64,
    pub key: Option<&'a TerminalKey>,
}

/// Writes a backup of `of.db` into a new directory inside `parent`, ending at the entry
/// `through()` gives once the checkpoint gate is held (a running gateway's durable id).
/// Blocking: run it off the async runtime.
pub fn write_backup(
    of: &BackupOf<'_>,
    parent: &Path,
    through: impl FnOnce() -> u64,
) -> Result<BackupDone, BackupError> {
    let key = of.key.ok_or(BackupError::NoKey)?;
    fs::create_dir_all(parent).map_err(io(parent))?;
    let partial = parent.join(format!(
        ".cardgate-backup-{}-{}.partial",
        of.gateway_id,
        std::process::id()
    ));
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    fs::create_dir(&partial).map_err(io(&partial))?;
    let written = write_into(of, key, parent, &partial, through);
    if written.is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    written
}

fn write_into(
    of: &BackupOf<'_>,
    key: &TerminalKey,
    parent: &Path,
    partial: &Path,
    through: impl FnOnce() -> u64,
) -> Result<BackupDone, BackupError> {
    let sealer = Sealer::new(key);
    let db = of.db;
    let partial = partial.to_path_buf();

    let _hold = db.hold_pruning();
    let gate = db.checkpoint_gate();
    let point = through();
    let checkpoint_id = db.get_meta_u64(meta::CHECKPOINT_ID)?.unwrap_or(0);
    let chain_start = db.get_meta_u64(meta::CHAIN_START)?;
    // Meta values that say where the journal ends are written to match `point`.
    let reset = [
        key_meta(meta::NEXT_ENTRY_ID),
        key_meta(meta::CHAIN_HEAD),
        key_meta(meta::CHAIN_START),
        key_meta(RESTORED_META),
    ];
    let mut state = SealedWriter::create(&partial, STATE_FILE, &sealer)?;
    for kv in db.tree.iter() {
        let (k, v) = kv.map_err(StoreError::from)?;
        if k.first() == Some(&PREFIX_JOURNAL) || reset.iter().any(|r| r.as_slice() == k.as_ref()) {
            continue;
        }
        state.item(&k, &v)?;
    }
    // The records are read: checkpoints may go on. The journal stays (pruning is held).
    drop(gate);

    let mut journal = SealedWriter::create(&partial, JOURNAL_FILE, &sealer)?;
    let mut entries = 0u64;
    let mut first_entry_id = 0u64;
    let mut last: Option<(u64, Option<chain::Hash>)> = None;
    for kv in db.tree.range(key_segment(0)..key_segment(point.saturating_add(1))) {
        let (k, v) = kv.map_err(StoreError::from)?;
        let first = id_of_key(&k).unwrap_or(0);
        let framed = segment::entries(first, &v)?;
        let end = framed.last().map_or(first, |e| e.id);
        if end > point {
            // A segment is one commit's, and commits after the point are not durable yet
            // when it is read: this cannot be, and a backup must not guess.
            return Err(BackupError::Content(format!(
                "segment {first}..={end} runs past the backup point {point}"
            )));
        }
        if first_entry_id == 0 {
            first_entry_id = first;
        }
        entries += framed.len() as u64;
        last = framed.last().map(|e| (e.id, e.hash.copied()));
        journal.item(&k, &v)?;
    }
    let point_hash = match last {
        Some((id, hash)) if id == point => hash,
        Some((id, _)) => {
            return Err(BackupError::Content(format!(
                "the journal ends at {id}, before the backup point {point}"
            )));
        }
        None => db
            .get_meta_point(meta::CHAIN_BASE)?
            .filter(|b| b.id == point)
            .map(|b| b.hash),
    };
    state.item(&key_meta(meta::NEXT_ENTRY_ID), &(point + 1).to_be_bytes())?;
    if let Some(hash) = point_hash {
        state.item(&key_meta(meta::CHAIN_HEAD), &ChainPoint { id: point, hash }.encode())?;
    }
    if let Some(s) = chain_start.filter(|s| *s <= point + 1) {
        state.item(&key_meta(meta::CHAIN_START), &s.to_be_bytes())?;
    }
    let (journal_sum, _) = journal.finish()?;
    let (state_sum, records) = state.finish()?;

    let local = cardgate_domain::clock::format_local(of.now_ms, of.tz_offset_minutes);
    let manifest = Manifest {
        format: BACKUP_FORMAT,
        gateway_id: of.gateway_id,
        created_ms: of.now_ms,
        created_local: local.clone(),
        tz_offset_minutes: of.tz_offset_minutes,
        entry_id: point,
        entry_hash: point_hash.as_ref().map(to_hex).unwrap_or_default(),
        checkpoint_id,
        first_entry_id,
        entries,
        records,
        chain_start,
        key_id: sealer.key_id.clone(),
        files: vec![state_sum, journal_sum],
    };
    let manifest_path = partial.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
    write_synced(&manifest_path, text.as_bytes())?;
    let mut sums = String::new();
    for f in &manifest.files {
        sums.push_str(&format!("{}  {}\n", f.sha256, f.name));
    }
    let (_, manifest_sha) = sha256_file(&manifest_path)?;
    sums.push_str(&format!("{manifest_sha}  {MANIFEST_FILE}\n"));
    write_synced(&partial.join(SUMS_FILE), sums.as_bytes())?;
    fsync_dir(&partial)?;

    // `YYYY-MM-DD HH:MM:SS.mmm` → `YYYYMMDD-HHMMSS`.
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let (date, time) = local.split_once(' ').unwrap_or((&local, ""));
    let time = digits(time.split('.').next().unwrap_or(""));
    let name = format!("cardgate-backup-{}-{}-{time}-{point}", of.gateway_id, digits(date));
    let path = parent.join(name);
    if path.exists() {
        return Err(BackupError::Content(format!("{} exists already", path.display())));
    }
    fs::rename(&partial, &path).map_err(io(&path))?;
    fsync_dir(parent)?;
    Ok(BackupDone { path, manifest })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The manifest of the backup in `dir`, read and checked for form.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackupError::Incomplete(
                dir.to_path_buf(),
                format!("{MANIFEST_FILE} is missing"),
            ));
        }
        Err(e) => return Err(io(&path)(e)),
    };
    let m: Manifest = serde_json::from_str(&text).map_err(|e| BackupError::Manifest(e.to_string()))?;
    if m.format != BACKUP_FORMAT {
        return Err(BackupError::Manifest(format!(
            "format {} is not the format this build reads ({BACKUP_FORMAT})",
            m.format
        )));
    }
    for wanted in [STATE_FILE, JOURNAL_FILE] {
        if !m.files.iter().any(|f| f.name == wanted) {
            return Err(BackupError::Manifest(format!("it lists no {wanted}")));
        }
    }
    if m.files
        .iter()
        .any(|f| f.name.contains('/') || f.name.contains('\\') || f.name.starts_with('.'))
    {
        return Err(BackupError::Manifest("a file name is not a plain name".into()));
    }
    if m.checkpoint_id > m.entry_id {
        return Err(BackupError::Manifest(format!(
            "its checkpoint ({}) is after its last entry ({})",
            m.checkpoint_id, m.entry_id
        )));
    }
    Ok(m)
}

/// What a verified backup holds.
pub struct Verified {
    pub manifest: Manifest,
    /// Every key and value, in file order: the state, then the journal.
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Checks the backup in `dir` completely: the manifest, every file's size and SHA-256,
/// every sealed frame, and that its journal ends at the entry and hash it names.
pub fn verify_backup(dir: &Path, key: &TerminalKey) -> Result<Verified, BackupError> {
    let m = read_manifest(dir)?;
    for f in &m.files {
        let path = dir.join(&f.name);
        if !path.is_file() {
            return Err(BackupError::Incomplete(
                dir.to_path_buf(),
                format!("{} is missing", f.name),
            ));
        }
        let (bytes, sha) = sha256_file(&path)?;
        if sha != f.sha256 || bytes != f.bytes {
            return Err(BackupError::Checksum {
                file: f.name.clone(),
                expected: format!("{} ({} bytes)", f.sha256, f.bytes),
                found: format!("{sha} ({bytes} bytes)"),
            });
        }
    }
    let sealer = Sealer::new(key);
    if sealer.key_id != m.key_id {
        return Err(BackupError::WrongKey);
    }
    let mut items = Vec::new();
    let records = read_sealed(dir, STATE_FILE, &sealer, |k, v| {
        if k.first() == Some(&PREFIX_JOURNAL) {
            return Err(BackupError::Content("the state file holds a journal segment".into()));
        }
        items.push((k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    let mut entries = 0u64;
    let mut last: Option<(u64, Option<chain::Hash>)> = None;
    let mut expected_first: Option<u64> = None;
    read_sealed(dir, JOURNAL_FILE, &sealer, |k, v| {
        if k.first() != Some(&PREFIX_JOURNAL) {
            return Err(BackupError::Content("the journal file holds a record".into()));
        }
        let first = id_of_key(k).unwrap_or(0);
        if let Some(want) = expected_first
            && first != want
        {
            return Err(BackupError::Content(format!(
                "the journal jumps from entry {} to {first}",
                want - 1
            )));
        }
        let framed = segment::entries(first, v)?;
        entries += framed.len() as u64;
        last = framed.last().map(|e| (e.id, e.hash.copied()));
        expected_first = last.map(|(id, _)| id + 1);
        items.push((k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    if records != m.records || entries != m.entries {
        return Err(BackupError::Content(format!(
            "it holds {records} records and {entries} entries; the manifest says {} and {}",
            m.records, m.entries
        )));
    }
    if let Some((id, hash)) = last {
        if id != m.entry_id {
            return Err(BackupError::Content(format!(
                "its journal ends at entry {id}; the manifest says {}",
                m.entry_id
            )));
        }
        if hash.as_ref().map(to_hex).unwrap_or_default() != m.entry_hash {
            return Err(BackupError::Content(format!(
                "entry {id}'s hash is not the one the manifest names"
            )));
        }
    }
    Ok(Verified { manifest: m, items })
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreDone {
    pub manifest: Manifest,
    /// Where the database that was there went (with `force`).
    pub replaced: Option<PathBuf>,
}

/// sled's files in a data directory; everything else there (the default SQLite central
/// store, an operator's notes) is left alone.
fn is_sled_file(name: &str) -> bool {
    matches!(name, "conf" | "db" | "blobs") || name.starts_with("snap.")
}

/// Brings the stopped gateway's data directory `data` back to exactly the backup in
/// `backup`. Refuses, changing nothing, a damaged or partial backup, a data directory in
/// use, and one holding a database unless `force` (which moves it aside).
pub fn restore(
    backup: &Path,
    data: &Path,
    key: &TerminalKey,
    force: bool,
    now_ms: i64,
) -> Result<RestoreDone, BackupError> {
    let verified = verify_backup(backup, key)?;
    let m = verified.manifest;

    let existing: Vec<PathBuf> = match fs::read_dir(data) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .filter(|e| is_sled_file(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(data)(e)),
    };
    let sled_log = data.join("db");
    if sled_log.is_file() {
        // sled holds an exclusive lock on its log while it has the database open.
        let f = File::open(&sled_log).map_err(io(&sled_log))?;
        match f.try_lock() {
            Ok(()) => drop(f),
            Err(std::fs::TryLockError::WouldBlock) => return Err(BackupError::InUse(data.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&sled_log)(e)),
        }
    }
    if !existing.is_empty() && !force {
        return Err(BackupError::NotEmpty(data.to_path_buf()));
    }

    // Build the database beside the data directory (same file system: moving it in is a
    // rename), from the verified items.
    let parent = data
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = data
        .file_name()
        .map_or("data".into(), |n| n.to_string_lossy().to_string());
    let building = parent.join(format!(".{base}.restoring-{}", std::process::id()));
    if building.exists() {
        fs::remove_dir_all(&building).map_err(io(&building))?;
    }
    {
        let db = Db::open(&building)?;
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for (k, v) in &verified.items {
            batch.insert(k.as_slice(), v.as_slice());
            n += 1;
            if n.is_multiple_of(10_000) {
                db.tree
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(StoreError::from)?;
            }
        }
        let note = serde_json::json!({
            "backup": backup.display().to_string(),
            "entry_id": m.entry_id,
            "entry_hash": m.entry_hash,
            "created_local": m.created_local,
            "restored_ms": now_ms,
        })
        .to_string();
        batch.insert(key_meta(RESTORED_META), note.as_bytes());
        db.tree.apply_batch(batch).map_err(StoreError::from)?;
        db.db.flush().map_err(StoreError::from)?;
        // Read back what was built: it ends where the backup says.
        let next = db.get_meta_u64(meta::NEXT_ENTRY_ID)?.unwrap_or(1);
        if next != m.entry_id + 1 {
            return Err(BackupError::Content(format!(
                "the restored journal continues at {next}, not {}",
                m.entry_id + 1
            )));
        }
        if !m.entry_hash.is_empty() && db.entry_hash(m.entry_id)?.as_ref().map(to_hex) != Some(m.entry_hash.clone()) {
            return Err(BackupError::Content(
                "the restored journal's last hash is not the backup's".into(),
            ));
        }
        if db.get_meta_u64(ledger_meta::GATEWAY_ID)? != Some(m.gateway_id) {
            return Err(BackupError::Content(
                "the restored gateway id is not the backup's".into(),
            ));
        }
    }
    for name in ["db", "conf"] {
        let p = building.join(name);
        if let Ok(f) = File::open(&p) {
            f.sync_all().map_err(io(&p))?;
        }
    }
    fsync_dir(&building)?;

    fs::create_dir_all(data).map_err(io(data))?;
    let replaced = if existing.is_empty() {
        None
    } else {
        let aside = parent.join(format!("{base}.replaced-{now_ms}"));
        fs::create_dir(&aside).map_err(io(&aside))?;
        for p in &existing {
            let to = aside.join(p.file_name().unwrap_or_default());
            fs::rename(p, &to).map_err(io(p))?;
        }
        fsync_dir(&aside)?;
        Some(aside)
    };
    for e in fs::read_dir(&building).map_err(io(&building))? {
        let e = e.map_err(io(&building))?;
        let to = data.join(e.file_name());
        fs::rename(e.path(), &to).map_err(io(&to))?;
    }
    fsync_dir(data)?;
    fs::remove_dir(&building).map_err(io(&building))?;
    Ok(RestoreDone { manifest: m, replaced })
}

impl crate::Ledger {
    /// Writes a backup of this running gateway into a new directory inside `parent`,
    /// ending at the entry durable when it starts. Terminals go on being answered.
    pub async fn backup(&self, parent: &Path) -> Result<BackupDone, BackupError> {
        let db = self.db().clone();
        let stats = self.journal().stats.clone();
        let key = self.sealing_key().cloned();
        let gateway_id = self.gateway_id();
        let tz = self.tz_offset_minutes();
        let now_ms = self.now_ms();
        let parent = parent.to_path_buf();
        let started = std::time::Instant::now();
        let done = tokio::task::spawn_blocking(move || {
            let of = BackupOf {
                db: &db,
                gateway_id,
                tz_offset_minutes: tz,
                now_ms,
                key: key.as_ref(),
            };
            write_backup(&of, &parent, || {
                stats.durable_entry_id.load(std::sync::atomic::Ordering::Acquire)
            })
        })
        .await
        .map_err(|e| BackupError::Content(format!("the backup task failed: {e}")))?;
        match &done {
            Ok(d) => {
                metrics::counter!("cardgate_backups_total", "result" => "ok").increment(1);
                metrics::gauge!("cardgate_backup_last_success_timestamp_seconds").set(now_ms as f64 / 1000.0);
                metrics::gauge!("cardgate_backup_last_entry_id").set(d.manifest.entry_id as f64);
                metrics::histogram!("cardgate_backup_seconds").record(started.elapsed().as_secs_f64());
            }
            Err(_) => metrics::counter!("cardgate_backups_total", "result" => "error").increment(1),
        }
        done
    }

    /// The note a restore left in the database, taken (removed) so that it is audited
    /// once: the gateway journals it at its first start after the restore.
    pub fn take_restore_note(&self) -> Result<Option<String>, StoreError> {
        let key = key_meta(RESTORED_META);
        let Some(v) = self.db().tree.get(&key)? else {
            return Ok(None);
        };
        self.db().tree.remove(&key)?;
        Ok(Some(String::from_utf8_lossy(&v).to_string()))
    }
}
