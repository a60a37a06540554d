//! Redis failing over under load: a cluster master killed, a Sentinel
//! master failed over or killed, replicas required to acknowledge. The
//! service must answer 503 at most while Redis fails over, then 202 again
//! with no restart, and must never acknowledge what the failover lost when
//! `REDIS_MIN_REPLICAS_ACK` asks for replicas.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use crate::helpers::{TestApp, config, spawn_app_on};
use crate::redis_servers::{ReplicatedCluster, SENTINEL_MASTER, SentinelSetup, unique_prefix};

/// What happened to the impressions the clients sent, one user each.
#[derive(Default)]
struct Ledger {
    sent: BTreeSet<u64>,
    /// Answered 202.
    acked: BTreeSet<u64>,
    /// Answered 503.
    refused: BTreeSet<u64>,
    /// When each 202 came, and from which node.
    acks: Vec<(Instant, usize)>,
    /// When each refused request was sent, and answered.
    refusals: Vec<(Instant, Instant)>,
}

/// Clients posting distinct impressions (one new user each) to the nodes
/// in turn, as fast as the nodes answer.
struct Load {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(nodes: &[Arc<TestApp>], campaign: &str, clients: u64) -> Load {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|client| {
                let (nodes, campaign) = (nodes.to_vec(), campaign.to_owned());
                let (ledger, stop) = (Arc::clone(&ledger), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut user = client;
                    while !stop.load(Ordering::Relaxed) {
                        let node = usize::try_from(user).unwrap() % nodes.len();
                        ledger.lock().sent.insert(user);
                        let sent_at = Instant::now();
                        let response = nodes[node]
                            .client
                            .post(nodes[node].url("/api/v1/impressions"))
                            .json(&json!({ "campaign_id": campaign, "user_id": format!("user-{user}"), "ad_id": "ad" }))
                            .timeout(Duration::from_secs(20))
                            .send()
                            .await
                            .expect("the node answers");
                        let now = Instant::now();
                        match response.status() {
                            StatusCode::ACCEPTED => {
                                let mut l = ledger.lock();
                                l.acked.insert(user);
                                l.acks.push((now, node));
                            }
                            StatusCode::SERVICE_UNAVAILABLE => {
                                {
                                    let mut l = ledger.lock();
                                    l.refused.insert(user);
                                    l.refusals.push((sent_at, now));
                                }
                                sleep(Duration::from_millis(20)).await;
                            }
                            other => panic!("unexpected {other} for user {user}"),
                        }
                        user += clients;
                    }
                })
            })
            .collect();
        Load {
            ledger,
            stop,
            clients,
        }
    }

    /// Acknowledgements from node `node` after `since`.
    fn acks_since(&self, since: Instant, node: usize) -> usize {
        self.ledger
            .lock()
            .acks
            .iter()
            .filter(|(at, n)| *at > since && *n == node)
            .count()
    }

    async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.expect("a client task");
        }
        std::mem::take(&mut *self.ledger.lock())
    }
}

/// Polls `check` every 50 ms until it holds, failing with `what` after
/// `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// A service node on `flags` (a Redis backend), with its own store.
async fn node(flags: &[&str]) -> Arc<TestApp> {
    let config = config(flags);
    let store = impression_counter::storage::open(
        &config.storage(),
        Arc::new(impression_core::ManualClock::new(crate::helpers::T0)),
    )
    .await
    .expect("Redis opens");
    Arc::new(spawn_app_on(config, store).await)
}

/// Kills what must fail, under load, and checks recovery: both nodes ready
/// again and acknowledging, then the counts. Returns the load's ledger,
/// the counted total before any resend, and the recovery time.
async fn fail_under_load(
    nodes: &[Arc<TestApp>],
    campaign: &str,
    fail: impl FnOnce(),
    failed_over: impl Fn() -> bool,
) -> (Ledger, u64, Duration) {
    let load = Load::start(nodes, campaign, 8);
    let started = Instant::now();
    until(
        Duration::from_secs(20),
        "acknowledged before the failure",
        || async { (0..nodes.len()).all(|n| load.acks_since(started, n) >= 50) },
    )
    .await;

    let failed = Instant::now();
    fail();
    // Redis fails over (the service may answer some requests meanwhile:
    // those that touch no dead master)...
    until(Duration::from_secs(30), "Redis failed over", || async {
        tokio::task::block_in_place(&failed_over)
    })
    .await;
    let redis_done = Instant::now();
    eprintln!(
        "Redis failed over {:?} after the failure",
        redis_done - failed
    );
    // ...then every node acknowledges again, and is ready.
    until(Duration::from_secs(45), "both nodes recovered", || async {
        let mut all = true;
        for (n, node) in nodes.iter().enumerate() {
            all &= load.acks_since(redis_done, n) >= 50
                && node.get("/readyz").await.status() == StatusCode::OK;
        }
        all
    })
    .await;
    let ledger = load.stop().await;
    for node in nodes {
        let metrics = node.metrics().await;
        let m = |name: &str| crate::helpers::metric(&metrics, name).unwrap_or_default();
        eprintln!(
            "node: {} reconnects, {} failovers seen, {} ack refusals, {} masters up",
            m("redis_reconnects_total"),
            m("redis_failovers_total"),
            m("redis_replica_ack_refusals_total"),
            m("redis_masters_up")
        );
    }
    let after = |at: &Instant| at.saturating_duration_since(failed);
    let refused: Vec<&(Instant, Instant)> = ledger
        .refusals
        .iter()
        .filter(|(_, at)| *at > failed)
        .collect();
    let last_sent = refused.iter().map(|(sent, _)| after(sent)).max();
    let outage = refused
        .iter()
        .map(|(_, at)| after(at))
        .max()
        .unwrap_or_default();
    eprintln!(
        "failover: {} sent, {} acknowledged, {} refused; the last refused request was sent \
         {last_sent:?} and answered {outage:?} after the failure",
        ledger.sent.len(),
        ledger.acked.len(),
        ledger.refused.len(),
    );
    // Journal replays (5 s old entries, every 2 s) may still add refused
    // chunks' impressions: wait until the total settles.
    let mut total = nodes[0].counts(campaign).await.2;
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stable_since.elapsed() < Duration::from_secs(8) {
        assert!(Instant::now() < deadline, "the total did not settle");
        sleep(Duration::from_millis(250)).await;
        let now = nodes[0].counts(campaign).await.2;
        if now != total {
            total = now;
            stable_since = Instant::now();
        }
    }
    (ledger, total, outage)
}

/// Re-sends every acknowledged user: how many were counted again (their
/// dedup entry was lost with the master).
async fn counted_again(nodes: &[Arc<TestApp>], campaign: &str, users: &BTreeSet<u64>) -> usize {
    let mut again = 0;
    for (i, user) in users.iter().enumerate() {
        let status = nodes[i % nodes.len()]
            .track_and_wait(campaign, &format!("user-{user}"), "ad")
            .await;
        if status == "counted" {
            again += 1;
        }
    }
    again
}

async fn cluster_master_killed(replicas: usize, min_replicas_ack: &str) -> (Ledger, u64, usize) {
    let cluster = ReplicatedCluster::start(replicas, 2000);
    let seeds = cluster.seeds().join(",");
    let prefix = unique_prefix();
    let flags = [
        "--storage",
        "redis",
        "--redis-cluster-nodes",
        &seeds,
        "--redis-prefix",
        &prefix,
        "--redis-min-replicas-ack",
        min_replicas_ack,
    ];
    let nodes = [node(&flags).await, node(&flags).await];
    let campaign = nodes[0].create_campaign("failover").await;
    let victim = cluster.index_of_master(0).expect("a master of slot 0");
    let cluster = Mutex::new(cluster);
    let (ledger, total, _) = fail_under_load(
        &nodes,
        &campaign,
        || cluster.lock().kill(victim),
        || {
            let cluster = cluster.lock();
            cluster.index_of_master(0).is_some_and(|m| m != victim) && cluster.is_healthy()
        },
    )
    .await;
    for node in &nodes {
        let metrics = node.metrics().await;
        assert!(
            crate::helpers::metric(&metrics, "redis_failovers_total").is_some_and(|n| n >= 1),
            "a failover is seen:\n{metrics}"
        );
    }
    let again = counted_again(&nodes, &campaign, &ledger.acked).await;
    (ledger, total, again)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_master_killed_under_load_fails_over_without_a_restart() {
    // Two replicas per master: the promoted one still has a replica to
    // acknowledge (with one, every write to it would be refused until the
    // dead node is back).
    let (ledger, total, again) = cluster_master_killed(2, "1").await;
    // With a replica's acknowledgement, nothing acknowledged was lost...
    assert!(
        ledger.acked.len() as u64 <= total && total <= ledger.sent.len() as u64,
        "acked {} <= counted {total} <= sent {}",
        ledger.acked.len(),
        ledger.sent.len()
    );
    // ...and no acknowledged user is counted twice: each is a duplicate.
    assert_eq!(
        again, 0,
        "acknowledged users counted again after the failover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_master_killed_without_replica_acks_recovers_and_measures_the_loss() {
    let (ledger, total, again) = cluster_master_killed(1, "0").await;
    assert!(total <= ledger.sent.len() as u64);
    eprintln!(
        "without replica acks: counted {total} of {} acknowledged; {again} acknowledged users \
         counted again (their dedup entries were lost with the master)",
        ledger.acked.len()
    );
}

async fn sentinel_nodes(setup: &SentinelSetup, min_replicas_ack: &str) -> [Arc<TestApp>; 2] {
    // A sentinel that is down comes first: the next one answers.
    let sentinels = std::iter::once("127.0.0.1:1".to_owned())
        .chain(setup.sentinels())
        .collect::<Vec<_>>()
        .join(",");
    let prefix = unique_prefix();
    let flags = [
        "--storage",
        "redis",
        "--redis-sentinels",
        &sentinels,
        "--redis-sentinel-master",
        SENTINEL_MASTER,
        "--redis-prefix",
        &prefix,
        "--redis-min-replicas-ack",
        min_replicas_ack,
    ];
    [node(&flags).await, node(&flags).await]
}

async fn assert_followed(nodes: &[Arc<TestApp>]) {
    for node in nodes {
        let metrics = node.metrics().await;
        assert!(
            crate::helpers::metric(&metrics, "redis_failovers_total").is_some_and(|n| n >= 1),
            "the new master is followed:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_under_load_is_followed_and_loses_nothing_acknowledged() {
    let setup = SentinelSetup::start(1);
    let nodes = sentinel_nodes(&setup, "1").await;
    let campaign = nodes[0].create_campaign("sentinel").await;
    let old = setup.master_port().expect("a master");
    let (ledger, total, _) = fail_under_load(
        &nodes,
        &campaign,
        || setup.failover(),
        || setup.master_port().is_some_and(|p| p != old),
    )
    .await;
    assert_ne!(setup.master_port(), Some(old));
    assert_followed(&nodes).await;
    assert!(
        ledger.acked.len() as u64 <= total && total <= ledger.sent.len() as u64,
        "acked {} <= counted {total} <= sent {}",
        ledger.acked.len(),
        ledger.sent.len()
    );
    assert_eq!(counted_again(&nodes, &campaign, &ledger.acked).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_master_killed_under_load_is_replaced_without_a_restart() {
    let setup = SentinelSetup::start(1);
    let nodes = sentinel_nodes(&setup, "0").await;
    let campaign = nodes[0].create_campaign("sentinel-kill").await;
    let old = setup.master_port().expect("a master");
    let victim = setup.index_of(old).expect("the master is ours");
    let setup = Mutex::new(setup);
    let (ledger, total, _) = fail_under_load(
        &nodes,
        &campaign,
        || setup.lock().kill(victim),
        || setup.lock().master_port().is_some_and(|p| p != old),
    )
    .await;
    assert_followed(&nodes).await;
    assert!(total <= ledger.sent.len() as u64);
    let again = counted_again(&nodes, &campaign, &ledger.acked).await;
    eprintln!(
        "sentinel, master killed, no replica acks: counted {total} of {} acknowledged; \
         {again} acknowledged users counted again",
        ledger.acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_wait_for_replicas_and_are_refused_without_them() {
    let mut setup = SentinelSetup::start(0);
    let url = setup.url(0);
    let prefix = unique_prefix();
    let app = node(&[
        "--storage",
        "redis",
        "--redis-url",
        &url,
        "--redis-prefix",
        &prefix,
        "--redis-min-replicas-ack",
        "1",
        "--redis-replica-ack-timeout",
        "300ms",
    ])
    .await;
    let campaign = app.create_campaign("acks").await;
    assert_eq!(app.track_and_wait(&campaign, "u1", "ad").await, "counted");
    assert_eq!(
        app.track(&campaign, "u2", "ad").await.status(),
        StatusCode::ACCEPTED
    );

    // Without its replica the master still takes writes, but no chunk is
    // acknowledged: a failover could lose it.
    setup.kill(1);
    for user in ["u3", "u4"] {
        let response = app.track(&campaign, user, "ad").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = response.json().await.unwrap();
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("replicas"), "{message}");
    }
    let metrics = app.metrics().await;
    assert!(
        crate::helpers::metric(&metrics, "redis_replica_ack_refusals_total")
            .is_some_and(|n| n >= 2),
        "{metrics}"
    );
}
