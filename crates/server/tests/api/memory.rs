//! The memory budget (`MEMORY_LIMIT`): what is refused at the limit, what
//! still works, and that room comes back as state expires. In process with
//! the manual clock here; `memory_flood.rs` floods the real binary.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, eventually, spawn_app_with};

/// One batch of `n` new users of `campaign`, spread over `ads` ad ids.
fn batch(campaign: &str, from: usize, n: usize, ads: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|u| json!({"campaign_id": campaign, "user_id": format!("user-{u}"), "ad_id": format!("ad-{}", u % ads)}))
            .collect(),
    )
}

#[tokio::test]
async fn at_the_limit_new_state_is_refused_duplicates_answered_and_expiry_makes_room() {
    let app = spawn_app_with(&[
        "--memory-limit",
        "2MiB",
        "--ttl",
        "60s",
        "--max-event-age",
        "0s",
    ])
    .await;
    let id = app.create_campaign("flooded").await;
    let first = app.track_and_wait(&id, "first-user", "ad-0").await;
    assert_eq!(first, "counted");

    // New users until the budget refuses them: each batch answers what it
    // counted; the refused items carry 503.
    let (mut counted, mut refused, mut sent) = (0u64, 0u64, 0usize);
    while refused == 0 {
        assert!(sent < 2_000_000, "2 MiB never filled up");
        let response = app
            .post_json(
                "/api/v1/impressions/batch?wait=true",
                &batch(&id, sent, 5_000, 300),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        counted += body["counted"].as_u64().unwrap();
        for item in body["rejected"].as_array().unwrap() {
            assert_eq!(item["code"], 503, "{item}");
            assert!(
                item["error"].as_str().unwrap().contains("MEMORY_LIMIT"),
                "{item}"
            );
            refused += 1;
        }
        sent += 5_000;
    }

    // A single request is refused the same way, with the JSON error and
    // Retry-After.
    let response = app.track(&id, "one-more-new-user", "ad-0").await;
    assert_eq!(response.headers()["retry-after"], "5");
    let message = assert_error(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(message.contains("memory limit is reached"), "{message}");

    // A duplicate adds nothing: still answered.
    assert_eq!(
        app.track_and_wait(&id, "first-user", "ad-0").await,
        "duplicate"
    );
    // Reads keep working, and every acknowledged impression is counted.
    let (_, _, total) = app.counts(&id).await;
    assert_eq!(total, counted + 1, "counted as acknowledged");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"impressions_rejected_total{reason="memory_limit"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("memory_limit_bytes 2097152"), "{metrics}");
    for kind in ["dedup", "counters", "sketches", "campaigns", "queue"] {
        assert!(
            metrics.contains(&format!("memory_state_bytes{{kind=\"{kind}\"}}")),
            "{kind}: {metrics}"
        );
    }

    // Once the keys expire (TTL + the 30 s ingest grace), the upkeep frees
    // their room and new users are counted again, by themselves.
    app.clock.advance(Duration::from_secs(200));
    eventually(Duration::from_secs(10), || async {
        app.track(&id, "after-expiry", "ad-0").await.status() == StatusCode::ACCEPTED
    })
    .await;
}

#[tokio::test]
async fn without_a_limit_nothing_is_refused_for_memory() {
    let app = spawn_app_with(&["--memory-limit", "0"]).await;
    let id = app.create_campaign("unbounded").await;
    let response = app
        .post_json(
            "/api/v1/impressions/batch?wait=true",
            &batch(&id, 0, 5_000, 10),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["counted"], 5_000);
    assert!(app.metrics().await.contains("memory_limit_bytes 0"));
}
