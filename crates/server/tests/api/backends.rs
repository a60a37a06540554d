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
}

/// Whatever must stay alive while an app uses a backend (temporary
/// directories, Redis prefixes to clean up).
pub type Guard = Box<dyn Any + Send + Sync>;

impl Backend {
    /// Flags selecting this backend, and what keeps it alive.
    pub async fn prepare(self) -> (Vec<String>, Guard) {
        match self {
            Backend::Memory => (vec!["--storage".into(), "memory".into()], Box::new(())),
        }
    }
}

/// Opens this backend's store with the test configuration and `flags`.
pub async fn open_store(
    backend: Backend,
    flags: &[&str],
    clock: std::sync::Arc<dyn impression_core::Clock>,
) -> (
    std::sync::Arc<dyn impression_counter::storage::Store>,
    Guard,
) {
    let (backend_flags, guard) = backend.prepare().await;
    let mut all: Vec<&str> = backend_flags.iter().map(String::as_str).collect();
    all.extend_from_slice(flags);
    let config = crate::helpers::config(&all);
    let store = impression_counter::storage::open(&config, clock)
        .await
        .expect("the backend opens");
    (store, guard)
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
        }
    };
}
