//! Fixtures for cardgate's criterion benchmarks (`benches/`): a signed-on pair of
//! codecs, a ledger with the demo campus in a temporary directory and its committer
//! running, and realistic journal submissions. The benchmarks themselves measure the
//! three hot paths of a purchase: the frame codec with its MAC, the decision in the
//! ledger, and the group commit that makes decisions durable. `bench/README.md` says how
//! to run them and the PostgreSQL baseline next to them.
#![forbid(unsafe_code)]
// Amounts in fen are written yuan_fen (`1_000_00` is 1,000.00 yuan).
#![allow(clippy::inconsistent_digit_grouping)]

use std::path::PathBuf;
use std::sync::Arc;

use cardgate_codec::crypto::SignOnInput;
use cardgate_codec::{CardNo, Purchase, Side, TerminalCodec, TerminalSecret};
use cardgate_domain::entry::{EntryBody, EntryRecord, TxEntry};
use cardgate_domain::model::{Account, AccountKind, AccountStatus, Outcome, TxKind};
use cardgate_domain::money::from_fen;
use cardgate_ledger::demo::{DemoCampus, demo_card, ensure_demo};
use cardgate_ledger::pay::seq_record_of;
use cardgate_ledger::records::{StateWrite, Submission, Writes};
use cardgate_ledger::{Ledger, LedgerConfig, SystemClock};
use tokio::sync::oneshot;

/// Where benchmark data directories go: `$CARDGATE_BENCH_DIR`, else the system's
/// temporary directory. Durable-write figures are only comparable with the gateway's
/// when this is on the same disk as its data directory (and not a tmpfs).
pub fn bench_dir() -> PathBuf {
    std::env::var_os("CARDGATE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Whether criterion is measuring (`cargo bench`) rather than running each benchmark
/// once as a test (`cargo test`), so that fixtures can stay small in tests.
pub fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The gateway's and the terminal's codecs of one signed-on session.
pub fn session_codecs() -> (TerminalCodec, TerminalCodec) {
    let secret = TerminalSecret::derive_demo(b"bench", 1);
    let input = SignOnInput {
        terminal_id: 1,
        terminal_nonce: [1; 16],
        gateway_nonce: [2; 16],
    };
    let mut gateway = TerminalCodec::new(Side::Gateway);
    let mut terminal = TerminalCodec::new(Side::Terminal);
    gateway.install_session(input.session_keys(&secret));
    terminal.install_session(input.session_keys(&secret));
    (gateway, terminal)
}

/// A demo campus sized for measuring, or tiny for a test run.
pub fn campus() -> DemoCampus {
    if measuring() {
        DemoCampus {
            accounts: 20_000,
            pos_terminals: 1_000,
            balance_fen: 1_000_00,
        }
    } else {
        DemoCampus {
            accounts: 200,
            pos_terminals: 20,
            balance_fen: 1_000_00,
        }
    }
}

/// A ledger over a temporary directory with the demo campus, its committer running.
pub struct LedgerFixture {
    ledger: Option<Arc<Ledger>>,
    committer: Option<cardgate_journal::CommitterHandle>,
    pub campus: DemoCampus,
    /// Next sequence number per terminal (index = terminal id - 1).
    next_seq: Vec<u64>,
    next_terminal: usize,
    next_account: u64,
    _dir: tempfile::TempDir,
}

impl LedgerFixture {
    pub fn open(rt: &tokio::runtime::Runtime) -> LedgerFixture {
        let dir = tempfile::Builder::new()
            .prefix("cardgate-bench-")
            .tempdir_in(bench_dir())
            .expect("create a benchmark data directory");
        let config = LedgerConfig {
            terminal_key: Some(cardgate_ledger::keys::TerminalKey::demo()),
            ..LedgerConfig::default()
        };
        let (ledger, committer, _) =
            Ledger::open(dir.path(), config, Arc::new(SystemClock)).expect("open the benchmark ledger");
        let campus = campus();
        rt.block_on(ensure_demo(&ledger, &campus))
            .expect("create the demo campus");
        LedgerFixture {
            ledger: Some(ledger),
            committer: Some(committer),
            campus,
            next_seq: vec![1; campus.pos_terminals as usize],
            next_terminal: 0,
            next_account: 0,
            _dir: dir,
        }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        self.ledger.as_ref().expect("present until dropped")
    }

    /// The next purchase: terminals and cards in turn, one fen each, so that no account
    /// reaches a limit within any benchmark run and every purchase is approved.
    pub fn next_purchase(&mut self) -> (u64, Purchase) {
        let t = self.next_terminal;
        self.next_terminal = (t + 1) % self.next_seq.len();
        let seq = self.next_seq[t];
        self.next_seq[t] += 1;
        self.next_account = self.next_account % self.campus.accounts + 1;
        (
            t as u64 + 1,
            Purchase {
                tx_seq: seq,
                card: demo_card(self.next_account),
                amount_fen: 1,
                terminal_time_ms: 0,
            },
        )
    }
}

impl Drop for LedgerFixture {
    fn drop(&mut self) {
        // The committer exits once the last ledger handle (and its journal) is gone;
        // join it before the directory is removed.
        drop(self.ledger.take());
        if let Some(c) = self.committer.take() {
            c.join();
        }
    }
}

/// A purchase decision as the ledger submits it: the entry, the account it left and the
/// remembered outcome. `i` picks the terminal, account and sequence number.
pub fn purchase_submission(i: u64, done: oneshot::Sender<cardgate_journal::CommitResult>) -> Submission {
    let terminal = i % 1_000 + 1;
    let account = i % 20_000 + 1;
    let balance_after = 1_000_00 - 1 - (i as i64 % 1_000);
    let entry = TxEntry {
        kind: TxKind::Purchase,
        tx_id: i + 1,
        terminal,
        merchant_id: terminal / 50 + 1,
        seq: i / 1_000 + 1,
        original_seq: 0,
        original_tx_id: 0,
        card: CardNo(1_000_000_000 + account),
        account,
        amount_fen: 12_50,
        outcome: Outcome::Approved {
            tx_id: i + 1,
            balance_after_fen: balance_after,
        },
        terminal_time_ms: 1_780_000_000_000,
        single_limit_fen: 200_00,
        daily_limit_fen: 600_00,
        spent_today_after_fen: 12_50,
        blacklist_version: 0,
    };
    let now = 1_780_000_000_000;
    let mut writes = Writes::new();
    writes.push(StateWrite::Account(Account {
        id: account,
        kind: AccountKind::Student,
        status: AccountStatus::Active,
        balance: from_fen(balance_after),
        limits: None,
        day: 20_600,
        spent_today: from_fen(12_50),
    }));
    writes.push(StateWrite::Seq(seq_record_of(&entry, now)));
    Submission {
        entries: smallvec::smallvec![EntryRecord {
            time_ms: now,
            body: EntryBody::Tx(entry),
        }],
        records: writes,
        mark: i + 1,
        force_sync: false,
        done: Some(done),
    }
}
