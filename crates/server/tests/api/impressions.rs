use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backend_test;
use crate::helpers::{
    GatedStore, T0, assert_error, config, eventually, spawn, spawn_app, spawn_app_on,
};

backend_test! {
    async fn track_answers_202_and_is_counted(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = app.create_campaign("c").await;
        let response = app.track(&c, "user-1", "ad-1").await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({ "message": "impression accepted" }));
        eventually(Duration::from_secs(5), || async {
            app.counts(&c).await == (1, 1, 1)
        })
        .await;
    }
}

backend_test! {
    async fn wait_true_reports_counted_then_duplicate(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = app.create_campaign("c").await;
        assert_eq!(app.track_and_wait(&c, "u", "a").await, "counted");
        assert_eq!(app.track_and_wait(&c, "u", "a").await, "duplicate");
        assert_eq!(app.track_and_wait(&c, "u", "other-ad").await, "counted");
        assert_eq!(app.track_and_wait(&c, "other-user", "a").await, "counted");
        assert_eq!(app.counts(&c).await, (3, 3, 3));
    }
}

backend_test! {
    async fn ttl_boundary_is_exact_to_the_millisecond(backend: Backend) {
        let app = spawn(backend, &["--ttl", "2s"]).await;
        let c = app.create_campaign("c").await;
        assert_eq!(app.track_and_wait(&c, "u", "a").await, "counted");
        app.clock.advance(Duration::from_millis(1999));
        assert_eq!(app.track_and_wait(&c, "u", "a").await, "duplicate");
        app.clock.advance(Duration::from_millis(1));
        assert_eq!(app.track_and_wait(&c, "u", "a").await, "counted");
        // The duplicate at 1999 ms did not extend the window: the next one opens
        // at 2000 ms, so 3999 ms is a duplicate and 4000 ms counts.
        app.clock.advance(Duration::from_millis(1999));
        assert_eq!(app.track_and_wait(&c, "u", "a").await, "duplicate");
        app.clock.advance(Duration::from_millis(1));
        assert_eq!(app.track_and_wait(&c, "u", "a").await, "counted");
        assert_eq!(app.counts(&c).await.2, 3);
    }
}

backend_test! {
    async fn campaign_scope_counts_a_user_once_across_ads(backend: Backend) {
        let app = spawn(backend, &["--dedup-scope", "campaign"]).await;
        let c = app.create_campaign("c").await;
        assert_eq!(app.track_and_wait(&c, "u", "ad-1").await, "counted");
        assert_eq!(app.track_and_wait(&c, "u", "ad-2").await, "duplicate");
    }
}

backend_test! {
    async fn unknown_campaign_is_404_and_unstarted_is_409(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let unknown = "0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a";
        let message = assert_error(app.track(unknown, "u", "a").await, StatusCode::NOT_FOUND).await;
        assert_eq!(message, format!("campaign {unknown} not found"));

        let future: Value = app
            .post_json(
                "/api/v1/campaigns",
                &json!({ "name": "later", "start_time": "2025-01-01T01:00:00Z" }),
            )
            .await
            .json()
            .await
            .unwrap();
        let id = future["id"].as_str().unwrap();
        let message = assert_error(app.track(id, "u", "a").await, StatusCode::CONFLICT).await;
        assert!(
            message.contains("starts at 2025-01-01T01:00:00Z"),
            "{message}"
        );

        // From its start time on, it counts.
        app.clock.set(T0.saturating_add(Duration::from_secs(3600)));
        assert_eq!(app.track_and_wait(id, "u", "a").await, "counted");
    }
}

#[tokio::test]
async fn invalid_bodies_are_400_with_the_reason() {
    let app = spawn_app().await;
    let c = app.create_campaign("c").await;
    let long = "x".repeat(513);
    let cases = [
        (
            json!({ "campaign_id": c, "user_id": "", "ad_id": "a" }),
            "user_id must not be empty",
        ),
        (
            json!({ "campaign_id": c, "user_id": "u", "ad_id": "" }),
            "ad_id must not be empty",
        ),
        (
            json!({ "campaign_id": c, "user_id": long, "ad_id": "a" }),
            "user_id must be at most 512 bytes",
        ),
        (
            json!({ "campaign_id": c, "user_id": "u", "ad_id": long }),
            "ad_id must be at most 512 bytes",
        ),
        (
            json!({ "campaign_id": "nope", "user_id": "u", "ad_id": "a" }),
            "campaign_id must be a UUID",
        ),
        (
            json!({ "campaign_id": c, "user_id": "u" }),
            "missing field `ad_id`",
        ),
        (
            json!({ "campaign_id": c, "user_id": 5, "ad_id": "a" }),
            "invalid type",
        ),
        (json!([1, 2, 3]), "invalid type"),
    ];
    for (body, expected) in cases {
        let message = assert_error(
            app.post_json("/api/v1/impressions", &body).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(message.contains(expected), "{body}: {message}");
    }
    // 512 bytes exactly is fine.
    let max = "y".repeat(512);
    assert_eq!(app.track_and_wait(&c, &max, &max).await, "counted");
    let wait_garbage = app
        .post_json(
            "/api/v1/impressions?wait=maybe",
            &json!({ "campaign_id": c, "user_id": "u", "ad_id": "a" }),
        )
        .await;
    assert_error(wait_garbage, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_loses_nothing_accepted() {
    let config = config(&[
        "--impressions-queue-size",
        "2",
        "--impression-workers",
        "1",
        "--enqueue-timeout",
        "50ms",
    ]);
    let (store, gate) = GatedStore::new(&config);
    let app = spawn_app_on(config, store.clone()).await;
    let c = app.create_campaign("c").await;

    // The worker holds one batch at the gate; the queue holds two more.
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..10 {
        let response = app.track(&c, &format!("u{i}"), "a").await;
        match response.status() {
            StatusCode::ACCEPTED => accepted += 1,
            _ => {
                refused = Some(response);
                break;
            }
        }
    }
    let refused = refused.expect("the queue filled up");
    assert_eq!(refused.headers()["retry-after"], "1");
    let message = assert_error(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(message.contains("queue is full"), "{message}");
    assert!((2..=3).contains(&accepted), "accepted {accepted}");

    gate.send(true).unwrap();
    eventually(Duration::from_secs(5), || async {
        app.counts(&c).await.2 == accepted
    })
    .await;
    // Applied impressions give their room back: the queue takes more again.
    for i in 0..10 {
        let response = app.track(&c, &format!("after{i}"), "a").await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "after {i}");
        eventually(Duration::from_secs(5), || async {
            app.counts(&c).await.2 == accepted + i + 1
        })
        .await;
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"impressions_rejected_total{reason="queue_full"} 1"#),
        "{metrics}"
    );
}
