//! Unique users through the engine: exact for small audiences, within the
//! stated error for large ones, never more than the impressions, and one
//! user is one unique user of the campaign and one of each ad they saw.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, Engine, EngineConfig, Impression, Metric, Resolution,
    Timestamp, TrackOutcome, UniqueStats, UserId,
};

/// 2025-01-01T00:00:00Z.
const T0: u64 = 1_735_689_600;

fn engine_with_campaign() -> (Engine, CampaignId) {
    let engine = Engine::new(EngineConfig::default());
    let id = CampaignId::from_uuid(uuid::Uuid::from_u128(1));
    engine
        .create_campaign(Campaign {
            id,
            name: CampaignName::parse("reach").unwrap(),
            start_time: Timestamp::from_secs(T0),
        })
        .unwrap();
    (engine, id)
}

fn impression(id: CampaignId, ad: &str, user: &str, t: Timestamp) -> Impression {
    Impression {
        campaign_id: id,
        ad_id: AdId::parse(ad).unwrap(),
        user_id: UserId::parse(user).unwrap(),
        timestamp: t,
    }
}

fn all(n: u64) -> UniqueStats {
    UniqueStats {
        last_hour: n,
        last_day: n,
        total: n,
    }
}

/// Every audience size up to the exact threshold, each user seen several
/// times over several ads: the count is the number of users, to the unit.
#[test]
fn small_audiences_are_counted_exactly() {
    for n in [1u64, 2, 31, 100, 127, 128] {
        let (engine, id) = engine_with_campaign();
        let now = Timestamp::from_secs(T0 + 30);
        for user in 0..n {
            for ad in ["a", "b", "c"] {
                let imp = impression(id, ad, &format!("user-{user}"), now);
                assert_eq!(engine.track(&imp, now), TrackOutcome::Counted);
            }
        }
        let stats = engine.stats(id, now).unwrap();
        assert_eq!(stats.total, 3 * n);
        assert_eq!(stats.unique_users, all(n), "{n} users");
        let breakdown = engine.ad_stats(id, now).unwrap();
        for (ad, ad_stats) in &breakdown.ads {
            assert_eq!(ad_stats.unique_users, all(n), "{n} users of {ad}");
        }
    }
}

/// 1M distinct users over an hour, for several seeds (the user ids differ,
/// so the hashes do): every window is within 3% (the HLL's standard error
/// is 0.81%, so 3% is beyond 3.5 sigma).
#[test]
fn a_million_users_are_counted_within_three_percent() {
    const USERS: u64 = 1_000_000;
    for seed in 0..3u64 {
        let (engine, id) = engine_with_campaign();
        let batch_size = 10_000;
        let mut batch = Vec::with_capacity(batch_size);
        let end = Timestamp::from_secs(T0 + 3_599);
        for user in 0..USERS {
            // Spread over the hour's 60 minutes, in time order.
            let t = Timestamp::from_secs(T0 + user * 3_600 / USERS);
            batch.push(impression(id, "ad", &format!("s{seed}-user-{user}"), t));
            if batch.len() == batch_size {
                let now = batch.last().unwrap().timestamp;
                engine.track_batch(&batch, now);
                batch.clear();
            }
        }
        let stats = engine.stats(id, end).unwrap();
        assert_eq!(stats.total, USERS);
        for (window, got) in [
            ("last_hour", stats.unique_users.last_hour),
            ("last_day", stats.unique_users.last_day),
            ("total", stats.unique_users.total),
        ] {
            let error = got.abs_diff(USERS) as f64 / USERS as f64;
            assert!(
                error < 0.03,
                "seed {seed}: {window} = {got}, {:.2}% off",
                error * 100.0
            );
        }
        // The sum of the per-minute counts is the users again (each user
        // is in exactly one minute), up to the same error per minute.
        let minutes: u64 = engine
            .timeseries(id, Resolution::Minute, Metric::UniqueUsers, T0 / 60, 60)
            .unwrap()
            .iter()
            .sum();
        let error = minutes.abs_diff(USERS) as f64 / USERS as f64;
        assert!(error < 0.03, "seed {seed}: minutes sum to {minutes}");
    }
}

/// However the impressions fall, no window counts more users than
/// impressions: an HLL estimate above a small exact number is clamped.
#[test]
fn unique_users_never_exceed_impressions() {
    let (engine, id) = engine_with_campaign();
    // 200 users (beyond the exact threshold) in the first minute, then a
    // single impression an hour later: the minute window holds one.
    let t = Timestamp::from_secs(T0);
    for user in 0..200 {
        engine.track(&impression(id, "ad", &format!("u{user}"), t), t);
    }
    for now in [
        T0,
        T0 + 59,
        T0 + 3_600,
        T0 + 3_660,
        T0 + 86_400,
        T0 + 90_000,
    ] {
        let now = Timestamp::from_secs(now);
        engine.track(&impression(id, "ad", "late", now), now);
        let s = engine.stats(id, now).unwrap();
        assert!(s.unique_users.last_hour <= s.last_hour, "{s:?}");
        assert!(s.unique_users.last_day <= s.last_day, "{s:?}");
        assert!(s.unique_users.total <= s.total, "{s:?}");
        assert!(s.unique_users.last_hour <= s.unique_users.last_day);
        assert!(s.unique_users.last_day <= s.unique_users.total);
    }
}

/// A user who saw two ads is one unique user of the campaign and one of
/// each ad; ads beyond the per-campaign limit share `other`'s users.
#[test]
fn users_are_unique_per_campaign_and_per_ad() {
    let engine = Engine::new(EngineConfig {
        max_ads_per_campaign: 2,
        ..EngineConfig::default()
    });
    let id = CampaignId::from_uuid(uuid::Uuid::from_u128(1));
    engine
        .create_campaign(Campaign {
            id,
            name: CampaignName::parse("reach").unwrap(),
            start_time: Timestamp::from_secs(T0),
        })
        .unwrap();
    let now = Timestamp::from_secs(T0 + 10);
    for (user, ad) in [
        ("u1", "banner"),
        ("u2", "banner"),
        ("u1", "video"),
        ("u1", "third"),
        ("u1", "fourth"),
        ("u3", "fourth"),
    ] {
        assert_eq!(
            engine.track(&impression(id, ad, user, now), now),
            TrackOutcome::Counted
        );
    }
    let b = engine.ad_stats(id, now).unwrap();
    assert_eq!(b.campaign.total, 6);
    assert_eq!(b.campaign.unique_users, all(3));
    let users: Vec<(&str, u64)> = b
        .ads
        .iter()
        .map(|(ad, s)| (ad.as_str(), s.unique_users.total))
        .collect();
    assert_eq!(users, [("banner", 2), ("video", 1)]);
    assert_eq!(b.other.total, 3);
    assert_eq!(b.other.unique_users, all(2));
}
