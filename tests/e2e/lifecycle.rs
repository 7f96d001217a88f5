//! The daemon's life cycle against the real binary: starts that fail (each one line,
//! non-zero, nothing left behind), starts that succeed with what operators write (host
//! names, the example configuration, README's steps in order), the admin listener's
//! limits (no body read before authentication, body caps, a connection cap), the
//! operator command line with the daemon running or not, and shutdown's phases in order.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cardgate::config::Config;
use cardgate_codec::Message;
use cardgate_loadtest::desk::{CardDesk, HttpCardDesk, LOST_CARD_ENDPOINT_EXAMPLE};
use serde_json::{Value, json};
use sqlx::Connection;

use crate::harness::*;

/// A read that never ends is a failed test, not a hung one.
const READ_GUARD: Duration = Duration::from_secs(60);

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Runs `cmd`, which must fail the way an operator can act on: exit status 1 (not a
/// panic's 101), one line on stderr, no backtrace. Returns that line.
fn fails(cmd: &mut Command) -> String {
    let out: Output = cmd.output().expect("run cardgate");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "exit status of {cmd:?}; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, not:\n{stderr}");
    lines[0].to_string()
}

/// `serve` on ephemeral ports in `data`, with `overrides` replacing a flag's value.
fn serve_args(data: &Path, overrides: &[(&str, &str)]) -> Vec<String> {
    let mut args: Vec<String> = vec!["serve".into(), "--demo".into(), "--data-dir".into()];
    args.push(data.display().to_string());
    for flag in ["--listen", "--admin-listen", "--metrics-listen"] {
        let value = overrides
            .iter()
            .find(|(f, _)| *f == flag)
            .map_or("127.0.0.1:0", |(_, v)| v);
        args.extend([flag.to_string(), value.to_string()]);
    }
    for (flag, value) in overrides {
        if !flag.contains("listen") {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    args
}

#[test]
fn a_busy_port_is_one_line_naming_the_listener_and_address_and_creates_nothing() {
    for (flag, listener, key) in [
        ("--listen", "terminals", "`listen`"),
        ("--admin-listen", "the admin API", "`admin_listen`"),
        ("--metrics-listen", "Prometheus metrics", "`metrics_listen`"),
    ] {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap().to_string();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let line = fails(cardgate().args(serve_args(&data, &[(flag, &busy)])));
        assert!(
            line.contains(listener) && line.contains(&busy) && line.contains(key),
            "{line}"
        );
        assert!(line.contains("already in use"), "{line}");
        assert!(
            !data.exists(),
            "{flag}: the data directory was created before the failure"
        );
    }
}

/// A second gateway on a data directory in use says so, in an operator's words.
#[test]
fn a_data_directory_in_use_is_one_line_saying_so() {
    let tmp = tempfile::tempdir().unwrap();
    let running = Daemon::start(tmp.path());
    // The log has begun by then (the listeners are bound first): the failure is the
    // last line, and the exit status says it.
    let out = cardgate()
        .args(serve_args(tmp.path(), &[]))
        .output()
        .expect("run cardgate");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(line.contains("in use by a running cardgate"), "{stderr}");
    assert!(!stderr.contains("WouldBlock"), "{stderr}");
    drop(running);
}

#[test]
fn each_bad_start_is_one_clear_line_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let a_file = config("a-file", "");
    // (flag, its value, what the one line must say, once each)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "--config",
            config("addr.toml", "listen = \"nowhere\"\n"),
            vec!["addr.toml", "line 1", "HOST:PORT"],
        ),
        (
            "--config",
            config("key.toml", "[limits]\nconnection_max = 3\n"),
            vec!["key.toml", "line 2", "connection_max"],
        ),
        (
            "--config",
            config("limit.toml", "[limits]\npipeline_depth_max = 64\n"),
            vec!["invalid configuration", "pipeline_depth_max"],
        ),
        (
            "--config",
            tmp.path().join("missing.toml").display().to_string(),
            vec!["cannot read the configuration file", "missing.toml"],
        ),
        (
            "--listen",
            "no-such-host.invalid:7700".into(),
            vec!["terminals", "no-such-host.invalid:7700", "does not resolve"],
        ),
        (
            "--listen",
            "10.255.255.1:7700".into(),
            vec!["terminals", "10.255.255.1:7700", "no such address"],
        ),
        (
            "--central",
            "mysql://u:secret@h/db".into(),
            vec!["central store", "mysql://u@h/db"],
        ),
    ];
    for (flag, value, wanted) in cases {
        let line = fails(cardgate().args(serve_args(&data, &[(flag, &value)])));
        for w in &wanted {
            assert_eq!(line.matches(w).count(), 1, "{w:?} once in: {line}");
        }
        assert!(!line.contains("secret"), "{line}");
        assert!(!data.exists(), "{flag} {value} left a data directory");
    }
    // A data directory that cannot be one.
    let line = fails(cardgate().args(serve_args(&Path::new(&a_file).join("data"), &[])));
    assert!(line.contains("data directory") && line.contains("a-file"), "{line}");
    let line = fails(cardgate().args(serve_args(Path::new(&a_file), &[])));
    assert!(line.contains("not a directory"), "{line}");
}

#[tokio::test]
async fn host_names_are_resolved_for_every_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut cmd = cardgate();
    cmd.args(serve_args(
        &data,
        &[
            ("--listen", "localhost:0"),
            ("--admin-listen", "localhost:0"),
            ("--metrics-listen", "localhost:0"),
            ("--demo-accounts", "10"),
            ("--demo-terminals", "2"),
        ],
    ));
    let d = Daemon::spawn(cmd, &data);
    for kind in ["terminals", "admin", "metrics"] {
        assert!(d.addrs[kind].ip().is_loopback(), "{kind}: {:?}", d.addrs);
    }
    let mut t = d.terminal(1).await;
    assert!(matches!(
        t.purchase(1, card(1), 1_00).await.unwrap(),
        Message::Approved(_)
    ));
    assert_eq!(d.api("GET", "/api/v1/whoami", None, None).0, 401);
    assert!(d.metrics().contains("cardgate_shutdown_phase 0"));
}

#[tokio::test]
async fn an_unreachable_central_store_is_one_warning_and_terminals_are_served() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: refused at once.
    let d = Daemon::start_with(dir.path(), &["--central", "postgres://cardgate:pw@127.0.0.1:1/campus"]);
    let line = d.wait_for_log(|l| l.contains("central store unreachable at start-up"));
    assert!(
        line.contains("postgres://cardgate@127.0.0.1:1/campus") && !line.contains("pw@"),
        "{line}"
    );
    assert!(line.contains("WARN"), "{line}");
    let mut t = d.terminal(1).await;
    assert!(matches!(
        t.purchase(1, card(1), 1_00).await.unwrap(),
        Message::Approved(_)
    ));
    assert!(d.terminate().success());
}

/// `CARDGATE_TEST_PG`, or None after saying the test was skipped.
fn test_pg(test: &str) -> Option<String> {
    match std::env::var("CARDGATE_TEST_PG") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!("{test}: CARDGATE_TEST_PG is not set; skipped");
            None
        }
    }
}

fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

async fn pg_exec(url: &str, sql: String) {
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to CARDGATE_TEST_PG");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test]
async fn a_missing_postgres_schema_is_named_at_start_up_and_terminals_are_served() {
    let Some(pg) = test_pg("a_missing_postgres_schema_is_named_at_start_up") else {
        return;
    };
    let schema = format!("cg_missing_{}_{:x}", std::process::id(), rand::random::<u32>());
    let url = with_param(&pg, &format!("options=-c%20search_path%3D{schema}"));
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(dir.path(), &["--central", &url]);
    let line = d.wait_for_log(|l| l.contains("central store cannot be used as configured"));
    assert!(line.contains(&schema) && line.contains("CREATE SCHEMA"), "{line}");
    let mut t = d.terminal(1).await;
    assert!(matches!(
        t.purchase(1, card(1), 1_00).await.unwrap(),
        Message::Approved(_)
    ));
}

/// The schema forms docs/CONFIGURATION.md gives, as written there.
fn documented_schema_forms() -> Vec<String> {
    let doc = include_str!("../../docs/CONFIGURATION.md");
    let forms: Vec<String> = doc
        .split('`')
        .filter(|s| s.starts_with("?options") && s.contains("search_path") && s.ends_with("cardgate"))
        .map(str::to_string)
        .collect();
    assert_eq!(forms.len(), 2, "the two forms in CONFIGURATION.md: {forms:?}");
    forms
}

#[tokio::test]
async fn each_documented_postgres_schema_form_puts_the_tables_in_that_schema() {
    let forms = documented_schema_forms();
    let Some(pg) = test_pg("each_documented_postgres_schema_form") else {
        return;
    };
    for form in forms {
        let schema = format!("cg_doc_{}_{:x}", std::process::id(), rand::random::<u32>());
        pg_exec(&pg, format!("CREATE SCHEMA {schema}")).await;
        let param = form.trim_start_matches('?').replace("cardgate", &schema);
        let url = with_param(&pg, &param);
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon::start_with(dir.path(), &["--central", &url]);
        let line = d.wait_for_log(|l| l.contains("central store answers"));
        assert!(line.contains(&format!("schema={schema}")), "{form}: {line}");
        // The flusher ships the demo campus into that schema's own tables.
        let mut c = sqlx::PgConnection::connect(&pg).await.unwrap();
        let deadline = std::time::Instant::now() + READ_GUARD;
        loop {
            let shipped: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT MAX(shipped_entry_id) FROM {schema}.gateways"
            )))
            .fetch_one(&mut c)
            .await
            .unwrap_or(None);
            if shipped.unwrap_or(0) > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{form}: nothing shipped to {schema}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.close().await.unwrap();
        assert!(d.terminate().success());
        pg_exec(&pg, format!("DROP SCHEMA {schema} CASCADE")).await;
    }
}

#[tokio::test]
async fn sigterm_runs_the_shutdown_phases_in_order_each_with_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    assert_eq!(d.metric("cardgate_shutdown_phase"), Some(0.0));
    // A signed-on terminal, so that there is a session to drain.
    let mut t = d.terminal(1).await;
    assert!(matches!(
        t.purchase(1, card(1), 1_00).await.unwrap(),
        Message::Approved(_)
    ));
    let (status, log) = d.terminate_with_log();
    assert!(status.success());
    let phases: Vec<(String, Option<u64>)> = log
        .iter()
        .filter(|l| l.contains("shutdown phase") || l.contains("phase=\"stopped\""))
        .map(|l| {
            let phase = l
                .split("phase=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string();
            let deadline = l
                .split("deadline_ms=")
                .nth(1)
                .map(|d| d.split_whitespace().next().unwrap().parse().unwrap());
            (phase, deadline)
        })
        .collect();
    let c = Config::default();
    assert_eq!(
        phases,
        [
            ("stop_accepting".to_string(), None),
            ("drain_sessions".to_string(), Some(c.limits.shutdown_grace_ms)),
            ("central_flush".to_string(), Some(c.central.shutdown_flush_ms)),
            ("committer".to_string(), Some(cardgate::shutdown::COMMITTER_JOIN_MS)),
            ("stopped".to_string(), None),
        ]
    );
    assert!(!log.iter().any(|l| l.contains("did not finish")), "{log:#?}");
    // Log times say their zone: the default business zone, UTC+8.
    assert!(
        log.iter().all(|l| l.split(' ').next().unwrap().ends_with("+08:00")),
        "{}",
        log[0]
    );
}

#[tokio::test]
async fn log_times_are_in_the_configured_zone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("zone.toml");
    std::fs::write(&cfg, "tz_offset_minutes = -330\n").unwrap();
    let d = Daemon::start_with(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let first = d.log()[0].clone();
    assert!(first.split(' ').next().unwrap().ends_with("-05:30"), "{first}");
}

// ---- the admin listener -------------------------------------------------------------

/// Writes `head` and `body` to a new connection and reads the answer to the end. The
/// server may close the connection before it has read all of `body` (that is the
/// point); what it answered before closing is what counts.
fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(READ_GUARD)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // A write the server refuses by closing is fine: it has answered already.
    let _ = s.write_all(body);
    read_answer(&mut s)
}

/// Reads one HTTP/1.1 answer with a Content-Length (axum's JSON answers have one).
fn read_answer(s: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if let Some(len) = len
                && rest.len() >= len
            {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, rest[..len].to_string());
            }
        }
        match s.read(&mut buf) {
            Ok(0) => panic!("connection closed before a whole answer: {text:?}"),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the answer: {e} after {text:?}"),
        }
    }
}

/// A daemon with a director made on the command line before it started.
fn with_director(dir: &Path) -> (Daemon, String) {
    let director = operator_add(dir, "zhao", "director").expect("operator add");
    (Daemon::start(dir), director)
}

fn add_operator(d: &Daemon, director: &str, name: &str, role: &str) -> String {
    let (st, body) = d.api(
        "POST",
        "/api/v1/operators",
        Some(director),
        Some(&json!({"name": name, "role": role}).to_string()),
    );
    assert_eq!(st, 201, "{body}");
    json_of(&body)["token"].as_str().unwrap().to_string()
}

#[test]
fn a_request_without_a_valid_token_is_refused_before_its_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _) = with_director(dir.path());
    let admin = d.admin_addr();
    let declared = 30 * 1024 * 1024;
    let part = vec![b'x'; 16 * 1024];
    for (path, auth) in [
        ("/api/v1/imports", ""),
        ("/api/v1/persons", ""),
        ("/api/v1/imports", "Authorization: Bearer cg_guess\r\n"),
    ] {
        // The server gets the headers and a sliver of a 30 MiB body, and must answer
        // without waiting for the rest, which never comes.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: text/csv\r\nContent-Length: {declared}\r\n\r\n"
        );
        let (st, body) = exchange(admin, &head, &part);
        assert_eq!(st, 401, "{path} {auth:?}: {body}");
        assert_eq!(json_of(&body)["error"], "a valid bearer token is required");
    }
    // And they were refused as every 401 is: counted with their endpoint group.
    let m = d.metrics();
    assert!(m.contains("group=\"import\""), "{m}");
}

#[test]
fn bodies_past_their_route_limit_are_413_with_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let (d, director) = with_director(dir.path());
    let admin = d.admin_addr();
    let auth = format!("Authorization: Bearer {director}\r\n");

    // 100 KiB of JSON where 64 KiB is the limit, declared and sent.
    let big = format!(
        "{{\"person_id\": \"P1\", \"name\": \"{}\", \"kind\": \"student\"}}",
        "n".repeat(100 * 1024)
    );
    let head = format!(
        "POST /api/v1/persons HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    let (st, body) = exchange(admin, &head, big.as_bytes());
    assert_eq!(st, 413, "{body}");
    assert!(json_of(&body)["error"].as_str().unwrap().contains("65536"), "{body}");

    // The same, streamed in chunks with no length declared: refused once past the limit.
    let head = format!(
        "POST /api/v1/persons HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut chunked = Vec::new();
    for piece in big.as_bytes().chunks(8 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (st, body) = exchange(admin, &head, &chunked);
    assert_eq!(st, 413, "{body}");
    assert!(json_of(&body)["error"].is_string(), "{body}");

    // The import route takes more than 64 KiB...
    let mut csv = String::from("person_id,name,department,kind,card_no\n");
    for i in 0..1500u64 {
        csv.push_str(&format!(
            "L{i:05},Name {i},Department of Long Names,student,{}\n",
            62_220_009_000_000 + i
        ));
    }
    assert!(csv.len() > 64 * 1024);
    let (st, body) = http(
        admin,
        "POST",
        "/api/v1/imports?dry_run=true",
        Some(&director),
        "text/csv",
        csv.as_bytes(),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(json_of(&body)["rows"], 1500);
    // So do the other bulk routes: a batch cancellation naming 6,000 persons is read
    // whole and refused for what it says (nobody by those ids), not for its size.
    let ids: Vec<String> = (0..6000).map(|i| format!("NOBODY-{i:06}")).collect();
    let batch = json!({"batch_id": "too-many-strangers", "person_ids": ids}).to_string();
    assert!(batch.len() > 64 * 1024);
    let (st, body) = d.api("POST", "/api/v1/cancellations", Some(&director), Some(&batch));
    assert_eq!(st, 404, "{body}");
    assert!(body.contains("(6000 in all)"), "{body}");
    // ...but not more than the import's own limit, refused before the body is sent.
    let head = format!(
        "POST /api/v1/imports HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
        cardgate::admin::BULK_BODY_BYTES_MAX + 1
    );
    let (st, body) = exchange(admin, &head, b"");
    assert_eq!(st, 413, "{body}");
    assert!(json_of(&body)["error"].is_string());
    // Nothing of it was imported or opened.
    let (st, _) = d.api("GET", "/api/v1/persons/P1", Some(&director), None);
    assert_eq!(st, 404);
}

/// One keep-alive request on an open connection; returns the status.
fn keep_alive_whoami(s: &mut TcpStream) -> u16 {
    s.write_all(b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_answer(s).0
}

#[test]
fn admin_connections_beyond_the_cap_wait_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cap.toml");
    std::fs::write(&cfg, "[limits]\nadmin_connections_max = 2\n").unwrap();
    let d = Daemon::start_with(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let admin = d.admin_addr();
    let open = || {
        let s = TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(READ_GUARD)).unwrap();
        s
    };
    let mut first = open();
    let mut second = open();
    assert_eq!(keep_alive_whoami(&mut first), 401);
    assert_eq!(keep_alive_whoami(&mut second), 401);
    assert_eq!(d.metric("cardgate_admin_connections"), Some(2.0));

    // The third connects (the kernel's backlog) and asks, but is not taken in...
    let mut third = open();
    third
        .write_all(b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // ...while the two held connections are served (a full round trip: by then the
    // third would have had its answer too, were it accepted).
    assert_eq!(keep_alive_whoami(&mut second), 401);
    third.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match third.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the third connection was served beyond the cap: {other:?}"),
    }
    third.set_nonblocking(false).unwrap();
    // One closes: the third is taken in and answered.
    drop(first);
    assert_eq!(read_answer(&mut third).0, 401);
    assert_eq!(d.metric("cardgate_admin_connections"), Some(2.0));
}

/// The sum of a metric's series that carry all of `labels`.
fn metric_with(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    d.metrics()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn the_bearer_scheme_is_case_insensitive_and_every_refusal_is_counted_under_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let (d, director) = with_director(dir.path());
    let admin = d.admin_addr();
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let head = format!("GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: {scheme} {director}\r\n\r\n");
        let (st, body) = exchange(admin, &head, b"");
        assert_eq!(st, 200, "{scheme}: {body}");
        assert_eq!(json_of(&body)["operator"]["name"], "zhao");
    }

    // A refused whoami is a whoami refusal, not a persons one.
    let refusals = "cardgate_admin_auth_refusals_total";
    assert_eq!(d.api("GET", "/api/v1/whoami", None, None).0, 401);
    assert_eq!(
        metric_with(&d, refusals, &[("status", "401"), ("group", "whoami")]),
        1.0
    );
    assert_eq!(metric_with(&d, refusals, &[("group", "persons")]), 0.0);

    // A 403 an operation decides ("only a director may add a director") is counted
    // like one at the door, and audited.
    let sysadmin = add_operator(&d, &director, "chen", "system_admin");
    let (st, _) = d.api(
        "POST",
        "/api/v1/operators",
        Some(&sysadmin),
        Some(&json!({"name": "boss", "role": "director"}).to_string()),
    );
    assert_eq!(st, 403);
    assert_eq!(
        metric_with(&d, refusals, &[("status", "403"), ("group", "operators")]),
        1.0
    );
    let (_, audit) = d.api("GET", "/api/v1/audit?target=operators", Some(&director), None);
    let refused: Vec<Value> = json_of(&audit)["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 403)
        .cloned()
        .collect();
    assert_eq!(refused.len(), 1, "{audit}");
    assert_eq!(refused[0]["operator"], "chen");
}

// ---- operators from the command line --------------------------------------------------

fn cli_output(args: &[&str], data_dir: &Path) -> Output {
    cardgate()
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run cardgate")
}

#[test]
fn operator_commands_refuse_a_data_directory_that_is_not_one_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let typo = tmp.path().join("TYPO");
    let line = fails(cardgate().args(["operator", "list", "--data-dir"]).arg(&typo));
    assert!(line.contains("no data directory") && line.contains("TYPO"), "{line}");
    assert!(!typo.exists(), "list created the directory it was asked to read");
    let line = fails(
        cardgate()
            .args(["operator", "add", "x", "--role", "root", "--data-dir"])
            .arg(&typo),
    );
    assert!(line.contains("unknown role"), "{line}");
    assert!(!typo.exists());
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let line = fails(cardgate().args(["operator", "list", "--data-dir"]).arg(&empty));
    assert!(line.contains("not a cardgate data directory"), "{line}");
    // A fresh directory is what `operator add` may create.
    let fresh = tmp.path().join("fresh");
    let token = operator_add(&fresh, "zhao", "director").unwrap();
    assert!(token.starts_with("cg_"), "{token}");
    let out = cli_output(&["operator", "list"], &fresh);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\tzhao\tdirector\tenabled\ttoken only\n"
    );
}

#[test]
fn operator_add_and_list_work_while_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    // A first start with no operators says, once, how to make one.
    let hint = d.wait_for_log(|l| l.contains("no operators yet"));
    assert!(
        hint.contains("cardgate operator add") && hint.contains("while the gateway runs"),
        "{hint}"
    );
    assert_eq!(d.log().iter().filter(|l| l.contains("no operators yet")).count(), 1);

    let token = operator_add(dir.path(), "zhao", "director").expect("operator add while running");
    let (st, body) = d.api("GET", "/api/v1/whoami", Some(&token), None);
    assert_eq!(st, 200, "{body}");
    assert_eq!(json_of(&body)["operator"]["role"], "director");
    let out = cli_output(&["operator", "list"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\tzhao\tdirector\tenabled\ttoken only\n"
    );
    let err = operator_add(dir.path(), "x", "root").unwrap_err();
    assert!(err.contains("unknown role"), "{err}");
    let err = operator_add(dir.path(), "zhao", "card_desk").unwrap_err();
    assert!(!err.contains("panicked") && err.lines().count() == 1, "{err}");

    // After a restart the operator is there, and the hint is not.
    assert!(d.terminate().success());
    assert!(
        !dir.path().join(cardgate::control::SOCKET_FILE).exists(),
        "the socket is removed"
    );
    let d = Daemon::start(dir.path());
    let (st, _) = d.api("GET", "/api/v1/whoami", Some(&token), None);
    assert_eq!(st, 200);
    assert!(!d.log().iter().any(|l| l.contains("no operators yet")));
}

// ---- README, the example configuration, and the load test's help ------------------------

/// The shell lines of README.md's ```sh blocks, in order.
fn readme_commands() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        match (in_sh, line.trim()) {
            (false, "```sh") => in_sh = true,
            (true, "```") => in_sh = false,
            (true, l) if !l.is_empty() && !l.starts_with('#') => out.push(l.to_string()),
            _ => {}
        }
    }
    out
}

/// What follows `cargo run ... -p cardgate --` in a README line, as arguments.
fn cardgate_args(line: &str) -> Vec<String> {
    let after = line
        .split_once("-p cardgate -- ")
        .unwrap_or_else(|| panic!("not a cardgate command: {line}"))
        .1;
    after
        .trim_end_matches(')')
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_steps_work_in_the_order_written() {
    let lines = readme_commands();
    let find = |what: &str| {
        lines
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("README has no {what:?} step: {lines:#?}"))
    };
    let (serve, add, call) = (
        find("-p cardgate -- serve"),
        find("-p cardgate -- operator add"),
        find("curl "),
    );
    assert!(serve < add && add < call, "README's steps are out of order: {lines:#?}");

    // A newcomer's fresh directory; the ports are moved aside by the environment only,
    // so the commands run exactly as written.
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = cardgate();
    cmd.args(cardgate_args(&lines[serve]))
        .current_dir(tmp.path())
        .env("CARDGATE_LISTEN", "127.0.0.1:0")
        .env("CARDGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("CARDGATE_METRICS_LISTEN", "127.0.0.1:0");
    let d = Daemon::spawn(cmd, &tmp.path().join("data"));

    let (var, _) = lines[add]
        .split_once("=$(")
        .expect("the token is kept in a variable: T=$(...)");
    let out = cardgate()
        .args(cardgate_args(&lines[add]))
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    // The curl line: its header and URL, on the address the daemon really took.
    let call = &lines[call];
    let header = call.split('"').nth(1).expect("curl -H \"...\"");
    assert_eq!(header, format!("Authorization: Bearer ${var}"));
    let url = call.split_whitespace().last().unwrap();
    let default_admin = Config::default().admin_listen.unwrap().to_string();
    let path = url
        .strip_prefix(&format!("http://{default_admin}"))
        .unwrap_or_else(|| panic!("README calls the default admin address: {url}"));
    let (st, body) = d.api("GET", path, Some(&token), None);
    assert_eq!(st, 200, "{body}");
    assert_eq!(json_of(&body)["operator"]["name"], "zhao");
    assert!(d.terminate().success());
}

#[tokio::test]
async fn the_load_tests_lost_card_example_is_the_gateways_route() {
    let default_admin = Config::default().admin_listen.unwrap().to_string();
    assert!(LOST_CARD_ENDPOINT_EXAMPLE.contains(&default_admin));
    let dir = tempfile::tempdir().unwrap();
    let (d, director) = with_director(dir.path());
    let desk_token = add_operator(&d, &director, "wang", "card_desk");
    let endpoint = LOST_CARD_ENDPOINT_EXAMPLE.replace(&default_admin, &d.admin_addr().to_string());
    let desk = HttpCardDesk::new(&endpoint, Some(desk_token.clone())).unwrap();
    desk.report_lost(card(7))
        .await
        .expect("the example route reports a card lost");
    let (st, body) = d.api("GET", &format!("/api/v1/cards/{}", card(7).0), Some(&desk_token), None);
    assert_eq!(st, 200, "{body}");
    assert_eq!(json_of(&body)["card"]["status"], "lost");
}

#[test]
fn the_example_configuration_starts_a_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cardgate.toml");
    let mut cmd = cardgate();
    cmd.args(["serve", "--config"])
        .arg(&example)
        .current_dir(tmp.path())
        .env("CARDGATE_LISTEN", "127.0.0.1:0")
        .env("CARDGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("CARDGATE_METRICS_LISTEN", "127.0.0.1:0");
    let d = Daemon::spawn(cmd, &tmp.path().join("data"));
    assert!(
        tmp.path().join("data").is_dir(),
        "data_dir from the example, relative to the working directory"
    );
    let (status, log) = d.terminate_with_log();
    assert!(status.success(), "{status}: {}", log.join("\n"));
}
