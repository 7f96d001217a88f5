//! `Ledger`: the state in memory, the journal it writes through, and the clock it
//! decides by. Its operations live in the files of their concern (`pay.rs`,
//! `terminals.rs`, `desk/`, `import.rs`, `history.rs`, `audit.rs`); how it is rebuilt
//! at start-up lives in `recovery.rs`.

use std::path::Path;
use std::sync::Arc;

use cardgate_codec::CardNo;
use cardgate_domain::clock::{Clock, business_day};
use cardgate_domain::model::{Account, Card, Params, Terminal};
use cardgate_journal::{CommitterHandle, Db, SledStore, Store};
use rust_decimal::Decimal;

use crate::blacklist::Blacklist;
pub use crate::config::{LedgerConfig, OFFLINE_LIMITS_DEFAULT};
use crate::error::LedgerError;
use crate::records::Journal;
use crate::recovery::RecoveryStats;
use crate::state::State;

pub struct Ledger {
    pub(crate) state: State,
    journal: Journal,
    db: Db,
    gateway_id: u64,
    pub(crate) config: LedgerConfig,
    clock: Arc<dyn Clock>,
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir` and rebuilds exactly the durable state.
    pub fn open(
        dir: &Path,
        config: LedgerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Arc<Ledger>, CommitterHandle, RecoveryStats), LedgerError> {
        Ledger::open_with_store(dir, config, clock, |s| Box::new(s))
    }

    /// As `open`, with the committer's store wrapped (fault injection in tests).
    pub fn open_with_store(
        dir: &Path,
        config: LedgerConfig,
        clock: Arc<dyn Clock>,
        wrap: impl FnOnce(SledStore) -> Box<dyn Store>,
    ) -> Result<(Arc<Ledger>, CommitterHandle, RecoveryStats), LedgerError> {
        let r = crate::recovery::recover(dir, &config, wrap)?;
        let ledger = Ledger {
            state: r.state,
            journal: r.journal,
            db: r.db,
            gateway_id: r.gateway_id,
            config,
            clock,
        };
        Ok((Arc::new(ledger), r.committer, r.stats))
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn gateway_id(&self) -> u64 {
        self.gateway_id
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The key that seals terminal secrets (and backups), if one was given.
    pub fn sealing_key(&self) -> Option<&crate::keys::TerminalKey> {
        self.config.terminal_key.as_ref()
    }

    pub fn tz_offset_minutes(&self) -> i32 {
        self.config.tz_offset_minutes
    }

    /// The business day (local time) of `ms`.
    pub fn day_of(&self, ms: i64) -> i32 {
        business_day(ms, self.config.tz_offset_minutes)
    }

    pub fn today(&self) -> i32 {
        self.day_of(self.now_ms())
    }

    pub fn params(&self) -> Params {
        **self.state.params()
    }

    pub fn blacklist(&self) -> &Blacklist {
        self.state.blacklist()
    }

    pub fn blacklist_version(&self) -> u64 {
        self.state.blacklist().version()
    }

    pub fn account(&self, id: u64) -> Option<Account> {
        self.state.account(id)
    }

    pub fn card(&self, no: CardNo) -> Option<Card> {
        self.state.card(no)
    }

    pub fn terminal(&self, id: u64) -> Option<Terminal> {
        self.state.terminal(id).map(|t| t.info.clone())
    }

    /// (accounts, cards, terminals).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.state.accounts_len(),
            self.state.cards_len(),
            self.state.terminals_len(),
        )
    }

    /// The sum of every balance. Not a snapshot across accounts while money moves.
    pub fn total_balance(&self) -> Decimal {
        let mut total = Decimal::ZERO;
        self.state.for_each_account(|a| total += a.balance);
        total
    }
}
