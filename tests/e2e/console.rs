//! The operator console over plain HTTP against the real daemon: sign-in with a
//! password set on the command line, the forced change of a password someone else
//! chose, the session cookie's attributes, CSRF refusals that change nothing, lock-out
//! after repeated failures (audited), sign-out, roles refused by the server, password
//! changes and resets through the API, and bearer tokens still working beside it all.
//! (The same flows in a real browser are in `console_browser.rs`.)

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

/// One HTTP answer with its headers (names lower-cased, repeated ones kept).
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.as_str())
            .find(|v| v.starts_with(&format!("{name}=")))
    }

    /// The value of a hidden form field on the page.
    pub fn field(&self, name: &str) -> Option<String> {
        let at = self.body.find(&format!("name=\"{name}\" value=\""))?;
        let rest = &self.body[at + name.len() + 15..];
        Some(rest[..rest.find('"')?].to_string())
    }
}

/// A browser without a browser: a cookie jar and raw HTTP/1.1.
pub struct Jar {
    addr: SocketAddr,
    pub cookies: HashMap<String, String>,
}

impl Jar {
    pub fn new(addr: SocketAddr) -> Jar {
        Jar {
            addr,
            cookies: HashMap::new(),
        }
    }

    pub fn send(&mut self, method: &str, path: &str, content_type: &str, body: &[u8], extra: &[(&str, &str)]) -> Reply {
        let mut s = TcpStream::connect(self.addr).expect("connect for HTTP");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !self.cookies.is_empty() {
            let c: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req.push_str(&format!("Cookie: {}\r\n", c.join("; ")));
        }
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked { dechunk(rest) } else { rest.to_string() };
        for (k, v) in &headers {
            if k != "set-cookie" {
                continue;
            }
            let pair = v.split(';').next().unwrap_or("");
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() || v.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_string(), value.to_string());
                }
            }
        }
        Reply { status, headers, body }
    }

    pub fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, "text/plain", b"", &[])
    }

    pub fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.send("POST", path, "application/x-www-form-urlencoded", body.as_bytes(), &[])
    }

    /// Signs in through the sign-in form.
    pub fn sign_in(&mut self, name: &str, password: &str) -> Reply {
        let page = self.get("/console/sign-in");
        let csrf = page.field("csrf").expect("the sign-in form has a token");
        self.post(
            "/console/sign-in",
            &[
                ("csrf", &csrf),
                ("next", "/console"),
                ("name", name),
                ("password", password),
            ],
        )
    }

    /// The session's CSRF token, from any signed-in page.
    pub fn csrf(&mut self) -> String {
        self.get("/console/password").field("csrf").expect("a signed-in page")
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail.get(n + 2..).unwrap_or("");
    }
    out
}

fn v(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

struct Console {
    d: Daemon,
    director: String,
    desk_token: String,
    desk_id: u64,
}

/// A director and a card desk operator, both with console passwords from the command
/// line, and a system admin added through the API without one.
fn start(dir: &Path) -> (Console, String) {
    let director = operator_add_with_password(dir, "zhao", "director", "zhao-first-1").expect("operator add");
    let desk_token = operator_add_with_password(dir, "wang", "card_desk", "wang-first-1").expect("operator add");
    let d = Daemon::start(dir);
    let (st, body) = d.api(
        "POST",
        "/api/v1/operators",
        Some(&director),
        Some(&json!({"name": "chen", "role": "system_admin"}).to_string()),
    );
    assert_eq!(st, 201, "{body}");
    let sysadmin = v(&body)["token"].as_str().unwrap().to_string();
    let (_, ops) = d.api("GET", "/api/v1/operators", Some(&director), None);
    let desk_id = v(&ops)["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "wang")
        .and_then(|o| o["id"].as_u64())
        .unwrap();
    (
        Console {
            d,
            director,
            desk_token,
            desk_id,
        },
        sysadmin,
    )
}

impl Console {
    fn audit(&self, query: &str) -> Vec<Value> {
        let (st, body) = self
            .d
            .api("GET", &format!("/api/v1/audit?{query}"), Some(&self.director), None);
        assert_eq!(st, 200, "{body}");
        v(&body)["records"].as_array().unwrap().clone()
    }

    fn balance(&self, account: u64) -> String {
        let (_, body) = self.d.api(
            "GET",
            &format!("/api/v1/accounts/{account}"),
            Some(&self.director),
            None,
        );
        v(&body)["account"]["balance"].as_str().unwrap().to_string()
    }
}

#[test]
fn sign_in_sessions_csrf_lock_out_and_sign_out() {
    let dir = tempfile::tempdir().unwrap();
    let (k, _) = start(dir.path());
    let mut b = Jar::new(k.d.admin_addr());

    // Nothing without a session: every page sends the browser to sign in.
    let r = b.get("/console/desk");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/console/sign-in?next=%2Fconsole%2Fdesk"));
    let r = b.post("/console/desk/account/5/money/topup", &[("amount", "1.00")]);
    assert_eq!(r.status, 303, "a form without a session is not read");

    // The sign-in form itself is protected: its token must come back with it.
    let page = b.get("/console/sign-in");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("登录"), "Chinese by default");
    let r = b.post(
        "/console/sign-in",
        &[("csrf", "forged"), ("name", "zhao"), ("password", "zhao-first-1")],
    );
    assert_eq!(r.status, 403);
    assert!(r.set_cookie("cg_session").is_none());

    // A password someone else chose: signed in, but only to choose a new one.
    let r = b.sign_in("zhao", "zhao-first-1");
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/console/password"));
    let cookie = r.set_cookie("cg_session").expect("a session cookie").to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let r = b.get("/console/desk");
    assert_eq!(r.header("location"), Some("/console/password"), "nothing else first");
    let csrf = b.csrf();
    let r = b.post(
        "/console/password",
        &[
            ("csrf", &csrf),
            ("current", "wrong-one-1"),
            ("password", "zhao-own-22"),
            ("repeat", "zhao-own-22"),
        ],
    );
    assert_eq!(r.status, 403, "the current password is checked");
    let r = b.post(
        "/console/password",
        &[
            ("csrf", &csrf),
            ("current", "zhao-first-1"),
            ("password", "zhao-own-22"),
            ("repeat", "zhao-own-22"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = b.get("/console/desk");
    assert_eq!(r.status, 200);
    for h in ["content-security-policy", "x-frame-options", "cache-control"] {
        assert!(r.header(h).is_some(), "{h} on every page");
    }
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // A form without the session's CSRF token is refused and changes nothing.
    let before = k.balance(5);
    for token in [None, Some("0".repeat(64))] {
        let mut form = vec![("step", "confirm"), ("amount", "50.00"), ("idem", "x1")];
        if let Some(t) = &token {
            form.push(("csrf", t));
        }
        let r = b.post("/console/desk/account/5/money/topup", &form);
        assert_eq!(r.status, 403, "{token:?}");
    }
    assert_eq!(k.balance(5), before);
    // With it, the same form moves the money, once however often it is sent.
    let csrf = b.csrf();
    for _ in 0..2 {
        let r = b.post(
            "/console/desk/account/5/money/topup",
            &[
                ("csrf", &csrf),
                ("step", "confirm"),
                ("amount", "50.00"),
                ("idem", "x1"),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("1050.00"), "the new balance is shown");
    }
    assert_eq!(k.balance(5), "1050.00");
    let topups = k.audit("target=account:5");
    assert_eq!(
        topups.iter().filter(|r| r["action"] == "money.topup").count(),
        1,
        "audited once, under the operator who signed in"
    );
    assert!(
        topups
            .iter()
            .any(|r| r["action"] == "money.topup" && r["operator"] == "zhao")
    );

    // Behind a TLS proxy the cookie is Secure.
    let mut tls = Jar::new(k.d.admin_addr());
    let page = tls.send(
        "GET",
        "/console/sign-in",
        "text/plain",
        b"",
        &[("X-Forwarded-Proto", "https")],
    );
    let body = format!(
        "csrf={}&next=%2Fconsole&name=zhao&password=zhao-own-22",
        page.field("csrf").unwrap()
    );
    let r = tls.send(
        "POST",
        "/console/sign-in",
        "application/x-www-form-urlencoded",
        body.as_bytes(),
        &[("X-Forwarded-Proto", "https")],
    );
    assert!(r.set_cookie("cg_session").unwrap().contains("Secure"));

    // Five wrong passwords lock the name for a while, even against the right one.
    let mut other = Jar::new(k.d.admin_addr());
    for i in 0..5 {
        let r = other.sign_in("wang", "not-the-one");
        assert_eq!(r.status, 401, "failure {i}");
        assert!(r.set_cookie("cg_session").is_none());
    }
    let r = other.sign_in("wang", "wang-first-1");
    assert_eq!(r.status, 429, "locked: {}", r.body);
    assert!(r.set_cookie("cg_session").is_none());
    let r = other.sign_in("nobody", "whatever-1");
    assert_eq!(
        r.status, 401,
        "an unknown name gets the same answer as a wrong password"
    );
    let tried = k.audit(&format!("target=operator:{}", k.desk_id));
    let failed = tried
        .iter()
        .filter(|r| r["action"] == "console.sign_in" && r["status"] == 401)
        .count();
    assert_eq!(failed, 5, "each failure is audited");
    assert!(
        tried
            .iter()
            .any(|r| r["action"] == "console.sign_in" && r["status"] == 429)
    );
    let signed = k.audit("operator=zhao");
    assert!(
        signed
            .iter()
            .any(|r| r["action"] == "console.sign_in" && r["status"] == 200)
    );

    // Bearer tokens keep working beside sessions; a session's API key cannot be guessed.
    let (st, _) = k.d.api("GET", "/api/v1/whoami", Some(&k.director), None);
    assert_eq!(st, 200);
    let guess = format!("cgs_{}", "a".repeat(64));
    let (st, _) = k.d.api("GET", "/api/v1/whoami", Some(&guess), None);
    assert_eq!(st, 401);

    // Sign-out ends the session: the cookie no longer opens anything.
    let old = b.cookies.clone();
    let csrf = b.csrf();
    let r = b.post("/console/sign-out", &[("csrf", &csrf)]);
    assert_eq!(r.status, 303);
    b.cookies = old;
    let r = b.get("/console/desk");
    assert_eq!(r.status, 303);
    assert!(r.header("location").unwrap().starts_with("/console/sign-in"));
    assert!(
        k.audit("operator=zhao")
            .iter()
            .any(|r| r["action"] == "console.sign_out")
    );
}

#[test]
fn roles_are_refused_by_the_server_and_passwords_change_and_reset_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (k, sysadmin) = start(dir.path());

    // The card desk: no operators page, no parameters, however the URL is typed.
    let mut desk = Jar::new(k.d.admin_addr());
    desk.sign_in("wang", "wang-first-1");
    let csrf = desk.csrf();
    desk.post(
        "/console/password",
        &[
            ("csrf", &csrf),
            ("current", "wang-first-1"),
            ("password", "wang-own-22"),
            ("repeat", "wang-own-22"),
        ],
    );
    let home = desk.get("/console/desk");
    assert_eq!(home.status, 200);
    assert!(!home.body.contains("/console/operators"), "no link drawn");
    for path in [
        "/console/operators",
        "/console/params",
        "/console/audit",
        "/console/terminals",
        "/console/import",
    ] {
        let r = desk.get(path);
        assert_eq!(r.status, 403, "{path}");
    }
    let csrf = desk.csrf();
    let r = desk.post(
        "/console/operators",
        &[
            ("csrf", &csrf),
            ("name", "sneaky"),
            ("role", "director"),
            ("idem", "o1"),
        ],
    );
    assert_eq!(r.status, 403, "the form is refused too");
    let refused = k.audit("operator=wang");
    assert!(
        refused
            .iter()
            .any(|r| r["status"] == 403 && r["action"] == "operator.list"),
        "403s are audited under the operator"
    );

    // Passwords through the API: one's own needs the present one; another's needs the
    // operators permission; a director's needs a director.
    let me = k.desk_id;
    let (st, _) = k.d.api(
        "POST",
        &format!("/api/v1/operators/{me}/password"),
        Some(&sysadmin),
        Some(&json!({"password": "reset-by-chen"}).to_string()),
    );
    assert_eq!(st, 200, "a system admin resets a card desk's password");
    let r = desk.get("/console/desk");
    assert_eq!(r.status, 303, "the reset ended wang's session");
    let r = desk.sign_in("wang", "reset-by-chen");
    assert_eq!(
        r.header("location"),
        Some("/console/password"),
        "and asks for a new one"
    );
    let (_, ops) = k.d.api("GET", "/api/v1/operators", Some(&k.director), None);
    let zhao = v(&ops)["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "zhao")
        .and_then(|o| o["id"].as_u64())
        .unwrap();
    let (st, _) = k.d.api(
        "POST",
        &format!("/api/v1/operators/{zhao}/password"),
        Some(&sysadmin),
        Some(&json!({"password": "taking-over"}).to_string()),
    );
    assert_eq!(st, 403, "only a director resets a director's");
    let (st, _) = k.d.api(
        "POST",
        &format!("/api/v1/operators/{zhao}/password"),
        Some(&k.director),
        Some(&json!({"password": "short"}).to_string()),
    );
    assert_eq!(st, 422, "too short");
    let (st, body) = k.d.api(
        "POST",
        &format!("/api/v1/operators/{zhao}/password"),
        Some(&k.director),
        Some(&json!({"password": "zhao-own-22", "current": "wrong-wrong"}).to_string()),
    );
    assert_eq!(st, 403, "one's own needs the present one: {body}");
    // Guessing it counts toward the name's lock-out, like sign-ins.
    for _ in 0..5 {
        let (st, _) = k.d.api(
            "POST",
            &format!("/api/v1/operators/{me}/password"),
            Some(&k.desk_token),
            Some(&json!({"password": "wang-guess-22", "current": "guess-guess"}).to_string()),
        );
        assert_eq!(st, 403);
    }
    let (st, _) = k.d.api(
        "POST",
        &format!("/api/v1/operators/{me}/password"),
        Some(&k.desk_token),
        Some(&json!({"password": "wang-guess-22", "current": "reset-by-chen"}).to_string()),
    );
    assert_eq!(st, 429, "locked, even with the right one");
    assert_eq!(
        desk.sign_in("wang", "reset-by-chen").status,
        429,
        "and so is signing in"
    );
    let (st, body) = k.d.api(
        "POST",
        &format!("/api/v1/operators/{zhao}/password"),
        Some(&k.director),
        Some(&json!({"password": "zhao-own-22", "current": "zhao-first-1"}).to_string()),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(v(&body)["must_change"], false);
    let mut b = Jar::new(k.d.admin_addr());
    let r = b.sign_in("zhao", "zhao-own-22");
    assert_eq!(r.status, 303);
    assert_ne!(r.header("location"), Some("/console/password"));

    // No password in any audit record, kept answer or event.
    let all = k.audit("limit=10000");
    let text = serde_json::to_string(&all).unwrap();
    for secret in ["zhao-own-22", "reset-by-chen", "argon2"] {
        assert!(!text.contains(secret), "{secret} leaked into the audit trail");
    }
    assert!(
        all.iter()
            .any(|r| r["action"] == "operator.password_reset" && r["status"] == 200)
    );
}

/// The desk's and the data admin's forms end to end: each review changes nothing, each
/// confirmation does exactly what the API would, once.
#[test]
fn desk_and_data_forms_review_then_act_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (k, _) = start(dir.path());
    let mut b = Jar::new(k.d.admin_addr());
    b.sign_in("zhao", "zhao-first-1");
    let csrf = b.csrf();
    b.post(
        "/console/password",
        &[
            ("csrf", &csrf),
            ("current", "zhao-first-1"),
            ("password", "zhao-own-22"),
            ("repeat", "zhao-own-22"),
        ],
    );
    let csrf = b.csrf();
    let old = card(9).0.to_string();
    let new = "62220000900009";

    // Replace with the fee from the balance: asked for the new card, reviewed, done.
    let r = b.get(&format!("/console/desk/card/{old}/replace"));
    assert_eq!(r.status, 200);
    assert!(r.body.contains("name=\"new_card_no\""));
    let r = b.post(
        &format!("/console/desk/card/{old}/replace"),
        &[
            ("csrf", &csrf),
            ("step", "review"),
            ("new_card_no", new),
            ("fee", "balance"),
        ],
    );
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains(new) && r.body.contains("20.00"),
        "the review names the card and the fee"
    );
    assert_eq!(k.balance(9), "1000.00", "a review changes nothing");
    let idem = r.field("idem").unwrap();
    let r = b.post(
        &format!("/console/desk/card/{old}/replace"),
        &[
            ("csrf", &csrf),
            ("step", "confirm"),
            ("new_card_no", new),
            ("fee", "balance"),
            ("idem", &idem),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("980.00"), "the balance after the fee");
    assert_eq!(k.balance(9), "980.00");
    let (_, card_now) = k.d.api("GET", &format!("/api/v1/cards/{new}"), Some(&k.director), None);
    assert_eq!(v(&card_now)["card"]["status"], "active");

    // A refund with its reason, and a fee in cash: the balance as each leaves it.
    let r = b.post(
        "/console/desk/account/9/money/refund",
        &[
            ("csrf", &csrf),
            ("step", "review"),
            ("amount", "30"),
            ("reason", "cash back"),
        ],
    );
    assert!(r.body.contains("950.00"), "the review shows the balance after");
    let idem = r.field("idem").unwrap();
    let r = b.post(
        "/console/desk/account/9/money/refund",
        &[
            ("csrf", &csrf),
            ("step", "confirm"),
            ("amount", "30.00"),
            ("reason", "cash back"),
            ("idem", &idem),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(k.balance(9), "950.00");
    let r = b.post(
        "/console/desk/account/9/money/fee",
        &[
            ("csrf", &csrf),
            ("step", "confirm"),
            ("fee", "temporary_card"),
            ("method", "cash"),
            ("idem", "fee-1"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(k.balance(9), "950.00", "a fee in cash leaves the balance");
    let r = b.post(
        "/console/desk/account/9/money/refund",
        &[
            ("csrf", &csrf),
            ("step", "confirm"),
            ("amount", "5000.00"),
            ("idem", "too-much"),
        ],
    );
    assert_eq!(r.status, 422, "the API's refusal, shown: {}", r.body);
    let r = b.post(
        "/console/desk/account/9/money/topup",
        &[("csrf", &csrf), ("step", "review"), ("amount", "1.234")],
    );
    assert!(
        r.field("idem").is_none(),
        "no confirmation for an amount the desk cannot take"
    );

    // The day's fee list, on the page and as CSV.
    let r = b.get("/console/fees");
    assert!(r.body.contains("replacement") && r.body.contains("temporary_card"));
    let r = b.get("/console/fees.csv");
    assert_eq!(r.status, 200);
    assert!(r.header("content-disposition").unwrap().starts_with("attachment"));
    assert!(
        r.body.lines().last().unwrap().starts_with("total,,,,,,30.00"),
        "{}",
        r.body
    );

    // Cancel: the review says what is paid out; the answer closes the account.
    let r = b.get(&format!("/console/desk/card/{new}/cancel"));
    assert!(r.body.contains("950.00"));
    let idem = r.field("idem").unwrap();
    let r = b.post(
        &format!("/console/desk/card/{new}/cancel"),
        &[("csrf", &csrf), ("step", "confirm"), ("idem", &idem)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(k.balance(9), "0.00");
    let r = b.get("/console/desk/account/9");
    assert!(
        r.body.contains("已销户") && !r.body.contains("id=\"topup\""),
        "no money forms on a closed account"
    );

    // An import: checked, then imported from the file kept with the session.
    let csv = "person_id,name,department,kind,card_no\n2025001,张三,计算机学院,student,62220000100001\n";
    let boundary = "cardgateboundary";
    let multipart = |csrf: &str| {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"charset\"\r\n\r\n\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cs.csv\"\r\nContent-Type: text/csv\r\n\r\n{csv}\r\n\
             --{boundary}--\r\n"
        )
    };
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = b.send("POST", "/console/import", &ct, multipart("forged").as_bytes(), &[]);
    assert_eq!(r.status, 403, "the upload's token is checked before the file is used");
    let r = b.send("POST", "/console/import", &ct, multipart(&csrf).as_bytes(), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("id=\"report-sample\"") && r.body.contains("张三"),
        "the check shows the names as read: {}",
        r.body
    );
    let pending = r.field("pending").expect("a clean file waits for its go-ahead");
    let (st, _) = k.d.api("GET", "/api/v1/persons/2025001", Some(&k.director), None);
    assert_eq!(st, 404, "checked, not imported");
    let idem = r.field("idem").unwrap();
    let r = b.post(
        "/console/import/commit",
        &[("csrf", &csrf), ("pending", &pending), ("idem", &idem)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = b.post(
        "/console/import/commit",
        &[("csrf", &csrf), ("pending", &pending), ("idem", &idem)],
    );
    assert_eq!(r.status, 409, "the file went with its import");
    let r = b.get(&format!(
        "/console/desk?q={}",
        form_urlencoded::byte_serialize("张".as_bytes()).collect::<String>()
    ));
    assert!(r.body.contains("2025001"), "found by name");
    let r = b.get("/console/desk?q=2025001");
    assert_eq!(r.status, 303, "a person id opens the account");

    // Grants: unknown persons are named before anything is sent; a batch credits once.
    let r = b.post(
        "/console/grants",
        &[
            ("csrf", &csrf),
            ("step", "review"),
            ("batch_id", "meal-06"),
            ("items", "2025001,150\nS404,10"),
        ],
    );
    assert_eq!(r.status, 422);
    assert!(r.body.contains("S404") && r.field("idem").is_none());
    let r = b.post(
        "/console/grants",
        &[
            ("csrf", &csrf),
            ("step", "review"),
            ("batch_id", "meal-06"),
            ("items", "2025001,150.00\n"),
        ],
    );
    assert_eq!(r.status, 200);
    let idem = r.field("idem").unwrap();
    for _ in 0..2 {
        let r = b.post(
            "/console/grants",
            &[
                ("csrf", &csrf),
                ("step", "confirm"),
                ("batch_id", "meal-06"),
                ("items", "2025001,150.00\n"),
                ("idem", &idem),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let (_, p) = k.d.api("GET", "/api/v1/persons/2025001", Some(&k.director), None);
    assert_eq!(v(&p)["account"]["balance"], "150.00", "credited once");

    // Parameters: reviewed as old → new, changed once confirmed, audited before and after.
    let r = b.get("/console/params");
    let mut form: Vec<(String, String)> = ["student", "staff", "temporary"]
        .iter()
        .flat_map(|kind| {
            [
                "single_payment_max",
                "daily_max",
                "replacement_fee",
                "temporary_card_fee",
            ]
            .iter()
            .map(move |f| format!("{kind}.{f}"))
        })
        .map(|name| {
            let value = r.field(&name).unwrap_or_else(|| panic!("{name} on the form"));
            (name, value)
        })
        .collect();
    for (name, value) in form.iter_mut() {
        if name == "student.single_payment_max" {
            *value = "88.00".into();
        }
    }
    let mut fields: Vec<(&str, &str)> = form.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    fields.push(("csrf", &csrf));
    fields.push(("step", "review"));
    let r = b.post("/console/params", &fields);
    assert!(r.body.contains("<strong>88.00</strong>"), "the change is shown");
    let idem = r.field("idem").unwrap();
    let (_, before) = k.d.api("GET", "/api/v1/params", Some(&k.director), None);
    assert_ne!(v(&before)["student"]["single_payment_max"], "88.00");
    fields.retain(|(n, _)| *n != "step");
    fields.push(("step", "confirm"));
    fields.push(("idem", &idem));
    let r = b.post("/console/params", &fields);
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, after) = k.d.api("GET", "/api/v1/params", Some(&k.director), None);
    assert_eq!(v(&after)["student"]["single_payment_max"], "88.00");
    let audited = k.audit("target=params");
    let rec = audited.iter().find(|r| r["action"] == "params.set").expect("audited");
    assert_eq!(rec["after"]["student"]["single_payment_max"], "88.00");
    assert_eq!(
        rec["before"]["student"]["single_payment_max"],
        v(&before)["student"]["single_payment_max"]
    );

    // English on request, kept in a cookie.
    let r = b.get("/console/lang?to=en&back=%2Fconsole%2Fparams");
    assert_eq!(r.header("location"), Some("/console/params"));
    assert!(b.get("/console/params").body.contains("Parameters"));
    let r = b.get("/console/lang?to=zh&back=https%3A%2F%2Fevil.example%2F");
    assert_eq!(r.header("location"), Some("/console"), "only back into the console");
}

/// `cardgate operator password` resets a console password from a file (the way back in
/// when every administrator is locked out), refuses a bad one without changing
/// anything, and `operator list` says who has one.
#[test]
fn the_command_line_sets_and_resets_console_passwords() {
    let dir = tempfile::tempdir().unwrap();
    operator_add_with_password(dir.path(), "zhao", "director", "zhao-first-1").unwrap();
    operator_add(dir.path(), "script", "data_admin").unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cardgate"))
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("run cardgate");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, list, _) = run(&["operator", "list"]);
    assert!(ok);
    assert!(list.contains("zhao\tdirector\tenabled\tconsole password"), "{list}");
    assert!(list.contains("script\tdata_admin\tenabled\ttoken only"), "{list}");
    let file = dir.path().join("pw");
    std::fs::write(&file, "short\n").unwrap();
    let (ok, _, err) = run(&[
        "operator",
        "password",
        "zhao",
        "--password-file",
        file.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("at least 8") && err.contains("nothing changed"),
        "{err}"
    );
    std::fs::write(&file, "reset-from-cli-1\n").unwrap();
    let (ok, _, err) = run(&[
        "operator",
        "password",
        "zhao",
        "--password-file",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&[
        "operator",
        "password",
        "nobody",
        "--password-file",
        file.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no operator named nobody"), "{err}");

    let d = Daemon::start(dir.path());
    let mut b = Jar::new(d.admin_addr());
    assert_eq!(b.sign_in("zhao", "zhao-first-1").status, 401, "the old one is gone");
    let r = b.sign_in("zhao", "reset-from-cli-1");
    assert_eq!(
        r.header("location"),
        Some("/console/password"),
        "to be replaced at once"
    );
    let csrf = b.csrf();
    let r = b.post(
        "/console/password",
        &[
            ("csrf", &csrf),
            ("current", "reset-from-cli-1"),
            ("password", "zhao-own-22"),
            ("repeat", "zhao-own-22"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        b.get("/console/desk").status,
        200,
        "the session lives on under its own change"
    );

    // With the daemon running, the command goes through its control socket, and the
    // reset ends the sessions signed in under the old password.
    std::fs::write(&file, "reset-while-up-1\n").unwrap();
    let (ok, _, err) = run(&[
        "operator",
        "password",
        "zhao",
        "--password-file",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let r = b.get("/console/desk");
    assert_eq!(r.status, 303, "signed out by the reset");
    let r = b.sign_in("zhao", "reset-while-up-1");
    assert_eq!(r.header("location"), Some("/console/password"));
    let (ok, list, _) = run(&["operator", "list"]);
    assert!(ok && list.contains("script\tdata_admin\tenabled\ttoken only"), "{list}");
}

/// Signs `name` in and replaces the password the command line set: a console ready to
/// use.
/// The data admin may look people up at the card desk window (no actions): the menu
/// shows it to them, as the page lets them in.
#[test]
fn the_data_admins_menu_has_the_card_desk_window_to_look_up() {
    let dir = tempfile::tempdir().unwrap();
    let (k, _) = start(dir.path());
    operator_add_with_password(dir.path(), "qian", "data_admin", "qian-first-1").expect("operator add");
    let mut qian = signed_in(&k, "qian", "qian-first-1", "qian-own-22");
    let home = qian.get("/console/import");
    assert_eq!(home.status, 200);
    assert!(
        home.body.contains("href=\"/console/desk\""),
        "the menu links the window"
    );
    assert_eq!(qian.get("/console/desk").status, 200);
}

fn signed_in(k: &Console, name: &str, first: &str, own: &str) -> Jar {
    let mut b = Jar::new(k.d.admin_addr());
    let r = b.sign_in(name, first);
    assert_eq!(r.header("location"), Some("/console/password"), "{}", r.body);
    let csrf = b.csrf();
    let r = b.post(
        "/console/password",
        &[("csrf", &csrf), ("current", first), ("password", own), ("repeat", own)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    b
}

/// The door admin's and the attendance admin's pages: the doors of a group, a
/// permission granted and revoked through the forms (once each, audited, visible to the
/// API), the API's error shown on the form, security's search with its CSV; the sheet
/// over two days with its CSV; and every other role refused by the API's own check.
#[test]
fn door_and_attendance_pages_act_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    operator_add_with_password(dir.path(), "men", "door_admin", "men-first-1").unwrap();
    operator_add_with_password(dir.path(), "kao", "attendance_admin", "kao-first-1").unwrap();
    let (k, _) = start(dir.path());
    let mut b = signed_in(&k, "men", "men-first-1", "men-own-22");
    let home = b.get("/console");
    assert_eq!(home.header("location"), Some("/console/doors"), "the door admin's home");

    // The demo's doors 11 to 20 are group 2's.
    let r = b.get("/console/doors?door_group=2");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("<td>Door 11</td>") && r.body.contains("<td>Door 20</td>"));
    assert!(!r.body.contains("<td>Door 1</td>") && !r.body.contains("<td>Door 21</td>"));
    assert!(r.body.contains("门禁点"), "Chinese by default");
    assert!(
        !r.body.contains("href=\"/console/attendance\"") && !r.body.contains("href=\"/console/desk\""),
        "only the door admin's links"
    );
    assert!(b.get("/console/doors").body.contains("<td>Door 500</td>"));
    let r = b.get("/console/doors/schedules");
    assert!(r.status == 200 && r.body.contains("Demo: always"), "{}", r.body);
    assert_eq!(b.get("/console/doors/holidays").status, 200);

    // Grant account 1 group 2 by its card: the form, then the API sees it, once.
    let r = b.get("/console/doors/permissions?door_group=2");
    assert_eq!(r.status, 200, "{}", r.body);
    let csrf = r.field("csrf").unwrap();
    let idem = r.field("idem").unwrap();
    let card1 = card(1).0.to_string();
    let grant = [
        ("csrf", csrf.as_str()),
        ("idem", idem.as_str()),
        ("by", "card"),
        ("who", card1.as_str()),
        ("door_group", "2"),
        ("schedule", "1"),
        ("valid_from", "2026-01-01"),
        ("valid_to", ""),
        ("note", "console grant"),
    ];
    for _ in 0..2 {
        let r = b.post("/console/doors/permissions", &grant);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("id=\"granted\""), "{}", r.body);
    }
    let live = |k: &Console| {
        let (st, body) = k.d.api(
            "GET",
            "/api/v1/door-permissions?door_group=2&revoked=false",
            Some(&k.director),
            None,
        );
        assert_eq!(st, 200, "{body}");
        v(&body)["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["note"] == "console grant")
            .cloned()
            .collect::<Vec<_>>()
    };
    let mine = live(&k);
    assert_eq!(mine.len(), 1, "sent twice, granted once: {mine:?}");
    assert_eq!(mine[0]["subject"]["account"], 1);
    let id = mine[0]["id"].as_u64().unwrap();

    // The API's refusal is on the form, with the API's status.
    let mut typo = grant;
    typo[1] = ("idem", "typo-1");
    typo[2] = ("by", "person");
    typo[3] = ("who", "NOBODY-1");
    let r = b.post("/console/doors/permissions", &typo);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.body.contains("notice error") && r.body.contains("NOBODY-1"),
        "{}",
        r.body
    );
    assert!(r.body.contains("id=\"grant\""), "the form again");

    // Revoke: reviewed (nothing changes), then confirmed; a form without the token is
    // refused.
    let path = format!("/console/doors/permissions/{id}/revoke");
    let r = b.post(&path, &[("step", "confirm"), ("idem", "forged")]);
    assert_eq!(r.status, 403);
    let r = b.post(&path, &[("csrf", &csrf), ("step", "review")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("confirm-button"));
    assert_eq!(live(&k).len(), 1, "a review changes nothing");
    let idem = r.field("idem").unwrap();
    let r = b.post(&path, &[("csrf", &csrf), ("step", "confirm"), ("idem", &idem)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("id=\"revoked\""), "{}", r.body);
    let (_, p) = k.d.api(
        "GET",
        &format!("/api/v1/door-permissions/{id}"),
        Some(&k.director),
        None,
    );
    assert_eq!(v(&p)["permission"]["revoked"], true, "{p}");
    let audit = k.audit("operator=men");
    for action in ["door_permission.grant", "door_permission.revoke"] {
        assert!(
            audit
                .iter()
                .any(|r| r["action"] == action && r["status"].as_u64().is_some_and(|s| s < 300)),
            "{action} audited under the door admin: {audit:?}"
        );
    }
    let r = b.post(&path, &[("csrf", &csrf), ("step", "confirm"), ("idem", "again-1")]);
    assert_eq!(r.status, 422, "revoking twice is the API's 422: {}", r.body);

    // Security's search: the form alone searches nothing; a search and its CSV are
    // audited.
    assert_eq!(b.get("/console/doors/events").status, 200);
    let r = b.get("/console/doors/events?door=11&from=2026-01-01&to=2026-01-02");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("id=\"events-csv\""));
    let r = b.get("/console/doors/events.csv?door=11&from=2026-01-01&to=2026-01-02");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(r.body.starts_with("time,door,door_name"), "{}", r.body);
    let searches = k
        .audit("operator=men")
        .into_iter()
        .filter(|r| r["action"] == "access_events.search" && r["target"] == "door:11")
        .count();
    assert_eq!(searches, 2, "the page and the CSV, each audited");
    assert_eq!(b.get("/console/attendance").status, 403, "not the door admin's");
    let r = b.get("/console/lang?to=en&back=/console/doors/permissions");
    assert_eq!(r.status, 303);
    assert!(b.get("/console/doors/permissions").body.contains("Grant a permission"));

    // The card desk and the attendance admin: refused by the API's check, audited.
    let mut desk = signed_in(&k, "wang", "wang-first-1", "wang-own-22");
    assert!(
        !desk.get("/console/desk").body.contains("/console/doors"),
        "no link drawn"
    );
    for path in [
        "/console/doors",
        "/console/doors/permissions",
        "/console/doors/events",
        "/console/attendance",
    ] {
        assert_eq!(desk.get(path).status, 403, "{path}");
    }
    let csrf = desk.csrf();
    let mut sneaky = grant;
    sneaky[0] = ("csrf", csrf.as_str());
    sneaky[1] = ("idem", "sneaky-1");
    assert_eq!(desk.post("/console/doors/permissions", &sneaky).status, 403);
    assert!(
        k.audit("operator=wang")
            .iter()
            .any(|r| r["status"] == 403 && r["action"] == "door_permission.grant"),
        "the refused grant is audited"
    );
    assert_eq!(live(&k).len(), 0);

    // The attendance admin: a department over two days, and its CSV.
    let (st, body) = k.d.api(
        "POST",
        "/api/v1/persons",
        Some(&k.director),
        Some(&json!({"person_id": "K1", "name": "考勤甲", "department": "化学系", "kind": "staff"}).to_string()),
    );
    assert_eq!(st, 201, "{body}");
    let mut att = signed_in(&k, "kao", "kao-first-1", "kao-own-22");
    assert_eq!(att.get("/console").header("location"), Some("/console/attendance"));
    assert_eq!(att.get("/console/doors").status, 403);
    let r = att.get("/console/attendance");
    assert_eq!(r.status, 200);
    let dept = form_urlencoded::byte_serialize("化学系".as_bytes()).collect::<String>();
    let r = att.get(&format!(
        "/console/attendance?department={dept}&from=2026-11-02&to=2026-11-03"
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("<td>2026-11-02</td>") && r.body.contains("<td>2026-11-03</td>"));
    assert!(r.body.contains("<span id=\"attendance-count\">2</span>"), "{}", r.body);
    let r = att.get("/console/attendance.csv?person=K1&from=2026-11-02&to=2026-11-03");
    assert_eq!(r.status, 200, "{}", r.body);
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(lines.len(), 3, "one header, a row a day: {lines:?}");
    assert!(lines[0].starts_with("date,person_id,name,department"));
    assert!(lines[1].starts_with("2026-11-02,K1,考勤甲,化学系") && lines[2].starts_with("2026-11-03,K1"));
    let r = att.get("/console/attendance?person=NOBODY-1&from=2026-11-02");
    assert_eq!(r.status, 404, "the API's answer on the page: {}", r.body);
    assert!(r.body.contains("NOBODY-1"));
}
