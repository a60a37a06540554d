//! The Redis Cluster journal: a chunk interrupted between its steps (dedup
//! per bucket, then counting per campaign) is finished by any node's replay,
//! exactly once.

use std::time::Duration;

use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, Impression, Stats, Timestamp, TrackOutcome,
    UniqueStats, UserId,
};
use impression_counter::storage::Store;
use impression_counter::storage::redis::{Fault, RedisStore};

use crate::helpers::{T0, config};
use crate::redis_servers::{cluster_nodes, single_url, unique_prefix};

/// Two stores (two nodes) on the shared cluster, under one fresh prefix.
async fn two_stores(flags: &[&str]) -> (RedisStore, RedisStore) {
    let nodes = cluster_nodes().join(",");
    let prefix = unique_prefix();
    let mut all = vec![
        "--storage",
        "redis",
        "--redis-cluster-nodes",
        &nodes,
        "--redis-prefix",
        &prefix,
    ];
    all.extend_from_slice(flags);
    let config = config(&all);
    let a = crate::helpers::open_redis(&config)
        .await
        .expect("the cluster opens");
    let b = crate::helpers::open_redis(&config)
        .await
        .expect("the cluster opens");
    assert!(a.is_cluster());
    (a, b)
}

async fn campaign(store: &RedisStore) -> CampaignId {
    let id = CampaignId::from_uuid(uuid::Uuid::now_v7());
    store
        .create_campaign(Campaign {
            id,
            name: CampaignName::parse("journal").unwrap(),
            start_time: T0,
        })
        .await
        .unwrap();
    id
}

/// 120 impressions over 120 users and 4 ads, every tenth one sent twice:
/// 120 count, 12 are duplicates within the batch.
fn batch(id: CampaignId, now: Timestamp) -> Vec<Impression> {
    (0..120u32)
        .flat_map(|u| {
            let imp = Impression {
                campaign_id: id,
                ad_id: AdId::parse(format!("ad-{}", u % 4)).unwrap(),
                user_id: UserId::parse(format!("user-{u}")).unwrap(),
                timestamp: now,
            };
            if u.is_multiple_of(10) {
                vec![imp.clone(), imp]
            } else {
                vec![imp]
            }
        })
        .collect()
}

/// `n` impressions, each by a different user.
fn all(n: u64) -> Stats {
    Stats {
        last_hour: n,
        last_day: n,
        total: n,
        unique_users: UniqueStats {
            last_hour: n,
            last_day: n,
            total: n,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_cut_after_dedup_is_counted_by_another_nodes_replay() {
    let (a, b) = two_stores(&["--max-ads-per-campaign", "2"]).await;
    let id = campaign(&a).await;
    let now = T0.saturating_add(Duration::from_secs(5));
    let impressions = batch(id, now);

    // Node a decides (and journals) but "crashes" before counting.
    a.inject_fault(Fault::AfterDedup);
    assert!(a.apply(&impressions, now).await.is_err());
    assert_eq!(b.stats(id, now).await.unwrap(), Some(all(0)));
    // The client retries on node b: every impression is a duplicate now...
    let retried = b.apply(&impressions, now).await.unwrap();
    assert!(retried.iter().all(|o| *o == TrackOutcome::Duplicate));
    // ...and b's housekeeping finishes a's chunk: each counted once.
    assert!(b.replay_journal(Duration::ZERO).await.unwrap() > 0);
    assert_eq!(b.stats(id, now).await.unwrap(), Some(all(120)));
    // Replaying again (or on a) finds nothing left and counts nothing.
    assert_eq!(a.replay_journal(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(a.stats(id, now).await.unwrap(), Some(all(120)));
    let breakdown = a.ad_stats(id, now).await.unwrap().unwrap();
    assert_eq!(breakdown.ads.len(), 2);
    assert!(breakdown.limit_exceeded);
    let per_ad: u64 = breakdown.ads.iter().map(|(_, s)| s.total).sum();
    assert_eq!(per_ad + breakdown.other.total, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_counting_never_counts_twice() {
    let (a, b) = two_stores(&[]).await;
    let id = campaign(&a).await;
    let now = T0.saturating_add(Duration::from_secs(5));

    // Counted, but the journal was not cleared (crash before step 3).
    a.inject_fault(Fault::AfterCount);
    assert!(a.apply(&batch(id, now), now).await.is_err());
    assert_eq!(b.stats(id, now).await.unwrap(), Some(all(120)));
    // The replay only finds markers saying "done" and clears the journal.
    assert!(b.replay_journal(Duration::ZERO).await.unwrap() > 0);
    assert_eq!(b.stats(id, now).await.unwrap(), Some(all(120)));
    assert_eq!(b.replay_journal(Duration::ZERO).await.unwrap(), 0);

    // Young entries are left to their writer.
    b.inject_fault(Fault::AfterDedup);
    let later = now.saturating_add(Duration::from_secs(1));
    let fresh: Vec<Impression> = batch(id, later)
        .into_iter()
        .map(|mut imp| {
            imp.ad_id = AdId::parse("fresh").unwrap();
            imp
        })
        .collect();
    assert!(b.apply(&fresh, later).await.is_err());
    assert_eq!(
        a.replay_journal(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    assert_eq!(a.stats(id, later).await.unwrap(), Some(all(120)));
    assert!(a.replay_journal(Duration::ZERO).await.unwrap() > 0);
    // The same 120 users again, on another ad: 240 impressions, 120 users.
    let stats = a.stats(id, later).await.unwrap().unwrap();
    assert_eq!(stats.total, 240);
    assert_eq!(stats.unique_users, all(120).unique_users);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_has_no_journal() {
    let prefix = unique_prefix();
    let url = single_url();
    let config = config(&[
        "--storage",
        "redis",
        "--redis-url",
        &url,
        "--redis-prefix",
        &prefix,
    ]);
    let store = crate::helpers::open_redis(&config).await.unwrap();
    assert!(!store.is_cluster());
    // Faults between steps cannot happen: the chunk is one atomic script.
    store.inject_fault(Fault::AfterDedup);
    let id = campaign(&store).await;
    let outcomes = store.apply(&batch(id, T0), T0).await.unwrap();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == TrackOutcome::Counted)
            .count(),
        120
    );
    assert_eq!(store.replay_journal(Duration::ZERO).await.unwrap(), 0);
}
