//! The dense register array: 16,384 six-bit registers packed exactly as in
//! Redis's dense HLL body, 12,288 bytes.
//!
//! Register `i` occupies bits `6·i .. 6·i+5` of the body read as one
//! little-endian bit stream, so every 4 registers fill exactly 3 bytes:
//! register `4g + k` is bits `6k .. 6k+5` of the 24-bit little-endian word
//! at bytes `3g .. 3g+2`. Working on those words never reads past the end,
//! unlike Redis's two-byte access, which relies on the string's trailing NUL.

use super::hll::DENSE_BYTES;

const MASK: u32 = 63;

/// A full register array in Redis's packed dense layout.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Dense {
    /// A fixed-size box: a thin pointer keeps `Hll` small inline.
    bytes: Box<[u8; DENSE_BYTES]>,
}

/// The little-endian 24-bit word of a 3-byte group.
fn word(b: &[u8]) -> u32 {
    u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16
}

impl Dense {
    /// Packs one byte per register (each ≤ 63).
    pub(super) fn from_raw(raw: &[u8]) -> Self {
        let mut bytes = Box::new([0; DENSE_BYTES]);
        for (out, r) in bytes.chunks_exact_mut(3).zip(raw.chunks_exact(4)) {
            let w = u32::from(r[0])
                | u32::from(r[1]) << 6
                | u32::from(r[2]) << 12
                | u32::from(r[3]) << 18;
            out.copy_from_slice(&w.to_le_bytes()[..3]);
        }
        Self { bytes }
    }

    /// Adopts a Redis dense body; `None` unless it is exactly
    /// `DENSE_BYTES` long.
    pub(super) fn from_body(body: &[u8]) -> Option<Self> {
        let bytes: &[u8; DENSE_BYTES] = body.try_into().ok()?;
        Some(Self {
            bytes: Box::new(*bytes),
        })
    }

    /// The Redis dense body.
    pub(super) fn body(&self) -> &[u8] {
        &self.bytes[..]
    }

    fn word(&self, group: usize) -> u32 {
        word(&self.bytes[3 * group..3 * group + 3])
    }

    /// The 4096 group words in order (a whole-array pass without bounds
    /// checks per group).
    fn words(&self) -> impl Iterator<Item = u32> + '_ {
        self.bytes.chunks_exact(3).map(word)
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
        for (mine, theirs) in self
            .bytes
            .chunks_exact_mut(3)
            .zip(other.bytes.chunks_exact(3))
        {
            let (a, b) = (word(mine), word(theirs));
            if b == 0 || a == b {
                continue;
            }
            let mut w = 0;
            for shift in [0, 6, 12, 18] {
                w |= ((a >> shift) & MASK).max((b >> shift) & MASK) << shift;
            }
            mine.copy_from_slice(&w.to_le_bytes()[..3]);
        }
    }

    /// Register-wise maximum into a raw one-byte-per-register array.
    pub(super) fn max_into(&self, raw: &mut [u8]) {
        const HIGH: u32 = 0x8080_8080;
        for (w, out) in self.words().zip(raw.chunks_exact_mut(4)) {
            if w == 0 {
                continue;
            }
            // The group's 4 registers as 4 bytes, then a byte-wise maximum
            // in one u32 (SWAR): every byte is < 64, so `(cur | 0x80) - new`
            // never borrows across bytes, and its high bit says cur >= new.
            let new =
                (w & MASK) | (w >> 6 & MASK) << 8 | (w >> 12 & MASK) << 16 | (w >> 18 & MASK) << 24;
            let cur = u32::from_le_bytes([out[0], out[1], out[2], out[3]]);
            let keep = (((cur | HIGH) - new) & HIGH) >> 7;
            let keep = keep * 0xff;
            out.copy_from_slice(&((cur & keep) | (new & !keep)).to_le_bytes());
        }
    }

    /// Adds the register histogram (how many registers hold each value).
    pub(super) fn histogram(&self, hist: &mut [u32; 64]) {
        // Eight sub-histograms, one per register of two groups: most
        // registers hold the same few values, and back-to-back increments
        // of one counter wait on each other's store.
        let mut lanes = [[0u32; 64]; 8];
        for six in self.bytes.chunks_exact(6) {
            let (a, b) = (word(&six[..3]), word(&six[3..]));
            for k in 0..4 {
                lanes[k][((a >> (6 * k)) & MASK) as usize] += 1;
                lanes[4 + k][((b >> (6 * k)) & MASK) as usize] += 1;
            }
        }
        for lane in &lanes {
            for (h, l) in hist.iter_mut().zip(lane) {
                *h += l;
            }
        }
    }

    /// `(index, value)` of every non-zero register, by index.
    pub(super) fn nonzero(&self) -> impl Iterator<Item = (usize, u8)> + '_ {
        self.words().enumerate().flat_map(|(group, w)| {
            (0..4).filter_map(move |k| {
                let v = ((w >> (6 * k)) & MASK) as u8;
                (v != 0).then_some((4 * group + k, v))
            })
        })
    }
}
