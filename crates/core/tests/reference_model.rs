//! The engine against a naive reference model: a plain list of counted
//! impressions, scanned for every decision and every stats answer.
//!
//! Random sequences of batches, clock advances (small steps, jumps across the
//! TTL and the hour and day edges), out-of-order timestamps and expiry passes
//! must give the same outcome for every impression and the same stats for
//! every campaign after every step.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, DedupScope, Engine, EngineConfig, Impression,
    Rejection, Stats, Timestamp, TrackOutcome, UserId,
};
use proptest::prelude::*;

/// 2025-01-01T00:00:00Z.
const T0: u64 = 1_735_689_600_000;
const MAX_LATENESS_MS: u64 = 20_000;

#[derive(Clone, Debug)]
enum Op {
    /// Impressions tracked in one batch: (campaign, ad, user, ms behind now).
    Batch(Vec<(usize, u8, u8, u64)>),
    Advance(u64),
    Expire,
}

fn op(ttl_ms: u64) -> impl Strategy<Value = Op> {
    let advance = prop_oneof![
        0..2_000u64,
        (ttl_ms - 2)..=(ttl_ms + 2),
        3_599_000..3_601_000u64,
        86_399_000..86_401_000u64,
        0..30 * 3_600_000u64,
    ];
    prop_oneof![
        6 => prop::collection::vec((0..4usize, 0..3u8, 0..4u8, prop_oneof![Just(0u64), 0..MAX_LATENESS_MS]), 1..12).prop_map(Op::Batch),
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
        let now_sec = now / 1000;
        let mine = || self.counted.iter().filter(|e| e.0 == c);
        let within = |secs: u64| mine().filter(|e| e.3 / 1000 + secs > now_sec).count() as u64;
        Some(Stats {
            last_hour: within(3600),
            last_day: within(86_400),
            total: mine().count() as u64,
        })
    }
}

fn id(c: usize) -> CampaignId {
    CampaignId::from_uuid(uuid::Uuid::from_u128(c as u128 + 1))
}

fn run(ttl_ms: u64, scope: DedupScope, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let engine = Engine::new(EngineConfig {
        ttl: Duration::from_millis(ttl_ms),
        scope,
        max_lateness: Duration::from_millis(MAX_LATENESS_MS),
        dedup_shards: 4,
        history_hours: 25,
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
                let batch: Vec<Impression> = items
                    .iter()
                    .map(|&(c, ad, user, behind)| Impression {
                        campaign_id: id(c),
                        ad_id: AdId::parse(format!("ad-{ad}")).unwrap(),
                        user_id: UserId::parse(format!("user-{user}")).unwrap(),
                        timestamp: Timestamp::from_millis(now - behind),
                    })
                    .collect();
                let got = engine.track_batch(&batch, Timestamp::from_millis(now));
                let want: Vec<TrackOutcome> = items
                    .iter()
                    .map(|&(c, ad, user, behind)| model.track(c, ad, user, now - behind))
                    .collect();
                prop_assert_eq!(got, want, "batch {:?} at {}", items, now);
            }
        }
        for c in 0..4 {
            let now = Timestamp::from_millis(now);
            prop_assert_eq!(engine.stats(id(c), now), model.stats(c, now.as_millis()));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn engine_matches_the_reference_model_with_ad_scope(
        (ttl_ms, ops) in (1_000..7_200_000u64).prop_flat_map(|ttl| (Just(ttl), prop::collection::vec(op(ttl), 1..80)))
    ) {
        run(ttl_ms, DedupScope::Ad, ops)?;
    }

    #[test]
    fn engine_matches_the_reference_model_with_campaign_scope(
        (ttl_ms, ops) in (1_000..7_200_000u64).prop_flat_map(|ttl| (Just(ttl), prop::collection::vec(op(ttl), 1..80)))
    ) {
        run(ttl_ms, DedupScope::Campaign, ops)?;
    }
}
