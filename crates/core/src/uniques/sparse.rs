//! The sparse register array: only non-zero registers, 2 bytes each.
//!
//! The 16,384 registers are cut into 16 blocks of 1,024. One `Vec<u16>`
//! holds, first, the 16 block ends (entries in blocks `0..=b`, a running
//! total), then every entry as `offset_in_block << 6 | value`, sorted by
//! register index. The block number is implied by the position, so an entry
//! fits in 16 bits (10 bits of offset, 6 of value) instead of 20.
//!
//! Invariants: the vector is empty (no non-zero register, no allocation) or
//! holds the 16 ends and at least one entry; entries are strictly increasing
//! within a block; no entry has value 0; at most [`MAX_ENTRIES`] entries, so
//! the heap never exceeds the 8,192-byte 4-bit array that replaces it. The
//! representation is therefore a function of the registers alone, and
//! derived equality is register equality.
//!
//! Setting a register is a binary search in its block (≈ n/16 entries) and,
//! for a new entry, a `memmove` of the entries after it and up to 16 end
//! updates. Many at once ([`Sparse::set_max_sorted`], the bulk inserts of a
//! minute's held-back users) cost one backward pass over the entries
//! instead: a sketch's first few thousand users otherwise moved kilobytes
//! each.

use super::hll::REGISTERS;
use super::nibble::NIBBLE_BYTES;

const BLOCK_BITS: u32 = 10;
const BLOCKS: usize = REGISTERS >> BLOCK_BITS;
const OFFSET_MASK: usize = (1 << BLOCK_BITS) - 1;
const VALUE_BITS: u32 = 6;
const VALUE_MASK: u16 = (1 << VALUE_BITS) - 1;

/// Most entries a sparse array holds: with the 16 block ends it then takes
/// exactly as many bytes as the 4-bit array that replaces it, so past it
/// that one is smaller.
pub(super) const MAX_ENTRIES: usize = NIBBLE_BYTES / 2 - BLOCKS;

/// What [`Sparse::set_max`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SetOutcome {
    /// The register already held at least that value.
    Unchanged,
    /// The register was raised.
    Changed,
    /// The register is zero and there is no room for another entry: the
    /// caller must move to the next form.
    Full,
}

/// Non-zero registers, sorted, 2 bytes each plus 32 bytes of block ends.
#[derive(Clone, Default, PartialEq, Eq)]
pub(super) struct Sparse {
    data: Vec<u16>,
}

impl Sparse {
    /// All registers zero, no allocation.
    pub(super) const fn new() -> Self {
        Self { data: Vec::new() }
    }

    /// Non-zero registers.
    pub(super) fn len(&self) -> usize {
        self.data.len().saturating_sub(BLOCKS)
    }

    /// Bytes allocated.
    pub(super) fn heap_bytes(&self) -> usize {
        self.data.capacity() * size_of::<u16>()
    }

    /// Range of `data` holding `block`'s entries (`data` non-empty).
    fn block_range(&self, block: usize) -> std::ops::Range<usize> {
        let start = match block {
            0 => 0,
            b => usize::from(self.data[b - 1]),
        };
        BLOCKS + start..BLOCKS + usize::from(self.data[block])
    }

    /// Position of `index`'s entry in `data`: `Ok` if present, `Err` where
    /// it would go.
    fn find(&self, index: usize) -> Result<usize, usize> {
        let range = self.block_range(index >> BLOCK_BITS);
        let offset = offset_of(index);
        let entries = &self.data[range.clone()];
        let pos = entries.partition_point(|&e| e >> VALUE_BITS < offset);
        match entries.get(pos) {
            Some(&e) if e >> VALUE_BITS == offset => Ok(range.start + pos),
            _ => Err(range.start + pos),
        }
    }

    /// Register `index` (< `REGISTERS`).
    pub(super) fn get(&self, index: usize) -> u8 {
        if self.data.is_empty() {
            return 0;
        }
        match self.find(index) {
            Ok(at) => (self.data[at] & VALUE_MASK) as u8,
            Err(_) => 0,
        }
    }

    /// Raises register `index` (< `REGISTERS`) to `value` (≤ 63) if lower.
    pub(super) fn set_max(&mut self, index: usize, value: u8) -> SetOutcome {
        if value == 0 {
            return SetOutcome::Unchanged;
        }
        if self.data.is_empty() {
            self.data.reserve_exact(BLOCKS + 8);
            self.data.resize(BLOCKS, 0);
        }
        let entry = offset_of(index) << VALUE_BITS | u16::from(value);
        match self.find(index) {
            Ok(at) => {
                if self.data[at] & VALUE_MASK >= u16::from(value) {
                    return SetOutcome::Unchanged;
                }
                self.data[at] = entry;
                SetOutcome::Changed
            }
            Err(_) if self.len() == MAX_ENTRIES => SetOutcome::Full,
            Err(at) => {
                if self.data.len() == self.data.capacity() {
                    // Grow by an eighth rather than double: the slack stays
                    // under 12.5%, which matters more here than the extra
                    // copies (a sketch gets at most 4,080 new entries), and
                    // the capacity never passes the 4-bit array's size.
                    let room = BLOCKS + MAX_ENTRIES - self.data.len();
                    self.data
                        .reserve_exact((self.data.len() / 8).clamp(8, 1024).min(room));
                }
                self.data.insert(at, entry);
                for end in &mut self.data[index >> BLOCK_BITS..BLOCKS] {
                    *end += 1;
                }
                SetOutcome::Changed
            }
        }
    }

    /// Raises many registers at once, as [`Sparse::set_max`] of each would:
    /// `updates` are `index << 8 | value` (index < `REGISTERS`, value 1..=63),
    /// sorted, one per index. Registers already present are raised where
    /// they are; the new ones are merged in with one backward pass over the
    /// entries, instead of a `memmove` each. `Full` when the new ones do not
    /// fit: the present ones may have been raised, none was added.
    pub(super) fn set_max_sorted(&mut self, updates: &[u32]) -> SetOutcome {
        let mut changed = false;
        let mut added = Vec::new();
        for &u in updates {
            let (index, value) = unpack(u);
            if self.data.is_empty() {
                added.push(u);
                continue;
            }
            match self.find(index) {
                Ok(at) => {
                    if self.data[at] & VALUE_MASK < u16::from(value) {
                        self.data[at] = offset_of(index) << VALUE_BITS | u16::from(value);
                        changed = true;
                    }
                }
                Err(_) => added.push(u),
            }
        }
        if added.is_empty() {
            return if changed {
                SetOutcome::Changed
            } else {
                SetOutcome::Unchanged
            };
        }
        if self.len() + added.len() > MAX_ENTRIES {
            return SetOutcome::Full;
        }
        if self.data.is_empty() {
            *self = Self::from_sorted(added.iter().map(|&u| unpack(u)), added.len());
            return SetOutcome::Changed;
        }
        let old_len = self.data.len();
        let new_len = old_len + added.len();
        if new_len > self.data.capacity() {
            // As in `set_max`: grow by an eighth (at least what is needed),
            // never past the 4-bit array's size.
            let room = BLOCKS + MAX_ENTRIES - old_len;
            let more = (old_len / 8).max(added.len()).clamp(8, 1024).min(room);
            self.data.reserve_exact(more.max(added.len()));
        }
        self.data.resize(new_len, 0);
        // From the end: each new entry goes after the old ones of a lower
        // index, which move up by the number of new entries still to place.
        // The block ends are read (not yet updated) to tell an old entry's
        // block.
        let (ends, entries) = self.data.split_at_mut(BLOCKS);
        let mut read = old_len - BLOCKS;
        let mut write = new_len - BLOCKS;
        let mut block = BLOCKS - 1;
        for &u in added.iter().rev() {
            let (index, value) = unpack(u);
            while read > 0 {
                let p = read - 1;
                while block > 0 && p < usize::from(ends[block - 1]) {
                    block -= 1;
                }
                let old = entries[p];
                if (block << BLOCK_BITS | usize::from(old >> VALUE_BITS)) < index {
                    break;
                }
                write -= 1;
                entries[write] = old;
                read = p;
            }
            write -= 1;
            entries[write] = offset_of(index) << VALUE_BITS | u16::from(value);
        }
        let mut per_block = [0u16; BLOCKS];
        for &u in &added {
            per_block[unpack(u).0 >> BLOCK_BITS] += 1;
        }
        let mut running = 0;
        for (end, n) in ends.iter_mut().zip(per_block) {
            running += n;
            *end += running;
        }
        SetOutcome::Changed
    }

    /// Builds from `(index, value)` pairs with strictly increasing indices,
    /// non-zero values and at most [`MAX_ENTRIES`] of them; `len` is their
    /// number (the allocation is exact).
    pub(super) fn from_sorted(entries: impl IntoIterator<Item = (usize, u8)>, len: usize) -> Self {
        if len == 0 {
            return Self::new();
        }
        let mut data = Vec::with_capacity(BLOCKS + len);
        data.resize(BLOCKS, 0u16);
        for (index, value) in entries {
            data.push(offset_of(index) << VALUE_BITS | u16::from(value));
            data[index >> BLOCK_BITS] += 1;
        }
        for b in 1..BLOCKS {
            data[b] += data[b - 1];
        }
        Self { data }
    }

    /// `(index, value)` of every non-zero register, by index.
    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, u8)> + '_ {
        let blocks = if self.data.is_empty() { 0 } else { BLOCKS };
        (0..blocks).flat_map(move |block| {
            self.data[self.block_range(block)].iter().map(move |&e| {
                (
                    block << BLOCK_BITS | usize::from(e >> VALUE_BITS),
                    (e & VALUE_MASK) as u8,
                )
            })
        })
    }

    /// Adds the register histogram (how many registers hold each value).
    pub(super) fn histogram(&self, hist: &mut [u32; 64]) {
        // At most 16,384 registers: the count fits.
        hist[0] += u32::try_from(REGISTERS - self.len()).unwrap_or(u32::MAX);
        // Four sub-histograms, as in `Dense::histogram`: most entries hold
        // 1 or 2, and back-to-back increments of one counter serialise.
        let mut lanes = [[0u32; 64]; 4];
        let entries = self.data.get(BLOCKS..).unwrap_or_default();
        let mut quads = entries.chunks_exact(4);
        for quad in &mut quads {
            for (lane, &e) in lanes.iter_mut().zip(quad) {
                lane[usize::from(e & VALUE_MASK)] += 1;
            }
        }
        for &e in quads.remainder() {
            lanes[0][usize::from(e & VALUE_MASK)] += 1;
        }
        for lane in &lanes {
            for (h, l) in hist.iter_mut().zip(lane) {
                *h += l;
            }
        }
    }

    /// Register-wise maximum into a raw one-byte-per-register array.
    pub(super) fn max_into(&self, raw: &mut [u8]) {
        // Block by block rather than through `iter`: this is the inner loop
        // of unions (60 minutes × ~700 entries for an hour), and plain
        // slices let the compiler drop most bounds checks.
        let Some((ends, entries)) = self.data.split_at_checked(BLOCKS) else {
            return;
        };
        let mut start = 0;
        for (registers, &end) in raw.chunks_exact_mut(1 << BLOCK_BITS).zip(ends) {
            let end = usize::from(end);
            for &e in &entries[start..end] {
                let r = &mut registers[usize::from(e >> VALUE_BITS)];
                *r = (*r).max((e & VALUE_MASK) as u8);
            }
            start = end;
        }
    }
}

/// A register update packed for sorting: `index << 8 | value` (index below
/// `REGISTERS`), so sorted updates are by index, then by value.
#[allow(
    clippy::cast_possible_truncation,
    reason = "an index below 2^14 shifted by 8 fits 32 bits"
)]
pub(super) fn pack(index: usize, value: u8) -> u32 {
    (index as u32) << 8 | u32::from(value)
}

/// The `(index, value)` of a [`pack`]ed update.
#[allow(clippy::cast_possible_truncation, reason = "masked to its low byte")]
pub(super) fn unpack(update: u32) -> (usize, u8) {
    ((update >> 8) as usize, (update & 0xff) as u8)
}

/// A register's offset within its block, as stored in an entry.
#[allow(
    clippy::cast_possible_truncation,
    reason = "masked to the offset's bits, fewer than 16"
)]
fn offset_of(index: usize) -> u16 {
    (index & OFFSET_MASK) as u16
}
