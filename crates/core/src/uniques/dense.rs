//! The dense register array: 16,384 six-bit registers packed exactly as in
//! Redis's dense HLL body, 12,288 bytes.
//!
//! Register `i` occupies bits `6·i .. 6·i+5` of the body read as one
//! little-endian bit stream, so every 4 registers fill exactly 3 bytes:
//! register `4g + k` is bits `6k .. 6k+5` of the 24-bit little-endian word
//! at bytes `3g .. 3g+2`. Working on those words never reads past the end,
//! unlike Redis's two-byte access, which relies on the string's trailing NUL.

use super::hll::{DENSE_BYTES, REGISTERS};

const MASK: u32 = 63;

/// A full register array in Redis's packed dense layout.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Dense {
    /// Always `DENSE_BYTES` long.
    bytes: Box<[u8]>,
}

impl Dense {
    /// All registers zero.
    pub(super) fn new() -> Self {
        Self {
            bytes: vec![0; DENSE_BYTES].into_boxed_slice(),
        }
    }

    /// Adopts a Redis dense body; `None` unless it is exactly
    /// `DENSE_BYTES` long.
    pub(super) fn from_body(body: &[u8]) -> Option<Self> {
        (body.len() == DENSE_BYTES).then(|| Self { bytes: body.into() })
    }

    /// The Redis dense body.
    pub(super) fn body(&self) -> &[u8] {
        &self.bytes
    }

    fn word(&self, group: usize) -> u32 {
        let b = &self.bytes[3 * group..3 * group + 3];
        u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16
    }

    fn set_word(&mut self, group: usize, w: u32) {
        let [b0, b1, b2, _] = w.to_le_bytes();
        self.bytes[3 * group..3 * group + 3].copy_from_slice(&[b0, b1, b2]);
    }

    /// Register `index` (< `REGISTERS`).
    pub(super) fn get(&self, index: usize) -> u8 {
        let shift = 6 * (index & 3);
        ((self.word(index >> 2) >> shift) & MASK) as u8
    }

    /// Raises register `index` to `rank` (≤ 63) if it is lower; tells
    /// whether it changed.
    pub(super) fn set_max(&mut self, index: usize, rank: u8) -> bool {
        let group = index >> 2;
        let shift = 6 * (index & 3);
        let w = self.word(group);
        if (w >> shift) & MASK >= u32::from(rank) {
            return false;
        }
        self.set_word(group, (w & !(MASK << shift)) | u32::from(rank) << shift);
        true
    }

    /// Register-wise maximum with `other`.
    pub(super) fn max_from(&mut self, other: &Dense) {
        for group in 0..REGISTERS / 4 {
            let (a, b) = (self.word(group), other.word(group));
            if b == 0 || a == b {
                continue;
            }
            let mut w = 0;
            for shift in [0, 6, 12, 18] {
                w |= ((a >> shift) & MASK).max((b >> shift) & MASK) << shift;
            }
            self.set_word(group, w);
        }
    }

    /// Register-wise maximum into a raw one-byte-per-register array.
    pub(super) fn max_into(&self, raw: &mut [u8]) {
        for (group, out) in raw.chunks_exact_mut(4).enumerate() {
            let w = self.word(group);
            if w == 0 {
                continue;
            }
            for (k, r) in out.iter_mut().enumerate() {
                let v = ((w >> (6 * k)) & MASK) as u8;
                *r = (*r).max(v);
            }
        }
    }

    /// Adds the register histogram (how many registers hold each value).
    pub(super) fn histogram(&self, hist: &mut [u32; 64]) {
        for group in 0..REGISTERS / 4 {
            let w = self.word(group);
            if w == 0 {
                // Most groups of a barely-dense sketch are empty: one add
                // instead of four.
                hist[0] += 4;
                continue;
            }
            for shift in [0, 6, 12, 18] {
                hist[((w >> shift) & MASK) as usize] += 1;
            }
        }
    }

    /// `(index, value)` of every non-zero register, by index.
    pub(super) fn nonzero(&self) -> impl Iterator<Item = (usize, u8)> + '_ {
        (0..REGISTERS / 4).flat_map(move |group| {
            let w = self.word(group);
            (0..4).filter_map(move |k| {
                let v = ((w >> (6 * k)) & MASK) as u8;
                (v != 0).then_some((4 * group + k, v))
            })
        })
    }
}
