use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backend_test;
use crate::helpers::{assert_error, spawn, spawn_app};

backend_test! {
    async fn create_answers_201_with_location_and_the_campaign(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let response = app
            .post_json(
                "/api/v1/campaigns",
                &json!({ "name": "  Summer sale  ", "start_time": "2025-01-01T01:00:00+01:00" }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let body: Value = response.json().await.unwrap();
        let id = body["id"].as_str().unwrap();
        assert_eq!(location, format!("/api/v1/campaigns/{id}"));
        assert_eq!(body["name"], "Summer sale");
        // The start time is normalised to UTC.
        assert_eq!(body["start_time"], "2025-01-01T00:00:00Z");
        assert_eq!(body["message"], "campaign created");
        assert!(uuid::Uuid::parse_str(id).is_ok());

        let fetched: Value = app.get(&location).await.json().await.unwrap();
        assert_eq!(
            fetched,
            json!({ "id": id, "name": "Summer sale", "start_time": "2025-01-01T00:00:00Z" })
        );
    }
}

#[tokio::test]
async fn start_time_defaults_to_now_and_tolerates_60_seconds_of_skew() {
    let app = spawn_app().await;
    let body: Value = app
        .post_json("/api/v1/campaigns", &json!({ "name": "now" }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["start_time"], "2025-01-01T00:00:00Z");

    let ok = app
        .post_json(
            "/api/v1/campaigns",
            &json!({ "name": "skewed", "start_time": "2024-12-31T23:59:00Z" }),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::CREATED);

    let too_old = app
        .post_json(
            "/api/v1/campaigns",
            &json!({ "name": "old", "start_time": "2024-12-31T23:58:59.999Z" }),
        )
        .await;
    let message = assert_error(too_old, StatusCode::BAD_REQUEST).await;
    assert!(message.contains("in the past"), "{message}");
}

#[tokio::test]
async fn invalid_campaigns_are_refused_with_a_clear_message() {
    let app = spawn_app().await;
    let cases = [
        (json!({ "name": "" }), "name must not be empty"),
        (json!({ "name": "   " }), "name must not be empty"),
        (
            json!({ "name": "x".repeat(257) }),
            "name must be at most 256 characters",
        ),
        (
            json!({ "start_time": "2030-01-01T00:00:00Z" }),
            "missing field `name`",
        ),
        (
            json!({ "name": "n", "start_time": "tomorrow" }),
            "start_time must be an RFC 3339",
        ),
        (
            json!({ "name": "n", "start_time": 1_735_689_600 }),
            "invalid type",
        ),
        (json!({ "name": 7 }), "invalid type"),
    ];
    for (body, expected) in cases {
        let response = app.post_json("/api/v1/campaigns", &body).await;
        let message = assert_error(response, StatusCode::BAD_REQUEST).await;
        assert!(message.contains(expected), "{body}: {message}");
    }
    // 256 characters of three bytes each is still a valid name.
    let response = app
        .post_json("/api/v1/campaigns", &json!({ "name": "€".repeat(256) }))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

backend_test! {
    async fn unknown_and_malformed_ids(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let unknown = "0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a";
        let message = assert_error(
            app.get(&format!("/api/v1/campaigns/{unknown}")).await,
            StatusCode::NOT_FOUND,
        )
        .await;
        assert_eq!(message, format!("campaign {unknown} not found"));
        let message = assert_error(
            app.get("/api/v1/campaigns/nope").await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(message.contains("must be a UUID"), "{message}");
    }
}

backend_test! {
    async fn list_pages_through_every_campaign_in_creation_order(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let mut created = Vec::new();
        for i in 0..7 {
            created.push(app.create_campaign(&format!("c{i}")).await);
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &cursor {
                None => "/api/v1/campaigns?limit=3".to_owned(),
                Some(c) => format!("/api/v1/campaigns?limit=3&cursor={c}"),
            };
            let page: Value = app.get(&path).await.json().await.unwrap();
            pages += 1;
            for c in page["campaigns"].as_array().unwrap() {
                seen.push(c["id"].as_str().unwrap().to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, created);

        let default_page: Value = app.get("/api/v1/campaigns").await.json().await.unwrap();
        assert_eq!(default_page["campaigns"].as_array().unwrap().len(), 7);
        assert_eq!(default_page["next_cursor"], Value::Null);
    }
}

#[tokio::test]
async fn list_rejects_bad_limits_and_cursors() {
    let app = spawn_app().await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "cursor=garbage",
    ] {
        let response = app.get(&format!("/api/v1/campaigns?{query}")).await;
        assert_error(response, StatusCode::BAD_REQUEST).await;
    }
    let ok = app.get("/api/v1/campaigns?limit=1000").await;
    assert_eq!(ok.status(), StatusCode::OK);
}
