//! The live stats stream (`GET /api/v1/campaigns/{id}/stats/stream`, Server-
//! Sent Events), the ingest-health endpoint (`GET /api/v1/ingest`), and the
//! dashboard's pages over plain HTTP: redirects, headers, the key. The
//! dashboard in a real browser is `dashboard_browser.rs`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backend_test;
use crate::helpers::{TestApp, assert_error, counted_total, metric, spawn, spawn_app_with};

/// One event of a stream: its name and its data.
#[derive(Debug)]
pub struct SseEvent {
    pub name: String,
    pub data: String,
}

/// Reads a `text/event-stream` body event by event.
pub struct EventReader {
    response: reqwest::Response,
    buffer: String,
}

impl EventReader {
    pub fn new(response: reqwest::Response) -> Self {
        EventReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next event with data (comments and keep-alives skipped); `None`
    /// when the stream ended. Fails after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        tokio::time::timeout(within, self.next_event())
            .await
            .unwrap_or_else(|_| panic!("no event within {within:?}"))
    }

    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = "message".to_owned();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if !data.is_empty() {
                    return Some(SseEvent {
                        name,
                        data: data.join("\n"),
                    });
                }
                continue;
            }
            let chunk = self.response.chunk().await.expect("the stream reads")?;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    }

    /// The next `stats` event's JSON.
    pub async fn next_stats(&mut self) -> Value {
        let event = self
            .next(Duration::from_secs(3))
            .await
            .expect("the stream goes on");
        assert_eq!(event.name, "stats", "{event:?}");
        serde_json::from_str(&event.data).expect("JSON data")
    }
}

async fn open_stream(app: &TestApp, campaign: &str, query: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/api/v1/campaigns/{campaign}/stats/stream{query}")))
        .send()
        .await
        .expect("request sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_the_stats_on_connect_and_every_second() {
    let app = spawn_app_with(&[]).await;
    let c = app.create_campaign("streamed").await;
    app.track_and_wait(&c, "u1", "ad-1").await;
    app.track_and_wait(&c, "u2", "ad-1").await;

    let response = open_stream(&app, &c, "").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    assert_eq!(
        response.headers()["cache-control"].to_str().unwrap(),
        "no-cache"
    );
    let mut events = EventReader::new(response);
    // On connect, at once: exactly the stats endpoint's JSON.
    let first = events.next_stats().await;
    assert_eq!(first, app.stats(&c).await);
    assert_eq!(
        first,
        json!({
            "campaign_id": c, "last_hour": 2, "last_day": 2, "total": 2,
            "unique_users": { "last_hour": 2, "last_day": 2, "total": 2 },
        })
    );
    // Then once a second, with what happened since.
    app.track_and_wait(&c, "u3", "ad-2").await;
    let started = std::time::Instant::now();
    let second = events.next_stats().await;
    assert_eq!(second["total"], 3);
    let third = events.next_stats().await;
    assert_eq!(third["total"], 3);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
        "two events a second apart took {elapsed:?}"
    );
}

backend_test! {
    async fn the_stream_follows_the_counts_on_every_backend(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = app.create_campaign("live everywhere").await;
        app.track_and_wait(&c, "u1", "ad-1").await;
        let mut events = EventReader::new(open_stream(&app, &c, "?by=ad").await);
        let first = events.next_stats().await;
        assert_eq!(first["total"], 1);
        assert_eq!(first["ads"]["ad-1"]["total"], 1);
        app.track_and_wait(&c, "u2", "ad-2").await;
        let mut seen = first;
        for _ in 0..3 {
            if seen["total"] == 2 {
                break;
            }
            seen = events.next_stats().await;
        }
        assert_eq!(seen["total"], 2, "{seen}");
        assert_eq!(seen["ads"]["ad-2"]["total"], 1, "{seen}");
        // Unique users move with them, on every backend (exact this small).
        assert_eq!(seen["unique_users"]["total"], 2, "{seen}");
        assert_eq!(seen["unique_users"]["last_hour"], 2, "{seen}");
        assert_eq!(seen["ads"]["ad-2"]["unique_users"]["total"], 1, "{seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_by_ad_sends_the_breakdown() {
    let app = spawn_app_with(&["--max-ads-per-campaign", "1"]).await;
    let c = app.create_campaign("by ad").await;
    app.track_and_wait(&c, "u1", "ad-1").await;
    app.track_and_wait(&c, "u2", "ad-2").await;
    let mut events = EventReader::new(open_stream(&app, &c, "?by=ad").await);
    let stats = events.next_stats().await;
    let direct: Value = app
        .get(&format!("/api/v1/campaigns/{c}/stats?by=ad"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats, direct);
    assert_eq!(stats["ads"]["ad-1"]["total"], 1);
    assert_eq!(stats["other_ads"]["total"], 1);
    assert_eq!(stats["ads_limit"], 1);
    assert_eq!(stats["ads_limit_exceeded"], true);
}

#[tokio::test]
async fn a_stream_of_nothing_valid_is_a_plain_json_error() {
    let app = spawn_app_with(&[]).await;
    let c = app.create_campaign("errors").await;
    let unknown = "0190c4c2-6e4b-7c2a-9a4e-1f2e3d4c5b6a";
    assert_error(open_stream(&app, unknown, "").await, StatusCode::NOT_FOUND).await;
    assert_error(
        open_stream(&app, "not-a-uuid", "").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let message = assert_error(
        open_stream(&app, &c, "?by=user").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(message.contains("by must be"), "{message}");
    assert_error(
        open_stream(&app, &c, "?format=csv").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_needs_the_api_key_like_the_stats() {
    let app = spawn_app_with(&["--api-keys", "key-1,key-2"]).await;
    let created = app
        .client
        .post(app.url("/api/v1/campaigns"))
        .bearer_auth("key-1")
        .json(&json!({ "name": "keyed" }))
        .send()
        .await
        .unwrap();
    let c = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = app.url(&format!("/api/v1/campaigns/{c}/stats/stream"));
    let response = app.client.get(&path).send().await.unwrap();
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_error(response, StatusCode::UNAUTHORIZED).await;
    let wrong = app
        .client
        .get(&path)
        .bearer_auth("key-3")
        .send()
        .await
        .unwrap();
    assert_error(wrong, StatusCode::UNAUTHORIZED).await;
    let right = app
        .client
        .get(&path)
        .bearer_auth("key-2")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    assert_eq!(EventReader::new(right).next_stats().await["total"], 0);
    // The ingest health is behind the key too.
    let ingest = app.get("/api/v1/ingest").await;
    assert_error(ingest, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_max_streams_are_refused_with_503_until_one_closes() {
    let app = spawn_app_with(&["--max-streams", "2"]).await;
    let c = app.create_campaign("limited").await;
    let mut first = EventReader::new(open_stream(&app, &c, "").await);
    first.next_stats().await;
    let mut second = EventReader::new(open_stream(&app, &c, "").await);
    second.next_stats().await;

    let refused = open_stream(&app, &c, "").await;
    assert_eq!(refused.headers()["retry-after"].to_str().unwrap(), "1");
    let message = assert_error(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(message.contains("MAX_STREAMS"), "{message}");
    let health: Value = app.get("/api/v1/ingest").await.json().await.unwrap();
    assert_eq!(health["queue"]["streams"], 2);

    // A client that goes away gives its slot back.
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        let response = open_stream(&app, &c, "").await;
        if response.status() == StatusCode::OK {
            again = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = EventReader::new(again.expect("a slot is free again once a client left"));
    again.next_stats().await;
    second.next_stats().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlives_the_idle_timeout_of_its_connection() {
    // HEADER_READ_TIMEOUT closes connections idle between requests; a
    // stream's connection is busy for as long as the stream runs.
    let app = spawn_app_with(&["--header-read-timeout", "500ms"]).await;
    let c = app.create_campaign("long").await;
    let mut events = EventReader::new(open_stream(&app, &c, "").await);
    for _ in 0..4 {
        events.next_stats().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_the_server_shuts_down_and_do_not_hold_it() {
    let mut app = spawn_app_with(&[]).await;
    let c = app.create_campaign("ending").await;
    let mut a = EventReader::new(open_stream(&app, &c, "").await);
    let mut b = EventReader::new(open_stream(&app, &c, "?by=ad").await);
    a.next_stats().await;
    b.next_stats().await;
    app.begin_shutdown();
    // Each stream ends cleanly (the body finishes, no error), at once
    // rather than at the 30 s drain timeout.
    assert!(a.next(Duration::from_secs(3)).await.is_none());
    assert!(b.next(Duration::from_secs(3)).await.is_none());
    assert!(
        app.stops_within(Duration::from_secs(5)).await,
        "open streams held up the shutdown"
    );
}

#[tokio::test]
async fn a_stream_is_not_started_while_shutting_down() {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use impression_core::{EngineConfig, SystemClock};
    use impression_counter::ingest::IngestQueue;
    use impression_counter::metrics::Metrics;
    use impression_counter::routes::{AppState, router};
    use impression_counter::storage::memory::MemoryStore;
    use tower::ServiceExt;

    let (queue, _rx) = IngestQueue::new(10, Duration::from_millis(10));
    let state = AppState::new(
        Arc::new(MemoryStore::new(EngineConfig::default())),
        Arc::new(SystemClock),
        queue,
        Arc::new(Metrics::new()),
        crate::helpers::config(&[]).api(),
        Arc::new(impression_counter::auth::ApiKeys::open()),
    );
    state.begin_shutdown();
    let response = router(state)
        .oneshot(
            Request::get("/api/v1/campaigns/0190c4c2-6e4b-7c2a-9a4e-1f2e3d4c5b6a/stats/stream")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_health_shows_the_numbers_of_the_metrics() {
    let app = spawn_app_with(&["--impressions-queue-size", "500"]).await;
    let c = app.create_campaign("health").await;
    app.track_and_wait(&c, "u1", "ad").await;
    app.track_and_wait(&c, "u1", "ad").await;
    app.track_and_wait(&c, "u2", "ad").await;
    let invalid = app.track(&c, "", "ad").await;
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    let unknown = app
        .track("0190c4c2-6e4b-7c2a-9a4e-1f2e3d4c5b6a", "u", "ad")
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let health: Value = app.get("/api/v1/ingest").await.json().await.unwrap();
    let metrics = app.metrics().await;
    assert_eq!(health["counted"], 2);
    assert_eq!(health["counted"], counted_total(&metrics));
    assert_eq!(health["duplicates"], 1);
    assert_eq!(
        health["duplicates"],
        metric(&metrics, "impressions_duplicate_total").unwrap()
    );
    assert_eq!(
        health["received"],
        metric(&metrics, "impressions_received_total").unwrap()
    );
    assert_eq!(health["rejected"]["invalid"], 1);
    assert_eq!(
        health["rejected"]["invalid"],
        metric(&metrics, "impressions_rejected_total{reason=\"invalid\"}").unwrap()
    );
    assert_eq!(health["rejected"]["unknown_campaign"], 1);
    assert_eq!(
        health["rejected"]["queue_full"], 0,
        "every reason is listed"
    );
    assert_eq!(health["rejected"].as_object().unwrap().len(), 7);
    assert_eq!(health["apply_failures"], 0);
    assert_eq!(
        health["queue"],
        json!({ "depth": 0, "capacity": 500, "streams": 0 })
    );
}

// ---- The dashboard over HTTP ------------------------------------------

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_root_redirects_to_the_dashboard() {
    let app = spawn_app_with(&[]).await;
    let response = no_redirects().get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/dashboard");
}

/// Every page and file of the dashboard, with its content type.
async fn dashboard_answers(app: &TestApp, campaign: &str) -> Vec<(String, reqwest::Response)> {
    let mut answers = Vec::new();
    for path in [
        "/dashboard".to_owned(),
        format!("/dashboard/campaigns/{campaign}"),
        "/dashboard/assets/dashboard.js".to_owned(),
        "/dashboard/assets/dashboard.css".to_owned(),
        "/dashboard/assets/uPlot.iife.min.js".to_owned(),
        "/dashboard/assets/uPlot.min.css".to_owned(),
        "/dashboard/assets/uPlot.LICENSE.txt".to_owned(),
    ] {
        answers.push((path.clone(), app.get(&path).await));
    }
    answers
}

#[tokio::test]
async fn every_dashboard_answer_carries_a_strict_content_security_policy() {
    let app = spawn_app_with(&[]).await;
    let c = app.create_campaign("csp").await;
    for (path, response) in dashboard_answers(&app, &c).await {
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        let directive = |name: &str| {
            csp.split(';')
                .map(str::trim)
                .find(|d| d.starts_with(name))
                .unwrap_or_else(|| panic!("{path}: no {name} in {csp}"))
                .to_owned()
        };
        assert_eq!(directive("script-src"), "script-src 'self'", "{path}");
        assert_eq!(directive("style-src"), "style-src 'self'", "{path}");
        assert_eq!(directive("default-src"), "default-src 'none'", "{path}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        let kind = headers["content-type"].to_str().unwrap().to_owned();
        let expected = match path.rsplit_once('.').map(|(_, ext)| ext) {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            Some("txt") => "text/plain",
            _ => "text/html",
        };
        assert!(kind.starts_with(expected), "{path}: {kind}");
        let body = response.text().await.unwrap();
        if expected == "text/html" {
            // No inline script, handler or style for the policy to block:
            // every <script> has a src, no element has an on* attribute or
            // a style attribute.
            let lower = body.to_lowercase();
            for (i, _) in lower.match_indices("<script") {
                let tag = &lower[i..i + lower[i..].find('>').unwrap()];
                assert!(tag.contains(" src=\"/dashboard/assets/"), "{path}: {tag}");
            }
            assert!(!lower.contains(" style="), "{path}");
            assert!(!lower.contains("<style"), "{path}");
            let inline_handler = lower
                .split(|ch: char| ch.is_whitespace())
                .any(|word| word.starts_with("on") && word.contains('='));
            assert!(!inline_handler, "{path}");
            assert!(
                !lower.contains("http://") && !lower.contains("https://"),
                "{path}: nothing from elsewhere"
            );
        }
        if path == "/dashboard/assets/dashboard.js" {
            for sink in [
                ".innerHTML",
                ".outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                assert!(!body.contains(sink), "the script sets text only: {sink}");
            }
            assert!(!body.contains("eval("), "the script evaluates nothing");
        }
    }
}

#[tokio::test]
async fn the_dashboard_pages_are_open_and_their_data_is_not() {
    let app = spawn_app_with(&["--api-keys", "k"]).await;
    for path in [
        "/dashboard",
        "/dashboard/assets/dashboard.js",
        "/dashboard/campaigns/0190c4c2-6e4b-7c2a-9a4e-1f2e3d4c5b6a",
    ] {
        assert_eq!(app.get(path).await.status(), StatusCode::OK, "{path}");
    }
    assert_error(app.get("/api/v1/campaigns").await, StatusCode::UNAUTHORIZED).await;
    assert_error(app.get("/api/v1/ingest").await, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn unknown_dashboard_files_and_bad_ids_are_json_errors() {
    let app = spawn_app_with(&[]).await;
    assert_error(
        app.get("/dashboard/assets/secret.txt").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_error(
        app.get("/dashboard/assets/..%2F..%2FCargo.toml").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_error(
        app.get("/dashboard/campaigns/%3Cimg%20src=x%3E").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}
