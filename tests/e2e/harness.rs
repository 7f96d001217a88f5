#![allow(dead_code)] // each test module uses a different part of the harness
//! Starts the real daemon for a test and tears it down.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cardgate_codec::{CardNo, TerminalSecret};
use cardgate_ledger::demo::{demo_card, demo_secret};
use cardgate_loadtest::client::TerminalClient;

/// Demo campus size the tests use: small, so start-up is instant.
pub const DEMO_ACCOUNTS: u64 = 200;
pub const DEMO_TERMINALS: u64 = 120;
/// Each demo account starts with this balance.
pub const DEMO_BALANCE_FEN: i64 = 1_000_00;

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `cardgate serve`. Killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub data_dir: PathBuf,
    /// Listener addresses by kind, as the daemon logged them ("terminals", "metrics", ...).
    pub addrs: HashMap<String, SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    /// Reads stderr into `log`; ends at the daemon's exit.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts a demo gateway in `data_dir` with every listener on an ephemeral port.
    pub fn start(data_dir: &Path) -> Daemon {
        Daemon::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra_args: &[&str]) -> Daemon {
        Daemon::start_env(data_dir, extra_args, &[])
    }

    /// With extra arguments and environment variables (e.g. `RUST_LOG`).
    pub fn start_env(data_dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = cardgate();
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--demo"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--demo-accounts", &DEMO_ACCOUNTS.to_string()])
            .args(["--demo-terminals", &DEMO_TERMINALS.to_string()])
            .args(extra_args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        Daemon::spawn(cmd, data_dir)
    }

    /// Starts `cmd` (a `cardgate serve` with whatever arguments, environment and working
    /// directory the test chose) and waits until it listens for terminals. `RUST_LOG` is
    /// `info` unless the command sets it.
    pub fn spawn(mut cmd: Command, data_dir: &Path) -> Daemon {
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start cardgate");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some((kind, addr)) = parse_listening(&line) {
                        let _ = tx.send(Some((kind, addr)));
                    }
                    if line.contains("ERROR") || line.contains("panicked") {
                        eprintln!("cardgate: {line}");
                    }
                    log.lock().unwrap().push(line);
                }
                let _ = tx.send(None);
            })
        };
        let mut addrs = HashMap::new();
        let deadline = Instant::now() + START_TIMEOUT;
        while !addrs.contains_key("terminals") {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Some((kind, addr))) => {
                    addrs.insert(kind, addr);
                }
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    panic!("cardgate did not start; log:\n{}", log.lock().unwrap().join("\n"));
                }
            }
        }
        Daemon {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            addrs,
            log,
            reader: Some(reader),
        }
    }

    /// Waits for a log line that `matches` and returns it. The wait is a guard against a
    /// hang, not a measurement: the line either comes or the test fails after a minute.
    pub fn wait_for_log(&self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| matches(l)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no such log line; log:\n{}",
                self.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn terminal_addr(&self) -> SocketAddr {
        self.addrs["terminals"]
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.addrs["admin"]
    }

    /// One admin API call with an optional bearer token and JSON body.
    pub fn api(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
        http(
            self.admin_addr(),
            method,
            path,
            token,
            "application/json",
            body.unwrap_or("").as_bytes(),
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL cardgate");
            c.wait().expect("reap cardgate");
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(self) -> ExitStatus {
        self.terminate_with_log().0
    }

    /// SIGTERM, wait for the exit, and return the whole log, shutdown included.
    pub fn terminate_with_log(mut self) -> (ExitStatus, Vec<String>) {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = c.try_wait().expect("wait cardgate") {
                break status;
            }
            assert!(Instant::now() < deadline, "cardgate did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.log())
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The Prometheus exposition, fetched over plain HTTP.
    pub fn metrics(&self) -> String {
        http_get(self.addrs["metrics"], "/metrics")
    }

    /// The value of one metric line (exact name with labels), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
    }

    /// Signs on demo terminal `id`.
    pub async fn terminal(&self, id: u64) -> TerminalClient {
        TerminalClient::connect(self.terminal_addr(), id, &demo_secret(id))
            .await
            .expect("demo terminal signs on")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    // `--log-format json`: {"fields": {"message": "listening", "kind": ..., "addr": ...}}
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let f = &v["fields"];
        return Some((f["kind"].as_str()?.to_string(), f["addr"].as_str()?.parse().ok()?));
    }
    let kind = line.split("kind=\"").nth(1)?.split('"').next()?.to_string();
    let addr = line.split("addr=").nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some((kind, addr))
}

/// The variables `cardgate serve` reads its configuration from: a test sets the ones it
/// means to, never inherits them from whoever runs the tests.
const CONFIG_VARIABLES: [&str; 6] = [
    "CARDGATE_CONFIG",
    "CARDGATE_LISTEN",
    "CARDGATE_METRICS_LISTEN",
    "CARDGATE_ADMIN_LISTEN",
    "CARDGATE_DATA_DIR",
    "CARDGATE_CENTRAL",
];

/// The `cardgate` binary with a clean configuration environment. Backtraces on, as on
/// many operators' machines: an error must still be one line, and a panic shows.
pub fn cardgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cardgate"));
    c.env("RUST_BACKTRACE", "1").env_remove("RUST_LOG");
    for v in CONFIG_VARIABLES {
        c.env_remove(v);
    }
    c
}

/// `cardgate operator add NAME --role ROLE --data-dir DIR`: the token it prints, or the
/// error it ends with.
pub fn operator_add(data_dir: &Path, name: &str, role: &str) -> Result<String, String> {
    let out = cardgate()
        .args(["operator", "add", name, "--role", role, "--data-dir"])
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run cardgate operator add");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// `cardgate operator add NAME --role ROLE --password-file -` with `password` on its
/// standard input: the token it prints, or the error it ends with.
pub fn operator_add_with_password(data_dir: &Path, name: &str, role: &str, password: &str) -> Result<String, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cardgate"))
        .args([
            "operator",
            "add",
            name,
            "--role",
            role,
            "--password-file",
            "-",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cardgate operator add");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let out = child.wait_with_output().expect("wait for cardgate operator add");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// A minimal HTTP/1.1 client (one request per connection), so that the tests need no
/// HTTP client crate. Returns the status and the body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect for HTTP");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str(&format!(
        "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}

/// A minimal HTTP/1.1 GET, so that the tests need no HTTP client for metrics.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect for HTTP");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    body.to_string()
}

pub fn card(account: u64) -> CardNo {
    demo_card(account)
}

pub fn secret(terminal: u64) -> TerminalSecret {
    demo_secret(terminal)
}

/// One admin API call with a bearer token and, optionally, an Idempotency-Key.
pub fn api_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String) {
    let (status, _, body) = api_exchange(addr, method, path, token, key, body);
    (status, body)
}

/// As `api_request`, with the response's head (status line and headers) as well.
pub fn api_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect for HTTP");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(k) = key {
        req.push_str(&format!("Idempotency-Key: {k}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_string(), rest.to_string())
}
