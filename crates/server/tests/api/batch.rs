//! `POST /api/v1/impressions/batch`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backend_test;
use crate::helpers::{TestApp, assert_error, eventually, spawn, spawn_app, spawn_app_with};

const UNKNOWN: &str = "0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a";

async fn post_batch(
    app: &TestApp,
    query: &str,
    content_type: &str,
    body: String,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/impressions/batch{query}")))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

fn item(c: &str, user: &str, ad: &str) -> Value {
    json!({ "campaign_id": c, "user_id": user, "ad_id": ad })
}

backend_test! {
    async fn a_partial_batch_accepts_the_valid_items_and_lists_the_rest(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = app.create_campaign("c").await;
        let later: Value = app
            .post_json(
                "/api/v1/campaigns",
                &json!({ "name": "later", "start_time": "2025-01-02T00:00:00Z" }),
            )
            .await
            .json()
            .await
            .unwrap();
        let batch = json!([
            item(&c, "u1", "a"),
            item(UNKNOWN, "u1", "a"),
            item(&c, "", "a"),
            item(later["id"].as_str().unwrap(), "u1", "a"),
            { "campaign_id": c, "user_id": 7, "ad_id": "a" },
            "not an object",
            item(&c, "u2", "a"),
            item(&c, "u1", "a"),
        ]);
        let response = post_batch(&app, "", "application/json", batch.to_string()).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["accepted"], 3);
        let rejected = body["rejected"].as_array().unwrap();
        let summary: Vec<(u64, u64)> = rejected
            .iter()
            .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            summary,
            vec![(1, 404), (2, 400), (3, 409), (4, 400), (5, 400)]
        );
        assert!(
            rejected[1]["error"]
                .as_str()
                .unwrap()
                .contains("user_id must not be empty")
        );
        // Accepted: u1 and u2 counted, the second u1 is a duplicate.
        eventually(Duration::from_secs(5), || async {
            app.counts(&c).await.2 == 2
        })
        .await;
    }
}

backend_test! {
    async fn wait_true_reports_counted_and_duplicates(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = app.create_campaign("c").await;
        let batch = json!([
            item(&c, "u1", "a"),
            item(&c, "u1", "a"),
            item(&c, "u2", "a"),
            item(UNKNOWN, "u", "a")
        ]);
        let response = post_batch(&app, "?wait=true", "application/json", batch.to_string()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["counted"], 2);
        assert_eq!(body["duplicates"], 1);
        assert_eq!(body["rejected"][0]["index"], 3);
        assert_eq!(body["rejected"][0]["code"], 404);
        assert_eq!(app.counts(&c).await, (2, 2, 2));
    }
}

backend_test! {
    async fn ndjson_with_a_broken_line_counts_the_others(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = app.create_campaign("c").await;
        let body = format!(
            "{}\n{{\"campaign_id\": broken\n\n{}\r\n{}",
            item(&c, "u1", "a"),
            item(&c, "u2", "a"),
            item(&c, "u3", "b")
        );
        let response = post_batch(&app, "?wait=true", "application/x-ndjson", body).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["counted"], 3);
        assert_eq!(body["rejected"].as_array().unwrap().len(), 1);
        assert_eq!(body["rejected"][0]["index"], 1);
        assert_eq!(body["rejected"][0]["code"], 400);
    }
}

#[tokio::test]
async fn over_the_item_limit_is_413_and_at_it_is_fine() {
    let app = spawn_app_with(&["--batch-max-items", "50"]).await;
    let c = app.create_campaign("c").await;
    let items = |n: usize| Value::Array((0..n).map(|i| item(&c, &format!("u{i}"), "a")).collect());
    let message = assert_error(
        post_batch(&app, "", "application/json", items(51).to_string()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(
        message,
        "the batch holds 51 impressions; at most 50 per request"
    );
    let ok = post_batch(
        &app,
        "?wait=true",
        "application/json",
        items(50).to_string(),
    )
    .await;
    assert_eq!(ok.json::<Value>().await.unwrap()["counted"], 50);
}

backend_test! {
    async fn ten_thousand_items_are_fine_by_default(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = app.create_campaign("c").await;
        let body: String = (0..10_000)
            .map(|i| format!("{}\n", item(&c, &format!("u{i}"), "a")))
            .collect();
        let response = post_batch(&app, "?wait=true", "application/x-ndjson", body).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.json::<Value>().await.unwrap()["counted"], 10_000);
        let one_more: String = (0..10_001)
            .map(|i| format!("{}\n", item(&c, &format!("v{i}"), "a")))
            .collect();
        let response = post_batch(&app, "", "application/x-ndjson", one_more).await;
        assert_error(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    }
}

#[tokio::test]
async fn over_the_byte_limit_is_413() {
    let app = spawn_app().await;
    let c = app.create_campaign("c").await;
    // 8 MiB and a bit, in few items.
    let user = "u".repeat(500);
    let line = format!("{}\n", item(&c, &user, "a"));
    let body = line.repeat((8 * 1024 * 1024) / line.len() + 10);
    let message = assert_error(
        post_batch(&app, "", "application/x-ndjson", body).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert!(message.contains("8388608 bytes"), "{message}");
}

#[tokio::test]
async fn unreadable_batches_are_400_or_415() {
    let app = spawn_app().await;
    for body in ["{\"campaign_id\": \"x\"}", "[1, 2", "", "[]"] {
        assert_error(
            post_batch(&app, "", "application/json", body.into()).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    assert_error(
        post_batch(&app, "", "application/x-ndjson", "\n\n".into()).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let message = assert_error(
        post_batch(&app, "", "text/csv", "a,b".into()).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    assert!(message.contains("application/x-ndjson"), "{message}");
}
