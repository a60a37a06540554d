//! The storage backends the behavioural tests run against, and the macro
//! that runs one test body once per backend.
//!
//! `backend_test! { async fn name(backend: Backend) { ... } }` expands to a
//! module `name` with one `#[tokio::test]` per backend (`name::memory`,
//! `name::disk`, ...), so `cargo test name` runs them all and a failure
//! names the backend.

use std::any::Any;

/// A storage backend under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded engine.
    Memory,
    /// The engine made durable in a temporary data directory.
    Disk,
    /// A single Redis node (shared by the tests, each under its own prefix).
    Redis,
    /// A 3-master Redis Cluster (shared likewise).
    RedisCluster,
}

/// Whatever must stay alive while an app uses a backend (temporary
/// directories, Redis prefixes to clean up).
pub type Guard = Box<dyn Any + Send + Sync>;

impl Backend {
    /// Flags selecting this backend, and what keeps it alive.
    /// The name of its test in every `backend_test!` module.
    pub fn test_name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Disk => "disk",
            Backend::Redis => "redis",
            Backend::RedisCluster => "redis_cluster",
        }
    }

    pub fn prepare(self) -> (Vec<String>, Guard) {
        match self {
            Backend::Memory => (vec!["--storage".into(), "memory".into()], Box::new(())),
            Backend::Disk => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let flags = vec![
                    "--storage".into(),
                    "disk".into(),
                    "--data-dir".into(),
                    dir.path().display().to_string(),
                    "--fsync".into(),
                    "no".into(),
                    // Tiny segments: every test also exercises rotation and
                    // background compaction.
                    "--log-segment-bytes".into(),
                    "4096".into(),
                ];
                (flags, Box::new(dir))
            }
            Backend::Redis => {
                let flags = vec![
                    "--storage".into(),
                    "redis".into(),
                    "--redis-url".into(),
                    crate::redis_servers::single_url(),
                    "--redis-prefix".into(),
                    crate::redis_servers::unique_prefix(),
                ];
                (flags, Box::new(()))
            }
            Backend::RedisCluster => {
                let flags = vec![
                    "--storage".into(),
                    "redis".into(),
                    "--redis-cluster-nodes".into(),
                    crate::redis_servers::cluster_nodes().join(","),
                    "--redis-prefix".into(),
                    crate::redis_servers::unique_prefix(),
                ];
                (flags, Box::new(()))
            }
        }
    }
}

impl Backend {
    /// Whether state survives closing the store and opening it again.
    pub fn persists(self) -> bool {
        self != Backend::Memory
    }
}

/// Opens this backend's store with the test configuration and `flags`;
/// returns the configuration too, to open the same store again.
pub async fn open_store(
    backend: Backend,
    flags: &[&str],
    clock: std::sync::Arc<dyn impression_core::Clock>,
) -> (
    std::sync::Arc<dyn impression_counter::storage::Store>,
    impression_counter::config::Config,
    Guard,
) {
    let (backend_flags, guard) = backend.prepare();
    let mut all: Vec<&str> = backend_flags.iter().map(String::as_str).collect();
    all.extend_from_slice(flags);
    let config = crate::helpers::config(&all);
    let store = impression_counter::storage::open(&config.storage(), clock)
        .await
        .expect("the backend opens");
    (store, config, guard)
}

/// Runs one async test body against every backend.
#[macro_export]
macro_rules! backend_test {
    (async fn $name:ident($backend:ident : Backend) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($backend: $crate::backends::Backend) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                run($crate::backends::Backend::Memory).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn disk() {
                run($crate::backends::Backend::Disk).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                run($crate::backends::Backend::Redis).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() {
                run($crate::backends::Backend::RedisCluster).await;
            }
        }
    };
}
