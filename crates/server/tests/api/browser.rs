//! A real headless Chromium for the tests, driven over WebDriver.
//!
//! * [`Browser::launch`] starts Debian's `chromedriver` on a free loopback
//!   port, which starts `chromium` with a fresh, empty profile (its own
//!   `--user-data-dir`), and opens a WebDriver session on it with
//!   [fantoccini](https://docs.rs/fantoccini). Its methods cover what tests
//!   do most (go to a page, find, click, read text, cookies, screenshots);
//!   [`Browser::client`] is fantoccini's client for everything else.
//! * [`Site`] serves a few HTML pages from a free loopback port: an origin
//!   other than the application's, as a publisher's page is.
//!
//! Chromium runs with the flags this machine needs (`--headless=new
//! --no-sandbox --disable-gpu --disable-quic --no-first-run
//! --disable-background-networking --disable-component-update
//! --disable-sync`: without the network ones it tries, and fails, to reach
//! Google's hosts at every start). What it does with third-party cookies is
//! set explicitly ([`BrowserOptions::third_party_cookies`]), because
//! Chromium 156's own default for a fresh headless profile is to block them.
//!
//! `chromium` and `chromedriver` must be installed (CI's `.ci/run` installs
//! them); without them a browser test fails saying how to install them,
//! never skips. `CHROMIUM` and `CHROMEDRIVER` name other binaries.
//!
//! Nothing is left behind: [`Browser::close`] ends the session (Chromium
//! exits); dropping a `Browser` (a failed test) asks chromedriver to end the
//! session, then kills chromedriver's process group, which holds every
//! Chromium process; a small `sh` watchdog in that group kills it too if
//! the test process dies first. At most [`MAX_BROWSERS`] run at once in the
//! test process, so a parallel test run does not start one per test on a
//! 2-core machine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::http::Method;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most browsers alive at once in the test process.
pub const MAX_BROWSERS: usize = 2;

/// How a browser is started.
#[derive(Clone, Debug)]
pub struct BrowserOptions {
    /// Whether cookies may be set and sent in third-party contexts (an
    /// `<img>` from another site). `false` adds
    /// `--test-third-party-cookie-phaseout`, Chromium's switch that blocks
    /// them whatever the profile says.
    pub third_party_cookies: bool,
    /// Replaces Chromium's `User-Agent`.
    pub user_agent: Option<String>,
    /// Viewport size in CSS pixels, at a device scale of 1 (screenshots
    /// are this size).
    pub window: (u32, u32),
    /// More Chromium switches.
    pub extra_args: Vec<String>,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        BrowserOptions {
            third_party_cookies: true,
            user_agent: None,
            window: (1280, 800),
            extra_args: Vec::new(),
        }
    }
}

/// A cookie as the browser holds it (from the DevTools protocol, so
/// `HttpOnly` and third-party cookies are included).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredCookie {
    pub name: String,
    pub value: String,
    pub domain: String,
    pub path: String,
    pub secure: bool,
    pub http_only: bool,
    /// `None`, `Lax`, `Strict`, or absent when the cookie did not say.
    pub same_site: Option<String>,
    /// Seconds since the epoch; `None` for a session cookie.
    pub expires: Option<f64>,
}

/// A running Chromium with a WebDriver session.
pub struct Browser {
    client: Option<Client>,
    driver: Driver,
    session: Option<String>,
    _profile: tempfile::TempDir,
    _slot: OwnedSemaphorePermit,
}

/// `chromedriver` under its watchdog, leader of its own process group.
struct Driver {
    watchdog: Child,
    port: u16,
}

impl Browser {
    /// Starts a browser with default options.
    pub async fn launch() -> Browser {
        Self::launch_with(BrowserOptions::default()).await
    }

    /// Starts a browser with `options`.
    pub async fn launch_with(options: BrowserOptions) -> Browser {
        let (chromium, chromedriver) = binaries();
        let slot = slots()
            .clone()
            .acquire_owned()
            .await
            .expect("the browser slots are never closed");
        let profile = tempfile::tempdir().expect("a temporary profile directory");
        let driver = Driver::start(&chromedriver);

        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--hide-scrollbars".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={},{}", options.window.0, options.window.1),
        ];
        if !options.third_party_cookies {
            args.push("--test-third-party-cookie-phaseout".into());
        }
        if let Some(ua) = &options.user_agent {
            args.push(format!("--user-agent={ua}"));
        }
        args.extend(options.extra_args.iter().cloned());
        // cookie_controls_mode: 0 allows third-party cookies, 1 blocks
        // them, 2 blocks them in incognito only. Chromium 156 blocks them
        // in a fresh headless profile unless told (found by trying: with no
        // preference a cross-site <img>'s SameSite=None; Secure cookie was
        // neither stored nor sent). The blocking switch above overrides
        // the preference, so the two kinds of browser differ by it alone.
        let chrome_options = json!({
            "binary": chromium,
            "args": args,
            "prefs": { "profile.cookie_controls_mode": 0 },
        });
        let mut capabilities = Capabilities::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), chrome_options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start Chromium ({}): {e}",
                    chromium.display()
                )
            });
        let session = client.session_id().await.ok().flatten();
        let browser = Browser {
            client: Some(client),
            driver,
            session,
            _profile: profile,
            _slot: slot,
        };
        // `--window-size` sizes the window, and headless Chromium still
        // takes room for its (invisible) toolbars from it: pin the viewport
        // itself, so pages and screenshots have the size asked for.
        let (width, height) = options.window;
        browser
            .cdp(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
            )
            .await;
        browser
    }

    /// fantoccini's client, for what the methods here do not cover.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the browser is open")
    }

    /// Loads `url` and waits for its `load` event (images included).
    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("loading {url}: {e}"));
    }

    /// The element matching the CSS `selector`, waiting (at most 10 s) for
    /// it to appear.
    pub async fn find(&self, selector: &str) -> fantoccini::elements::Element {
        self.client()
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("no element {selector:?}: {e}"))
    }

    /// Clicks the element matching `selector`.
    pub async fn click(&self, selector: &str) {
        self.find(selector)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {selector:?}: {e}"));
    }

    /// The visible text of the element matching `selector`.
    pub async fn text(&self, selector: &str) -> String {
        self.find(selector)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("reading {selector:?}: {e}"))
    }

    /// Runs `script` in the page and returns its result.
    pub async fn eval(&self, script: &str) -> Value {
        self.client()
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("running {script:?}: {e}"))
    }

    /// Every cookie the browser holds, for every site (not only the
    /// current page's, which is all WebDriver itself shows).
    pub async fn all_cookies(&self) -> Vec<StoredCookie> {
        let reply = self.cdp("Storage.getCookies", json!({})).await;
        let cookies = reply["cookies"].as_array().cloned().unwrap_or_default();
        cookies
            .iter()
            .map(|c| StoredCookie {
                name: c["name"].as_str().unwrap_or_default().to_owned(),
                value: c["value"].as_str().unwrap_or_default().to_owned(),
                domain: c["domain"].as_str().unwrap_or_default().to_owned(),
                path: c["path"].as_str().unwrap_or_default().to_owned(),
                secure: c["secure"].as_bool().unwrap_or(false),
                http_only: c["httpOnly"].as_bool().unwrap_or(false),
                same_site: c["sameSite"].as_str().map(str::to_owned),
                expires: c["expires"]
                    .as_f64()
                    .filter(|_| !c["session"].as_bool().unwrap_or(false)),
            })
            .collect()
    }

    /// Sends a DevTools protocol command (through chromedriver) and returns
    /// its result.
    pub async fn cdp(&self, method: &str, params: Value) -> Value {
        self.client()
            .issue_cmd(Cdp {
                method: method.to_owned(),
                params,
            })
            .await
            .unwrap_or_else(|e| panic!("DevTools {method}: {e}"))
    }

    /// A PNG of the viewport, saved as `target/browser-screenshots/<name>.png`
    /// for people to look at; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client()
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("taking a screenshot: {e}"));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "the screenshot is a PNG"
        );
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is written");
        path
    }

    /// Ends the session: Chromium exits, then chromedriver is stopped.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            client
                .close()
                .await
                .unwrap_or_else(|e| panic!("closing the browser: {e}"));
        }
        self.session = None;
        // Drop stops chromedriver.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a failed test: ask chromedriver to end the session (so
        // Chromium exits cleanly) before its whole group is killed.
        if let Some(session) = self.session.take() {
            delete_session(self.driver.port, &session);
        }
    }
}

impl Driver {
    fn start(chromedriver: &Path) -> Driver {
        let port = free_port();
        // The watchdog leads a process group holding chromedriver and so
        // every Chromium process it starts; when the test process (or
        // chromedriver) is gone, it kills the whole group, itself included.
        let script = r#"
            parent=$1; shift
            "$@" >/dev/null 2>&1 &
            d=$!
            echo ready
            while kill -0 "$parent" 2>/dev/null && kill -0 "$d" 2>/dev/null; do sleep 0.2; done
            kill -9 0
        "#;
        let mut watchdog = {
            use std::os::unix::process::CommandExt;
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("watchdog")
                .arg(std::process::id().to_string())
                .arg(chromedriver)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("sh runs")
        };
        if let Some(out) = watchdog.stdout.take() {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let driver = Driver { watchdog, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !driver.ready() {
            assert!(
                Instant::now() < deadline,
                "chromedriver ({}) did not answer on port {port}",
                chromedriver.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    /// Whether chromedriver answers `GET /status` with `ready`.
    fn ready(&self) -> bool {
        http_request(self.port, "GET", "/status")
            .is_some_and(|reply| reply.contains("\"ready\":true"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.watchdog.id());
        let _ = Command::new("kill").args(["-9", "--", &group]).status();
        let _ = self.watchdog.wait();
    }
}

/// `DELETE /session/{id}`, synchronously (from `Drop`, outside any runtime).
fn delete_session(port: u16, session: &str) {
    let _ = http_request(port, "DELETE", &format!("/session/{session}"));
}

/// A bodiless HTTP/1.1 request to chromedriver; the reply's body, if any.
/// The body is read by its `Content-Length`: chromedriver answers
/// `Connection: close` but keeps the connection open.
fn http_request(port: u16, method: &str, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())?;
        if body.len() >= length {
            return Some(body.to_owned());
        }
    }
}

/// A DevTools protocol command, through chromedriver's
/// `POST /session/{id}/goog/cdp/execute`.
#[derive(Debug)]
struct Cdp {
    method: String,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        let body = json!({ "cmd": self.method, "params": self.params });
        (Method::POST, Some(body.to_string()))
    }
}

/// Where screenshots go: `target/browser-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("browser-screenshots")
}

/// The browser slots of this test process.
fn slots() -> &'static std::sync::Arc<Semaphore> {
    static SLOTS: OnceLock<std::sync::Arc<Semaphore>> = OnceLock::new();
    SLOTS.get_or_init(|| std::sync::Arc::new(Semaphore::new(MAX_BROWSERS)))
}

/// Chromium and chromedriver, or a failure saying how to install them.
fn binaries() -> (PathBuf, PathBuf) {
    let find = |var: &str, default: &str| -> Option<PathBuf> {
        let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
        path.is_file().then_some(path)
    };
    let chromium = find("CHROMIUM", "/usr/bin/chromium");
    let chromedriver = find("CHROMEDRIVER", "/usr/bin/chromedriver");
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => (chromium, chromedriver),
        (chromium, chromedriver) => panic!(
            "the browser tests need Chromium and ChromeDriver ({} missing): install Debian's \
             packages with `sudo apt-get install chromium chromium-driver` (CI's .ci/run does), \
             or set CHROMIUM and CHROMEDRIVER to the binaries of one matching version",
            [
                chromium
                    .is_none()
                    .then_some("chromium (CHROMIUM, /usr/bin/chromium)"),
                chromedriver
                    .is_none()
                    .then_some("chromedriver (CHROMEDRIVER, /usr/bin/chromedriver)"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ")
        ),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// HTML pages served from a free loopback port, until dropped.
pub struct Site {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    server: tokio::task::JoinHandle<()>,
}

impl Site {
    /// Serves each `(path, html)` page; any other path is a 404.
    pub async fn serve(pages: Vec<(&'static str, String)>) -> Site {
        let mut router = axum::Router::new();
        for (path, html) in pages {
            router = router.route(
                path,
                axum::routing::get(move || {
                    let html = html.clone();
                    async move { axum::response::Html(html) }
                }),
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener.local_addr().expect("its address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Site {
            base: format!("http://{addr}"),
            server,
        }
    }

    /// The URL of `path` on this site.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The harness itself, as later browser tests (the dashboard) will use it:
/// a page on a [`Site`], a click, text read back, a screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_clicks_reads_text_and_takes_screenshots() {
    let page = r#"<!doctype html><html><body style="font: 24px sans-serif; margin: 40px">
        <h1>Harness</h1><p>Clicked <span id="count">0</span> times.</p>
        <button id="more" onclick="let c = document.getElementById('count');
            c.textContent = Number(c.textContent) + 1">More</button></body></html>"#;
    let site = Site::serve(vec![("/", page.to_owned())]).await;
    let browser = Browser::launch().await;
    browser.goto(&site.url("/")).await;
    assert_eq!(browser.text("#count").await, "0");
    browser.click("#more").await;
    browser.click("#more").await;
    assert_eq!(browser.text("#count").await, "2");
    assert_eq!(browser.eval("return document.title === ''").await, true);
    let path = browser.screenshot("harness-self-test").await;
    assert!(path.starts_with(screenshot_dir()));
    let png = std::fs::read(&path).unwrap();
    let dimension = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    // IHDR: the window's size, so the page was really rendered at it.
    assert_eq!((dimension(16), dimension(20)), (1280, 800));
    browser.close().await;
}
