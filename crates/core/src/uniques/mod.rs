//! Unique users: exact for small audiences, a Redis-identical HyperLogLog
//! beyond, so the embedded and the Redis backends give the same numbers.
//!
//! * [`murmur64a`]: the hash Redis's `PFADD` applies to each element.
//! * [`Hll`]: a HyperLogLog whose registers, counts, unions and wire bytes
//!   are those of Redis 7.0 (`PFADD` / `PFCOUNT` / `PFMERGE` / `GET`).
//! * [`UniqueSketch`]: what the engine keeps per (counter, time bucket).
//!
//! # The sketch and its rule
//!
//! Users are identified by `h = murmur64a(user_id, REDIS_HLL_SEED)`, the
//! hash `PFADD key user_id` computes. A [`UniqueSketch`] is **exact** while
//! it has seen at most [`EXACT_LIMIT`] (128) distinct hashes: it keeps them
//! all. The insert of the 129th distinct hash turns it into **HLL** mode for
//! good: it keeps only the HLL registers, which equal those `PFADD` of all
//! its user ids would give (register index and value depend on the hash
//! alone). An exact sketch also has those registers, computed from its
//! hashes on demand.
//!
//! **Count of parts `S1 … Sn`** (one sketch is the case n = 1; no parts, or
//! only empty ones, count 0):
//!
//! 1. if every `Si` is exact and the union of their hash sets has at most
//!    128 members, the count is the size of that union;
//! 2. otherwise it is `PFCOUNT` of all parts' HLLs together (Redis's
//!    multi-key `PFCOUNT`, [`Hll::union_count`]).
//!
//! [`UniqueSketch::merge_from`] follows the same rule, so merging the parts
//! into one sketch and counting it gives the same number, and the result is
//! exact iff case 1 applies.
//!
//! A Redis mirror keeps per sketch a `SET` of the hashes while it is exact
//! (members as signed decimal 64-bit integers, so Redis 7.0 keeps it as a
//! compact intset: 128 is under `set-max-intset-entries`, 512), a mark once
//! it is not, and an HLL key that receives `PFADD key user_id` for every
//! insert, whatever the mode. The Lua union is then: if no part is marked
//! and `#SUNION(sets) <= 128`, that size; else `PFCOUNT hll1 … hlln`.
//! Inserting: `PFADD`, and if not marked, `SADD`; when `SCARD` passes 128,
//! replace the set by the mark. `tests/redis_hll.rs` runs that rule with a
//! separate flag key as the mark against `redis-server` and compares; the
//! Redis backend (`crates/server/src/storage/redis/lua/common.lua`) marks
//! with a set holding only `x`, which is not a decimal integer and so
//! never a hash, and `SUNION` then holds `x` too.
//!
//! # Why 128
//!
//! * Audiences up to 128 are counted exactly, including the many small ads
//!   and quiet minutes; beyond, the estimate is already within about 1%
//!   (Redis answers 127 for 129 ids `user-0…`, 496 for 500, 1,003 for
//!   1,000), so the switch is not a visible jump.
//! * Memory: 8 bytes a hash, at most 1 KiB, exactly the capacity a doubling
//!   vector reaches (4, 8, …, 128), so no slack at the limit. The sparse
//!   HLL that replaces it takes about 2 bytes a user (324 bytes at 129), so
//!   promotion shrinks the sketch; a minute with ~700 users costs 1,470.
//! * Unions of exact parts merge sorted lists of at most 128 hashes.
//! * On the Redis side, 128 members stay an intset (8 bytes each).

mod dense;
pub mod hll;
pub mod murmur;
mod nibble;
mod sparse;
mod union;

pub use hll::{Hll, HllParseError};
pub use murmur::{REDIS_HLL_SEED, murmur64a};
pub use union::{Overlay, UnionBase};

use hll::RawRegisters;

/// Most distinct hashes an exact [`UniqueSketch`] holds; one more makes it
/// an HLL.
pub const EXACT_LIMIT: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    /// The distinct hashes, sorted, at most [`EXACT_LIMIT`].
    Exact(Vec<u64>),
    /// More than [`EXACT_LIMIT`] users were seen: registers only.
    Hll(Hll),
}

/// Distinct users of one counter in one time bucket: exact up to
/// [`EXACT_LIMIT`] users, a Redis-identical HLL beyond (the rule is in the
/// module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UniqueSketch {
    mode: Mode,
}

/// A [`UniqueSketch`] as plain data, for snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UniqueParts {
    /// An exact sketch: its distinct hashes, sorted ascending.
    Exact(Vec<u64>),
    /// An HLL-mode sketch: its registers as a Redis HLL string
    /// ([`Hll::to_redis_bytes`]), sparse while that fits in 3,000 bytes.
    Hll(Vec<u8>),
}

impl Default for UniqueParts {
    /// An empty exact sketch.
    fn default() -> Self {
        UniqueParts::Exact(Vec::new())
    }
}

impl Default for UniqueSketch {
    fn default() -> Self {
        Self::new()
    }
}

impl UniqueSketch {
    /// An empty sketch (exact, no allocation).
    pub const fn new() -> Self {
        Self {
            mode: Mode::Exact(Vec::new()),
        }
    }

    /// Records a user by id; tells whether the sketch changed.
    pub fn insert(&mut self, user_id: &[u8]) -> bool {
        self.insert_hash(murmur64a(user_id, REDIS_HLL_SEED))
    }

    /// Records a user by `murmur64a(user_id, REDIS_HLL_SEED)`; tells whether
    /// the sketch changed (a new hash while exact, a raised register after).
    pub fn insert_hash(&mut self, hash: u64) -> bool {
        match &mut self.mode {
            Mode::Hll(hll) => hll.insert_hash(hash),
            Mode::Exact(hashes) => match hashes.binary_search(&hash) {
                Ok(_) => false,
                Err(_) if hashes.len() == EXACT_LIMIT => {
                    let mut hll = hll_of(hashes);
                    hll.insert_hash(hash);
                    self.mode = Mode::Hll(hll);
                    true
                }
                Err(at) => {
                    hashes.insert(at, hash);
                    true
                }
            },
        }
    }

    /// Records many users by their hashes, as [`insert_hash`](Self::insert_hash)
    /// each would (in HLL mode in one tight loop: see [`Hll::insert_hashes`]).
    pub fn insert_hashes(&mut self, hashes: &[u64]) {
        let mut rest = hashes;
        while let Some((&first, tail)) = rest.split_first() {
            if let Mode::Hll(hll) = &mut self.mode {
                hll.insert_hashes(rest);
                return;
            }
            self.insert_hash(first);
            rest = tail;
        }
    }

    /// Distinct users: exact while [`is_exact`](Self::is_exact), else the
    /// HLL estimate (`PFCOUNT`).
    pub fn count(&self) -> u64 {
        match &self.mode {
            Mode::Exact(hashes) => hashes.len() as u64,
            Mode::Hll(hll) => hll.count(),
        }
    }

    /// Whether the sketch still holds every hash (at most [`EXACT_LIMIT`]).
    pub fn is_exact(&self) -> bool {
        matches!(self.mode, Mode::Exact(_))
    }

    /// The distinct hashes, sorted, while exact.
    pub fn exact_hashes(&self) -> Option<&[u64]> {
        match &self.mode {
            Mode::Exact(hashes) => Some(hashes),
            Mode::Hll(_) => None,
        }
    }

    /// The HLL registers `PFADD` of all the users would give, computed from
    /// the hashes while exact.
    pub fn to_hll(&self) -> Hll {
        match &self.mode {
            Mode::Exact(hashes) => hll_of(hashes),
            Mode::Hll(hll) => hll.clone(),
        }
    }

    /// Adds `other`'s users. Stays exact iff both are exact and the union
    /// has at most [`EXACT_LIMIT`] hashes; afterwards [`count`](Self::count)
    /// equals [`union_count`](Self::union_count) of the two.
    pub fn merge_from(&mut self, other: &UniqueSketch) {
        let merged = match (&mut self.mode, &other.mode) {
            (Mode::Exact(mine), Mode::Exact(theirs)) => {
                let mut union = union_sorted(mine, theirs);
                if union.len() <= EXACT_LIMIT {
                    // Sized for both inputs; keep an exact sketch ≤ 1 KiB.
                    union.shrink_to_fit();
                    Mode::Exact(union)
                } else {
                    Mode::Hll(hll_of(&union))
                }
            }
            (Mode::Exact(mine), Mode::Hll(theirs)) => {
                let mut hll = theirs.clone();
                for &hash in mine.iter() {
                    hll.insert_hash(hash);
                }
                Mode::Hll(hll)
            }
            (Mode::Hll(mine), Mode::Exact(theirs)) => {
                for &hash in theirs {
                    mine.insert_hash(hash);
                }
                return;
            }
            (Mode::Hll(mine), Mode::Hll(theirs)) => {
                mine.merge_from(theirs);
                return;
            }
        };
        self.mode = merged;
    }

    /// Distinct users over all `parts`, by the rule of the module
    /// documentation, without copying any part: exact parts are merged into
    /// one sorted list while it stays within [`EXACT_LIMIT`]; from the first
    /// HLL part or overflow on, everything goes into one 16 KiB register
    /// array.
    pub fn union_count<'a>(parts: impl IntoIterator<Item = &'a UniqueSketch>) -> u64 {
        let mut exact: Vec<u64> = Vec::new();
        let mut raw: Option<RawRegisters> = None;
        for part in parts {
            if raw.is_none() {
                match &part.mode {
                    Mode::Exact(hashes) => {
                        exact = union_sorted(&exact, hashes);
                        if exact.len() <= EXACT_LIMIT {
                            continue;
                        }
                    }
                    Mode::Hll(_) => {}
                }
                let mut registers = RawRegisters::new();
                for &hash in &exact {
                    registers.insert_hash(hash);
                }
                raw = Some(registers);
            }
            if let Some(registers) = &mut raw {
                match &part.mode {
                    Mode::Exact(hashes) => {
                        for &hash in hashes {
                            registers.insert_hash(hash);
                        }
                    }
                    Mode::Hll(hll) => registers.merge(hll),
                }
            }
        }
        match raw {
            None => exact.len() as u64,
            Some(registers) => registers.count(),
        }
    }

    /// Heap bytes held (allocation capacities; allocator overhead and the
    /// 32 inline bytes not included). Never more than 12,288.
    pub fn heap_bytes(&self) -> usize {
        match &self.mode {
            Mode::Exact(hashes) => hashes.capacity() * size_of::<u64>(),
            Mode::Hll(hll) => hll.heap_bytes(),
        }
    }

    /// The sketch as plain data; [`from_parts`](Self::from_parts) gives back
    /// an equal sketch.
    pub fn to_parts(&self) -> UniqueParts {
        match &self.mode {
            Mode::Exact(hashes) => UniqueParts::Exact(hashes.clone()),
            Mode::Hll(hll) => UniqueParts::Hll(hll.to_redis_bytes()),
        }
    }

    /// Rebuilds a sketch from [`to_parts`](Self::to_parts). Hashes are
    /// normalised (sorted, deduplicated, and over [`EXACT_LIMIT`] of them
    /// make an HLL-mode sketch, as inserting them would); HLL bytes must
    /// parse.
    pub fn from_parts(parts: UniqueParts) -> Result<Self, HllParseError> {
        let mode = match parts {
            UniqueParts::Exact(mut hashes) => {
                hashes.sort_unstable();
                hashes.dedup();
                if hashes.len() <= EXACT_LIMIT {
                    hashes.shrink_to_fit();
                    Mode::Exact(hashes)
                } else {
                    Mode::Hll(hll_of(&hashes))
                }
            }
            UniqueParts::Hll(bytes) => Mode::Hll(Hll::from_redis_bytes(&bytes)?),
        };
        Ok(Self { mode })
    }
}

fn hll_of(hashes: &[u64]) -> Hll {
    let mut hll = Hll::new();
    for &hash in hashes {
        hll.insert_hash(hash);
    }
    hll
}

/// Union of two ascending, duplicate-free lists.
fn union_sorted(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        out.push(x.min(y));
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn user(seed: u64, i: u64) -> Vec<u8> {
        format!("user-{seed}-{i}").into_bytes()
    }

    fn sketch(seed: u64, n: u64) -> UniqueSketch {
        let mut s = UniqueSketch::new();
        for i in 0..n {
            s.insert(&user(seed, i));
        }
        s
    }

    fn hll(seed: u64, n: u64) -> Hll {
        let mut h = Hll::new();
        for i in 0..n {
            h.insert(&user(seed, i));
        }
        h
    }

    /// Bulk inserts give the sketch one insert each would, through every
    /// form (exact, sparse, nibble, dense) and across the changes of form.
    #[test]
    fn bulk_inserts_equal_one_by_one() {
        // A dense (6-bit) sketch: every register at 16, more than the
        // nibble form's escape list holds.
        let mut dense = b"HYLL\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();
        let mut bits = vec![0u8; 12_288];
        for i in 0..16_384 {
            for b in 0..6 {
                if (16 >> b) & 1 == 1 {
                    let bit = i * 6 + b;
                    bits[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        dense.extend_from_slice(&bits);
        let dense = UniqueSketch::from_parts(UniqueParts::Hll(dense)).unwrap();
        for n in [0u64, 1, 128, 129, 1_000, 5_000, 200_000, u64::MAX] {
            let hashes: Vec<u64> = (0..n.min(200_000))
                .map(|i| murmur64a(&user(3, i), REDIS_HLL_SEED))
                .collect();
            let mut one = if n == u64::MAX {
                dense.clone()
            } else {
                UniqueSketch::new()
            };
            // Every user twice, some within one bulk insert: repeats and
            // equal registers within a sort must keep the larger value.
            let twice: Vec<u64> = hashes
                .iter()
                .zip(hashes.iter().skip(5).chain(&hashes))
                .flat_map(|(&a, &b)| [a, b])
                .collect();
            let mut bulk = one.clone();
            let mut bulk_small = one.clone();
            for &h in &twice {
                one.insert_hash(h);
            }
            for chunk in twice.chunks(256) {
                bulk.insert_hashes(chunk);
            }
            for chunk in twice.chunks(17) {
                bulk_small.insert_hashes(chunk);
            }
            assert_eq!(bulk, one, "{n}");
            assert_eq!(bulk_small, one, "{n}");
        }
    }

    #[test]
    fn exact_up_to_the_limit_then_the_hll() {
        let mut s = UniqueSketch::new();
        assert_eq!(s.count(), 0);
        assert_eq!(s.heap_bytes(), 0);
        for i in 0..EXACT_LIMIT as u64 {
            assert!(s.insert(&user(1, i)));
            assert!(!s.insert(&user(1, i)), "a repeat changes nothing");
            assert_eq!(s.count(), i + 1);
        }
        assert!(s.is_exact());
        assert_eq!(s.heap_bytes(), EXACT_LIMIT * 8, "doubling lands on 128");
        assert_eq!(s.to_hll(), hll(1, EXACT_LIMIT as u64));

        assert!(s.insert(&user(1, EXACT_LIMIT as u64)));
        assert!(!s.is_exact());
        assert_eq!(s.exact_hashes(), None);
        assert_eq!(s.to_hll(), hll(1, EXACT_LIMIT as u64 + 1));
        assert_eq!(s.count(), hll(1, EXACT_LIMIT as u64 + 1).count());
        assert!(s.heap_bytes() < EXACT_LIMIT * 8, "promotion shrinks");
    }

    #[test]
    fn hll_mode_registers_equal_pfadd_of_the_same_ids() {
        for n in [129, 700, 5_000, 20_000] {
            let s = sketch(2, n);
            assert_eq!(s.to_hll(), hll(2, n), "{n}");
            assert_eq!(s.count(), hll(2, n).count(), "{n}");
        }
    }

    #[test]
    fn union_rule() {
        let small_a = sketch(3, 60);
        let small_b = sketch(4, 60);
        let overlap = sketch(3, 100); // a superset of small_a
        let big = sketch(5, 1_000);
        let empty = UniqueSketch::new();

        // Case 1: all exact, union ≤ 128: exact.
        assert_eq!(UniqueSketch::union_count([&small_a, &small_b]), 120);
        assert_eq!(UniqueSketch::union_count([&small_a, &overlap, &empty]), 100);
        assert_eq!(UniqueSketch::union_count([&empty]), 0);
        assert_eq!(UniqueSketch::union_count([]), 0);

        // Case 2: all exact but the union passes 128: PFCOUNT of all.
        let pf = |parts: &[&UniqueSketch]| {
            let hlls: Vec<Hll> = parts.iter().map(|p| p.to_hll()).collect();
            Hll::union_count(&hlls)
        };
        let parts = [&small_b, &overlap];
        assert_eq!(UniqueSketch::union_count(parts), pf(&parts));
        // Case 2: an HLL part, wherever it comes.
        for parts in [
            [&big, &small_a, &small_b],
            [&small_a, &big, &small_b],
            [&small_a, &small_b, &big],
        ] {
            assert_eq!(UniqueSketch::union_count(parts), pf(&parts));
        }
        // A single part is its own count.
        assert_eq!(UniqueSketch::union_count([&big]), big.count());
    }

    #[test]
    fn merge_follows_the_union_rule() {
        let cases = [
            (0, 0),
            (60, 60),
            (100, 28),
            (100, 29),
            (128, 1),
            (5, 2_000),
            (3_000, 10),
            (9_000, 9_000),
        ];
        for (na, nb) in cases {
            let (a, b) = (sketch(6, na), sketch(7, nb));
            let expected = UniqueSketch::union_count([&a, &b]);
            let mut ab = a.clone();
            ab.merge_from(&b);
            let mut ba = b.clone();
            ba.merge_from(&a);
            assert_eq!(ab.count(), expected, "{na}+{nb}");
            assert_eq!(ab, ba, "{na}+{nb}");
            assert_eq!(ab.is_exact(), na + nb <= EXACT_LIMIT as u64, "{na}+{nb}");
            assert!(ab.heap_bytes() <= EXACT_LIMIT * 8 || !ab.is_exact());
        }
    }

    #[test]
    fn parts_round_trip() {
        for n in [0, 1, 128, 129, 700, 2_000, 8_000, 100_000] {
            let s = sketch(8, n);
            let parts = s.to_parts();
            assert_eq!(matches!(parts, UniqueParts::Exact(_)), s.is_exact());
            let back = UniqueSketch::from_parts(parts).unwrap();
            assert_eq!(back, s, "{n}");
            assert_eq!(back.count(), s.count(), "{n}");
        }
    }

    #[test]
    fn from_parts_normalises_hashes_and_rejects_bad_bytes() {
        let s = UniqueSketch::from_parts(UniqueParts::Exact(vec![3, 1, 3, 2])).unwrap();
        assert_eq!(s.exact_hashes(), Some(&[1, 2, 3][..]));
        let many: Vec<u64> = (0..200u64)
            .map(|i| murmur64a(&user(9, i), REDIS_HLL_SEED))
            .collect();
        let s = UniqueSketch::from_parts(UniqueParts::Exact(many)).unwrap();
        assert!(!s.is_exact());
        assert_eq!(s, sketch(9, 200));
        assert!(UniqueSketch::from_parts(UniqueParts::Hll(b"HYLL".to_vec())).is_err());
    }

    #[test]
    fn inline_size() {
        // Kept per (counter, minute): the inline part counts too.
        assert_eq!(size_of::<UniqueSketch>(), 32);
    }

    #[test]
    fn minute_sized_sketches_are_small() {
        // The budget case: ~700 users a minute.
        let s = sketch(10, 700);
        assert!(s.heap_bytes() <= 1_700, "{} bytes", s.heap_bytes());
        assert!(sketch(11, 100_000).heap_bytes() <= hll::DENSE_BYTES);
    }

    proptest! {
        #[test]
        fn union_count_is_the_count_of_the_merge(
            sizes in proptest::collection::vec(0u64..300, 0..6),
            seed in any::<u64>(),
        ) {
            let parts: Vec<UniqueSketch> = sizes
                .iter()
                .enumerate()
                // Overlapping id ranges: part k has users k*20 .. k*20 + size.
                .map(|(k, &n)| {
                    let mut s = UniqueSketch::new();
                    for i in 0..n {
                        s.insert(&user(seed, k as u64 * 20 + i));
                    }
                    s
                })
                .collect();
            let mut merged = UniqueSketch::new();
            for p in &parts {
                merged.merge_from(p);
            }
            prop_assert_eq!(UniqueSketch::union_count(&parts), merged.count());
            let distinct: std::collections::BTreeSet<u64> = sizes
                .iter()
                .enumerate()
                .flat_map(|(k, &n)| (0..n).map(move |i| k as u64 * 20 + i))
                .collect();
            let all_exact = parts.iter().all(UniqueSketch::is_exact);
            if all_exact && distinct.len() <= EXACT_LIMIT {
                prop_assert_eq!(merged.count(), distinct.len() as u64);
                prop_assert!(merged.is_exact());
            } else {
                prop_assert!(!merged.is_exact());
            }
        }
    }
}
