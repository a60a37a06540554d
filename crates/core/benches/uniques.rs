//! Unique-user sketches: insert, count and union speed, and heap bytes per
//! sketch by audience size.
//!
//! ```sh
//! cargo bench -p impression-core --bench uniques
//! ```
//!
//! The heap table is printed first (it is a measurement of size, not time):
//! `heap_bytes()` of one sketch after N distinct users, i.e. allocation
//! capacities without allocator overhead. Then divan's timings; inserts are
//! reported per hash (`item`), from a sketch prefilled to the named state,
//! so each state is measured where the engine would meet it:
//!
//! * `exact`: 0 → 128 users (sorted hashes);
//! * `sparse_minute`: 700 → 1,200 users, a busy campaign's minute;
//! * `sparse_full`: 3,500 → 4,000 users (≈ 3,200 → 3,600 non-zero
//!   registers), near the largest sparse (4,080);
//! * `dense`: 100k users, then 10k more (the 4-bit "nibble" form);
//! * `repeat`: users already seen (the common case for a returning user).

#![allow(clippy::unwrap_used)] // benchmarks: a failed unwrap is a broken setup

use divan::Bencher;
use divan::counter::ItemsCount;
use impression_core::uniques::REDIS_HLL_SEED;
use impression_core::{UniqueSketch, murmur64a};

fn main() {
    println!(
        "{:>10} {:>10} {:>8} {:>12}",
        "users", "heap bytes", "exact", "bytes/user"
    );
    for n in [
        10, 100, 128, 129, 700, 1_000, 5_000, 10_000, 100_000, 1_000_000, 10_000_000,
    ] {
        let s = filled(0, n);
        println!(
            "{:>10} {:>10} {:>8} {:>12.2}",
            n,
            s.heap_bytes(),
            s.is_exact(),
            s.heap_bytes() as f64 / n as f64
        );
    }
    divan::main();
}

/// `n` well-mixed hashes, as murmur64a of distinct ids would give.
fn hashes(seed: u64, n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| murmur64a(format!("user-{seed}-{i}").as_bytes(), REDIS_HLL_SEED))
        .collect()
}

fn filled(seed: u64, n: usize) -> UniqueSketch {
    let mut s = UniqueSketch::new();
    for h in hashes(seed, n) {
        s.insert_hash(h);
    }
    s
}

/// `(state, prefilled users, users inserted while timed)`.
const STATES: [(&str, usize, usize); 4] = [
    ("exact", 0, 128),
    ("sparse_minute", 700, 500),
    ("sparse_full", 3_500, 500),
    ("dense", 100_000, 10_000),
];

#[divan::bench(args = STATES.map(|s| s.0))]
fn insert_new(bencher: Bencher, state: &str) {
    let &(_, before, added) = STATES.iter().find(|s| s.0 == state).unwrap();
    let base = filled(1, before);
    let new = hashes(2, added);
    bencher
        .counter(ItemsCount::new(added))
        .with_inputs(|| base.clone())
        .bench_local_refs(|s| {
            for &h in &new {
                s.insert_hash(h);
            }
        });
}

#[divan::bench(args = STATES.map(|s| s.0))]
fn insert_repeat(bencher: Bencher, state: &str) {
    let &(_, before, added) = STATES.iter().find(|s| s.0 == state).unwrap();
    let total = before + added;
    let mut s = filled(3, total);
    let seen = hashes(3, total);
    bencher.counter(ItemsCount::new(total)).bench_local(|| {
        for &h in &seen {
            s.insert_hash(h);
        }
    });
}

/// Hashing a typical user id (24 bytes) with murmur64a: the extra cost of
/// `insert(user_id)` over `insert_hash`.
#[divan::bench]
fn murmur_24_bytes(bencher: Bencher) {
    let id = b"0f5e2a7c-user-1234567890";
    bencher.bench(|| murmur64a(divan::black_box(id), REDIS_HLL_SEED));
}

#[divan::bench(args = [100, 700, 5_000, 100_000])]
fn count(bencher: Bencher, users: usize) {
    let s = filled(4, users);
    bencher.bench_local(|| divan::black_box(&s).count());
}

/// "Unique users in the last hour": the union of 60 minute sketches.
#[divan::bench(args = [50, 700, 20_000])]
fn union_of_60_minutes(bencher: Bencher, users_per_minute: usize) {
    // Half of each minute's users also came the minute before.
    let minutes: Vec<UniqueSketch> = (0..60)
        .map(|m| {
            let mut s = UniqueSketch::new();
            for i in 0..users_per_minute {
                let user = m * users_per_minute / 2 + i;
                s.insert(format!("user-{user}").as_bytes());
            }
            s
        })
        .collect();
    bencher.bench_local(|| UniqueSketch::union_count(divan::black_box(&minutes)));
}
