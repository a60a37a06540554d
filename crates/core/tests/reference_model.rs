//! The engine against the naive reference model
//! ([`impression_core::reference::ReferenceModel`]): a plain list of counted
//! impressions, scanned for every decision and every answer.
//!
//! Random sequences of batches, clock advances (small steps, jumps across the
//! TTL and the hour and day edges), out-of-order, late (up to a day) and
//! slightly future timestamps, and expiry passes must give the same outcome
//! for every impression and, after every step, the same stats, per-ad stats
//! and time series for every campaign, and the same totals (and unique
//! users) per calendar day in a random time zone.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use impression_core::reference::ReferenceModel;
use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, DedupScope, Engine, EngineConfig, Impression, Metric,
    Resolution, Timestamp, UserId,
};
use proptest::prelude::*;

/// 2025-01-01T00:00:00Z.
const T0: u64 = 1_735_689_600_000;
/// Clock skew allowed ahead of now.
const SKEW_MS: i64 = 5_000;
/// Distinct ads with their own counters; the ops use 3, so one overflows.
const MAX_ADS: usize = 2;

#[derive(Clone, Debug)]
enum Op {
    /// Impressions tracked in one batch: (campaign, ad, user, ms offset from
    /// now: negative is late, positive is ahead by clock skew).
    Batch(Vec<(usize, u8, u8, i64)>),
    Advance(u64),
    Expire,
}

fn offset(max_late_ms: i64) -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => Just(0i64),
        2 => -20_000..=0i64,
        2 => -max_late_ms..=SKEW_MS,
        1 => Just(-max_late_ms),
        // The oldest accepted minute: where a day window's first second is.
        1 => -max_late_ms..=(-max_late_ms + 120_000),
    ]
}

fn op(ttl_ms: u64, max_late_ms: i64) -> impl Strategy<Value = Op> {
    let advance = prop_oneof![
        0..2_000u64,
        (ttl_ms - 2)..=(ttl_ms + 2),
        3_599_000..3_601_000u64,
        86_399_000..86_401_000u64,
        0..30 * 3_600_000u64,
    ];
    // Small batches take the engine's one-at-a-time path, larger ones (over
    // 16) the grouped one: both must agree with the model.
    let item = || (0..4usize, 0..3u8, 0..4u8, offset(max_late_ms));
    let batch = prop_oneof![
        3 => prop::collection::vec(item(), 1..12),
        1 => prop::collection::vec(item(), 17..40),
    ];
    prop_oneof![
        6 => batch.prop_map(Op::Batch),
        3 => advance.prop_map(Op::Advance),
        1 => Just(Op::Expire),
    ]
}

/// A time zone: one of the hard ones, or any in the database.
fn zone() -> impl Strategy<Value = String> {
    let all: Vec<String> = jiff::tz::db()
        .available()
        .map(|name| name.as_str().to_owned())
        .collect();
    prop_oneof![
        1 => prop::sample::select(vec![
            "UTC",
            "America/New_York",
            "Europe/Berlin",
            "Asia/Kathmandu",
            "Asia/Kolkata",
            "Australia/Lord_Howe",
            "Pacific/Chatham",
            "Pacific/Kiritimati",
        ])
        .prop_map(str::to_owned),
        2 => prop::sample::select(all),
    ]
}

/// The UTC seconds `[start, end)` of the local days around `now`: the four
/// days up to the one holding `now`.
fn local_days(zone: &str, now_ms: u64) -> Vec<(u64, u64)> {
    let tz = jiff::tz::TimeZone::get(zone).unwrap();
    let now = jiff::Timestamp::from_millisecond(i64::try_from(now_ms).unwrap()).unwrap();
    let today = now.to_zoned(tz.clone()).date();
    (0..4i32)
        .rev()
        .map(|back| {
            let day = today.checked_sub(jiff::Span::new().days(back)).unwrap();
            let start = day.to_zoned(tz.clone()).unwrap().timestamp().as_second();
            let next = day.tomorrow().unwrap().to_zoned(tz.clone()).unwrap();
            let end = next.timestamp().as_second();
            let (start, end) = (u64::try_from(start).unwrap(), u64::try_from(end).unwrap());
            assert_eq!(start % 900, 0, "{zone}: a day starts on a quarter hour");
            (start, end)
        })
        .collect()
}

fn id(c: usize) -> CampaignId {
    CampaignId::from_uuid(uuid::Uuid::from_u128(c as u128 + 1))
}

fn run(
    ttl_ms: u64,
    max_late_ms: i64,
    scope: DedupScope,
    zone: &str,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let ttl = Duration::from_millis(ttl_ms);
    let engine = Engine::new(EngineConfig {
        ttl,
        scope,
        max_lateness: Duration::from_millis(u64::try_from(max_late_ms).unwrap()),
        dedup_shards: 4,
        history_hours: 25,
        max_ads_per_campaign: MAX_ADS,
        daily_history_days: 400,
    });
    let mut model = ReferenceModel::new(ttl, scope, MAX_ADS);
    // Campaign 2 starts 10 s after T0, so early impressions are rejected;
    // campaign 3 never exists.
    for (c, start) in [(0, T0 - 60_000), (1, T0), (2, T0 + 10_000)] {
        let start = Timestamp::from_millis(start);
        model.create_campaign(id(c), start);
        engine
            .create_campaign(Campaign {
                id: id(c),
                name: CampaignName::parse("model").unwrap(),
                start_time: start,
            })
            .unwrap();
    }

    let mut now = T0;
    for op in ops {
        match op {
            Op::Advance(ms) => now += ms,
            Op::Expire => engine.expire(Timestamp::from_millis(now)),
            Op::Batch(items) => {
                let batch: Vec<Impression> = items
                    .iter()
                    .map(|&(c, ad, user, offset)| Impression {
                        campaign_id: id(c),
                        ad_id: AdId::parse(format!("ad-{ad}")).unwrap(),
                        user_id: UserId::parse(format!("user-{user}")).unwrap(),
                        timestamp: Timestamp::from_millis(now.saturating_add_signed(offset)),
                    })
                    .collect();
                let got = engine.track_batch(&batch, Timestamp::from_millis(now));
                let want: Vec<_> = batch.iter().map(|i| model.track(i)).collect();
                prop_assert_eq!(got, want, "batch {:?} at {}", items, now);
            }
        }
        let ts = Timestamp::from_millis(now);
        let days = local_days(zone, now);
        // Users are kept by the hour for `history_hours` (25): the days
        // that start within the last 24 hours.
        let recent: Vec<(u64, u64)> = days
            .iter()
            .copied()
            .filter(|&(start, _)| start.div_ceil(3600) + 24 >= ts.as_secs() / 3600)
            .collect();
        for c in 0..4 {
            prop_assert_eq!(
                engine.range_counts(id(c), Metric::Impressions, &days),
                model.range_counts(id(c), Metric::Impressions, &days),
                "days {:?} in {}",
                days,
                zone
            );
            prop_assert_eq!(
                engine.range_counts(id(c), Metric::UniqueUsers, &recent),
                model.range_counts(id(c), Metric::UniqueUsers, &recent),
                "users of days {:?} in {}",
                recent,
                zone
            );
            prop_assert_eq!(engine.stats(id(c), ts), model.stats(id(c), ts));
            prop_assert_eq!(engine.ad_stats(id(c), ts), model.ad_stats(id(c), ts));
            // Time series: the last 90 s by second, the last 90 min by
            // minute, the last 25 h by hour, bucket by bucket.
            for (resolution, count) in [
                (Resolution::Second, 90u64),
                (Resolution::Minute, 90),
                (Resolution::Hour, 25),
            ] {
                let first = ts.as_secs() / resolution.secs() + 1 - count;
                let n = usize::try_from(count).unwrap();
                for metric in [Metric::Impressions, Metric::UniqueUsers] {
                    prop_assert_eq!(
                        engine.timeseries(id(c), resolution, metric, first, n),
                        model.series(id(c), resolution, metric, first, n),
                        "{:?} {:?} series of campaign {}",
                        resolution,
                        metric,
                        c
                    );
                }
            }
        }
    }
    Ok(())
}

/// A TTL, a maximum lateness (20 s of queueing, 10 min, or a whole day of
/// late events) and a sequence of operations.
fn case() -> impl Strategy<Value = (u64, i64, String, Vec<Op>)> {
    (
        1_000..7_200_000u64,
        prop_oneof![Just(20_000i64), Just(600_000), Just(86_400_000)],
        zone(),
    )
        .prop_flat_map(|(ttl, late, zone)| {
            (
                Just(ttl),
                Just(late),
                Just(zone),
                prop::collection::vec(op(ttl, late), 1..60),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn engine_matches_the_reference_model_with_ad_scope((ttl_ms, late_ms, zone, ops) in case()) {
        run(ttl_ms, late_ms, DedupScope::Ad, &zone, ops)?;
    }

    #[test]
    fn engine_matches_the_reference_model_with_campaign_scope((ttl_ms, late_ms, zone, ops) in case()) {
        run(ttl_ms, late_ms, DedupScope::Campaign, &zone, ops)?;
    }
}
