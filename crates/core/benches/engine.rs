//! Engine micro-benchmarks, on one thread: tracking new keys, tracking
//! duplicates, and reading stats, with 1k, 1M and 10M live dedup keys.
//!
//! "New keys" is a steady state, as in production: impressions arrive at
//! 100,000/s of event time (10 µs apart) and the TTL is set so that exactly
//! the requested number of keys is live, so every new key also expires an
//! old one (insert, expiry and window updates are all measured).
//!
//! ```sh
//! cargo bench -p impression-core --bench engine
//! ```
//!
//! Throughput is reported per impression (`item`). Impressions are built
//! outside the timed section, so only the engine is measured.

#![allow(clippy::unwrap_used)] // benchmarks: a failed unwrap is a broken setup

use std::cell::Cell;
use std::time::Duration;

use divan::Bencher;
use divan::counter::ItemsCount;
use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, Engine, EngineConfig, Impression, Timestamp, UserId,
};

fn main() {
    divan::main();
}

const LIVE_KEYS: [usize; 3] = [1_000, 1_000_000, 10_000_000];
const BATCH: usize = 1024;
const CAMPAIGNS: u128 = 16;
/// 2025-01-01T00:00:00Z.
const T0: u64 = 1_735_689_600_000;

fn campaign_id(n: u128) -> CampaignId {
    CampaignId::from_uuid(uuid::Uuid::from_u128(n + 1))
}

fn impression(key: u64, ms: u64) -> Impression {
    Impression {
        campaign_id: campaign_id(u128::from(key) % CAMPAIGNS),
        ad_id: AdId::parse(format!("ad-{}", key % 7)).unwrap(),
        user_id: UserId::parse(format!("user-{key:016x}")).unwrap(),
        timestamp: Timestamp::from_millis(ms),
    }
}

/// An engine holding `live` keys, all tracked at T0.
fn engine_with(live: usize) -> Engine {
    let engine = Engine::new(EngineConfig::default());
    for c in 0..CAMPAIGNS {
        engine
            .create_campaign(Campaign {
                id: campaign_id(c),
                name: CampaignName::parse("bench").unwrap(),
                start_time: Timestamp::EPOCH,
            })
            .unwrap();
    }
    let now = Timestamp::from_millis(T0);
    let mut batch = Vec::with_capacity(BATCH);
    for key in 0..live as u64 {
        batch.push(impression(key, T0));
        if batch.len() == BATCH {
            engine.track_batch(&batch, now);
            batch.clear();
        }
    }
    engine.track_batch(&batch, now);
    assert_eq!(engine.live_dedup_keys(), live);
    engine
}

/// Event time of the `k`-th impression of the steady stream: 10 µs apart.
fn steady_time(k: u64) -> u64 {
    T0 + k / 100
}

/// An engine whose TTL keeps `live` keys live at 100,000 impressions/s,
/// filled with the first `live` impressions of the stream.
fn steady_engine(live: usize) -> Engine {
    let engine = Engine::new(EngineConfig {
        ttl: Duration::from_micros(10 * live as u64).max(Duration::from_millis(1)),
        max_lateness: Duration::ZERO,
        ..EngineConfig::default()
    });
    for c in 0..CAMPAIGNS {
        engine
            .create_campaign(Campaign {
                id: campaign_id(c),
                name: CampaignName::parse("bench").unwrap(),
                start_time: Timestamp::EPOCH,
            })
            .unwrap();
    }
    let mut batch = Vec::with_capacity(BATCH);
    for key in 0..live as u64 {
        batch.push(impression(key, steady_time(key)));
        if batch.len() == BATCH || key + 1 == live as u64 {
            engine.track_batch(&batch, Timestamp::from_millis(steady_time(key)));
            batch.clear();
        }
    }
    engine
}

/// New keys in a steady state: every impression is counted and inserted,
/// and an old key expires for each.
#[divan::bench(args = LIVE_KEYS, sample_count = 40, sample_size = 10)]
fn track_new_keys(bencher: Bencher, live: usize) {
    let engine = steady_engine(live);
    let next = Cell::new(live as u64);
    bencher
        .counter(ItemsCount::new(BATCH))
        .with_inputs(|| {
            let start = next.get();
            next.set(start + BATCH as u64);
            (start..start + BATCH as u64)
                .map(|k| impression(k, steady_time(k)))
                .collect::<Vec<_>>()
        })
        .bench_local_refs(|batch| {
            let now = batch[batch.len() - 1].timestamp;
            engine.track_batch(batch, now)
        });
    let live_after = engine.live_dedup_keys();
    assert!(
        live_after.abs_diff(live) <= live / 50 + 2 * BATCH,
        "{live_after} live keys"
    );
}

/// Duplicates of live keys: every impression is looked up and refused.
#[divan::bench(args = LIVE_KEYS, sample_count = 40, sample_size = 10)]
fn track_duplicates(bencher: Bencher, live: usize) {
    let engine = engine_with(live);
    let now = Timestamp::from_millis(T0 + 1000);
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    bencher
        .counter(ItemsCount::new(BATCH))
        .with_inputs(|| {
            (0..BATCH)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    impression(rng % live as u64, T0 + 1000)
                })
                .collect::<Vec<_>>()
        })
        .bench_local_refs(|batch| engine.track_batch(batch, now));
}

/// Stats of a campaign holding `counted` impressions spread over the last
/// day (every minute bucket present: the most work a read can have).
#[divan::bench(args = [0, 1_000_000, 10_000_000])]
fn stats_read(bencher: Bencher, counted: u64) {
    let engine = Engine::new(EngineConfig {
        ttl: Duration::from_millis(1),
        ..EngineConfig::default()
    });
    let id = campaign_id(0);
    engine
        .create_campaign(Campaign {
            id,
            name: CampaignName::parse("bench").unwrap(),
            start_time: Timestamp::EPOCH,
        })
        .unwrap();
    let day_ms = 86_400_000;
    let step = day_ms / counted.max(1);
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..counted {
        // One key per impression: all counted.
        let t = T0 + i * step;
        batch.push(Impression {
            campaign_id: id,
            ..impression(i, t)
        });
        if batch.len() == BATCH {
            engine.track_batch(&batch, Timestamp::from_millis(t));
            batch.clear();
        }
    }
    engine.track_batch(&batch, Timestamp::from_millis(T0 + day_ms));
    let now = Timestamp::from_millis(T0 + day_ms - 1);
    let stats = engine.stats(id, now).unwrap();
    assert_eq!(stats.total, counted);
    bencher.bench_local(|| engine.stats(divan::black_box(id), now));
}

/// New keys (as in `track_new_keys`, 1M live) in the small batches a worker
/// makes of single-impression requests: up to 16 impressions are tracked one
/// at a time, from 17 on the batch is grouped by shard and campaign. Where
/// the two cost the same per impression is where the engine switches.
#[divan::bench(args = [1, 4, 8, 16, 17, 24, 32, 64], sample_count = 40, sample_size = 200)]
fn track_small_batches(bencher: Bencher, size: usize) {
    let live = 1_000_000;
    let engine = steady_engine(live);
    let next = Cell::new(live as u64);
    bencher
        .counter(ItemsCount::new(size))
        .with_inputs(|| {
            let start = next.get();
            next.set(start + size as u64);
            (start..start + size as u64)
                .map(|k| impression(k, steady_time(k)))
                .collect::<Vec<_>>()
        })
        .bench_local_refs(|batch| {
            let now = batch[batch.len() - 1].timestamp;
            engine.track_batch(batch, now)
        });
}
