//! Edges of the Redis store beneath the API: thousands of ads in one
//! answer, and settings it refuses.

use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, Impression, Stats, Timestamp, TrackOutcome,
    UniqueStats, UserId,
};
use impression_counter::storage::Store;

use crate::helpers::{T0, config};
use crate::redis_servers::{cluster_nodes, single_url, unique_prefix};

async fn thousands_of_ads_in_one_breakdown(flags: &[&str]) {
    let prefix = unique_prefix();
    let mut all = vec!["--storage", "redis", "--redis-prefix", &prefix];
    all.extend_from_slice(flags);
    all.extend_from_slice(&["--max-ads-per-campaign", "9000"]);
    let store = crate::helpers::open_redis(&config(&all)).await.unwrap();
    let id = CampaignId::from_uuid(uuid::Uuid::now_v7());
    store
        .create_campaign(Campaign {
            id,
            name: CampaignName::parse("many ads").unwrap(),
            start_time: T0,
        })
        .await
        .unwrap();
    // More ads than Lua can unpack into one command's arguments.
    let batch: Vec<Impression> = (0..9100)
        .map(|i| Impression {
            campaign_id: id,
            ad_id: AdId::parse(format!("ad-{i:05}")).unwrap(),
            user_id: UserId::parse("u").unwrap(),
            timestamp: T0,
        })
        .collect();
    for chunk in batch.chunks(1024) {
        let outcomes = store.apply(chunk, T0).await.unwrap();
        assert!(outcomes.iter().all(|o| *o == TrackOutcome::Counted));
    }
    let now = Timestamp::from_millis(T0.as_millis() + 500);
    let breakdown = store.ad_stats(id, now).await.unwrap().unwrap();
    let one = Stats {
        last_hour: 1,
        last_day: 1,
        total: 1,
        unique_users: UniqueStats {
            last_hour: 1,
            last_day: 1,
            total: 1,
        },
    };
    assert_eq!(breakdown.ads.len(), 9000);
    assert_eq!(breakdown.ads[0], (AdId::parse("ad-00000").unwrap(), one));
    assert_eq!(breakdown.ads[8999].0.as_str(), "ad-08999");
    assert_eq!(breakdown.other.total, 100);
    assert!(breakdown.limit_exceeded);
    assert_eq!(breakdown.campaign.total, 9100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_ads_on_one_redis() {
    let url = single_url();
    thousands_of_ads_in_one_breakdown(&["--redis-url", &url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_ads_on_a_cluster() {
    let nodes = cluster_nodes().join(",");
    thousands_of_ads_in_one_breakdown(&["--redis-cluster-nodes", &nodes]).await;
}

#[tokio::test]
async fn bad_settings_are_refused_with_the_setting_named() {
    let url = single_url();
    let opened = |flags: Vec<String>| async move {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        match crate::helpers::open_redis(&config(&flags)).await {
            Ok(_) => panic!("opened with {flags:?}"),
            Err(e) => e.to_string(),
        }
    };
    let braces = opened(vec![
        "--storage".into(),
        "redis".into(),
        "--redis-url".into(),
        url.clone(),
        "--redis-prefix".into(),
        "{x}:".into(),
    ])
    .await;
    assert!(braces.contains("REDIS_PREFIX"), "{braces}");
    let nothing = opened(vec!["--storage".into(), "redis".into()]).await;
    assert!(
        nothing.contains("REDIS_URL or REDIS_CLUSTER_NODES"),
        "{nothing}"
    );
    let garbage = opened(vec![
        "--storage".into(),
        "redis".into(),
        "--redis-url".into(),
        "http://nope".into(),
    ])
    .await;
    assert!(garbage.contains("REDIS_URL"), "{garbage}");
    let nameless = opened(vec![
        "--storage".into(),
        "redis".into(),
        "--redis-sentinels".into(),
        "127.0.0.1:1".into(),
    ])
    .await;
    assert!(nameless.contains("REDIS_SENTINEL_MASTER"), "{nameless}");
}
