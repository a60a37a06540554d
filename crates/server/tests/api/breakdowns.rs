//! `stats?by=ad` and `timeseries`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backend_test;
use crate::helpers::{T0, TestApp, assert_error, spawn, spawn_app};

async fn series(app: &TestApp, c: &str, query: &str) -> Value {
    let response = app
        .get(&format!("/api/v1/campaigns/{c}/timeseries?{query}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    response.json().await.unwrap()
}

fn sum(series: &Value) -> u64 {
    series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .sum()
}

backend_test! {
    async fn stats_by_ad_break_the_counts_down_and_plain_stats_are_unchanged(backend: Backend) {
        let app = spawn(backend, &["--max-ads-per-campaign", "2"]).await;
        let c = app.create_campaign("c").await;
        for (user, ad) in [
            ("u1", "banner"),
            ("u2", "banner"),
            ("u1", "video"),
            ("u1", "third"),
            ("u2", "fourth"),
        ] {
            assert_eq!(app.track_and_wait(&c, user, ad).await, "counted");
        }
        let plain = app.stats(&c).await;
        assert_eq!(plain.as_object().unwrap().len(), 5);
        // Two people saw the campaign's five impressions.
        let users = |n: u64| json!({ "last_hour": n, "last_day": n, "total": n });
        assert_eq!(plain["unique_users"], users(2));
        let by_ad: Value = app
            .get(&format!("/api/v1/campaigns/{c}/stats?by=ad"))
            .await
            .json()
            .await
            .unwrap();
        let counts = |n: u64, u: u64| {
            json!({ "last_hour": n, "last_day": n, "total": n, "unique_users": users(u) })
        };
        assert_eq!(by_ad["total"], 5);
        assert_eq!(by_ad["unique_users"], users(2));
        assert_eq!(
            by_ad["ads"],
            json!({ "banner": counts(2, 2), "video": counts(1, 1) })
        );
        assert_eq!(by_ad["other_ads"], counts(2, 2));
        assert_eq!(by_ad["ads_limit"], 2);
        assert_eq!(by_ad["ads_limit_exceeded"], true);
        assert_error(
            app.get(&format!("/api/v1/campaigns/{c}/stats?by=user"))
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
}

backend_test! {
    async fn series_are_zero_filled_aligned_and_sum_to_the_windows(backend: Backend) {
        let app = spawn(backend, &["--max-event-age", "24h"]).await;
        let c = app.create_campaign("c").await;
        // Events spread over a day, posted late from the day's end.
        app.clock
            .set(T0.saturating_add(Duration::from_secs(86_400 - 1)));
        let mut batch = Vec::new();
        for i in 0..200u64 {
            let t = T0.as_millis() + i * 431_999; // ~7 min 12 s apart
            let ts =
                impression_counter::timefmt::format_rfc3339(impression_core::Timestamp::from_millis(t));
            batch.push(
                json!({ "campaign_id": c, "user_id": format!("u{i}"), "ad_id": "a", "timestamp": ts }),
            );
        }
        let response = app
            .client
            .post(app.url("/api/v1/impressions/batch?wait=true"))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(response.json::<Value>().await.unwrap()["counted"], 200);

        // Now is 23:59:59, the last second of a minute and an hour: 1,440
        // minute buckets and 24 hour buckets cover the day window exactly.
        let (hour, day, _) = app.counts(&c).await;
        let seconds = series(&app, &c, "resolution=second&window=1h").await;
        assert_eq!(seconds["points"].as_array().unwrap().len(), 3600);
        assert_eq!(sum(&seconds), hour);
        let minutes = series(&app, &c, "resolution=minute&window=24h").await;
        assert_eq!(minutes["points"].as_array().unwrap().len(), 1440);
        assert_eq!(minutes["points"][0]["t"], "2025-01-01T00:00:00Z");
        assert_eq!(sum(&minutes), day);
        let hours = series(&app, &c, "resolution=hour&window=24h").await;
        assert_eq!(hours["points"].as_array().unwrap().len(), 24);
        assert_eq!(hours["points"][23]["t"], "2025-01-01T23:00:00Z");
        assert_eq!(sum(&hours), day);
        assert_eq!(day, 200);
        // Zero-filled: the first minute holds the first event, the second none.
        assert_eq!(minutes["points"][0]["count"], 1);
        assert_eq!(minutes["points"][1]["count"], 0);
    }
}

#[tokio::test]
async fn defaults_and_limits_of_the_series() {
    let app = spawn_app().await;
    let c = app.create_campaign("c").await;
    let default = series(&app, &c, "").await;
    assert_eq!(default["resolution"], "minute");
    assert_eq!(default["points"].as_array().unwrap().len(), 60);
    assert_eq!(
        series(&app, &c, "resolution=hour&window=168h").await["points"]
            .as_array()
            .unwrap()
            .len(),
        168
    );
    assert_eq!(
        series(&app, &c, "resolution=second&window=90s").await["points"]
            .as_array()
            .unwrap()
            .len(),
        90
    );
    for (query, expected) in [
        (
            "resolution=second&window=61m",
            "at most 1h for resolution=second",
        ),
        (
            "resolution=minute&window=25h",
            "at most 1d for resolution=minute",
        ),
        (
            "resolution=hour&window=8d",
            "at most 7d for resolution=hour",
        ),
        (
            "resolution=day&window=401d",
            "at most 400d for resolution=day",
        ),
        ("resolution=week", "resolution must be"),
        ("window=0s", "more than 0"),
        ("window=forever", "window:"),
    ] {
        let message = assert_error(
            app.get(&format!("/api/v1/campaigns/{c}/timeseries?{query}"))
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(message.contains(expected), "{query}: {message}");
    }
    assert_error(
        app.get("/api/v1/campaigns/0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a/timeseries")
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}
