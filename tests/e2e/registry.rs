//! The system admin's registry and the card desk's stock, against the real daemon: a
//! merchant and a terminal registered through the API sign on with the key issued once
//! and buy; a disabled terminal is closed at once and refused until enabled (and a
//! disabled merchant takes its POS terminals with it); a rekey's old key works for its
//! overlap and not after; the key never shows again (API answers, a retry's answer, the
//! audit trail, the log, a copy of the data directory taken while the gateway runs); an
//! inventory sheet with a bad line is refused whole, then imported; the weekly stock
//! count shows what the records expect.

use std::path::Path;
use std::time::Duration;

use cardgate_codec::codec::Frame;
use cardgate_codec::{ErrorCode, Message, TerminalSecret};
use cardgate_loadtest::client::{ClientError, TerminalClient};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::harness::*;

/// Generous: how long to wait for something the daemon does by itself.
const EVENTUALLY: Duration = Duration::from_secs(30);

/// A daemon with a director (made on the command line), a system admin and a card desk
/// clerk.
struct Kit {
    d: Daemon,
    director: String,
    admin: String,
    desk: String,
}

impl Kit {
    fn start(dir: &Path) -> Kit {
        let director = operator_add(dir, "zhao", "director").expect("operator add");
        let d = Daemon::start(dir);
        let mut k = Kit {
            d,
            director,
            admin: String::new(),
            desk: String::new(),
        };
        let d = k.director.clone();
        k.admin = k.ok(
            &d,
            "POST",
            "/api/v1/operators",
            json!({"name": "sun", "role": "system_admin"}),
        )["token"]
            .as_str()
            .unwrap()
            .to_string();
        k.desk = k.ok(
            &d,
            "POST",
            "/api/v1/operators",
            json!({"name": "wang", "role": "card_desk"}),
        )["token"]
            .as_str()
            .unwrap()
            .to_string();
        k
    }

    fn call_with(&self, token: &str, method: &str, path: &str, key: Option<&str>, body: Value) -> (u16, String) {
        let b = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        api_request(self.d.admin_addr(), method, path, token, key, &b)
    }

    fn call(&self, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let (st, text) = self.call_with(token, method, path, None, body);
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        (st, json)
    }

    fn ok(&self, token: &str, method: &str, path: &str, body: Value) -> Value {
        let (st, json) = self.call(token, method, path, body);
        assert!((200..300).contains(&st), "{method} {path}: {st} {json}");
        json
    }

    fn merchant(&self, name: &str) -> u64 {
        let m = self.ok(
            &self.admin,
            "POST",
            "/api/v1/merchants",
            json!({"name": name, "kind": "canteen_window", "place": "二食堂", "contact": "刘经理 13800000000", "fee_rate_bp": 150}),
        );
        m["merchant"]["id"].as_u64().unwrap()
    }

    /// Registers a POS terminal; returns its answer (with the key, this once).
    fn register(&self, id: u64, merchant: u64, serial: &str) -> Value {
        let (st, body) = self.call(
            &self.admin,
            "POST",
            "/api/v1/terminals",
            json!({
                "id": id, "kind": "pos", "merchant_id": merchant, "name": format!("窗口 {id}"),
                "place": "二食堂 一楼", "serial": serial, "responsible": "王工",
                "installed": "2026-11-30", "handed_to": "李师傅",
            }),
        );
        assert_eq!(st, 201, "{body}");
        body
    }
}

fn secret_of(answer: &Value) -> TerminalSecret {
    let hex = answer["key"].as_str().expect("the key, shown once");
    assert_eq!(hex.len(), 64);
    let mut s = [0u8; 32];
    for (i, b) in s.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    // The key file says the same.
    let file = answer["key_file"].as_str().unwrap();
    assert!(file.contains(&format!("secret = {hex}\n")), "{file}");
    TerminalSecret(s)
}

async fn sign_on(d: &Daemon, id: u64, secret: &TerminalSecret) -> Result<TerminalClient, ClientError> {
    TerminalClient::connect(d.terminal_addr(), id, secret).await
}

/// The signed-on client's connection ends with ERROR `code`.
async fn closed_with(t: &mut TerminalClient, code: ErrorCode) {
    loop {
        match tokio::time::timeout(EVENTUALLY, t.framed_mut().next())
            .await
            .expect("an ERROR")
        {
            Some(Ok(Frame {
                message: Message::Error(e),
                ..
            })) => {
                assert_eq!(e.code, code);
                break;
            }
            Some(Ok(Frame {
                message: Message::BlacklistPush(_),
                ..
            })) => {}
            other => panic!("expected ERROR {code:?}, got {other:?}"),
        }
    }
    let end = tokio::time::timeout(EVENTUALLY, t.framed_mut().next())
        .await
        .expect("the close");
    assert!(end.is_none() || matches!(end, Some(Err(_))), "closed, got {end:?}");
}

fn refused_with(r: Result<TerminalClient, ClientError>, code: ErrorCode) {
    match r {
        Err(ClientError::Refused(c)) => assert_eq!(c, code),
        Err(e) => panic!("expected {code:?}, got {e}"),
        Ok(_) => panic!("expected {code:?}, the terminal signed on"),
    }
}

fn approved(m: &Message) -> bool {
    matches!(m, Message::Approved(_))
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p.display().to_string(), bytes));
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else if p.is_file() {
            // A file sled is writing may change under the copy; what it held is copied.
            let _ = std::fs::copy(&p, &dest);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_registered_terminal_signs_on_with_its_key_buys_and_a_disable_closes_it_at_once() {
    const POS: u64 = 90_001;
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let merchant = k.merchant("二食堂 3号窗口");
    let issued = k.register(POS, merchant, "SN-90001");
    assert_eq!(issued["terminal"]["key_generation"], 1);
    let secret = secret_of(&issued);

    // Signs on with the issued key and buys.
    let mut t = sign_on(&k.d, POS, &secret).await.expect("signs on with its issued key");
    assert!(approved(&t.purchase(1, card(1), 5_00).await.unwrap()));
    // A wrong key is refused as any unknown terminal is.
    refused_with(
        sign_on(&k.d, POS, &TerminalSecret([7; 32])).await,
        ErrorCode::AuthFailed,
    );

    // Disabled: the live session is closed with the reason, a new sign-on refused.
    let r = k.ok(
        &k.admin,
        "POST",
        &format!("/api/v1/terminals/{POS}/disable"),
        Value::Null,
    );
    assert_eq!(r["terminal"]["enabled"], false);
    closed_with(&mut t, ErrorCode::TerminalDisabled).await;
    refused_with(sign_on(&k.d, POS, &secret).await, ErrorCode::TerminalDisabled);
    assert_eq!(
        k.d.metric("cardgate_sign_ons_total{result=\"disabled\"}"),
        Some(1.0),
        "a stopped terminal's sign-on is counted as such, not as a broken connection"
    );
    let (st, _) = k.call(
        &k.admin,
        "POST",
        &format!("/api/v1/terminals/{POS}/disable"),
        Value::Null,
    );
    assert_eq!(st, 422, "disabling a disabled terminal is refused");

    // Enabled: it signs on and buys again.
    k.ok(
        &k.admin,
        "POST",
        &format!("/api/v1/terminals/{POS}/enable"),
        Value::Null,
    );
    let mut t = sign_on(&k.d, POS, &secret).await.expect("signs on again once enabled");
    assert!(approved(&t.purchase(2, card(1), 5_00).await.unwrap()));

    // Disabling its merchant disables it too, at once; enabling the merchant leaves it
    // disabled until it is enabled by hand.
    let m = k.ok(
        &k.admin,
        "PATCH",
        &format!("/api/v1/merchants/{merchant}"),
        json!({"enabled": false}),
    );
    assert_eq!(m["merchant"]["enabled"], false);
    closed_with(&mut t, ErrorCode::TerminalDisabled).await;
    refused_with(sign_on(&k.d, POS, &secret).await, ErrorCode::TerminalDisabled);
    let (st, body) = k.call(
        &k.admin,
        "POST",
        &format!("/api/v1/terminals/{POS}/enable"),
        Value::Null,
    );
    assert_eq!(st, 422, "a terminal of a disabled merchant stays disabled: {body}");
    // Nor does an enabled terminal move to it, through the API or an inventory sheet.
    let (st, body) = k.call(
        &k.admin,
        "PATCH",
        "/api/v1/terminals/5",
        json!({"merchant_id": merchant}),
    );
    assert_eq!(st, 422, "moved to a disabled merchant: {body}");
    let t5 = k.ok(&k.admin, "GET", "/api/v1/terminals/5", Value::Null);
    assert_ne!(t5["terminal"]["merchant_id"], json!(merchant), "{t5}");
    k.ok(
        &k.admin,
        "PATCH",
        &format!("/api/v1/merchants/{merchant}"),
        json!({"enabled": true}),
    );
    refused_with(sign_on(&k.d, POS, &secret).await, ErrorCode::TerminalDisabled);
    k.ok(
        &k.admin,
        "POST",
        &format!("/api/v1/terminals/{POS}/enable"),
        Value::Null,
    );
    sign_on(&k.d, POS, &secret).await.expect("enabled by hand");

    // The merchant lists its terminal; the inventory reports it, live.
    let m = k.ok(&k.admin, "GET", &format!("/api/v1/merchants/{merchant}"), Value::Null);
    assert_eq!(m["terminals"], json!([POS]));
    let inv = k.ok(
        &k.admin,
        "GET",
        &format!("/api/v1/terminals?merchant={merchant}"),
        Value::Null,
    );
    assert_eq!(inv["count"], 1);
    assert_eq!(inv["terminals"][0]["serial"], "SN-90001");
    assert_eq!(inv["terminals"][0]["enabled"], true);
    assert!(inv["terminals"][0]["last_seen_ms"].as_i64().unwrap() > 0);
    let (st, csv) = k.call_with(
        &k.admin,
        "GET",
        "/api/v1/terminals?kind=pos&format=csv&status=installed",
        None,
        Value::Null,
    );
    assert_eq!(st, 200);
    assert!(
        csv.starts_with("id,kind,merchant,door_group,name,place,serial"),
        "{csv}"
    );
    assert!(
        csv.lines().any(|l| l.starts_with(&format!("{POS},pos,{merchant},0,"))),
        "{csv}"
    );

    // Bad input changes nothing: a duplicate id or serial, an unknown merchant, a POS
    // terminal on a door group, a card desk clerk.
    let base = json!({"kind": "pos", "merchant_id": merchant, "name": "x", "serial": "SN-NEW", "handed_to": "李师傅"});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let (st, _) = k.call(&k.admin, "POST", "/api/v1/terminals", with(json!({"id": POS})));
    assert_eq!(st, 409, "a duplicate id");
    let (st, body) = k.call(
        &k.admin,
        "POST",
        "/api/v1/terminals",
        with(json!({"id": 90_002, "serial": "SN-90001"})),
    );
    assert_eq!(st, 422, "a duplicate serial: {body}");
    let (st, _) = k.call(
        &k.admin,
        "POST",
        "/api/v1/terminals",
        with(json!({"id": 90_002, "merchant_id": 999})),
    );
    assert_eq!(st, 404, "an unknown merchant");
    let g = k.ok(
        &k.admin,
        "POST",
        "/api/v1/door-groups",
        json!({"name": "图书馆", "place": "图书馆 一楼"}),
    );
    let group = g["door_group"]["id"].as_u64().unwrap();
    let (st, body) = k.call(
        &k.admin,
        "POST",
        "/api/v1/terminals",
        with(json!({"id": 90_002, "door_group": group})),
    );
    assert_eq!(st, 422, "a POS terminal on a door group: {body}");
    let (st, _) = k.call(&k.desk, "POST", "/api/v1/terminals", with(json!({"id": 90_002})));
    assert_eq!(st, 403, "a card desk clerk registers no terminal");
    let (st, _) = k.call(&k.admin, "GET", "/api/v1/terminals/90002", Value::Null);
    assert_eq!(st, 404, "nothing of the refused registrations exists");
}

#[tokio::test]
async fn a_rekey_keeps_the_old_key_for_its_overlap_and_refuses_it_after() {
    const POS: u64 = 90_011;
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let merchant = k.merchant("超市");
    let old = secret_of(&k.register(POS, merchant, "SN-90011"));

    let r = k.ok(
        &k.admin,
        "POST",
        &format!("/api/v1/terminals/{POS}/rekey"),
        json!({"overlap": "4s", "handed_to": "周师傅"}),
    );
    assert_eq!(r["terminal"]["key_generation"], 2);
    let new = secret_of(&r);
    assert_ne!(new.0, old.0);

    // During the overlap both keys sign on, and a session on either buys.
    let mut t = sign_on(&k.d, POS, &old).await.expect("the old key, during the overlap");
    assert!(approved(&t.purchase(1, card(2), 3_00).await.unwrap()));
    let mut t = sign_on(&k.d, POS, &new).await.expect("the new key");
    assert!(approved(&t.purchase(2, card(2), 3_00).await.unwrap()));
    drop(t);

    // After it, only the new one.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    refused_with(sign_on(&k.d, POS, &old).await, ErrorCode::AuthFailed);
    sign_on(&k.d, POS, &new).await.expect("the new key, after the overlap");

    // With no overlap, the old key is refused at once; the record survives a restart
    // sealed, and opens under the same terminal key.
    let r = k.ok(
        &k.admin,
        "POST",
        &format!("/api/v1/terminals/{POS}/rekey"),
        json!({"overlap": "0s", "handed_to": "周师傅"}),
    );
    let third = secret_of(&r);
    refused_with(sign_on(&k.d, POS, &new).await, ErrorCode::AuthFailed);
    let Kit { d, director, admin, .. } = k;
    let dir_path = d.data_dir.clone();
    d.kill9();
    let d = Daemon::start(&dir_path);
    let mut t = sign_on(&d, POS, &third).await.expect("the current key after a kill -9");
    assert!(approved(&t.purchase(3, card(2), 3_00).await.unwrap()));
    refused_with(sign_on(&d, POS, &new).await, ErrorCode::AuthFailed);

    // The director lists who received each key, when and from whom; the system admin
    // may not.
    let (st, body) = api_request(
        d.admin_addr(),
        "GET",
        &format!("/api/v1/key-handouts?terminal={POS}"),
        &director,
        None,
        "",
    );
    assert_eq!(st, 200, "{body}");
    let h: Value = serde_json::from_str(&body).unwrap();
    let list = h["key_handouts"].as_array().unwrap();
    let who: Vec<(u64, &str, &str)> = list
        .iter()
        .map(|h| {
            (
                h["key_generation"].as_u64().unwrap(),
                h["handed_to"].as_str().unwrap(),
                h["issued_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        who,
        vec![(1, "李师傅", "sun"), (2, "周师傅", "sun"), (3, "周师傅", "sun")]
    );
    let (st, _) = api_request(d.admin_addr(), "GET", "/api/v1/key-handouts", &admin, None, "");
    assert_eq!(st, 403);
}

/// The key is shown in the answer that issued it and nowhere else: not in the
/// terminal's record, the inventory, a retry's answer, the audit trail, the key
/// handouts, the log, or any file of a data directory copied while the gateway runs.
#[tokio::test]
async fn a_terminal_key_is_shown_once_and_never_stored_or_logged_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let merchant = k.merchant("文印中心");
    let mut secrets: Vec<[u8; 32]> = Vec::new();

    // Registered with an idempotency key, then retried: the retry is told the key was
    // issued, without it.
    let body = json!({
        "id": 90_021, "kind": "pos", "merchant_id": merchant, "name": "打印 1",
        "serial": "SN-90021", "handed_to": "李师傅",
    });
    let (st, first) = k.call_with(&k.admin, "POST", "/api/v1/terminals", Some("reg-90021"), body.clone());
    assert_eq!(st, 201, "{first}");
    let first: Value = serde_json::from_str(&first).unwrap();
    secrets.push(secret_of(&first).0);
    let (st, again) = k.call_with(&k.admin, "POST", "/api/v1/terminals", Some("reg-90021"), body);
    assert_eq!(st, 201);
    let again: Value = serde_json::from_str(&again).unwrap();
    assert!(again["key"].is_null() && again["key_file"].is_null(), "{again}");
    assert_eq!(again["terminal"]["id"], 90_021);

    // More keys: another registration, a rekey with overlap (two sealed keys live),
    // an inventory sheet.
    secrets.push(secret_of(&k.register(90_022, merchant, "SN-90022")).0);
    let r = k.ok(
        &k.admin,
        "POST",
        "/api/v1/terminals/90022/rekey",
        json!({"overlap": "24h", "handed_to": "周师傅"}),
    );
    secrets.push(secret_of(&r).0);
    let sheet = format!(
        "id,kind,merchant,door_group,name,place,serial,responsible,installed,status,installer\n90023,pos,{merchant},,打印 3,,SN-90023,,,installed,李师傅\n"
    );
    let (st, imported) = k.call_with(&k.admin, "POST", "/api/v1/terminals/import", None, Value::Null);
    assert_eq!(st, 422, "an empty sheet is refused: {imported}");
    let (st, imported) = api_request(
        k.d.admin_addr(),
        "POST",
        "/api/v1/terminals/import",
        &k.admin,
        None,
        &sheet,
    );
    assert_eq!(st, 200, "{imported}");
    let imported: Value = serde_json::from_str(&imported).unwrap();
    secrets.push(secret_of(&imported["keys"][0]).0);
    // And each signs on, so the secrets are the real ones.
    for (id, s) in [
        (90_021, secrets[0]),
        (90_022, secrets[2]),
        (90_022, secrets[1]),
        (90_023, secrets[3]),
    ] {
        sign_on(&k.d, id, &TerminalSecret(s))
            .await
            .expect("signs on with its key");
    }

    // Everything an operator can read afterwards.
    let mut readable = String::new();
    for (token, path) in [
        (&k.admin, "/api/v1/terminals"),
        (&k.admin, "/api/v1/terminals?format=csv"),
        (&k.admin, "/api/v1/terminals/90021"),
        (&k.admin, "/api/v1/terminals/90022"),
        (&k.admin, &format!("/api/v1/merchants/{merchant}")),
        (&k.director, "/api/v1/audit?limit=1000"),
        (&k.director, "/api/v1/key-handouts"),
    ] {
        let (st, body) = api_request(k.d.admin_addr(), "GET", path, token, None, "");
        assert_eq!(st, 200, "{path}: {body}");
        readable.push_str(&body);
    }
    assert!(
        readable.contains("terminal.register") && readable.contains("terminal.rekey"),
        "audited"
    );
    let log = k.d.log().join("\n");
    // A copy of the data directory taken while the gateway runs (sled's files, the
    // central store's SQLite file).
    // Once the central store has everything, so that its copy holds the terminals too.
    let deadline = std::time::Instant::now() + EVENTUALLY;
    while k.d.metric("cardgate_central_backlog_entries") != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the central store did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("copy");
    copy_dir(&k.d.data_dir, &copy);
    let mut files = Vec::new();
    files_under(&copy, &mut files);
    assert!(
        files.iter().any(|(p, _)| p.contains("central")),
        "the central store is in the copy"
    );
    for s in &secrets {
        let hex: String = s.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!readable.contains(&hex), "a key is readable through the API again");
        assert!(!log.contains(&hex), "a key is in the log");
        for (path, bytes) in &files {
            assert!(!contains(bytes, s), "a key is in {path} in clear");
            assert!(!contains(bytes, hex.as_bytes()), "a key is in {path} as hex");
        }
    }
}

#[tokio::test]
async fn an_inventory_sheet_with_a_bad_line_is_refused_whole_then_imported() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let merchant = k.merchant("一食堂");
    let g = k.ok(
        &k.admin,
        "POST",
        "/api/v1/door-groups",
        json!({"name": "实验楼", "place": "实验楼"}),
    );
    let group = g["door_group"]["id"].as_u64().unwrap();
    let header = "id,kind,merchant,door_group,name,place,serial,responsible,installed,status,installer";
    let good = [
        format!("91001,pos,{merchant},,一食堂 1号窗口,一食堂,SN-91001,王工,2026-09-01,installed,李师傅"),
        format!("91002,door,,{group},实验楼 东门,实验楼,SN-91002,王工,2026-09-01,installed,李师傅"),
        "91003,attendance,,,考勤机 A,行政楼,SN-91003,,,in_stock,李师傅".to_string(),
    ];
    // Line 3 names a merchant that does not exist, line 5 repeats a serial, line 6 puts
    // a POS terminal on a door group; blank line 4 is skipped.
    let bad = format!(
        "{header}\n{}\n91004,pos,999,,x,,SN-91004,,,installed,李师傅\n\n{}\n91005,pos,{merchant},,y,,SN-91001,,,installed,李师傅\n91006,pos,{merchant},{group},z,,SN-91006,,,installed,李师傅\n{}\n",
        good[0], good[1], good[2]
    );
    let (st, body) = api_request(
        k.d.admin_addr(),
        "POST",
        "/api/v1/terminals/import",
        &k.admin,
        None,
        &bad,
    );
    assert_eq!(st, 422, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["applied"], false);
    let errors: Vec<(u64, Option<&str>)> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["column"].as_str()))
        .collect();
    assert_eq!(
        errors,
        vec![(3, Some("merchant")), (6, Some("serial")), (7, None)],
        "{body}"
    );
    assert!(r["keys"].as_array().unwrap().is_empty());
    let inv = k.ok(&k.admin, "GET", "/api/v1/terminals?place=食堂", Value::Null);
    assert_eq!(inv["count"], 0, "nothing of the refused sheet was imported");
    for id in [91001, 91002, 91003] {
        let (st, _) = k.call(&k.admin, "GET", &format!("/api/v1/terminals/{id}"), Value::Null);
        assert_eq!(st, 404);
    }

    // A dry run of the fixed sheet says what it would do and does nothing.
    let fixed = format!("{header}\n{}\n", good.join("\n"));
    let (st, body) = api_request(
        k.d.admin_addr(),
        "POST",
        "/api/v1/terminals/import?dry_run=true",
        &k.admin,
        None,
        &fixed,
    );
    assert_eq!(st, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((r["added"].as_u64(), r["applied"].as_bool()), (Some(3), Some(false)));
    let (st, _) = k.call(&k.admin, "GET", "/api/v1/terminals/91001", Value::Null);
    assert_eq!(st, 404);

    // Imported: three terminals, each with its own key, the POS one buys.
    let (st, body) = api_request(
        k.d.admin_addr(),
        "POST",
        "/api/v1/terminals/import",
        &k.admin,
        None,
        &fixed,
    );
    assert_eq!(st, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((r["added"].as_u64(), r["applied"].as_bool()), (Some(3), Some(true)));
    let keys = r["keys"].as_array().unwrap();
    assert_eq!(
        keys.iter().map(|k| k["terminal"].as_u64().unwrap()).collect::<Vec<_>>(),
        vec![91001, 91002, 91003]
    );
    let mut t = sign_on(&k.d, 91001, &secret_of(&keys[0]))
        .await
        .expect("an imported POS terminal signs on");
    assert!(approved(&t.purchase(1, card(3), 2_50).await.unwrap()));
    let inv = k.ok(&k.admin, "GET", "/api/v1/terminals?status=in_stock", Value::Null);
    assert_eq!(inv["terminals"][0]["id"], 91003);
    let by_group = k.ok(
        &k.admin,
        "GET",
        &format!("/api/v1/terminals?door_group={group}"),
        Value::Null,
    );
    assert_eq!(by_group["terminals"][0]["id"], 91002);

    // The same sheet again changes nothing; a moved terminal is an update, its key kept.
    let (_, body) = api_request(
        k.d.admin_addr(),
        "POST",
        "/api/v1/terminals/import",
        &k.admin,
        None,
        &fixed,
    );
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (r["added"].as_u64(), r["unchanged"].as_u64()),
        (Some(0), Some(3)),
        "{body}"
    );
    let moved = fixed.replace("一食堂 1号窗口,一食堂,", "一食堂 2号窗口,一食堂 二楼,");
    let (_, body) = api_request(
        k.d.admin_addr(),
        "POST",
        "/api/v1/terminals/import",
        &k.admin,
        None,
        &moved,
    );
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (r["updated"].as_u64(), r["unchanged"].as_u64()),
        (Some(1), Some(2)),
        "{body}"
    );
    assert!(r["keys"].as_array().unwrap().is_empty(), "an update issues no key");
    let t = k.ok(&k.admin, "GET", "/api/v1/terminals/91001", Value::Null);
    assert_eq!(t["terminal"]["place"], "一食堂 二楼");
    sign_on(&k.d, 91001, &secret_of(&keys[0]))
        .await
        .expect("its key is kept");

    // Retired through the sheet: closed and refused, and a retired terminal stays so.
    let retired = moved.replace(",installed,李师傅\n91002", ",retired,李师傅\n91002");
    let (st, body) = api_request(
        k.d.admin_addr(),
        "POST",
        "/api/v1/terminals/import",
        &k.admin,
        None,
        &retired,
    );
    assert_eq!(st, 200, "{body}");
    refused_with(
        sign_on(&k.d, 91001, &secret_of(&keys[0])).await,
        ErrorCode::TerminalDisabled,
    );
    let (st, body) = api_request(
        k.d.admin_addr(),
        "POST",
        "/api/v1/terminals/import",
        &k.admin,
        None,
        &moved,
    );
    assert_eq!(st, 422, "a retired terminal is not brought back: {body}");
}

#[tokio::test]
async fn the_weekly_stock_count_is_compared_with_the_records() {
    const FIRST: u64 = 62_220_077_000_000;
    let dir = tempfile::tempdir().unwrap();
    let k = Kit::start(dir.path());
    let b = k.ok(
        &k.desk,
        "POST",
        "/api/v1/stock/batches",
        json!({"first": FIRST.to_string(), "last": (FIRST + 99).to_string(), "received": "2026-11-23", "supplier": "卡厂"}),
    );
    assert_eq!(b["batch"]["cards"], 100);
    // Three cards issued from the delivery.
    for i in 0..3u64 {
        let p = k.ok(
            &k.desk,
            "POST",
            "/api/v1/persons",
            json!({"person_id": format!("S{i}"), "name": format!("学生{i}"), "kind": "student"}),
        );
        let account = p["account"]["id"].as_u64().unwrap();
        k.ok(
            &k.desk,
            "POST",
            "/api/v1/cards",
            json!({"account": account, "card_no": (FIRST + i).to_string()}),
        );
    }
    // One spoiled in the printer.
    let r = k.ok(
        &k.desk,
        "POST",
        "/api/v1/stock/spoiled",
        json!({"cards": [(FIRST + 50).to_string()], "note": "打印机卡纸"}),
    );
    assert_eq!(r["report"]["spoiled"], 1);
    // A spoiled blank is never issued.
    let p = k.ok(
        &k.desk,
        "POST",
        "/api/v1/persons",
        json!({"person_id": "S9", "name": "学生9", "kind": "student"}),
    );
    let account = p["account"]["id"].as_u64().unwrap();
    let (st, _) = k.call(
        &k.desk,
        "POST",
        "/api/v1/cards",
        json!({"account": account, "card_no": (FIRST + 50).to_string()}),
    );
    assert_eq!(st, 422);

    // A count is of today (the default business time zone, UTC+8); another day, or a
    // delivery received after today, is refused.
    let day = |offset: i64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let d = cardgate_domain::clock::business_day(now, 480);
        let (y, m, dd) = cardgate_domain::clock::civil_from_days(i64::from(d) + offset);
        format!("{y:04}-{m:02}-{dd:02}")
    };
    let today = day(0);
    for date in [day(-2), day(1)] {
        let (st, body) = k.call(
            &k.desk,
            "POST",
            "/api/v1/stock/counts",
            json!({"date": date, "counted": 95}),
        );
        assert_eq!(st, 422, "{date}: {body}");
    }
    let (st, body) = k.call(
        &k.desk,
        "POST",
        "/api/v1/stock/batches",
        json!({"first": (FIRST + 1000).to_string(), "last": (FIRST + 1099).to_string(), "received": day(1), "supplier": "卡厂"}),
    );
    assert_eq!(st, 422, "received tomorrow: {body}");
    // Blank cards: a delivery of numbers already issued (the demo's) is refused.
    let (st, body) = k.call(
        &k.desk,
        "POST",
        "/api/v1/stock/batches",
        json!({"first": "1000000001", "last": "1000000010", "received": "2026-11-23", "supplier": "卡厂"}),
    );
    assert_eq!(st, 422, "{body}");
    assert!(body.to_string().contains("already issued"), "{body}");
    let c = k.ok(
        &k.desk,
        "POST",
        "/api/v1/stock/counts",
        json!({"date": today, "counted": 95}),
    );
    assert_eq!(c["report"]["received"], 100);
    assert_eq!(c["report"]["issued"], 3);
    assert_eq!(c["report"]["spoiled"], 1);
    assert_eq!(c["report"]["expected"], 96);
    assert_eq!(c["discrepancy"], 1);
    let s = k.ok(&k.desk, "GET", "/api/v1/stock", Value::Null);
    assert_eq!(s["counts"][0]["expected"], 96);
    assert_eq!(s["counts"][0]["counted"], 95);
    assert_eq!(s["counts"][0]["by"], "wang");

    // A count that lists the cards names the missing one.
    let on_hand: Vec<String> = (3..100u64)
        .filter(|i| *i != 50 && *i != 77)
        .map(|i| (FIRST + i).to_string())
        .collect();
    let c = k.ok(
        &k.desk,
        "POST",
        "/api/v1/stock/counts",
        json!({"date": today, "counted": on_hand.len(), "cards": on_hand}),
    );
    assert_eq!(c["discrepancy"], 1);
    assert_eq!(c["missing"], json!([(FIRST + 77).to_string()]));
    assert_eq!(c["unexpected"], json!([]));

    // Stock is the card desk's: the system admin may not count it.
    let (st, _) = k.call(
        &k.admin,
        "POST",
        "/api/v1/stock/counts",
        json!({"date": "2026-11-30", "counted": 1}),
    );
    assert_eq!(st, 403);
}
