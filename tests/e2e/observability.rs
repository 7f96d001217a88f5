//! What an operator watches, against the real daemon and the distribution's Prometheus
//! tools: the exposition passes `promtool check metrics` after a small load; the alert
//! rules pass `promtool check rules` and `promtool test rules` with a firing and a quiet
//! case for each alert; a real Prometheus scrapes a real gateway under load and every
//! query of the dashboard and of the alert rules (each without its threshold) returns
//! data through its HTTP API; `/healthz` and `/readyz`; the log's format, time zone and
//! masked card numbers.
//!
//! Where `prometheus` or `promtool` is missing, these tests print that they were skipped;
//! CI sets `CARDGATE_TEST_PROMETHEUS=1`, which makes a missing tool a failure.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cardgate_codec::{CardNo, ErrorCode, Message};
use cardgate_loadtest::client::{ClientError, TerminalClient};
use serde_json::Value;

use crate::harness::{Daemon, card, http, operator_add, secret};

const OPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops");

/// Whether CI requires the Prometheus tools.
fn required() -> bool {
    std::env::var("CARDGATE_TEST_PROMETHEUS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The tool's path, or `None` after saying the test is skipped (a failure under CI).
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if required() => {
            panic!("{name} is not installed and CARDGATE_TEST_PROMETHEUS requires it: apt-get install prometheus")
        }
        None => {
            eprintln!(
                "skipped: {name} is not installed (apt-get install prometheus); \
                 CI sets CARDGATE_TEST_PROMETHEUS=1 to require it"
            );
            None
        }
    }
}

/// A few of every kind of terminal request through demo terminal `terminal`: approved
/// and declined purchases, a reversal, a balance inquiry, a heartbeat, and a sign-on with
/// the wrong key.
async fn small_load(d: &Daemon, terminal: u64) {
    let mut t = d.terminal(terminal).await;
    let base = t.sign_on.last_tx_seq + 1;
    for i in 0..10 {
        let m = t.purchase(base + i, card(1 + (terminal + i) % 50), 1_00).await.unwrap();
        assert!(matches!(m, Message::Approved(_)), "{m:?}");
    }
    let m = t.purchase(base + 10, CardNo(4_000_000_001), 1_00).await.unwrap();
    assert!(matches!(m, Message::Declined(_)), "an unknown card is declined: {m:?}");
    let m = t
        .reversal(base + 11, base, card(1 + terminal % 50), 1_00)
        .await
        .unwrap();
    assert!(matches!(m, Message::Approved(_)), "{m:?}");
    assert!(matches!(t.balance(card(2)).await.unwrap(), Message::Balance(_)));
    assert!(matches!(t.heartbeat().await.unwrap(), Message::HeartbeatAck(_)));
    let wrong_key = TerminalClient::connect(d.terminal_addr(), terminal + 1, &secret(terminal + 2)).await;
    assert!(matches!(wrong_key, Err(ClientError::Refused(ErrorCode::AuthFailed))));
}

fn metrics_addr(d: &Daemon) -> SocketAddr {
    d.addrs["metrics"]
}

#[tokio::test]
async fn the_exposition_passes_promtool_check_metrics_after_a_small_load() {
    let Some(promtool) = tool("promtool") else { return };
    let dir = tempfile::tempdir().unwrap();
    let director = operator_add(dir.path(), "zhao", "director").unwrap();
    let d = Daemon::start(dir.path());
    let wait_for = |series: &'static str, want: f64| {
        let d = &d;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while d.metric(series) != Some(want) {
                assert!(Instant::now() < deadline, "{series} never became {want}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // One terminal stays signed on through the load: the sampled gauge counts it by kind.
    let held = d.terminal(3).await;
    wait_for("cardgate_terminals_connected{kind=\"pos\"}", 1.0).await;
    small_load(&d, 1).await;
    small_load(&d, 2).await;
    assert_eq!(d.api("GET", "/api/v1/accounts/3", Some(&director), None).0, 200);
    assert_eq!(d.api("GET", "/api/v1/accounts/3", Some("wrong"), None).0, 401);
    drop(held);
    wait_for("cardgate_terminals_connected{kind=\"pos\"}", 0.0).await;
    wait_for("cardgate_connections", 0.0).await;
    let text = d.metrics();

    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics complains:\n{complaints}"
    );

    // What the load did is there, labelled by kind and result, and nothing else leaks in.
    let value = |series: &str| d.metric(series).unwrap_or_else(|| panic!("no {series}"));
    assert!(!text.contains(" summary\n"), "a summary is exported");
    assert_eq!(
        value("cardgate_request_seconds_count{kind=\"purchase\",result=\"approved\"}"),
        20.0
    );
    assert_eq!(
        value("cardgate_request_seconds_count{kind=\"purchase\",result=\"declined\"}"),
        2.0
    );
    assert_eq!(value("cardgate_declines_total{reason=\"unknown_card\"}"), 2.0);
    assert_eq!(value("cardgate_sign_ons_total{result=\"auth_failed\"}"), 2.0);
    assert_eq!(value("cardgate_connections_refused_total{code=\"bad_mac\"}"), 0.0);
    assert!(
        text.contains(
            "cardgate_admin_http_requests_total{method=\"GET\",route=\"/api/v1/accounts/{id}\",status=\"200\"} 1"
        ),
        "admin calls are counted by route template, not path"
    );
    assert!(!text.contains("/api/v1/accounts/3"), "a raw path leaked into a label");
    for family in [
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "no {family}");
    }
    assert!(value("cardgate_data_filesystem_size_bytes") > 0.0);
    assert!(value("cardgate_journal_size_bytes") > 0.0);
    let build = text.lines().find(|l| l.starts_with("cardgate_build_info{")).unwrap();
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(build.ends_with(" 1"), "{build}");
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_tests() {
    let Some(promtool) = tool("promtool") else { return };
    let prom = Path::new(OPS).join("prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["check", "config", "prometheus.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new(&promtool).args(&args).current_dir(&prom).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a case in which it fires and one in which it stays quiet.
    let rules = std::fs::read_to_string(prom.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(prom.join("alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in alerts {
        let cases: Vec<&str> = tests
            .split("alert_rule_test:")
            .skip(1)
            .filter(|c| c.contains(&format!("alertname: {alert}\n")))
            .collect();
        let quiet = cases.iter().filter(|c| c.contains("exp_alerts: []")).count();
        let firing = cases.iter().filter(|c| c.contains("exp_labels:")).count();
        assert!(
            quiet >= 1 && firing >= 1,
            "{alert}: {firing} firing and {quiet} quiet cases"
        );
    }
}

// ---- a real Prometheus -----------------------------------------------------------

/// A Prometheus started for one test, on an ephemeral port with its own data directory.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(bin: &Path, target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = Path::new(OPS).join("prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: cardgate\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.canonicalize().unwrap().display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        // The port is free when chosen; another process may take it before Prometheus
        // binds it, so a start that fails is retried on another.
        for _ in 0..5 {
            let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let mut child = Command::new(bin)
                .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start prometheus");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if std::net::TcpStream::connect(addr).is_ok() && http(addr, "GET", "/-/ready", None, "", b"").0 == 200 {
                    return Prometheus { child, addr, _dir: dir };
                }
                assert!(Instant::now() < deadline, "prometheus did not become ready");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!(
            "prometheus did not start:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
    }

    /// `GET path` as JSON, asserting Prometheus answered with success.
    fn get(&self, path: &str) -> Value {
        let (status, body) = http(self.addr, "GET", path, None, "", b"");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(status == 200 && v["status"] == "success", "GET {path}: {status} {body}");
        v["data"].clone()
    }

    /// An instant query's result: the series (or the scalar) it returned.
    fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.get(&format!("/api/v1/query?query={}", percent_encode(expr)));
        match data["resultType"].as_str() {
            Some("scalar" | "string") => vec![data["result"].clone()],
            _ => data["result"].as_array().cloned().unwrap_or_default(),
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The series an expression compares, without its thresholds: the operands of its
/// top-level comparison (`>`, `<`, `>=`, `<=`, `==`, `!=`) and set (`and`, `or`,
/// `unless`) operators, minus number literals. An alert's expression returns nothing
/// while it does not fire; its operands must return data whenever the gateway is up.
fn operands(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut parts = Vec::new();
    let (mut depth, mut start, mut i) = (0i32, 0usize, 0usize);
    let mut quote = None;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' | b'\'' | b'`' => quote = Some(c),
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            let rest = &expr[i..];
            let op = [">=", "<=", "==", "!=", ">", "<", " and ", " or ", " unless "]
                .into_iter()
                .find(|op| rest.starts_with(op));
            if let Some(op) = op {
                parts.push(expr[start..i].trim().to_string());
                i += op.len();
                start = i;
                continue;
            }
        }
        i += 1;
    }
    parts.push(expr[start..].trim().to_string());
    parts
        .into_iter()
        .filter(|p| !p.is_empty() && p.parse::<f64>().is_err())
        .collect()
}

#[test]
fn operands_strip_thresholds_and_split_set_operators() {
    assert_eq!(
        operands("histogram_quantile(0.99, sum by (le) (rate(x_bucket{kind=\"a>b\"}[5m]))) > 0.01"),
        ["histogram_quantile(0.99, sum by (le) (rate(x_bucket{kind=\"a>b\"}[5m])))"]
    );
    assert_eq!(operands("a / b < 0.1"), ["a / b"]);
    assert_eq!(operands("up{job=\"x\"} == 0"), ["up{job=\"x\"}"]);
    assert_eq!(operands("deriv(a[10m]) > 1 and a > 10000"), ["deriv(a[10m])", "a"]);
    assert_eq!(operands("sum(rate(a[1m]))"), ["sum(rate(a[1m]))"]);
}

/// Every `expr` of every panel's targets, with the dashboard's variables set as for a
/// Grafana showing every gateway.
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(targets)) = m.get("targets") {
                    for t in targets {
                        if let Some(e) = t["expr"].as_str() {
                            out.push(e.to_string());
                        }
                    }
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(Path::new(OPS).join("grafana/cardgate.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out.iter()
        .map(|e| e.replace("$instance", ".*").replace("$__rate_interval", "1m"))
        .inspect(|e| assert!(!e.contains('$'), "a variable the test does not set: {e}"))
        .collect()
}

#[tokio::test]
async fn prometheus_scrapes_the_gateway_and_every_dashboard_and_alert_query_returns_data() {
    let Some(bin) = tool("prometheus") else { return };
    let dir = tempfile::tempdir().unwrap();
    let director = operator_add(dir.path(), "zhao", "director").unwrap();
    let d = Daemon::start(dir.path());
    let prometheus = Prometheus::start(&bin, metrics_addr(&d));

    // A small load for as long as Prometheus needs to see rates: terminals, operators.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut round = 0;
    let mut checkpointed = false;
    loop {
        // Even demo terminals from 10 on; `small_load` also signs on the next one with
        // a wrong key. The demo campus has 120.
        small_load(&d, 10 + round % 50 * 2).await;
        round += 1;
        assert_eq!(d.api("GET", "/api/v1/accounts/3", Some(&director), None).0, 200);
        assert_eq!(d.api("GET", "/api/v1/whoami", Some("not-a-token"), None).0, 401);
        tokio::time::sleep(Duration::from_millis(500)).await;
        checkpointed = checkpointed || d.metric("cardgate_checkpoints_total").unwrap_or(0.0) > 0.0;
        let samples = prometheus.query("count_over_time(up{job=\"cardgate\"}[1m])");
        let seen = samples
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if seen >= 8.0 && checkpointed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus saw {seen} scrapes; checkpointed: {checkpointed}"
        );
    }
    let up = prometheus.query("up{job=\"cardgate\"}");
    assert_eq!(
        up.first().map(|s| s["value"][1].clone()),
        Some(Value::from("1")),
        "{up:?}"
    );

    // Every alert rule Prometheus loaded, evaluated without error.
    let alert_count = std::fs::read_to_string(Path::new(OPS).join("prometheus/alerts.yml"))
        .unwrap()
        .lines()
        .filter(|l| l.trim().starts_with("- alert: "))
        .count();
    let rules = loop {
        let groups = prometheus.get("/api/v1/rules")["groups"].clone();
        let rules: Vec<Value> = groups
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        if rules.len() == alert_count && rules.iter().all(|r| r["health"] == "ok") {
            break rules;
        }
        assert!(Instant::now() < deadline, "rules not all loaded and healthy: {rules:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let firing: Vec<&str> = rules
        .iter()
        .filter(|r| r["state"] == "firing")
        .filter_map(|r| r["name"].as_str())
        .collect();
    for quiet in ["CardgateDown", "CardgateJournalPoisoned", "CardgateCentralStuckEntry"] {
        assert!(!firing.contains(&quiet), "{quiet} fires on a healthy gateway");
    }

    let mut queries: Vec<(String, String)> = dashboard_queries()
        .into_iter()
        .map(|q| ("dashboard".to_string(), q))
        .collect();
    assert!(queries.len() >= 30, "only {} dashboard queries", queries.len());
    for r in &rules {
        let name = r["name"].as_str().unwrap();
        let expr = r["query"].as_str().unwrap();
        let parts = operands(expr);
        assert!(!parts.is_empty(), "{name}: nothing to query in {expr}");
        queries.extend(parts.into_iter().map(|p| (format!("alert {name}"), p)));
    }
    let empty: Vec<String> = queries
        .iter()
        .filter(|(_, q)| prometheus.query(q).is_empty())
        .map(|(from, q)| format!("{from}: {q}"))
        .collect();
    assert!(empty.is_empty(), "queries that returned no data:\n{}", empty.join("\n"));
}

// ---- health, readiness, logs -------------------------------------------------------

#[tokio::test]
async fn healthz_is_alive_and_readyz_names_the_failing_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let (status, body) = http(metrics_addr(&d), "GET", "/healthz", None, "", b"");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(metrics_addr(&d), "GET", "/readyz", None, "", b"");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["recovery", "journal", "central", "central_stuck_entry"]);
    drop(d);

    // A central store that cannot be reached, and a bound of no unshipped entry: the
    // first purchase makes the gateway unready, and /readyz says why.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cardgate.toml");
    std::fs::write(&config, "[health]\ncentral_backlog_entries_max = 0\n").unwrap();
    let data = dir.path().join("data");
    let d = Daemon::start_with(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--central",
            "postgres://nobody@127.0.0.1:1/none",
        ],
    );
    let mut t = d.terminal(1).await;
    assert!(matches!(
        t.purchase(1, card(1), 1_00).await.unwrap(),
        Message::Approved(_)
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let (status, body) = http(metrics_addr(&d), "GET", "/readyz", None, "", b"");
        if status != 200 {
            break (status, body);
        }
        assert!(Instant::now() < deadline, "still ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["failing"], serde_json::json!(["central"]), "{body}");
    let central = &v["checks"].as_array().unwrap()[2];
    assert!(central["detail"].as_str().unwrap().contains("unreachable"), "{central}");
    // Terminals are still served: readiness is for operators and orchestrators.
    assert!(matches!(
        t.purchase(2, card(1), 1_00).await.unwrap(),
        Message::Approved(_)
    ));
}

#[tokio::test]
async fn json_logs_state_the_time_zone_and_never_a_whole_card_number() {
    let dir = tempfile::tempdir().unwrap();
    let director = operator_add(dir.path(), "zhao", "director").unwrap();
    let d = Daemon::start_env(dir.path(), &["--log-format", "json"], &[("RUST_LOG", "debug")]);
    // Warm up: the central store connects and logs once.
    small_load(&d, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let info_before = d.log().iter().filter(|l| l.contains("\"level\":\"INFO\"")).count();
    small_load(&d, 3).await;
    small_load(&d, 5).await;
    let lost = card(7).0;
    let (status, body) = d.api(
        "POST",
        &format!("/api/v1/cards/{lost}/lost"),
        Some(&director),
        Some("{}"),
    );
    assert_eq!(status, 200, "{body}");
    let mut t = d.terminal(9).await;
    let m = t.purchase(t.sign_on.last_tx_seq + 1, card(7), 1_00).await.unwrap();
    assert!(matches!(m, Message::Declined(_)), "{m:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = d.log();
    let info_after = log.iter().filter(|l| l.contains("\"level\":\"INFO\"")).count();
    assert_eq!(
        info_after,
        info_before,
        "info lines per transaction:\n{}",
        log.join("\n")
    );
    let mut start_line = None;
    for line in &log {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let ts = v["timestamp"].as_str().unwrap();
        // 2026-11-28T16:05:00.123456+08:00: RFC 3339 in the business time zone.
        assert!(
            ts.len() == 32 && ts.ends_with("+08:00") && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
        if v["fields"]["business_time_zone"] == "UTC+08:00" {
            start_line = Some(line);
        }
    }
    assert!(start_line.is_some(), "no start-up line names the time zone");
    let debug_lines = log.iter().filter(|l| l.contains("\"level\":\"DEBUG\"")).count();
    assert!(debug_lines > 0, "RUST_LOG=debug logged nothing at debug");
    for account in 1..=50u64 {
        let no = card(account).0.to_string();
        assert!(
            !log.iter().any(|l| l.contains(&no)),
            "card {no} in the log:\n{}",
            log.iter()
                .filter(|l| l.contains(&no))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
