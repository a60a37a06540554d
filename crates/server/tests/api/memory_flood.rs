//! The hostile flood of issue 18 against the real binary with a small
//! `MEMORY_LIMIT`: new users over thousands of invented ad ids, as fast as
//! a few connections can send them, for a bounded time. The process's RSS,
//! read from `/proc`, stays within the limit plus 10% and a fixed base;
//! stats answer throughout; every acknowledged impression is counted; at
//! the limit duplicates are still answered. (That room comes back once keys
//! expire is shown in process, with the manual clock: `memory.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::process::ServerProcess;

/// The limit under test.
const LIMIT: u64 = 24 << 20;
/// What the process holds besides its state, over its RSS at start: the
/// allocator's per-thread caches and request bodies in flight under a full
/// batch load (about 22 MiB measured with a flood of duplicates, which adds
/// no state), with a margin.
const BASE_ALLOWANCE: u64 = 40 << 20;
/// Longest the flood runs; it stops earlier once the limit has refused
/// impressions for a while.
const MAX_FLOOD: Duration = Duration::from_secs(40);

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_users_and_invented_ads_stays_within_the_memory_limit() {
    let server = ServerProcess::start(&[("STORAGE", "memory"), ("MEMORY_LIMIT", "24MiB")]);
    let pid = server.pid();
    let http = reqwest::Client::new();
    let mut campaigns = Vec::new();
    for n in 0..3 {
        campaigns.push(server.create_campaign(&http, &format!("target {n}")).await);
    }
    let first = &campaigns[0];
    let url = |path: &str| server.url(path);
    let answer = http
        .post(url("/api/v1/impressions?wait=true"))
        .json(&json!({"campaign_id": first, "user_id": "known", "ad_id": "ad-0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let base = rss_bytes(pid);
    assert!(base > 0, "RSS is readable");

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(base));
    let sampler = {
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Reads keep answering throughout.
    let prober = {
        let (stop, http, url) = (
            Arc::clone(&stop),
            http.clone(),
            url(&format!("/api/v1/campaigns/{first}/stats")),
        );
        tokio::spawn(async move {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let status = http.get(&url).send().await.unwrap().status();
                assert_eq!(status, StatusCode::OK, "stats during the flood");
                reads += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            reads
        })
    };

    // Four connections of batches: new users, 10,000 invented ads.
    let started = Instant::now();
    let refused_since: Arc<parking_lot::Mutex<Option<Instant>>> = Arc::default();
    let mut senders = Vec::new();
    for sender in 0..4u64 {
        let (http, url, campaigns) = (
            http.clone(),
            url("/api/v1/impressions/batch?wait=true"),
            campaigns.clone(),
        );
        let refused_since = Arc::clone(&refused_since);
        senders.push(tokio::spawn(async move {
            let (mut counted, mut refused, mut next) = (0u64, 0u64, 0u64);
            loop {
                let done = refused_since
                    .lock()
                    .is_some_and(|since| since.elapsed() > Duration::from_secs(3));
                if done || started.elapsed() > MAX_FLOOD {
                    return (counted, refused);
                }
                let batch: Vec<Value> = (0..2_000)
                    .map(|_| {
                        next += 1;
                        let n = sender * 1_000_000_000 + next;
                        json!({
                            "campaign_id": campaigns[(n % 3) as usize],
                            "user_id": format!("flood-{n}"),
                            "ad_id": format!("invented-{}", n % 10_000),
                        })
                    })
                    .collect();
                let response = http.post(&url).json(&batch).send().await.unwrap();
                if response.status() == StatusCode::SERVICE_UNAVAILABLE {
                    // The queue was full for the whole batch (a busy host):
                    // backpressure, nothing of it acknowledged; send on.
                    assert!(response.headers().contains_key("retry-after"));
                    let body: Value = response.json().await.unwrap();
                    assert_eq!(body["code"], 503, "{body}");
                    continue;
                }
                assert_eq!(response.status(), StatusCode::OK);
                let body: Value = response.json().await.unwrap();
                counted += body["counted"].as_u64().unwrap();
                let rejected = body["rejected"].as_array().unwrap();
                for item in rejected {
                    assert_eq!(item["code"], 503, "{item}");
                }
                if !rejected.is_empty() {
                    refused += rejected.len() as u64;
                    refused_since.lock().get_or_insert_with(Instant::now);
                }
            }
        }));
    }
    let (mut counted, mut refused) = (0, 0);
    for sender in senders {
        let (c, r) = sender.await.unwrap();
        counted += c;
        refused += r;
    }

    // At the limit a duplicate is still answered.
    let answer = http
        .post(url("/api/v1/impressions?wait=true"))
        .json(&json!({"campaign_id": first, "user_id": "known", "ad_id": "ad-0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.json::<Value>().await.unwrap()["status"], "duplicate");
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let reads = prober.await.unwrap();

    assert!(
        refused > 0,
        "the flood reached the limit ({counted} counted)"
    );
    // Every acknowledged impression is counted: the three totals, less the
    // one known user, are what the batches said they counted.
    let mut total = 0;
    for id in &campaigns {
        let stats: Value = http
            .get(url(&format!("/api/v1/campaigns/{id}/stats")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        total += stats["total"].as_u64().unwrap();
    }
    assert_eq!(total, counted + 1, "acknowledged = counted");
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "flood: {counted} counted, {refused} refused in {:.1} s, {reads} stats reads; \
         RSS {} MiB at start, peak {} MiB (limit {} MiB)",
        started.elapsed().as_secs_f64(),
        base >> 20,
        peak >> 20,
        LIMIT >> 20
    );
    assert!(
        peak <= base + BASE_ALLOWANCE + LIMIT + LIMIT / 10,
        "peak RSS {peak} past the limit's margin (start {base})"
    );
    let _ = server.terminate();
}
