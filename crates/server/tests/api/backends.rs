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
