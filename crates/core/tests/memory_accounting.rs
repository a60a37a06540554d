//! The engine's own accounting of its memory ([`Engine::memory`]) against
//! the bytes the allocator actually holds for each kind of state: within
//! 10%, so a memory limit enforced on the estimate holds for real.
//!
//! One test process, one counting allocator: the kinds are measured one
//! after the other in a single test, so no other test allocates meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::alloc::System;

use cap::Cap;
use impression_core::{
    AdId, AdParts, AdSnapshot, Campaign, CampaignId, CampaignName, CampaignSnapshot, Engine,
    EngineConfig, Impression, Timestamp, UniqueCounterParts, UserId, WindowParts,
};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// 2025-01-01T00:00:00Z.
const T0: u64 = 1_735_689_600;

fn held() -> usize {
    ALLOCATOR.allocated()
}

fn assert_close(kind: &str, estimate: usize, actual: usize) {
    let (lo, hi) = (actual * 9 / 10, actual * 11 / 10);
    assert!(
        (lo..=hi).contains(&estimate),
        "{kind}: estimated {estimate} bytes, {actual} held ({:+.1}%)",
        (estimate as f64 / actual as f64 - 1.0) * 100.0
    );
    eprintln!(
        "{kind}: estimated {estimate} bytes, {actual} held ({:+.1}%)",
        (estimate as f64 / actual as f64 - 1.0) * 100.0
    );
}

fn campaign(n: u128, name: &str) -> Campaign {
    Campaign {
        id: CampaignId::from_uuid(uuid::Uuid::from_u128(n)),
        name: CampaignName::parse(name).unwrap(),
        start_time: Timestamp::from_secs(T0),
    }
}

fn impression(c: CampaignId, ad: &str, user: &str, t: u64) -> Impression {
    Impression {
        campaign_id: c,
        ad_id: AdId::parse(ad).unwrap(),
        user_id: UserId::parse(user).unwrap(),
        timestamp: Timestamp::from_secs(t),
    }
}

#[test]
fn every_kind_of_state_is_accounted_within_ten_percent() {
    // Campaign records: 20,000 campaigns with names of various lengths.
    let engine = Engine::new(EngineConfig::default());
    let before = held();
    for n in 0..20_000u128 {
        let name = "campaign ".repeat(1 + (n % 7) as usize);
        engine
            .create_campaign(campaign(n + 1, name.trim()))
            .unwrap();
    }
    let m = engine.memory();
    assert_close("campaigns", m.campaigns + m.counters, held() - before);
    drop(engine);

    // Dedup keys: 1M distinct users of one ad in one second, so the
    // counters stay one bucket while the index grows.
    let engine = Engine::new(EngineConfig::default());
    let c = campaign(1, "dedup");
    let id = c.id;
    engine.create_campaign(c).unwrap();
    let now = Timestamp::from_secs(T0);
    let before = (held(), engine.memory());
    for chunk in 0..1_000u32 {
        let batch: Vec<Impression> = (0..1_000u32)
            .map(|i| impression(id, "a", &format!("u{}", chunk * 1_000 + i), T0))
            .collect();
        engine.track_batch(&batch, now);
    }
    let after = engine.memory();
    assert_eq!(engine.live_dedup_keys(), 1_000_000);
    assert_close("dedup", after.total() - before.1.total(), held() - before.0);
    // Expiry gives it back, and the estimate follows.
    let later = now.saturating_add(std::time::Duration::from_secs(3 * 3600));
    let before = (held(), engine.memory());
    engine.expire(later);
    let freed_estimate = before.1.dedup - engine.memory().dedup;
    let freed = before.0 - held();
    assert_close("dedup after expiry (freed)", freed_estimate, freed);
    drop(engine);

    // Counters: 500 ads of one campaign, each counted once a minute for 3
    // hours, recorded as they come (the incremental accounting), with a
    // short TTL so the index stays small beside them.
    let engine = Engine::new(EngineConfig {
        ttl: std::time::Duration::from_millis(1),
        max_lateness: std::time::Duration::ZERO,
        ..EngineConfig::default()
    });
    let c = campaign(2, "counters");
    let id = c.id;
    engine.create_campaign(c).unwrap();
    let before = (held(), engine.memory());
    for minute in 0..180u64 {
        let t = T0 + minute * 60;
        let batch: Vec<Impression> = (0..500u32)
            .map(|ad| impression(id, &format!("ad-{ad}"), "u", t))
            .collect();
        engine.track_batch(&batch, Timestamp::from_secs(t));
        engine.expire(Timestamp::from_secs(t));
    }
    let after = engine.memory();
    assert_close(
        "counters (recorded, with one user per ad and minute)",
        after.counters + after.sketches - before.1.counters - before.1.sketches,
        held() - before.0 - (after.dedup - before.1.dedup),
    );
    drop(engine);

    // Unique-user sketches: 40 ads, 2,000 new users a minute for 3 hours
    // (minute sketches in every form, hour sketches, the unions of reads),
    // short TTL again.
    let engine = Engine::new(EngineConfig {
        ttl: std::time::Duration::from_millis(1),
        max_lateness: std::time::Duration::ZERO,
        ..EngineConfig::default()
    });
    let c = campaign(4, "users");
    let id = c.id;
    engine.create_campaign(c).unwrap();
    let before = (held(), engine.memory());
    for minute in 0..180u64 {
        let t = T0 + minute * 60;
        let batch: Vec<Impression> = (0..2_000u64)
            .map(|u| {
                impression(
                    id,
                    &format!("ad-{}", u % 40),
                    &format!("u{}", minute * 2_000 + u),
                    t,
                )
            })
            .collect();
        engine.track_batch(&batch, Timestamp::from_secs(t));
        engine.expire(Timestamp::from_secs(t));
        if minute % 10 == 0 {
            engine.ad_stats(id, Timestamp::from_secs(t));
        }
    }
    let after = engine.memory();
    assert!(after.sketches > 1 << 20, "{after:?}");
    assert_close(
        "sketches",
        after.sketches - before.1.sketches,
        held() - before.0 - (after.dedup - before.1.dedup) - (after.counters - before.1.counters),
    );
    drop(engine);

    // Counters restored from a snapshot: one campaign with 2,000 ads. (The
    // snapshot is consumed by the restore, so what remains is the state.)
    let engine = Engine::new(EngineConfig::default());
    let before = (held(), engine.memory());
    let snapshot = CampaignSnapshot {
        campaign: campaign(3, "restored"),
        all: WindowParts {
            total: 100,
            minutes: (0..1441).map(|m| (T0 / 60 + m, [1; 60])).collect(),
            hours: (0..168).map(|h| (T0 / 3600 + h, 1)).collect(),
        },
        users: UniqueCounterParts::default(),
        // A year of quarter hours, every hour active.
        quarters: (0..365 * 24)
            .map(|h| (T0 / 3600 - h, [1, 2, 3, 4]))
            .collect(),
        ads: (0..2_000)
            .map(|ad| {
                (
                    AdId::parse(format!("ad-{ad}")).unwrap(),
                    AdSnapshot {
                        counts: AdParts {
                            total: 10,
                            minutes: (0..100).map(|m| (T0 / 60 + m, 1)).collect(),
                            hours: (0..25).map(|h| (T0 / 3600 + h, 1)).collect(),
                        },
                        users: UniqueCounterParts::default(),
                    },
                )
            })
            .collect(),
        other_ads: AdSnapshot::default(),
        ads_limit_exceeded: false,
    };
    engine.restore_campaign(snapshot).unwrap();
    let after = engine.memory();
    assert_close(
        "counters (restored)",
        after.total() - before.1.total(),
        held() - before.0,
    );
}
