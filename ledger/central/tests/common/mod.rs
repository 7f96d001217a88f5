//! A journal on disk with no decisions running: the entries a gateway would write,
//! appended by hand, with a plain model of the balances they leave. The central store
//! is tested against it alone; nothing here is the ledger.

#![allow(dead_code)]
// Amounts in fen are written yuan_fen (`12_50` is 12.50 yuan).
#![allow(clippy::inconsistent_digit_grouping)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cardgate_central::flusher::JournalSource;
use cardgate_codec::{CardNo, DeclineReason};
use cardgate_domain::ManualClock;
use cardgate_domain::entry::{EntryBody, EntryRecord, TxEntry};
use cardgate_domain::model::{Account, AccountKind, AccountStatus, Outcome, TxKind};
use cardgate_domain::money::from_fen;
use cardgate_journal::{CheckpointPolicy, CommitterHandle, Db, Journal, Schema, StoreError, Submission, Write};

/// 2026-11-28 12:05:00 in UTC+8 (lunch).
pub const LUNCH_MS: i64 = 1_795_853_100_000;

/// The POS terminal every purchase comes from.
pub const POS: u64 = 1;

/// Entries only: this journal keeps no state records.
pub struct EntriesOnly;

impl Schema for EntriesOnly {
    type Entry = EntryRecord;
    type Record = ();
    type Key = ();

    fn encode_entry(entry: &EntryRecord, out: &mut Vec<u8>) {
        EntryRecord::encode_into(entry.time_ms, &entry.body, out);
    }

    fn key(_: &()) -> Option<()> {
        Some(())
    }

    fn commit_write(_: &()) -> Write {
        unreachable!("no record is written with its commit")
    }

    fn checkpoint_writes<'a>(
        _: &cardgate_journal::sled::Tree,
        _: impl Iterator<Item = &'a ()>,
    ) -> Result<Vec<Write>, StoreError> {
        Ok(Vec::new())
    }
}

pub struct Fixture {
    dir: tempfile::TempDir,
    pub db: Db,
    journal: Option<Journal<EntriesOnly>>,
    committer: Option<CommitterHandle>,
    pub clock: ManualClock,
    pub gateway_id: u64,
    /// What the entries leave: every account's balance, in fen.
    balances: BTreeMap<u64, i64>,
    next_tx_id: u64,
    next_seq: u64,
}

impl Fixture {
    /// Accounts 1..=5 with 100.00 each.
    pub async fn new() -> Fixture {
        let mut f = Fixture::open(
            tempfile::tempdir().unwrap(),
            ManualClock::new(LUNCH_MS),
            BTreeMap::new(),
            1,
            1,
        );
        for id in 1..=5 {
            f.open_account(id, 100_00).await;
        }
        f
    }

    fn open(dir: tempfile::TempDir, clock: ManualClock, balances: BTreeMap<u64, i64>, tx: u64, seq: u64) -> Fixture {
        let db = Db::open(dir.path()).unwrap();
        let next = db
            .get_meta_u64(cardgate_journal::store::meta::NEXT_ENTRY_ID)
            .unwrap()
            .unwrap_or(1);
        let checkpoint = db
            .get_meta_u64(cardgate_journal::store::meta::CHECKPOINT_ID)
            .unwrap()
            .unwrap_or(0);
        let store = db.store().unwrap();
        let (journal, committer) = Journal::<EntriesOnly>::start(
            db.clone(),
            Box::new(store),
            next,
            checkpoint,
            CheckpointPolicy::default(),
        )
        .unwrap();
        Fixture {
            dir,
            db,
            journal: Some(journal),
            committer: Some(committer),
            clock,
            gateway_id: 0x00C0_FFEE,
            balances,
            next_tx_id: tx,
            next_seq: seq,
        }
    }

    /// Stops the journal the way shutdown does (a final checkpoint through the last
    /// entry) and opens it again.
    pub fn restart(mut self) -> Fixture {
        drop(self.journal.take());
        self.committer.take().expect("running").join();
        let Fixture {
            dir,
            db,
            clock,
            balances,
            next_tx_id,
            next_seq,
            ..
        } = self;
        drop(db);
        // sled's I/O threads may hold the file lock for a moment after the last handle.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Db::open(dir.path()) {
                Ok(db) => {
                    drop(db);
                    break;
                }
                Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
        Fixture::open(dir, clock, balances, next_tx_id, next_seq)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn source(&self) -> JournalSource {
        let j = self.journal.as_ref().expect("running");
        JournalSource {
            db: self.db.clone(),
            stats: j.stats.clone(),
            gateway_id: self.gateway_id,
            clock: Arc::new(self.clock.clone()),
        }
    }

    pub fn durable(&self) -> u64 {
        self.journal
            .as_ref()
            .unwrap()
            .stats
            .durable_entry_id
            .load(Ordering::Acquire)
    }

    pub fn checkpoint(&self) -> u64 {
        self.journal
            .as_ref()
            .unwrap()
            .stats
            .durable_checkpoint_id
            .load(Ordering::Acquire)
    }

    /// Appends one entry, decided now, and waits until it is durable; returns its id.
    pub async fn append(&self, body: EntryBody) -> u64 {
        let (done, wait) = tokio::sync::oneshot::channel();
        let j = self.journal.as_ref().expect("running");
        j.reserve().await.unwrap().send(Submission {
            entries: [EntryRecord {
                time_ms: self.clock_now(),
                body,
            }]
            .into_iter()
            .collect(),
            records: Default::default(),
            mark: 0,
            force_sync: false,
            done: Some(done),
        });
        wait.await.unwrap().unwrap()
    }

    fn clock_now(&self) -> i64 {
        cardgate_domain::Clock::now_ms(&self.clock)
    }

    pub fn new_tx_id(&mut self) -> u64 {
        self.next_tx_id += 1;
        self.next_tx_id - 1
    }

    pub fn balance_fen(&self, account: u64) -> i64 {
        self.balances[&account]
    }

    /// The model follows a desk entry appended by hand.
    pub fn set_balance(&mut self, account: u64, fen: i64) {
        self.balances.insert(account, fen);
    }

    pub async fn open_account(&mut self, id: u64, balance_fen: i64) {
        self.append(EntryBody::AccountOpened(account(id, balance_fen))).await;
        self.balances.insert(id, balance_fen);
    }

    /// A purchase at `POS`: approved when the balance covers it, else declined. Returns
    /// its tx id if approved.
    pub async fn buy(&mut self, account: u64, amount_fen: i64) -> Option<u64> {
        let balance = self.balances[&account];
        let seq = self.next_seq;
        self.next_seq += 1;
        let outcome = if balance >= amount_fen {
            let tx_id = self.new_tx_id();
            self.balances.insert(account, balance - amount_fen);
            Outcome::Approved {
                tx_id,
                balance_after_fen: balance - amount_fen,
            }
        } else {
            Outcome::Declined {
                reason: DeclineReason::InsufficientFunds.code(),
                balance_fen: balance,
            }
        };
        self.append(EntryBody::Tx(tx(
            TxKind::Purchase,
            seq,
            0,
            account,
            amount_fen,
            outcome,
        )))
        .await;
        match outcome {
            Outcome::Approved { tx_id, .. } => Some(tx_id),
            Outcome::Declined { .. } => None,
        }
    }

    /// An approved reversal of `amount_fen` to `account`; returns its tx id.
    pub async fn reverse(&mut self, account: u64, original_tx_id: u64, amount_fen: i64) -> u64 {
        let balance = self.balances[&account] + amount_fen;
        self.balances.insert(account, balance);
        let seq = self.next_seq;
        self.next_seq += 1;
        let tx_id = self.new_tx_id();
        let outcome = Outcome::Approved {
            tx_id,
            balance_after_fen: balance,
        };
        let mut t = tx(TxKind::Reversal, seq, seq - 1, account, amount_fen, outcome);
        t.original_tx_id = original_tx_id;
        self.append(EntryBody::Tx(t)).await;
        tx_id
    }

    /// Purchases (every seventh declined) and one reversal; returns the tx ids approved.
    pub async fn business(&mut self) -> Vec<u64> {
        let mut approved = Vec::new();
        let mut first = None;
        for i in 0..20u64 {
            let account = 1 + i % 5;
            let amount = if i % 7 == 6 { 1_000_00 } else { 1_00 + i as i64 };
            if let Some(id) = self.buy(account, amount).await {
                first.get_or_insert((account, id, amount));
                approved.push(id);
            }
        }
        let (account, original, amount) = first.expect("some purchases are approved");
        approved.push(self.reverse(account, original, amount).await);
        approved
    }

    /// Every entry the journal holds, decoded.
    pub fn entries(&self) -> Vec<cardgate_central::schema::JournalEntry> {
        self.db.read_entries(0, usize::MAX, EntryRecord::decode).unwrap()
    }
}

pub fn account(id: u64, balance_fen: i64) -> Account {
    Account {
        id,
        kind: AccountKind::Student,
        status: AccountStatus::Active,
        balance: from_fen(balance_fen),
        limits: None,
        day: 0,
        spent_today: from_fen(0),
    }
}

pub fn tx(kind: TxKind, seq: u64, original_seq: u64, account: u64, amount_fen: i64, outcome: Outcome) -> TxEntry {
    TxEntry {
        kind,
        tx_id: match outcome {
            Outcome::Approved { tx_id, .. } => tx_id,
            Outcome::Declined { .. } => 0,
        },
        terminal: POS,
        merchant_id: 7,
        seq,
        original_seq,
        original_tx_id: 0,
        card: CardNo(100 + account),
        account,
        amount_fen,
        outcome,
        terminal_time_ms: 0,
        single_limit_fen: 200_00,
        daily_limit_fen: 600_00,
        spent_today_after_fen: 0,
        blacklist_version: 0,
    }
}

/// A SQLite central store's URL in a new temporary directory, which the caller keeps.
pub fn temp_sqlite() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("central.db").display());
    (dir, url)
}

/// Polls `cond` until it holds; fails the test after a generous deadline (this waits for
/// work to happen, it does not measure how fast).
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
