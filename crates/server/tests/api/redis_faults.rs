//! Redis going away under load: 503s with `Retry-After` and a clear message,
//! `/readyz` failing, no crash; recovery by itself once Redis is back; and no
//! acknowledged impression missing afterwards.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::json;
use tokio::time::{Instant, sleep};

use crate::helpers::{TestApp, config, eventually, spawn_app_on};
use crate::redis_servers::{Dedicated, unique_prefix};

/// What happened to each user's impression during the load.
#[derive(Default)]
struct Ledger {
    /// Acknowledged: 202, or 200 counted/duplicate.
    acknowledged: BTreeSet<u64>,
    /// Refused with 503.
    refused: BTreeSet<u64>,
}

async fn send(app: &TestApp, campaign: &str, user: u64) -> reqwest::Response {
    // Half the users wait for the outcome, half take the plain 202.
    let path = if user.is_multiple_of(2) {
        "/api/v1/impressions?wait=true"
    } else {
        "/api/v1/impressions"
    };
    app.client
        .post(app.url(path))
        .json(&json!({ "campaign_id": campaign, "user_id": format!("user-{user}"), "ad_id": "ad" }))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the node answers")
}

async fn status_of(app: &TestApp, path: &str) -> StatusCode {
    app.get(path).await.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_means_503_and_recovery_loses_nothing_acknowledged() {
    let mut redis = Dedicated::start();
    let prefix = unique_prefix();
    let config = config(&[
        "--storage",
        "redis",
        "--redis-url",
        &redis.url(),
        "--redis-prefix",
        &prefix,
    ]);
    let store = impression_counter::storage::open(
        &config.storage(),
        Arc::new(impression_core::ManualClock::new(crate::helpers::T0)),
    )
    .await
    .expect("Redis opens");
    let app = Arc::new(spawn_app_on(config, store).await);
    let c = app.create_campaign("faults").await;

    // Four clients, each sending new users one after the other.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4u64)
        .map(|client| {
            let (app, c, ledger, stop) = (app.clone(), c.clone(), ledger.clone(), stop.clone());
            tokio::spawn(async move {
                let mut user = client;
                while !stop.load(Ordering::Relaxed) {
                    let response = send(&app, &c, user).await;
                    match response.status() {
                        StatusCode::OK | StatusCode::ACCEPTED => {
                            ledger.lock().acknowledged.insert(user);
                        }
                        StatusCode::SERVICE_UNAVAILABLE => {
                            assert_eq!(response.headers()["retry-after"], "1");
                            let body: serde_json::Value = response.json().await.unwrap();
                            let message = body["error"].as_str().unwrap();
                            assert!(message.contains("storage is unavailable"), "{message}");
                            ledger.lock().refused.insert(user);
                            sleep(Duration::from_millis(5)).await;
                        }
                        other => panic!("unexpected {other} for user {user}"),
                    }
                    user += 4;
                }
            })
        })
        .collect();

    let acknowledged = || ledger.lock().acknowledged.len();
    eventually(Duration::from_secs(20), || async { acknowledged() >= 200 }).await;

    // Crash Redis mid-load.
    redis.kill();
    let refused = || ledger.lock().refused.len();
    eventually(Duration::from_secs(20), || async { refused() >= 20 }).await;
    assert_eq!(
        status_of(&app, "/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status_of(&app, &format!("/api/v1/campaigns/{c}/stats")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status_of(&app, "/healthz").await,
        StatusCode::OK,
        "the node is alive"
    );

    // Back on the same port and files: the node reconnects by itself.
    let before = acknowledged();
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_of(&app, "/readyz").await != StatusCode::OK {
        assert!(Instant::now() < deadline, "the node did not recover");
        sleep(Duration::from_millis(50)).await;
    }
    eventually(Duration::from_secs(20), || async {
        acknowledged() >= before + 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("a client task");
    }

    // Every acknowledged impression is in Redis: sent again, it is a
    // duplicate (its key was counted).
    let Ledger {
        acknowledged,
        refused,
    } = std::mem::take(&mut *ledger.lock());
    for &user in &acknowledged {
        let status = app.track_and_wait(&c, &format!("user-{user}"), "ad").await;
        assert_eq!(
            status, "duplicate",
            "user {user} was acknowledged but is not counted"
        );
    }
    // Refused ones may or may not have been counted before Redis died;
    // retried, each is counted now or found counted before: never twice.
    for &user in &refused {
        app.track_and_wait(&c, &format!("user-{user}"), "ad").await;
    }
    let users = acknowledged.union(&refused).count() as u64;
    assert_eq!(app.counts(&c).await.2, users);
    assert!(!refused.is_empty() && acknowledged.len() >= 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fails_fast_when_redis_is_unreachable() {
    let mut redis = Dedicated::start();
    let prefix = unique_prefix();
    let config = config(&[
        "--storage",
        "redis",
        "--redis-url",
        &redis.url(),
        "--redis-prefix",
        &prefix,
    ]);
    let store = impression_counter::storage::open(
        &config.storage(),
        Arc::new(impression_core::ManualClock::new(crate::helpers::T0)),
    )
    .await
    .expect("Redis opens");
    let app = spawn_app_on(config.clone(), store).await;
    redis.kill();
    // Every kind of request answers within the bound, with 503.
    let started = Instant::now();
    let created = app
        .post_json("/api/v1/campaigns", &json!({ "name": "c" }))
        .await;
    assert_eq!(created.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(created.headers()["retry-after"], "1");
    let unknown = "0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a";
    assert_eq!(
        app.track(unknown, "u", "a").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status_of(&app, "/api/v1/campaigns").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status_of(&app, "/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A node cannot start without Redis, and says why.
    let error = match impression_counter::storage::open(
        &config.storage(),
        Arc::new(impression_core::ManualClock::new(crate::helpers::T0)),
    )
    .await
    {
        Ok(_) => panic!("opened without Redis"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("unavailable"), "{error}");
}
