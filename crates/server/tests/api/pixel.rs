//! `GET /api/v1/impressions/pixel.gif`.

use std::time::Duration;

use reqwest::StatusCode;

use crate::backend_test;
use crate::helpers::{T0, TestApp, spawn, spawn_app, spawn_app_with};

async fn pixel(app: &TestApp, query: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .get(app.url(&format!("/api/v1/impressions/pixel.gif?{query}")));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

/// Asserts the answer is the 43-byte GIF, uncacheable; returns the error header.
async fn assert_gif(response: reqwest::Response, status: StatusCode) -> Option<String> {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "image/gif");
    assert_eq!(
        response.headers()["cache-control"],
        "no-store, no-cache, must-revalidate"
    );
    let error = response
        .headers()
        .get("x-impression-error")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), 43);
    assert!(body.starts_with(b"GIF89a"));
    error
}

backend_test! {
    async fn the_pixel_counts_like_the_post(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = app.create_campaign("c").await;
        let error = assert_gif(
            pixel(&app, &format!("campaign_id={c}&ad_id=a&user_id=u1"), None).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(error, None);
        crate::helpers::eventually(Duration::from_secs(5), || async {
            app.counts(&c).await.2 == 1
        })
        .await;
        // The same key through the POST is a duplicate.
        assert_eq!(app.track_and_wait(&c, "u1", "a").await, "duplicate");
    }
}

#[tokio::test]
async fn the_user_id_comes_from_the_cookie_when_absent() {
    let app = spawn_app_with(&["--pixel-cookie", "visitor"]).await;
    let c = app.create_campaign("c").await;
    let q = format!("campaign_id={c}&ad_id=a");
    assert_gif(
        pixel(&app, &q, Some("theme=dark; visitor=v-42")).await,
        StatusCode::OK,
    )
    .await;
    crate::helpers::eventually(Duration::from_secs(5), || async {
        app.counts(&c).await.2 == 1
    })
    .await;
    assert_eq!(app.track_and_wait(&c, "v-42", "a").await, "duplicate");
}

#[tokio::test]
async fn with_pixel_id_off_a_missing_user_id_is_refused() {
    let app = spawn_app_with(&["--pixel-cookie", "visitor", "--pixel-id", "off"]).await;
    let c = app.create_campaign("c").await;
    let q = format!("campaign_id={c}&ad_id=a");
    // No user id anywhere: 400, still a GIF, and no cookie offered.
    let response = pixel(&app, &q, Some("uid=wrong-cookie")).await;
    assert!(response.headers().get("set-cookie").is_none());
    let error = assert_gif(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(
        error.as_deref(),
        Some("user_id is missing: pass it in the URL or the `visitor` cookie")
    );
    // The cookie still works.
    assert_gif(pixel(&app, &q, Some("visitor=v-1")).await, StatusCode::OK).await;
}

#[tokio::test]
async fn refusals_carry_the_status_and_the_reason() {
    let app = spawn_app().await;
    let c = app.create_campaign("c").await;
    let unknown = "0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a";
    let cases = [
        (
            "ad_id=a&user_id=u".to_owned(),
            StatusCode::BAD_REQUEST,
            "campaign_id is required",
        ),
        (
            format!("campaign_id={c}&user_id=u"),
            StatusCode::BAD_REQUEST,
            "ad_id is required",
        ),
        (
            "campaign_id=nope&ad_id=a&user_id=u".to_owned(),
            StatusCode::BAD_REQUEST,
            "campaign_id must be a UUID",
        ),
        (
            format!("campaign_id={unknown}&ad_id=a&user_id=u"),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            format!("campaign_id={c}&ad_id=a&user_id=u&ts=yesterday"),
            StatusCode::BAD_REQUEST,
            "ts must be Unix milliseconds or an RFC 3339",
        ),
        (
            format!("campaign_id={c}&ad_id=a&user_id=u&ts=0"),
            StatusCode::BAD_REQUEST,
            "outside the accepted range",
        ),
        (
            format!("campaign_id={c}&ad_id=a&user_id=u&ad_id=%FF"),
            StatusCode::BAD_REQUEST,
            "",
        ),
    ];
    for (query, status, reason) in cases {
        let error = assert_gif(pixel(&app, &query, None).await, status)
            .await
            .expect("an error header");
        assert!(error.contains(reason), "{query}: {error}");
    }
}

backend_test! {
    async fn ts_accepts_unix_milliseconds_and_rfc3339(backend: Backend) {
        let app = spawn(backend, &["--max-event-age", "1h"]).await;
        let c = app.create_campaign("c").await;
        app.clock.advance(Duration::from_secs(7200));
        // 30 minutes ago, in both forms: late events land in their own minute.
        let ms = T0.as_millis() + 5400 * 1000;
        assert_gif(
            pixel(
                &app,
                &format!("campaign_id={c}&ad_id=a&user_id=u1&ts={ms}"),
                None,
            )
            .await,
            StatusCode::OK,
        )
        .await;
        assert_gif(
            pixel(
                &app,
                &format!("campaign_id={c}&ad_id=a&user_id=u2&ts=2025-01-01T01:30:00%2B00:00"),
                None,
            )
            .await,
            StatusCode::OK,
        )
        .await;
        crate::helpers::eventually(Duration::from_secs(5), || async {
            app.counts(&c).await.2 == 2
        })
        .await;
        let series: serde_json::Value = app
            .get(&format!(
                "/api/v1/campaigns/{c}/timeseries?resolution=minute&window=60m"
            ))
            .await
            .json()
            .await
            .unwrap();
        // 60 buckets ending with the current minute, 02:00: 01:30 is the 30th.
        let points = series["points"].as_array().unwrap();
        assert_eq!(points[29]["t"], "2025-01-01T01:30:00Z");
        assert_eq!(points[29]["count"], 2);
        assert_eq!(
            points
                .iter()
                .map(|p| p["count"].as_u64().unwrap())
                .sum::<u64>(),
            2
        );
    }
}
