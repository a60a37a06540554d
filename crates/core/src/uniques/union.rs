//! A union of sketches kept ready to be counted again and again with a
//! small, changing sketch on top: the finished minutes of a window under
//! the current minute.
//!
//! Counting an HLL means a histogram of its 16,384 registers; doing that on
//! every stats read, for three windows, is what a read would cost. A
//! [`UnionBase`] in HLL mode keeps its registers one byte each *and* their
//! histogram, maintained as registers rise. Counting it with sketches on
//! top then only visits the registers those sketches set: where one is
//! higher than the base's, the histogram moves one register from the old
//! value to the new. The estimate is computed from the histogram alone (as
//! Redis's is), so the answer is exactly
//! [`UniqueSketch::union_count`] of the base's parts and the top ones.
//!
//! While every part merged in is exact and the union has at most
//! [`EXACT_LIMIT`] hashes, the base is an exact sketch, by the same rule.

use super::hll::{RawRegisters, estimate, pattern};
use super::{EXACT_LIMIT, Mode, UniqueSketch, union_sorted};

/// A union of sketches, counted cheaply with a few more on top, an
/// [`Overlay`] (see the module documentation).
#[derive(Clone, Debug)]
pub struct UnionBase {
    repr: Repr,
}

#[derive(Clone, Debug)]
enum Repr {
    /// All parts exact, at most [`EXACT_LIMIT`] hashes together.
    Exact(UniqueSketch),
    /// Registers and how many hold each value.
    Registers(Box<Registers>),
}

#[derive(Clone)]
struct Registers {
    raw: RawRegisters,
    hist: [u32; 64],
}

impl std::fmt::Debug for Registers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registers")
            .field("zero", &self.hist[0])
            .finish_non_exhaustive()
    }
}

impl Registers {
    fn of_hashes(hashes: &[u64]) -> Box<Self> {
        let mut registers = Box::new(Registers {
            raw: RawRegisters::new(),
            hist: [0; 64],
        });
        registers.hist[0] = u32::try_from(super::hll::REGISTERS).unwrap_or(u32::MAX);
        for &hash in hashes {
            registers.insert_hash(hash);
        }
        registers
    }

    fn raise(&mut self, index: usize, rank: u8) -> bool {
        match self.raw.raise(index, rank) {
            Some(old) => {
                self.hist[usize::from(old)] -= 1;
                self.hist[usize::from(rank)] += 1;
                true
            }
            None => false,
        }
    }

    fn insert_hash(&mut self, hash: u64) -> bool {
        let (index, rank) = pattern(hash);
        self.raise(index, rank)
    }

    fn merge(&mut self, sketch: &UniqueSketch) {
        match &sketch.mode {
            Mode::Exact(hashes) => {
                for &hash in hashes {
                    self.insert_hash(hash);
                }
            }
            Mode::Hll(hll) => {
                for (index, rank) in hll.nonzero() {
                    self.raise(index, rank);
                }
            }
        }
    }

    /// The count of these registers with `top` merged in, leaving them
    /// as they are.
    fn count_with(&self, top: &Overlay<'_>) -> u64 {
        let Some(entries) = &top.entries else {
            // A dense top sets most registers: merging a copy costs no more
            // than gathering them.
            let mut merged = self.clone();
            for sketch in &top.sketches {
                merged.merge(sketch);
            }
            return estimate(&merged.hist);
        };
        let mut hist = self.hist;
        for &(index, rank) in entries {
            let old = self.raw.get(index);
            if rank > old {
                hist[usize::from(old)] -= 1;
                hist[usize::from(rank)] += 1;
            }
        }
        estimate(&hist)
    }
}

/// Sketches to count on top of one or more [`UnionBase`]s, gathered once.
#[derive(Debug)]
pub struct Overlay<'a> {
    sketches: Vec<&'a UniqueSketch>,
    /// The registers they set, one entry per register (the largest value);
    /// `None` when one of them is dense.
    entries: Option<Vec<(usize, u8)>>,
}

impl<'a> Overlay<'a> {
    /// Gathers `sketches`.
    pub fn new(sketches: impl IntoIterator<Item = &'a UniqueSketch>) -> Self {
        let sketches: Vec<&UniqueSketch> = sketches.into_iter().collect();
        let dense = sketches
            .iter()
            .any(|t| matches!(&t.mode, Mode::Hll(hll) if hll.is_dense()));
        if dense {
            return Overlay {
                sketches,
                entries: None,
            };
        }
        let mut entries: Vec<(usize, u8)> = Vec::new();
        for sketch in &sketches {
            match &sketch.mode {
                Mode::Exact(hashes) => entries.extend(hashes.iter().map(|&h| pattern(h))),
                Mode::Hll(hll) => entries.extend(hll.nonzero()),
            }
        }
        // A sparse HLL lists each register once, by index; anything else
        // may list one several times, and the largest value wins.
        let single_hll = sketches.len() == 1 && matches!(sketches[0].mode, Mode::Hll(_));
        if !single_hll {
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            entries.dedup_by_key(|e| e.0);
        }
        Overlay {
            sketches,
            entries: Some(entries),
        }
    }
}

impl Default for UnionBase {
    fn default() -> Self {
        Self::new()
    }
}

impl UnionBase {
    /// The union of nothing.
    pub fn new() -> Self {
        UnionBase {
            repr: Repr::Exact(UniqueSketch::new()),
        }
    }

    /// Adds `sketch`'s users, by the union rule.
    pub fn merge_from(&mut self, sketch: &UniqueSketch) {
        match (&mut self.repr, &sketch.mode) {
            (Repr::Exact(mine), Mode::Exact(theirs)) => {
                let Mode::Exact(hashes) = &mine.mode else {
                    unreachable!("an exact base holds an exact sketch")
                };
                let union = union_sorted(hashes, theirs);
                if union.len() <= EXACT_LIMIT {
                    mine.merge_from(sketch);
                } else {
                    self.repr = Repr::Registers(Registers::of_hashes(&union));
                }
            }
            (Repr::Exact(mine), Mode::Hll(_)) => {
                let Mode::Exact(hashes) = &mine.mode else {
                    unreachable!("an exact base holds an exact sketch")
                };
                let mut registers = Registers::of_hashes(hashes);
                registers.merge(sketch);
                self.repr = Repr::Registers(registers);
            }
            (Repr::Registers(registers), _) => registers.merge(sketch),
        }
    }

    /// Adds one user; tells whether the union changed.
    pub fn insert_hash(&mut self, hash: u64) -> bool {
        match &mut self.repr {
            Repr::Exact(sketch) => {
                let Mode::Exact(hashes) = &sketch.mode else {
                    unreachable!("an exact base holds an exact sketch")
                };
                if hashes.binary_search(&hash).is_ok() {
                    return false;
                }
                if hashes.len() < EXACT_LIMIT {
                    return sketch.insert_hash(hash);
                }
                let mut registers = Registers::of_hashes(hashes);
                registers.insert_hash(hash);
                self.repr = Repr::Registers(registers);
                true
            }
            Repr::Registers(registers) => registers.insert_hash(hash),
        }
    }

    /// [`UniqueSketch::union_count`] of the parts merged in and the
    /// overlay's sketches; in HLL mode, costs the registers those set, not
    /// all 16,384.
    pub fn count_with(&self, top: &Overlay<'_>) -> u64 {
        match &self.repr {
            Repr::Exact(sketch) => UniqueSketch::union_count(
                std::iter::once(sketch).chain(top.sketches.iter().copied()),
            ),
            Repr::Registers(registers) => registers.count_with(top),
        }
    }

    /// Heap bytes held (capacities).
    pub fn heap_bytes(&self) -> usize {
        match &self.repr {
            Repr::Exact(sketch) => sketch.heap_bytes(),
            Repr::Registers(_) => size_of::<Registers>() + super::hll::REGISTERS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uniques::{REDIS_HLL_SEED, murmur64a};

    fn sketch(seed: u64, users: std::ops::Range<u64>) -> UniqueSketch {
        let mut s = UniqueSketch::new();
        for u in users {
            s.insert_hash(murmur64a(format!("{seed}-{u}").as_bytes(), REDIS_HLL_SEED));
        }
        s
    }

    /// Whatever the modes of the base's parts and the tops, the count is
    /// the union count of all of them, to the unit.
    #[test]
    fn counts_equal_the_union_count_of_all_parts() {
        let sizes = [0u64, 1, 60, 128, 129, 700, 3_000, 20_000];
        for &base_size in &sizes {
            for &split in &[0u64, 50, 200] {
                let parts = [
                    sketch(1, 0..split.min(base_size)),
                    sketch(1, split.min(base_size)..base_size),
                ];
                let mut base = UnionBase::new();
                for p in &parts {
                    base.merge_from(p);
                }
                for &top_size in &sizes {
                    // Tops overlapping the base, and two at once.
                    let tops = [
                        sketch(1, base_size / 2..base_size / 2 + top_size),
                        sketch(2, 0..top_size / 3),
                    ];
                    let want = UniqueSketch::union_count(parts.iter().chain(&tops));
                    assert_eq!(
                        base.count_with(&Overlay::new(&tops)),
                        want,
                        "base {base_size}/{split}, top {top_size}"
                    );
                    let want = UniqueSketch::union_count(parts.iter().chain(&tops[..1]));
                    assert_eq!(base.count_with(&Overlay::new(&tops[..1])), want);
                    assert_eq!(
                        base.count_with(&Overlay::new([])),
                        UniqueSketch::union_count(&parts)
                    );
                }
            }
        }
    }

    #[test]
    fn inserts_follow_the_rule() {
        let mut base = UnionBase::new();
        let mut plain = UniqueSketch::new();
        for u in 0..2_000u64 {
            let hash = murmur64a(&u.to_le_bytes(), REDIS_HLL_SEED);
            assert_eq!(base.insert_hash(hash), plain.insert_hash(hash), "user {u}");
            assert!(!base.insert_hash(hash));
            if u % 97 == 0 || u < 130 {
                assert_eq!(
                    base.count_with(&Overlay::new([])),
                    plain.count(),
                    "after {u}"
                );
            }
        }
        assert!(base.heap_bytes() > 16_384);
    }
}
