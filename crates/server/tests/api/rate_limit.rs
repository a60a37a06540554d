//! `RATE_LIMIT_PER_CLIENT` on the tracking endpoints: 429 with
//! `Retry-After` past the rate, per client, with the client found through
//! `TRUSTED_PROXIES` or not. Time is the manual clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, assert_error, spawn_app_with};

async fn track_from(app: &TestApp, id: &str, user: &str, forwarded: Option<&str>) -> Response {
    let mut request = app
        .client
        .post(app.url("/api/v1/impressions"))
        .json(&json!({ "campaign_id": id, "user_id": user, "ad_id": "a" }));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    request.send().await.unwrap()
}

/// How many of `n` tracks from one client, each of a new user, are
/// accepted now.
async fn accepted(app: &TestApp, id: &str, n: usize, forwarded: Option<&str>) -> usize {
    static NEXT_USER: AtomicUsize = AtomicUsize::new(0);
    let mut ok = 0;
    for _ in 0..n {
        let user = format!("u{}", NEXT_USER.fetch_add(1, Ordering::Relaxed));
        let response = track_from(app, id, &user, forwarded).await;
        if response.status() == StatusCode::ACCEPTED {
            ok += 1;
        } else {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        }
    }
    ok
}

#[tokio::test]
async fn past_the_rate_a_client_gets_429_until_it_has_waited() {
    let app = spawn_app_with(&["--rate-limit-per-client", "5"]).await;
    let id = app.create_campaign("limited").await;
    // A second's worth (and the one the allowance runs ahead), then 429.
    assert_eq!(accepted(&app, &id, 6, None).await, 6);
    let refused = track_from(&app, &id, "over", None).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let message = assert_error(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(message.contains("RATE_LIMIT_PER_CLIENT"), "{message}");
    // Without a trusted proxy, X-Forwarded-For is the client's own claim:
    // ignored, so it cannot buy a fresh allowance.
    assert_eq!(accepted(&app, &id, 3, Some("198.51.100.7")).await, 0);
    // The pixel is limited too, and still answers its GIF.
    let pixel = app
        .get(&format!(
            "/api/v1/impressions/pixel.gif?campaign_id={id}&ad_id=a&user_id=p"
        ))
        .await;
    assert_eq!(pixel.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(pixel.headers()["content-type"], "image/gif");
    assert!(
        pixel.headers()["x-impression-error"]
            .to_str()
            .unwrap()
            .contains("RATE_LIMIT_PER_CLIENT")
    );
    // A second later the allowance is back.
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(accepted(&app, &id, 5, None).await, 5);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"impressions_rejected_total{reason="rate_limited"} 5"#),
        "{metrics}"
    );
    // Only what was accepted was counted.
    crate::helpers::eventually(Duration::from_secs(5), || async {
        app.counts(&id).await.2 == 11
    })
    .await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance() {
    let app = spawn_app_with(&[
        "--rate-limit-per-client",
        "5",
        "--trusted-proxies",
        "127.0.0.1,::1",
    ])
    .await;
    let id = app.create_campaign("proxied").await;
    let a = Some("203.0.113.1");
    assert_eq!(accepted(&app, &id, 8, a).await, 6);
    // Another client behind the same proxy is not affected.
    assert_eq!(accepted(&app, &id, 6, Some("203.0.113.2")).await, 6);
    // What A writes to the left of the proxy's entry changes nothing.
    assert_eq!(
        accepted(&app, &id, 2, Some("192.0.2.9, 203.0.113.1")).await,
        0
    );
}

#[tokio::test]
async fn a_batch_is_charged_its_items_and_then_waits_for_them() {
    let app = spawn_app_with(&["--rate-limit-per-client", "5"]).await;
    let id = app.create_campaign("batched").await;
    let batch: Vec<_> = (0..20)
        .map(|u| json!({"campaign_id": id, "user_id": format!("b{u}"), "ad_id": "a"}))
        .collect();
    let response = app
        .post_json("/api/v1/impressions/batch", &json!(batch))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // 20 at 5 a second: four seconds owed, three past the burst.
    let refused = track_from(&app, &id, "after", None).await;
    assert_eq!(refused.headers()["retry-after"], "3");
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS).await;
    let again = app
        .post_json("/api/v1/impressions/batch", &json!(batch))
        .await;
    assert_error(again, StatusCode::TOO_MANY_REQUESTS).await;
    app.clock.advance(Duration::from_secs(3));
    assert_eq!(
        track_from(&app, &id, "after", None).await.status(),
        StatusCode::ACCEPTED
    );
}
