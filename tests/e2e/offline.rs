//! Offline POS sales and the day's completeness, against the real daemon: a terminal
//! goes offline, sells, reconnects and uploads; a batch sent twice, and one cut off and
//! sent again, post nothing twice; a batch with a bad MAC posts nothing; numbers a
//! terminal skipped show in the completeness report as their exact ranges until filled;
//! a lost card used offline and an overdraft are posted and raised as exceptions; the
//! settlement equals the transactions, merchant by merchant, to the fen; a closed day
//! stays closed when a late upload for it arrives, which counts as an adjustment of the
//! day it arrived.

use std::path::Path;
use std::time::{Duration, Instant};

use cardgate_codec::{CardNo, Message, OfflineBatch, OfflineStatus};
use cardgate_loadtest::client::{TerminalClient, now_ms};
use serde_json::{Value, json};

use crate::business_day::{TZ_OFFSET_MINUTES, earlier_today, local_date, today_lasts_the_test};
use crate::harness::*;

const EVENTUALLY: Duration = Duration::from_secs(30);

/// A demo gateway whose terminals may sell offline for three days (so that sales dated
/// yesterday are believed whatever the hour), with a director and a data admin.
struct Kit {
    d: Daemon,
    director: String,
    data: String,
    desk: String,
}

impl Kit {
    fn start(dir: &Path) -> Kit {
        let config = dir.join("cardgate.toml");
        std::fs::write(&config, "[offline]\noffline_minutes_max = 4320\n").unwrap();
        let data_dir = dir.join("data");
        let director = operator_add(&data_dir, "zhao", "director").expect("operator add");
        let d = Daemon::start_with(&data_dir, &["--config", config.to_str().unwrap()]);
        let mut k = Kit {
            d,
            director,
            data: String::new(),
            desk: String::new(),
        };
        let dir_token = k.director.clone();
        k.data = k.ok(
            &dir_token,
            "POST",
            "/api/v1/operators",
            json!({"name": "qian", "role": "data_admin"}),
        )["token"]
            .as_str()
            .unwrap()
            .to_string();
        k.desk = k.ok(
            &dir_token,
            "POST",
            "/api/v1/operators",
            json!({"name": "wang", "role": "card_desk"}),
        )["token"]
            .as_str()
            .unwrap()
            .to_string();
        k
    }

    fn call(&self, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let b = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (st, text) = api_request(self.d.admin_addr(), method, path, token, None, &b);
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        (st, v)
    }

    fn ok(&self, token: &str, method: &str, path: &str, body: Value) -> Value {
        let (st, v) = self.call(token, method, path, body);
        assert!((200..300).contains(&st), "{method} {path}: {st} {v}");
        v
    }

    fn balance_fen(&self, account: u64) -> i64 {
        let a = self.ok(&self.desk, "GET", &format!("/api/v1/accounts/{account}"), Value::Null);
        let s = a["account"]["balance"].as_str().unwrap().to_string();
        let d: rust_decimal::Decimal = s.parse().unwrap();
        cardgate_domain::money::to_fen(d).unwrap()
    }

    fn report(&self, date: &str) -> Value {
        self.ok(
            &self.director,
            "GET",
            &format!("/api/v1/reports/completeness?date={date}"),
            Value::Null,
        )
    }

    /// Waits until the central store holds everything the journal does. The gauge is
    /// sampled once a second: only a sample taken after this call began counts.
    async fn central_caught_up(&self) {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let deadline = Instant::now() + EVENTUALLY;
        while self.d.metric("cardgate_central_backlog_entries") != Some(0.0) {
            assert!(Instant::now() < deadline, "the central store did not catch up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn terminal_line(report: &Value, terminal: u64) -> &Value {
    report["terminals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["terminal"] == terminal)
        .unwrap_or_else(|| panic!("terminal {terminal} in the report: {report}"))
}

fn missing(report: &Value, terminal: u64) -> Vec<(u64, u64)> {
    terminal_line(report, terminal)["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
        .collect()
}

async fn sign_on(d: &Daemon, id: u64) -> TerminalClient {
    let t = TerminalClient::connect(d.terminal_addr(), id, &secret(id))
        .await
        .expect("signs on");
    let l = t
        .offline_limits
        .expect("a POS terminal is told its offline limits at sign-on");
    assert_eq!(l.sale_max_fen, 50_00);
    assert_eq!(l.offline_minutes_max, 4320);
    t
}

#[tokio::test]
async fn offline_sales_are_uploaded_once_however_often_they_are_sent() {
    const POS: u64 = 7;
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let mut t = sign_on(&k.d, POS).await;
    let last = t.sign_on.last_tx_seq;
    // One online sale, then the gateway is gone.
    assert!(matches!(
        t.purchase(last + 1, card(1), 3_00).await.unwrap(),
        Message::Approved(_)
    ));
    drop(t);
    let before = [k.balance_fen(1), k.balance_fen(2), k.balance_fen(3)];

    // Sold offline: three sales an hour ago.
    let offline = TerminalClient::connect(k.d.terminal_addr(), POS, &secret(POS))
        .await
        .unwrap();
    let sold = now_ms() - 3_600_000;
    let sales = [
        offline.offline_sale(last + 2, card(1), 12_50, sold),
        offline.offline_sale(last + 3, card(2), 8_00, sold + 60_000),
        offline.offline_sale(last + 4, card(3), 15_00, sold + 120_000),
    ];
    drop(offline);

    // Reconnects and uploads.
    let mut t = sign_on(&k.d, POS).await;
    let r = t.upload(&sales).await.unwrap();
    assert_eq!(
        (r.status, r.posted, r.duplicates, r.flagged),
        (OfflineStatus::Accepted, 3, 0, 0)
    );
    assert_eq!(r.last_tx_seq, last + 4);
    let after = [k.balance_fen(1), k.balance_fen(2), k.balance_fen(3)];
    assert_eq!(after, [before[0] - 12_50, before[1] - 8_00, before[2] - 15_00]);

    // The same batch again: every sale a duplicate, nothing posted twice.
    let r = t.upload(&sales).await.unwrap();
    assert_eq!((r.status, r.posted, r.duplicates), (OfflineStatus::Accepted, 0, 3));
    assert_eq!([k.balance_fen(1), k.balance_fen(2), k.balance_fen(3)], after);

    // A batch cut off halfway (the connection drops after its first sale), then sent
    // again whole: each sale posted once.
    let more = [
        t.offline_sale(last + 5, card(4), 5_00, sold + 180_000),
        t.offline_sale(last + 6, card(5), 6_00, sold + 240_000),
    ];
    let before_more = [k.balance_fen(4), k.balance_fen(5)];
    t.feed(Message::OfflineBatch(OfflineBatch {
        first_tx_seq: last + 5,
        count: 2,
    }))
    .await
    .unwrap();
    t.feed(Message::OfflineSale(more[0])).await.unwrap();
    t.flush().await.unwrap();
    drop(t);
    let mut t = sign_on(&k.d, POS).await;
    let r = t.upload(&more).await.unwrap();
    assert_eq!((r.status, r.posted + r.duplicates), (OfflineStatus::Accepted, 2));
    assert_eq!(
        [k.balance_fen(4), k.balance_fen(5)],
        [before_more[0] - 5_00, before_more[1] - 6_00]
    );

    // A forged sale (its MAC under another key) refuses the whole batch: the good sale
    // beside it is not posted either.
    let forger = TerminalClient::connect(k.d.terminal_addr(), POS + 1, &secret(POS + 1))
        .await
        .unwrap();
    let good = t.offline_sale(last + 7, card(6), 4_00, sold);
    let mut forged = t.offline_sale(last + 8, card(6), 4_00, sold);
    forged.mac = forger.offline_sale(last + 8, card(6), 4_00, sold).mac;
    let before_bad = k.balance_fen(6);
    let r = t.upload(&[good, forged]).await.unwrap();
    assert_eq!(
        (r.status, r.posted, r.first_bad_seq),
        (OfflineStatus::BadMac, 0, last + 8)
    );
    assert_eq!(k.balance_fen(6), before_bad);
    // A batch out of order is refused whole too.
    let r = t.upload(&[forged, good]).await.unwrap();
    assert_eq!((r.status, r.posted), (OfflineStatus::BadBatch, 0));

    // The offline sales are in the consumption details, as offline purchases.
    let h = k.ok(
        &k.desk,
        "GET",
        &format!("/api/v1/cards/{}/transactions", card(2).0),
        Value::Null,
    );
    assert!(h.to_string().contains("offline_purchase"), "{h}");
}

#[tokio::test]
async fn skipped_numbers_show_as_exact_ranges_until_their_sales_arrive() {
    const POS: u64 = 11;
    today_lasts_the_test();
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let mut t = sign_on(&k.d, POS).await;
    let n = t.sign_on.last_tx_seq;
    // Online: n+1, then n+5 (n+2..=n+4 sold offline, not uploaded), then n+6, n+9.
    for seq in [n + 1, n + 5, n + 6, n + 9] {
        assert!(matches!(
            t.purchase(seq, card(20), 1_00).await.unwrap(),
            Message::Approved(_)
        ));
    }
    let today = local_date(now_ms());
    k.central_caught_up().await;
    let r = k.report(&today);
    assert_eq!(r["status"], "open", "today has not ended");
    assert_eq!(missing(&r, POS), vec![(n + 2, n + 4), (n + 7, n + 8)]);
    let line = terminal_line(&r, POS);
    assert_eq!(line["gateway"]["online_count"], 4);
    assert_eq!(line["matches"], true, "the central store agrees: {line}");
    assert_eq!(line["complete"], false);
    // The gauges count them, and the terminal's inventory line shows them.
    assert_eq!(k.d.metric("cardgate_terminal_sequence_numbers_missing"), Some(5.0));
    let inv = k.ok(&k.director, "GET", &format!("/api/v1/terminals/{POS}"), Value::Null);
    assert_eq!(inv["terminal"]["missing"], 5);

    // The offline sales arrive: one gap closes, the other stays, exactly.
    let sold = earlier_today(600_000);
    let sales: Vec<_> = (n + 2..=n + 4)
        .map(|s| t.offline_sale(s, card(21), 2_00, sold))
        .collect();
    let res = t.upload(&sales).await.unwrap();
    assert_eq!(res.posted, 3);
    k.central_caught_up().await;
    let r = k.report(&today);
    assert_eq!(missing(&r, POS), vec![(n + 7, n + 8)]);
    let line = terminal_line(&r, POS);
    assert_eq!(line["gateway"]["offline_count"], 3);
    assert_eq!(line["gateway"]["offline_fen"], 6_00);
    assert_eq!(line["matches"], true, "{line}");
    // A day before this gateway's first entry is not "complete": it has no record of it.
    let before = k.report("2020-01-01");
    assert_eq!(
        (&before["status"], &before["journal_covers_day"]),
        (&json!("incomplete"), &json!(false)),
        "{before}"
    );
    assert!(
        before["problems"].to_string().contains("no record of that day"),
        "{before}"
    );

    // A terminal that may still hold offline sales is not retired by accident.
    let (st, body) = k.call(
        &k.director,
        "POST",
        &format!("/api/v1/terminals/{POS}/retire"),
        Value::Null,
    );
    assert_eq!(st, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("2 sequence numbers never received"),
        "{body}"
    );

    // The gaps survive a kill -9.
    let Kit {
        d,
        director,
        data,
        desk,
    } = k;
    let data_dir = d.data_dir.clone();
    d.kill9();
    let k = Kit {
        d: Daemon::start_with(
            &data_dir,
            &["--config", dir.path().join("cardgate.toml").to_str().unwrap()],
        ),
        director,
        data,
        desk,
    };
    k.central_caught_up().await;
    assert_eq!(missing(&k.report(&today), POS), vec![(n + 7, n + 8)]);
    let csv = api_request(
        k.d.admin_addr(),
        "GET",
        &format!("/api/v1/reports/completeness?date={today}&format=csv"),
        &k.director,
        None,
        "",
    )
    .1;
    assert!(
        csv.lines()
            .any(|l| l.contains(&format!(",terminal,{POS},")) && l.contains(&format!("{}-{}", n + 7, n + 8))),
        "{csv}"
    );
}

#[tokio::test]
async fn a_lost_card_used_offline_and_an_overdraft_are_posted_and_raised() {
    const POS: u64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let mut t = sign_on(&k.d, POS).await;
    let n = t.sign_on.last_tx_seq;
    // Card 30 is reported lost; a sale with it is made offline after that.
    k.ok(
        &k.desk,
        "POST",
        &format!("/api/v1/cards/{}/lost", card(30).0),
        Value::Null,
    );
    let after_loss = now_ms() + 1_000;
    // Card 31's account holds 1,000.00: an offline sale of 40.00 is fine; lower its
    // balance to 10.00 first, and the sale overdraws it by 30.00.
    let bal = k.balance_fen(31);
    k.ok(
        &k.desk,
        "POST",
        "/api/v1/accounts/31/refund",
        json!({"amount": cardgate_domain::money::from_fen(bal - 10_00).to_string(), "reason": "test"}),
    );
    assert_eq!(k.balance_fen(31), 10_00);
    let lost_before = k.balance_fen(30);
    let sales = [
        t.offline_sale(n + 1, card(30), 9_00, after_loss),
        t.offline_sale(n + 2, card(31), 40_00, after_loss),
        t.offline_sale(n + 3, CardNo(9_999_999_999_999), 5_00, after_loss),
    ];
    let r = t.upload(&sales).await.unwrap();
    assert_eq!((r.status, r.posted, r.flagged), (OfflineStatus::Accepted, 3, 3));
    // Posted: the food was eaten.
    assert_eq!(k.balance_fen(30), lost_before - 9_00);
    assert_eq!(k.balance_fen(31), -30_00);
    let ex = k.ok(&k.desk, "GET", "/api/v1/exceptions", Value::Null);
    let kinds: Vec<(String, i64)> = ex["exceptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["terminal"] == POS)
        .map(|e| (e["kind"].as_str().unwrap().to_string(), yuan_fen(&e["amount"])))
        .collect();
    assert!(kinds.contains(&("offline_card_blocked".into(), 9_00)), "{kinds:?}");
    assert!(kinds.contains(&("offline_overdraft".into(), 30_00)), "{kinds:?}");
    assert!(kinds.contains(&("offline_unknown_card".into(), 5_00)), "{kinds:?}");
    // A sale made before the loss was reported is not flagged.
    let earlier = t.offline_sale(n + 4, card(30), 1_00, after_loss - 600_000);
    let r = t.upload(&[earlier]).await.unwrap();
    assert_eq!((r.posted, r.flagged), (1, 0));
}

fn yuan_fen(v: &Value) -> i64 {
    let d: rust_decimal::Decimal = v
        .as_str()
        .map_or_else(|| v.to_string(), str::to_string)
        .parse()
        .unwrap();
    cardgate_domain::money::to_fen(d).unwrap()
}

#[tokio::test]
async fn settlement_equals_the_transactions_and_a_closed_day_stays_closed() {
    today_lasts_the_test();
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let now = now_ms();
    let today = local_date(now);
    // The start of today in UTC+8, and a minute before it: yesterday.
    let start_today = cardgate_domain::clock::parse_local_date(&today, TZ_OFFSET_MINUTES).unwrap();
    let yesterday = local_date(start_today - 60_000);
    // Terminals 1 and 51 belong to different demo merchants (50 terminals each).
    let mut a = sign_on(&k.d, 1).await;
    let mut b = sign_on(&k.d, 51).await;
    let (na, nb) = (a.sign_on.last_tx_seq, b.sign_on.last_tx_seq);
    // Yesterday's sales, uploaded now: 12.50 + 7.25 at terminal 1, 30.00 at 51.
    let r = a
        .upload(&[
            a.offline_sale(na + 1, card(40), 12_50, start_today - 3_600_000),
            a.offline_sale(na + 2, card(41), 7_25, start_today - 1_800_000),
        ])
        .await
        .unwrap();
    assert_eq!(r.posted, 2);
    let r = b
        .upload(&[b.offline_sale(nb + 1, card(42), 30_00, start_today - 600_000)])
        .await
        .unwrap();
    assert_eq!(r.posted, 1);
    // Today's: an online purchase and its reversal at terminal 1, a purchase at 51.
    assert!(matches!(
        a.purchase(na + 3, card(43), 20_00).await.unwrap(),
        Message::Approved(_)
    ));
    assert!(matches!(
        a.reversal(na + 4, na + 3, card(43), 20_00).await.unwrap(),
        Message::Approved(_)
    ));
    assert!(matches!(
        b.purchase(nb + 2, card(44), 11_11).await.unwrap(),
        Message::Approved(_)
    ));
    k.central_caught_up().await;

    let merchant = |s: &Value, id: u64| -> Value {
        s["merchants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["merchant"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("merchant {id}: {s}"))
    };
    let (ma, mb) = (1u64, 2u64);
    let y = k.ok(&k.data, "GET", &format!("/api/v1/settlements/{yesterday}"), Value::Null);
    assert_eq!(y["closed"], false);
    assert_eq!(merchant(&y, ma)["gross"], "19.75");
    assert_eq!(merchant(&y, ma)["count"], 2);
    assert_eq!(merchant(&y, mb)["gross"], "30.00");
    let t = k.ok(&k.data, "GET", &format!("/api/v1/settlements/{today}"), Value::Null);
    assert_eq!(merchant(&t, ma)["gross"], "20.00");
    assert_eq!(merchant(&t, ma)["reversals"], "20.00");
    assert_eq!(merchant(&t, ma)["net"], "0.00");
    assert_eq!(merchant(&t, mb)["net"], "11.11");
    assert!(t["desk_fees"].is_object(), "{t}");

    // Today cannot be closed yet; yesterday can, once.
    let (st, _) = k.call(
        &k.data,
        "POST",
        &format!("/api/v1/settlements/{today}/close"),
        Value::Null,
    );
    assert_eq!(st, 409);
    let closed = k.ok(
        &k.data,
        "POST",
        &format!("/api/v1/settlements/{yesterday}/close"),
        Value::Null,
    );
    assert_eq!(closed["closed"], true);
    assert_eq!(merchant(&closed, ma)["gross"], "19.75");
    let (st, _) = k.call(
        &k.data,
        "POST",
        &format!("/api/v1/settlements/{yesterday}/close"),
        Value::Null,
    );
    assert_eq!(st, 422, "a day closes once");
    let (st, _) = k.call(&k.desk, "GET", &format!("/api/v1/settlements/{yesterday}"), Value::Null);
    assert_eq!(st, 403, "settlement is the data admin's");

    // A late upload for yesterday: yesterday's figures do not change; today shows it as
    // an adjustment.
    let r = a
        .upload(&[a.offline_sale(na + 5, card(45), 3_30, start_today - 120_000)])
        .await
        .unwrap();
    assert_eq!(r.posted, 1);
    k.central_caught_up().await;
    let y2 = k.ok(&k.data, "GET", &format!("/api/v1/settlements/{yesterday}"), Value::Null);
    assert_eq!(y2["closed"], true);
    assert_eq!(merchant(&y2, ma)["gross"], "19.75");
    assert_eq!(y2["merchants"], closed["merchants"]);
    let t2 = k.ok(&k.data, "GET", &format!("/api/v1/settlements/{today}"), Value::Null);
    assert_eq!(merchant(&t2, ma)["adjustment_count"], 1);
    assert_eq!(merchant(&t2, ma)["adjustments"], "3.30");
    assert_eq!(merchant(&t2, ma)["net"], "3.30");

    // A day without a sale closes too, and keeps when (its figures have no merchant to
    // keep the time with).
    let quiet = local_date(start_today - 3 * 86_400_000);
    let q = k.ok(
        &k.data,
        "POST",
        &format!("/api/v1/settlements/{quiet}/close"),
        Value::Null,
    );
    assert_eq!(q["merchants"], json!([]), "{q}");
    assert!(q["closed_at"].is_string(), "{q}");
    let (st, body) = k.call(
        &k.data,
        "POST",
        &format!("/api/v1/settlements/{quiet}/close"),
        Value::Null,
    );
    assert_eq!(st, 422, "{body}");
    assert!(
        body.to_string()
            .contains(&format!("closed by qian at {}", q["closed_at"].as_str().unwrap())),
        "{body}"
    );

    // The closed day survives a restart as it was.
    let Kit {
        d,
        director,
        data,
        desk,
    } = k;
    let data_dir = d.data_dir.clone();
    assert!(d.terminate().success());
    let k = Kit {
        d: Daemon::start_with(
            &data_dir,
            &["--config", dir.path().join("cardgate.toml").to_str().unwrap()],
        ),
        director,
        data,
        desk,
    };
    let y3 = k.ok(&k.data, "GET", &format!("/api/v1/settlements/{yesterday}"), Value::Null);
    assert_eq!(y3["merchants"], closed["merchants"]);
    assert_eq!(y3["closed_at"], y2["closed_at"], "{y3}");
    let q3 = k.ok(&k.data, "GET", &format!("/api/v1/settlements/{quiet}"), Value::Null);
    assert_eq!(q3["closed_at"], q["closed_at"], "{q3}");
}

/// The per-card offline sum behind `offline_over_limit` survives a restart, clean or
/// not: a card's offline spending on one terminal split across a restart is judged as
/// one day's (PROTOCOL.md 8.6, `card_day_max_fen`, 100.00 by default).
#[tokio::test]
async fn the_per_card_offline_sum_survives_a_restart_either_way() {
    const POS: u64 = 14;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let director = operator_add(&data_dir, "zhao", "director").expect("operator add");
    let over_limit = |d: &Daemon| -> Vec<i64> {
        let (st, text) = api_request(d.admin_addr(), "GET", "/api/v1/exceptions", &director, None, "");
        assert_eq!(st, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        v["exceptions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["terminal"] == POS && e["kind"] == "offline_over_limit")
            .map(|e| e["tx_id"].as_i64().unwrap_or(0))
            .collect()
    };
    // The offline limits every sign-on here is checked for (`sign_on`).
    let config = dir.path().join("cardgate.toml");
    std::fs::write(&config, "[offline]\noffline_minutes_max = 4320\n").unwrap();
    let start = || Daemon::start_with(&data_dir, &["--config", config.to_str().unwrap()]);
    today_lasts_the_test();
    let sold = now_ms() - 60_000;
    let d = start();
    let mut t = sign_on(&d, POS).await;
    let n = t.sign_on.last_tx_seq;
    let sales = [
        t.offline_sale(n + 1, card(50), 40_00, sold),
        t.offline_sale(n + 2, card(50), 40_00, sold + 500),
    ];
    let r = t.upload(&sales).await.unwrap();
    assert_eq!((r.posted, r.flagged), (2, 0), "80.00 of 100.00");
    drop(t);
    assert!(d.terminate().success());

    let d = start();
    let mut t = sign_on(&d, POS).await;
    let r = t
        .upload(&[t.offline_sale(n + 3, card(50), 30_00, sold + 1_000)])
        .await
        .unwrap();
    assert_eq!((r.posted, r.flagged), (1, 1), "110.00 of 100.00 across a clean restart");
    assert_eq!(over_limit(&d).len(), 1);
    drop(t);
    d.kill9();

    let d = start();
    let mut t = sign_on(&d, POS).await;
    let r = t
        .upload(&[t.offline_sale(n + 4, card(50), 1_00, sold + 2_000)])
        .await
        .unwrap();
    assert_eq!((r.posted, r.flagged), (1, 1), "still over after a crash");
    assert_eq!(over_limit(&d).len(), 2);
}
