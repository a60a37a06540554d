//! The durable backend: restarts and crashes of the real binary, and damage
//! to the files themselves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use impression_core::{
    AdId, Campaign, CampaignId, CampaignName, Clock, EngineConfig, Impression, ManualClock,
    Timestamp, TrackOutcome, UserId,
};
use impression_counter::storage::Store;
use impression_counter::storage::disk::FsyncPolicy;
use impression_counter::storage::disk::{DiskOptions, DiskStore};
use serde_json::{Value, json};

use crate::helpers::T0;
use crate::process::ServerProcess;

fn disk_env(dir: &Path, fsync: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("STORAGE", "disk".to_owned()),
        ("DATA_DIR", dir.display().to_string()),
        ("FSYNC", fsync.to_owned()),
    ]
}

fn start(env: &[(&'static str, String)]) -> ServerProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServerProcess::start(&env)
}

/// Sends a batch with `wait=true`; returns (counted, duplicates).
async fn batch_wait(http: &reqwest::Client, server: &ServerProcess, items: &[Value]) -> (u64, u64) {
    let response = http
        .post(server.url("/api/v1/impressions/batch?wait=true"))
        .json(items)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["rejected"], json!([]), "{body}");
    (
        body["counted"].as_u64().unwrap(),
        body["duplicates"].as_u64().unwrap(),
    )
}

async fn get_json(http: &reqwest::Client, server: &ServerProcess, path: &str) -> Value {
    http.get(server.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn item(c: &str, user: &str, ad: &str) -> Value {
    json!({ "campaign_id": c, "user_id": user, "ad_id": ad })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_campaigns_stats_and_dedup_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let env = disk_env(dir.path(), "everysec");
    let http = reqwest::Client::new();

    let server = start(&env);
    let a = server.create_campaign(&http, "a").await;
    let b = server.create_campaign(&http, "b").await;
    let first: Vec<Value> = (0..500)
        .map(|i| {
            item(
                if i % 2 == 0 { &a } else { &b },
                &format!("u{}", i % 300),
                &format!("ad-{}", i % 3),
            )
        })
        .collect();
    let (counted, duplicates) = batch_wait(&http, &server, &first).await;
    assert_eq!(counted + duplicates, 500);
    let mut before = Vec::new();
    for path in [
        format!("/api/v1/campaigns/{a}/stats"),
        format!("/api/v1/campaigns/{b}/stats?by=ad"),
        format!("/api/v1/campaigns/{a}"),
        "/api/v1/campaigns".to_owned(),
    ] {
        before.push(get_json(&http, &server, &path).await);
    }
    let (status, log) = server.terminate();
    assert!(status.success(), "{log:?}");

    let server = start(&env);
    for (path, expected) in [
        format!("/api/v1/campaigns/{a}/stats"),
        format!("/api/v1/campaigns/{b}/stats?by=ad"),
        format!("/api/v1/campaigns/{a}"),
        "/api/v1/campaigns".to_owned(),
    ]
    .iter()
    .zip(&before)
    {
        assert_eq!(&get_json(&http, &server, path).await, expected, "{path}");
    }
    // Everything counted before the restart is still a duplicate after it.
    assert_eq!(batch_wait(&http, &server, &first).await, (0, 500));
    // New keys still count.
    assert_eq!(
        batch_wait(&http, &server, &[item(&a, "new", "ad-0")]).await,
        (1, 0)
    );
    let (status, _) = server.terminate();
    assert!(status.success());
}

/// A small deterministic generator (xorshift), so a failing round can be
/// replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged_and_counts_nothing_twice() {
    for fsync in ["no", "everysec", "always"] {
        crash_rounds(fsync, 3).await;
    }
}

async fn crash_rounds(fsync: &'static str, rounds: u64) {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: crashes also land during rotations and compactions.
    let mut env = disk_env(dir.path(), fsync);
    env.push(("LOG_SEGMENT_BYTES", "65536".to_owned()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = Rng(0x5eed_0000 + rounds + u64::from(fsync.as_bytes()[0]));
    let mut server = start(&env);
    let campaign = server.create_campaign(&http, "crash").await;
    let mut acked: Vec<String> = Vec::new();
    let mut unanswered = 0u64;

    for round in 0..rounds {
        // Eight clients send distinct impressions (single and batched) until
        // the server dies under them.
        let clients: Vec<_> = (0..8)
            .map(|client| {
                let (http, url, campaign) = (http.clone(), server.url(""), campaign.clone());
                tokio::spawn(async move {
                    let (mut acked, mut unanswered) = (Vec::new(), 0u64);
                    for i in 0.. {
                        let users: Vec<String> = if client % 2 == 0 {
                            vec![format!("r{round}-c{client}-{i}")]
                        } else {
                            (0..20)
                                .map(|j| format!("r{round}-c{client}-{i}-{j}"))
                                .collect()
                        };
                        let result = if users.len() == 1 {
                            http.post(format!("{url}/api/v1/impressions"))
                                .json(&item(&campaign, &users[0], "ad"))
                                .send()
                                .await
                        } else {
                            let items: Vec<Value> =
                                users.iter().map(|u| item(&campaign, u, "ad")).collect();
                            http.post(format!("{url}/api/v1/impressions/batch"))
                                .json(&items)
                                .send()
                                .await
                        };
                        match result {
                            Ok(r) if r.status() == 202 => acked.extend(users),
                            Ok(r) => panic!("unexpected status {}", r.status()),
                            Err(_) => {
                                // The server died: this request's fate is
                                // unknown; stop.
                                unanswered += users.len() as u64;
                                return (acked, unanswered);
                            }
                        }
                    }
                    (acked, unanswered)
                })
            })
            .collect();
        let delay = 50 + rng.next() % 400;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill9();
        for c in clients {
            let (a, u) = c.await.unwrap();
            acked.extend(a);
            unanswered += u;
        }

        server = start(&env);
        let stats = get_json(
            &http,
            &server,
            &format!("/api/v1/campaigns/{campaign}/stats"),
        )
        .await;
        let total = stats["total"].as_u64().unwrap();
        let acked_total = acked.len() as u64;
        assert!(
            total >= acked_total && total <= acked_total + unanswered,
            "fsync={fsync} round {round}: total {total}, acknowledged {acked_total}, unanswered {unanswered}"
        );
        // Every acknowledged impression is counted: sent again, each one is a
        // duplicate.
        for chunk in acked.chunks(5_000) {
            let items: Vec<Value> = chunk.iter().map(|u| item(&campaign, u, "ad")).collect();
            let (counted, duplicates) = batch_wait(&http, &server, &items).await;
            assert_eq!(
                (counted, duplicates),
                (0, chunk.len() as u64),
                "fsync={fsync} round {round}"
            );
        }
        assert!(acked_total > 0, "the load produced acknowledgements");
        eprintln!(
            "fsync={fsync} round {round}: killed after {delay} ms; {acked_total} acknowledged, {unanswered} unanswered, total {total}"
        );
    }
    let (status, _) = server.terminate();
    assert!(status.success());
}

fn options() -> DiskOptions {
    DiskOptions {
        fsync: FsyncPolicy::Always,
        segment_bytes: 64 * 1024 * 1024,
    }
}

fn open(dir: &Path) -> Result<DiskStore, String> {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    DiskStore::open(dir, options(), EngineConfig::default(), clock.now()).map_err(|e| e.to_string())
}

fn impressions(c: CampaignId, from: u64, n: u64) -> Vec<Impression> {
    (from..from + n)
        .map(|u| Impression {
            campaign_id: c,
            ad_id: AdId::parse("ad").unwrap(),
            user_id: UserId::parse(format!("user-{u}")).unwrap(),
            timestamp: T0,
        })
        .collect()
}

/// A store with one campaign and three batches (10, 10, 5 counted).
async fn three_batches(dir: &Path) -> CampaignId {
    let store = open(dir).unwrap();
    let id = CampaignId::from_uuid(uuid::Uuid::from_u128(42));
    store
        .create_campaign(Campaign {
            id,
            name: CampaignName::parse("c").unwrap(),
            start_time: Timestamp::EPOCH,
        })
        .await
        .unwrap();
    for (from, n) in [(0, 10), (10, 10), (20, 5)] {
        let out = store.apply(&impressions(id, from, n), T0).await.unwrap();
        assert!(out.iter().all(|o| *o == TrackOutcome::Counted));
    }
    store.close().await.unwrap();
    id
}

fn only_segment(dir: &Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "log") && std::fs::metadata(p).unwrap().len() > 8
        })
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    logs.pop().unwrap()
}

#[tokio::test]
async fn a_torn_last_record_is_truncated_at_every_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let id = three_batches(dir.path()).await;
    let segment = only_segment(dir.path());
    let full = std::fs::read(&segment).unwrap();
    // The last frame holds the batch of 5: find where it starts by
    // truncating until the total drops.
    let mut last_start = None;
    for cut in (8..full.len()).rev() {
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join(segment.file_name().unwrap()), &full[..cut]).unwrap();
        let store = open(work.path()).unwrap();
        let total = store.memory().engine().stats(id, T0).unwrap().total;
        if total == 20 {
            last_start.get_or_insert(cut);
        } else {
            // Before the last frame starts, whole frames are kept (or the
            // cut is inside an earlier frame): never a partial batch.
            assert!(total == 10 || total == 0, "cut {cut}: total {total}");
            break;
        }
        // The torn bytes were cut away for good.
        let kept = std::fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .max()
            .unwrap();
        assert!(kept <= cut as u64);
        store.close().await.unwrap();
    }
    let last_start = last_start.expect("some cut lost the last frame");
    assert!(
        full.len() - last_start < 500,
        "the last frame is one small batch"
    );
    // The untouched file keeps everything.
    assert_eq!(
        open(dir.path())
            .unwrap()
            .memory()
            .engine()
            .stats(id, T0)
            .unwrap()
            .total,
        25
    );
}

#[tokio::test]
async fn a_flipped_byte_in_the_middle_stops_the_start_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    three_batches(dir.path()).await;
    let segment = only_segment(dir.path());
    let mut data = std::fs::read(&segment).unwrap();
    let middle = data.len() / 3;
    data[middle] ^= 0x01;
    std::fs::write(&segment, &data).unwrap();
    let err = open(dir.path()).err().expect("the start is refused");
    assert!(err.contains(&segment.display().to_string()), "{err}");
    assert!(err.contains("corrupt data at byte offset"), "{err}");
    // Nothing was changed: the file is as we left it.
    assert_eq!(std::fs::read(&segment).unwrap(), data);

    // The binary says the same and exits non-zero.
    let dir_text = dir.path().display().to_string();
    let (status, output) =
        ServerProcess::fail_to_start(&[("STORAGE", "disk"), ("DATA_DIR", &dir_text)]);
    assert!(!status.success());
    assert!(output.contains("corrupt data at byte offset"), "{output}");
}

#[tokio::test]
async fn a_second_process_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).unwrap();
    let err = open(dir.path()).err().expect("the second open is refused");
    assert!(
        err.contains("in use by another impression-counter process"),
        "{err}"
    );
    let dir_text = dir.path().display().to_string();
    let (status, output) =
        ServerProcess::fail_to_start(&[("STORAGE", "disk"), ("DATA_DIR", &dir_text)]);
    assert!(!status.success());
    assert!(
        output.contains("in use by another impression-counter process"),
        "{output}"
    );
    first.close().await.unwrap();
    drop(first);
    assert!(
        open(dir.path()).is_ok(),
        "the lock goes with the process holding it"
    );
}

#[tokio::test]
async fn compaction_keeps_disk_proportional_to_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = EngineConfig {
        ttl: Duration::from_secs(60),
        max_lateness: Duration::ZERO,
        ..EngineConfig::default()
    };
    let options = DiskOptions {
        fsync: FsyncPolicy::No,
        segment_bytes: 64 * 1024,
    };
    let store = DiskStore::open(dir.path(), options, config.clone(), clock.now()).unwrap();
    let id = CampaignId::from_uuid(uuid::Uuid::from_u128(1));
    store
        .create_campaign(Campaign {
            id,
            name: CampaignName::parse("c").unwrap(),
            start_time: Timestamp::EPOCH,
        })
        .await
        .unwrap();
    // 200 minutes of 1,000 new keys a minute: 200,000 counted, but only the
    // last minute's keys are live with a 60 s TTL.
    for minute in 0..200u64 {
        let now = T0.saturating_add(Duration::from_secs(minute * 60));
        clock.set(now);
        let batch: Vec<Impression> = impressions(id, minute * 1000, 1000)
            .into_iter()
            .map(|i| Impression {
                timestamp: now,
                ..i
            })
            .collect();
        store.apply(&batch, now).await.unwrap();
        store.maintain(now).await;
    }
    // The log written is ~12 MB; what stays is a snapshot of the live state
    // (~1,000 live keys, and bounded counters: the campaign's and the ad's
    // minutes of the day, with a user sketch each, ~0.9 MB), and at most
    // as much again of segments since. Compaction runs in the background:
    // on a busy machine it catches up a little later, at the next upkeep.
    let on_disk = || -> u64 {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
            .map(|m| m.len())
            .sum()
    };
    crate::helpers::eventually(Duration::from_secs(60), || async {
        store.maintain(clock.now()).await;
        on_disk() < 2_000_000
    })
    .await;
    store.close().await.unwrap();
    drop(store);
    let total_bytes = on_disk();
    assert!(total_bytes < 2_000_000, "{total_bytes} bytes on disk");
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().starts_with("snapshot-")),
        "{files:?}"
    );

    // And the compacted state is exactly the state.
    let reopened = DiskStore::open(dir.path(), options, config, clock.now()).unwrap();
    let now = clock.now();
    assert_eq!(
        reopened.memory().engine().stats(id, now).unwrap().total,
        200_000
    );
    assert_eq!(
        reopened.memory().engine().stats(id, now).unwrap().last_hour,
        60_000
    );
    let again = impressions(id, 199_000, 1000)
        .into_iter()
        .map(|i| Impression {
            timestamp: now,
            ..i
        })
        .collect::<Vec<_>>();
    let out = reopened.apply(&again, now).await.unwrap();
    assert!(
        out.iter().all(|o| *o == TrackOutcome::Duplicate),
        "the live keys survived compaction"
    );
    reopened.close().await.unwrap();
}

/// Snapshots are taken from the live store while writers keep going: four
/// tasks write batches over three campaigns (two ads each with their own
/// counters, so which ads were first matters) while the upkeep compacts
/// tiny segments again and again. Reopened, the store answers exactly what
/// it answered before closing: no impression folded twice or lost between
/// a campaign's capture and the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_taken_under_concurrent_writes_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = EngineConfig {
        max_ads_per_campaign: 2,
        ..EngineConfig::default()
    };
    let options = DiskOptions {
        fsync: FsyncPolicy::No,
        segment_bytes: 16 * 1024,
    };
    let store =
        Arc::new(DiskStore::open(dir.path(), options, config.clone(), clock.now()).unwrap());
    let ids: Vec<CampaignId> = (0..3u128)
        .map(|n| CampaignId::from_uuid(uuid::Uuid::from_u128(0xC0_0000 + n)))
        .collect();
    for &id in &ids {
        store
            .create_campaign(Campaign {
                id,
                name: CampaignName::parse("c").unwrap(),
                start_time: Timestamp::EPOCH,
            })
            .await
            .unwrap();
    }
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let store = Arc::clone(&store);
            let ids = ids.clone();
            tokio::spawn(async move {
                for round in 0..400u64 {
                    let batch: Vec<Impression> = (0..40u64)
                        .map(|i| {
                            let n = (w * 400 + round) * 40 + i;
                            Impression {
                                campaign_id: ids[(n % 3) as usize],
                                ad_id: AdId::parse(format!("ad-{}", n % 5)).unwrap(),
                                // Some users again and again: duplicates and
                                // the same people over ads.
                                user_id: UserId::parse(format!("u{}", n % 9_000)).unwrap(),
                                timestamp: T0,
                            }
                        })
                        .collect();
                    store.apply(&batch, T0).await.unwrap();
                }
            })
        })
        .collect();
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let upkeep = {
        let store = Arc::clone(&store);
        let writing = Arc::clone(&writing);
        tokio::spawn(async move {
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                store.maintain(T0).await;
                tokio::task::yield_now().await;
            }
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    upkeep.await.unwrap();
    let answers = |store: &DiskStore| {
        let engine = store.memory().engine();
        ids.iter()
            .map(|&id| format!("{:?}", engine.ad_stats(id, T0).unwrap()))
            .collect::<Vec<_>>()
    };
    let before = answers(&store);
    let live_keys = store.memory().engine().live_dedup_keys();
    store.close().await.unwrap();
    let snapshots = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("snapshot-")
        })
        .count();
    assert!(snapshots >= 1, "the upkeep compacted");
    drop(store);
    let reopened = DiskStore::open(dir.path(), options, config, clock.now()).unwrap();
    assert_eq!(answers(&reopened), before);
    assert_eq!(reopened.memory().engine().live_dedup_keys(), live_keys);
}
