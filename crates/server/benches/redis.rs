//! Throughput of the Redis backend through the `Store` seam, without HTTP.
//!
//! ```sh
//! cargo bench -p impression-counter --bench redis                  # 1,000,000 impressions
//! cargo bench -p impression-counter --bench redis -- 200000        # another count
//! cargo bench -p impression-counter --bench redis -- --cluster     # a local 3-master cluster
//! cargo bench -p impression-counter --bench redis -- --url redis://127.0.0.1:7000
//! ```
//!
//! Unless `--url` is given, starts its own `redis-server` (or three, as a
//! cluster) on free loopback ports with persistence off, and stops it at the
//! end. Applies N distinct impressions (10 campaigns x 10 ads, new users) in
//! chunks of 1,024, as the ingest workers do, with 1, 2 and 4 chunks in
//! flight; then the same N again (all duplicates). Prints impressions/s.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use impression_core::{AdId, Campaign, CampaignId, CampaignName, Impression, Timestamp, UserId};
use impression_counter::config::Config;
use impression_counter::storage::redis::RedisStore;
use impression_counter::storage::{Backend, Store};

const CHUNK: usize = 1024;

struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--dir", dir.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (apt-get install redis-server)");
    for _ in 0..200 {
        let ok = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok();
        if ok {
            return child;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server did not start");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let cluster = args.iter().any(|a| a == "--cluster");
    let url = args
        .iter()
        .position(|a| a == "--url")
        .and_then(|i| args.get(i + 1).cloned());
    let dir = tempfile::tempdir().unwrap();

    let (flags, _servers) = match (url, cluster) {
        (Some(url), _) => (vec!["--redis-url".to_owned(), url], Servers(vec![])),
        (None, false) => {
            let port = free_port();
            let server = start(port, dir.path(), &[]);
            (
                vec![
                    "--redis-url".to_owned(),
                    format!("redis://127.0.0.1:{port}"),
                ],
                Servers(vec![server]),
            )
        }
        (None, true) => {
            let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
            let servers: Vec<Child> = ports
                .iter()
                .enumerate()
                .map(|(i, port)| {
                    let node_dir = dir.path().join(i.to_string());
                    std::fs::create_dir_all(&node_dir).unwrap();
                    let conf = node_dir.join("nodes.conf");
                    let bus = free_port().to_string();
                    start(
                        *port,
                        &node_dir,
                        &[
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            conf.to_str().unwrap(),
                            "--cluster-port",
                            &bus,
                        ],
                    )
                })
                .collect();
            let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let status = Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addresses)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            std::thread::sleep(Duration::from_secs(2));
            let nodes: Vec<String> = addresses.iter().map(|a| format!("redis://{a}")).collect();
            (
                vec!["--redis-cluster-nodes".to_owned(), nodes.join(",")],
                Servers(servers),
            )
        }
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        println!(
            "{} impressions in chunks of {CHUNK}, {}",
            n,
            if cluster {
                "3-master cluster"
            } else {
                "one node"
            }
        );
        for in_flight in [1usize, 2, 4] {
            let prefix = format!("bench{in_flight}:");
            let mut all = vec!["impression-counter", "--storage", "redis", "--redis-prefix"];
            all.push(&prefix);
            all.extend(flags.iter().map(String::as_str));
            let config = Config::try_parse_from(all).unwrap();
            let settings = config.storage();
            let Backend::Redis(options) = &settings.backend else {
                unreachable!("--storage redis")
            };
            let store = Arc::new(RedisStore::open(options, &settings.engine).await.unwrap());
            let now = Timestamp::from_secs(1_735_689_600);
            let campaigns: Vec<CampaignId> = (0..10)
                .map(|_| CampaignId::from_uuid(uuid::Uuid::now_v7()))
                .collect();
            for &id in &campaigns {
                store
                    .create_campaign(Campaign {
                        id,
                        name: CampaignName::parse("bench").unwrap(),
                        start_time: now,
                    })
                    .await
                    .unwrap();
            }
            let chunks: Arc<Vec<Vec<Impression>>> = Arc::new(
                (0..n)
                    .map(|i| Impression {
                        campaign_id: campaigns[i % 10],
                        ad_id: AdId::parse(format!("ad{}", (i / 10) % 10)).unwrap(),
                        user_id: UserId::parse(format!("user-{i}")).unwrap(),
                        timestamp: now,
                    })
                    .collect::<Vec<_>>()
                    .chunks(CHUNK)
                    .map(<[Impression]>::to_vec)
                    .collect(),
            );
            for pass in ["new keys", "duplicates"] {
                let started = Instant::now();
                let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let workers: Vec<_> = (0..in_flight)
                    .map(|_| {
                        let (store, chunks, next) = (store.clone(), chunks.clone(), next.clone());
                        tokio::spawn(async move {
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(chunk) = chunks.get(i) else { break };
                                store.apply(chunk, now).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for w in workers {
                    w.await.unwrap();
                }
                let took = started.elapsed();
                println!(
                    "  {in_flight} in flight, {pass:10}: {:>9.0} impressions/s ({:.2} s)",
                    n as f64 / took.as_secs_f64(),
                    took.as_secs_f64()
                );
            }
            let total: u64 = {
                let mut t = 0;
                for &id in &campaigns {
                    t += store.stats(id, now).await.unwrap().unwrap().total;
                }
                t
            };
            assert_eq!(total, n as u64, "every impression counted once");
        }
    });
}
