//! Tracks impressions in batches of 1024 for a while, on one thread, for
//! profiling (`perf record -g`) and quick before/after comparisons:
//!
//! ```sh
//! cargo run --release -p impression-core --example track_loop -- <live keys> <seconds> [new|dup]
//! ```
//!
//! `new` (default) tracks keys never seen (each counted and inserted) while
//! the clock moves so that as many keys expire as arrive: the live set stays
//! at the size asked for, as in a steady stream; `dup` tracks keys already
//! live (each looked up and refused).

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, Engine, EngineConfig, Impression, Timestamp, UserId,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let live: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let duplicates = args.next().as_deref() == Some("dup");
    let engine = Engine::new(EngineConfig::default());
    let ids: Vec<CampaignId> = (0..16u128)
        .map(|n| {
            let id = CampaignId::from_uuid(uuid::Uuid::from_u128(n + 1));
            engine
                .create_campaign(Campaign {
                    id,
                    name: CampaignName::parse("p").unwrap(),
                    start_time: Timestamp::EPOCH,
                })
                .unwrap();
            id
        })
        .collect();
    // Key k is seen at t0 + k * span / live: the keys of the last `span`
    // (TTL plus the allowed lateness) are the live ones.
    let config = engine.config().clone();
    let span_ms = u64::try_from((config.ttl + config.max_lateness).as_millis()).unwrap();
    let t0 = 1_735_689_600_000u64;
    let time_of = |k: u64| {
        Timestamp::from_millis(
            // `span_ms` times k / live, a small multiple of it: fits in u64.
            t0 + u64::try_from(u128::from(k) * u128::from(span_ms) / u128::from(live.max(1)))
                .unwrap(),
        )
    };
    let make = |k: u64| Impression {
        campaign_id: ids[(k % 16) as usize],
        ad_id: AdId::parse(format!("ad-{}", k % 7)).unwrap(),
        user_id: UserId::parse(format!("user-{k:016x}")).unwrap(),
        timestamp: time_of(k),
    };
    let mut k = 0;
    while k < live {
        let batch: Vec<Impression> = (k..(k + 1024).min(live)).map(make).collect();
        engine.track_batch(&batch, batch[batch.len() - 1].timestamp);
        k += batch.len() as u64;
    }
    let dup_now = time_of(live);
    // Pre-built batches; new keys are numbered past the live ones and
    // renumbered every round so they stay new.
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut round = 0u64;
    let mut out = Vec::new();
    let started = Instant::now();
    let mut tracked = 0u64;
    let mut building = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(secs) {
        let build = Instant::now();
        let batches: Vec<Vec<Impression>> = (0..64)
            .map(|b| {
                (0..1024)
                    .map(|i| {
                        if duplicates {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            Impression {
                                timestamp: dup_now,
                                ..make(rng % live)
                            }
                        } else {
                            make(live + (round * 64 + b) * 1024 + i)
                        }
                    })
                    .collect()
            })
            .collect();
        building += build.elapsed();
        round += 1;
        for b in &batches {
            let now = if duplicates {
                dup_now
            } else {
                b[b.len() - 1].timestamp
            };
            engine.track_batch_into(b, now, &mut out);
            tracked += b.len() as u64;
        }
    }
    let tracking = started.elapsed().saturating_sub(building);
    println!(
        "{:.2} M tracks/s ({} live keys, {})",
        tracked as f64 / tracking.as_secs_f64() / 1e6,
        engine.live_dedup_keys(),
        if duplicates { "duplicates" } else { "new keys" }
    );
}
