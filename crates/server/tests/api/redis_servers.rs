//! `redis-server` processes for the tests, on free loopback ports (never the
//! machine's own Redis).
//!
//! * [`single_url`]: one node, shared by every test of this binary;
//! * [`cluster_nodes`]: a 3-master cluster (`redis-cli --cluster create`),
//!   shared likewise;
//! * [`Dedicated`]: a node of its own, with an append-only file, that a test
//!   may kill and restart.
//!
//! Tests sharing a server are isolated by key prefix ([`unique_prefix`]).
//! Shared servers live in statics, which are never dropped, so each
//! `redis-server` runs under a small `sh` watchdog that kills it (and removes
//! its directory) as soon as the test process is gone, however it ended.
//!
//! `redis-server` must be on `PATH`: in CI (`CI` set) its absence fails the
//! tests like any missing tool; elsewhere they fail saying how to install it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A prefix no other test uses, so tests can share a server.
pub fn unique_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}-{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The URL of the shared single node, started on first use.
pub fn single_url() -> String {
    static SINGLE: OnceLock<Server> = OnceLock::new();
    let server = SINGLE.get_or_init(|| Server::start(&scratch_dir("single"), &[], true));
    server.url()
}

/// The seed URLs of the shared 3-master cluster, started on first use.
pub fn cluster_nodes() -> Vec<String> {
    static CLUSTER: OnceLock<Vec<Server>> = OnceLock::new();
    CLUSTER
        .get_or_init(start_cluster)
        .iter()
        .map(Server::url)
        .collect()
}

/// A running `redis-server` under its watchdog.
struct Server {
    port: u16,
    /// The watchdog; `redis-server` is its child.
    watchdog: Child,
    /// `redis-server`'s own pid, as the watchdog reported it.
    pid: u32,
}

impl Server {
    /// Starts `redis-server` on a free port with `extra` settings, its files
    /// in `dir`; `remove_dir` tells the watchdog to delete `dir` at the end.
    fn start(dir: &Path, extra: &[String], remove_dir: bool) -> Server {
        Self::start_on(free_port(), dir, extra, remove_dir)
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"))
    }

    fn start_on(
        port: u16,
        dir: &Path,
        extra: &[String],
        remove_dir: bool,
    ) -> Result<Server, String> {
        Self::start_with(port, dir, None, extra, remove_dir)
    }

    /// As [`Server::start_on`], with a configuration file first (Sentinel
    /// needs one it can rewrite).
    fn start_with(
        port: u16,
        dir: &Path,
        config_file: Option<&Path>,
        extra: &[String],
        remove_dir: bool,
    ) -> Result<Server, String> {
        require_redis_server();
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // The watchdog starts redis-server, prints its pid, then waits until
        // either the test process or redis-server is gone, and cleans up.
        let script = r#"
            parent=$1; dir=$2; remove=$3; shift 3
            redis-server "$@" >/dev/null 2>&1 &
            r=$!
            echo "$r"
            while kill -0 "$parent" 2>/dev/null && kill -0 "$r" 2>/dev/null; do sleep 0.2; done
            kill -9 "$r" 2>/dev/null
            wait "$r" 2>/dev/null
            if [ "$remove" = yes ]; then rm -rf "$dir"; fi
        "#;
        let mut args: Vec<String> = config_file
            .map(|f| f.display().to_string())
            .into_iter()
            .collect();
        args.extend([
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--dir".into(),
            dir.display().to_string(),
            "--logfile".into(),
            dir.join("redis.log").display().to_string(),
        ]);
        args.extend_from_slice(extra);
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("watchdog")
            .arg(std::process::id().to_string())
            .arg(dir)
            .arg(if remove_dir { "yes" } else { "no" })
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        let mut line = String::new();
        if let Some(out) = watchdog.stdout.take() {
            use std::io::BufRead;
            std::io::BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
        }
        let pid: u32 = line
            .trim()
            .parse()
            .map_err(|_| format!("the watchdog printed {line:?}"))?;
        let server = Server {
            port,
            watchdog,
            pid,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.answers() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
                server.kill();
                return Err(format!("redis-server on port {port} did not start:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers PING.
    fn answers(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        client
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// SIGKILL: no shutdown, no final write, like a crash.
    fn kill(&self) {
        let _ = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = self.watchdog.wait();
    }
}

/// A cluster-enabled `redis-server` in `dir`, persistence off, with an
/// explicit bus port (port + 10000 may not be free) and, if given, a
/// `cluster-node-timeout`.
fn cluster_node(dir: &std::path::Path, node_timeout_ms: Option<u64>) -> Server {
    let mut extra: Vec<String> = vec![
        "--cluster-enabled".into(),
        "yes".into(),
        "--cluster-config-file".into(),
        dir.join("nodes.conf").display().to_string(),
        "--cluster-port".into(),
        free_port().to_string(),
        "--appendonly".into(),
        "no".into(),
    ];
    if let Some(ms) = node_timeout_ms {
        extra.extend(["--cluster-node-timeout".into(), ms.to_string()]);
    }
    Server::start(dir, &extra, true)
}

/// `redis-cli --cluster create` over `servers` (the first 3 are masters),
/// each master with `replicas` replicas.
fn create_cluster(servers: &[Server], replicas: usize) {
    let addresses: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let output = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addresses)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .expect("redis-cli runs (it comes with redis-server)");
    assert!(
        output.status.success(),
        "redis-cli --cluster create failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn start_cluster() -> Vec<Server> {
    let servers: Vec<Server> = (0..3)
        .map(|i| cluster_node(&scratch_dir(&format!("cluster{i}")), None))
        .collect();
    create_cluster(&servers, 0);
    // Every node must see the whole cluster as ok before clients use it.
    let deadline = Instant::now() + Duration::from_secs(20);
    for server in &servers {
        loop {
            let ok = redis::Client::open(server.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                .is_ok_and(|info| info.contains("cluster_state:ok"));
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    servers
}

/// A Redis node of one test's own, persisted to an append-only file fsynced
/// before every reply, so a SIGKILL loses nothing Redis acknowledged and a
/// restart on the same port and directory carries on.
pub struct Dedicated {
    // Declared first, so it is killed before its directory is removed.
    server: Option<Server>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Dedicated {
    pub fn start() -> Dedicated {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let server = Server::start(dir.path(), &Self::settings(), false);
        Dedicated {
            port: server.port,
            server: Some(server),
            dir,
        }
    }

    fn settings() -> Vec<String> {
        ["--appendonly", "yes", "--appendfsync", "always"]
            .map(String::from)
            .to_vec()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            drop(server);
        }
    }

    /// Starts it again on the same port and files (retrying while the port
    /// is still being released).
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Server::start_on(self.port, self.dir.path(), &Self::settings(), false) {
                Ok(server) => {
                    self.server = Some(server);
                    return;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot restart Redis: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// A fresh directory for a shared server's files.
fn scratch_dir(kind: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ic-test-redis-{}-{kind}", std::process::id()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Fails, with what to do, when `redis-server` is missing.
fn require_redis_server() {
    static FOUND: OnceLock<bool> = OnceLock::new();
    let found = *FOUND.get_or_init(|| {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found {
        return;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "redis-server is not on PATH, and CI must run the Redis tests: \
         .ci/run installs it (apt-get install redis-server)"
    );
    panic!(
        "the Redis backend tests need redis-server (Redis 7+) on PATH: \
         install it with `sudo apt-get install redis-server` (Debian/Ubuntu) \
         or `brew install redis` (macOS), then run the tests again"
    );
}

/// A directory of its own for one server of a test's deployment.
fn own_dir(kind: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    scratch_dir(&format!("{kind}-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// A synchronous connection to `url` for test set-up, bounded in time.
fn admin(url: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(url)?;
    let conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(conn)
}

/// Polls `check` every 50 ms until it holds, failing with `what` after
/// `within`.
fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what} (waited {within:?})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis Cluster of one test's own: 3 masters, each with its replicas,
/// and a short `cluster-node-timeout`, so a killed master's replica takes
/// over within seconds. Its servers may be killed one by one.
pub struct ReplicatedCluster {
    servers: Vec<Option<Server>>,
}

impl ReplicatedCluster {
    /// Starts `3 * (1 + replicas)` nodes, makes them a cluster (the first
    /// 3 are its masters) and waits until every replica is in sync.
    pub fn start(replicas: usize, node_timeout_ms: u64) -> ReplicatedCluster {
        let servers: Vec<Server> = (0..3 * (1 + replicas))
            .map(|_| cluster_node(&own_dir("replicated"), Some(node_timeout_ms)))
            .collect();
        create_cluster(&servers, replicas);
        let cluster = ReplicatedCluster {
            servers: servers.into_iter().map(Some).collect(),
        };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// The URLs of the nodes started as masters: what an operator would
    /// give as seeds.
    pub fn seeds(&self) -> Vec<String> {
        self.servers
            .iter()
            .take(3)
            .flatten()
            .map(Server::url)
            .collect()
    }

    fn live(&self) -> impl Iterator<Item = &Server> {
        self.servers.iter().flatten()
    }

    /// Waits until every live node says `cluster_state:ok`, every slot has
    /// a live master, and every live replica's link to its master is up.
    pub fn wait_healthy(&self, within: Duration) {
        wait_until(within, "the cluster did not become healthy", || {
            self.is_healthy()
        });
    }

    /// Whether every live node says `cluster_state:ok`, every slot has a
    /// live master, and every live replica's link to its master is up.
    pub fn is_healthy(&self) -> bool {
        {
            self.live().all(|s| {
                let Ok(mut c) = admin(&s.url()) else {
                    return false;
                };
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut c)
                    .unwrap_or_default();
                let replication: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut c)
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            }) && (0..3).all(|i| {
                self.index_of_master(i * 5461)
                    .is_some_and(|m| self.servers[m].is_some())
            })
        }
    }

    /// The index of the live node that is master of `slot`, as a live
    /// node's `CLUSTER SLOTS` says.
    pub fn index_of_master(&self, slot: u16) -> Option<usize> {
        for s in self.live() {
            let Ok(mut c) = admin(&s.url()) else { continue };
            let Ok(ranges) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<Vec<Vec<redis::Value>>>(&mut c)
            else {
                continue;
            };
            let int = |v: Option<&redis::Value>| match v {
                Some(redis::Value::Int(n)) => u16::try_from(*n).ok(),
                _ => None,
            };
            let port = ranges.iter().find_map(|range| {
                let (lo, hi) = (int(range.first())?, int(range.get(1))?);
                let redis::Value::Array(master) = range.get(2)? else {
                    return None;
                };
                (lo..=hi)
                    .contains(&slot)
                    .then(|| int(master.get(1)))
                    .flatten()
            })?;
            return self
                .servers
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.port == port));
        }
        None
    }

    /// SIGKILL of node `index`.
    pub fn kill(&mut self, index: usize) {
        if let Some(server) = self.servers[index].take() {
            drop(server);
        }
    }

    /// Runs `cmd` on node `index`.
    pub fn query<T: redis::FromRedisValue>(&self, index: usize, cmd: &redis::Cmd) -> T {
        let server = self.servers[index].as_ref().expect("a live node");
        let mut c = admin(&server.url()).expect("the node answers");
        cmd.query(&mut c).expect("the command succeeds")
    }

    /// Moves `slot` from its master to node `to` as `redis-cli --cluster
    /// reshard` does: `IMPORTING` on the target, `MIGRATING` on the
    /// source, `MIGRATE` of its keys `batch` at a time (`pause` between
    /// batches, so traffic meets the half-moved slot), then `SETSLOT NODE`
    /// everywhere.
    pub fn move_slot(&self, slot: u16, to: usize, batch: usize, pause: Duration) {
        let from = self.index_of_master(slot).expect("the slot has a master");
        if from == to {
            return;
        }
        let id = |i: usize| -> String { self.query(i, redis::cmd("CLUSTER").arg("MYID")) };
        let (from_id, to_id) = (id(from), id(to));
        let target_port = self.servers[to].as_ref().expect("a live node").port;
        let _: () = self.query(
            to,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("IMPORTING")
                .arg(&from_id),
        );
        let _: () = self.query(
            from,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("MIGRATING")
                .arg(&to_id),
        );
        loop {
            let keys: Vec<Vec<u8>> = self.query(
                from,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(batch),
            );
            if keys.is_empty() {
                break;
            }
            let _: redis::Value = self.query(
                from,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(target_port)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(&keys),
            );
            std::thread::sleep(pause);
        }
        for i in [to, from] {
            let _: () = self.query(
                i,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&to_id),
            );
        }
        for (i, _) in self.servers.iter().enumerate().filter(|(_, s)| s.is_some()) {
            if i != to && i != from {
                let _: () = self.query(
                    i,
                    redis::cmd("CLUSTER")
                        .arg("SETSLOT")
                        .arg(slot)
                        .arg("NODE")
                        .arg(&to_id),
                );
            }
        }
    }
}

/// One master, one replica and Redis Sentinel watching them, all of one
/// test's own; the master may be killed or failed over.
pub struct SentinelSetup {
    /// Index 0 starts as master, 1 as its replica.
    servers: Vec<Option<Server>>,
    sentinels: Vec<Server>,
}

/// The master name the test sentinels monitor.
pub const SENTINEL_MASTER: &str = "ic-test";

impl SentinelSetup {
    pub fn start(sentinels: usize) -> SentinelSetup {
        let master = Server::start(&own_dir("sentinel-master"), &[], true);
        let replica = Server::start(
            &own_dir("sentinel-replica"),
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
            true,
        );
        wait_until(Duration::from_secs(20), "the replica did not sync", || {
            admin(&replica.url())
                .and_then(|mut c| {
                    redis::cmd("INFO")
                        .arg("replication")
                        .query::<String>(&mut c)
                })
                .is_ok_and(|i| i.contains("master_link_status:up"))
        });
        let sentinels = (0..sentinels)
            .map(|_| {
                let dir = own_dir("sentinel");
                std::fs::create_dir_all(&dir).expect("a sentinel directory");
                let file = dir.join("sentinel.conf");
                let conf = format!(
                    "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 1\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    master.port
                );
                std::fs::write(&file, conf).expect("a sentinel configuration");
                Server::start_with(free_port(), &dir, Some(&file), &["--sentinel".into()], true)
                    .unwrap_or_else(|e| panic!("cannot start a sentinel: {e}"))
            })
            .collect();
        let setup = SentinelSetup {
            servers: vec![Some(master), Some(replica)],
            sentinels,
        };
        // Sentinel learns of the replica from the master's INFO.
        wait_until(
            Duration::from_secs(30),
            "sentinel did not find the replica",
            || {
                setup.sentinels.iter().all(|s| {
                    admin(&s.url())
                        .and_then(|mut c| {
                            redis::cmd("SENTINEL")
                                .arg("REPLICAS")
                                .arg(SENTINEL_MASTER)
                                .query::<Vec<redis::Value>>(&mut c)
                        })
                        .is_ok_and(|r| !r.is_empty())
                })
            },
        );
        setup
    }

    /// The URL of server `index`.
    pub fn url(&self, index: usize) -> String {
        self.servers[index].as_ref().expect("a live server").url()
    }

    /// `host:port` of each sentinel.
    pub fn sentinels(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The port of the master the first sentinel names.
    pub fn master_port(&self) -> Option<u16> {
        let mut c = admin(&self.sentinels[0].url()).ok()?;
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(SENTINEL_MASTER)
            .query(&mut c)
            .ok()?;
        Some(port)
    }

    /// The index of the server on `port`.
    pub fn index_of(&self, port: u16) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.port == port))
    }

    /// `SENTINEL FAILOVER`: a graceful switch to the replica.
    pub fn failover(&self) {
        let mut c = admin(&self.sentinels[0].url()).expect("the sentinel answers");
        let _: String = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SENTINEL_MASTER)
            .query(&mut c)
            .expect("SENTINEL FAILOVER is accepted");
    }

    /// SIGKILL of server `index`.
    pub fn kill(&mut self, index: usize) {
        if let Some(server) = self.servers[index].take() {
            drop(server);
        }
    }
}
