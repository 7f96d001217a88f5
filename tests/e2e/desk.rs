//! The card desk and the operator API against the real daemon: every operation through
//! HTTP, and through the terminal protocol where terminals see its effect; 401/403 on
//! every endpoint group; CSV imports that must leave nothing behind when refused; and
//! restarts (SIGTERM and SIGKILL) that must keep every acknowledged operation.

use std::path::Path;
use std::time::{Duration, Instant};

use cardgate_codec::{BlacklistPageKind, CardNo, DeclineReason, Message};
use serde_json::{Value, json};

use crate::harness::*;

/// A daemon with a director made on the command line and a card desk and data admin
/// made through the API.
struct Desk {
    d: Daemon,
    director: String,
    desk: String,
    admin: String,
    sysadmin: String,
}

fn start(dir: &Path) -> Desk {
    let director = operator_add(dir, "zhao", "director").expect("operator add");
    let d = Daemon::start(dir);
    let add = |name: &str, role: &str| {
        let (st, body) = d.api(
            "POST",
            "/api/v1/operators",
            Some(&director),
            Some(&json!({"name": name, "role": role}).to_string()),
        );
        assert_eq!(st, 201, "{body}");
        v(&body)["token"].as_str().unwrap().to_string()
    };
    let desk = add("wang", "card_desk");
    let admin = add("li", "data_admin");
    let sysadmin = add("chen", "system_admin");
    Desk {
        d,
        director,
        desk,
        admin,
        sysadmin,
    }
}

fn v(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

impl Desk {
    fn call(&self, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let b = body.to_string();
        let (st, text) = self
            .d
            .api(method, path, Some(token), if body.is_null() { None } else { Some(&b) });
        let json = if text.is_empty() { Value::Null } else { v(&text) };
        (st, json)
    }

    fn ok(&self, token: &str, method: &str, path: &str, body: Value) -> Value {
        let (st, json) = self.call(token, method, path, body);
        assert!((200..300).contains(&st), "{method} {path}: {st} {json}");
        json
    }

    /// Opens a person with a card and `top_up` yuan on it; returns the account id.
    fn person_with_card(&self, person: &str, card: u64, top_up: &str) -> u64 {
        let p = self.ok(
            &self.desk,
            "POST",
            "/api/v1/persons",
            json!({"person_id": person, "name": format!("Name {person}"), "department": "CS", "kind": "student"}),
        );
        let account = p["account"]["id"].as_u64().unwrap();
        self.ok(
            &self.desk,
            "POST",
            "/api/v1/cards",
            json!({"account": account, "card_no": card.to_string()}),
        );
        self.ok(
            &self.desk,
            "POST",
            &format!("/api/v1/accounts/{account}/topup"),
            json!({"amount": top_up}),
        );
        account
    }

    fn balance(&self, account: u64) -> String {
        let a = self.ok(&self.desk, "GET", &format!("/api/v1/accounts/{account}"), Value::Null);
        a["account"]["balance"].as_str().unwrap().to_string()
    }

    fn card_status(&self, card: u64) -> String {
        let c = self.ok(&self.desk, "GET", &format!("/api/v1/cards/{card}"), Value::Null);
        c["card"]["status"].as_str().unwrap().to_string()
    }
}

fn declined(m: &Message) -> Option<DeclineReason> {
    match m {
        Message::Declined(d) => Some(d.reason),
        _ => None,
    }
}

const CARD_A: u64 = 62_220_000_000_001;
const CARD_A2: u64 = 62_220_000_000_011;
const CARD_B: u64 = 62_220_000_000_002;

#[tokio::test]
async fn card_lifecycle_through_the_api_and_on_every_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path());
    let account = k.person_with_card("S1", CARD_A, "100.00");
    let mut t1 = k.d.terminal(1).await;
    let mut t2 = k.d.terminal(2).await;
    assert!(matches!(
        t1.purchase(1, CardNo(CARD_A), 10_00).await.unwrap(),
        Message::Approved(_)
    ));

    // Lost: from the moment the API answers, every connection declines it.
    let r = k.ok(&k.desk, "POST", &format!("/api/v1/cards/{CARD_A}/lost"), Value::Null);
    assert_eq!(r["cards"][0]["status"], "lost");
    let version = r["blacklist_version"].as_u64().unwrap();
    assert!(version >= 1);
    assert_eq!(
        declined(&t2.purchase(1, CardNo(CARD_A), 1_00).await.unwrap()),
        Some(DeclineReason::CardLost)
    );
    assert_eq!(
        declined(&t1.purchase(2, CardNo(CARD_A), 1_00).await.unwrap()),
        Some(DeclineReason::CardLost)
    );
    // Reported twice is a rule violation, not a change.
    let (st, body) = k.call(&k.desk, "POST", &format!("/api/v1/cards/{CARD_A}/lost"), Value::Null);
    assert_eq!(st, 422, "{body}");

    // Unfreeze: usable again, on both connections.
    k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/cards/{CARD_A}/unfreeze"),
        Value::Null,
    );
    assert!(matches!(
        t2.purchase(2, CardNo(CARD_A), 1_00).await.unwrap(),
        Message::Approved(_)
    ));

    // Freeze and bad.
    k.ok(&k.desk, "POST", &format!("/api/v1/cards/{CARD_A}/freeze"), Value::Null);
    assert_eq!(
        declined(&t1.purchase(3, CardNo(CARD_A), 1_00).await.unwrap()),
        Some(DeclineReason::CardFrozen)
    );
    k.ok(&k.desk, "POST", &format!("/api/v1/cards/{CARD_A}/bad"), Value::Null);
    assert_eq!(
        declined(&t1.purchase(4, CardNo(CARD_A), 1_00).await.unwrap()),
        Some(DeclineReason::CardBad)
    );

    // Replace with the fee from the balance: the balance carries over, minus the fee.
    assert_eq!(k.balance(account), "89.00");
    let r = k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/cards/{CARD_A}/replace"),
        json!({"new_card_no": CARD_A2.to_string(), "fee": "balance"}),
    );
    assert_eq!(r["money"]["amount"], "20.00");
    assert_eq!(r["money"]["balance_after"], "69.00");
    assert_eq!(
        declined(&t2.purchase(3, CardNo(CARD_A), 1_00).await.unwrap()),
        Some(DeclineReason::CardReplaced)
    );
    match t2.purchase(4, CardNo(CARD_A2), 9_00).await.unwrap() {
        Message::Approved(a) => assert_eq!(a.balance_fen, 60_00, "the balance carried over"),
        other => panic!("{other:?}"),
    }
    // A replacement number that exists is refused and changes nothing.
    let (st, _) = k.call(
        &k.desk,
        "POST",
        &format!("/api/v1/cards/{CARD_A2}/replace"),
        json!({"new_card_no": CARD_A.to_string()}),
    );
    assert_eq!(st, 422);
    assert_eq!(k.card_status(CARD_A2), "active");

    // Cancel: refused everywhere, the remaining balance refunded and recorded.
    let r = k.ok(&k.desk, "POST", &format!("/api/v1/cards/{CARD_A2}/cancel"), Value::Null);
    assert_eq!(r["money"]["kind"], "cancel_refund");
    assert_eq!(r["money"]["amount"], "60.00");
    assert_eq!(r["account"]["status"], "closed");
    assert_eq!(k.balance(account), "0.00");
    assert_eq!(
        declined(&t1.purchase(5, CardNo(CARD_A2), 1_00).await.unwrap()),
        Some(DeclineReason::CardCancelled)
    );
    // A search that cannot mean anything is refused, not answered with nothing.
    for query in ["limit=0", "from=2026-12-02&to=2026-12-01", "limit=ten"] {
        let (st, body) = k.call(&k.director, "GET", &format!("/api/v1/audit?{query}"), Value::Null);
        assert_eq!(st, 400, "{query}: {body}");
    }
    // The audit trail names the operator, the target, before and after.
    let a = k.ok(
        &k.director,
        "GET",
        &format!("/api/v1/audit?target=card:{CARD_A}&operator=wang"),
        Value::Null,
    );
    let actions: Vec<&str> = a["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    // The card's issue is found under the card too (it is a record the call changed).
    assert_eq!(
        actions,
        [
            "card.issue",
            "card.lost",
            "card.lost",
            "card.unfreeze",
            "card.freeze",
            "card.bad",
            "card.replace"
        ]
    );
    let lost = &a["records"][1];
    assert_eq!(lost["role"], "card_desk");
    assert_eq!(lost["before"]["cards"][0]["status"], "active");
    assert_eq!(lost["after"]["cards"][0]["status"], "lost");
    assert_eq!(a["records"][2]["status"], 422);
}

#[tokio::test]
async fn blacklist_push_arrives_within_a_second_and_delta_sync_returns_exactly_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path());
    k.person_with_card("S1", CARD_A, "10.00");
    k.person_with_card("S2", CARD_B, "10.00");
    let mut t = k.d.terminal(3).await;
    let mut behind = k.d.terminal(4).await;
    t.blacklist_sync().await.unwrap();
    let v0 = t.blacklist_version;
    assert!(t.blacklist.is_empty());

    let sent = Instant::now();
    k.ok(&k.desk, "POST", &format!("/api/v1/cards/{CARD_A}/lost"), Value::Null);
    let pushed = tokio::time::timeout(Duration::from_secs(1), t.wait_push(v0))
        .await
        .expect("a push within one second of the loss report")
        .unwrap();
    assert_eq!(pushed, v0 + 1);
    assert!(sent.elapsed() < Duration::from_secs(1));
    // The delta: exactly the lost card.
    let pages = t.blacklist_sync_run(v0, 0).await.unwrap();
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].kind, BlacklistPageKind::Delta);
    assert_eq!(pages[0].added_cards(), &[CARD_A]);
    assert!(pages[0].removed_cards().is_empty());
    assert_eq!((pages[0].from_version, pages[0].to_version), (v0, v0 + 1));

    // Two more changes: one card leaves, one joins.
    k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/cards/{CARD_A}/unfreeze"),
        Value::Null,
    );
    k.ok(&k.desk, "POST", &format!("/api/v1/cards/{CARD_B}/freeze"), Value::Null);
    // The session re-arms its wait after each push: the same connection is told again.
    let pushed = tokio::time::timeout(Duration::from_secs(1), t.wait_push(v0 + 1))
        .await
        .expect("a second push on the same connection")
        .unwrap();
    assert!(pushed >= v0 + 2, "pushed {pushed}");
    let pages = t.blacklist_sync_run(v0 + 1, 0).await.unwrap();
    assert_eq!(pages[0].added_cards(), &[CARD_B]);
    assert_eq!(pages[0].removed_cards(), &[CARD_A]);
    t.blacklist_sync().await.unwrap();
    assert_eq!(t.blacklist_version, v0 + 3);
    assert_eq!(t.blacklist.iter().copied().collect::<Vec<_>>(), vec![CARD_B]);
    // The same through the API.
    let c = k.ok(
        &k.desk,
        "GET",
        &format!("/api/v1/blacklist/changes?since={v0}"),
        Value::Null,
    );
    assert_eq!(c["added"], json!([CARD_B.to_string()]));
    // Each touched card in its last state: lost then unfrozen within the range is
    // "not listed", which a terminal at v0 applies as a no-op.
    assert_eq!(c["removed"], json!([CARD_A.to_string()]));

    // The gateway knows who is behind: `t` acknowledged, `behind` never synced.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lag = k.ok(&k.sysadmin, "GET", "/api/v1/blacklist", Value::Null);
    assert_eq!(lag["published"], v0 + 3);
    assert!(lag["connected_terminals"].as_u64().unwrap() >= 2);
    let furthest: Vec<u64> = lag["furthest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    assert!(furthest.contains(&4) && !furthest.contains(&3), "{lag}");
    behind.blacklist_sync().await.unwrap();
    assert_eq!(behind.blacklist, t.blacklist);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lag = k.ok(&k.sysadmin, "GET", "/api/v1/blacklist", Value::Null);
    assert_eq!(lag["behind"], 0, "{lag}");
    // Registered at 0 from start-up, so its presence alone proves nothing.
    assert!(
        k.d.metric("cardgate_blacklist_pushes_total").unwrap_or(0.0) >= 1.0,
        "pushes are counted"
    );
}

#[tokio::test]
async fn desk_money_grants_history_and_fee_lists() {
    // The fee list is today's.
    crate::business_day::today_lasts_the_test();
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path());
    let a = k.person_with_card("S1", CARD_A, "50.00");
    let b = k.person_with_card("S2", CARD_B, "5.00");
    let mut t = k.d.terminal(5).await;
    assert!(matches!(
        t.purchase(1, CardNo(CARD_A), 12_50).await.unwrap(),
        Message::Approved(_)
    ));
    assert!(declined(&t.purchase(2, CardNo(CARD_B), 6_00).await.unwrap()).is_some());

    // Balances never go negative; reasons are mandatory; amounts are exact.
    let (st, body) = k.call(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{b}/refund"),
        json!({"amount": "5.01", "reason": "leaving"}),
    );
    assert_eq!(st, 422, "{body}");
    let (st, _) = k.call(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{b}/adjustments"),
        json!({"amount": "1.00"}),
    );
    assert_eq!(st, 422, "no reason");
    let (st, _) = k.call(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{b}/topup"),
        json!({"amount": "1.005"}),
    );
    assert_eq!(st, 422, "sub-fen amount");
    let (st, _) = k.call(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{b}/topup"),
        json!({"amount": 1}),
    );
    assert_eq!(st, 400, "a JSON number is not money");
    // Only digits with at most two decimals: what a general decimal parser also takes
    // ("1e2" would be a hundred yuan) is refused as unreadable.
    for amount in ["1e2", "1_0.00", " 5.00", "+5.00", "5.", ".5"] {
        let (st, body) = k.call(
            &k.desk,
            "POST",
            &format!("/api/v1/accounts/{b}/topup"),
            json!({ "amount": amount }),
        );
        assert_eq!(st, 400, "{amount:?}: {body}");
    }
    let (st, body) = k.call(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{b}/adjustments"),
        json!({"amount": "0.00", "reason": "nothing"}),
    );
    assert_eq!(st, 422, "{body}");
    assert!(body.to_string().contains("changes nothing"), "{body}");
    let (st, _) = k.call(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{b}/topup"),
        json!({"amount": "-1.00"}),
    );
    assert_eq!(st, 422);
    assert_eq!(k.balance(b), "5.00", "refused calls changed nothing");
    k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{b}/refund"),
        json!({"amount": "2.00", "reason": "cash back"}),
    );
    k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{b}/adjustments"),
        json!({"amount": "-1.00", "reason": "double top-up"}),
    );
    // The trail alone says what was paid and why.
    let trail = k.ok(
        &k.director,
        "GET",
        &format!("/api/v1/audit?target=account:{b}"),
        Value::Null,
    );
    let adjusted = &trail["records"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["action"] == "money.adjust" && r["status"] == 200))
        .expect("the adjustment audited")["after"];
    assert_eq!(
        (&adjusted["amount"], &adjusted["balance_delta"], &adjusted["reason"]),
        (&json!("1.00"), &json!("-1.00"), &json!("double top-up")),
        "{trail}"
    );
    k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{a}/fees"),
        json!({"fee": "temporary_card", "method": "cash"}),
    );
    let r = k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{a}/fees"),
        json!({"fee": "replacement", "method": "balance"}),
    );
    assert_eq!(r["money"]["balance_after"], "17.50");
    assert_eq!(k.balance(b), "2.00");

    // Grants: the data admin's, once per batch id.
    let grant = json!({"batch_id": "2025-06-subsidy", "items": [
        {"account": a, "amount": "30.00"}, {"person_id": "S2", "amount": "30.00"}]});
    let r = k.ok(&k.admin, "POST", "/api/v1/grants", grant.clone());
    assert_eq!(r["report"]["applied"], 2);
    let r = k.ok(&k.admin, "POST", "/api/v1/grants", grant);
    assert_eq!(
        (r["report"]["applied"].as_u64(), r["report"]["already_done"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(k.balance(b), "32.00");
    let (st, _) = k.call(
        &k.admin,
        "POST",
        "/api/v1/grants",
        json!({"batch_id": "2025-07", "items": [{"account": a, "amount": "1.00"}, {"account": 999_999, "amount": "1.00"}]}),
    );
    assert_eq!(st, 404);
    let (st, _) = k.call(
        &k.admin,
        "POST",
        "/api/v1/grants",
        json!({"batch_id": "2025-07", "items": [{"account": a, "amount": "1.00"}, {"person_id": "NOBODY", "amount": "1.00"}]}),
    );
    assert_eq!(st, 404, "an unknown person is as an unknown account");
    assert_eq!(k.balance(a), "47.50", "nothing of a refused batch");

    // Consumption details with the evidence behind each answer.
    let h = k.ok(
        &k.desk,
        "GET",
        &format!("/api/v1/cards/{CARD_B}/transactions"),
        Value::Null,
    );
    let rows = h["rows"].as_array().unwrap();
    let decline = rows
        .iter()
        .find(|r| r["kind"] == "purchase")
        .expect("the declined purchase");
    assert_eq!(decline["outcome"], "declined");
    assert_eq!(decline["decline_reason"], "insufficient_funds");
    assert_eq!(decline["terminal"], 5);
    assert_eq!(decline["seq"], 2);
    assert_eq!(decline["single_limit"], "200.00", "money is yuan in every JSON answer");
    assert_eq!(decline["amount"], "6.00");
    assert_eq!(decline["balance_change"], "0.00", "a decline moves nothing");
    assert!(decline["blacklist_version"].is_u64());
    let h = k.ok(
        &k.desk,
        "GET",
        &format!("/api/v1/accounts/{a}/transactions"),
        Value::Null,
    );
    let kinds: Vec<&str> = h["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for want in ["topup", "purchase", "fee_temporary_card", "fee_replacement", "grant"] {
        assert!(kinds.contains(&want), "{want} in {kinds:?}");
    }
    let (st, csv) = http(
        k.d.admin_addr(),
        "GET",
        &format!("/api/v1/accounts/{a}/transactions?format=csv"),
        Some(&k.desk),
        "text/plain",
        b"",
    );
    assert_eq!(st, 200);
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("time,kind,outcome,decline_reason,amount")
    );
    assert!(csv.lines().any(|l| l.contains(",purchase,approved,,12.50,")), "{csv}");
    let (st, _) = k.call(
        &k.desk,
        "GET",
        &format!("/api/v1/accounts/{a}/transactions?from=2025-13-01"),
        Value::Null,
    );
    assert_eq!(st, 400);

    // The daily fee list.
    let f = k.ok(&k.desk, "GET", "/api/v1/fees", Value::Null);
    assert_eq!(f["total"], "30.00", "{f}");
    let (st, csv) = http(
        k.d.admin_addr(),
        "GET",
        "/api/v1/fees?format=csv",
        Some(&k.admin),
        "text/plain",
        b"",
    );
    assert_eq!(st, 200);
    assert!(csv.contains(",temporary_card,10.00,cash,wang"), "{csv}");
    assert!(csv.trim_end().ends_with("total,,,,,,30.00,,"), "{csv}");

    // The day's cash: what went into and out of the drawers, and nothing that moved no
    // cash (grants, adjustments, fees from the balance).
    let cash = k.ok(&k.admin, "GET", "/api/v1/cash", Value::Null);
    let moves = cash["moves"].as_array().unwrap();
    let has = |kind: &str, amount: &str| moves.iter().any(|m| m["kind"] == kind && m["cash"] == amount);
    assert!(has("topup", "50.00") && has("topup", "5.00"), "{cash}");
    assert!(has("refund", "-2.00"), "{cash}");
    assert!(has("fee_temporary_card", "10.00"), "{cash}");
    assert!(
        !moves.iter().any(|m| m["kind"] == "grant" || m["kind"] == "adjustment"),
        "{cash}"
    );
    let fen = |v: &Value| -> i64 {
        let d: rust_decimal::Decimal = v.as_str().unwrap().parse().unwrap();
        cardgate_domain::money::to_fen(d).unwrap()
    };
    let sum_in: i64 = moves.iter().map(|m| fen(&m["cash"]).max(0)).sum();
    let sum_out: i64 = moves.iter().map(|m| (-fen(&m["cash"])).max(0)).sum();
    assert_eq!((fen(&cash["in"]), fen(&cash["out"])), (sum_in, sum_out), "{cash}");
    assert_eq!(fen(&cash["net"]), sum_in - sum_out);
    let by_operator: i64 = cash["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| fen(&o["net"]))
        .sum();
    assert_eq!(by_operator, sum_in - sum_out, "the drawers add up to the day");
    let (st, _) = k.call(&k.sysadmin, "GET", "/api/v1/cash", Value::Null);
    assert_eq!(st, 403, "the cash is the desk's");
}

const IMPORT_OK: &str = "person_id,name,department,kind,card_no\n\
    G001,Grad One,GRAD-2025,student,62220000200001\n\
    G002,Grad Two,GRAD-2025,student,62220000200002\n\
    G003,Grad Three,GRAD-2025,student,62220000200003\n\
    T001,Teacher,Physics,staff,62220000200004\n";

fn import(k: &Desk, csv: &str, dry_run: bool) -> (u16, Value) {
    let path = if dry_run {
        "/api/v1/imports?dry_run=true"
    } else {
        "/api/v1/imports"
    };
    let (st, body) = http(
        k.d.admin_addr(),
        "POST",
        path,
        Some(&k.admin),
        "text/csv",
        csv.as_bytes(),
    );
    (st, v(&body))
}

#[tokio::test]
async fn csv_import_is_all_or_nothing_idempotent_and_reports_changes() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path());
    let bad = "person_id,name,department,kind,card_no\n\
        G001,Grad One,GRAD-2025,student,62220000200001\n\
        G002,,GRAD-2025,student,62220000200002\n\
        G003,Grad Three,GRAD-2025,wizard,62220000200003\n\
        G004,Grad Four,GRAD-2025,student,12AB\n\
        G001,Again,GRAD-2025,student,62220000200005\n";
    let (st, r) = import(&k, bad, false);
    assert_eq!(st, 422, "{r}");
    let lines: Vec<u64> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 4, 5, 6]);
    assert_eq!(r["applied"], false);
    let (st, _) = k.call(&k.desk, "GET", "/api/v1/persons/G001", Value::Null);
    assert_eq!(st, 404, "a refused file leaves nothing behind");
    let (st, _) = k.call(&k.desk, "GET", "/api/v1/cards/62220000200001", Value::Null);
    assert_eq!(st, 404);
    // A card that exists already (a demo card) is a duplicate against the gateway.
    let dup = format!(
        "person_id,name,department,kind,card_no\nX1,X,CS,student,{}\n",
        card(1).0
    );
    let (st, r) = import(&k, &dup, false);
    assert_eq!(st, 422);
    assert!(r["errors"][0]["message"].as_str().unwrap().contains("already belongs"));

    let (st, r) = import(&k, IMPORT_OK, true);
    assert_eq!(
        (st, r["added"].as_u64(), r["applied"].as_bool()),
        (200, Some(4), Some(false))
    );
    let (st, r) = import(&k, IMPORT_OK, false);
    assert_eq!(
        (st, r["added"].as_u64(), r["applied"].as_bool()),
        (200, Some(4), Some(true)),
        "{r}"
    );
    let p = k.ok(&k.desk, "GET", "/api/v1/persons/T001", Value::Null);
    assert_eq!(p["account"]["kind"], "staff");
    assert_eq!(p["cards"][0]["card_no"], "62220000200004");
    let (_, r) = import(&k, IMPORT_OK, false);
    assert_eq!(
        (r["added"].as_u64(), r["updated"].as_u64(), r["unchanged"].as_u64()),
        (Some(0), Some(0), Some(4))
    );
    let changed = IMPORT_OK
        .replace("Teacher,Physics,staff", "Teacher,Chemistry,staff")
        .replace("G003,Grad Three,GRAD-2025,student", "G003,Grad Three,GRAD-2025,staff")
        + "N001,New,CS,temporary,62220000200009\n";
    let (_, r) = import(&k, &changed, false);
    assert_eq!(
        (
            r["added"].as_u64(),
            r["updated"].as_u64(),
            r["kind_changed"].as_u64(),
            r["unchanged"].as_u64()
        ),
        (Some(1), Some(2), Some(1), Some(2)),
        "{r}"
    );
    let p = k.ok(&k.desk, "GET", "/api/v1/persons/G003", Value::Null);
    assert_eq!(p["account"]["kind"], "staff");
    // The director finds the import under the account whose kind it changed.
    let account = p["account"]["id"].as_u64().unwrap();
    let trail = k.ok(
        &k.director,
        "GET",
        &format!("/api/v1/audit?target=account:{account}"),
        Value::Null,
    );
    let imports: Vec<&Value> = trail["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "import.csv" && r["status"] == 200)
        .collect();
    assert_eq!(
        imports.len(),
        2,
        "added by one import, its kind changed by another: {trail}"
    );
    assert!(
        imports.iter().all(|r| r["after"]["persons_not_named_in_targets"] == 0),
        "{trail}"
    );

    // A new card from the import works on a terminal once topped up.
    let acct = p["account"]["id"].as_u64().unwrap();
    k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{acct}/topup"),
        json!({"amount": "20.00"}),
    );
    let mut t = k.d.terminal(6).await;
    assert!(matches!(
        t.purchase(1, CardNo(62_220_000_200_003), 5_00).await.unwrap(),
        Message::Approved(_)
    ));

    // Batch cancellation: one unknown person refuses the whole batch.
    let (st, body) = k.call(
        &k.desk,
        "POST",
        "/api/v1/cancellations",
        json!({"batch_id": "grad-2025", "person_ids": ["G001", "NOBODY"]}),
    );
    assert_eq!(st, 404, "an id that names nothing: {body}");
    assert!(body.to_string().contains("NOBODY"), "{body}");
    assert_eq!(k.card_status(62_220_000_200_001), "active");
    // A department and ids at once is refused, not the union of both.
    let (st, body) = k.call(
        &k.desk,
        "POST",
        "/api/v1/cancellations",
        json!({"batch_id": "grad-2025", "department": "GRAD-2025", "person_ids": ["G001"]}),
    );
    assert_eq!(st, 422, "{body}");
    assert!(body.to_string().contains("not both"), "{body}");
    assert_eq!(k.card_status(62_220_000_200_001), "active");
    let r = k.ok(
        &k.desk,
        "POST",
        "/api/v1/cancellations",
        json!({"batch_id": "grad-2025", "department": "GRAD-2025"}),
    );
    assert_eq!(r["report"]["applied"], 3);
    assert_eq!(r["refunds"][0]["amount"], "15.00");
    assert_eq!(
        declined(&t.purchase(2, CardNo(62_220_000_200_003), 1_00).await.unwrap()),
        Some(DeclineReason::CardCancelled)
    );
    let r = k.ok(
        &k.desk,
        "POST",
        "/api/v1/cancellations",
        json!({"batch_id": "grad-2025", "department": "GRAD-2025"}),
    );
    assert_eq!(
        (r["report"]["applied"].as_u64(), r["report"]["already_done"].as_u64()),
        (Some(0), Some(3))
    );
}

/// Operators added on the gateway machine's command line, stopped or running, are on
/// the director's trail like the API's, by `cli`.
#[tokio::test]
async fn operators_added_on_the_command_line_are_on_the_trail() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path());
    operator_add_with_password(dir.path(), "sun", "card_desk", "a long enough password 1").expect("while running");
    let trail = k.ok(&k.director, "GET", "/api/v1/audit?operator=cli", Value::Null);
    let records = trail["records"].as_array().unwrap();
    let added: Vec<&str> = records
        .iter()
        .filter(|r| r["action"] == "operator.add")
        .filter_map(|r| r["after"]["name"].as_str())
        .collect();
    assert_eq!(added, ["zhao", "sun"], "{trail}");
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "operator.password_reset" && r["after"]["password"] == "set"),
        "{trail}"
    );
    assert!(
        !trail.to_string().contains("a long enough password"),
        "never the password"
    );
}

#[tokio::test]
async fn parameters_change_at_once_for_the_allowed_roles_only() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path());
    let mut t = k.d.terminal(7).await;
    let mut p = k.ok(&k.sysadmin, "GET", "/api/v1/params", Value::Null);
    assert_eq!(p["student"]["single_payment_max"], "200.00");
    p["student"]["single_payment_max"] = json!("3.00");
    let (st, _) = k.call(&k.desk, "PUT", "/api/v1/params", p.clone());
    assert_eq!(st, 403, "the card desk may not change parameters");
    k.ok(&k.sysadmin, "PUT", "/api/v1/params", p.clone());
    assert_eq!(
        declined(&t.purchase(1, card(1), 3_01).await.unwrap()),
        Some(DeclineReason::OverSingleLimit),
        "effective at once"
    );
    let mut bad = p.clone();
    bad["staff"]["daily_max"] = json!("0.00");
    let (st, _) = k.call(&k.admin, "PUT", "/api/v1/params", bad);
    assert_eq!(st, 422);
    let mut above = p.clone();
    above["student"]["single_payment_max"] = json!("900.00");
    above["student"]["daily_max"] = json!("600.00");
    let (st, body) = k.call(&k.admin, "PUT", "/api/v1/params", above);
    assert_eq!(st, 422, "a single payment above the day's limit: {body}");
    assert!(body.to_string().contains("daily_max"), "{body}");
    assert_eq!(
        k.ok(&k.sysadmin, "GET", "/api/v1/params", Value::Null)["student"]["single_payment_max"],
        "3.00",
        "refused, changed nothing"
    );
    let a = k.ok(&k.director, "GET", "/api/v1/audit?target=params", Value::Null);
    let r = &a["records"].as_array().unwrap();
    assert!(r.iter().any(|r| r["status"] == 200
        && r["before"]["student"]["single_payment_max"] == "200.00"
        && r["after"]["student"]["single_payment_max"] == "3.00"));
    assert!(r.iter().any(|r| r["status"] == 403 && r["operator"] == "wang"));
}

/// One representative endpoint of every group, and who may use it.
const GROUPS: &[(&str, &str, &str, &[&str])] = &[
    (
        "persons",
        "GET",
        "/api/v1/persons/S1",
        &["director", "card_desk", "data_admin"],
    ),
    (
        "cards",
        "POST",
        "/api/v1/cards/62220000000001/lost",
        &["director", "card_desk"],
    ),
    ("money", "POST", "/api/v1/accounts/1/topup", &["director", "card_desk"]),
    (
        "history",
        "GET",
        "/api/v1/accounts/1/transactions",
        &["director", "card_desk", "data_admin"],
    ),
    ("fees", "GET", "/api/v1/fees", &["director", "card_desk", "data_admin"]),
    ("grants", "POST", "/api/v1/grants", &["director", "data_admin"]),
    (
        "import",
        "POST",
        "/api/v1/imports?dry_run=true",
        &["director", "data_admin"],
    ),
    (
        "params",
        "GET",
        "/api/v1/params",
        &["director", "system_admin", "data_admin"],
    ),
    ("operators", "GET", "/api/v1/operators", &["director", "system_admin"]),
    (
        "audit",
        "GET",
        "/api/v1/audit",
        &["director", "system_admin", "data_admin"],
    ),
    (
        "blacklist",
        "GET",
        "/api/v1/blacklist",
        &["director", "system_admin", "card_desk"],
    ),
    ("doors", "GET", "/api/v1/doors", &["director", "door_admin"]),
    (
        "attendance",
        "GET",
        "/api/v1/attendance",
        &["director", "attendance_admin"],
    ),
];

#[tokio::test]
async fn every_endpoint_group_answers_401_without_a_token_and_403_to_the_wrong_role() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path());
    let mut tokens = vec![
        ("director", k.director.clone()),
        ("card_desk", k.desk.clone()),
        ("data_admin", k.admin.clone()),
        ("system_admin", k.sysadmin.clone()),
    ];
    for (name, role) in [("door", "door_admin"), ("clock", "attendance_admin")] {
        let r = k.ok(
            &k.director,
            "POST",
            "/api/v1/operators",
            json!({"name": name, "role": role}),
        );
        tokens.push((role, r["token"].as_str().unwrap().to_string()));
    }
    let refused_before = k.ok(&k.director, "GET", "/api/v1/audit?limit=10000", Value::Null)["records"]
        .as_array()
        .unwrap()
        .len();
    let mut refusals = 0;
    for (group, method, path, allowed) in GROUPS {
        let (st, _) = k.d.api(method, path, None, None);
        assert_eq!(st, 401, "{group}: no token");
        let (st, _) = k.d.api(method, path, Some("cg_0000"), None);
        assert_eq!(st, 401, "{group}: a made-up token");
        refusals += 2;
        for (role, token) in &tokens {
            let (st, body) = k.d.api(method, path, Some(token), None);
            if allowed.contains(role) {
                assert!(st != 401 && st != 403, "{group}: {role} allowed, got {st} {body}");
            } else {
                assert_eq!(st, 403, "{group}: {role} must be refused, got {body}");
                refusals += 1;
            }
        }
    }
    // Every refusal is audited and counted.
    let audit = k.ok(&k.director, "GET", "/api/v1/audit?limit=10000", Value::Null);
    let records = audit["records"].as_array().unwrap();
    let refused: Vec<&Value> = records[refused_before..]
        .iter()
        .filter(|r| r["status"] == 401 || r["status"] == 403)
        .collect();
    assert_eq!(refused.len(), refusals);
    assert!(refused.iter().any(|r| r["status"] == 401 && r["operator"].is_null()));
    assert!(refused.iter().any(|r| r["status"] == 403 && r["role"] == "door_admin"));
    let m = k.d.metrics();
    assert!(
        m.contains("cardgate_admin_auth_refusals_total{status=\"401\""),
        "401s counted"
    );
    assert!(
        m.contains("cardgate_admin_auth_refusals_total{status=\"403\""),
        "403s counted"
    );

    // A disabled operator's token stops working at once; only a director adds directors.
    let r = k.ok(
        &k.sysadmin,
        "POST",
        "/api/v1/operators",
        json!({"name": "temp", "role": "card_desk"}),
    );
    let id = r["operator"]["id"].as_u64().unwrap();
    let token = r["token"].as_str().unwrap().to_string();
    let (st, _) = k.call(&token, "GET", "/api/v1/blacklist", Value::Null);
    assert_eq!(st, 200);
    k.ok(
        &k.sysadmin,
        "POST",
        &format!("/api/v1/operators/{id}/disable"),
        Value::Null,
    );
    let (st, _) = k.d.api("GET", "/api/v1/blacklist", Some(&token), None);
    assert_eq!(st, 401);
    let (st, _) = k.call(
        &k.sysadmin,
        "POST",
        "/api/v1/operators",
        json!({"name": "boss", "role": "director"}),
    );
    assert_eq!(st, 403);
    // Unreadable bodies are 400 and change nothing.
    let (st, _) = k.d.api("POST", "/api/v1/persons", Some(&k.desk), Some("{not json"));
    assert_eq!(st, 400);
    let (st, _) = k.call(
        &k.desk,
        "POST",
        "/api/v1/persons",
        json!({"person_id": "S9", "name": "x", "kind": "robot"}),
    );
    assert_eq!(st, 422);
    let (st, _) = k.call(&k.desk, "GET", "/api/v1/persons/S9", Value::Null);
    assert_eq!(st, 404);
    // A person nobody opened is 404 to a change too; a kind in capitals is a kind, as
    // in the import.
    let (st, body) = k.call(&k.desk, "PATCH", "/api/v1/persons/NOBODY", json!({"name": "x"}));
    assert_eq!(st, 404, "{body}");
    let p = k.ok(
        &k.desk,
        "POST",
        "/api/v1/persons",
        json!({"person_id": "S10", "name": "x", "kind": "STAFF"}),
    );
    assert_eq!(p["account"]["kind"], "staff", "{p}");
}

/// What the desk did, read back through the API.
fn state(k: &Desk, accounts: &[u64], cards: &[u64]) -> Value {
    let acc: Vec<Value> = accounts
        .iter()
        .map(|a| k.ok(&k.desk, "GET", &format!("/api/v1/accounts/{a}"), Value::Null)["account"].clone())
        .collect();
    let cs: Vec<Value> = cards.iter().map(|c| json!(k.card_status(*c))).collect();
    let bl = k.ok(&k.desk, "GET", "/api/v1/blacklist", Value::Null);
    let audit = k.ok(&k.director, "GET", "/api/v1/audit?limit=10000", Value::Null)["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!([r["id"], r["action"], r["status"], r["target"]]))
        .collect::<Vec<_>>();
    json!({"accounts": acc, "cards": cs, "version": bl["version"], "listed": bl["listed"], "audit": audit})
}

#[tokio::test]
async fn sigterm_and_sigkill_keep_every_acknowledged_operation() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path());
    let a = k.person_with_card("S1", CARD_A, "100.00");
    let b = k.person_with_card("S2", CARD_B, "40.00");
    k.ok(&k.desk, "POST", &format!("/api/v1/cards/{CARD_A}/lost"), Value::Null);
    k.ok(
        &k.admin,
        "POST",
        "/api/v1/grants",
        json!({"batch_id": "g1", "items": [{"account": b, "amount": "5.00"}]}),
    );
    let (st, _) = import(&k, IMPORT_OK, false);
    assert_eq!(st, 200);
    let before = state(&k, &[a, b], &[CARD_A, CARD_B, 62_220_000_200_004]);
    let Desk {
        d,
        director,
        desk,
        admin,
        sysadmin,
    } = k;
    assert!(d.terminate().success());
    let d = Daemon::start(dir.path());
    let k = Desk {
        d,
        director,
        desk,
        admin,
        sysadmin,
    };
    // Refused calls may add audit records of their own; compare what was there.
    assert_eq!(
        state(&k, &[a, b], &[CARD_A, CARD_B, 62_220_000_200_004])["accounts"],
        before["accounts"]
    );
    let after = state(&k, &[a, b], &[CARD_A, CARD_B, 62_220_000_200_004]);
    assert_eq!(after["cards"], before["cards"]);
    assert_eq!(after["version"], before["version"]);
    assert_eq!(after["audit"], before["audit"], "the audit trail survives SIGTERM");

    // More work, then SIGKILL: everything acknowledged is there after the restart.
    k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/cards/{CARD_A}/replace"),
        json!({"new_card_no": CARD_A2.to_string()}),
    );
    k.ok(&k.desk, "POST", &format!("/api/v1/cards/{CARD_B}/cancel"), Value::Null);
    k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{a}/topup"),
        json!({"amount": "7.77"}),
    );
    let r = k.ok(
        &k.sysadmin,
        "POST",
        "/api/v1/operators",
        json!({"name": "night", "role": "card_desk"}),
    );
    let night = r["token"].as_str().unwrap().to_string();
    let before = state(&k, &[a, b], &[CARD_A, CARD_A2, CARD_B, 62_220_000_200_004]);
    let Desk {
        d,
        director,
        desk,
        admin,
        sysadmin,
    } = k;
    d.kill9();
    let d = Daemon::start(dir.path());
    let k = Desk {
        d,
        director,
        desk,
        admin,
        sysadmin,
    };
    let after = state(&k, &[a, b], &[CARD_A, CARD_A2, CARD_B, 62_220_000_200_004]);
    assert_eq!(after["accounts"], before["accounts"]);
    assert_eq!(after["cards"], before["cards"]);
    assert_eq!(after["version"], before["version"]);
    assert_eq!(after["listed"], before["listed"]);
    assert_eq!(after["audit"], before["audit"], "the audit trail survives SIGKILL");
    assert_eq!(k.balance(a), "107.77");
    k.ok(&night, "GET", "/api/v1/persons/S1", Value::Null);
    // Terminals see the same after the crash: the old card refused, the new one paying.
    let mut t = k.d.terminal(8).await;
    assert_eq!(
        declined(&t.purchase(1, CardNo(CARD_A), 1_00).await.unwrap()),
        Some(DeclineReason::CardReplaced)
    );
    assert!(matches!(
        t.purchase(2, CardNo(CARD_A2), 1_00).await.unwrap(),
        Message::Approved(_)
    ));
    t.blacklist_sync().await.unwrap();
    assert!(t.blacklist.contains(&CARD_A) && t.blacklist.contains(&CARD_B));
    assert!(!t.blacklist.contains(&CARD_A2));
}

#[tokio::test]
async fn a_flood_of_bad_tokens_is_counted_but_not_all_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path());
    let flood = 300;
    let started = Instant::now();
    for _ in 0..flood {
        let (st, _) = k.d.api("GET", "/api/v1/params", Some("cg_guess"), None);
        assert_eq!(st, 401);
    }
    let audit = k.ok(&k.director, "GET", "/api/v1/audit?limit=10000", Value::Null);
    let audited = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 401)
        .count();
    // At most the per-second allowance in each second the flood touched.
    let seconds = started.elapsed().as_secs() as usize + 2;
    assert!(audited > 0, "refusals are audited");
    assert!(audited <= 50 * seconds, "{audited} of {flood} journaled in {seconds} s");
    let unaudited =
        k.d.metric("cardgate_admin_auth_refusals_unaudited_total")
            .unwrap_or(0.0);
    assert_eq!(
        audited + unaudited as usize,
        flood,
        "every refusal is audited or counted"
    );
}
