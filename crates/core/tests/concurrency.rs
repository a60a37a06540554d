//! Many threads hammering one engine: exact totals, no double counts.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::{Arc, Barrier};
use std::thread;

use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, Engine, EngineConfig, Impression, Timestamp,
    TrackOutcome, UserId,
};

const THREADS: usize = 8;
const NOW: Timestamp = Timestamp::from_millis(1_735_689_600_000);

fn engine_with_campaigns(n: u128) -> (Arc<Engine>, Vec<CampaignId>) {
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let ids = (1..=n)
        .map(|i| {
            let id = CampaignId::from_uuid(uuid::Uuid::from_u128(i));
            engine
                .create_campaign(Campaign {
                    id,
                    name: CampaignName::parse("c").unwrap(),
                    start_time: Timestamp::EPOCH,
                })
                .unwrap();
            id
        })
        .collect();
    (engine, ids)
}

fn impression(c: CampaignId, ad: &str, user: &str) -> Impression {
    Impression {
        campaign_id: c,
        ad_id: AdId::parse(ad).unwrap(),
        user_id: UserId::parse(user).unwrap(),
        timestamp: NOW,
    }
}

/// Runs `work(thread_index)` on THREADS threads released together.
fn in_parallel<T: Send + 'static>(work: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (work, start) = (Arc::clone(&work), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                work(t)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn distinct_keys_from_many_threads_are_all_counted() {
    let (engine, ids) = engine_with_campaigns(3);
    let per_thread = 20_000;
    let e = Arc::clone(&engine);
    let ids2 = ids.clone();
    in_parallel(move |t| {
        let batch: Vec<Impression> = (0..per_thread)
            .map(|i| impression(ids2[i % 3], "ad", &format!("t{t}-u{i}")))
            .collect();
        for chunk in batch.chunks(500) {
            assert!(
                e.track_batch(chunk, NOW)
                    .iter()
                    .all(|o| *o == TrackOutcome::Counted)
            );
        }
    });
    let total: u64 = ids
        .iter()
        .map(|&c| engine.stats(c, NOW).unwrap().total)
        .sum();
    assert_eq!(total, (THREADS * per_thread) as u64);
    assert_eq!(engine.live_dedup_keys(), THREADS * per_thread);
}

#[test]
fn the_same_key_from_many_threads_is_counted_once() {
    let (engine, ids) = engine_with_campaigns(1);
    let c = ids[0];
    let e = Arc::clone(&engine);
    let counted_per_thread = in_parallel(move |_| {
        let mut counted = 0;
        for _ in 0..2_000 {
            // Single impressions and batches holding copies race each other.
            counted += usize::from(
                e.track(&impression(c, "ad", "same-user"), NOW) == TrackOutcome::Counted,
            );
            let batch = vec![impression(c, "ad", "same-user"); 3];
            counted += e
                .track_batch(&batch, NOW)
                .iter()
                .filter(|o| **o == TrackOutcome::Counted)
                .count();
        }
        counted
    });
    assert_eq!(counted_per_thread.iter().sum::<usize>(), 1);
    assert_eq!(engine.stats(c, NOW).unwrap().total, 1);
}

#[test]
fn stats_reads_race_ingest_without_tearing() {
    let (engine, ids) = engine_with_campaigns(1);
    let c = ids[0];
    let e = Arc::clone(&engine);
    in_parallel(move |t| {
        if t % 2 == 0 {
            for i in 0..5_000 {
                e.track(&impression(c, "ad", &format!("t{t}-{i}")), NOW);
            }
        } else {
            let mut previous = 0;
            for _ in 0..5_000 {
                let s = e.stats(c, NOW).unwrap();
                // Every read is a consistent snapshot that never goes back.
                assert!(s.last_hour == s.total && s.last_day == s.total);
                assert!(s.total >= previous);
                previous = s.total;
            }
        }
    });
    assert_eq!(
        engine.stats(c, NOW).unwrap().total,
        (THREADS / 2 * 5_000) as u64
    );
}
