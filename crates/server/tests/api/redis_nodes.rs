//! Two nodes over one Redis, and over one Redis Cluster: what clients send
//! to either node is counted exactly once, and both nodes answer the same.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::join_all;
use impression_core::Clock;
use impression_counter::storage;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backends::Backend;
use crate::helpers::{TestApp, config, spawn_app_on};

/// Two applications sharing one Redis prefix, each with its own store,
/// connections and manual clock (both at `T0`).
async fn two_nodes(backend: Backend, flags: &[&str]) -> [TestApp; 2] {
    let (backend_flags, _guard) = backend.prepare();
    let mut all: Vec<&str> = backend_flags.iter().map(String::as_str).collect();
    all.extend_from_slice(flags);
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let config = config(&all);
        let clock: Arc<dyn Clock> = Arc::new(impression_core::ManualClock::new(crate::helpers::T0));
        let store = storage::open(&config.storage(), clock)
            .await
            .expect("Redis opens");
        nodes.push(spawn_app_on(config, store).await);
    }
    let [a, b]: [TestApp; 2] = nodes.try_into().ok().expect("two nodes");
    [a, b]
}

async fn post(app: &TestApp, path: &str, body: Value) -> Value {
    let response = app.post_json(path, &body).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.json().await.unwrap()
}

async fn get(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.json().await.unwrap()
}

async fn exact_counts_through_both_nodes(backend: Backend) {
    let [a, b] = two_nodes(backend, &["--max-ads-per-campaign", "3"]).await;
    // Created on one node, usable and listed on the other at once.
    let c = a.create_campaign("shared").await;
    assert_eq!(get(&b, &format!("/api/v1/campaigns/{c}")).await["id"], c);
    let listed = get(&b, "/api/v1/campaigns").await;
    assert!(
        listed["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == c)
    );

    // 300 users, each sent by both nodes at the same moment (the same
    // impression twice, concurrently), over 6 ads: 300 counted, 300
    // duplicates, whichever node won each race.
    let users = 300;
    let sends = (0..users).flat_map(|u| {
        let body = json!({ "campaign_id": c, "user_id": format!("u{u}"), "ad_id": format!("ad{}", u % 6) });
        [&a, &b].map(|node| {
            let body = body.clone();
            async move { post(node, "/api/v1/impressions?wait=true", body).await["status"].clone() }
        })
    });
    let statuses: Vec<Value> = join_all(sends).await;
    let counted = statuses.iter().filter(|s| *s == "counted").count();
    assert_eq!(counted, users);
    assert_eq!(statuses.len() - counted, users);

    // Batches through both nodes: 200 new users in each, plus, in both,
    // the same 100 users: 500 more, counted once each.
    let batch = |from: usize| -> Vec<Value> {
        (from..from + 200)
            .chain(10_000..10_100)
            .map(|u| json!({ "campaign_id": c, "user_id": format!("u{u}"), "ad_id": "ad0" }))
            .collect()
    };
    let (x, y) = tokio::join!(
        post(
            &a,
            "/api/v1/impressions/batch?wait=true",
            json!(batch(1000))
        ),
        post(
            &b,
            "/api/v1/impressions/batch?wait=true",
            json!(batch(2000))
        ),
    );
    let batch_counted = x["counted"].as_u64().unwrap() + y["counted"].as_u64().unwrap();
    assert_eq!(batch_counted, 500, "{x} {y}");

    let total = (users + 500) as u64;
    assert_eq!(a.counts(&c).await, (total, total, total));
    for path in [
        format!("/api/v1/campaigns/{c}/stats"),
        format!("/api/v1/campaigns/{c}/stats?by=ad"),
        format!("/api/v1/campaigns/{c}/timeseries?resolution=second&window=90s"),
        format!("/api/v1/campaigns/{c}/timeseries?resolution=hour&window=24h"),
    ] {
        assert_eq!(get(&a, &path).await, get(&b, &path).await, "{path}");
    }
    // Exactly three ads got their own counters, whichever node counted
    // them first; the others add up in other_ads.
    let by_ad = get(&b, &format!("/api/v1/campaigns/{c}/stats?by=ad")).await;
    let ads = by_ad["ads"].as_object().unwrap();
    assert_eq!(ads.len(), 3);
    assert_eq!(by_ad["ads_limit_exceeded"], true);
    let per_ad: u64 = ads.values().map(|s| s["total"].as_u64().unwrap()).sum();
    assert_eq!(
        per_ad + by_ad["other_ads"]["total"].as_u64().unwrap(),
        total
    );
}

async fn one_key_from_many_clients_on_both_nodes(backend: Backend) {
    let [a, b] = two_nodes(backend, &[]).await;
    let c = a.create_campaign("race").await;
    let sends = (0..64).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        let body = json!({ "campaign_id": c, "user_id": "same", "ad_id": "same" });
        async move { post(node, "/api/v1/impressions?wait=true", body).await["status"].clone() }
    });
    let statuses: Vec<Value> = join_all(sends).await;
    assert_eq!(statuses.iter().filter(|s| *s == "counted").count(), 1);
    assert_eq!(b.counts(&c).await, (1, 1, 1));
    assert_eq!(a.counts(&c).await, (1, 1, 1));

    // The TTL and the windows follow the nodes' clocks, not Redis's: an
    // hour later (on both nodes) the key counts again and the first
    // impression has left the hour.
    for node in [&a, &b] {
        node.clock.advance(std::time::Duration::from_secs(3600));
    }
    let status = post(
        &b,
        "/api/v1/impressions?wait=true",
        json!({ "campaign_id": c, "user_id": "same", "ad_id": "same" }),
    )
    .await;
    assert_eq!(status["status"], "counted");
    assert_eq!(a.counts(&c).await, (1, 2, 2));
    let campaigns: HashSet<String> = get(&a, "/api/v1/campaigns").await["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(campaigns, HashSet::from([c]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_on_one_redis_count_exactly() {
    exact_counts_through_both_nodes(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_on_a_redis_cluster_count_exactly() {
    exact_counts_through_both_nodes(Backend::RedisCluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_raced_on_two_nodes_over_redis_counts_once() {
    one_key_from_many_clients_on_both_nodes(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_raced_on_two_nodes_over_a_cluster_counts_once() {
    one_key_from_many_clients_on_both_nodes(Backend::RedisCluster).await;
}
