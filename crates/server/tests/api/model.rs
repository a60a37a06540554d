//! Every backend against the naive reference model, through the `Store`
//! seam: random batches (late, out-of-order and skewed event times), clock
//! advances across the TTL, hour and day edges, and housekeeping passes; after
//! every step every campaign's stats, per-ad stats and time series (of
//! impressions and of unique users) must equal the model's: the audiences
//! here are small, so the sketches are exact. Backends that persist are also closed and opened again at
//! random points, and must carry on exactly where they were. Time comes from
//! the caller, as in production, so nothing waits.

use std::sync::Arc;

use impression_core::reference::ReferenceModel;
use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, DedupScope, Impression, ManualClock, Metric,
    Resolution, Timestamp, UserId,
};
use proptest::prelude::*;

use crate::backend_test;
use crate::backends::open_store;
use crate::cases::check_cases;
use crate::helpers::T0;

const MAX_ADS: usize = 2;
const MAX_AGE_MS: i64 = 600_000;

#[derive(Clone, Debug)]
enum Op {
    Batch(Vec<(usize, u8, u8, i64)>),
    Advance(u64),
    Maintain,
    Restart,
}

#[derive(Clone, Debug)]
struct Case {
    ttl: &'static str,
    scope: &'static str,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    let offset = prop_oneof![3 => Just(0i64), 2 => -MAX_AGE_MS..=5_000i64, 1 => Just(-MAX_AGE_MS)];
    let op = prop_oneof![
        6 => prop::collection::vec((0..4usize, 0..3u8, 0..4u8, offset), 1..10).prop_map(Op::Batch),
        3 => prop_oneof![0..3_000u64, 1_999..2_002u64, 3_599_000..3_601_000u64, 86_399_000..86_401_000u64].prop_map(Op::Advance),
        1 => Just(Op::Maintain),
        1 => Just(Op::Restart),
    ];
    (
        prop_oneof![Just("2s"), Just("90s"), Just("1h")],
        prop_oneof![Just("ad"), Just("campaign")],
        prop::collection::vec(op, 1..40),
    )
        .prop_map(|(ttl, scope, ops)| Case { ttl, scope, ops })
}

/// The UTC ranges of the four local days in `zone` up to the one holding
/// `now`.
fn local_days(zone: &str, now: Timestamp) -> Vec<(u64, u64)> {
    let zone = impression_counter::calendar::Zone::parse(zone).unwrap();
    let today = zone.date_at(now.as_secs());
    let mut day = today;
    let mut days = Vec::new();
    for _ in 0..4 {
        let start = zone.start_of_day(day).unwrap();
        let end = zone.start_of_day(day.tomorrow().unwrap()).unwrap();
        days.push((start, end));
        day = day.yesterday().unwrap();
    }
    days.reverse();
    days
}

fn id(c: usize) -> CampaignId {
    CampaignId::from_uuid(uuid::Uuid::from_u128(0x00C0_FFEE_0000 + c as u128))
}

async fn check(backend: crate::backends::Backend, case: &Case) -> Result<(), String> {
    let clock = Arc::new(ManualClock::new(T0));
    let max_ads = MAX_ADS.to_string();
    let flags = [
        "--ttl",
        case.ttl,
        "--dedup-scope",
        case.scope,
        "--max-event-age",
        "10m",
        "--max-ads-per-campaign",
        &max_ads,
    ];
    let (mut store, config, _guard) = open_store(backend, &flags, clock.clone()).await;
    let ttl = crate::helpers::config(&["--ttl", case.ttl]).ttl;
    let scope = if case.scope == "ad" {
        DedupScope::Ad
    } else {
        DedupScope::Campaign
    };
    let mut model = ReferenceModel::new(ttl, scope, MAX_ADS);
    for (c, start) in [
        (0usize, T0.as_millis() - 60_000),
        (1, T0.as_millis()),
        (2, T0.as_millis() + 10_000),
    ] {
        let start = Timestamp::from_millis(start);
        model.create_campaign(id(c), start);
        store
            .create_campaign(Campaign {
                id: id(c),
                name: CampaignName::parse("model").unwrap(),
                start_time: start,
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut now = T0.as_millis();
    for (step, op) in case.ops.iter().enumerate() {
        match op {
            Op::Advance(ms) => now += ms,
            Op::Maintain => store.maintain(Timestamp::from_millis(now)).await,
            Op::Restart if backend.persists() => {
                store.close().await.map_err(|e| e.to_string())?;
                drop(store);
                clock.set(Timestamp::from_millis(now));
                store = impression_counter::storage::open(&config.storage(), clock.clone())
                    .await
                    .map_err(|e| format!("step {step}: reopening: {e}"))?;
            }
            Op::Restart => {}
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
                let got = store
                    .apply(&batch, Timestamp::from_millis(now))
                    .await
                    .map_err(|e| e.to_string())?;
                let want: Vec<_> = batch.iter().map(|i| model.track(i)).collect();
                if got != want {
                    return Err(format!("step {step}: outcomes {got:?}, model {want:?}"));
                }
            }
        }
        clock.set(Timestamp::from_millis(now));
        let ts = Timestamp::from_millis(now);
        for c in 0..4 {
            let got = store.stats(id(c), ts).await.map_err(|e| e.to_string())?;
            if got != model.stats(id(c), ts) {
                return Err(format!(
                    "step {step}: stats of {c}: {got:?} vs {:?}",
                    model.stats(id(c), ts)
                ));
            }
            let got = store.ad_stats(id(c), ts).await.map_err(|e| e.to_string())?;
            if got != model.ad_stats(id(c), ts) {
                return Err(format!(
                    "step {step}: ad stats of {c}: {got:?} vs {:?}",
                    model.ad_stats(id(c), ts)
                ));
            }
            // Calendar days in a zone per campaign: the four local days up
            // to now, impressions and (kept by the hour for HISTORY, 7 days
            // here) unique users.
            let zone = [
                "UTC",
                "America/New_York",
                "Asia/Kathmandu",
                "Australia/Lord_Howe",
            ][c];
            let days = local_days(zone, ts);
            for metric in [Metric::Impressions, Metric::UniqueUsers] {
                let got = store
                    .range_counts(id(c), metric, &days, ts)
                    .await
                    .map_err(|e| e.to_string())?;
                let want = model.range_counts(id(c), metric, &days);
                if got != want {
                    return Err(format!(
                        "step {step}: {metric:?} per day in {zone} of {c}: {got:?} vs {want:?}"
                    ));
                }
            }
            for (resolution, metric, count) in [
                (Resolution::Second, Metric::Impressions, 70u64),
                (Resolution::Minute, Metric::Impressions, 70),
                (Resolution::Hour, Metric::Impressions, 26),
                (Resolution::Minute, Metric::UniqueUsers, 70),
                (Resolution::Hour, Metric::UniqueUsers, 26),
            ] {
                let first = ts.as_secs() / resolution.secs() + 1 - count;
                let n = usize::try_from(count).unwrap();
                let got = store
                    .timeseries(id(c), resolution, metric, first, n)
                    .await
                    .map_err(|e| e.to_string())?;
                let want = model.series(id(c), resolution, metric, first, n);
                if got != want {
                    return Err(format!(
                        "step {step}: {resolution:?} {metric:?} series of {c}: {got:?} vs {want:?}"
                    ));
                }
            }
        }
    }
    Ok(())
}

backend_test! {
    async fn every_backend_matches_the_reference_model(backend: Backend) {
        // Cases are generated by proptest and checked here, in the async
        // test, one after the other; a failure is shrunk and printed with
        // its seed (see `crate::cases`). MODEL_CASES=N runs more cases, for
        // hunting rare failures locally.
        let default = if backend == crate::backends::Backend::Memory { 128 } else { 48 };
        let cases = std::env::var("MODEL_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(default);
        let test = format!("every_backend_matches_the_reference_model::{}", backend.test_name());
        check_cases(&test, cases, case(), |case| async move { check(backend, &case).await }).await;
    }
}
