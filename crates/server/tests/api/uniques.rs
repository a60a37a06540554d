//! Unique users (reach) through the API and the storage seam: the pinned
//! JSON, the windows' edges, the `metric=` series, and the same numbers
//! from every backend, also for audiences past the exact threshold and
//! across restarts.

use std::sync::Arc;
use std::time::Duration;

use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, Impression, ManualClock, Metric, Resolution,
    Timestamp, UserId,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backend_test;
use crate::backends::{Backend, open_store};
use crate::helpers::{T0, TestApp, assert_error, spawn};

fn users(n: u64) -> Value {
    json!({ "last_hour": n, "last_day": n, "total": n })
}

async fn unique_users(app: &TestApp, c: &str) -> (u64, u64, u64) {
    let body = app.stats(c).await;
    let u = &body["unique_users"];
    (
        u["last_hour"].as_u64().unwrap(),
        u["last_day"].as_u64().unwrap(),
        u["total"].as_u64().unwrap(),
    )
}

backend_test! {
    async fn unique_users_roll_over_with_whole_minutes_and_hours(backend: Backend) {
        let app = spawn(backend, &[]).await;
        let c = app.create_campaign("c").await;
        // Three people, one of them on two ads: four impressions.
        for (user, ad) in [("a", "x"), ("b", "x"), ("c", "x"), ("a", "y")] {
            assert_eq!(app.track_and_wait(&c, user, ad).await, "counted");
        }
        assert_eq!(app.stats(&c).await["unique_users"], users(3));
        assert_eq!(app.counts(&c).await, (4, 4, 4));
        // T0 is the start of a minute and an hour: the last millisecond of
        // its 60th minute still holds them, the next one does not.
        app.clock.advance(Duration::from_millis(3_599_999));
        assert_eq!(unique_users(&app, &c).await, (3, 3, 3));
        app.clock.advance(Duration::from_millis(1));
        assert_eq!(unique_users(&app, &c).await, (0, 3, 3));
        // "a" again, an hour in: a new impression, the same person.
        assert_eq!(app.track_and_wait(&c, "a", "x").await, "counted");
        assert_eq!(unique_users(&app, &c).await, (1, 3, 3));
        // The day window is the current hour and the 23 before it.
        app.clock.set(T0.saturating_add(Duration::from_secs(86_399)));
        assert_eq!(unique_users(&app, &c).await, (0, 3, 3));
        app.clock.set(T0.saturating_add(Duration::from_secs(86_400)));
        assert_eq!(unique_users(&app, &c).await, (0, 1, 3));
        app.clock.set(T0.saturating_add(Duration::from_secs(86_400 + 3_600)));
        assert_eq!(unique_users(&app, &c).await, (0, 0, 3));
    }
}

backend_test! {
    async fn unique_user_series_count_each_bucket(backend: Backend) {
        let app = spawn(backend, &["--max-event-age", "24h"]).await;
        let c = app.create_campaign("c").await;
        app.clock.set(T0.saturating_add(Duration::from_secs(3 * 3_600 - 1)));
        // Minute k of the first three hours sees users 0..=k%5, twice each:
        // the minute has k%5+1 users, every hour has 5, the day has 5.
        let mut batch = Vec::new();
        for minute in 0..180u64 {
            for user in 0..=(minute % 5) {
                for _ in 0..2 {
                    let t = T0.saturating_add(Duration::from_secs(minute * 60 + user));
                    batch.push(json!({
                        "campaign_id": c,
                        "user_id": format!("u{user}"),
                        "ad_id": format!("ad-{minute}"),
                        "timestamp": impression_counter::timefmt::format_rfc3339(t),
                    }));
                }
            }
        }
        let response = app
            .post_json("/api/v1/impressions/batch?wait=true", &Value::Array(batch))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        // Each (user, ad) pair once: the second copy is a duplicate.
        assert_eq!(body["counted"], 540);

        let series = |query: &'static str| {
            let app = &app;
            let c = c.clone();
            async move {
                let response = app.get(&format!("/api/v1/campaigns/{c}/timeseries?{query}")).await;
                assert_eq!(response.status(), StatusCode::OK, "{query}");
                let body: Value = response.json().await.unwrap();
                let counts: Vec<u64> = body["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["count"].as_u64().unwrap())
                    .collect();
                (body, counts)
            }
        };
        let (body, minutes) = series("resolution=minute&window=3h&metric=unique_users").await;
        assert_eq!(body["metric"], "unique_users");
        let want: Vec<u64> = (0..180).map(|m| m % 5 + 1).collect();
        assert_eq!(minutes, want);
        let (_, hours) = series("resolution=hour&window=4h&metric=unique_users").await;
        assert_eq!(hours, [0, 5, 5, 5]);
        let (body, hours) = series("resolution=hour&window=4h").await;
        assert_eq!(body["metric"], "impressions");
        assert_eq!(hours, [0, 180, 180, 180]);
        // Users never add up across buckets, but never exceed the stats.
        assert_eq!(app.stats(&c).await["unique_users"], users(5));

        for (query, needle) in [
            ("resolution=second&metric=unique_users", "resolution=minute, hour or day"),
            ("metric=users", "metric must be `impressions` or `unique_users`"),
            ("metric=", "metric must be"),
        ] {
            let error = assert_error(
                app.get(&format!("/api/v1/campaigns/{c}/timeseries?{query}")).await,
                StatusCode::BAD_REQUEST,
            )
            .await;
            assert!(error.contains(needle), "{query}: {error}");
        }
    }
}

fn campaign_id(n: u128) -> CampaignId {
    CampaignId::from_uuid(uuid::Uuid::from_u128(0x5EED_0000 + n))
}

/// 3,000 people over two hours, on three ads (one beyond the ad limit),
/// some seen in several minutes: sketches in the exact and the HLL modes,
/// hour sketches built at hours' close, minutes merged into a day.
fn audience() -> Vec<Impression> {
    let mut out = Vec::new();
    for user in 0..3_000u64 {
        for visit in 0..=(user % 3) {
            let second = (user * 7 + visit * 1_999) % 7_200;
            out.push(Impression {
                campaign_id: campaign_id(0),
                ad_id: AdId::parse(format!("ad-{}", (user + visit) % 3)).unwrap(),
                user_id: UserId::parse(format!("person-{user}")).unwrap(),
                timestamp: Timestamp::from_millis(T0.as_millis() + second * 1_000),
            });
        }
        // A small campaign next to it: exact numbers everywhere.
        if user < 40 {
            out.push(Impression {
                campaign_id: campaign_id(1),
                ad_id: AdId::parse("ad-0").unwrap(),
                user_id: UserId::parse(format!("person-{user}")).unwrap(),
                timestamp: Timestamp::from_millis(T0.as_millis() + user * 60_000),
            });
        }
    }
    out.sort_by_key(|i| i.timestamp);
    out
}

/// Everything a backend answers about the audience, at `now`.
async fn answers(store: &dyn impression_counter::storage::Store, now: Timestamp) -> Vec<String> {
    let mut out = Vec::new();
    for c in 0..2 {
        let id = campaign_id(c);
        out.push(format!("{:?}", store.stats(id, now).await.unwrap()));
        out.push(format!("{:?}", store.ad_stats(id, now).await.unwrap()));
        for (resolution, count) in [(Resolution::Minute, 180u64), (Resolution::Hour, 4)] {
            let first = now.as_secs() / resolution.secs() + 1 - count;
            let n = usize::try_from(count).unwrap();
            for metric in [Metric::Impressions, Metric::UniqueUsers] {
                let series = store
                    .timeseries(id, resolution, metric, first, n)
                    .await
                    .unwrap();
                out.push(format!("{resolution:?} {metric:?} {series:?}"));
            }
        }
    }
    out
}

/// The same impressions through every backend give the same numbers, to
/// the unit, before and after a restart; and the memory engine's are the
/// reference the others are held to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_gives_the_same_unique_users() {
    let impressions = audience();
    let end = Timestamp::from_millis(T0.as_millis() + 7_200_000);
    let mut reference: Option<Vec<String>> = None;
    for backend in [
        Backend::Memory,
        Backend::Disk,
        Backend::Redis,
        Backend::RedisCluster,
    ] {
        let clock = Arc::new(ManualClock::new(T0));
        let flags = ["--max-ads-per-campaign", "2", "--max-event-age", "10m"];
        let (mut store, config, _guard) = open_store(backend, &flags, clock.clone()).await;
        for c in 0..2 {
            store
                .create_campaign(Campaign {
                    id: campaign_id(c),
                    name: CampaignName::parse("reach").unwrap(),
                    start_time: T0,
                })
                .await
                .unwrap();
        }
        // In time order, a second's worth at a time, as traffic arrives.
        for chunk in impressions.chunk_by(|a, b| a.timestamp.as_secs() == b.timestamp.as_secs()) {
            let now = chunk[0].timestamp;
            clock.set(now);
            store.apply(chunk, now).await.unwrap();
        }
        clock.set(end);
        store.maintain(end).await;
        let got = answers(store.as_ref(), end).await;
        // Sanity: the big campaign is past the exact threshold and close
        // to its 3,000 people; the small one is exact.
        let stats = store.stats(campaign_id(0), end).await.unwrap().unwrap();
        let off = stats.unique_users.total.abs_diff(3_000);
        assert!(off < 90, "{backend:?}: {stats:?}");
        let small = store.stats(campaign_id(1), end).await.unwrap().unwrap();
        assert_eq!(small.unique_users.total, 40, "{backend:?}");
        match &reference {
            None => reference = Some(got),
            Some(want) => assert_eq!(&got, want, "{backend:?} differs from memory"),
        }
        if backend.persists() {
            store.close().await.unwrap();
            drop(store);
            store = impression_counter::storage::open(&config.storage(), clock.clone())
                .await
                .unwrap();
            let again = answers(store.as_ref(), end).await;
            assert_eq!(
                Some(&again),
                reference.as_ref(),
                "{backend:?} after a restart"
            );
        }
    }
}
