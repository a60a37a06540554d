//! Live resharding of a Redis Cluster under load: a dedup bucket's slot
//! and a campaign's slot move to another master (`MIGRATING`/`IMPORTING`,
//! `MIGRATE` a few keys at a time) while clients post, and the totals stay
//! exact: nothing acknowledged lost, nothing counted twice.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use impression_core::CampaignId;
use impression_counter::storage::redis::keys::{KeySpace, bucket_tag, slot};
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::json;
use tokio::time::{Instant, sleep};

use crate::helpers::{config, spawn_app_on};
use crate::redis_servers::{ReplicatedCluster, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_moved_under_load_keep_the_totals_exact() {
    let cluster = Arc::new(ReplicatedCluster::start(0, 5000));
    let seeds = cluster.seeds().join(",");
    let prefix = unique_prefix();
    let flags = [
        "--storage",
        "redis",
        "--redis-cluster-nodes",
        &seeds,
        "--redis-prefix",
        &prefix,
    ];
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let config = config(&flags);
        let store = impression_counter::storage::open(
            &config.storage(),
            Arc::new(impression_core::ManualClock::new(crate::helpers::T0)),
        )
        .await
        .expect("Redis opens");
        nodes.push(Arc::new(spawn_app_on(config, store).await));
    }
    let campaign = nodes[0].create_campaign("reshard").await;
    let keys = KeySpace::new(&prefix).unwrap();
    let id: CampaignId = campaign.parse().unwrap();
    let campaign_slot = slot(keys.campaign_totals(id).as_bytes());
    let bucket_slot = slot(bucket_tag(0).as_bytes());

    // Clients: distinct users, to both nodes, as fast as they answer.
    let sent = Arc::new(Mutex::new((
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8u64)
        .map(|client| {
            let (nodes, campaign) = (nodes.clone(), campaign.clone());
            let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut user = client;
                while !stop.load(Ordering::Relaxed) {
                    let node = &nodes[usize::try_from(user).unwrap() % 2];
                    sent.lock().0.insert(user);
                    let response = node
                        .client
                        .post(node.url("/api/v1/impressions"))
                        .json(&json!({ "campaign_id": campaign, "user_id": format!("user-{user}"), "ad_id": "ad" }))
                        .timeout(Duration::from_secs(20))
                        .send()
                        .await
                        .expect("the node answers");
                    match response.status() {
                        StatusCode::ACCEPTED => {
                            sent.lock().1.insert(user);
                        }
                        StatusCode::SERVICE_UNAVAILABLE => {
                            sent.lock().2.insert(user);
                            sleep(Duration::from_millis(20)).await;
                        }
                        other => panic!(
                            "unexpected {other} for user {user}: {}",
                            response.text().await.unwrap_or_default()
                        ),
                    }
                    user += 8;
                }
            })
        })
        .collect();
    let acked = || sent.lock().1.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked() < 300 {
        assert!(Instant::now() < deadline, "load started");
        sleep(Duration::from_millis(50)).await;
    }

    // Move both slots, each to the next master, a few keys at a time.
    let started = Instant::now();
    let mover = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || {
        for moved in [campaign_slot, bucket_slot] {
            let from = mover.index_of_master(moved).unwrap();
            mover.move_slot(moved, (from + 1) % 3, 5, Duration::from_millis(20));
        }
    })
    .await
    .expect("the slots moved");
    eprintln!("resharding took {:?}", started.elapsed());
    let before = acked();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked() < before + 300 {
        assert!(Instant::now() < deadline, "acknowledging after the move");
        sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (all, acked, refused) = std::mem::take(&mut *sent.lock());
    eprintln!(
        "resharding: {} sent, {} acknowledged, {} refused",
        all.len(),
        acked.len(),
        refused.len()
    );

    // Refused ones are retried until answered (journal replays finish
    // what a refused chunk decided): then every user is counted once.
    for user in &refused {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = nodes[0]
                .post_json(
                    "/api/v1/impressions?wait=true",
                    &json!({ "campaign_id": campaign, "user_id": format!("user-{user}"), "ad_id": "ad" }),
                )
                .await;
            if response.status() == StatusCode::OK {
                break;
            }
            assert!(Instant::now() < deadline, "user {user} retried");
            sleep(Duration::from_millis(100)).await;
        }
    }
    let users = all.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let total = nodes[1].counts(&campaign).await.2;
        assert!(
            total <= users,
            "counted {total} of {users} users: some twice"
        );
        if total == users {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counted {total} of {users} users"
        );
        sleep(Duration::from_millis(250)).await;
    }
    // Sent again, every one is a duplicate, on either node.
    for (i, user) in acked.iter().take(200).enumerate() {
        let status = nodes[i % 2]
            .track_and_wait(&campaign, &format!("user-{user}"), "ad")
            .await;
        assert_eq!(status, "duplicate", "user {user}");
    }
    assert_eq!(nodes[0].counts(&campaign).await.2, users);
    let owner = |s: u16| cluster.index_of_master(s);
    assert_ne!(owner(campaign_slot), None);
    assert_ne!(owner(bucket_slot), None);
}
