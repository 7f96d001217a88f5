//! A ledger in a temp directory with a manual clock, a few terminals and accounts, and
//! the ability to restart it.

#![allow(dead_code)]

pub mod dump;

use std::path::Path;
use std::sync::Arc;

use cardgate_codec::{AccessCheck, AccessReason, CardNo, Direction, Message, Punch, Purchase, Reversal};
use cardgate_domain::model::{Account, AccountKind, AccountStatus, Card, CardStatus, Limits, Terminal, TerminalKind};
use cardgate_domain::money::from_fen;
use cardgate_journal::CommitterHandle;
use cardgate_journal::Store;
use cardgate_ledger::{Ledger, LedgerConfig, ManualClock};
use rust_decimal::Decimal;

/// 2026-11-28 12:05:00 in UTC+8 (lunch).
pub const LUNCH_MS: i64 = 1_795_853_100_000;

pub const POS: u64 = 1;
pub const POS_2: u64 = 2;
pub const DOOR: u64 = 10;
pub const POS_DISABLED: u64 = 11;

/// Runs `open` until the data directory's lock is free. After a ledger is dropped and its
/// committer joined, sled's I/O threads may hold the directory's lock a moment longer, so
/// a test that opens the same directory again in the same process waits (up to ten
/// seconds) where a second process would rightly be refused at once.
pub fn reopen<T>(mut open: impl FnMut() -> Result<T, cardgate_ledger::LedgerError>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            r => return r.unwrap_or_else(|e| panic!("open the ledger: {e}")),
        }
    }
}

pub fn is_lock_error(e: &cardgate_ledger::LedgerError) -> bool {
    e.to_string().contains("could not acquire lock")
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub ledger: Arc<Ledger>,
    committer: Option<CommitterHandle>,
    pub clock: ManualClock,
    pub config: LedgerConfig,
}

pub fn pos(id: u64) -> Terminal {
    Terminal {
        id,
        secret: [id as u8; 32],
        kind: TerminalKind::Pos,
        merchant_id: 7,
        enabled: true,
        name: format!("POS {id}"),
        place: "Canteen 7".into(),
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
        spent_today: Decimal::ZERO,
    }
}

pub fn card(no: u64, account: u64) -> Card {
    Card {
        no: CardNo(no),
        account,
        status: CardStatus::Active,
        expires_ms: None,
        issued_ms: 0,
    }
}

pub fn generous(mut a: Account) -> Account {
    a.limits = Some(Limits {
        single_payment_max: from_fen(1_000_000_00),
        daily_max: from_fen(1_000_000_000),
    });
    a
}

impl Fixture {
    pub fn open(dir: tempfile::TempDir, config: LedgerConfig, clock: ManualClock) -> Fixture {
        Fixture::open_with(dir, config, clock, |s| Box::new(s))
    }

    pub fn open_with(
        dir: tempfile::TempDir,
        config: LedgerConfig,
        clock: ManualClock,
        wrap: impl FnOnce(cardgate_journal::SledStore) -> Box<dyn Store>,
    ) -> Fixture {
        // The store is wrapped once it has opened, so a lock error (which comes before)
        // leaves `wrap` for the next attempt.
        let mut wrap = Some(wrap);
        let (ledger, committer, _) = reopen(|| {
            Ledger::open_with_store(dir.path(), config.clone(), Arc::new(clock.clone()), |s| {
                (wrap.take().expect("a store that opened is not opened again"))(s)
            })
        });
        Fixture {
            dir,
            ledger,
            committer: Some(committer),
            clock,
            config,
        }
    }

    /// Terminals 1, 2 (POS), 10 (door), 11 (disabled POS); accounts 1..=5 with 100.00
    /// and cards 100 + account id.
    pub async fn new() -> Fixture {
        Fixture::with_config(LedgerConfig::default()).await
    }

    pub async fn with_config(config: LedgerConfig) -> Fixture {
        let f = Fixture::open(tempfile::tempdir().unwrap(), config, ManualClock::new(LUNCH_MS));
        let mut door = pos(DOOR);
        door.kind = TerminalKind::Door;
        let mut disabled = pos(POS_DISABLED);
        disabled.enabled = false;
        let accounts: Vec<_> = (1..=5).map(|id| account(id, 100_00)).collect();
        let cards: Vec<_> = (1..=5).map(|id| card(100 + id, id)).collect();
        f.ledger
            .bulk_create(vec![pos(POS), pos(POS_2), door, disabled], &accounts, &cards)
            .await
            .unwrap();
        f
    }

    /// Stops the ledger the way shutdown does, and opens the same directory again.
    pub fn restart(self) -> Fixture {
        self.restart_with(|s| Box::new(s))
    }

    pub fn restart_with(mut self, wrap: impl FnOnce(cardgate_journal::SledStore) -> Box<dyn Store>) -> Fixture {
        let committer = self.committer.take().expect("running");
        let Fixture {
            dir,
            ledger,
            clock,
            config,
            ..
        } = self;
        assert_eq!(Arc::strong_count(&ledger), 1, "a test still holds the ledger");
        drop(ledger);
        committer.join();
        Fixture::open_with(dir, config, clock, wrap)
    }

    /// Stops the ledger the way shutdown does; its directory stays.
    pub fn stop(mut self) -> tempfile::TempDir {
        let committer = self.committer.take().expect("running");
        assert_eq!(Arc::strong_count(&self.ledger), 1, "a test still holds the ledger");
        drop(self.ledger);
        committer.join();
        self.dir
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub async fn buy(&self, terminal: u64, seq: u64, card_no: u64, amount_fen: i64) -> Message {
        let p = Purchase {
            tx_seq: seq,
            card: CardNo(card_no),
            amount_fen,
            terminal_time_ms: 0,
        };
        self.ledger.purchase(terminal, &p).await.resolve().await
    }

    pub async fn reverse(&self, terminal: u64, seq: u64, original: u64, card_no: u64, amount_fen: i64) -> Message {
        let r = Reversal {
            tx_seq: seq,
            original_tx_seq: original,
            card: CardNo(card_no),
            amount_fen,
            terminal_time_ms: 0,
        };
        self.ledger.reversal(terminal, &r).await.resolve().await
    }

    /// The demo campus the door tests use: three accounts, one POS terminal, one door
    /// controller and one attendance clock (keys from `TerminalKey::demo`).
    pub async fn demo_doors(&self) {
        let campus = cardgate_ledger::demo::DemoCampus {
            accounts: 3,
            pos_terminals: 1,
            balance_fen: 100_00,
        };
        cardgate_ledger::demo::ensure_demo(&self.ledger, &campus).await.unwrap();
        cardgate_ledger::demo::ensure_demo_doors(&self.ledger, 1, 1)
            .await
            .unwrap();
    }

    /// A punch of `card` at the demo campus's first attendance clock, at lunch: the answer.
    pub async fn demo_punch(&self, seq: u64, card: CardNo) -> Message {
        let clock = cardgate_ledger::demo::DEMO_CLOCK_TERMINAL_BASE + 1;
        let punch = Punch {
            event_seq: seq,
            card,
            controller_time_ms: LUNCH_MS,
        };
        self.ledger.punch_frame(clock, &punch).await.resolve().await
    }

    /// An access check by the demo campus's first door controller: demo card 1 at door 1,
    /// going in, at lunch. Its reason.
    pub async fn demo_door_check(&self, seq: u64) -> AccessReason {
        self.demo_door_check_of(seq, cardgate_ledger::demo::demo_card(1)).await
    }

    /// A check at the first demo controller's door of `card`.
    pub async fn demo_door_check_of(&self, seq: u64, card: cardgate_codec::CardNo) -> AccessReason {
        let controller = cardgate_ledger::demo::DEMO_DOOR_TERMINAL_BASE + 1;
        let check = AccessCheck {
            event_seq: seq,
            card,
            door: 1,
            direction: Direction::In,
            controller_time_ms: LUNCH_MS,
        };
        match self.ledger.access_check_frame(controller, &check).await.resolve().await {
            Message::AccessResult(r) => {
                assert_eq!(r.event_seq, seq);
                r.reason
            }
            other => panic!("expected ACCESS_RESULT, got {other:?}"),
        }
    }

    pub fn balance_fen(&self, account: u64) -> i64 {
        cardgate_domain::money::to_fen(self.ledger.account(account).expect("account").balance).unwrap()
    }
}
