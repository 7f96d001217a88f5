//! Faults found by using the gateway, about money and records, each with its right
//! value: no money into or out of a closed account by any path (and the refund owed is
//! the desk's exception); no id issued twice after a kill -9, for every counter
//! recovery rebuilds; a retried desk call with its Idempotency-Key applied once; every
//! record a call changed finds its audit record; an expired card is not issued;
//! consumption details that show every request, in yuan.

use std::path::Path;

use cardgate_codec::{CardNo, DeclineReason, Message};
use serde_json::{Value, json};

use crate::harness::*;

/// A daemon, its director (made on the command line) and a card desk operator.
struct Kit {
    d: Daemon,
    director: String,
    desk: String,
}

impl Kit {
    fn start(dir: &Path) -> Kit {
        let director = operator_add(dir, "zhao", "director").expect("operator add");
        let d = Daemon::start(dir);
        let mut k = Kit {
            d,
            director,
            desk: String::new(),
        };
        let r = k.ok(
            &k.director.clone(),
            "POST",
            "/api/v1/operators",
            json!({"name": "wang", "role": "card_desk"}),
        );
        k.desk = r["token"].as_str().unwrap().to_string();
        k
    }

    /// The same data directory and tokens, after the daemon was killed.
    fn restart(self, how: Stop) -> Kit {
        let Kit { d, director, desk } = self;
        let dir = d.data_dir.clone();
        match how {
            Stop::Kill9 => d.kill9(),
            Stop::Term => assert!(d.terminate().success()),
        }
        Kit {
            d: Daemon::start(&dir),
            director,
            desk,
        }
    }

    fn call_with(&self, token: &str, method: &str, path: &str, key: Option<&str>, body: Value) -> (u16, Value) {
        let b = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (st, text) = api_request(self.d.admin_addr(), method, path, token, key, &b);
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        (st, json)
    }

    fn call(&self, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.call_with(token, method, path, None, body)
    }

    fn ok(&self, token: &str, method: &str, path: &str, body: Value) -> Value {
        let (st, json) = self.call(token, method, path, body);
        assert!((200..300).contains(&st), "{method} {path}: {st} {json}");
        json
    }

    /// A person with a card and `top_up` yuan; returns the account id.
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

    fn audit(&self, query: &str) -> Vec<Value> {
        let a = self.ok(&self.director, "GET", &format!("/api/v1/audit?{query}"), Value::Null);
        a["records"].as_array().unwrap().clone()
    }
}

enum Stop {
    Kill9,
    Term,
}

/// One HTTP/1.1 request with an optional Idempotency-Key; the status and the body.
fn declined(m: &Message) -> Option<DeclineReason> {
    match m {
        Message::Declined(d) => Some(d.reason),
        _ => None,
    }
}

/// Item 1: a terminal buys 20.00 (balance 980.00); the desk cancels the account and pays
/// 980.00 out; the terminal then reverses the purchase. The closed account must not get
/// 20.00 back: the reversal is declined with a reason, and the refund owed is the desk's
/// exception. Every other path that moves money is refused on the closed account too.
#[tokio::test]
async fn money_never_enters_or_leaves_a_closed_account() {
    const CARD: u64 = 62_220_000_300_001;
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let account = k.person_with_card("C1", CARD, "1000.00");
    let mut t = k.d.terminal(9).await;
    let Message::Approved(bought) = t.purchase(1, CardNo(CARD), 20_00).await.unwrap() else {
        panic!("the purchase is approved")
    };
    assert_eq!(bought.balance_fen, 980_00);
    let r = k.ok(&k.desk, "POST", &format!("/api/v1/cards/{CARD}/cancel"), Value::Null);
    assert_eq!(r["money"]["amount"], "980.00", "the balance is paid out");
    assert_eq!(k.balance(account), "0.00");

    let answer = t.reversal(2, 1, CardNo(CARD), 20_00).await.unwrap();
    assert_eq!(declined(&answer), Some(DeclineReason::AccountBlocked), "{answer:?}");
    assert_eq!(k.balance(account), "0.00", "no money appeared in the closed account");
    // The refund owed is the desk's, as an exception that says what happened.
    let ex = k.ok(&k.desk, "GET", "/api/v1/exceptions", Value::Null);
    let list = ex["exceptions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{ex}");
    assert_eq!(list[0]["kind"], "refund_owed");
    assert_eq!(list[0]["amount"], "20.00");
    assert_eq!(list[0]["account"], account);
    assert_eq!(list[0]["tx_id"], bought.tx_id);
    // A retry of the reversal gets the same answer and raises nothing twice.
    let again = t.reversal(2, 1, CardNo(CARD), 20_00).await.unwrap();
    assert_eq!(declined(&again), Some(DeclineReason::AccountBlocked));
    let ex = k.ok(&k.desk, "GET", "/api/v1/exceptions", Value::Null);
    assert_eq!(ex["exceptions"].as_array().unwrap().len(), 1);

    // Every other path: refused with a reason, nothing moves.
    for (path, body) in [
        (format!("/api/v1/accounts/{account}/topup"), json!({"amount": "5.00"})),
        (
            format!("/api/v1/accounts/{account}/refund"),
            json!({"amount": "5.00", "reason": "x"}),
        ),
        (
            format!("/api/v1/accounts/{account}/adjustments"),
            json!({"amount": "5.00", "reason": "x"}),
        ),
        (
            format!("/api/v1/accounts/{account}/adjustments"),
            json!({"amount": "-5.00", "reason": "x"}),
        ),
        (
            format!("/api/v1/accounts/{account}/fees"),
            json!({"fee": "replacement", "method": "cash"}),
        ),
        (
            "/api/v1/cards".into(),
            json!({"account": account, "card_no": "62220000300002"}),
        ),
    ] {
        let (st, body) = k.call(&k.desk, "POST", &path, body);
        assert_eq!(st, 422, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("closed"), "{path}: {body}");
    }
    let (st, body) = k.call(
        &k.director,
        "POST",
        "/api/v1/grants",
        json!({"batch_id": "closed-1", "items": [{"account": account, "amount": "5.00"}]}),
    );
    assert_eq!(st, 422, "a grant to a closed account: {body}");
    let later = t.purchase(3, CardNo(CARD), 1_00).await.unwrap();
    assert_eq!(declined(&later), Some(DeclineReason::CardCancelled));
    assert_eq!(k.balance(account), "0.00");

    // The desk settles it, once.
    let id = list[0]["id"].as_u64().unwrap();
    let r = k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/exceptions/{id}/resolve"),
        json!({"note": "refunded 20.00 in cash at the desk"}),
    );
    assert_eq!(r["resolved"]["operator"], "wang");
    let (st, _) = k.call(
        &k.desk,
        "POST",
        &format!("/api/v1/exceptions/{id}/resolve"),
        json!({"note": "again"}),
    );
    assert_eq!(st, 422, "settled once");
    let open = k.ok(&k.desk, "GET", "/api/v1/exceptions", Value::Null);
    assert!(open["exceptions"].as_array().unwrap().is_empty());
    let all = k.ok(&k.desk, "GET", "/api/v1/exceptions?state=all", Value::Null);
    assert_eq!(all["exceptions"].as_array().unwrap().len(), 1);
    // The exception and its settlement survive a crash.
    let k = k.restart(Stop::Kill9);
    let all = k.ok(&k.desk, "GET", "/api/v1/exceptions?state=all", Value::Null);
    assert_eq!(
        all["exceptions"][0]["resolved"]["note"],
        "refunded 20.00 in cash at the desk"
    );
}

/// Item 2: after a kill -9, no id is ever issued twice, for every counter recovery
/// rebuilds; what a batch or an import did before the crash is not done again.
#[tokio::test]
async fn no_id_is_issued_twice_after_a_kill_9() {
    const CARD_1: u64 = 62_220_000_310_001;
    const CARD_2: u64 = 62_220_000_310_002;
    const CARD_3: u64 = 62_220_000_310_003;
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());

    // Operators: A before the crash, B after; B gets its own id and A stays.
    let a = k.ok(
        &k.director,
        "POST",
        "/api/v1/operators",
        json!({"name": "A", "role": "card_desk"}),
    );
    let k = k.restart(Stop::Kill9);
    let b = k.ok(
        &k.director,
        "POST",
        "/api/v1/operators",
        json!({"name": "B", "role": "card_desk"}),
    );
    assert_ne!(a["operator"]["id"], b["operator"]["id"]);
    let ops = k.ok(&k.director, "GET", "/api/v1/operators", Value::Null);
    let names: Vec<&str> = ops["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"A") && names.contains(&"B"), "{names:?}");
    let (st, _) = k.call(
        a["token"].as_str().unwrap(),
        "GET",
        "/api/v1/cards/62220000310001",
        Value::Null,
    );
    assert_eq!(st, 404, "A's token still works (a card it asks for does not exist yet)");

    // Persons and accounts, tx ids, blacklist versions, audit ids.
    let acct_1 = k.person_with_card("P1", CARD_1, "100.00");
    let tx_1 = k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{acct_1}/topup"),
        json!({"amount": "1.00"}),
    )["money"]["tx_id"]
        .as_u64()
        .unwrap();
    let v_1 = k.ok(&k.desk, "POST", &format!("/api/v1/cards/{CARD_1}/lost"), Value::Null)["blacklist_version"]
        .as_u64()
        .unwrap();
    let k = k.restart(Stop::Kill9);
    let acct_2 = k.person_with_card("P2", CARD_2, "100.00");
    assert!(acct_2 > acct_1, "account {acct_2} after {acct_1}");
    assert_eq!(k.balance(acct_1), "101.00", "P1's account is still P1's");
    let tx_2 = k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{acct_2}/topup"),
        json!({"amount": "1.00"}),
    )["money"]["tx_id"]
        .as_u64()
        .unwrap();
    assert!(tx_2 > tx_1, "tx {tx_2} after {tx_1}");
    let v_2 = k.ok(&k.desk, "POST", &format!("/api/v1/cards/{CARD_2}/lost"), Value::Null)["blacklist_version"]
        .as_u64()
        .unwrap();
    assert_eq!(v_2, v_1 + 1, "blacklist versions go on by one");
    let mut t = k.d.terminal(11).await;
    assert_eq!(
        declined(&t.purchase(1, CardNo(CARD_1), 1_00).await.unwrap()),
        Some(DeclineReason::CardLost)
    );
    let ids: Vec<u64> = k
        .audit("limit=10000")
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "audit ids are unique: {ids:?}");

    // A batch grant and an import done before the crash are not done again.
    let grant = json!({"batch_id": "crash-1", "items": [{"account": acct_1, "amount": "2.00"}]});
    let r = k.ok(&k.director, "POST", "/api/v1/grants", grant.clone());
    assert_eq!(r["report"]["applied"], 1);
    let csv = "person_id,name,department,kind,card_no\nP3,Name P3,CS,student,62220000310003\n";
    let (st, text) = http(
        k.d.admin_addr(),
        "POST",
        "/api/v1/imports",
        Some(&k.director),
        "text/csv",
        csv.as_bytes(),
    );
    assert_eq!(st, 200, "{text}");
    let k = k.restart(Stop::Kill9);
    let r = k.ok(&k.director, "POST", "/api/v1/grants", grant);
    assert_eq!(
        (r["report"]["applied"].as_u64(), r["report"]["already_done"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(k.balance(acct_1), "103.00", "the grant was credited once");
    let (st, text) = http(
        k.d.admin_addr(),
        "POST",
        "/api/v1/imports",
        Some(&k.director),
        "text/csv",
        csv.as_bytes(),
    );
    assert_eq!(st, 200, "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (report["added"].as_u64(), report["unchanged"].as_u64()),
        (Some(0), Some(1))
    );
    let c = k.ok(&k.desk, "GET", &format!("/api/v1/cards/{CARD_3}"), Value::Null);
    assert_eq!(c["person"]["person_id"], "P3");
}

/// Item 3: a desk call whose answer is lost is retried with the same Idempotency-Key:
/// applied once, the same answer every time, also after a restart; the same key with a
/// different request is refused; copies sent at once are applied once.
#[tokio::test]
async fn a_retried_desk_call_with_its_key_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let account = k.person_with_card("I1", 62_220_000_320_001, "100.00");
    let path = |op: &str| format!("/api/v1/accounts/{account}/{op}");
    let calls = [
        ("topup", json!({"amount": "100.00"}), "200.00"),
        ("refund", json!({"amount": "30.00", "reason": "left school"}), "170.00"),
        (
            "adjustments",
            json!({"amount": "-5.00", "reason": "double charge"}),
            "165.00",
        ),
        ("fees", json!({"fee": "replacement", "method": "balance"}), "145.00"),
    ];
    for (i, (op, body, after)) in calls.iter().enumerate() {
        let key = format!("retry-{i}-{op}");
        let (st, first) = k.call_with(&k.desk, "POST", &path(op), Some(&key), body.clone());
        assert_eq!(st, 200, "{op}: {first}");
        for _ in 0..2 {
            let (st, again) = k.call_with(&k.desk, "POST", &path(op), Some(&key), body.clone());
            assert_eq!((st, &again), (200, &first), "{op}: the retry gets the first answer");
        }
        assert_eq!(&k.balance(account), after, "{op}: applied once");
        // The same key for another request: refused, nothing changes.
        let (st, e) = k.call_with(&k.desk, "POST", &path("topup"), Some(&key), json!({"amount": "1.00"}));
        assert_eq!(st, 422, "{op}: {e}");
        assert!(e["error"].as_str().unwrap().contains("Idempotency-Key"), "{e}");
        assert_eq!(&k.balance(account), after);
    }
    // Without a key, a call is a new call every time.
    k.ok(&k.desk, "POST", &path("topup"), json!({"amount": "1.00"}));
    k.ok(&k.desk, "POST", &path("topup"), json!({"amount": "1.00"}));
    assert_eq!(k.balance(account), "147.00");

    // A card operation, a refused call, and copies sent at once.
    let (st, lost) = k.call_with(
        &k.desk,
        "POST",
        "/api/v1/cards/62220000320001/lost",
        Some("lost-1"),
        Value::Null,
    );
    assert_eq!(st, 200, "{lost}");
    let (st, again) = k.call_with(
        &k.desk,
        "POST",
        "/api/v1/cards/62220000320001/lost",
        Some("lost-1"),
        Value::Null,
    );
    assert_eq!(
        (st, again),
        (200, lost.clone()),
        "not 422 'already lost': the first answer"
    );
    let (st, refused) = k.call_with(
        &k.desk,
        "POST",
        &path("refund"),
        Some("too-much"),
        json!({"amount": "999.00", "reason": "x"}),
    );
    assert_eq!(st, 422, "{refused}");
    let (st, again) = k.call_with(
        &k.desk,
        "POST",
        &path("refund"),
        Some("too-much"),
        json!({"amount": "999.00", "reason": "x"}),
    );
    assert_eq!((st, again), (422, refused), "a refusal is kept too");
    let addr = k.d.admin_addr();
    let desk = k.desk.clone();
    let topup = path("topup");
    let copies: Vec<_> = (0..8)
        .map(|_| {
            let (desk, topup) = (desk.clone(), topup.clone());
            std::thread::spawn(move || {
                api_request(addr, "POST", &topup, &desk, Some("at-once"), r#"{"amount":"10.00"}"#)
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = copies.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(answers.iter().all(|a| a.0 == 200 && a.1 == answers[0].1), "{answers:?}");
    assert_eq!(k.balance(account), "157.00", "eight copies at once, applied once");

    // Durable: after a crash and after a clean stop, the retry gets the first answer.
    let (_, first) = k.call_with(
        &k.desk,
        "POST",
        &path("topup"),
        Some("durable"),
        json!({"amount": "3.00"}),
    );
    let k = k.restart(Stop::Kill9);
    let (st, again) = k.call_with(
        &k.desk,
        "POST",
        &path("topup"),
        Some("durable"),
        json!({"amount": "3.00"}),
    );
    assert_eq!((st, &again), (200, &first));
    let k = k.restart(Stop::Term);
    let (st, again) = k.call_with(
        &k.desk,
        "POST",
        &path("topup"),
        Some("durable"),
        json!({"amount": "3.00"}),
    );
    assert_eq!((st, &again), (200, &first));
    assert_eq!(k.balance(account), "160.00");
    let (st, e) = k.call_with(
        &k.desk,
        "POST",
        &path("topup"),
        Some("bad key with spaces"),
        json!({"amount": "1.00"}),
    );
    assert_eq!(st, 400, "{e}");
}

/// Item 5: every record a call changes finds its audit record, with the tx ids, also
/// inside batches; item 6: a card already expired is not issued, nothing is charged.
#[tokio::test]
async fn every_record_a_call_changes_finds_its_audit_record() {
    // A card that expired yesterday.
    crate::business_day::today_lasts_the_test();
    const OLD: u64 = 62_220_000_330_001;
    const NEW: u64 = 62_220_000_330_002;
    const GRAD: u64 = 62_220_000_330_003;
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let account = k.person_with_card("A1", OLD, "100.00");
    let issued = k.audit(&format!("target=card:{OLD}"));
    assert_eq!(issued[0]["action"], "card.issue", "an issue is found under its card");
    let r = k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/cards/{OLD}/replace"),
        json!({"new_card_no": NEW.to_string(), "fee": "balance"}),
    );
    let fee_tx = r["money"]["tx_id"].as_u64().unwrap();
    for target in [
        format!("card:{OLD}"),
        format!("card:{NEW}"),
        format!("account:{account}"),
    ] {
        let recs = k.audit(&format!("target={target}"));
        let replace = recs
            .iter()
            .find(|r| r["action"] == "card.replace")
            .unwrap_or_else(|| panic!("{target}: {recs:?}"));
        assert_eq!(replace["after"]["money"]["tx_id"], fee_tx, "{target}");
        assert!(replace["targets"].as_array().unwrap().len() >= 3, "{replace}");
    }

    // Batches: each grant and each cancellation under its own account and card.
    let grad = k.person_with_card("G1", GRAD, "10.00");
    let g = k.ok(
        &k.director,
        "POST",
        "/api/v1/grants",
        json!({"batch_id": "2026-12", "items": [{"account": account, "amount": "7.00"}, {"account": grad, "amount": "3.00"}]}),
    );
    assert_eq!(g["report"]["applied"], 2);
    let recs = k.audit(&format!("target=account:{grad}"));
    let grant = recs
        .iter()
        .find(|r| r["action"] == "money.grant")
        .expect("the grant item");
    assert!(
        grant["after"]["tx_id"].is_u64() && grant["after"]["balance"] == "13.00",
        "{grant}"
    );
    assert!(grant["detail"].as_str().unwrap().contains("2026-12"));
    k.ok(
        &k.desk,
        "POST",
        "/api/v1/cancellations",
        json!({"batch_id": "grad-2026", "person_ids": ["G1"]}),
    );
    for target in [format!("card:{GRAD}"), format!("account:{grad}")] {
        let recs = k.audit(&format!("target={target}"));
        let cancel = recs
            .iter()
            .find(|r| r["action"] == "card.cancel")
            .unwrap_or_else(|| panic!("{target}: {recs:?}"));
        assert_eq!(
            cancel["after"]["money"]["amount"], "13.00",
            "{target}: the refund, with its tx id"
        );
        assert!(cancel["after"]["money"]["tx_id"].is_u64());
    }
    // The batch calls themselves are recorded once each, as before.
    assert_eq!(k.audit("target=grants").len(), 1);
    assert_eq!(k.audit("target=cancellations").len(), 1);

    // Item 6: a temporary card that expired yesterday (business time) is refused, and
    // its fee is not taken.
    let yesterday = crate::business_day::local_date(cardgate_loadtest::client::now_ms() - 86_400_000);
    let before = k.balance(account);
    let (st, e) = k.call(
        &k.desk,
        "POST",
        "/api/v1/cards",
        json!({"account": account, "card_no": "62220000330009", "expires": "2020-01-01", "fee": "balance"}),
    );
    assert_eq!(st, 422, "{e}");
    let (st, e) = k.call(
        &k.desk,
        "POST",
        "/api/v1/cards",
        json!({"account": account, "card_no": "62220000330009", "expires": yesterday, "fee": "balance"}),
    );
    assert_eq!(st, 422, "expired yesterday, local time: {e}");
    assert!(e["error"].as_str().unwrap().contains("expired"), "{e}");
    assert_eq!(k.balance(account), before, "no fee for a card not issued");
    let (st, _) = k.call(&k.desk, "GET", "/api/v1/cards/62220000330009", Value::Null);
    assert_eq!(st, 404);
}

/// Item 7: consumption details show every request of the account (a declined reversal
/// too), amounts as signed yuan; an unknown account is 404; the fee list names the
/// person; a format the API does not offer is refused.
#[tokio::test]
async fn consumption_details_are_complete_and_in_yuan() {
    const CARD: u64 = 62_220_000_340_001;
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let account = k.person_with_card("H1", CARD, "50.00");
    let mut t = k.d.terminal(12).await;
    assert!(matches!(
        t.purchase(1, CardNo(CARD), 12_50).await.unwrap(),
        Message::Approved(_)
    ));
    // A reversal of a purchase that does not exist: declined, and still the account's.
    assert_eq!(
        declined(&t.reversal(2, 99, CardNo(CARD), 12_50).await.unwrap()),
        Some(DeclineReason::OriginalNotFound)
    );
    k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{account}/adjustments"),
        json!({"amount": "-5.00", "reason": "double charge"}),
    );
    k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/accounts/{account}/fees"),
        json!({"fee": "replacement", "method": "cash"}),
    );
    let h = k.ok(
        &k.desk,
        "GET",
        &format!("/api/v1/accounts/{account}/transactions"),
        Value::Null,
    );
    let rows = h["rows"].as_array().unwrap();
    let row = |kind: &str| {
        rows.iter()
            .find(|r| r["kind"] == kind)
            .unwrap_or_else(|| panic!("{kind}: {rows:?}"))
    };
    let reversal = row("reversal");
    assert_eq!(reversal["outcome"], "declined");
    assert_eq!(reversal["account"], account);
    assert_eq!(row("purchase")["amount"], "12.50");
    assert_eq!(row("purchase")["balance_change"], "-12.50");
    assert_eq!(row("adjustment")["amount"], "-5.00", "signed yuan, not 500");
    assert_eq!(row("adjustment")["balance_change"], "-5.00");
    assert_eq!(row("fee_replacement")["balance_change"], "0.00", "paid in cash");
    assert_eq!(row("topup")["balance_after"], "50.00");

    let (st, _) = k.call(&k.desk, "GET", "/api/v1/accounts/987654/transactions", Value::Null);
    assert_eq!(st, 404);
    let (st, _) = k.call(&k.desk, "GET", "/api/v1/cards/62220000349999/transactions", Value::Null);
    assert_eq!(st, 404);
    let (st, e) = k.call(
        &k.desk,
        "GET",
        &format!("/api/v1/accounts/{account}/transactions?format=xml"),
        Value::Null,
    );
    assert_eq!(st, 400, "{e}");
    let (st, _) = k.call(&k.desk, "GET", "/api/v1/fees?format=xml", Value::Null);
    assert_eq!(st, 400);
    let fees = k.ok(&k.desk, "GET", "/api/v1/fees", Value::Null);
    let fee = &fees["fees"][0];
    assert_eq!(
        (fee["person_id"].as_str(), fee["name"].as_str()),
        (Some("H1"), Some("Name H1")),
        "{fees}"
    );
}
