//! The engine against a naive reference model: a plain list of counted
//! impressions, scanned for every decision and every stats answer.
//!
//! Random sequences of batches, clock advances (small steps, jumps across the
//! TTL and the hour and day edges), out-of-order, late (up to a day) and
//! slightly future timestamps, and expiry passes must give the same outcome
//! for every impression and, after every step, the same stats, per-ad stats
//! and time series for every campaign.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, DedupScope, Engine, EngineConfig, Impression,
    Rejection, Resolution, Stats, Timestamp, TrackOutcome, UserId,
};
use proptest::prelude::*;

/// 2025-01-01T00:00:00Z.
const T0: u64 = 1_735_689_600_000;
/// Clock skew allowed ahead of now.
const SKEW_MS: i64 = 5_000;
/// Distinct ads with their own counters; the model uses 3, so one overflows.
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
    prop_oneof![
        6 => prop::collection::vec((0..4usize, 0..3u8, 0..4u8, offset(max_late_ms)), 1..12).prop_map(Op::Batch),
        3 => advance.prop_map(Op::Advance),
        1 => Just(Op::Expire),
    ]
}

struct Model {
    ttl_ms: u64,
    scope: DedupScope,
    /// Campaign index and start time; index 3 is never created.
    starts: [Option<u64>; 4],
    /// (campaign, ad, user, timestamp) of every counted impression.
    counted: Vec<(usize, u8, u8, u64)>,
}

fn window(counted: &mut dyn Iterator<Item = u64>, now: u64) -> Stats {
    let now_sec = now / 1000;
    let (mut s, mut n) = (Stats::default(), 0);
    for t in counted {
        n += 1;
        s.last_hour += u64::from(t / 1000 + 3600 > now_sec);
        s.last_day += u64::from(t / 1000 + 86_400 > now_sec);
    }
    s.total = n;
    s
}

impl Model {
    fn track(&mut self, c: usize, ad: u8, user: u8, t: u64) -> TrackOutcome {
        let Some(start) = self.starts[c] else {
            return TrackOutcome::Rejected(Rejection::UnknownCampaign);
        };
        if t < start {
            return TrackOutcome::Rejected(Rejection::NotStarted);
        }
        let same_key = |&&(c2, ad2, u2, _): &&(usize, u8, u8, u64)| {
            c2 == c && u2 == user && (self.scope == DedupScope::Campaign || ad2 == ad)
        };
        let last = self.counted.iter().filter(same_key).map(|e| e.3).max();
        if last.is_some_and(|l| l.abs_diff(t) < self.ttl_ms) {
            return TrackOutcome::Duplicate;
        }
        self.counted.push((c, ad, user, t));
        TrackOutcome::Counted
    }

    fn stats(&self, c: usize, now: u64) -> Option<Stats> {
        self.starts[c]?;
        Some(window(
            &mut self.counted.iter().filter(|e| e.0 == c).map(|e| e.3),
            now,
        ))
    }

    /// Per-ad stats: the first MAX_ADS ads counted get their own, the rest
    /// are summed in `other`.
    fn ad_stats(&self, c: usize, now: u64) -> Option<(Vec<(String, Stats)>, Stats)> {
        self.starts[c]?;
        let mut own: Vec<u8> = Vec::new();
        for e in self.counted.iter().filter(|e| e.0 == c) {
            if !own.contains(&e.1) && own.len() < MAX_ADS {
                own.push(e.1);
            }
        }
        let mine = || self.counted.iter().filter(|e| e.0 == c);
        let mut ads: Vec<(String, Stats)> = own
            .iter()
            .map(|&ad| {
                let s = window(&mut mine().filter(|e| e.1 == ad).map(|e| e.3), now);
                (format!("ad-{ad}"), s)
            })
            .collect();
        ads.sort_by(|a, b| a.0.cmp(&b.0));
        let other = window(
            &mut mine().filter(|e| !own.contains(&e.1)).map(|e| e.3),
            now,
        );
        Some((ads, other))
    }

    fn bucket_count(&self, c: usize, width_secs: u64, bucket: u64) -> u64 {
        self.counted
            .iter()
            .filter(|e| e.0 == c && e.3 / 1000 / width_secs == bucket)
            .count() as u64
    }
}

fn id(c: usize) -> CampaignId {
    CampaignId::from_uuid(uuid::Uuid::from_u128(c as u128 + 1))
}

fn run(
    ttl_ms: u64,
    max_late_ms: i64,
    scope: DedupScope,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let engine = Engine::new(EngineConfig {
        ttl: Duration::from_millis(ttl_ms),
        scope,
        max_lateness: Duration::from_millis(max_late_ms as u64),
        dedup_shards: 4,
        history_hours: 25,
        max_ads_per_campaign: MAX_ADS,
    });
    // Campaign 2 starts 10 s after T0, so early impressions are rejected.
    let mut model = Model {
        ttl_ms,
        scope,
        starts: [Some(T0 - 60_000), Some(T0), Some(T0 + 10_000), None],
        counted: Vec::new(),
    };
    for (c, start) in model.starts.iter().enumerate() {
        if let Some(start) = start {
            engine
                .create_campaign(Campaign {
                    id: id(c),
                    name: CampaignName::parse("model").unwrap(),
                    start_time: Timestamp::from_millis(*start),
                })
                .unwrap();
        }
    }

    let mut now = T0;
    for op in ops {
        match op {
            Op::Advance(ms) => now += ms,
            Op::Expire => engine.expire(Timestamp::from_millis(now)),
            Op::Batch(items) => {
                let at = |offset: i64| now.saturating_add_signed(offset);
                let batch: Vec<Impression> = items
                    .iter()
                    .map(|&(c, ad, user, offset)| Impression {
                        campaign_id: id(c),
                        ad_id: AdId::parse(format!("ad-{ad}")).unwrap(),
                        user_id: UserId::parse(format!("user-{user}")).unwrap(),
                        timestamp: Timestamp::from_millis(at(offset)),
                    })
                    .collect();
                let got = engine.track_batch(&batch, Timestamp::from_millis(now));
                let want: Vec<TrackOutcome> = items
                    .iter()
                    .map(|&(c, ad, user, offset)| model.track(c, ad, user, at(offset)))
                    .collect();
                prop_assert_eq!(got, want, "batch {:?} at {}", items, now);
            }
        }
        let ts = Timestamp::from_millis(now);
        for c in 0..4 {
            prop_assert_eq!(engine.stats(id(c), ts), model.stats(c, now));
            let breakdown = engine.ad_stats(id(c), ts).map(|b| {
                let ads: Vec<(String, Stats)> = b
                    .ads
                    .into_iter()
                    .map(|(ad, s)| (ad.to_string(), s))
                    .collect();
                (ads, b.other)
            });
            prop_assert_eq!(breakdown, model.ad_stats(c, now));
            if model.starts[c].is_none() {
                continue;
            }
            // Time series: the last 90 s by second, the last 90 min by
            // minute, the last 30 h by hour, bucket by bucket.
            let now_sec = now / 1000;
            for (resolution, count) in [
                (Resolution::Second, 90u64),
                (Resolution::Minute, 90),
                (Resolution::Hour, 25),
            ] {
                let width = resolution.secs();
                let first = now_sec / width + 1 - count;
                let got = engine
                    .timeseries(id(c), resolution, first, count as usize)
                    .unwrap();
                let want: Vec<u64> = (first..first + count)
                    .map(|b| model.bucket_count(c, width, b))
                    .collect();
                prop_assert_eq!(got, want, "{:?} series of campaign {}", resolution, c);
            }
        }
    }
    Ok(())
}

/// A TTL, a maximum lateness (20 s of queueing, 10 min, or a whole day of
/// late events) and a sequence of operations.
fn case() -> impl Strategy<Value = (u64, i64, Vec<Op>)> {
    (
        1_000..7_200_000u64,
        prop_oneof![Just(20_000i64), Just(600_000), Just(86_400_000)],
    )
        .prop_flat_map(|(ttl, late)| {
            (
                Just(ttl),
                Just(late),
                prop::collection::vec(op(ttl, late), 1..60),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn engine_matches_the_reference_model_with_ad_scope((ttl_ms, late_ms, ops) in case()) {
        run(ttl_ms, late_ms, DedupScope::Ad, ops)?;
    }

    #[test]
    fn engine_matches_the_reference_model_with_campaign_scope((ttl_ms, late_ms, ops) in case()) {
        run(ttl_ms, late_ms, DedupScope::Campaign, ops)?;
    }
}
