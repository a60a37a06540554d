//! Generated cases checked one after the other in an async test, so that a
//! failure in CI can be replayed exactly and is shown small.
//!
//! proptest's own runner calls its test synchronously; these tests talk to a
//! running server, so the cases are drawn here from a proptest strategy and
//! awaited. Every run uses a seed: `TEST_SEED=<n>` when set, else a random
//! one. A failing case is shrunk with proptest's value tree (each step is
//! checked against the server again, a bounded number of times), and the
//! panic message gives the seed and the command that replays the run.

use std::fmt::Debug;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};

/// Most re-checks spent shrinking a failing case.
const MAX_SHRINK_CHECKS: u32 = 128;

/// The run's seed: `TEST_SEED`, or a fresh random one.
fn seed() -> u64 {
    match std::env::var("TEST_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TEST_SEED must be a u64, got {text:?}")),
        Err(_) => {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        }
    }
}

/// A runner whose every draw follows from `seed`.
fn runner(seed: u64, cases: u32) -> TestRunner {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        // Distinct words from one seed (splitmix64 steps).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    TestRunner::new_with_rng(
        RunnerConfig {
            cases,
            ..RunnerConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    )
}

/// Checks `cases` values drawn from `strategy` with `check`, in order.
/// On the first failure, shrinks it and panics with the smallest failing
/// case found, its error, and how to replay the run. `test` names the test
/// for the replay command.
pub async fn check_cases<S, F, Fut>(test: &str, cases: u32, strategy: S, mut check: F)
where
    S: Strategy,
    S::Value: Debug,
    F: FnMut(S::Value) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let seed = seed();
    let mut runner = runner(seed, cases);
    for n in 0..cases {
        let mut tree = strategy
            .new_tree(&mut runner)
            .unwrap_or_else(|e| panic!("{test}: cannot draw case {n}: {e}"));
        let Err(error) = check(tree.current()).await else {
            continue;
        };
        let (case, error, steps) = shrink(&mut tree, error, &mut check).await;
        panic!(
            "{test}: case {n} failed: {error}\n\
             replay: TEST_SEED={seed} cargo test -p impression-counter --test api {test}\n\
             smallest failing case found ({steps} shrinking checks):\n{case:#?}"
        );
    }
}

/// proptest's shrinking loop, awaited: simplify while the case still fails,
/// back off when it passes. Returns the last failing case and its error.
async fn shrink<T, F, Fut>(
    tree: &mut T,
    mut error: String,
    check: &mut F,
) -> (T::Value, String, u32)
where
    T: ValueTree,
    F: FnMut(T::Value) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut failing = tree.current();
    let mut checks = 0;
    if !tree.simplify() {
        return (failing, error, checks);
    }
    while checks < MAX_SHRINK_CHECKS {
        checks += 1;
        let candidate = tree.current();
        let more = match check(tree.current()).await {
            Err(e) => {
                (failing, error) = (candidate, e);
                tree.simplify()
            }
            Ok(()) => tree.complicate(),
        };
        if !more {
            break;
        }
    }
    (failing, error, checks)
}

#[tokio::test]
async fn a_seed_replays_the_same_cases_and_a_failure_is_shrunk() {
    use proptest::prelude::*;

    let draw = |seed| {
        let mut runner = runner(seed, 8);
        (0..8)
            .map(|_| (0u32..1_000_000).new_tree(&mut runner).unwrap().current())
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));

    // A check failing from 1000 up shrinks to exactly 1000.
    let mut tree = (0u32..1_000_000).new_tree(&mut runner(3, 1)).unwrap();
    while tree.current() < 1000 {
        tree = (0u32..1_000_000)
            .new_tree(&mut runner(tree.current().into(), 1))
            .unwrap();
    }
    let mut check = |v: u32| async move {
        if v >= 1000 {
            Err(format!("{v} is too large"))
        } else {
            Ok(())
        }
    };
    let first = check(tree.current()).await.unwrap_err();
    let (case, error, _) = shrink(&mut tree, first, &mut check).await;
    assert_eq!(case, 1000);
    assert_eq!(error, "1000 is too large");
}
