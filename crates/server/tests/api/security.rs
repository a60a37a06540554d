//! Access control, CORS and abuse limits.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{GatedStore, assert_error, config, spawn_app_on, spawn_app_with};
use crate::process::ServerProcess;

const KEY: &str = "k-7f3a9c";

#[tokio::test]
async fn management_endpoints_need_a_valid_key_and_tracking_stays_open() {
    let app = spawn_app_with(&["--api-keys", &format!("{KEY},second-key")]).await;
    let protected = [
        ("POST", "/api/v1/campaigns"),
        ("GET", "/api/v1/campaigns"),
        (
            "GET",
            "/api/v1/campaigns/0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a",
        ),
        (
            "GET",
            "/api/v1/campaigns/0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a/stats",
        ),
        (
            "GET",
            "/api/v1/campaigns/0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a/timeseries",
        ),
        ("GET", "/metrics"),
    ];
    for (method, path) in protected {
        for auth in [None, Some("Bearer wrong"), Some("Basic azc="), Some(KEY)] {
            let mut request = app
                .client
                .request(method.parse().unwrap(), app.url(path))
                .json(&json!({ "name": "n" }));
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer realm=\"impression-counter\""
            );
            let message = assert_error(response, StatusCode::UNAUTHORIZED).await;
            assert!(
                message.contains("API key"),
                "{method} {path} {auth:?}: {message}"
            );
        }
    }
    // With the key: through (scheme case-insensitive, either key).
    let created = app
        .client
        .post(app.url("/api/v1/campaigns"))
        .header("authorization", format!("bearer {KEY}"))
        .json(&json!({ "name": "c" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("second-key")
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    // Tracking needs no key; health and docs neither.
    assert_eq!(
        app.track(&id, "u", "a").await.status(),
        StatusCode::ACCEPTED
    );
    for open in ["/healthz", "/readyz", "/openapi.json", "/docs/"] {
        assert_eq!(app.get(open).await.status(), StatusCode::OK, "{open}");
    }
}

#[test]
fn keys_reload_on_sighup_and_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "old-secret-1\n").unwrap();
    let file_text = file.display().to_string();
    let server = ServerProcess::start(&[
        ("STORAGE", "memory"),
        ("API_KEYS_FILE", &file_text),
        ("API_KEYS", "inline-secret-2"),
    ]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status_with = |key: &str| {
        let url = server.url("/api/v1/campaigns");
        let key = key.to_owned();
        runtime.block_on(async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    assert_eq!(status_with("old-secret-1"), StatusCode::OK);
    assert_eq!(status_with("new-secret-3"), StatusCode::UNAUTHORIZED);

    std::fs::write(&file, "new-secret-3\n").unwrap();
    let pid = server.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status_with("new-secret-3") != StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "the key file was not reloaded"
        );
        std::thread::yield_now();
    }
    assert_eq!(status_with("old-secret-1"), StatusCode::UNAUTHORIZED);
    assert_eq!(status_with("inline-secret-2"), StatusCode::OK);

    let (status, log) = server.terminate();
    assert!(status.success());
    let log = log.join("\n");
    assert!(log.contains("API keys reloaded"), "{log}");
    for secret in ["old-secret-1", "inline-secret-2", "new-secret-3"] {
        assert!(!log.contains(secret), "a key reached the log");
    }
}

#[test]
fn without_keys_the_start_warns_that_management_is_open() {
    let server = ServerProcess::start(&[("STORAGE", "memory")]);
    let (_, log) = server.terminate();
    assert!(
        log.iter()
            .any(|l| l.contains("no API_KEYS or API_KEYS_FILE")),
        "{log:?}"
    );
}

#[tokio::test]
async fn cors_preflight_for_tracking_from_allowed_origins_only() {
    let app = spawn_app_with(&[
        "--cors-allowed-origins",
        "https://pub.example,https://other.example",
    ])
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/impressions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://pub.example").await.unwrap();
    assert!(allowed.status().is_success());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://pub.example"
    );
    assert!(
        allowed.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        allowed.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("content-type")
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // The default allows any origin.
    let open = spawn_app_with(&[]).await;
    let response = open
        .client
        .post(open.url("/api/v1/impressions/batch"))
        .header("origin", "https://anywhere.example")
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn oversized_headers_are_431_json() {
    let app = spawn_app_with(&["--max-header-bytes", "2048"]).await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-filler", "x".repeat(3000))
        .send()
        .await
        .unwrap();
    let message = assert_error(response, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE).await;
    assert!(message.contains("MAX_HEADER_BYTES"), "{message}");
}

/// Opens a raw connection to the app.
async fn raw(app: &crate::helpers::TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the peer closes (bounded); returns what was read.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_slow_body_is_408_json() {
    let app = spawn_app_with(&["--body-read-timeout", "300ms"]).await;
    let mut stream = raw(&app).await;
    stream
        .write_all(b"POST /api/v1/impressions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"campaign_id\":")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("BODY_READ_TIMEOUT") && answer.contains("\"code\":408"),
        "{answer}"
    );
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let app = spawn_app_with(&["--header-read-timeout", "300ms"]).await;
    let mut slow = raw(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut idle = raw(&app).await;
    let started = std::time::Instant::now();
    read_to_close(&mut slow, Duration::from_secs(10)).await;
    read_to_close(&mut idle, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "both were closed by the server"
    );
}

#[tokio::test]
async fn a_request_longer_than_the_header_timeout_is_answered_then_the_idle_connection_closed() {
    // The header timeout bounds waiting for a request, not serving one: a
    // `?wait=true` request held at the store for three times the timeout
    // still gets its answer on the same connection, which is closed only
    // once it has then sat idle.
    let config = config(&["--header-read-timeout", "300ms", "--storage", "memory"]);
    let (store, gate) = GatedStore::new(&config);
    let app = spawn_app_on(config, store).await;
    let c = app.create_campaign("c").await;
    let mut stream = raw(&app).await;
    let body = json!({ "campaign_id": c, "user_id": "u", "ad_id": "a" }).to_string();
    let request = format!(
        "POST /api/v1/impressions?wait=true HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    gate.send(true).unwrap();
    let started = std::time::Instant::now();
    let answer = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"status":"counted"}"#), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closed by the server once idle"
    );
}

#[tokio::test]
async fn requests_beyond_max_in_flight_are_shed_with_503() {
    let config = config(&["--max-in-flight", "2", "--storage", "memory"]);
    let (store, gate) = GatedStore::new(&config);
    let app = spawn_app_on(config, store).await;
    let c = app.create_campaign("c").await;
    // Two requests wait for processing (the store is gated): both slots taken.
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let (http, url, c) = (
                app.client.clone(),
                app.url("/api/v1/impressions?wait=true"),
                c.clone(),
            );
            tokio::spawn(async move {
                http.post(url)
                    .json(&json!({ "campaign_id": c, "user_id": format!("u{i}"), "ad_id": "a" }))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    // Poll (bounded) until both waiting requests hold their slot.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let shed = loop {
        let response = app.track(&c, "third", "a").await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            break response;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing was shed");
        tokio::task::yield_now().await;
    };
    assert_eq!(shed.headers()["retry-after"], "1");
    let message = assert_error(shed, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(message.contains("MAX_IN_FLIGHT"), "{message}");
    // Health is never shed.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    gate.send(true).unwrap();
    for w in waiting {
        assert_eq!(w.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test]
async fn connections_beyond_max_connections_get_one_503_and_are_closed() {
    let app = spawn_app_with(&["--max-connections", "2"]).await;
    let _first = raw(&app).await;
    let _second = raw(&app).await;
    let mut third = raw(&app).await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut third, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("MAX_CONNECTIONS") && answer.contains("\"code\":503"),
        "{answer}"
    );
}

#[tokio::test]
async fn campaign_count_and_id_lengths_are_bounded() {
    let app = spawn_app_with(&["--max-campaigns", "2", "--max-id-bytes", "8"]).await;
    let c = app.create_campaign("one").await;
    app.create_campaign("two").await;
    let response = app
        .post_json("/api/v1/campaigns", &json!({ "name": "three" }))
        .await;
    let message = assert_error(response, StatusCode::CONFLICT).await;
    assert!(message.contains("MAX_CAMPAIGNS"), "{message}");
    let message = assert_error(
        app.track(&c, "123456789", "a").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        message,
        "user_id must be at most 8 bytes, got 9 (MAX_ID_BYTES)"
    );
    assert_eq!(
        app.track(&c, "12345678", "a").await.status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn new_keys_beyond_max_dedup_keys_are_refused_until_keys_expire() {
    let app = spawn_app_with(&[
        "--max-dedup-keys",
        "3",
        "--ttl",
        "1s",
        "--max-event-age",
        "0s",
    ])
    .await;
    let c = app.create_campaign("c").await;
    for user in ["a", "b", "c"] {
        assert_eq!(app.track_and_wait(&c, user, "ad").await, "counted");
    }
    let refused = app.track(&c, "d", "ad").await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let message = assert_error(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(message.contains("MAX_DEDUP_KEYS"), "{message}");
    // A live key adds nothing: still accepted.
    assert_eq!(app.track_and_wait(&c, "a", "ad").await, "duplicate");
    // Once the keys expire (TTL + 30 s of queueing grace), new users are
    // accepted again; housekeeping runs about once a second.
    app.clock.advance(Duration::from_secs(32));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.track(&c, "d", "ad").await.status() != StatusCode::ACCEPTED {
        assert!(tokio::time::Instant::now() < deadline, "keys never expired");
        tokio::task::yield_now().await;
    }
}
