//! The compact dense register array: 4 bits a register (8,192 bytes) plus
//! the few registers of 15 and more on the side.
//!
//! A register reaches 15 only when one of its elements' hashes has 14
//! trailing zeros after the index bits (probability 2^-14 per element): at
//! 1M users about 61 of the 16,384 registers do, at 10M about 600. Those
//! keep nibble 15 as an escape and their value in `high`, a sorted list of
//! `index << 6 | value`. At most [`HIGH_MAX`] of them, so the whole never
//! exceeds the 12,288-byte packed form that takes over beyond (around 17M
//! users, or crafted registers).
//!
//! Invariants: `nibbles` is 8,192 bytes, register `i` in byte `i / 2`, low
//! nibble for even `i`; a register is in `high` iff its nibble is 15, with
//! its value (15..=63); `high` is sorted by index, at most [`HIGH_MAX`]
//! long, with capacity at most [`HIGH_MAX`].

use super::hll::REGISTERS;
use super::sparse::SetOutcome;

/// Nibble marking a register whose value is in `high`.
const ESCAPE: u8 = 15;
const VALUE_BITS: u32 = 6;
const VALUE_MASK: u32 = (1 << VALUE_BITS) - 1;

/// Most registers at 15 or more: 8,192 + 4 × 1,024 bytes = the packed
/// 12,288.
pub(super) const HIGH_MAX: usize = 1024;

/// Bytes of the nibble array.
pub(super) const NIBBLE_BYTES: usize = REGISTERS / 2;

/// 4-bit registers with an escape list for values of 15 and more.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Nibble {
    /// A fixed-size box: a thin pointer keeps `Hll` small inline.
    nibbles: Box<[u8; NIBBLE_BYTES]>,
    high: Vec<u32>,
}

impl Nibble {
    /// From one byte per register; `None` if more than [`HIGH_MAX`]
    /// registers are 15 or more.
    pub(super) fn from_raw(raw: &[u8]) -> Option<Self> {
        let high_count = raw.iter().filter(|&&v| v >= ESCAPE).count();
        if high_count > HIGH_MAX {
            return None;
        }
        let mut high = Vec::with_capacity(high_count);
        for (index, &v) in raw.iter().enumerate() {
            if v >= ESCAPE {
                high.push(high_entry(index, v));
            }
        }
        let mut nibbles = Box::new([0; NIBBLE_BYTES]);
        for (byte, pair) in nibbles.iter_mut().zip(raw.chunks_exact(2)) {
            *byte = pair[0].min(ESCAPE) | pair[1].min(ESCAPE) << 4;
        }
        Some(Self { nibbles, high })
    }

    fn nibble(&self, index: usize) -> u8 {
        self.nibbles[index >> 1] >> (4 * (index & 1)) & 0xf
    }

    fn set_nibble(&mut self, index: usize, n: u8) {
        let shift = 4 * (index & 1);
        let byte = &mut self.nibbles[index >> 1];
        *byte = (*byte & !(0xf << shift)) | n << shift;
    }

    /// Position of `index` in `high`.
    fn find_high(&self, index: usize) -> Result<usize, usize> {
        let at = self
            .high
            .partition_point(|&e| (e >> VALUE_BITS) < register(index));
        match self.high.get(at) {
            Some(&e) if (e >> VALUE_BITS) as usize == index => Ok(at),
            _ => Err(at),
        }
    }

    /// Register `index` (< `REGISTERS`).
    pub(super) fn get(&self, index: usize) -> u8 {
        match self.nibble(index) {
            ESCAPE => match self.find_high(index) {
                Ok(at) => (self.high[at] & VALUE_MASK) as u8,
                // Unreachable by the invariant; the nibble is a lower bound.
                Err(_) => ESCAPE,
            },
            n => n,
        }
    }

    /// Raises register `index` to `value` (≤ 63) if lower; `Full` when that
    /// needs a new entry in a full `high`.
    #[inline]
    pub(super) fn set_max(&mut self, index: usize, value: u8) -> SetOutcome {
        let n = self.nibble(index);
        if n < ESCAPE {
            if value <= n {
                return SetOutcome::Unchanged;
            }
            if value < ESCAPE {
                self.set_nibble(index, value);
                return SetOutcome::Changed;
            }
            if self.high.len() == HIGH_MAX {
                return SetOutcome::Full;
            }
            let at = self.find_high(index).unwrap_or_else(|at| at);
            if self.high.len() == self.high.capacity() {
                // Small steps: the list stays short and its slack small.
                let room = HIGH_MAX - self.high.len();
                self.high
                    .reserve_exact((self.high.len() / 4).clamp(4, 64).min(room));
            }
            self.high.insert(at, high_entry(index, value));
            self.set_nibble(index, ESCAPE);
            return SetOutcome::Changed;
        }
        match self.find_high(index) {
            Ok(at) if (self.high[at] & VALUE_MASK) < u32::from(value) => {
                self.high[at] = high_entry(index, value);
                SetOutcome::Changed
            }
            _ => SetOutcome::Unchanged,
        }
    }

    /// Bytes allocated.
    pub(super) fn heap_bytes(&self) -> usize {
        NIBBLE_BYTES + self.high.capacity() * size_of::<u32>()
    }

    /// Adds the register histogram (how many registers hold each value).
    pub(super) fn histogram(&self, hist: &mut [u32; 64]) {
        // Eight sub-histograms, one per register of a 4-byte chunk: most
        // registers hold the same few values, and back-to-back increments
        // of one counter wait on each other's store.
        let mut lanes = [[0u32; 16]; 8];
        for chunk in self.nibbles.chunks_exact(4) {
            for (k, &byte) in chunk.iter().enumerate() {
                lanes[2 * k][usize::from(byte & 0xf)] += 1;
                lanes[2 * k + 1][usize::from(byte >> 4)] += 1;
            }
        }
        for lane in &lanes {
            // The escape bin is replaced by the true values below.
            for (h, l) in hist.iter_mut().zip(&lane[..usize::from(ESCAPE)]) {
                *h += l;
            }
        }
        for &e in &self.high {
            hist[(e & VALUE_MASK) as usize] += 1;
        }
    }

    /// Register-wise maximum into a raw one-byte-per-register array.
    pub(super) fn max_into(&self, raw: &mut [u8]) {
        for (&byte, pair) in self.nibbles.iter().zip(raw.chunks_exact_mut(2)) {
            // Escaped registers get at least 15 here, their value below.
            pair[0] = pair[0].max(byte & 0xf);
            pair[1] = pair[1].max(byte >> 4);
        }
        for &e in &self.high {
            let r = &mut raw[(e >> VALUE_BITS) as usize];
            *r = (*r).max((e & VALUE_MASK) as u8);
        }
    }

    /// `(index, value)` of every non-zero register, by index.
    pub(super) fn nonzero(&self) -> impl Iterator<Item = (usize, u8)> + '_ {
        (0..REGISTERS).filter_map(|i| {
            let v = self.get(i);
            (v != 0).then_some((i, v))
        })
    }
}

/// A register index as the 32-bit key of a high entry.
#[allow(
    clippy::cast_possible_truncation,
    reason = "register indices are below 16,384"
)]
fn register(index: usize) -> u32 {
    index as u32
}

/// A high entry: the register index above its value's bits.
fn high_entry(index: usize, value: u8) -> u32 {
    register(index) << VALUE_BITS | u32::from(value)
}
