//! Restart time of the durable backend with N live dedup keys.
//!
//! ```sh
//! cargo bench -p impression-counter --bench restart            # 10,000,000 keys
//! cargo bench -p impression-counter --bench restart -- 1000000 # another size
//! ```
//!
//! Writes N distinct impressions through `DiskStore::apply` in batches of
//! 1024 (compactions run in the background as in production), closes the
//! store, then times `DiskStore::open` twice: from what the writes left
//! (snapshot + log tail), and after a compaction folded everything into one
//! snapshot. Prints sizes on disk too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, Clock, EngineConfig, Impression, ManualClock,
    Timestamp, UserId,
};
use impression_counter::storage::Store;
use impression_counter::storage::disk::FsyncPolicy;
use impression_counter::storage::disk::{DiskOptions, DiskStore};

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::from_secs(1_735_689_600);
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(now));
    let options = DiskOptions {
        fsync: FsyncPolicy::No,
        segment_bytes: 64 * 1024 * 1024,
    };
    let config = EngineConfig::default();

    let store = DiskStore::open(dir.path(), options, config.clone(), clock.now()).unwrap();
    let id = CampaignId::from_uuid(uuid::Uuid::from_u128(1));
    let ad = AdId::parse("ad").unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        store
            .create_campaign(Campaign {
                id,
                name: CampaignName::parse("restart").unwrap(),
                start_time: Timestamp::EPOCH,
            })
            .await
            .unwrap();
        let mut batch = Vec::with_capacity(1024);
        for k in 0..n {
            batch.push(Impression {
                campaign_id: id,
                ad_id: ad.clone(),
                user_id: UserId::parse(format!("user-{k}")).unwrap(),
                timestamp: now,
            });
            if batch.len() == 1024 {
                store.apply(&batch, now).await.unwrap();
                batch.clear();
            }
        }
        store.apply(&batch, now).await.unwrap();
        store.close().await.unwrap();
    });
    let write_time = started.elapsed();
    drop(store);
    println!(
        "wrote {n} keys in {:.1} s ({:.0} impressions/s through apply, FSYNC=no); {:.0} MiB on disk",
        write_time.as_secs_f64(),
        n as f64 / write_time.as_secs_f64(),
        dir_bytes(dir.path()) as f64 / 1_048_576.0
    );

    let time_open = |label: &str| -> Duration {
        let started = Instant::now();
        let store = DiskStore::open(dir.path(), options, config.clone(), clock.now()).unwrap();
        let took = started.elapsed();
        assert_eq!(store.memory().engine().live_dedup_keys() as u64, n);
        println!(
            "{label}: opened in {:.2} s with {} live keys ({:.0} MiB on disk)",
            took.as_secs_f64(),
            store.memory().engine().live_dedup_keys(),
            dir_bytes(dir.path()) as f64 / 1_048_576.0
        );
        runtime.block_on(store.close()).unwrap();
        took
    };
    time_open("restart (snapshot + log tail)");
    // A tiny segment size makes the next write rotate and compact everything.
    {
        let small = DiskOptions {
            segment_bytes: 4096,
            ..options
        };
        let store = DiskStore::open(dir.path(), small, config.clone(), clock.now()).unwrap();
        runtime.block_on(async {
            let filler: Vec<Impression> = (0..100)
                .map(|k| Impression {
                    campaign_id: id,
                    ad_id: ad.clone(),
                    user_id: UserId::parse(format!("filler-{k}")).unwrap(),
                    timestamp: now,
                })
                .collect();
            store.apply(&filler, now).await.unwrap();
            store.close().await.unwrap();
        });
    }
    let started = Instant::now();
    let store = DiskStore::open(dir.path(), options, config.clone(), clock.now()).unwrap();
    println!(
        "restart (one snapshot): opened in {:.2} s with {} live keys ({:.0} MiB on disk)",
        started.elapsed().as_secs_f64(),
        store.memory().engine().live_dedup_keys(),
        dir_bytes(dir.path()) as f64 / 1_048_576.0
    );
    runtime.block_on(store.close()).unwrap();
}
