//! The pixel's ids for browsers that bring none (`PIXEL_ID`): the minted
//! cookie, the daily hashed id, the client address behind trusted proxies,
//! and where the secret behind them lives. The same in a real browser:
//! `pixel_browser.rs`.

use std::sync::Arc;
use std::time::Duration;

use impression_core::{Clock, ManualClock};
use impression_counter::storage;
use reqwest::StatusCode;

use crate::backends::Backend;
use crate::helpers::{
    T0, TestApp, config, counted_total, eventually, metric, spawn_app_on, spawn_app_with,
};
use crate::process::ServerProcess;

/// A pixel request as a browser would send it: no `user_id`, the given
/// `User-Agent`, and the cookie if it has one.
async fn view(app: &TestApp, c: &str, user_agent: &str, cookie: Option<&str>) -> reqwest::Response {
    view_with(
        app,
        &format!("campaign_id={c}&ad_id=banner-1"),
        user_agent,
        cookie,
        &[],
    )
    .await
}

async fn view_with(
    app: &TestApp,
    query: &str,
    user_agent: &str,
    cookie: Option<&str>,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = app
        .client
        .get(app.url(&format!("/api/v1/impressions/pixel.gif?{query}")))
        .header("user-agent", user_agent);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// The `Set-Cookie` header, if any (at most one).
fn set_cookie(response: &reqwest::Response) -> Option<String> {
    let all: Vec<_> = response.headers().get_all("set-cookie").iter().collect();
    assert!(all.len() <= 1, "one cookie at most: {all:?}");
    all.first().map(|v| v.to_str().unwrap().to_owned())
}

/// The id a `Set-Cookie` for cookie `name` gives, checked to be a hashed id.
fn cookie_value(set_cookie: &str, name: &str) -> String {
    let value = set_cookie
        .strip_prefix(&format!("{name}="))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("a {name} cookie: {set_cookie}"));
    assert_eq!(value.len(), 32, "{set_cookie}");
    assert!(
        value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    );
    value.to_owned()
}

/// The id minted for a browser (cookie mode), from its `Set-Cookie`.
async fn minted(app: &TestApp, c: &str, user_agent: &str) -> String {
    minted_with(app, c, user_agent, &[]).await
}

async fn minted_with(app: &TestApp, c: &str, user_agent: &str, extra: &[(&str, &str)]) -> String {
    let query = format!("campaign_id={c}&ad_id=banner-1");
    let response = view_with(app, &query, user_agent, None, extra).await;
    assert_eq!(response.status(), StatusCode::OK);
    cookie_value(&set_cookie(&response).expect("a cookie is offered"), "uid")
}

async fn wait_counted(app: &TestApp, c: &str, total: u64) {
    eventually(Duration::from_secs(5), || async {
        app.counts(c).await.2 == total
    })
    .await;
}

async fn wait_duplicates(app: &TestApp, n: u64) {
    eventually(Duration::from_secs(5), || async {
        metric(&app.metrics().await, "impressions_duplicate_total") == Some(n)
    })
    .await;
}

#[tokio::test]
async fn a_browser_without_an_id_is_given_one_and_deduplicated_by_it() {
    let app = spawn_app_with(&[]).await;
    let c = app.create_campaign("c").await;

    let first = view(&app, &c, "Browser/1", None).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("x-impression-error").is_none());
    let header = set_cookie(&first).expect("an id cookie on first sight");
    let id = cookie_value(&header, "uid");
    assert_eq!(
        header,
        format!("uid={id}; Max-Age=31536000; Path=/; HttpOnly; SameSite=None; Secure")
    );
    wait_counted(&app, &c, 1).await;

    // The browser keeps the cookie: deduplicated like any user, and not
    // offered the cookie again.
    let again = view(&app, &c, "Browser/1", Some(&format!("uid={id}"))).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(set_cookie(&again), None);
    // It refused the cookie: the same id again, so deduplicated all the same.
    assert_eq!(minted(&app, &c, "Browser/1").await, id);
    wait_duplicates(&app, 2).await;
    assert_eq!(app.counts(&c).await.2, 1);
    // The impression was counted under exactly that id.
    assert_eq!(app.track_and_wait(&c, &id, "banner-1").await, "duplicate");

    // Another browser is another viewer.
    let other = minted(&app, &c, "Browser/2").await;
    assert_ne!(other, id);
    wait_counted(&app, &c, 2).await;
    let text = app.metrics().await;
    assert_eq!(
        metric(&text, r#"impressions_counted_total{id_source="minted"}"#),
        Some(2),
        "{text}"
    );
}

#[tokio::test]
async fn every_cookie_setting_shows_in_set_cookie() {
    let app = spawn_app_with(&[
        "--pixel-cookie",
        "vid",
        "--pixel-cookie-max-age",
        "30d",
        "--pixel-cookie-domain",
        "Counter.Example",
        "--pixel-cookie-secure",
        "false",
    ])
    .await;
    let c = app.create_campaign("c").await;
    let response = view(&app, &c, "Browser/1", None).await;
    let header = set_cookie(&response).unwrap();
    let id = cookie_value(&header, "vid");
    // Without Secure, SameSite=None would be refused by browsers: Lax.
    assert_eq!(
        header,
        format!(
            "vid={id}; Max-Age=2592000; Path=/; Domain=counter.example; HttpOnly; SameSite=Lax"
        )
    );
    // The configured name is the one read back.
    let again = view(&app, &c, "Browser/1", Some(&format!("uid=x; vid={id}"))).await;
    assert_eq!(set_cookie(&again), None);
    wait_duplicates(&app, 1).await;
}

#[tokio::test]
async fn hash_mode_counts_each_browser_once_and_sets_no_cookie() {
    let app = spawn_app_with(&["--pixel-id", "hash"]).await;
    let c = app.create_campaign("c").await;
    for _ in 0..3 {
        let response = view(&app, &c, "Browser/1", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(set_cookie(&response), None);
    }
    let response = view(&app, &c, "Browser/2", None).await;
    assert_eq!(set_cookie(&response), None);
    wait_counted(&app, &c, 2).await;
    wait_duplicates(&app, 2).await;
    let text = app.metrics().await;
    assert_eq!(
        metric(&text, r#"impressions_counted_total{id_source="hash"}"#),
        Some(2)
    );
    assert_eq!(counted_total(&text), 2);
}

#[tokio::test]
async fn the_id_source_labels_the_counted_metric() {
    let cookie_app = spawn_app_with(&[]).await;
    let hash_app = spawn_app_with(&["--pixel-id", "hash"]).await;
    let c = cookie_app.create_campaign("c").await;
    let h = hash_app.create_campaign("h").await;
    let q = format!("campaign_id={c}&ad_id=a");
    view_with(
        &cookie_app,
        &format!("{q}&user_id=from-url"),
        "B",
        None,
        &[],
    )
    .await;
    view_with(&cookie_app, &q, "B", Some("uid=from-cookie"), &[]).await;
    view(&cookie_app, &c, "B", None).await;
    cookie_app.track_and_wait(&c, "from-body", "a").await;
    view(&hash_app, &h, "B", None).await;
    wait_counted(&cookie_app, &c, 4).await;
    wait_counted(&hash_app, &h, 1).await;
    let text = cookie_app.metrics().await;
    for (source, n) in [
        ("body", 1),
        ("url", 1),
        ("cookie", 1),
        ("minted", 1),
        ("hash", 0),
    ] {
        let series = format!("impressions_counted_total{{id_source=\"{source}\"}}");
        assert_eq!(metric(&text, &series), Some(n), "{series} in\n{text}");
    }
    let text = hash_app.metrics().await;
    assert_eq!(
        metric(&text, r#"impressions_counted_total{id_source="hash"}"#),
        Some(1)
    );
    assert_eq!(counted_total(&text), 1);
}

/// The key is the UTC day's: the same id all day long, another from
/// midnight on; the clock is the application's (a manual one here).
#[tokio::test]
async fn the_hashed_id_changes_at_utc_midnight_and_only_then() {
    let app = spawn_app_with(&[]).await;
    let c = app.create_campaign("c").await;
    // T0 is 2025-01-01T00:00:00Z.
    let morning = minted(&app, &c, "Browser/1").await;
    app.clock.advance(Duration::from_secs(24 * 3600 - 1));
    assert_eq!(minted(&app, &c, "Browser/1").await, morning, "23:59:59");
    app.clock.advance(Duration::from_secs(1));
    let next_day = minted(&app, &c, "Browser/1").await;
    assert_ne!(next_day, morning, "2025-01-02T00:00:00Z");
    // Both days' impressions counted: the TTL (1h) had passed anyway, and
    // the two ids are two keys.
    wait_counted(&app, &c, 3).await;
    app.clock.advance(Duration::from_secs(3600));
    assert_eq!(minted(&app, &c, "Browser/1").await, next_day);
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    // The test client connects from 127.0.0.1.
    let trusting = spawn_app_with(&["--trusted-proxies", "10.0.0.0/8,127.0.0.0/8"]).await;
    let c = trusting.create_campaign("c").await;
    let xff = |value: &'static str| [("x-forwarded-for", value)];
    let direct = minted(&trusting, &c, "B").await;
    let client_a = minted_with(&trusting, &c, "B", &xff("203.0.113.7")).await;
    let client_b = minted_with(&trusting, &c, "B", &xff("198.51.100.1")).await;
    assert_ne!(client_a, direct);
    assert_ne!(client_a, client_b);
    // A client's own claim left of the proxy's entry changes nothing; a
    // further trusted hop is skipped.
    let spoofing = minted_with(&trusting, &c, "B", &xff("192.0.2.1, 203.0.113.7")).await;
    assert_eq!(spoofing, client_a);
    let two_hops = minted_with(&trusting, &c, "B", &xff("203.0.113.7, 10.1.1.1")).await;
    assert_eq!(two_hops, client_a);

    // From a peer that is not trusted, the header is ignored.
    let wary = spawn_app_with(&["--trusted-proxies", "10.0.0.0/8"]).await;
    let w = wary.create_campaign("w").await;
    let plain = minted(&wary, &w, "B").await;
    for claim in ["203.0.113.7", "198.51.100.1", "::1"] {
        assert_eq!(
            minted_with(&wary, &w, "B", &xff(claim)).await,
            plain,
            "{claim}"
        );
    }
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_ipv6_peer() {
    let flags = [
        "impression-counter",
        "--server-port",
        "0",
        "--bind-addr",
        "::1",
        "--storage",
        "memory",
        "--trusted-proxies",
        "::1",
    ];
    let config = <impression_counter::config::Config as clap::Parser>::try_parse_from(flags)
        .expect("valid configuration");
    let store = storage::open(
        &config.storage(),
        Arc::new(ManualClock::new(T0)) as Arc<dyn Clock>,
    )
    .await
    .unwrap();
    let app = spawn_app_on(config, store).await;
    assert!(app.base.starts_with("http://[::1]:"), "{}", app.base);
    let c = app.create_campaign("c").await;
    let direct = minted(&app, &c, "B").await;
    let v6 = minted_with(&app, &c, "B", &[("x-forwarded-for", "2001:db8::1")]).await;
    let v6_again = minted_with(&app, &c, "B", &[("x-forwarded-for", "[2001:db8::1]:443")]).await;
    assert_ne!(v6, direct);
    assert_eq!(v6, v6_again);
}

#[tokio::test]
async fn forged_and_oversized_cookies_are_client_ids_under_the_same_limits() {
    let app = spawn_app_with(&["--max-id-bytes", "64", "--max-header-bytes", "4096"]).await;
    let c = app.create_campaign("c").await;
    let q = format!("campaign_id={c}&ad_id=a");
    let send = |cookie: Vec<u8>| {
        let request = app
            .client
            .get(app.url(&format!("/api/v1/impressions/pixel.gif?{q}")))
            .header("user-agent", "B")
            .header(
                "cookie",
                reqwest::header::HeaderValue::from_bytes(&cookie).unwrap(),
            );
        async move { request.send().await.unwrap() }
    };
    let error = |r: &reqwest::Response| {
        r.headers()
            .get("x-impression-error")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    // Too long for MAX_ID_BYTES: refused like a user_id in the URL.
    let long = send(format!("uid={}", "x".repeat(65)).into_bytes()).await;
    assert_eq!(long.status(), StatusCode::BAD_REQUEST);
    assert!(
        error(&long).unwrap().contains("at most 64 bytes"),
        "{:?}",
        error(&long)
    );
    assert_eq!(set_cookie(&long), None);
    let url_long = view_with(
        &app,
        &format!("{q}&user_id={}", "x".repeat(65)),
        "B",
        None,
        &[],
    )
    .await;
    assert_eq!(error(&url_long), error(&long));
    // Larger than the header limit: 431, still the GIF.
    let huge = send(format!("uid={}", "x".repeat(5000)).into_bytes()).await;
    assert_eq!(huge.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(huge.headers()["content-type"], "image/gif");

    // Forged but within limits: simply another user id, counted as sent.
    for forged in [
        "../../etc/passwd",
        "<script>",
        "%00%ff",
        "a=b=c",
        "\"quoted\"",
    ] {
        let r = send(format!("uid={forged}").into_bytes()).await;
        assert_eq!(r.status(), StatusCode::OK, "{forged}");
        assert_eq!(set_cookie(&r), None);
    }
    assert_eq!(
        app.track_and_wait(&c, "../../etc/passwd", "a").await,
        "duplicate"
    );
    assert_eq!(app.track_and_wait(&c, "quoted", "a").await, "duplicate");
    // Unreadable (not visible ASCII) or empty: as if there were no cookie,
    // so an id is minted and offered.
    for unusable in [b"uid=\xff\xfe".to_vec(), b"uid=".to_vec(), b"uid".to_vec()] {
        let r = send(unusable.clone()).await;
        assert_eq!(r.status(), StatusCode::OK, "{unusable:?}");
        assert!(set_cookie(&r).is_some(), "{unusable:?}");
    }
    let text = app.metrics().await;
    assert!(!text.contains(r#"status="500""#), "{text}");
}

/// Opens a disk store in `dir` and serves it on a manual clock at `T0`.
async fn disk_app(dir: &std::path::Path) -> TestApp {
    let dir = dir.display().to_string();
    let config = config(&["--storage", "disk", "--data-dir", &dir, "--fsync", "no"]);
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let store = storage::open(&config.storage(), clock)
        .await
        .expect("the disk store opens");
    spawn_app_on(config, store).await
}

#[tokio::test]
async fn without_a_configured_secret_a_disk_store_keeps_its_own_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = disk_app(dir.path()).await;
    let c = app.create_campaign("c").await;
    assert!(
        !dir.path().join("pixel-id.secret").exists(),
        "made on first use"
    );
    let before = minted(&app, &c, "Browser/1").await;
    let kept = std::fs::read_to_string(dir.path().join("pixel-id.secret")).unwrap();
    assert_eq!(kept.trim_end().len(), 64);
    app.begin_shutdown();
    app.wait_stopped().await;

    let app = disk_app(dir.path()).await;
    // Same secret, same day: the same browser gets the same id, and its
    // impression is the duplicate it is.
    assert_eq!(minted(&app, &c, "Browser/1").await, before);
    wait_duplicates(&app, 1).await;
    assert_eq!(app.counts(&c).await.2, 1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("pixel-id.secret")).unwrap(),
        kept
    );
    // Another data directory is another deployment, with its own secret.
    let other_dir = tempfile::tempdir().unwrap();
    let other = disk_app(other_dir.path()).await;
    let o = other.create_campaign("o").await;
    minted(&other, &o, "Browser/1").await;
    let theirs = std::fs::read_to_string(other_dir.path().join("pixel-id.secret")).unwrap();
    assert_ne!(theirs, kept);
}

/// Two nodes on one Redis (prefix) share the secret the first of them made.
async fn nodes_share_the_secret(backend: Backend) {
    let (flags, _guard) = backend.prepare();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let config = config(&flags);
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
        let store = storage::open(&config.storage(), clock)
            .await
            .expect("Redis opens");
        nodes.push(spawn_app_on(config, store).await);
    }
    let c = nodes[0].create_campaign("shared").await;
    // Both ask for the secret at once: one SET NX wins, both use it.
    let (a, b) = tokio::join!(minted(&nodes[0], &c, "B"), minted(&nodes[1], &c, "B"));
    assert_eq!(a, b);
    // One of the two is counted, the other (on whichever node applied it
    // second) a duplicate. Redis nodes acknowledge after applying.
    assert_eq!(nodes[0].counts(&c).await.2, 1);
    let mut duplicates = 0;
    for node in &nodes {
        duplicates += metric(&node.metrics().await, "impressions_duplicate_total").unwrap();
    }
    assert_eq!(duplicates, 1);
    // A node started later reads it back.
    let late_config = config(&flags);
    let store = storage::open(
        &late_config.storage(),
        Arc::new(ManualClock::new(T0)) as Arc<dyn Clock>,
    )
    .await
    .unwrap();
    let late = spawn_app_on(late_config, store).await;
    assert_eq!(minted(&late, &c, "B").await, a);
    // Kept under the deployment's prefix; another prefix (another
    // deployment) makes its own.
    let kept = redis_secret(&flags).await;
    assert_eq!(kept.len(), 64);
    let (other_flags, _other_guard) = backend.prepare();
    let other_flags: Vec<&str> = other_flags.iter().map(String::as_str).collect();
    let other_config = config(&other_flags);
    let store = storage::open(
        &other_config.storage(),
        Arc::new(ManualClock::new(T0)) as Arc<dyn Clock>,
    )
    .await
    .unwrap();
    let other = spawn_app_on(other_config, store).await;
    let o = other.create_campaign("o").await;
    minted(&other, &o, "B").await;
    let theirs = redis_secret(&other_flags).await;
    assert_eq!(theirs.len(), 64);
    assert_ne!(theirs, kept);
}

/// The secret as Redis holds it for the deployment these flags select.
async fn redis_secret(flags: &[&str]) -> String {
    let value_of = |name: &str| {
        flags
            .iter()
            .position(|f| *f == name)
            .map(|i| flags[i + 1].to_owned())
    };
    let key = format!("{}pixel-id-secret", value_of("--redis-prefix").unwrap());
    let get = redis::cmd("GET").arg(&key).clone();
    let value: Option<String> = match value_of("--redis-cluster-nodes") {
        Some(nodes) => {
            let client =
                redis::cluster::ClusterClient::new(nodes.split(',').collect::<Vec<_>>()).unwrap();
            let mut conn = client.get_async_connection().await.unwrap();
            get.query_async(&mut conn).await.unwrap()
        }
        None => {
            let client = redis::Client::open(value_of("--redis-url").unwrap()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            get.query_async(&mut conn).await.unwrap()
        }
    };
    value.expect("the secret is kept in Redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_redis_share_the_secret() {
    nodes_share_the_secret(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_redis_cluster_share_the_secret() {
    nodes_share_the_secret(Backend::RedisCluster).await;
}

/// Two applications on one store (as two nodes on one Redis) with
/// `flags` each: the id each mints for the same browser.
async fn ids_on_one_store(flags_a: &[&str], flags_b: &[&str]) -> (String, String) {
    let store: Arc<dyn storage::Store> =
        Arc::new(storage::memory::MemoryStore::new(config(&[]).engine()));
    let a = spawn_app_on(config(flags_a), Arc::clone(&store)).await;
    let b = spawn_app_on(config(flags_b), store).await;
    let c = a.create_campaign("c").await;
    (minted(&a, &c, "B").await, minted(&b, &c, "B").await)
}

#[tokio::test]
async fn a_configured_secret_is_the_root_of_the_ids() {
    let one = ["--pixel-hash-secret", "one-secret-for-all-nodes"];
    let two = ["--pixel-hash-secret", "a-different-secret-here"];
    let (a, b) = ids_on_one_store(&one, &one).await;
    assert_eq!(a, b, "the same secret: the same ids");
    let (a, b) = ids_on_one_store(&one, &two).await;
    assert_ne!(a, b, "another secret: other ids, whatever the store keeps");
    let (a, b) = ids_on_one_store(&[], &one).await;
    assert_ne!(a, b, "the store's own secret is not the configured one");
    let (a, b) = ids_on_one_store(&[], &[]).await;
    assert_eq!(a, b, "without one, the store's");
}

#[test]
fn the_secret_never_reaches_help_errors_or_the_log() {
    let secret = "never-print-this-secret-0123";
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_impression-counter"))
        .arg("--help")
        .env("PIXEL_HASH_SECRET", secret)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--pixel-hash-secret"), "{help}");
    assert!(help.contains("[env: PIXEL_HASH_SECRET]"), "{help}");
    assert!(!help.contains(secret), "{help}");

    // Too short is refused, without repeating it.
    let short = "short-secret-15";
    let (status, text) = ServerProcess::fail_to_start(&[("PIXEL_HASH_SECRET", short)]);
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(text.contains("at least 16 bytes"), "{text}");
    assert!(!text.contains(short), "{text}");

    let server = ServerProcess::start(&[
        ("STORAGE", "memory"),
        ("PIXEL_HASH_SECRET", secret),
        ("RUST_LOG", "debug"),
    ]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let c = server.create_campaign(&http, "c").await;
        let response = http
            .get(server.url(&format!(
                "/api/v1/impressions/pixel.gif?campaign_id={c}&ad_id=a"
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("set-cookie").is_some());
    });
    let (status, log) = server.terminate();
    assert!(status.success());
    let log = log.join("\n");
    assert!(log.contains("shutdown complete"), "{log}");
    assert!(!log.contains(secret), "the secret reached the log");
}
