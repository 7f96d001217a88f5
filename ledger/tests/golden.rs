//! The journal's bytes do not change. Every entry kind, and every state record kind the
//! checkpoints write, is encoded from fixed values and compared with the bytes today's
//! gateways have on disk (written by commit afc51b8, before the ledger was split into
//! layers). A data directory written by a running gateway must recover after any change
//! to the code, so a difference here is a format change: add a variant or a format
//! version instead.

// Amounts in fen are written yuan_fen (`12_50` is 12.50 yuan).
#![allow(clippy::inconsistent_digit_grouping)]

use cardgate_codec::{CardNo, DeclineReason};
use cardgate_domain::access::{
    AccessEvent, AccessRecord, AntiPassback, CacheCause, CacheChange, CacheLine, CacheMovedEntry, ControllerEvents,
    Door, DoorDirection, DoorEntry, DoorEvents, EventSource, GroupAccess, GroupAccessEntry, HolidayRule, Holidays,
    HolidaysEntry, Passage, PassbackState, Permission, PermissionAction, PermissionEntry, Punch, Schedule,
    ScheduleEntry, Subject, Window,
};
use cardgate_domain::entry::{
    AccountLeft, CardAction, CardChange, DayClose, DoorGroupEntry, EntryBody, EntryRecord, FeeKind, ImportChunk,
    ImportCommitted, ImportItem, MerchantEntry, MoneyEntry, MoneyKind, MoneyMove, OperatorEntry, ParamsChange,
    PasswordEntry, PayMethod, PersonOpened, PersonUpdated, SettlementClose, StockEntry, TerminalAction, TerminalEntry,
    TxEntry,
};
use cardgate_domain::model::{
    Account, AccountKind, AccountStatus, AuditRecord, BlacklistChange, Card, CardStatus, DoorGroup, Exception,
    ExceptionKind, GrantMark, IdempotentAnswer, InventoryStatus, KeyHandout, Limits, Merchant, MerchantKind, Outcome,
    Params, Person, Resolution, SealedKey, SeqGaps, SeqRecord, SessionEvent, SettlementDay, StockBatch, Terminal,
    TerminalKind, TerminalRecord, TxKind,
};
use cardgate_domain::money::from_fen;
use cardgate_domain::operator::{Actor, Operator, PasswordRecord, Role};
use cardgate_journal::record::encode_record;

const T: i64 = 1_795_853_100_000;

fn actor() -> Actor {
    Actor {
        operator_id: 3,
        name: "王芳".into(),
        role: Role::CardDesk,
    }
}

fn account() -> Account {
    Account {
        id: 17,
        kind: AccountKind::Staff,
        status: AccountStatus::Active,
        balance: from_fen(980_00),
        limits: Some(Limits {
            single_payment_max: from_fen(300_00),
            daily_max: from_fen(900_00),
        }),
        day: 20_785,
        spent_today: from_fen(20_00),
    }
}

fn card() -> Card {
    Card {
        no: CardNo(6_222_000_012_345_678),
        account: 17,
        status: CardStatus::Lost,
        expires_ms: Some(T + 86_400_000),
        issued_ms: T - 1,
    }
}

fn terminal() -> Terminal {
    Terminal {
        id: 42,
        secret: [0x5A; 32],
        kind: TerminalKind::Pos,
        merchant_id: 7,
        enabled: true,
        name: "二食堂 3号窗口".into(),
        place: "Canteen 2".into(),
    }
}

fn person() -> Person {
    Person {
        account: 17,
        id: "2024001234".into(),
        name: "张三".into(),
        department: "计算机学院".into(),
        created_ms: T - 5,
    }
}

fn money(kind: MoneyKind) -> MoneyMove {
    MoneyMove {
        kind,
        tx_id: 901,
        account: 17,
        amount_fen: 20_00,
        balance_delta_fen: -20_00,
        balance_after_fen: 960_00,
        method: PayMethod::Balance,
        reason: "card replaced".into(),
    }
}

fn blacklist_change() -> BlacklistChange {
    BlacklistChange {
        version: 12,
        card: CardNo(6_222_000_012_345_678),
        listed: true,
    }
}

fn audit() -> AuditRecord {
    AuditRecord {
        id: 55,
        time_ms: T,
        actor: Some(actor()),
        action: "card.lost".into(),
        target: "card:6222000012345678".into(),
        status: 200,
        before: r#"{"status":"active"}"#.into(),
        after: r#"{"status":"lost"}"#.into(),
        detail: String::new(),
    }
}

fn operator() -> Operator {
    Operator {
        id: 4,
        name: "li".into(),
        role: Role::DataAdmin,
        token_hash: [0xC3; 32],
        enabled: true,
        created_ms: T,
    }
}

fn tx(kind: TxKind, outcome: Outcome) -> TxEntry {
    TxEntry {
        kind,
        tx_id: match outcome {
            Outcome::Approved { tx_id, .. } => tx_id,
            Outcome::Declined { .. } => 0,
        },
        terminal: 42,
        merchant_id: 7,
        seq: 1001,
        original_seq: if kind == TxKind::Reversal { 1000 } else { 0 },
        original_tx_id: if kind == TxKind::Reversal { 899 } else { 0 },
        card: CardNo(6_222_000_012_345_678),
        account: 17,
        amount_fen: 12_50,
        outcome,
        terminal_time_ms: T - 250,
        single_limit_fen: 300_00,
        daily_limit_fen: 900_00,
        spent_today_after_fen: 32_50,
        blacklist_version: 11,
    }
}

/// One entry of every kind, in `EntryBody` order.
fn every_entry() -> Vec<(&'static str, EntryBody)> {
    vec![
        (
            "purchase approved",
            EntryBody::Tx(tx(
                TxKind::Purchase,
                Outcome::Approved {
                    tx_id: 900,
                    balance_after_fen: 967_50,
                },
            )),
        ),
        (
            "purchase declined",
            EntryBody::Tx(tx(
                TxKind::Purchase,
                Outcome::Declined {
                    reason: DeclineReason::InsufficientFunds.code(),
                    balance_fen: 3_00,
                },
            )),
        ),
        (
            "reversal approved",
            EntryBody::Tx(tx(
                TxKind::Reversal,
                Outcome::Approved {
                    tx_id: 902,
                    balance_after_fen: 980_00,
                },
            )),
        ),
        ("account opened", EntryBody::AccountOpened(account())),
        ("card issued", EntryBody::CardIssued(card())),
        ("terminal registered", EntryBody::TerminalRegistered(terminal())),
        ("params set", EntryBody::ParamsSet(Params::default())),
        (
            "person opened",
            EntryBody::PersonOpened(Box::new(PersonOpened {
                actor: actor(),
                person: person(),
                account: account(),
            })),
        ),
        (
            "person updated",
            EntryBody::PersonUpdated(Box::new(PersonUpdated {
                actor: actor(),
                person: person(),
                kind: AccountKind::Temporary,
                import_id: 77,
            })),
        ),
        (
            "card changed",
            EntryBody::CardChanged(Box::new(CardChange {
                actor: actor(),
                action: CardAction::Replace,
                cards: vec![card(), {
                    let mut c = card();
                    c.no = CardNo(6_222_000_012_345_679);
                    c.status = CardStatus::Active;
                    c
                }],
                account: Some(AccountLeft {
                    id: 17,
                    status: AccountStatus::Closed,
                    balance_fen: 0,
                }),
                money: Some(money(MoneyKind::Fee(FeeKind::Replacement))),
                blacklist: vec![blacklist_change()],
                batch_id: Some("grad-2026".into()),
            })),
        ),
        (
            "money",
            EntryBody::Money(Box::new(MoneyEntry {
                actor: actor(),
                movement: money(MoneyKind::Grant),
                batch_id: Some("subsidy-2026-11".into()),
            })),
        ),
        (
            "operator set",
            EntryBody::OperatorSet(Box::new(OperatorEntry {
                actor: actor(),
                operator: operator(),
            })),
        ),
        (
            "params changed",
            EntryBody::ParamsChanged(Box::new(ParamsChange {
                actor: actor(),
                params: Params::default(),
            })),
        ),
        (
            "import chunk",
            EntryBody::ImportChunk(Box::new(ImportChunk {
                import_id: 77,
                index: 2,
                items: vec![
                    ImportItem::Add {
                        person: person(),
                        account: account(),
                        card: card(),
                    },
                    ImportItem::Update { person: person() },
                ],
            })),
        ),
        (
            "import committed",
            EntryBody::ImportCommitted(Box::new(ImportCommitted {
                actor: actor(),
                import_id: 77,
                chunks: 3,
                rows: 250,
                added: 200,
                updated: 30,
                kind_changed: 5,
                unchanged: 20,
            })),
        ),
        ("audit", EntryBody::Audit(Box::new(audit()))),
        (
            "exception",
            EntryBody::Exception(Box::new(Exception {
                id: 3,
                time_ms: T,
                kind: ExceptionKind::RefundOwed,
                account: 17,
                card: CardNo(6_222_000_012_345_678),
                terminal: 42,
                seq: 1002,
                tx_id: 900,
                amount_fen: 12_50,
                detail: "reversal after the account was closed".into(),
                resolved: Some(Resolution {
                    actor: actor(),
                    time_ms: T + 60_000,
                    note: "paid in cash".into(),
                }),
            })),
        ),
        (
            "idempotent answer",
            EntryBody::IdempotentAnswer(Box::new(IdempotentAnswer {
                operator_id: 3,
                key: "8e0c2f3a-topup-17".into(),
                request_hash: [0x11; 32],
                status: 200,
                body: r#"{"money":{"tx_id":901}}"#.into(),
                time_ms: T,
            })),
        ),
        (
            "merchant set",
            EntryBody::MerchantSet(Box::new(MerchantEntry {
                actor: actor(),
                merchant: Merchant {
                    id: 7,
                    name: "二食堂".into(),
                    kind: MerchantKind::CanteenWindow,
                    place: "Canteen 2".into(),
                    contact: "李师傅 13800000000".into(),
                    fee_rate_bp: 50,
                    enabled: true,
                    created_ms: T,
                },
            })),
        ),
        (
            "door group set",
            EntryBody::DoorGroupSet(Box::new(DoorGroupEntry {
                actor: actor(),
                group: DoorGroup {
                    id: 3,
                    name: "Library".into(),
                    place: "Library, all entrances".into(),
                    created_ms: T,
                },
            })),
        ),
        (
            "terminal set",
            EntryBody::TerminalSet(Box::new(TerminalEntry {
                actor: actor(),
                action: TerminalAction::Rekeyed,
                terminal: TerminalRecord {
                    id: 42,
                    kind: TerminalKind::Pos,
                    merchant_id: 7,
                    door_group: 0,
                    name: "二食堂 3号窗口".into(),
                    place: "Canteen 2".into(),
                    serial: "SN-0042".into(),
                    responsible: "李师傅".into(),
                    installed: "2026-09-01".into(),
                    status: InventoryStatus::Installed,
                    enabled: true,
                    key_generation: 2,
                    key: SealedKey {
                        nonce: [1; 12],
                        ciphertext: vec![2; 48],
                    },
                    previous_key: Some(SealedKey {
                        nonce: [3; 12],
                        ciphertext: vec![4; 48],
                    }),
                    previous_until_ms: T + 86_400_000,
                    updated_ms: T,
                },
                handout: Some(KeyHandout {
                    terminal: 42,
                    key_generation: 2,
                    issued_by: actor(),
                    handed_to: "installer Zhou".into(),
                    time_ms: T,
                }),
            })),
        ),
        (
            "stock",
            EntryBody::Stock(Box::new(StockEntry::Received(StockBatch {
                id: 1,
                first: CardNo(62_220_000_000_001),
                last: CardNo(62_220_000_000_100),
                received: "2026-11-02".into(),
                supplier: "卡厂".into(),
                received_by: actor(),
                time_ms: T,
            }))),
        ),
        (
            "password set",
            EntryBody::PasswordSet(Box::new(PasswordEntry {
                actor: actor(),
                password: PasswordRecord {
                    operator_id: 4,
                    phc: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                    must_change: true,
                    set_ms: T,
                },
            })),
        ),
        (
            "day closed",
            EntryBody::DayClosed(Box::new(DayClose {
                day: 20_785,
                tz_offset_minutes: 480,
                first_entry_id: 1_201,
                last_entry_id: 9_876,
                hash: [0xA7; 32],
                transactions: 8_000,
                transactions_fen: -61_234_50,
                complete: true,
            })),
        ),
        (
            "terminal session",
            EntryBody::TerminalSession(SessionEvent {
                terminal: 42,
                opened: true,
                drift_ms: -1_250,
                since_ms: T,
            }),
        ),
        (
            "settlement closed",
            EntryBody::SettlementClosed(Box::new(SettlementClose {
                actor: actor(),
                day: 20_785,
                through_entry: 9_876,
                merchants: vec![SettlementDay {
                    day: 20_785,
                    merchant: 7,
                    count: 1_200,
                    gross_fen: 9_000_00,
                    reversal_count: 3,
                    reversals_fen: 25_00,
                    adjustment_count: 1,
                    adjustments_fen: 12_50,
                    net_fen: 8_987_50,
                    fee_rate_bp: 150,
                    fee_fen: 134_81,
                    through_entry: 9_876,
                    closed_by: actor(),
                    closed_ms: T,
                }],
            })),
        ),
        (
            "door set",
            EntryBody::DoorSet(Box::new(DoorEntry {
                actor: actor(),
                door: door(),
                cache: vec![cache_change()],
            })),
        ),
        (
            "schedule set",
            EntryBody::ScheduleSet(Box::new(ScheduleEntry {
                actor: actor(),
                schedule: schedule(),
                cache: vec![],
            })),
        ),
        (
            "holidays set",
            EntryBody::HolidaysSet(Box::new(HolidaysEntry {
                actor: actor(),
                holidays: Holidays {
                    days: vec![20_785, 20_786],
                },
                cache: vec![],
            })),
        ),
        (
            "permission set",
            EntryBody::PermissionSet(Box::new(PermissionEntry {
                actor: actor(),
                action: PermissionAction::Granted,
                permission: permission(),
                cache: vec![cache_change()],
            })),
        ),
        (
            "group access set",
            EntryBody::GroupAccessSet(Box::new(GroupAccessEntry {
                actor: actor(),
                access: GroupAccess {
                    group: 3,
                    anti_passback: AntiPassback::Timed { minutes: 30 },
                    cache_version: 12,
                },
                cache: vec![],
            })),
        ),
        (
            "door events",
            EntryBody::DoorEvents(Box::new(DoorEvents {
                events: vec![AccessEvent {
                    terminal: 100_001,
                    event_seq: 77,
                    card: CardNo(6_222_000_012_345_678),
                    account: 17,
                    door: 1,
                    door_group: 3,
                    direction: Passage::In,
                    granted: true,
                    reason: 0,
                    source: EventSource::Online,
                    event_time_ms: T,
                    permission: 5,
                    passback: Some(passback()),
                    drift_ms: -1_250,
                    flagged: false,
                }],
                punches: vec![Punch {
                    terminal: 200_001,
                    event_seq: 9,
                    card: CardNo(6_222_000_012_345_678),
                    account: 17,
                    status: 0,
                    punch_time_ms: T,
                    drift_ms: 300,
                }],
                controller: controller_events(),
            })),
        ),
        (
            "door cache moved",
            EntryBody::DoorCacheMoved(Box::new(CacheMovedEntry {
                cause: CacheCause::CardIssued,
                account: 17,
                cache: vec![cache_change()],
            })),
        ),
    ]
}

fn door() -> Door {
    Door {
        id: 1,
        name: "东门".into(),
        place: "Library".into(),
        group: 3,
        controller: 100_001,
        direction: DoorDirection::Both,
        enabled: true,
        updated_ms: T,
    }
}

fn schedule() -> Schedule {
    Schedule {
        id: 2,
        name: "night guard".into(),
        windows: vec![Window {
            weekday: 0,
            start_min: 1_320,
            end_min: 360,
        }],
        holidays: HolidayRule::Windows(vec![Window {
            weekday: 0,
            start_min: 540,
            end_min: 720,
        }]),
        updated_ms: T,
    }
}

fn permission() -> Permission {
    Permission {
        id: 5,
        subject: Subject::Department("计算机学院".into()),
        door_group: 3,
        schedule: 2,
        valid_from_day: 20_785,
        valid_to_day: Some(20_815),
        revoked: false,
        note: "lab".into(),
        updated_ms: T,
    }
}

fn cache_change() -> CacheChange {
    let line = CacheLine {
        card: CardNo(6_222_000_012_345_678),
        schedule: 2,
        valid_from_min: 29_930_400,
        valid_to_min: u32::MAX,
    };
    CacheChange {
        group: 3,
        version: 12,
        added: vec![line],
        removed: vec![CacheLine { schedule: 1, ..line }],
        all: false,
    }
}

fn passback() -> PassbackState {
    PassbackState {
        account: 17,
        group: 3,
        inside: true,
        last_ms: T,
    }
}

fn controller_events() -> ControllerEvents {
    ControllerEvents {
        terminal: 100_001,
        last: 77,
        gaps: vec![(70, 71)],
        abandoned: 0,
        drift_ms: -1_250,
    }
}

/// The bytes of each entry of `every_entry` as today's journal stores them.
const ENTRY_HEX: &[&str] = &[
    // purchase approved
    "01c08ffd92c468000084072a07e9070000ce829da484dc860b11c413008407dce70bcc8bfd92c468e0d403a0fe0ae4320b",
    // purchase declined
    "01c08ffd92c4680000002a07e9070000ce829da484dc860b11c4130106d804cc8bfd92c468e0d403a0fe0ae4320b",
    // reversal approved
    "01c08ffd92c468000186072a07e907e8078307ce829da484dc860b11c413008607a0fb0bcc8bfd92c468e0d403a0fe0ae4320b",
    // account opened
    "01c08ffd92c46801110100a0fb0b01e0d403a0fe0ae2c402a01f",
    // card issued
    "01c08ffd92c46802ce829da484dc860b110101c0ffafe5c468be8ffd92c468",
    // terminal registered
    "01c08ffd92c468032a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a00070114e4ba8ce9a39fe5a0822033e58fb7e7aa97e58fa30943616e7465656e2032",
    // params set
    "01c08ffd92c46804c0b802c0a907a01fd00fa08d0680b518a01fd00fa09c01e0d403a01fd00f",
    // person opened
    "01c08ffd92c468050306e78e8be88ab303110a3230323430303132333406e5bca0e4b8890fe8aea1e7ae97e69cbae5ada6e999a2b68ffd92c468110100a0fb0b01e0d403a0fe0ae2c402a01f",
    // person updated
    "01c08ffd92c468060306e78e8be88ab303110a3230323430303132333406e5bca0e4b8890fe8aea1e7ae97e69cbae5ada6e999a2b68ffd92c468024d",
    // card changed
    "01c08ffd92c468070306e78e8be88ab3030502ce829da484dc860b110101c0ffafe5c468be8ffd92c468cf829da484dc860b110001c0ffafe5c468be8ffd92c46801110200010200850711a01f9f1f80dc0b010d63617264207265706c61636564010cce829da484dc860b010109677261642d32303236",
    // money
    "01c08ffd92c468080306e78e8be88ab30304850711a01f9f1f80dc0b010d63617264207265706c61636564010f737562736964792d323032362d3131",
    // operator set
    "01c08ffd92c468090306e78e8be88ab30304026c6902c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c301c08ffd92c468",
    // params changed
    "01c08ffd92c4680a0306e78e8be88ab303c0b802c0a907a01fd00fa08d0680b518a01fd00fa09c01e0d403a01fd00f",
    // import chunk
    "01c08ffd92c4680b4d020200110a3230323430303132333406e5bca0e4b8890fe8aea1e7ae97e69cbae5ada6e999a2b68ffd92c468110100a0fb0b01e0d403a0fe0ae2c402a01fce829da484dc860b110101c0ffafe5c468be8ffd92c46801110a3230323430303132333406e5bca0e4b8890fe8aea1e7ae97e69cbae5ada6e999a2b68ffd92c468",
    // import committed
    "01c08ffd92c4680c0306e78e8be88ab3034d03fa01c8011e0514",
    // audit
    "01c08ffd92c4680d37c08ffd92c468010306e78e8be88ab30309636172642e6c6f737415636172643a36323232303030303132333435363738c801137b22737461747573223a22616374697665227d117b22737461747573223a226c6f7374227d00",
    // exception (added with issue 10)
    "01c08ffd92c4680e03c08ffd92c4680011ce829da484dc860b2aea078407c41325726576657273616c20616674657220746865206163636f756e742077617320636c6f736564010306e78e8be88ab30380b98493c4680c7061696420696e2063617368",
    // idempotent answer (added with issue 10)
    "01c08ffd92c4680f031138653063326633612d746f7075702d31371111111111111111111111111111111111111111111111111111111111111111c801177b226d6f6e6579223a7b2274785f6964223a3930317d7dc08ffd92c468",
    // merchant set (added with issue 16)
    "01c08ffd92c468100306e78e8be88ab3030709e4ba8ce9a39fe5a082000943616e7465656e203215e69d8ee5b888e582852031333830303030303030303201c08ffd92c468",
    // door group set
    "01c08ffd92c468110306e78e8be88ab30303074c696272617279164c6962726172792c20616c6c20656e7472616e636573c08ffd92c468",
    // terminal set
    "01c08ffd92c468120306e78e8be88ab303042a00070014e4ba8ce9a39fe5a0822033e58fb7e7aa97e58fa30943616e7465656e203207534e2d3030343209e69d8ee5b888e582850a323032362d30392d3031010102010101010101010101010101300202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020103030303030303030303030330040404040404040404040404040404040404040404040404040404040404040404040404040404040404040404040404c0ffafe5c468c08ffd92c468012a020306e78e8be88ab3030e696e7374616c6c6572205a686f75c08ffd92c468",
    // stock
    "01c08ffd92c46813000181f0fdc7eb920ee4f0fdc7eb920e0a323032362d31312d303206e58da1e58e820306e78e8be88ab303c08ffd92c468",
    // password set (added with issue 14)
    "01c08ffd92c468140306e78e8be88ab303042c246172676f6e32696424763d3139246d3d31393435362c743d322c703d3124633246736441246147467a614101c08ffd92c468",
    // day closed (added with issue 13)
    "01c08ffd92c46815e2c402c007b109944da7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7c03ef3beeb0501",
    // terminal session (added with issue 12)
    "01c08ffd92c468162a01c313c08ffd92c468",
    // settlement closed
    "01c08ffd92c468170306e78e8be88ab303e2c402944d01e2c40207b009c0ee6d03882701c413fcda6d9601d2d201944d0306e78e8be88ab303c08ffd92c468",
    // door set (added with issue 11)
    "01c08ffd92c468180306e78e8be88ab3030106e4b89ce997a8074c69627261727903a18d060201c08ffd92c46801030c01ce829da484dc860b02a0e7a20effffffff0f01ce829da484dc860b01a0e7a20effffffff0f00",
    // schedule set
    "01c08ffd92c468190306e78e8be88ab303020b6e696768742067756172640100a80ae8020201009c04d005c08ffd92c46800",
    // holidays set
    "01c08ffd92c4681a0306e78e8be88ab30302e2c402e4c40200",
    // permission set
    "01c08ffd92c4681b0306e78e8be88ab3030005010fe8aea1e7ae97e69cbae5ada6e999a20302e2c402019ec50200036c6162c08ffd92c46801030c01ce829da484dc860b02a0e7a20effffffff0f01ce829da484dc860b01a0e7a20effffffff0f00",
    // group access set
    "01c08ffd92c4681c0306e78e8be88ab30303021e0c00",
    // door events
    "01c08ffd92c4681d01a18d064dce829da484dc860b11010300010000c08ffd92c4680501110301c08ffd92c468c3130001c19a0c09ce829da484dc860b1100c08ffd92c468d804a18d064d01464700c313",
    // door cache moved
    "01c08ffd92c4681e001101030c01ce829da484dc860b02a0e7a20effffffff0f01ce829da484dc860b01a0e7a20effffffff0f00",
];

/// The bytes of each state record kind a checkpoint writes.
fn every_record() -> Vec<(&'static str, Vec<u8>)> {
    let seq = SeqRecord {
        terminal: 42,
        seq: 1001,
        kind: TxKind::Purchase,
        card: CardNo(6_222_000_012_345_678),
        amount_fen: 12_50,
        original_seq: 0,
        account: 17,
        outcome: Outcome::Approved {
            tx_id: 900,
            balance_after_fen: 967_50,
        },
        time_ms: T,
        reversed_by: Some(1002),
    };
    let mut out = vec![
        ("account", encode_record(&account())),
        ("card", encode_record(&card())),
        ("terminal", encode_record(&terminal())),
        ("seq slots", encode_record(&vec![seq])),
        ("params", encode_record(&Params::default())),
        ("person", encode_record(&person())),
        ("operator", encode_record(&operator())),
        ("blacklist change", encode_record(&blacklist_change())),
        ("audit", encode_record(&audit())),
        (
            "grant mark",
            encode_record(&GrantMark {
                batch_id: "subsidy-2026-11".into(),
                account: 17,
                amount_fen: 50_00,
                tx_id: 903,
            }),
        ),
        (
            "staged import chunk",
            encode_record(&vec![ImportItem::Update { person: person() }]),
        ),
        (
            "sequence gaps",
            encode_record(&SeqGaps {
                terminal: 42,
                ranges: vec![(101, 110), (2_000, 2_000)],
                abandoned: 0,
            }),
        ),
        (
            "listed since",
            encode_record(&cardgate_ledger::records::ListedSince { since_ms: Some(T) }),
        ),
    ];
    // Records added since: the payloads of their entries, stored as state records.
    for (name, body) in every_entry() {
        let bytes = match &body {
            EntryBody::Exception(e) => encode_record(e.as_ref()),
            EntryBody::IdempotentAnswer(a) => encode_record(a.as_ref()),
            EntryBody::MerchantSet(m) => encode_record(&m.merchant),
            EntryBody::DoorGroupSet(g) => encode_record(&g.group),
            EntryBody::TerminalSet(t) => {
                out.push(("key handout", encode_record(t.handout.as_ref().unwrap())));
                encode_record(&t.terminal)
            }
            EntryBody::DayClosed(c) => encode_record(c.as_ref()),
            EntryBody::Stock(x) => match x.as_ref() {
                StockEntry::Received(b) => encode_record(b),
                _ => continue,
            },
            EntryBody::PasswordSet(p) => encode_record(&p.password),
            EntryBody::SettlementClosed(c) => encode_record(c.as_ref()),
            EntryBody::DoorSet(d) => encode_record(&AccessRecord::Door(d.door.clone())),
            EntryBody::ScheduleSet(d) => encode_record(&AccessRecord::Schedule(d.schedule.clone())),
            EntryBody::HolidaysSet(d) => encode_record(&AccessRecord::Holidays(d.holidays.clone())),
            EntryBody::PermissionSet(d) => {
                out.push((
                    "access: cache change",
                    encode_record(&AccessRecord::Change(cache_change())),
                ));
                encode_record(&AccessRecord::Permission(d.permission.clone()))
            }
            EntryBody::GroupAccessSet(d) => encode_record(&AccessRecord::Group(d.access)),
            EntryBody::DoorEvents(d) => {
                out.push(("access: passback", encode_record(&AccessRecord::Passback(passback()))));
                encode_record(&AccessRecord::Controller(d.controller.clone()))
            }
            _ => continue,
        };
        out.push((name, bytes));
    }
    out
}

const RECORD_HEX: &[&str] = &[
    // account
    "01110100a0fb0b01e0d403a0fe0ae2c402a01f",
    // card
    "01ce829da484dc860b110101c0ffafe5c468be8ffd92c468",
    // terminal
    "012a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a00070114e4ba8ce9a39fe5a0822033e58fb7e7aa97e58fa30943616e7465656e2032",
    // seq slots
    "01012ae90700ce829da484dc860bc4130011008407dce70bc08ffd92c46801ea07",
    // params
    "01c0b802c0a907a01fd00fa08d0680b518a01fd00fa09c01e0d403a01fd00f",
    // person
    "01110a3230323430303132333406e5bca0e4b8890fe8aea1e7ae97e69cbae5ada6e999a2b68ffd92c468",
    // operator
    "0104026c6902c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c301c08ffd92c468",
    // blacklist change
    "010cce829da484dc860b01",
    // audit
    "0137c08ffd92c468010306e78e8be88ab30309636172642e6c6f737415636172643a36323232303030303132333435363738c801137b22737461747573223a22616374697665227d117b22737461747573223a226c6f7374227d00",
    // grant mark
    "010f737562736964792d323032362d313111904e8707",
    // staged import chunk
    "010101110a3230323430303132333406e5bca0e4b8890fe8aea1e7ae97e69cbae5ada6e999a2b68ffd92c468",
    // sequence gaps (added with issue 12)
    "012a02656ed00fd00f00",
    // listed since
    "0101c08ffd92c468",
    // exception (added with issue 10)
    "0103c08ffd92c4680011ce829da484dc860b2aea078407c41325726576657273616c20616674657220746865206163636f756e742077617320636c6f736564010306e78e8be88ab30380b98493c4680c7061696420696e2063617368",
    // idempotent answer
    "01031138653063326633612d746f7075702d31371111111111111111111111111111111111111111111111111111111111111111c801177b226d6f6e6579223a7b2274785f6964223a3930317d7dc08ffd92c468",
    // merchant (added with issue 16)
    "010709e4ba8ce9a39fe5a082000943616e7465656e203215e69d8ee5b888e582852031333830303030303030303201c08ffd92c468",
    // door group
    "0103074c696272617279164c6962726172792c20616c6c20656e7472616e636573c08ffd92c468",
    // key handout
    "012a020306e78e8be88ab3030e696e7374616c6c6572205a686f75c08ffd92c468",
    // terminal record
    "012a00070014e4ba8ce9a39fe5a0822033e58fb7e7aa97e58fa30943616e7465656e203207534e2d3030343209e69d8ee5b888e582850a323032362d30392d3031010102010101010101010101010101300202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020103030303030303030303030330040404040404040404040404040404040404040404040404040404040404040404040404040404040404040404040404c0ffafe5c468c08ffd92c468",
    // stock batch
    "010181f0fdc7eb920ee4f0fdc7eb920e0a323032362d31312d303206e58da1e58e820306e78e8be88ab303c08ffd92c468",
    // password (added with issue 14)
    "01042c246172676f6e32696424763d3139246d3d31393435362c743d322c703d3124633246736441246147467a614101c08ffd92c468",
    // day close (added with issue 13)
    "01e2c402c007b109944da7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7c03ef3beeb0501",
    // settlement close (added with issue 12)
    "010306e78e8be88ab303e2c402944d01e2c40207b009c0ee6d03882701c413fcda6d9601d2d201944d0306e78e8be88ab303c08ffd92c468",
    // access records (added with issue 11): door set
    "01000106e4b89ce997a8074c69627261727903a18d060201c08ffd92c468",
    // schedule set
    "0101020b6e696768742067756172640100a80ae8020201009c04d005c08ffd92c468",
    // holidays set
    "010202e2c402e4c402",
    // access: cache change
    "0105030c01ce829da484dc860b02a0e7a20effffffff0f01ce829da484dc860b01a0e7a20effffffff0f00",
    // permission set
    "010305010fe8aea1e7ae97e69cbae5ada6e999a20302e2c402019ec50200036c6162c08ffd92c468",
    // group access set
    "010403021e0c",
    // access: passback
    "0107110301c08ffd92c468",
    // door events
    "0106a18d064d01464700c313",
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_entry_kind_encodes_to_todays_bytes() {
    let entries = every_entry();
    let got: Vec<String> = entries
        .iter()
        .map(|(_, body)| hex(&EntryRecord::encode_parts(T, body)))
        .collect();
    assert_eq!(got.len(), ENTRY_HEX.len(), "one golden value per entry kind");
    for ((name, body), (g, want)) in entries.iter().zip(got.iter().zip(ENTRY_HEX)) {
        assert_eq!(g, want, "{name}: the entry's bytes changed");
        let back = EntryRecord::decode(&EntryRecord::encode_parts(T, body)).expect("decodes");
        assert_eq!(&back.body, body, "{name}: decodes to what was encoded");
        assert_eq!(back.time_ms, T);
    }
}

#[test]
fn every_state_record_kind_encodes_to_todays_bytes() {
    let records = every_record();
    assert_eq!(records.len(), RECORD_HEX.len(), "one golden value per record kind");
    for ((name, bytes), want) in records.iter().zip(RECORD_HEX) {
        assert_eq!(&hex(bytes), want, "{name}: the record's bytes changed");
    }
}

/// Every entry kind by position. A new `EntryBody` variant does not compile until it is
/// named here, and then the test below fails until it has golden bytes.
fn variant(b: &EntryBody) -> usize {
    match b {
        EntryBody::Tx(_) => 0,
        EntryBody::AccountOpened(_) => 1,
        EntryBody::CardIssued(_) => 2,
        EntryBody::TerminalRegistered(_) => 3,
        EntryBody::ParamsSet(_) => 4,
        EntryBody::PersonOpened(_) => 5,
        EntryBody::PersonUpdated(_) => 6,
        EntryBody::CardChanged(_) => 7,
        EntryBody::Money(_) => 8,
        EntryBody::OperatorSet(_) => 9,
        EntryBody::ParamsChanged(_) => 10,
        EntryBody::ImportChunk(_) => 11,
        EntryBody::ImportCommitted(_) => 12,
        EntryBody::Audit(_) => 13,
        EntryBody::Exception(_) => 14,
        EntryBody::IdempotentAnswer(_) => 15,
        EntryBody::MerchantSet(_) => 16,
        EntryBody::DoorGroupSet(_) => 17,
        EntryBody::TerminalSet(_) => 18,
        EntryBody::Stock(_) => 19,
        EntryBody::PasswordSet(_) => 20,
        EntryBody::DayClosed(_) => 21,
        EntryBody::TerminalSession(_) => 22,
        EntryBody::SettlementClosed(_) => 23,
        EntryBody::DoorSet(_) => 24,
        EntryBody::ScheduleSet(_) => 25,
        EntryBody::HolidaysSet(_) => 26,
        EntryBody::PermissionSet(_) => 27,
        EntryBody::GroupAccessSet(_) => 28,
        EntryBody::DoorEvents(_) => 29,
        EntryBody::DoorCacheMoved(_) => 30,
    }
}

const ENTRY_KINDS: usize = 31;

#[test]
fn every_entry_kind_has_golden_bytes() {
    let seen: std::collections::BTreeSet<usize> = every_entry().iter().map(|(_, b)| variant(b)).collect();
    assert_eq!(seen, (0..ENTRY_KINDS).collect(), "an entry kind without golden bytes");
}

/// The envelope an entry is stored in since the hash chain (issue 13): its length with
/// the top bit set, its chain hash, its bytes. Two entries, the first of a new journal
/// and the one after it, as a segment holds them. (The first hash is
/// `sha256(32 zero bytes ‖ 0000000000000001 ‖ entry)`, which `sha256sum` confirms.)
#[test]
fn the_chained_envelope_keeps_its_bytes() {
    use cardgate_journal::chain::{GENESIS, link, to_hex};
    use cardgate_journal::segment;
    let entries = every_entry();
    let first = EntryRecord::encode_parts(T, &entries[0].1);
    let second = EntryRecord::encode_parts(T, &entries[3].1);
    let h1 = link(&GENESIS, 1, &first);
    let h2 = link(&h1, 2, &second);
    let mut seg = Vec::new();
    segment::push(&mut seg, &first, Some(&h1));
    segment::push(&mut seg, &second, Some(&h2));
    assert_eq!(to_hex(&h1), ENVELOPE_HASH_1);
    assert_eq!(to_hex(&h2), ENVELOPE_HASH_2);
    assert_eq!(hex(&seg), ENVELOPE_HEX);
    let back = segment::entries(1, &seg).unwrap();
    assert_eq!((back[1].id, back[1].hash, back[1].bytes), (2, Some(&h2), &second[..]));
}

const ENVELOPE_HASH_1: &str = "72c536e721bdb382089271e456253203423140c8a477111af8ce21c73e0a7a6e";
const ENVELOPE_HASH_2: &str = "8759b5681779a238c649f8f0eb361ba7992e51425afd85306283ee42a89288ff";
const ENVELOPE_HEX: &str = concat!(
    "3100008072c536e721bdb382089271e456253203423140c8a477111af8ce21c73e0a7a6e01c08ffd92c468000084072a07e9070000ce829da484dc860b11c413008407dce70bcc8bfd92c468e0d403a0fe0ae4320b",
    "1a0000808759b5681779a238c649f8f0eb361ba7992e51425afd85306283ee42a89288ff01c08ffd92c46801110100a0fb0b01e0d403a0fe0ae2c402a01f"
);
