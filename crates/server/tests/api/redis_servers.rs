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
        let mut args: Vec<String> = vec![
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
        ];
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

fn start_cluster() -> Vec<Server> {
    let servers: Vec<Server> = (0..3)
        .map(|i| {
            let node_dir = scratch_dir(&format!("cluster{i}"));
            let extra = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                node_dir.join("nodes.conf").display().to_string(),
                // An explicit bus port: port + 10000 may not be free.
                "--cluster-port".into(),
                free_port().to_string(),
                "--appendonly".into(),
                "no".into(),
            ];
            Server::start(&node_dir, &extra, true)
        })
        .collect();
    let addresses: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let output = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli runs (it comes with redis-server)");
    assert!(
        output.status.success(),
        "redis-cli --cluster create failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
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
