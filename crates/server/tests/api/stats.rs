use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::backend_test;
use crate::helpers::{T0, assert_error, spawn};

backend_test! {
    async fn stats_have_exactly_the_five_fields(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = app.create_campaign("c").await;
        let body = app.stats(&c).await;
        let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["campaign_id", "last_day", "last_hour", "total", "unique_users"]);
        assert_eq!(
            body["unique_users"],
            serde_json::json!({ "last_hour": 0, "last_day": 0, "total": 0 })
        );
        assert_eq!(body["campaign_id"], Value::String(c.clone()));
        assert_eq!(app.counts(&c).await, (0, 0, 0));
    }
}

backend_test! {
    async fn windows_roll_over_at_the_hour_and_the_day(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = app.create_campaign("c").await;
        for user in ["a", "b", "c"] {
            assert_eq!(app.track_and_wait(&c, user, "ad").await, "counted");
        }
        // 59 min 59.999 s later: still in the hour.
        app.clock.advance(Duration::from_millis(3_599_999));
        assert_eq!(app.counts(&c).await, (3, 3, 3));
        app.clock.advance(Duration::from_millis(1));
        assert_eq!(app.counts(&c).await, (0, 3, 3));
        // A fourth one, an hour in.
        assert_eq!(app.track_and_wait(&c, "d", "ad").await, "counted");
        assert_eq!(app.counts(&c).await, (1, 4, 4));
        app.clock
            .set(T0.saturating_add(Duration::from_secs(86_399)));
        assert_eq!(app.counts(&c).await, (0, 4, 4));
        app.clock
            .set(T0.saturating_add(Duration::from_secs(86_400)));
        assert_eq!(app.counts(&c).await, (0, 1, 4));
        app.clock
            .set(T0.saturating_add(Duration::from_secs(86_400 + 3600)));
        assert_eq!(app.counts(&c).await, (0, 0, 4));
    }
}

backend_test! {
    async fn stats_of_unknown_or_malformed_campaigns(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let response = app
            .get("/api/v1/campaigns/0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a/stats")
            .await;
        assert_error(response, StatusCode::NOT_FOUND).await;
        assert_error(
            app.get("/api/v1/campaigns/123/stats").await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
}
