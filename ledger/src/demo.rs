//! The demo campus: a ready-made population of accounts, cards and POS terminals so that
//! `cardgate serve --demo` can be driven by the load test at once. Terminal secrets are
//! derived from a published master secret, which is exactly why a demo data directory
//! must never hold real money.

use std::sync::atomic::Ordering;

use cardgate_codec::{CardNo, TerminalSecret};

use cardgate_domain::model::{
    Account, AccountKind, AccountStatus, Card, CardStatus, InventoryStatus, MerchantKind, TerminalKind,
};
use cardgate_domain::money::from_fen;
use cardgate_domain::operator::Actor;

use crate::desk::By;
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes, meta};
use crate::registry::{NewMerchant, NewTerminal};
use crate::txn::Txn;

/// The published master secret of demo terminals (see `TerminalSecret::derive_demo`).
pub const DEMO_MASTER_SECRET: &[u8] = b"cardgate-demo-master-secret";
/// Demo card numbers are `DEMO_CARD_BASE + account id`.
pub const DEMO_CARD_BASE: u64 = 1_000_000_000;
/// POS terminals per demo merchant (a canteen's windows).
pub const DEMO_TERMINALS_PER_MERCHANT: u64 = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemoCampus {
    /// Accounts 1..=accounts, each with one card; every tenth is staff.
    pub accounts: u64,
    /// POS terminals 1..=pos_terminals.
    pub pos_terminals: u64,
    pub balance_fen: i64,
}

impl Default for DemoCampus {
    fn default() -> DemoCampus {
        DemoCampus {
            accounts: 20_000,
            pos_terminals: 2_000,
            balance_fen: 1_000_00,
        }
    }
}

pub fn demo_card(account: u64) -> CardNo {
    CardNo(DEMO_CARD_BASE + account)
}

pub fn demo_secret(terminal_id: u64) -> TerminalSecret {
    TerminalSecret::derive_demo(DEMO_MASTER_SECRET, terminal_id)
}

/// Creates the demo campus unless this data directory already has one. Returns whether
/// it was created now. Merchants and terminals go through the registry like any others
/// (their keys sealed under the ledger's terminal key); accounts and cards are loaded in
/// bulk.
pub async fn ensure_demo(ledger: &Ledger, campus: &DemoCampus) -> Result<bool, LedgerError> {
    if ledger.db().get_meta(meta::DEMO)?.is_some() {
        return Ok(false);
    }
    let now = ledger.now_ms();
    let actor = Actor::cli();
    let merchants = campus.pos_terminals.div_ceil(DEMO_TERMINALS_PER_MERCHANT);
    let mut merchant_ids = Vec::with_capacity(merchants as usize);
    for m in 1..=merchants {
        let merchant = ledger
            .create_merchant(
                &By::actor(&actor),
                NewMerchant {
                    name: format!("Canteen {m}"),
                    kind: MerchantKind::CanteenWindow,
                    place: format!("Canteen {m}"),
                    contact: String::new(),
                    fee_rate_bp: 0,
                },
            )
            .await?;
        merchant_ids.push(merchant.id);
    }
    let terminals = (1..=campus.pos_terminals)
        .map(|id| {
            let m = ((id - 1) / DEMO_TERMINALS_PER_MERCHANT) as usize;
            (
                NewTerminal {
                    id,
                    kind: TerminalKind::Pos,
                    merchant_id: merchant_ids[m],
                    door_group: 0,
                    name: format!("POS {id}"),
                    place: format!("Canteen {}", m + 1),
                    serial: format!("DEMO-{id:06}"),
                    responsible: String::new(),
                    installed: String::new(),
                    status: InventoryStatus::Installed,
                    handed_to: "demo".into(),
                },
                demo_secret(id).0,
            )
        })
        .collect();
    ledger.register_many(&By::actor(&actor), terminals).await?;
    // Accounts and cards are created a step at a time, and each step waits until the
    // one before the last is checkpointed: the committer keeps every record not yet
    // checkpointed in memory, and a million accounts created at once outran the
    // checkpointer by hundreds of MiB (docs/PERFORMANCE.md, 5.3). A step of half a
    // checkpoint's records (an account and its card each) makes every step start one.
    let policy = ledger.config.checkpoints;
    let step = (policy.records_max / 2).clamp(1_000, 50_000) as u64;
    let wait_for_checkpoints = policy.enabled && 2 * step >= policy.records_max as u64;
    let stats = ledger.journal().stats.clone();
    let mut previous_step_end = 0;
    let mut from = 1;
    while from <= campus.accounts {
        let to = (from + step - 1).min(campus.accounts);
        let accounts: Vec<Account> = (from..=to)
            .map(|id| Account {
                id,
                kind: if id % 10 == 0 {
                    AccountKind::Staff
                } else {
                    AccountKind::Student
                },
                status: AccountStatus::Active,
                balance: from_fen(campus.balance_fen),
                limits: None,
                day: 0,
                spent_today: Default::default(),
            })
            .collect();
        let cards: Vec<Card> = accounts
            .iter()
            .map(|a| Card {
                no: demo_card(a.id),
                account: a.id,
                status: CardStatus::Active,
                expires_ms: None,
                issued_ms: now,
            })
            .collect();
        ledger.bulk_create(vec![], &accounts, &cards).await?;
        if wait_for_checkpoints && previous_step_end > 0 {
            // A failed checkpoint (logged by the checkpointer) stops them for good:
            // then creation goes on without waiting rather than hang.
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while stats.durable_checkpoint_id.load(Ordering::Acquire) < previous_step_end
                && std::time::Instant::now() < give_up
            {
                // Each commit, even an empty one, lets the committer hand the waiting
                // records to the checkpointer once it is free.
                ledger.journal().barrier().await?;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        previous_step_end = stats.durable_entry_id.load(Ordering::Acquire);
        from = to + 1;
    }
    let mut marker = Writes::new();
    marker.push(StateWrite::Meta(
        meta::DEMO,
        format!("{} {} {}", campus.accounts, campus.pos_terminals, campus.balance_fen).into_bytes(),
    ));
    Txn::begin(ledger.journal())
        .await?
        .write_direct(marker)
        .durable()
        .await?;
    Ok(true)
}

/// Door controller `i` of the demo campus is terminal `DEMO_DOOR_TERMINAL_BASE + i`.
pub const DEMO_DOOR_TERMINAL_BASE: u64 = 100_000;
/// Attendance clock `j` of the demo campus is terminal `DEMO_CLOCK_TERMINAL_BASE + j`.
pub const DEMO_CLOCK_TERMINAL_BASE: u64 = 200_000;
/// Doors per demo door group.
pub const DEMO_DOORS_PER_GROUP: u64 = 10;

/// The demo campus's doors: door controller `i` (1..=`controllers`) is terminal
/// 100,000 + i with one door, id `i`, passed both ways; door groups of ten doors
/// (group g holds doors 10(g−1)+1..=10g); attendance clock `j` is terminal 200,000 + j;
/// every demo account may pass every demo door at all times (a 7×24 schedule, one
/// permission per account kind and group), no anti-passback. Keys are `demo_secret`'s,
/// like the POS terminals'. Created once per data directory.
pub async fn ensure_demo_doors(ledger: &Ledger, controllers: u64, clocks: u64) -> Result<bool, LedgerError> {
    use cardgate_domain::access::{DoorDirection, HolidayRule, Subject, Window};

    use crate::doors::{DoorInput, PermissionInput, ScheduleInput};

    if ledger.db().get_meta(meta::DEMO_DOORS)?.is_some() || (controllers == 0 && clocks == 0) {
        return Ok(false);
    }
    let actor = Actor::cli();
    let groups = controllers.div_ceil(DEMO_DOORS_PER_GROUP);
    let mut group_ids = Vec::with_capacity(groups as usize);
    for g in 1..=groups {
        let group = ledger
            .create_door_group(&By::actor(&actor), &format!("Demo doors {g}"), &format!("Building {g}"))
            .await?;
        group_ids.push(group.id);
    }
    let new_terminal = |id: u64, kind: TerminalKind, door_group: u64, name: String| NewTerminal {
        id,
        kind,
        merchant_id: 0,
        door_group,
        name,
        place: String::new(),
        serial: format!("DEMO-{id:06}"),
        responsible: String::new(),
        installed: String::new(),
        status: InventoryStatus::Installed,
        handed_to: "demo".into(),
    };
    let mut terminals = Vec::new();
    for i in 1..=controllers {
        let id = DEMO_DOOR_TERMINAL_BASE + i;
        let group = group_ids[((i - 1) / DEMO_DOORS_PER_GROUP) as usize];
        terminals.push((
            new_terminal(id, TerminalKind::Door, group, format!("Door controller {i}")),
            demo_secret(id).0,
        ));
    }
    for j in 1..=clocks {
        let id = DEMO_CLOCK_TERMINAL_BASE + j;
        terminals.push((
            new_terminal(id, TerminalKind::Attendance, 0, format!("Attendance clock {j}")),
            demo_secret(id).0,
        ));
    }
    ledger.register_many(&By::actor(&actor), terminals).await?;
    let always = ledger
        .set_schedule(
            &By::actor(&actor),
            ScheduleInput {
                id: None,
                name: "Demo: always".into(),
                windows: (0..7)
                    .map(|weekday| Window {
                        weekday,
                        start_min: 0,
                        end_min: 0,
                    })
                    .collect(),
                holidays: HolidayRule::Ignore,
            },
        )
        .await?;
    for i in 1..=controllers {
        let group = group_ids[((i - 1) / DEMO_DOORS_PER_GROUP) as usize];
        ledger
            .set_door(
                &By::actor(&actor),
                DoorInput {
                    id: Some(i),
                    name: format!("Door {i}"),
                    place: format!("Building {}", (i - 1) / DEMO_DOORS_PER_GROUP + 1),
                    group,
                    controller: DEMO_DOOR_TERMINAL_BASE + i,
                    direction: DoorDirection::Both,
                    enabled: true,
                },
            )
            .await?;
    }
    for group in &group_ids {
        for kind in AccountKind::ALL {
            ledger
                .grant_permission(
                    &By::actor(&actor),
                    PermissionInput {
                        subject: Subject::Kind(kind),
                        door_group: *group,
                        schedule: always.id,
                        valid_from_day: 0,
                        valid_to_day: None,
                        note: "demo".into(),
                    },
                )
                .await?;
        }
    }
    let mut marker = Writes::new();
    marker.push(StateWrite::Meta(
        meta::DEMO_DOORS,
        format!("{controllers} {clocks}").into_bytes(),
    ));
    Txn::begin(ledger.journal())
        .await?
        .write_direct(marker)
        .durable()
        .await?;
    Ok(true)
}
