//! The framework's own rejections come back in the API's error shape.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn unknown_route_is_404_json() {
    let app = spawn_app().await;
    let message = assert_error(app.get("/api/v2/everything").await, StatusCode::NOT_FOUND).await;
    assert_eq!(message, "no route for GET /api/v2/everything");
}

#[tokio::test]
async fn wrong_method_is_405_json_with_allow() {
    let app = spawn_app().await;
    let response = app
        .client
        .delete(app.url("/api/v1/impressions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    let message = assert_error(response, StatusCode::METHOD_NOT_ALLOWED).await;
    assert_eq!(message, "method DELETE is not allowed on this route");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    for body in ["{", "not json", "", "{\"name\": \"x\",}"] {
        let response = app
            .client
            .post(app.url("/api/v1/campaigns"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = spawn_app().await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = app
            .client
            .post(app.url("/api/v1/impressions"))
            .body(r#"{"campaign_id":"x","user_id":"u","ad_id":"a"}"#);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let message = assert_error(
            request.send().await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        )
        .await;
        assert!(message.contains("application/json"), "{message}");
    }
}

#[tokio::test]
async fn the_track_route_has_the_same_body_limit_and_answer() {
    // The single-impression route is called without the router and applies
    // the body limit itself: same limit, same 413, same message.
    let app = spawn_app_with(&["--max-body-bytes", "2000"]).await;
    let c = app.create_campaign("c").await;
    let over = json!({ "campaign_id": c, "user_id": "u".repeat(3000), "ad_id": "a" });
    let message = assert_error(
        app.post_json("/api/v1/impressions", &over).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    let campaigns = assert_error(
        app.post_json("/api/v1/campaigns", &json!({ "name": "x".repeat(3000) }))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(message, campaigns);
    // Under the limit, the body is read and judged on its content.
    let under = json!({ "campaign_id": c, "user_id": "u".repeat(1000), "ad_id": "a" });
    let message = assert_error(
        app.post_json("/api/v1/impressions", &under).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(message.contains("MAX_ID_BYTES"), "{message}");
}

#[tokio::test]
async fn body_over_one_mebibyte_is_413() {
    let app = spawn_app().await;
    let huge = json!({ "name": "x".repeat(1024 * 1024) });
    let message = assert_error(
        app.post_json("/api/v1/campaigns", &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert!(message.contains("length limit"), "{message}");
    // Just under the limit is parsed (and refused for its name, not its size).
    let big = json!({ "name": "x".repeat(1000 * 1000) });
    assert_error(
        app.post_json("/api/v1/campaigns", &big).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}
