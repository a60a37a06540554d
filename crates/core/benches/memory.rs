//! Memory per live dedup key: resident memory (RSS) before and after
//! inserting N keys into the engine, divided by N.
//!
//! ```sh
//! cargo bench -p impression-core --bench memory
//! ```
//!
//! RSS is what an operator pays, allocator slack and hash-table headroom
//! included. Each size runs in a fresh engine; the keys of one batch are
//! built and dropped before the next, so only the engine's own memory stays.

#![allow(clippy::unwrap_used)] // benchmarks: a failed unwrap is a broken setup

use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, Engine, EngineConfig, Impression, Timestamp, UserId,
};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000_000, 10_000_000]
    } else {
        sizes
    };
    println!(
        "{:>12} {:>14} {:>14}",
        "live keys", "RSS delta MiB", "bytes / key"
    );
    for n in sizes {
        let id = CampaignId::from_uuid(uuid::Uuid::from_u128(1));
        let engine = Engine::new(EngineConfig::default());
        engine
            .create_campaign(Campaign {
                id,
                name: CampaignName::parse("memory").unwrap(),
                start_time: Timestamp::EPOCH,
            })
            .unwrap();
        let now = Timestamp::from_secs(1_735_689_600);
        let ad = AdId::parse("ad").unwrap();
        let before = rss_bytes();
        let mut batch = Vec::with_capacity(1024);
        for k in 0..n {
            batch.push(Impression {
                campaign_id: id,
                ad_id: ad.clone(),
                user_id: UserId::parse(format!("user-{k}")).unwrap(),
                timestamp: now,
            });
            if batch.len() == 1024 {
                engine.track_batch(&batch, now);
                batch.clear();
            }
        }
        engine.track_batch(&batch, now);
        drop(batch);
        let after = rss_bytes();
        assert_eq!(engine.live_dedup_keys() as u64, n);
        let delta = after.saturating_sub(before);
        println!(
            "{:>12} {:>14.1} {:>14.1}",
            n,
            delta as f64 / (1024.0 * 1024.0),
            delta as f64 / n as f64
        );
    }
}
