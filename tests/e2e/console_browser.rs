//! The operator console in a real browser: headless Chromium driven over WebDriver
//! (chromedriver) against the real daemon, as the card desk and the director use it.
//! A card reported lost here is declined at a terminal over the terminal protocol; the
//! consumption CSV is downloaded and read; a CSV with a bad row shows its line; a card
//! desk operator is refused the operators page by the server; a form without its CSRF
//! token changes nothing; sign-out ends the session.
//!
//! Needs `chromium` and `chromium-driver` (Debian's packages). Where they are missing
//! the test says it was skipped, unless `CARDGATE_TEST_BROWSER=1` (set by `.ci/run`),
//! which makes their absence a failure. With `CARDGATE_SCREENSHOTS=1` it writes the
//! screenshots of the main pages into `docs/console/`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cardgate_codec::{DeclineReason, Message};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::console::Jar;
use crate::harness::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Small enough for screenshots worth committing, wide enough for the desk's tables.
const WINDOW: &str = "--window-size=1100,720";

/// chromium and chromedriver, or why the test cannot run.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let chromium = PathBuf::from(std::env::var("CARDGATE_CHROMIUM").unwrap_or_else(|_| CHROMIUM.into()));
    let driver = PathBuf::from(std::env::var("CARDGATE_CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.into()));
    if chromium.exists() && driver.exists() {
        return Some((chromium, driver));
    }
    let why = format!(
        "{} or {} is missing (apt-get install chromium chromium-driver)",
        chromium.display(),
        driver.display()
    );
    if std::env::var("CARDGATE_TEST_BROWSER").is_ok_and(|v| v == "1") {
        panic!("CARDGATE_TEST_BROWSER=1 but {why}");
    }
    eprintln!("console browser test skipped: {why}");
    None
}

/// A chromedriver on a free local port in a process group of its own, killed with the
/// browsers it started when dropped: a failing test must not leave Chromium running.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid; Chromium inherits the group. kill(1)
        // rather than libc: the test crate stays free of unsafe code.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

fn start_driver(path: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

async fn browser(driver: &Driver, chromium: &Path, downloads: &Path) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", WINDOW, "--lang=zh-CN"],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
                "intl.accept_languages": "zh-CN",
            },
        },
    });
    let Value::Object(caps) = caps else { unreachable!() };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session with chromium")
}

/// Where screenshots go: docs/console when asked for, a scratch directory otherwise.
fn shots_dir(scratch: &Path) -> PathBuf {
    if std::env::var("CARDGATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
        std::fs::create_dir_all(&dir).expect("docs/console");
        dir
    } else {
        scratch.to_path_buf()
    }
}

struct Page<'a> {
    c: &'a Client,
    base: String,
    shots: PathBuf,
}

impl Page<'_> {
    async fn goto(&self, path: &str) {
        self.c.goto(&format!("{}{path}", self.base)).await.expect("navigate");
    }

    async fn path(&self) -> String {
        let url = self.c.current_url().await.expect("current url");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    async fn fill(&self, css: &str, text: &str) {
        let e = self
            .c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        e.clear().await.expect("clear");
        e.send_keys(text).await.expect("type");
    }

    /// Clicks something that loads a page, and waits for the new page: every click
    /// in the console is a link or a form's button.
    async fn click(&self, css: &str) {
        self.c
            .execute("window.cardgateOldPage = true", vec![])
            .await
            .expect("mark the page");
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .expect("click");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let fresh = self
                .c
                .execute(
                    "return window.cardgateOldPage === undefined && document.readyState === 'complete'",
                    vec![],
                )
                .await;
            if matches!(fresh, Ok(Value::Bool(true))) {
                return;
            }
            assert!(Instant::now() < deadline, "clicking {css} loaded no page");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        match self.c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.expect("text"),
            Err(e) => {
                let source = self.c.source().await.unwrap_or_default();
                panic!("{css} on {}: {e}\n{source}", self.path().await)
            }
        }
    }

    async fn has(&self, css: &str) -> bool {
        !self.c.find_all(Locator::Css(css)).await.expect("find").is_empty()
    }

    async fn shot(&self, name: &str) {
        let png = self.c.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Signs in; lands wherever the console sends a fresh session.
    async fn sign_in(&self, name: &str, password: &str) {
        self.goto("/console/sign-in").await;
        self.fill("#name", name).await;
        self.fill("#password", password).await;
        self.click("#sign-in-button").await;
    }

    /// The first sign-in with a password someone else set: choose one's own.
    async fn choose_password(&self, current: &str, new: &str) {
        assert_eq!(self.path().await, "/console/password", "asked for a new password first");
        self.fill("input[name=current]", current).await;
        self.fill("input[name=password]", new).await;
        self.fill("input[name=repeat]", new).await;
        self.click("main form.card button").await;
        assert!(self.text(".notice.ok").await.contains("密码已修改"));
    }
}

fn declined(m: &Message) -> Option<DeclineReason> {
    match m {
        Message::Declined(d) => Some(d.reason),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_desk_and_the_director_in_a_real_browser() {
    // The card page shows spent-today.
    crate::business_day::today_lasts_the_test();
    let Some((chromium, driver_path)) = browser_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let downloads = scratch.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let director = operator_add_with_password(dir.path(), "zhao", "director", "zhao-first-1").unwrap();
    operator_add_with_password(dir.path(), "wang", "card_desk", "wang-first-1").unwrap();
    let d = Daemon::start(dir.path());
    let driver = start_driver(&driver_path);
    let c = browser(&driver, &chromium, &downloads).await;
    let p = Page {
        c: &c,
        base: format!("http://{}", d.admin_addr()),
        shots: shots_dir(scratch.path()),
    };
    let account = 7;
    let card = card(account).0;
    let balance = |d: &Daemon| {
        let (_, body) = d.api("GET", &format!("/api/v1/accounts/{account}"), Some(&director), None);
        serde_json::from_str::<Value>(&body).unwrap()["account"]["balance"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Sign in; the password the command line set must be replaced first.
    p.goto("/console").await;
    assert!(p.path().await.starts_with("/console/sign-in"));
    p.fill("#name", "zhao").await;
    p.shot("sign-in").await;
    p.fill("#password", "zhao-first-1").await;
    p.click("#sign-in-button").await;
    p.choose_password("zhao-first-1", "zhao-own-22").await;

    // Find the card.
    p.goto("/console/desk").await;
    p.fill("#q", &card.to_string()).await;
    p.click("#search button").await;
    assert_eq!(p.path().await, format!("/console/desk/account/{account}"));
    assert_eq!(p.text("#balance").await, "1000.00");
    p.shot("desk-account").await;

    // Report it lost: the review says what happens, the answer what happened.
    p.click(&format!("#lost-{card}")).await;
    assert!(p.text("main").await.contains("挂失后"));
    p.shot("confirm-lost").await;
    p.click("#confirm-button").await;
    assert_eq!(p.text("#result-cards .status-lost").await, "挂失");
    let mut t = d.terminal(3).await;
    assert_eq!(
        declined(&t.purchase(1, cardgate_codec::CardNo(card), 12_50).await.unwrap()),
        Some(DeclineReason::CardLost),
        "declined at the terminal from the moment the page answered"
    );

    // Unfreeze: the terminal takes it again.
    p.click("#back").await;
    p.click(&format!("#unfreeze-{card}")).await;
    p.click("#confirm-button").await;
    assert_eq!(p.text("#result-cards .status-active").await, "正常");
    let m = t.purchase(2, cardgate_codec::CardNo(card), 12_50).await.unwrap();
    assert!(matches!(m, Message::Approved(_)), "{m:?}");

    // Top up, confirmed, and see the balance.
    p.click("#back").await;
    assert_eq!(p.text("#balance").await, "987.50");
    assert_eq!(p.text("#spent-today").await, "12.50");
    p.fill("#topup-amount", "100").await;
    p.click("#topup button").await;
    assert_eq!(p.text("#review-amount").await, "100.00");
    assert_eq!(p.text("#review-balance").await, "1087.50");
    p.shot("confirm-topup").await;
    assert_eq!(balance(&d), "987.50", "nothing moves before the confirmation");
    p.click("#confirm-button").await;
    assert_eq!(p.text("#result-balance").await, "1087.50");
    assert!(p.text("#result-tx").await.parse::<u64>().unwrap() > 0, "a tx id");
    p.shot("topup-result").await;
    assert_eq!(balance(&d), "1087.50");

    // Consumption details, as a table and as a CSV file.
    p.goto(&format!("/console/history?card={card}")).await;
    let table = p.text("#history").await;
    assert!(table.contains("-12.50") && table.contains("card_lost"), "{table}");
    p.shot("history").await;
    // A download loads no page: a plain click.
    c.find(Locator::Css("#history-csv"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let file = downloads.join(format!("transactions-card-{card}.csv"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !file.exists() {
        assert!(Instant::now() < deadline, "the CSV was not downloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let csv = std::fs::read_to_string(&file).unwrap();
    assert!(csv.starts_with("time,kind,outcome,decline_reason,amount,balance_change,balance_after,card"));
    let purchases: Vec<&str> = csv.lines().filter(|l| l.contains(",purchase,")).collect();
    assert_eq!(purchases.len(), 2, "{csv}");
    assert!(
        purchases.iter().any(|l| l.contains(",declined,card_lost,12.50,0.00,")),
        "{csv}"
    );
    assert!(
        purchases.iter().any(|l| l.contains(",approved,,12.50,-12.50,987.50,")),
        "{csv}"
    );

    // A CSV import with a bad row: its line and column, and nothing imported.
    let bad = scratch.path().join("cs-2025.csv");
    std::fs::write(
        &bad,
        "person_id,name,department,kind,card_no\n2025001,张三,计算机学院,student,62220000100001\n2025002,李四,物理学院,alien,62220000100002\n",
    )
    .unwrap();
    p.goto("/console/import").await;
    c.find(Locator::Css("#file"))
        .await
        .unwrap()
        .send_keys(bad.to_str().unwrap())
        .await
        .unwrap();
    p.click("#check").await;
    assert_eq!(p.text("#errors td.line").await, "3");
    assert_eq!(p.text("#errors td.column").await, "kind");
    assert!(!p.has("#import-button").await, "no import while the file has errors");
    p.shot("import-errors").await;
    let (st, _) = d.api("GET", "/api/v1/persons/2025001", Some(&director), None);
    assert_eq!(st, 404, "nothing was imported");

    // The system admin's and the director's pages.
    p.goto("/console/terminals").await;
    assert!(p.text("#connected").await.parse::<u64>().unwrap() >= 1, "our terminal");
    p.shot("terminals").await;
    p.goto("/console/operators").await;
    assert!(p.text("#operators").await.contains("wang"));
    p.shot("operators").await;
    p.goto("/console/audit?operator=zhao").await;
    let audit = p.text("#audit").await;
    assert!(audit.contains("money.topup") && audit.contains("card.lost") && audit.contains("console.sign_in"));
    p.shot("audit").await;
    // The door pages, as the director sees them too.
    p.goto("/console/doors/permissions?door_group=2").await;
    assert!(p.text("#permissions").await.contains("Demo: always"));
    p.shot("door-permissions").await;

    // English on request.
    p.click("header a.lang").await;
    assert!(p.text("header nav").await.contains("Card desk"));
    p.click("header a.lang").await;
    assert!(p.text("header nav").await.contains("卡务窗口"));

    // A form without its CSRF token is refused and changes nothing.
    p.goto(&format!("/console/desk/account/{account}")).await;
    c.execute("document.querySelector('#topup input[name=csrf]').remove()", vec![])
        .await
        .unwrap();
    p.fill("#topup-amount", "5").await;
    p.click("#topup button").await;
    assert_eq!(p.text("h1").await, "表单无效");
    assert_eq!(balance(&d), "1087.50");

    // Sign-out ends the session: the desk sends the browser to sign in.
    p.click("#sign-out").await;
    assert!(p.path().await.starts_with("/console/sign-in"));
    p.goto("/console/desk").await;
    assert!(p.path().await.starts_with("/console/sign-in"), "{}", p.path().await);

    // A card desk operator: no operators link, and the server refuses the typed URL.
    p.sign_in("wang", "wang-first-1").await;
    p.choose_password("wang-first-1", "wang-own-22").await;
    p.goto("/console/desk").await;
    assert!(!p.has("a[href='/console/operators']").await, "no link drawn");
    p.goto("/console/operators").await;
    assert_eq!(p.text("h1").await, "无权访问");
    let session = c.get_named_cookie("cg_session").await.expect("signed in");
    let mut jar = Jar::new(d.admin_addr());
    jar.cookies.insert("cg_session".into(), session.value().to_string());
    assert_eq!(
        jar.get("/console/operators").status,
        403,
        "the server refuses, not just the page"
    );
    assert_eq!(jar.get("/console/desk").status, 200, "with a session that works");

    c.close().await.expect("close the browser");
    drop(driver);
}
