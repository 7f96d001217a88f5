//! Door access and attendance over the real protocol and the real operator API, with the
//! gateway's clock fixed: the gateway's terminal and admin servers run in this process
//! on a ledger with a manual clock (the binary has no clock to set), on ephemeral ports,
//! driven by the load test's terminal client and plain HTTP like every other e2e test.
//!
//! What issue 11 asks to see: every grant and deny reason; a window across midnight at
//! 23:59 and 00:01; the last minute of the to-date and the first after it; a holiday; a
//! permission revoked while the controller is connected (denied from then on, the cache
//! version moves, a push arrives); offline events uploaded twice and stored once;
//! anti-passback; security's export (audited); an attendance sheet.

use std::net::SocketAddr;
use std::sync::Arc;

use cardgate::admin::AdminState;
use cardgate::config::Limits;
use cardgate_codec::crypto::{DoorEventFields, door_event_mac};
use cardgate_codec::{
    AccessCheck, AccessReason, AccessResult, CardNo, DOOR_CACHE_BULK_ENTRIES_MAX, DOOR_CACHE_PAGE_ENTRIES_MAX,
    DOOR_PAGE_FIRST, DOOR_PAGE_LAST_IN_RUN, Direction, DoorCacheBulk, DoorCachePageKind, DoorCacheSync, DoorEvent,
    DoorEventsBatch, DoorEventsStatus, ErrorCode, Message, Punch, PunchStatus,
};
use cardgate_domain::clock::days_from_civil;
use cardgate_domain::entry::CardAction;
use cardgate_domain::model::{Account, AccountKind, AccountStatus, Card, CardStatus};
use cardgate_domain::money::from_fen;
use cardgate_domain::operator::{Actor, Role};
use cardgate_ledger::demo::{DemoCampus, demo_card, demo_secret, ensure_demo, ensure_demo_doors};
use cardgate_ledger::desk::{By, NewPerson};
use cardgate_ledger::keys::TerminalKey;
use cardgate_ledger::{Ledger, LedgerConfig, ManualClock};
use cardgate_loadtest::client::{ClientError, TerminalClient};
use cardgate_loadtest::doors::DoorCache;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::harness::{api_exchange, api_request};

const TZ: i32 = 480;
const GROUP_1_CONTROLLER: u64 = 100_001;
const GROUP_2_CONTROLLER: u64 = 100_011;
const CLOCK: u64 = 200_001;

/// Unix ms of a local (UTC+8) date and time.
fn at(y: i64, m: u32, d: u32, hh: i64, mm: i64) -> i64 {
    days_from_civil(y, m, d) * 86_400_000 + (hh * 60 + mm - i64::from(TZ)) * 60_000
}

struct Campus {
    _dir: tempfile::TempDir,
    ledger: Arc<Ledger>,
    clock: ManualClock,
    terminals: SocketAddr,
    admin: SocketAddr,
    door_admin: String,
    attendance_admin: String,
    stop: CancellationToken,
}

impl Campus {
    async fn start() -> Campus {
        Campus::start_with(|s| Box::new(s)).await
    }

    /// With the journal's store wrapped (fault injection).
    async fn start_with(wrap: impl FnOnce(cardgate_journal::SledStore) -> Box<dyn cardgate_journal::Store>) -> Campus {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(at(2026, 3, 10, 12, 0));
        let config = LedgerConfig {
            tz_offset_minutes: TZ,
            terminal_key: Some(TerminalKey::demo()),
            ..LedgerConfig::default()
        };
        let (ledger, committer, _) =
            Ledger::open_with_store(dir.path(), config, Arc::new(clock.clone()), wrap).unwrap();
        // The committer lives as long as the ledger; the test ends with the process.
        std::mem::forget(committer);
        ensure_demo(
            &ledger,
            &DemoCampus {
                accounts: 30,
                pos_terminals: 1,
                balance_fen: 100_00,
            },
        )
        .await
        .unwrap();
        ensure_demo_doors(&ledger, 20, 1).await.unwrap();
        let cli = Actor::cli();
        let (_, door_admin) = ledger
            .add_operator(&By::actor(&cli), "door-admin", Role::DoorAdmin)
            .await
            .unwrap();
        let (_, attendance_admin) = ledger
            .add_operator(&By::actor(&cli), "attendance-admin", Role::AttendanceAdmin)
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let terminals_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let terminals = terminals_listener.local_addr().unwrap();
        tokio::spawn(cardgate::server::run(
            terminals_listener,
            ledger.clone(),
            Arc::new(Limits::default()),
            stop.clone(),
        ));
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        tokio::spawn(cardgate::admin::serve(
            admin_listener,
            AdminState::new(ledger.clone(), TZ),
            16,
            stop.clone(),
        ));
        Campus {
            _dir: dir,
            ledger,
            clock,
            terminals,
            admin,
            door_admin,
            attendance_admin,
            stop,
        }
    }

    fn api(&self, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
        let (status, text) = tokio::task::block_in_place(|| api_request(self.admin, method, path, token, None, body));
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn api_text(&self, path: &str, token: &str) -> (u16, String) {
        tokio::task::block_in_place(|| api_request(self.admin, "GET", path, token, None, ""))
    }

    fn doors(&self, method: &str, path: &str, body: &str) -> Value {
        let (status, v) = self.api(method, path, &self.door_admin, body);
        assert!((200..300).contains(&status), "{method} {path}: {status} {v}");
        v
    }

    async fn terminal(&self, id: u64) -> TerminalClient {
        TerminalClient::connect(self.terminals, id, &demo_secret(id))
            .await
            .unwrap()
    }
}

struct Controller {
    client: TerminalClient,
    seq: u64,
    clock: ManualClock,
}

impl Controller {
    async fn check(&mut self, card: CardNo, door: u32, direction: Direction) -> AccessResult {
        self.seq += 1;
        self.check_seq(self.seq, card, door, direction).await
    }

    async fn check_seq(&mut self, seq: u64, card: CardNo, door: u32, direction: Direction) -> AccessResult {
        let m = Message::AccessCheck(AccessCheck {
            event_seq: seq,
            card,
            door,
            direction,
            controller_time_ms: cardgate_domain::Clock::now_ms(&self.clock),
        });
        match self.client.request(m).await.unwrap() {
            Message::AccessResult(r) => r,
            other => panic!("expected ACCESS_RESULT, got {other:?}"),
        }
    }

    /// The cards a delta from `have` adds and removes, and the run they came in.
    async fn delta(&mut self, have: u64) -> (Vec<CardNo>, Vec<CardNo>, Vec<Message>) {
        let run = self
            .client
            .door_cache_run(DoorCacheSync {
                have_version: have,
                after: None,
                page_entries_max: 0,
            })
            .await
            .unwrap();
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for m in &run {
            if let Message::DoorCachePage(p) = m
                && p.kind == DoorCachePageKind::Delta
            {
                added.extend(p.added_entries().map(|e| e.card));
                removed.extend(p.removed_entries().map(|e| e.card));
            }
        }
        (added, removed, run)
    }

    async fn reason(&mut self, card: CardNo, door: u32) -> AccessReason {
        self.check(card, door, Direction::In).await.reason
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn door_access_over_the_protocol() {
    let c = Campus::start().await;
    let mut g2 = Controller {
        client: c.terminal(GROUP_2_CONTROLLER).await,
        seq: 0,
        clock: c.clock.clone(),
    };

    // The demo lets everyone through group 2 at all times: its door admin takes that
    // back, and gives account 1 the night shift in March instead.
    let demo = c.doors("GET", "/api/v1/door-permissions?door_group=2", "");
    for p in demo["permissions"].as_array().unwrap() {
        c.doors("POST", &format!("/api/v1/door-permissions/{}/revoke", p["id"]), "");
    }
    let night = c.doors(
        "POST",
        "/api/v1/door-schedules",
        r#"{"name":"night","windows":[{"weekdays":[1,2,3,4,5,6,7],"start":"22:00","end":"06:00","overnight":true}],"holidays":"closed"}"#,
    );
    let night_id = night["schedule"]["id"].as_u64().unwrap();
    // A second schedule of the same name is refused and takes no id: the next one
    // created gets the id after "night".
    let (status, body) = c.api(
        "POST",
        "/api/v1/door-schedules",
        &c.door_admin,
        r#"{"name":"night","windows":[{"weekdays":[1],"start":"08:00","end":"09:00"}],"holidays":"closed"}"#,
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("night"), "{body}");
    let early = c.doors(
        "POST",
        "/api/v1/door-schedules",
        r#"{"name":"early","windows":[{"weekdays":[1],"start":"06:00","end":"07:00"}],"holidays":"closed"}"#,
    );
    assert_eq!(early["schedule"]["id"].as_u64(), Some(night_id + 1), "{early}");
    let grant = c.doors(
        "POST",
        "/api/v1/door-permissions",
        &format!(
            r#"{{"card":"{}","door_group":2,"schedule":{night_id},"valid_from":"2026-03-01","valid_to":"2026-03-31"}}"#,
            demo_card(1).0
        ),
    );
    let a = demo_card(1);

    // The gateway's clock only moves forward here, as the journal's does.
    c.clock.set(at(2026, 2, 28, 23, 59));
    assert_eq!(g2.reason(a, 11).await, AccessReason::NotYetValid);

    // A window across midnight: 23:59 and 00:01 pass, noon does not.
    c.clock.set(at(2026, 3, 10, 23, 59));
    assert_eq!(g2.reason(a, 11).await, AccessReason::Granted);
    c.clock.set(at(2026, 3, 11, 0, 1));
    assert_eq!(g2.reason(a, 11).await, AccessReason::Granted);
    c.clock.set(at(2026, 3, 11, 12, 0));
    assert_eq!(g2.reason(a, 11).await, AccessReason::OutsideWindow);

    // A holiday closes the night shift.
    c.doors("PUT", "/api/v1/holidays", r#"{"dates":["2026-03-12"]}"#);
    c.clock.set(at(2026, 3, 12, 23, 0));
    assert_eq!(g2.reason(a, 11).await, AccessReason::Holiday);
    c.clock.set(at(2026, 3, 13, 23, 0));
    assert_eq!(g2.reason(a, 11).await, AccessReason::Granted);

    // The to-date includes its whole local day; the first minute after it does not.
    c.clock.set(at(2026, 3, 31, 23, 59));
    assert_eq!(g2.reason(a, 11).await, AccessReason::Granted);
    c.clock.set(at(2026, 4, 1, 0, 0));
    assert_eq!(g2.reason(a, 11).await, AccessReason::PermissionExpired);

    // Nobody else may pass group 2; a door of group 1 is not this controller's; door
    // 999 does not exist; a disabled door refuses; an unknown card is refused.
    assert_eq!(g2.reason(demo_card(2), 11).await, AccessReason::NoPermission);
    assert_eq!(g2.reason(a, 1).await, AccessReason::WrongGroup);
    assert_eq!(g2.reason(a, 999).await, AccessReason::UnknownDoor);
    c.doors(
        "PUT",
        "/api/v1/doors/12",
        &format!(
            r#"{{"name":"Door 12","door_group":2,"controller":{},"enabled":false}}"#,
            GROUP_2_CONTROLLER + 1
        ),
    );
    assert_eq!(g2.reason(a, 12).await, AccessReason::DoorDisabled);
    // The change is audited with the door as it was and as it is.
    let replaced = c.ledger.audit_list(&cardgate_ledger::audit::AuditQuery {
        target: Some("door:12".into()),
        limit: 10,
        ..Default::default()
    });
    let replaced = replaced
        .iter()
        .find(|r| r.action == "door.replace")
        .expect("door.replace audited");
    assert!(replaced.before.contains(r#""enabled":true"#), "{}", replaced.before);
    assert!(replaced.after.contains(r#""enabled":false"#), "{}", replaced.after);
    // A create that names an existing door is refused and changes nothing: moving a
    // door is a PUT, never a typo in a POST.
    let (status, body) = c.api(
        "POST",
        "/api/v1/doors",
        &c.door_admin,
        r#"{"id":12,"name":"Typo","door_group":1,"enabled":true}"#,
    );
    assert_eq!(status, 409, "{body}");
    let door12 = c.doors("GET", "/api/v1/doors", "");
    let door12 = door12["doors"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["id"] == 12))
        .cloned()
        .expect("door 12 listed");
    assert_eq!(door12["door_group"], 2, "{door12}");
    assert_eq!(door12["name"], "Door 12", "{door12}");
    // A department nobody is in (a typo) would grant nobody: refused by name.
    let (status, body) = c.api(
        "POST",
        "/api/v1/door-permissions",
        &c.door_admin,
        r#"{"department":"Phisics","door_group":2,"schedule":1,"valid_from":"2026-04-01"}"#,
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("Phisics"), "{body}");
    assert_eq!(g2.reason(CardNo(42), 11).await, AccessReason::UnknownCard);

    // Account 1 gets group 2 at all times from April.
    let always = c.doors(
        "POST",
        "/api/v1/door-permissions",
        &format!(
            r#"{{"card":"{}","door_group":2,"schedule":1,"valid_from":"2026-04-01"}}"#,
            demo_card(1).0
        ),
    );
    let permission = always["permission"]["id"].as_u64().unwrap();
    // The expired March permission goes; only the April one is left to revoke.
    c.doors(
        "POST",
        &format!("/api/v1/door-permissions/{}/revoke", grant["permission"]["id"]),
        "",
    );

    // A retry of a check (same event number) gets the answer recorded the first time.
    let first = g2.check(a, 11, Direction::In).await;
    let again = g2.check_seq(first.event_seq, a, 11, Direction::In).await;
    assert_eq!(again.reason, first.reason);
    // The same number for another card, door or direction is no retry: answered with the
    // first decision it would open the door for a card nobody checked, unrecorded.
    assert_eq!(first.reason, AccessReason::Granted);
    let recorded = |c: &Campus| {
        let now = cardgate_domain::Clock::now_ms(&c.clock);
        let found = tokio::task::block_in_place(|| {
            c.ledger.access_events(cardgate_ledger::doors::AccessQuery {
                door: None,
                door_group: Some(2),
                account: None,
                card: None,
                granted: None,
                flagged: None,
                from_ms: now - 86_400_000,
                to_ms: now + 86_400_000,
            })
        })
        .unwrap();
        found.rows.len()
    };
    let before = recorded(&c);
    for (card, door, direction) in [
        (CardNo(77), 11, Direction::In),
        (demo_card(2), 11, Direction::In),
        (a, 12, Direction::In),
        (a, 11, Direction::Out),
    ] {
        let reused = g2.check_seq(first.event_seq, card, door, direction).await;
        assert_eq!(
            reused.reason,
            AccessReason::EventReused,
            "{card:?} {door} {direction:?}"
        );
    }
    // A number more than 64 back is no longer held: not decided again either.
    for _ in 0..64 {
        g2.check(a, 11, Direction::In).await;
    }
    let old = g2.check_seq(first.event_seq, a, 11, Direction::In).await;
    assert_eq!(old.reason, AccessReason::EventReused);
    assert_eq!(recorded(&c), before + 64, "only the 64 new checks were recorded");

    // Revoked while the controller is connected: denied from then on, the version
    // moves, and the controller is told.
    let before = g2.check(a, 11, Direction::In).await;
    assert_eq!(before.reason, AccessReason::Granted);
    let version_before = before.cache_version;
    let revoked = c.doors("POST", &format!("/api/v1/door-permissions/{permission}/revoke"), "");
    let after = g2.check(a, 11, Direction::In).await;
    assert_eq!(after.reason, AccessReason::NoPermission);
    assert!(after.cache_version > version_before, "the cache version moved");
    assert_eq!(
        revoked["cache_version"], after.cache_version,
        "the API answers the version the controllers are brought to: {revoked}"
    );
    assert_eq!(revoked["group_version"], after.cache_version >> 32, "{revoked}");
    // The inventory says which controller is behind, and stops saying so once it
    // acknowledged the version.
    let inventory = |c: &Campus| {
        c.doors("GET", &format!("/api/v1/terminals/{GROUP_2_CONTROLLER}"), "")["terminal"]["door_cache"].clone()
    };
    let cache = inventory(&c);
    let (behind_before, controllers) = c.ledger.door_cache_lag();
    assert_eq!(
        (&cache["current"], &cache["behind"]),
        (&Value::from(after.cache_version), &Value::from(true)),
        "{cache}"
    );
    g2.client
        .send(Message::DoorCacheAck(cardgate_codec::DoorCacheAck {
            version: after.cache_version,
        }))
        .await
        .unwrap();
    g2.check(a, 11, Direction::In).await; // the acknowledgement is read before this
    let cache = inventory(&c);
    assert_eq!(
        (&cache["acknowledged"], &cache["behind"]),
        (&Value::from(after.cache_version), &Value::from(false)),
        "{cache}"
    );
    // The gauge counts what the inventory shows: one fewer behind, of every controller.
    let (behind_after, all) = c.ledger.door_cache_lag();
    assert_eq!((behind_after, all), (behind_before - 1, controllers));
    let listed = c.doors("GET", "/api/v1/terminals?kind=door&behind=true", "");
    let shown = listed["terminals"].as_array().unwrap();
    assert!(shown.iter().all(|t| t["door_cache"]["behind"] == true), "{listed}");
    assert_eq!(shown.len() as u64, behind_after, "the inventory and the gauge agree");
    assert!(!shown.iter().any(|t| t["id"] == GROUP_2_CONTROLLER), "{listed}");
    assert!(
        g2.client.door_pushed_version.is_some_and(|v| v > version_before),
        "DOOR_CACHE_PUSH arrived before the next answer"
    );
    // Its delta from the version it held removes the card's entry.
    let (_, removed, run) = g2.delta(version_before).await;
    assert!(removed.contains(&a), "the delta removes the revoked card: {run:?}");

    // A card issued at the desk to someone a permission reaches joins the caches at
    // once: the version moves, the controller is told, and the delta adds the card.
    let b = demo_card(2);
    let b_grant = c.doors(
        "POST",
        "/api/v1/door-permissions",
        &format!(
            r#"{{"card":"{}","door_group":2,"schedule":1,"valid_from":"2026-04-01"}}"#,
            b.0
        ),
    );
    let held = g2.check(a, 11, Direction::In).await.cache_version;
    let spare = demo_card(1_000);
    let account_b = c.ledger.card(b).unwrap().account;
    c.ledger
        .issue_card_desk(&By::actor(&Actor::cli()), account_b, spare, None, None)
        .await
        .unwrap();
    let next = g2.check(a, 11, Direction::In).await;
    assert!(next.cache_version > held, "a card issued moves the cache version");
    // The push may follow the answer of a check that was already on its way; it is
    // there by the next one.
    g2.check(a, 11, Direction::In).await;
    assert!(
        g2.client.door_pushed_version.is_some_and(|v| v > held),
        "DOOR_CACHE_PUSH arrived for the card issued"
    );
    let (added, _, run) = g2.delta(held).await;
    assert!(added.contains(&spare), "the delta adds the new card: {run:?}");
    c.doors(
        "POST",
        &format!("/api/v1/door-permissions/{}/revoke", b_grant["permission"]["id"]),
        "",
    );

    // Group 1 (the demo's: everyone, always): every card and account state.
    let mut g1 = Controller {
        client: c.terminal(GROUP_1_CONTROLLER).await,
        seq: 0,
        clock: c.clock.clone(),
    };
    c.clock.set(at(2026, 4, 2, 10, 0));
    assert_eq!(g1.reason(demo_card(3), 1).await, AccessReason::Granted);
    let cli = Actor::cli();
    let by = By::actor(&cli);
    c.ledger.card_status(&by, demo_card(3), CardAction::Lost).await.unwrap();
    c.ledger
        .card_status(&by, demo_card(4), CardAction::Freeze)
        .await
        .unwrap();
    c.ledger.card_status(&by, demo_card(5), CardAction::Bad).await.unwrap();
    c.ledger.cancel_card(&by, demo_card(6)).await.unwrap();
    c.ledger
        .replace_card(&by, demo_card(7), CardNo(2_000_000_007), None)
        .await
        .unwrap();
    let frozen_account = Account {
        id: 500,
        kind: AccountKind::Student,
        status: AccountStatus::Frozen,
        balance: from_fen(0),
        limits: None,
        day: 0,
        spent_today: from_fen(0),
    };
    let expiring = |no: u64, account: u64, expires_ms: Option<i64>| Card {
        no: CardNo(no),
        account,
        status: CardStatus::Active,
        expires_ms,
        issued_ms: 0,
    };
    c.ledger
        .bulk_create(
            vec![],
            &[frozen_account],
            &[
                expiring(3_000_000_500, 500, None),
                expiring(3_000_000_008, 8, Some(at(2026, 4, 2, 9, 0))),
            ],
        )
        .await
        .unwrap();
    assert_eq!(g1.reason(demo_card(3), 1).await, AccessReason::CardLost);
    assert_eq!(g1.reason(demo_card(4), 1).await, AccessReason::CardFrozen);
    assert_eq!(g1.reason(demo_card(5), 1).await, AccessReason::CardBad);
    assert_eq!(g1.reason(demo_card(6), 1).await, AccessReason::CardCancelled);
    assert_eq!(g1.reason(demo_card(7), 1).await, AccessReason::CardReplaced);
    assert_eq!(g1.reason(CardNo(2_000_000_007), 1).await, AccessReason::Granted);
    assert_eq!(g1.reason(CardNo(3_000_000_008), 1).await, AccessReason::CardExpired);
    assert_eq!(g1.reason(CardNo(3_000_000_500), 1).await, AccessReason::AccountBlocked);

    // Anti-passback (strict) on group 1: in, in again refused, out, in.
    c.doors("PUT", "/api/v1/door-groups/1/access", r#"{"anti_passback":"strict"}"#);
    let p = demo_card(9);
    assert_eq!(g1.check(p, 1, Direction::In).await.reason, AccessReason::Granted);
    assert_eq!(g1.check(p, 2, Direction::In).await.reason, AccessReason::AntiPassback);
    assert_eq!(g1.check(p, 2, Direction::Out).await.reason, AccessReason::Granted);
    assert_eq!(g1.check(p, 1, Direction::In).await.reason, AccessReason::Granted);

    // A full cache sync: schedules, the calendar, then the list from its first page.
    let run = g1
        .client
        .door_cache_run(DoorCacheSync {
            have_version: 0,
            after: None,
            page_entries_max: 0,
        })
        .await
        .unwrap();
    assert!(matches!(
        run.first(),
        Some(Message::DoorHolidays(_)) | Some(Message::DoorSchedule(_))
    ));
    let first_page = run.iter().find_map(|m| match m {
        Message::DoorCachePage(p) => Some(*p),
        _ => None,
    });
    let first_page = first_page.expect("pages");
    assert_eq!(first_page.kind, DoorCachePageKind::Full);
    assert!(first_page.has(DOOR_PAGE_FIRST));
    assert_eq!(first_page.passback as u8, cardgate_codec::Passback::Strict as u8);

    // Offline events, uploaded twice: stored once.
    let upload = |from: u64| -> Vec<DoorEvent> {
        (0..3)
            .map(|i| {
                let mut e = DoorEvent {
                    event_seq: from + i,
                    card: demo_card(10),
                    door: 3,
                    direction: Direction::In,
                    reason: AccessReason::Granted,
                    event_time_ms: at(2026, 4, 2, 8, i as i64),
                    mac: [0; 16],
                };
                e.mac = door_event_mac(
                    &demo_secret(GROUP_1_CONTROLLER),
                    &DoorEventFields::of(GROUP_1_CONTROLLER, &e),
                );
                e
            })
            .collect()
    };
    let first_offline = g1.seq + 1;
    g1.seq += 3;
    for (round, (stored, duplicates)) in [(3u16, 0u16), (0, 3)].into_iter().enumerate() {
        let events = upload(first_offline);
        let id = g1
            .client
            .feed(Message::DoorEventsBatch(DoorEventsBatch {
                first_event_seq: first_offline,
                count: 3,
            }))
            .await
            .unwrap();
        for e in events {
            g1.client.feed(Message::DoorEvent(e)).await.unwrap();
        }
        g1.client.flush().await.unwrap();
        let frame = g1.client.recv_answer().await.unwrap();
        assert_eq!(frame.request_id, id);
        let Message::DoorEventsResult(r) = frame.message else {
            panic!("expected DOOR_EVENTS_RESULT, got {:?}", frame.message)
        };
        assert_eq!(r.status, DoorEventsStatus::Accepted, "round {round}");
        assert_eq!((r.stored, r.duplicates), (stored, duplicates), "round {round}");
        assert_eq!(r.last_event_seq, first_offline + 2);
    }
    // A forged event refuses the whole batch.
    let mut forged = upload(g1.seq + 1);
    forged[1].mac[0] ^= 1;
    g1.client
        .feed(Message::DoorEventsBatch(DoorEventsBatch {
            first_event_seq: g1.seq + 1,
            count: 3,
        }))
        .await
        .unwrap();
    for e in forged {
        g1.client.feed(Message::DoorEvent(e)).await.unwrap();
    }
    g1.client.flush().await.unwrap();
    let Message::DoorEventsResult(r) = g1.client.recv_answer().await.unwrap().message else {
        panic!("expected DOOR_EVENTS_RESULT")
    };
    assert_eq!(r.status, DoorEventsStatus::BadMac);
    assert_eq!(r.stored, 0);

    // Security's search and export: by door, by card, as CSV; each one audited.
    let (status, found) = c.api(
        "GET",
        &format!(
            "/api/v1/access-events?card={}&from=2026-04-02&to=2026-04-02",
            demo_card(10).0
        ),
        &c.door_admin,
        "",
    );
    assert_eq!(status, 200, "{found}");
    let events = found["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "stored once: {found}");
    assert!(events.iter().all(|e| e["source"] == "offline" && e["door"] == 3));
    let (status, csv) = c.api_text(
        "/api/v1/access-events?door=11&from=2026-02-01&to=2026-04-30&format=csv",
        &c.door_admin,
    );
    assert_eq!(status, 200);
    assert!(
        csv.starts_with("time,door,door_name,door_group,direction,card"),
        "{csv}"
    );
    assert!(csv.lines().any(|l| l.contains(",no_permission,online,")), "{csv}");
    assert!(csv.lines().any(|l| l.contains(",outside_window,online,")), "{csv}");
    let (status, head, csv) = tokio::task::block_in_place(|| {
        api_exchange(
            c.admin,
            "GET",
            "/api/v1/access-events?door=11&granted=false&from=2026-02-01&to=2026-04-30&format=csv",
            &c.door_admin,
            None,
            "",
        )
    });
    assert_eq!(status, 200, "{csv}");
    // The range reaches past the test's clock, so neither answer is whole, and the CSV
    // says so in the header where the JSON has `complete`.
    let (_, json_answer) = c.api(
        "GET",
        "/api/v1/access-events?door=11&granted=false&from=2026-02-01&to=2026-04-30",
        &c.door_admin,
        "",
    );
    assert_eq!(json_answer["complete"], false, "{json_answer}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nx-cardgate-complete: false"),
        "a CSV search says whether it is whole: {head}"
    );
    assert!(
        csv.lines().next().unwrap().ends_with(",recorded,flagged,drift_ms"),
        "{csv}"
    );
    let denied: Vec<&str> = csv.lines().skip(1).collect();
    assert!(
        !denied.is_empty() && denied.iter().all(|l| l.contains(",false,")),
        "{csv}"
    );
    assert!(!denied.iter().any(|l| l.contains(",granted,")), "granted=false: {csv}");

    // A grant decided offline at a door of another group is stored as decided and
    // flagged for security, who find it by the flag.
    g1.seq += 1;
    let mut other_group = DoorEvent {
        event_seq: g1.seq,
        card: demo_card(12),
        door: 11,
        direction: Direction::In,
        reason: AccessReason::Granted,
        event_time_ms: at(2026, 4, 2, 9, 30),
        mac: [0; 16],
    };
    other_group.mac = door_event_mac(
        &demo_secret(GROUP_1_CONTROLLER),
        &DoorEventFields::of(GROUP_1_CONTROLLER, &other_group),
    );
    let r = self::upload(&mut g1.client, &[other_group]).await;
    assert_eq!((r.status, r.stored, r.flagged), (DoorEventsStatus::Accepted, 1, 1));
    let day = |filter: &str| -> Vec<Value> {
        let (status, found) = c.api(
            "GET",
            &format!("/api/v1/access-events?{filter}from=2026-04-02&to=2026-04-02"),
            &c.door_admin,
            "",
        );
        assert_eq!(status, 200, "{found}");
        found["events"].as_array().unwrap().clone()
    };
    let (all, flagged, unflagged) = (day(""), day("flagged=true&"), day("flagged=false&"));
    assert_eq!(flagged.len() + unflagged.len(), all.len());
    assert!(flagged.iter().all(|e| e["flagged"] == true), "{flagged:?}");
    assert!(unflagged.iter().all(|e| e["flagged"] == false), "{unflagged:?}");
    let e = flagged
        .iter()
        .find(|e| e["door"] == 11)
        .expect("the other group's door is flagged");
    assert_eq!(
        (&e["source"], &e["drift_ms"]),
        (&Value::from("offline"), &Value::from(0))
    );
    // A filter the search does not take, or a flag that is neither true nor false, is
    // refused: ignored, it would export more than was asked for.
    for bad in ["flaged=true", "granted=yes", "flagged=on"] {
        let (status, v) = c.api(
            "GET",
            &format!("/api/v1/access-events?{bad}&from=2026-04-02"),
            &c.door_admin,
            "",
        );
        assert_eq!(status, 400, "{bad}: {v}");
    }
    let audit = c.ledger.audit_list(&cardgate_ledger::audit::AuditQuery {
        target: Some(format!("card:{}", demo_card(10).0)),
        limit: 100,
        ..Default::default()
    });
    assert!(
        audit
            .iter()
            .any(|r| r.action == "access_events.search" && r.target.contains(&format!("card:{}", demo_card(10).0))),
        "the search is audited with whom it looked at"
    );
    // The attendance admin may not read security's log; the door admin no sheet.
    assert_eq!(c.api("GET", "/api/v1/access-events", &c.attendance_admin, "").0, 403);
    assert_eq!(
        c.api("GET", "/api/v1/attendance?department=Physics", &c.door_admin, "")
            .0,
        403
    );

    // A POS terminal may not send an access check; a door controller may not buy.
    let mut pos = c.terminal(1).await;
    pos.send(Message::AccessCheck(AccessCheck {
        event_seq: 1,
        card: a,
        door: 1,
        direction: Direction::In,
        controller_time_ms: 0,
    }))
    .await
    .unwrap();
    match pos.recv().await {
        Err(ClientError::Refused(ErrorCode::UnexpectedMessage)) => {}
        other => panic!("expected ERROR unexpected_message, got {other:?}"),
    }
    match g1.client.purchase(1, demo_card(11), 100).await {
        Err(ClientError::Refused(ErrorCode::UnexpectedMessage)) => {}
        other => panic!("expected ERROR unexpected_message, got {other:?}"),
    }

    the_door_admin_reads_what_the_docs_name(&c).await;
    c.stop.cancel();
}

/// The ids of the objects listed under `key`.
fn ids(body: &Value, key: &str) -> Vec<u64> {
    body[key]
        .as_array()
        .map(|list| list.iter().filter_map(|x| x["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// What a door admin following docs/OPERATIONS.md reads: the door groups and the
/// controllers (not the POS terminals, and changing neither), the doors of one group,
/// one person's permissions, the live or the revoked ones; an unknown door is 404.
async fn the_door_admin_reads_what_the_docs_name(c: &Campus) {
    let groups = c.doors("GET", "/api/v1/door-groups", "");
    assert_eq!(ids(&groups, "door_groups"), [1, 2], "{groups}");
    let terminals = c.doors("GET", "/api/v1/terminals", "");
    let list = terminals["terminals"].as_array().unwrap();
    assert!(
        list.iter()
            .any(|t| t["id"] == GROUP_2_CONTROLLER && t["door_group"] == 2),
        "{terminals}"
    );
    assert!(list.iter().any(|t| t["id"] == CLOCK), "{terminals}");
    assert!(
        list.iter().all(|t| t["kind"] == "door" || t["kind"] == "attendance"),
        "the door admin sees no POS terminal: {terminals}"
    );
    let (status, one) = c.api(
        "GET",
        &format!("/api/v1/terminals/{GROUP_1_CONTROLLER}"),
        &c.door_admin,
        "",
    );
    assert_eq!((status, one["terminal"]["kind"].as_str()), (200, Some("door")), "{one}");
    assert_eq!(
        c.api("GET", "/api/v1/terminals/1", &c.door_admin, "").0,
        404,
        "POS 1 is not theirs"
    );
    let (status, body) = c.api("POST", "/api/v1/door-groups", &c.door_admin, r#"{"name":"Mine"}"#);
    assert_eq!(status, 403, "{body}");
    let (status, body) = c.api(
        "POST",
        &format!("/api/v1/terminals/{GROUP_1_CONTROLLER}/disable"),
        &c.door_admin,
        "",
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(c.api("GET", "/api/v1/door-groups", &c.attendance_admin, "").0, 403);
    assert_eq!(c.api("GET", "/api/v1/terminals", &c.attendance_admin, "").0, 403);

    // The doors of one group (the demo's doors 11 to 20 are group 2's).
    let doors = c.doors("GET", "/api/v1/doors?door_group=2", "");
    assert_eq!(ids(&doors, "doors"), (11..=20).collect::<Vec<_>>(), "{doors}");
    assert_eq!(c.api("GET", "/api/v1/doors?door_group=x", &c.door_admin, "").0, 400);
    let (status, body) = c.api("GET", "/api/v1/doors/999", &c.door_admin, "");
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("999")), "{body}");

    // Group 2's permissions are all revoked by now; a person gets one of their own.
    let cli = Actor::cli();
    c.ledger
        .open_person(
            &By::actor(&cli),
            NewPerson {
                id: "D1".into(),
                name: "Wei Dong".into(),
                department: "Security".into(),
                kind: AccountKind::Staff,
            },
        )
        .await
        .unwrap();
    let granted = c.doors(
        "POST",
        "/api/v1/door-permissions",
        r#"{"person":"D1","door_group":2,"schedule":1,"valid_from":"2026-04-01"}"#,
    );
    let id = granted["permission"]["id"].clone();
    let list = |query: &str| {
        let v = c.doors("GET", &format!("/api/v1/door-permissions?{query}"), "");
        v["permissions"].as_array().unwrap().clone()
    };
    let mine = list("person=D1");
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["id"], id);
    let live = list("door_group=2&revoked=false");
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["id"], id);
    let revoked = list("door_group=2&revoked=true");
    assert!(
        !revoked.is_empty() && revoked.iter().all(|p| p["revoked"] == true),
        "{revoked:?}"
    );
    assert_eq!(list("door_group=2").len(), 1, "absent: the live ones");
    assert_eq!(list("door_group=2&revoked=all").len(), revoked.len() + 1, "all: both");
    assert!(list("person=D1&revoked=true").is_empty());
    assert_eq!(
        c.api("GET", "/api/v1/door-permissions?revoked=yes", &c.door_admin, "")
            .0,
        400
    );
    // A misspelt filter is refused, not dropped (the whole list would answer).
    for path in ["/api/v1/door-permissions?persn=D1", "/api/v1/doors?group=2"] {
        assert_eq!(c.api("GET", path, &c.door_admin, "").0, 400, "{path}");
    }
    assert_eq!(
        c.api("GET", "/api/v1/door-permissions?person=NOPE", &c.door_admin, "")
            .0,
        404
    );
}

/// DOOR_CACHE_BULK (docs/PROTOCOL.md 6.35): a controller that asks for large pages ends
/// with the same cache as one that takes DOOR_CACHE_PAGEs, in fewer frames: a full list
/// in one run or over several, and the delta after a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_pages_bring_the_same_cache_in_fewer_frames() {
    let c = Campus::start().await;
    // Ten more entries on group 1 (a second permission each, from April), so that the
    // list needs several runs at one entry a page.
    let mut grants = Vec::new();
    for i in 1..=10 {
        let grant = c.doors(
            "POST",
            "/api/v1/door-permissions",
            &format!(
                r#"{{"card":"{}","door_group":1,"schedule":1,"valid_from":"2026-04-01"}}"#,
                demo_card(i).0
            ),
        );
        grants.push(grant["permission"]["id"].clone());
    }
    let mut client = c.terminal(GROUP_1_CONTROLLER).await;
    let sizes = [0u16, 1, 3, 512, u16::MAX];
    let mut caches = Vec::new();
    for n in sizes {
        let mut cache = DoorCache::keeping().with_page_entries(n);
        let (runs, pages) = client.door_sync(&mut cache).await.unwrap();
        caches.push((cache, runs, pages));
    }
    let reference = caches[0].0.clone();
    let entries = reference.entries().expect("kept").len() as u64;
    // One entry a page makes 32 a run: the list must need more than one.
    assert!(entries > 32, "group 1 has {entries} entries");
    for ((cache, runs, pages), n) in caches.iter().zip(sizes) {
        assert_eq!(cache.entries(), reference.entries(), "page_entries_max {n}");
        assert_eq!(
            (cache.version, &cache.schedules, &cache.holidays, cache.passback),
            (
                reference.version,
                &reference.schedules,
                &reference.holidays,
                reference.passback
            ),
            "page_entries_max {n}"
        );
        // Nothing changes while it is read, so a listing over several runs needs no
        // catch-up delta (every page carries the FIRST page's version).
        let per_page = match n {
            0 => DOOR_CACHE_PAGE_ENTRIES_MAX,
            n => usize::from(n).min(DOOR_CACHE_BULK_ENTRIES_MAX),
        } as u64;
        let per_run = (32 * per_page).min(cardgate_ledger::door_wire::DOOR_SYNC_RUN_ENTRIES_MAX as u64);
        assert_eq!(
            (*runs, *pages),
            (entries.div_ceil(per_run), entries.div_ceil(per_page)),
            "page_entries_max {n}: runs and pages for {entries} entries"
        );
    }
    // Asked for, the gateway sends only bulk frames; not asked for, only pages.
    for (n, bulk) in [(0u16, false), (512, true)] {
        let run = client
            .door_cache_run(DoorCacheSync {
                have_version: 0,
                after: None,
                page_entries_max: n,
            })
            .await
            .unwrap();
        let (pages, bulks) = run.iter().fold((0, 0), |(p, b), m| match m {
            Message::DoorCachePage(_) => (p + 1, b),
            Message::DoorCacheBulk(_) => (p, b + 1),
            _ => (p, b),
        });
        assert_eq!((pages > 0, bulks > 0), (!bulk, bulk), "page_entries_max {n}: {run:?}");
    }

    // A revocation: the delta, in pages and in one bulk frame, leaves the same cache.
    c.doors("POST", &format!("/api/v1/door-permissions/{}/revoke", grants[0]), "");
    let (mut by_pages, mut by_bulk) = (caches[0].0.clone(), caches[3].0.clone());
    let (_, pages) = client.door_sync(&mut by_pages).await.unwrap();
    let (_, bulks) = client.door_sync(&mut by_bulk).await.unwrap();
    assert!(by_pages.version > reference.version, "the revocation moved the version");
    assert_eq!(by_bulk.version, by_pages.version);
    assert_eq!(by_bulk.entries(), by_pages.entries());
    assert_ne!(
        by_bulk.entries(),
        reference.entries(),
        "the revocation changed the list"
    );
    assert!(bulks <= pages, "bulk {bulks} frames, pages {pages}");

    // The gateway sends bulk pages; a controller sending one is refused.
    let bulk = DoorCacheBulk::new(DoorCachePageKind::Full, DOOR_PAGE_LAST_IN_RUN, 0, 1, &[], &[]).expect("empty");
    client.send(Message::DoorCacheBulk(bulk)).await.unwrap();
    match client.recv().await {
        Err(ClientError::Refused(ErrorCode::UnexpectedMessage)) => {}
        other => panic!("expected ERROR unexpected_message, got {other:?}"),
    }
    c.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attendance_sheet_from_punches() {
    let c = Campus::start().await;
    let cli = Actor::cli();
    for (id, name) in [("P1", "Li Lei"), ("P2", "Han Meimei")] {
        let (_, account) = c
            .ledger
            .open_person(
                &By::actor(&cli),
                NewPerson {
                    id: id.into(),
                    name: name.into(),
                    department: "Physics".into(),
                    kind: AccountKind::Staff,
                },
            )
            .await
            .unwrap();
        c.ledger
            .issue_card_desk(
                &By::actor(&cli),
                account.id,
                CardNo(4_000_000_000 + account.id),
                None,
                None,
            )
            .await
            .unwrap();
    }
    let li = c.ledger.person("P1").unwrap().account;
    let card = CardNo(4_000_000_000 + li);
    let mut clock = c.terminal(CLOCK).await;
    let mut seq = 0;
    // The department's sheet of one day.
    let sheet_of = |c: &Campus, date: &str| -> Value {
        let (status, sheet) = c.api(
            "GET",
            &format!("/api/v1/attendance?department=Physics&date={date}"),
            &c.attendance_admin,
            "",
        );
        assert_eq!(status, 200, "{sheet}");
        sheet
    };
    // Tuesday 2026-03-10's sheet as the day goes: each person's status, and whether the
    // sheet is final.
    let tuesday = |c: &Campus| -> (Value, Value, Value) {
        let sheet = sheet_of(c, "2026-03-10");
        let rows = sheet["rows"].as_array().unwrap();
        let of = |id: &str| rows.iter().find(|r| r["person_id"] == id).unwrap()["status"].clone();
        (of("P1"), of("P2"), sheet["complete"].clone())
    };
    // Before the start nobody is absent yet.
    c.clock.set(at(2026, 3, 10, 7, 30));
    assert_eq!(
        tuesday(&c),
        (Value::from("not_yet"), Value::from("not_yet"), Value::from(false))
    );
    // In at 08:20 (late), out at 17:30. At noon the arrival is not a departure yet, and
    // the one who has not come is absent.
    for (hh, mm) in [(8, 20), (12, 0), (17, 30)] {
        c.clock.set(at(2026, 3, 10, hh, mm));
        if (hh, mm) == (12, 0) {
            assert_eq!(
                tuesday(&c),
                (Value::from("late"), Value::from("absent"), Value::from(false)),
                "at noon"
            );
        }
        seq += 1;
        let m = Message::Punch(Punch {
            event_seq: seq,
            card,
            controller_time_ms: at(2026, 3, 10, hh, mm),
        });
        match clock.request(m).await.unwrap() {
            Message::PunchResult(r) => assert_eq!(r.status, PunchStatus::Recorded),
            other => panic!("expected PUNCH_RESULT, got {other:?}"),
        }
    }
    // The last punch again (its answer was lost): not recorded twice.
    let m = Message::Punch(Punch {
        event_seq: seq,
        card,
        controller_time_ms: at(2026, 3, 10, 17, 30),
    });
    match clock.request(m).await.unwrap() {
        Message::PunchResult(r) => assert_eq!(r.status, PunchStatus::Duplicate),
        other => panic!("expected PUNCH_RESULT, got {other:?}"),
    }
    // The same number for another card is no retry: "duplicate" would tell that holder
    // their punch was kept, and it is not.
    assert_eq!(
        punch(&mut clock, seq, demo_card(2), at(2026, 3, 10, 17, 31)).await,
        PunchStatus::EventReused
    );
    // A clock may not check doors.
    clock
        .send(Message::AccessCheck(AccessCheck {
            event_seq: 99,
            card,
            door: 1,
            direction: Direction::In,
            controller_time_ms: 0,
        }))
        .await
        .unwrap();
    match clock.recv().await {
        Err(ClientError::Refused(ErrorCode::UnexpectedMessage)) => {}
        other => panic!("expected ERROR unexpected_message, got {other:?}"),
    }

    let sheet = sheet_of(&c, "2026-03-10");
    let rows = sheet["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let li_row = rows.iter().find(|r| r["person_id"] == "P1").unwrap();
    assert_eq!(li_row["punches"], 3);
    assert_eq!(li_row["status"], "late");
    assert_eq!(li_row["late_min"], 20);
    assert_eq!(li_row["first_in_ms"], at(2026, 3, 10, 8, 20));
    assert_eq!(li_row["last_out_ms"], at(2026, 3, 10, 17, 30));
    let han = rows.iter().find(|r| r["person_id"] == "P2").unwrap();
    assert_eq!(han["status"], "absent");
    // Tomorrow, a working day, has not come: nobody is absent from it yet.
    let tomorrow = sheet_of(&c, "2026-03-11");
    let rows = tomorrow["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{tomorrow}");
    assert!(rows.iter().all(|r| r["status"] == "not_yet"), "{tomorrow}");
    assert_eq!(tomorrow["complete"], false, "a day to come is not final: {tomorrow}");
    // What it is judged against, for an attendance admin who cannot read either.
    assert_eq!(
        (
            &tomorrow["work_hours"]["work_start"],
            &tomorrow["work_hours"]["workdays"],
            &tomorrow["holiday"]
        ),
        (
            &Value::from("08:00"),
            &serde_json::json!([1, 2, 3, 4, 5]),
            &Value::from(false)
        ),
        "{tomorrow}"
    );
    // Once that day is over (and the journal holds all of it), nobody came: the sheet
    // is final and both are absent.
    c.clock.set(at(2026, 3, 12, 0, 0));
    let over = sheet_of(&c, "2026-03-11");
    assert_eq!(over["complete"], true, "{over}");
    let rows = over["rows"].as_array().unwrap();
    assert!(
        rows.len() == 2 && rows.iter().all(|r| r["status"] == "absent"),
        "{over}"
    );
    let (status, csv) = c.api_text(
        "/api/v1/attendance?person=P1&date=2026-03-10&format=csv",
        &c.attendance_admin,
    );
    assert_eq!(status, 200);
    assert!(
        csv.starts_with("date,person_id,name,department,first_in,last_out,punches"),
        "{csv}"
    );
    assert!(csv.contains("2026-03-10,P1,Li Lei,Physics,2026-03-10 08:20"), "{csv}");
    c.stop.cancel();
}

/// The real binary, killed with SIGKILL in the middle of a working day: a revocation,
/// the controller's event numbers, its uploaded events and the cache version all come
/// back, and an upload sent again after the restart is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn door_state_survives_kill_9() {
    use crate::harness::{Daemon, operator_add};

    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let token = operator_add(dir.path(), "doors", "door_admin").unwrap();
    let admin = d.admin_addr();
    let api = |method: &str, path: &str| {
        let (status, body) = tokio::task::block_in_place(|| api_request(admin, method, path, &token, None, ""));
        assert!((200..300).contains(&status), "{method} {path}: {status} {body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let now = cardgate_loadtest::client::now_ms;
    let mut g2 = TerminalClient::connect(d.terminal_addr(), GROUP_2_CONTROLLER, &demo_secret(GROUP_2_CONTROLLER))
        .await
        .unwrap();
    let check = |seq: u64| {
        Message::AccessCheck(AccessCheck {
            event_seq: seq,
            card: demo_card(1),
            door: 11,
            direction: Direction::In,
            controller_time_ms: now(),
        })
    };
    let reason = |m: Message| match m {
        Message::AccessResult(r) => (r.reason, r.cache_version),
        other => panic!("expected ACCESS_RESULT, got {other:?}"),
    };
    assert_eq!(reason(g2.request(check(1)).await.unwrap()).0, AccessReason::Granted);
    for p in api("GET", "/api/v1/door-permissions?door_group=2")["permissions"]
        .as_array()
        .unwrap()
    {
        api("POST", &format!("/api/v1/door-permissions/{}/revoke", p["id"]));
    }
    let (denied, version) = reason(g2.request(check(2)).await.unwrap());
    assert_eq!(denied, AccessReason::NoPermission);
    let events: Vec<DoorEvent> = (3..=5)
        .map(|seq| {
            let mut e = DoorEvent {
                event_seq: seq,
                card: demo_card(2),
                door: 13,
                direction: Direction::Out,
                reason: AccessReason::Granted,
                event_time_ms: now() - 60_000,
                mac: [0; 16],
            };
            e.mac = door_event_mac(
                &demo_secret(GROUP_2_CONTROLLER),
                &DoorEventFields::of(GROUP_2_CONTROLLER, &e),
            );
            e
        })
        .collect();
    let first = upload(&mut g2, &events).await;
    assert_eq!((first.stored, first.duplicates), (3, 0));
    drop(g2);

    d.kill9();
    let d = Daemon::start(dir.path());
    let mut g2 = TerminalClient::connect(d.terminal_addr(), GROUP_2_CONTROLLER, &demo_secret(GROUP_2_CONTROLLER))
        .await
        .unwrap();
    assert_eq!(g2.sign_on.last_tx_seq, 5, "the controller's event numbers came back");
    let (after, version_after) = reason(g2.request(check(6)).await.unwrap());
    assert_eq!(after, AccessReason::NoPermission, "the revocation came back");
    assert_eq!(version_after, version, "the cache version came back");
    assert_eq!(
        reason(g2.request(check(1)).await.unwrap()).0,
        AccessReason::Granted,
        "a retry of the check the door opened for gets that answer, not today's"
    );
    let again = upload(&mut g2, &events).await;
    assert_eq!((again.stored, again.duplicates), (0, 3), "stored once");
    let admin = d.admin_addr();
    let (status, body) = tokio::task::block_in_place(|| {
        api_request(
            admin,
            "GET",
            "/api/v1/access-events?door=13&format=json",
            &token,
            None,
            "",
        )
    });
    assert_eq!(status, 200, "{body}");
    let found: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found["events"].as_array().unwrap().len(), 3, "{found}");
    // The inventory shows the controller's own numbers, as its SIGN_ON_OK does.
    let (status, body) = tokio::task::block_in_place(|| {
        api_request(
            admin,
            "GET",
            &format!("/api/v1/terminals/{GROUP_2_CONTROLLER}"),
            &token,
            None,
            "",
        )
    });
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["terminal"]["last_tx_seq"], 6, "{view}");
}

async fn upload(c: &mut TerminalClient, events: &[DoorEvent]) -> cardgate_codec::DoorEventsResult {
    c.feed(Message::DoorEventsBatch(DoorEventsBatch {
        first_event_seq: events[0].event_seq,
        count: events.len() as u16,
    }))
    .await
    .unwrap();
    for e in events {
        c.feed(Message::DoorEvent(*e)).await.unwrap();
    }
    c.flush().await.unwrap();
    match c.recv_answer().await.unwrap().message {
        Message::DoorEventsResult(r) => r,
        other => panic!("expected DOOR_EVENTS_RESULT, got {other:?}"),
    }
}

/// Opens person `id` in department Physics with one card; returns the card.
async fn person_with_card(c: &Campus, id: &str) -> CardNo {
    let cli = Actor::cli();
    let (_, account) = c
        .ledger
        .open_person(
            &By::actor(&cli),
            NewPerson {
                id: id.into(),
                name: id.into(),
                department: "Physics".into(),
                kind: AccountKind::Staff,
            },
        )
        .await
        .unwrap();
    let card = CardNo(4_000_000_000 + account.id);
    c.ledger
        .issue_card_desk(&By::actor(&cli), account.id, card, None, None)
        .await
        .unwrap();
    card
}

async fn punch(clock: &mut TerminalClient, event_seq: u64, card: CardNo, controller_time_ms: i64) -> PunchStatus {
    let m = Message::Punch(Punch {
        event_seq,
        card,
        controller_time_ms,
    });
    match clock.request(m).await.unwrap() {
        Message::PunchResult(r) => r.status,
        other => panic!("expected PUNCH_RESULT, got {other:?}"),
    }
}

/// PROTOCOL.md 11.8: a punch is recorded at the clock's time, so a punch of an earlier
/// day is on that day's sheet, and one made 50 s before it arrived is at its own time;
/// a time further ahead than the drift bound is filed at arrival, never on a day to come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_punch_is_filed_at_the_clocks_time() {
    let c = Campus::start().await;
    let card = person_with_card(&c, "P1").await;
    let mut clock = c.terminal(CLOCK).await;
    let now = at(2026, 3, 11, 9, 0);
    c.clock.set(now);
    assert_eq!(
        punch(&mut clock, 1, card, at(2026, 3, 10, 8, 5)).await,
        PunchStatus::Recorded
    );
    assert_eq!(punch(&mut clock, 2, card, now - 50_000).await, PunchStatus::Recorded);
    // Two hours ahead: beyond the drift bound (60 s).
    assert_eq!(
        punch(&mut clock, 3, card, now + 2 * 3_600_000).await,
        PunchStatus::Recorded
    );
    let row = |date: &str| -> Value {
        let (status, sheet) = c.api(
            "GET",
            &format!("/api/v1/attendance?person=P1&date={date}"),
            &c.attendance_admin,
            "",
        );
        assert_eq!(status, 200, "{date}: {sheet}");
        sheet["rows"][0].clone()
    };
    let tuesday = row("2026-03-10");
    assert_eq!(
        tuesday["punches"], 1,
        "the earlier day's punch is on its sheet: {tuesday}"
    );
    assert_eq!(tuesday["first_in_ms"], at(2026, 3, 10, 8, 5), "{tuesday}");
    let wednesday = row("2026-03-11");
    assert_eq!(wednesday["punches"], 2, "{wednesday}");
    assert_eq!(
        wednesday["first_in_ms"],
        now - 50_000,
        "at the clock's time: {wednesday}"
    );
    assert_eq!(
        wednesday["last_out_ms"], now,
        "too far ahead: filed at arrival: {wednesday}"
    );
    // A date in unix ms names the local day it falls on, as in the access search.
    let by_ms = row(&at(2026, 3, 10, 23, 59).to_string());
    assert_eq!(by_ms, tuesday, "date=ms is the same sheet");
    c.stop.cancel();
}

/// No event has number 0 (PROTOCOL.md 11.2): an ACCESS_CHECK or PUNCH under it is
/// malformed (ERROR, connection closed) and records nothing, and opens no door; an
/// upload whose batch or events start at 0 is `bad_batch` and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_number_zero_is_refused_and_recorded_nowhere() {
    let c = Campus::start().await;
    let card = person_with_card(&c, "P1").await;
    // Group 2 lets every account kind through at all times in the demo.
    let mut g2 = c.terminal(GROUP_2_CONTROLLER).await;
    g2.send(Message::AccessCheck(AccessCheck {
        event_seq: 0,
        card: demo_card(1),
        door: 11,
        direction: Direction::In,
        controller_time_ms: c.ledger.now_ms(),
    }))
    .await
    .unwrap();
    match g2.recv().await {
        Err(ClientError::Refused(ErrorCode::Malformed)) => {}
        other => panic!("expected ERROR malformed, got {other:?}"),
    }
    let mut clock = c.terminal(CLOCK).await;
    clock
        .send(Message::Punch(Punch {
            event_seq: 0,
            card,
            controller_time_ms: c.ledger.now_ms(),
        }))
        .await
        .unwrap();
    match clock.recv().await {
        Err(ClientError::Refused(ErrorCode::Malformed)) => {}
        other => panic!("expected ERROR malformed, got {other:?}"),
    }
    // An upload starting at 0: refused whole.
    let mut g2 = c.terminal(GROUP_2_CONTROLLER).await;
    assert_eq!(g2.sign_on.last_tx_seq, 0, "nothing was recorded under 0");
    let mut e = DoorEvent {
        event_seq: 0,
        card: demo_card(1),
        door: 11,
        direction: Direction::In,
        reason: AccessReason::Granted,
        event_time_ms: c.ledger.now_ms() - 60_000,
        mac: [0; 16],
    };
    e.mac = door_event_mac(
        &demo_secret(GROUP_2_CONTROLLER),
        &DoorEventFields::of(GROUP_2_CONTROLLER, &e),
    );
    let r = upload(&mut g2, &[e]).await;
    assert_eq!((r.status, r.stored), (DoorEventsStatus::BadBatch, 0));
    let found = c.doors("GET", "/api/v1/access-events?door=11", "");
    assert_eq!(found["events"].as_array().unwrap().len(), 0, "{found}");
    let mut clock = c.terminal(CLOCK).await;
    assert_eq!(clock.sign_on.last_tx_seq, 0, "no punch was recorded under 0");
    let (status, sheet) = c.api("GET", "/api/v1/attendance?person=P1", &c.attendance_admin, "");
    assert_eq!(
        (status, &sheet["rows"][0]["punches"]),
        (200, &Value::from(0)),
        "{sheet}"
    );
    // The same connection still works with a number above 0.
    assert_eq!(
        punch(&mut clock, 1, card, c.ledger.now_ms()).await,
        PunchStatus::Recorded
    );
    c.stop.cancel();
}

/// The door admin's API refuses what it would otherwise take and ignore, keeps whole
/// answers under idempotency keys, and audits every filter of a search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_api_refuses_what_it_would_ignore() {
    let c = Campus::start().await;
    let status_of = |method: &str, path: &str, token: &str, body: &str| {
        let (status, v) = c.api(method, path, token, body);
        (status, v.to_string())
    };
    let door = |id: &str| format!(r#"{{{id}"name":"D","door_group":1}}"#);

    // A door with the highest id does not use up the ids: the next free one is taken.
    c.doors("POST", "/api/v1/doors", &door(r#""id":4294967295,"#));
    let next = c.doors("POST", "/api/v1/doors", &door(""));
    let after = c.doors("POST", "/api/v1/doors", &door(""));
    let (a, b) = (
        next["door"]["id"].as_u64().unwrap(),
        after["door"]["id"].as_u64().unwrap(),
    );
    assert!(a < 4_294_967_295 && b == a + 1, "{next} {after}");
    assert!(c.ledger.door(a - 1).is_some(), "the lowest free id: {a}");

    // Unknown and repeated parameters, on every read of the section and beyond it.
    for path in [
        "/api/v1/door-schedules?id=3",
        "/api/v1/holidays?bogus=1",
        "/api/v1/door-groups?bogus=1",
        "/api/v1/door-groups/1/access?bogus=1",
        "/api/v1/doors/1?bogus=1",
        "/api/v1/door-permissions/1?bogus=1",
        "/api/v1/terminals/100001?bogus=1",
    ] {
        let (status, v) = status_of("GET", path, &c.door_admin, "");
        assert_eq!(status, 400, "{path}: {v}");
        assert!(v.contains("bogus") || v.contains("id"), "{path}: {v}");
    }
    for (path, name) in [
        ("/api/v1/access-events?door=1&door=2", "door"),
        ("/api/v1/access-events?person=A&from=2026-03-01&person=B", "person"),
        ("/api/v1/terminals?kind=door&kind=pos", "kind"),
        ("/api/v1/doors?door_group=1&door_group=2", "door_group"),
    ] {
        let (status, v) = c.api("GET", path, &c.door_admin, "");
        assert_eq!(status, 400, "{path}: {v}");
        let message = v["error"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("{name:?}")), "the refusal names it: {v}");
    }
    let (status, v) = status_of("GET", "/api/v1/attendance?person=A&person=B", &c.attendance_admin, "");
    assert_eq!(status, 400, "{v}");
    // Without a valid token it is still 401, as every call without one.
    assert_eq!(
        status_of("GET", "/api/v1/access-events?door=1&door=2", "nobody", "").0,
        401
    );
    assert!(
        !c.ledger
            .audit_list(&cardgate_ledger::audit::AuditQuery {
                limit: 1000,
                ..Default::default()
            })
            .iter()
            .any(|r| r.action == "access_events.search" && r.target.contains("door:2")),
        "a refused search is not a search of door 2"
    );

    // An unknown door group is 404, as every unknown id.
    for path in [
        "/api/v1/doors?door_group=999",
        "/api/v1/door-permissions?door_group=999",
    ] {
        assert_eq!(status_of("GET", path, &c.door_admin, "").0, 404, "{path}");
    }

    // A replay is the first answer, whole.
    let grant = r#"{"account_kind":"staff","door_group":1,"schedule":1,"valid_from":"2026-03-01"}"#;
    let call = |method: &str, path: &str, key: &str, body: &str| -> (u16, Value) {
        let (status, text) =
            tokio::task::block_in_place(|| api_request(c.admin, method, path, &c.door_admin, Some(key), body));
        (status, serde_json::from_str(&text).unwrap())
    };
    let first = call("POST", "/api/v1/door-permissions", "grant-1", grant);
    assert_eq!(first.0, 201, "{}", first.1);
    assert!(first.1["cache_version"].as_u64().is_some(), "{}", first.1);
    assert_eq!(call("POST", "/api/v1/door-permissions", "grant-1", grant), first);
    let id = first.1["permission"]["id"].as_u64().unwrap();
    let revoke = format!("/api/v1/door-permissions/{id}/revoke");
    let first = call("POST", &revoke, "revoke-1", r#"{"reason":"left"}"#);
    assert_eq!(first.0, 200, "{}", first.1);
    assert!(first.1["group_version"].as_u64().is_some(), "{}", first.1);
    assert_eq!(call("POST", &revoke, "revoke-1", r#"{"reason":"left"}"#), first);
    // The reason is in the revocation's audit record; an unknown field is refused.
    let audit = c.ledger.audit_list(&cardgate_ledger::audit::AuditQuery {
        target: Some(format!("permission:{id}")),
        limit: 100,
        ..Default::default()
    });
    let rec = audit
        .iter()
        .find(|r| r.action == "door_permission.revoke" && r.status == 200)
        .expect("the revocation is audited");
    assert!(rec.after.contains(r#""revoke_reason":"left""#), "{}", rec.after);
    let (status, v) = status_of(
        "POST",
        "/api/v1/door-permissions/1/revoke",
        &c.door_admin,
        r#"{"why":"left"}"#,
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        !c.ledger.permission(1).unwrap().revoked,
        "a refused revocation changes nothing"
    );

    // A body's id that is not the path's door.
    let before = c.ledger.door(1).unwrap();
    let (status, v) = status_of("PUT", "/api/v1/doors/1", &c.door_admin, &door(r#""id":3,"#));
    assert_eq!(status, 422, "{v}");
    assert_eq!(c.ledger.door(1).unwrap(), before, "door 1 unchanged");
    assert_eq!(
        status_of("PUT", "/api/v1/doors/1", &c.door_admin, &door(r#""id":1,"#)).0,
        200
    );

    // Schedules: what would be merged, dropped or misnamed is refused, in the operator's
    // own words.
    let schedule = |name: &str, windows: &str, holidays: &str| {
        status_of(
            "POST",
            "/api/v1/door-schedules",
            &c.door_admin,
            &format!(r#"{{"name":"{name}","windows":[{windows}]{holidays}}}"#),
        )
    };
    let ok = r#"{"weekday":1,"start":"08:00","end":"09:00"}"#;
    for (name, windows, holidays, status, says) in [
        (
            "a",
            r#"{"weekday":1,"weekdays":[2],"start":"08:00","end":"09:00"}"#,
            "",
            400,
            "not both",
        ),
        (
            "b",
            r#"{"weekday":1,"start":"24:00","end":"06:00","overnight":true}"#,
            "",
            422,
            "24:00",
        ),
        ("  office hours ", ok, "", 422, "space"),
        (
            "c",
            ok,
            r#","holidays":"closed","holiday_windows":[{"start":"09:00","end":"08:00"}]"#,
            422,
            "holiday_windows",
        ),
        (
            "d",
            ok,
            r#","holidays":"windows","holiday_windows":[{"start":"22:00","end":"06:00","overnight":true},{"start":"05:00","end":"07:00"}]"#,
            422,
            "consecutive holidays",
        ),
    ] {
        let (got, v) = schedule(name, windows, holidays);
        assert_eq!(got, status, "{name}: {v}");
        assert!(v.contains(says), "{name}: {v}");
    }
    // 22:00–24:00 ends after it starts.
    assert_eq!(
        schedule("evening", r#"{"weekday":1,"start":"22:00","end":"24:00"}"#, "").0,
        201
    );

    // An unchanged calendar changes nothing; a changed one moves the versions.
    c.doors("PUT", "/api/v1/holidays", r#"{"dates":["2026-10-01"]}"#);
    let version = |c: &Campus| c.doors("GET", "/api/v1/door-groups/1/access", "")["access"]["cache_version"].clone();
    let v1 = version(&c);
    let same = c.doors("PUT", "/api/v1/holidays", r#"{"dates":["2026-10-01"]}"#);
    assert_eq!(same["dates"], serde_json::json!(["2026-10-01"]));
    assert_eq!(version(&c), v1, "an unchanged calendar moves no version");
    c.doors("PUT", "/api/v1/holidays", r#"{"dates":["2026-10-02"]}"#);
    assert_ne!(version(&c), v1);

    // Every filter of a search is in its audit record.
    c.doors("GET", "/api/v1/access-events?granted=false&flagged=true", "");
    let audit = c.ledger.audit_list(&cardgate_ledger::audit::AuditQuery {
        target: Some("access_events".into()),
        limit: 100,
        ..Default::default()
    });
    let rec = audit
        .iter()
        .find(|r| r.action == "access_events.search" && r.status == 200)
        .expect("the search is audited");
    assert!(
        rec.detail.contains("granted=false") && rec.detail.contains("flagged=true"),
        "{}",
        rec.detail
    );
    c.stop.cancel();
}

/// The journal fails under a sync: the terminal gets ERROR `server_error` and the
/// connection closes (PROTOCOL.md 6.7), never a DECLINED read as a page, a run cut
/// after an ERROR, or silence to wait on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_the_journal_cannot_serve_is_an_error_that_closes() {
    use cardgate_journal::{FaultSwitch, FaultyStore};
    let switch = FaultSwitch::default();
    let s = switch.clone();
    let c = Campus::start_with(move |store| {
        Box::new(FaultyStore {
            inner: store,
            switch: s,
        })
    })
    .await;
    let mut pos = c.terminal(1).await;
    let mut door = c.terminal(GROUP_1_CONTROLLER).await;
    switch.set(FaultSwitch::FAIL_SYNC);
    // A purchase's commit fails: its answer is DECLINED system_error, and the journal
    // refuses everything after it until a restart.
    let bought = pos.purchase(1, demo_card(1), 1_00).await.unwrap();
    assert!(
        matches!(bought, Message::Declined(ref d) if d.reason == cardgate_codec::DeclineReason::SystemError),
        "{bought:?}"
    );
    pos.send(Message::BlacklistSync(cardgate_codec::BlacklistSync {
        since_version: 0,
        after_card: 0,
    }))
    .await
    .unwrap();
    let within = std::time::Duration::from_secs(5);
    let answer = tokio::time::timeout(within, pos.recv())
        .await
        .expect("an answer, not silence");
    assert!(
        matches!(answer, Err(ClientError::Refused(ErrorCode::ServerError))),
        "{answer:?}"
    );
    let closed = tokio::time::timeout(within, pos.recv()).await;
    assert!(matches!(closed, Ok(Err(_))), "closed after the ERROR: {closed:?}");
    let run = door
        .door_cache_run(DoorCacheSync {
            have_version: 0,
            after: None,
            page_entries_max: 0,
        })
        .await;
    assert!(
        matches!(run, Err(ClientError::Refused(ErrorCode::ServerError))),
        "{run:?}"
    );
    let closed = tokio::time::timeout(within, door.recv()).await;
    assert!(matches!(closed, Ok(Err(_))), "closed after the ERROR: {closed:?}");
}
