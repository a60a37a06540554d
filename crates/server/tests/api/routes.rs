//! The route table ([`impression_counter::paths`]) against what is served
//! and documented, and the edge's direct call of the hot route against the
//! router's.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use impression_core::{Clock, ManualClock};
use impression_counter::paths::ROUTES;
use impression_counter::startup::{self, Application};
use impression_counter::{routes, storage};
use serde_json::{Value, json};
use tower::{Service, ServiceExt};

use crate::helpers::{T0, config, spawn_app};

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_documented_routes() {
    let app = spawn_app().await;
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    let documented: BTreeSet<&str> = spec["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    let table: BTreeSet<&str> = ROUTES
        .iter()
        .filter(|r| r.documented)
        .map(|r| r.path)
        .collect();
    assert_eq!(documented, table);
}

#[tokio::test]
async fn every_route_in_the_table_is_served() {
    let app = spawn_app().await;
    let id = app.create_campaign("routes").await;
    for route in ROUTES {
        let path = route
            .path
            .replace("{id}", &id)
            .replace("{*rest}", "index.css")
            .replace("{file}", "dashboard.js");
        // A route that exists answers another method with 405; a path no
        // route serves, 404.
        let response = app.client.delete(app.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
    let response = app.client.delete(app.url("/api/v1/nothing")).send().await;
    assert_eq!(response.unwrap().status(), StatusCode::NOT_FOUND);
}

/// What a request got: status, content type and body.
type Answer = (StatusCode, Option<String>, Vec<u8>);

async fn answer(response: axum::response::Response) -> Answer {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, body.to_vec())
}

/// The edge serves `POST /api/v1/impressions` without the router (see
/// `EdgeRoutes::track`); the router keeps its handler for everyone else.
/// Both must answer every kind of request alike.
#[tokio::test]
async fn the_edge_and_the_router_answer_the_hot_route_alike() {
    let config = config(&["--storage", "memory", "--max-body-bytes", "2048"]);
    let clock = Arc::new(ManualClock::new(T0));
    let store = storage::open(&config.storage(), Arc::clone(&clock) as Arc<dyn Clock>)
        .await
        .unwrap();
    let application = Application::build_with(&config, store, clock as Arc<dyn Clock>)
        .await
        .unwrap();
    let state = application.state().clone();
    let create = |body: Value| {
        let router = routes::router(state.clone());
        async move {
            let created = router
                .oneshot(
                    Request::post("/api/v1/campaigns")
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(body.to_string()))
                        .unwrap(),
                )
                .await
                .unwrap();
            let (status, _, body) = answer(created).await;
            assert_eq!(status, StatusCode::CREATED);
            serde_json::from_slice::<Value>(&body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let id = create(json!({"name": "hot"})).await;
    let future = create(json!({"name": "later", "start_time": "2025-01-01T01:00:00Z"})).await;
    let unknown = "0190c4c2-6e4b-7c2a-9a4e-1f2e3d4c5b6a";
    let too_old = "2024-12-31T00:00:00Z";

    // (query, content type, body); each is sent twice, once each way, with
    // a different user where the user matters, so both count alike.
    let cases: Vec<(&str, &str, String)> = vec![
        ("", "application/json", track_body(&id, "USER")),
        ("?wait=true", "application/json", track_body(&id, "USER")),
        ("?wait=maybe", "application/json", track_body(&id, "USER")),
        ("", "text/plain", track_body(&id, "USER")),
        ("", "application/json", "{not json".into()),
        ("", "application/json", r#"{"campaign_id": 1}"#.into()),
        ("", "application/json", track_body(unknown, "USER")),
        ("", "application/json", track_body("not-a-uuid", "USER")),
        (
            "",
            "application/json",
            json!({"campaign_id": id, "user_id": "USER", "ad_id": "a", "timestamp": too_old})
                .to_string(),
        ),
        ("", "application/json", track_body(&future, "USER")),
        ("", "application/json", "x".repeat(4096)),
        ("", "application/json", String::new()),
    ];
    let edge = startup::app(state.clone(), &config.edge());
    let (mut direct, _idle) = edge.connection("127.0.0.1:9".parse().unwrap());
    let mut statuses = BTreeSet::new();
    for (n, (query, content_type, body)) in cases.iter().enumerate() {
        let request = |user: &str| {
            Request::builder()
                .method(Method::POST)
                .uri(format!("/api/v1/impressions{query}"))
                .header(header::CONTENT_TYPE, *content_type)
                .header(header::CONTENT_LENGTH, body.len())
                .body(Body::from(body.replace("USER", user)))
                .unwrap()
        };
        let via_edge = answer(direct.call(request(&format!("e{n}"))).await.unwrap()).await;
        // Under the edge the router's requests carry the default body limit.
        let mut to_router = request(&format!("r{n}"));
        DefaultBodyLimit::max(2048).apply(&mut to_router);
        let via_router = answer(
            routes::router(state.clone())
                .oneshot(to_router)
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            via_edge,
            via_router,
            "case {n}: {query} {content_type} {body:.60}: edge {} vs router {}",
            String::from_utf8_lossy(&via_edge.2),
            String::from_utf8_lossy(&via_router.2)
        );
        statuses.insert(via_edge.0.as_u16());
    }
    // The cases reach every kind of answer the route gives.
    assert_eq!(
        statuses,
        BTreeSet::from([200, 202, 400, 404, 409, 413, 415]),
        "the cases cover every answer"
    );
}

fn track_body(campaign: &str, user: &str) -> String {
    json!({"campaign_id": campaign, "user_id": user, "ad_id": "a"}).to_string()
}
