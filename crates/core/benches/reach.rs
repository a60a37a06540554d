//! Unique users in the engine, for a campaign with 1M distinct users a day,
//! active every minute (≈ 694 new users a minute, one ad): what its
//! unique-user state costs, and what a stats read costs with it.
//!
//! ```sh
//! cargo bench -p impression-core --bench reach
//! ```
//!
//! The memory table is printed first: `Engine::memory().sketches` (heap
//! capacities, checked against the allocator within 10% by
//! `tests/memory_accounting.rs`) after one day, and after the whole
//! history (7 days, so every hour sketch the counter keeps exists), for the
//! campaign alone and with its ad. Then divan's timings:
//!
//! * `stats_cached`: a read with nothing recorded since the last one;
//! * `stats_while_counting`: one impression tracked, then a read (the read
//!   recomputes the current minute's part of every window); the track is
//!   about 0.3 µs of it;
//! * `stats_first_in_a_minute`: the first read of each new minute, which
//!   rebuilds the unions of the finished minutes (once a minute);
//! * `ad_stats_while_counting`: the same as a breakdown by ad.

#![allow(clippy::unwrap_used)] // benchmarks: a failed unwrap is a broken setup

use std::cell::Cell;
use std::time::Duration;

use divan::Bencher;
use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, Engine, EngineConfig, Impression, Timestamp, UserId,
};

/// 2025-01-01T00:00:00Z, in seconds.
const T0: u64 = 1_735_689_600;
const USERS_PER_DAY: u64 = 1_000_000;
const MINUTES_PER_DAY: u64 = 1_440;

fn main() {
    println!("campaign with 1M distinct users a day, every minute active, one ad");
    println!(
        "{:>24} {:>16} {:>16}",
        "after", "sketches MiB", "campaign MiB"
    );
    for days in [1, 7] {
        let (engine, _) = filled(days, 2);
        let mib = engine.memory().sketches as f64 / (1 << 20) as f64;
        // The campaign and its one ad hold the same users: half each.
        println!(
            "{:>24} {:>16.2} {:>16.2}",
            format!("{days} day(s), campaign+ad"),
            mib,
            mib / 2.0
        );
    }
    divan::main();
}

fn campaign_id() -> CampaignId {
    CampaignId::from_uuid(uuid::Uuid::from_u128(1))
}

fn impression(user: u64, t: u64) -> Impression {
    Impression {
        campaign_id: campaign_id(),
        ad_id: AdId::parse("ad").unwrap(),
        user_id: UserId::parse(format!("user-{user:x}")).unwrap(),
        timestamp: Timestamp::from_millis(t),
    }
}

/// An engine whose campaign counted `days` days of 1M new users a day,
/// spread evenly over every minute; returns it and the end (ms). The dedup
/// TTL is short so only the sketches grow.
fn filled(days: u64, seconds_between_reads: u64) -> (Engine, u64) {
    let engine = Engine::new(EngineConfig {
        ttl: Duration::from_secs(seconds_between_reads),
        max_lateness: Duration::ZERO,
        ..EngineConfig::default()
    });
    engine
        .create_campaign(Campaign {
            id: campaign_id(),
            name: CampaignName::parse("reach").unwrap(),
            start_time: Timestamp::EPOCH,
        })
        .unwrap();
    let per_minute = USERS_PER_DAY / MINUTES_PER_DAY;
    let mut user = 0;
    let mut batch = Vec::with_capacity(per_minute as usize);
    for minute in 0..days * MINUTES_PER_DAY {
        let start = (T0 + minute * 60) * 1000;
        for i in 0..per_minute {
            batch.push(impression(user, start + i * 60_000 / per_minute));
            user += 1;
        }
        let now = batch.last().unwrap().timestamp;
        engine.track_batch(&batch, now);
        batch.clear();
        // Housekeeping runs every second in the service; once a minute is
        // enough for sketches, which only age by minutes and hours.
        engine.expire(now);
    }
    (engine, (T0 + days * MINUTES_PER_DAY * 60) * 1000)
}

#[divan::bench(sample_count = 100, sample_size = 100)]
fn stats_cached(bencher: Bencher) {
    let (engine, end) = filled(1, 2);
    let now = Timestamp::from_millis(end - 1);
    bencher.bench_local(|| engine.stats(divan::black_box(campaign_id()), now));
}

#[divan::bench(sample_count = 100, sample_size = 20)]
fn stats_while_counting(bencher: Bencher) {
    let (engine, end) = filled(1, 2);
    let next = Cell::new(10 * USERS_PER_DAY);
    // All within the last minute of the day: the minute unions stay built.
    let now = Timestamp::from_millis(end - 1);
    bencher.bench_local(|| {
        let user = next.get();
        next.set(user + 1);
        engine.track(&impression(user, end - 30_000), now);
        engine.stats(divan::black_box(campaign_id()), now)
    });
}

#[divan::bench(sample_count = 100, sample_size = 20)]
fn ad_stats_while_counting(bencher: Bencher) {
    let (engine, end) = filled(1, 2);
    let next = Cell::new(10 * USERS_PER_DAY);
    let now = Timestamp::from_millis(end - 1);
    bencher.bench_local(|| {
        let user = next.get();
        next.set(user + 1);
        engine.track(&impression(user, end - 30_000), now);
        engine.ad_stats(divan::black_box(campaign_id()), now)
    });
}

/// 1,000 reads, each in the next minute of the following day (one
/// impression recorded in it first, as live traffic would).
#[divan::bench(sample_count = 50, sample_size = 20)]
fn stats_first_in_a_minute(bencher: Bencher) {
    let (engine, end) = filled(1, 2);
    let minute = Cell::new(0u64);
    bencher.bench_local(|| {
        let m = minute.get();
        minute.set(m + 1);
        let t = end + m * 60_000;
        engine.track(
            &impression(20 * USERS_PER_DAY + m, t),
            Timestamp::from_millis(t),
        );
        engine.stats(divan::black_box(campaign_id()), Timestamp::from_millis(t))
    });
}
