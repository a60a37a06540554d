//! Event timestamps: accepted range, late events in their own windows,
//! dedup by event time.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::backend_test;
use crate::helpers::{TestApp, assert_error, spawn, spawn_app};

async fn track_at(app: &TestApp, c: &str, user: &str, timestamp: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/impressions?wait=true",
        &json!({ "campaign_id": c, "user_id": user, "ad_id": "a", "timestamp": timestamp }),
    )
    .await
}

async fn status_of(response: reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    body["status"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn timestamps_outside_the_accepted_range_are_400_naming_it() {
    let app = spawn_app().await;
    let c = app.create_campaign("c").await;
    app.clock.advance(Duration::from_secs(3600));
    // The clock is now 01:00:00; defaults: 10 min old, 5 s ahead.
    let message = assert_error(
        track_at(&app, &c, "u", "2025-01-01T01:00:05.001Z").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        message,
        "timestamp 2025-01-01T01:00:05.001Z is outside the accepted range \
         2025-01-01T00:50:00Z ..= 2025-01-01T01:00:05Z: events may be at most 10m old \
         (MAX_EVENT_AGE) and 5s ahead of the server clock (MAX_CLOCK_SKEW)"
    );
    assert_error(
        track_at(&app, &c, "u", "2025-01-01T00:49:59.999Z").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        track_at(&app, &c, "u", "01:00").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        status_of(track_at(&app, &c, "u1", "2025-01-01T01:00:05Z").await).await,
        "counted"
    );
    assert_eq!(
        status_of(track_at(&app, &c, "u2", "2025-01-01T00:50:00Z").await).await,
        "counted"
    );
}

backend_test! {
    async fn an_event_before_the_campaign_start_is_409(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let response = app
            .post_json(
                "/api/v1/campaigns",
                &json!({ "name": "c", "start_time": "2025-01-01T00:00:30Z" }),
            )
            .await;
        let c = response.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        app.clock.advance(Duration::from_secs(60));
        assert_error(
            track_at(&app, &c, "u", "2025-01-01T00:00:29Z").await,
            StatusCode::CONFLICT,
        )
        .await;
        assert_eq!(
            status_of(track_at(&app, &c, "u", "2025-01-01T00:00:30Z").await).await,
            "counted"
        );
    }
}

backend_test! {
    async fn late_events_count_in_the_windows_of_their_own_time(backend: Backend) {
        let app = spawn(backend, &["--max-event-age", "3h"]).await;
        let c = app.create_campaign("c").await;
        app.clock.advance(Duration::from_secs(3 * 3600));
        // Now 03:00. A 30-minute-old event is in the last hour; a 2-hour-old
        // one is in the day but not the hour.
        assert_eq!(
            status_of(track_at(&app, &c, "u1", "2025-01-01T02:30:00Z").await).await,
            "counted"
        );
        assert_eq!(
            status_of(track_at(&app, &c, "u2", "2025-01-01T01:00:00Z").await).await,
            "counted"
        );
        assert_eq!(app.counts(&c).await, (1, 2, 2));
    }
}

backend_test! {
    async fn dedup_uses_event_time_both_ways(backend: Backend) {
        let app = spawn(backend, &["--max-event-age", "3h", "--ttl", "1h"]).await;
        let c = app.create_campaign("c").await;
        app.clock.advance(Duration::from_secs(3 * 3600));
        // Counted at 02:30 (L). 01:31 is within an hour before L: duplicate.
        assert_eq!(
            status_of(track_at(&app, &c, "u", "2025-01-01T02:30:00Z").await).await,
            "counted"
        );
        assert_eq!(
            status_of(track_at(&app, &c, "u", "2025-01-01T01:30:00.001Z").await).await,
            "duplicate"
        );
        // Exactly one TTL before L: counted, and L stays at 02:30.
        assert_eq!(
            status_of(track_at(&app, &c, "u", "2025-01-01T01:30:00Z").await).await,
            "counted"
        );
        assert_eq!(
            status_of(track_at(&app, &c, "u", "2025-01-01T03:00:00Z").await).await,
            "duplicate"
        );
        assert_eq!(app.counts(&c).await, (1, 2, 2));
    }
}
