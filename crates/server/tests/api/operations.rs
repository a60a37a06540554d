//! Health, readiness, metrics, the OpenAPI spec and the docs page.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{counted_total, spawn_app};

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let health: Value = app.get("/healthz").await.json().await.unwrap();
    assert_eq!(health, json!({ "status": "ok" }));
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({ "status": "ready" })
    );
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let app = spawn_app().await;
    let c = app.create_campaign("c").await;
    assert_eq!(app.track_and_wait(&c, "u", "a").await, "counted");
    assert_eq!(app.track_and_wait(&c, "u", "a").await, "duplicate");
    app.track("0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a", "u", "a")
        .await;
    app.post_json("/api/v1/impressions", &json!({})).await;

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    for line in [
        "impressions_received_total 4",
        r#"impressions_counted_total{id_source="body"} 1"#,
        "impressions_duplicate_total 1",
        r#"impressions_rejected_total{reason="unknown_campaign"} 1"#,
        r#"impressions_rejected_total{reason="invalid"} 1"#,
        "dedup_live_keys 1",
        "campaigns 1",
        "ingest_queue_depth 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    // What the unlabelled total used to say: one counted in all.
    assert_eq!(counted_total(&text), 1, "{text}");
    assert!(
        text.contains(r#"http_request_duration_seconds_count{method="POST",route="/api/v1/impressions",status="200"} 2"#),
        "{text}"
    );
    // Unknown paths share one label instead of one per path.
    app.get("/no/such/path").await;
    let text = app.metrics().await;
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
}

#[tokio::test]
async fn openapi_documents_every_route_and_its_errors() {
    let app = spawn_app().await;
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let expected: &[(&str, &str, &[&str])] = &[
        (
            "/api/v1/campaigns",
            "post",
            &["201", "400", "413", "415", "500", "503"],
        ),
        ("/api/v1/campaigns", "get", &["200", "400", "503"]),
        (
            "/api/v1/campaigns/{id}",
            "get",
            &["200", "400", "404", "503"],
        ),
        (
            "/api/v1/campaigns/{id}/stats",
            "get",
            &["200", "400", "404", "503"],
        ),
        (
            "/api/v1/impressions",
            "post",
            &["200", "202", "400", "404", "409", "413", "415", "503"],
        ),
        (
            "/api/v1/campaigns/{id}/timeseries",
            "get",
            &["200", "400", "404", "503"],
        ),
        (
            "/api/v1/impressions/batch",
            "post",
            &["200", "202", "400", "413", "415", "503"],
        ),
        (
            "/api/v1/impressions/pixel.gif",
            "get",
            &["200", "400", "404", "409", "503"],
        ),
        (
            "/api/v1/campaigns/{id}/stats/stream",
            "get",
            &["200", "400", "404", "503"],
        ),
        ("/api/v1/ingest", "get", &["200", "401"]),
        ("/healthz", "get", &["200"]),
        ("/readyz", "get", &["200", "503"]),
        ("/metrics", "get", &["200"]),
    ];
    for (path, method, statuses) in expected {
        let responses = &spec["paths"][path][method]["responses"];
        assert!(responses.is_object(), "{method} {path} is not documented");
        for status in *statuses {
            assert!(
                responses[status].is_object(),
                "{method} {path} lacks {status}"
            );
            #[allow(
                clippy::case_sensitive_file_extension_comparisons,
                reason = "an API path as `paths` spells it, in lowercase"
            )]
            if (status.starts_with('4') || status.starts_with('5')) && !path.ends_with(".gif") {
                let schema = &responses[status]["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
    let documented: usize = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        expected.len(),
        "an undocumented or unexpected operation"
    );
}

#[tokio::test]
async fn docs_page_is_served_with_its_assets_and_no_cdn() {
    let app = spawn_app().await;
    let page = app.get("/docs/").await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "external asset: {html}"
    );
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        let response = app.get(&format!("/docs/{asset}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert!(!response.bytes().await.unwrap().is_empty());
    }
    let init = app
        .get("/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(init.contains("\"/openapi.json\""), "{init}");
}

#[tokio::test]
async fn readiness_fails_once_shutdown_begins() {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use impression_core::{EngineConfig, SystemClock};
    use impression_counter::ingest::IngestQueue;
    use impression_counter::metrics::Metrics;
    use impression_counter::routes::{AppState, router};
    use impression_counter::storage::memory::MemoryStore;
    use tower::ServiceExt;

    let (queue, _rx) = IngestQueue::new(10, std::time::Duration::from_millis(10));
    let state = AppState::new(
        Arc::new(MemoryStore::new(EngineConfig::default())),
        Arc::new(SystemClock),
        queue,
        Arc::new(Metrics::new()),
        crate::helpers::config(&[]).api(),
        Arc::new(impression_counter::auth::ApiKeys::open()),
    );
    let ready = |state: AppState| async move {
        let response = router(state)
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    assert_eq!(ready(state.clone()).await.0, StatusCode::OK);
    state.begin_shutdown();
    let (status, body) = ready(state).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({ "error": "the service is shutting down", "code": 503 })
    );
}
