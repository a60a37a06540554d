//! A HyperLogLog that answers exactly as Redis 7.0's `PFADD` / `PFCOUNT` /
//! `PFMERGE`, stored compactly.
//!
//! # What is Redis-exact
//!
//! * **Registers.** 16,384 registers (P = 14) of 6 bits. An element's
//!   MurmurHash64A `h` (seed [`REDIS_HLL_SEED`]) selects register
//!   `h & 0x3fff` and offers the value `1 + trailing_zeros((h >> 14) | 1 << 50)`
//!   (1..=51), kept if larger ([`pattern`]). Index and value depend on the
//!   hash only, so [`Hll::insert_hash`] of `murmur64a(id)` sets the same
//!   registers as `PFADD key id`, in any order.
//! * **Estimate.** [`Hll::count`] is Redis's `hllCount`: the register
//!   histogram, then Otmar Ertl's improved estimator (`hllTau`, `hllSigma`),
//!   `llroundl(ALPHA_INF·m·m / z)`, with the same floating-point operations
//!   in the same order, so the result is the same integer. It depends on the
//!   histogram only, hence not on the encoding.
//! * **Union.** [`Hll::merge_from`] is `PFMERGE` (register-wise maximum);
//!   [`Hll::union_count`] is `PFCOUNT k1 … kn`, computed in one 16 KiB
//!   scratch array, without copying any sketch.
//! * **Wire format.** [`Hll::to_redis_bytes`] / [`Hll::from_redis_bytes`]
//!   speak the string Redis stores (`GET key`): the 16-byte header
//!   (`"HYLL"`, encoding, 3 unused bytes, cached cardinality little-endian
//!   with bit 63 meaning "stale"), then the dense body (12,288 bytes) or the
//!   sparse opcodes (`ZERO` `00xxxxxx`, `XZERO` `01xxxxxx yyyyyyyy`,
//!   `VAL` `1vvvvvxx`).
//!
//! # What may differ from `GET key`, and why it does not matter
//!
//! Redis edits its sparse string in place, and the result depends on the
//! order of the `PFADD`s in two corner cases; the registers never do:
//!
//! * a run of 5 or more equal adjacent non-zero registers is split into
//!   `VAL` opcodes (at most 4 registers each) in an order-dependent way. We
//!   always split greedily from the left.
//! * Redis turns a key dense once an edit would make the string longer than
//!   3,000 bytes (`hll-sparse-max-bytes`) or a register exceeds 32, and never
//!   back. We write sparse exactly when the greedy sparse string fits in
//!   3,000 bytes and every register is at most 32; Redis may already be
//!   dense when it is within a few bytes of the limit. (`PFMERGE` also
//!   writes dense whenever one of its inputs is dense, whatever the result.)
//!
//! Both sides parse either form to the same registers, and the count never
//! depends on the encoding. The cached cardinality we write is
//! [`Hll::count`], valid, which is what Redis holds after a `PFCOUNT key`
//! (only crafted registers reach an estimate with bit 63 set, which then
//! reads as "stale" on both sides).
//!
//! # Memory
//!
//! In memory the registers take the first of three forms that can hold
//! them, each never larger than the next:
//!
//! 1. **sparse**, up to 4,080 non-zero registers: 2 bytes each plus 32
//!    (`sparse.rs`), so a 700-user minute is ≈ 1.5 KiB;
//! 2. **nibble**: 4 bits a register (8,192 bytes) plus 4 bytes for each
//!    register of 15 or more, at most 1,024 of them (`nibble.rs`): ≈ 8.2 KiB
//!    at 1M users, ≈ 10.4 KiB at 10M;
//! 3. **dense**: Redis's packed 6-bit array, 12,288 bytes (beyond ~17M
//!    users, or crafted registers).
//!
//! The form depends only on the registers (how many are non-zero, how many
//! are 15 or more; both only grow), so equal registers give equal values,
//! and every round trip keeps the form.

use std::fmt;

use thiserror::Error;

use super::dense::Dense;
use super::murmur::{REDIS_HLL_SEED, murmur64a};
use super::nibble::Nibble;
use super::sparse::{self, SetOutcome, Sparse};

/// Fewest held-back inserts worth sorting and merging into the sparse
/// array in one pass rather than one at a time.
const SPARSE_BULK_MIN: usize = 16;

/// Bits of the hash that select a register.
pub const P: u32 = 14;
/// Number of registers.
pub const REGISTERS: usize = 1 << P;
/// Bits of the hash left for the rank.
const Q: u32 = 64 - P;
/// Bytes of the packed dense body (16,384 registers × 6 bits).
pub const DENSE_BYTES: usize = REGISTERS * 6 / 8;
/// Bytes of the Redis HLL header.
pub const HEADER_BYTES: usize = 16;
/// Redis's default `hll-sparse-max-bytes`: the longest sparse string
/// (header included) Redis keeps before going dense.
pub const REDIS_SPARSE_MAX_BYTES: usize = 3000;
/// Largest register value the sparse opcodes can hold.
const SPARSE_MAX_VALUE: u8 = 32;
/// Largest run of one value a `VAL` opcode covers.
const VAL_MAX_LEN: u8 = 4;
/// Longest zero run of a one-byte `ZERO` opcode.
const ZERO_MAX_LEN: usize = 64;

const MAGIC: &[u8; 4] = b"HYLL";
const ENCODING_DENSE: u8 = 0;
const ENCODING_SPARSE: u8 = 1;
/// `0.5 / ln 2`, Redis's `HLL_ALPHA_INF` (`0.721347520444481703680`),
/// written with the digits that round to the same `f64`.
const ALPHA_INF: f64 = 0.721_347_520_444_481_7;

/// The register an element hash goes to and the value it offers, as
/// Redis's `hllPatLen`: `(hash & 0x3fff, 1 + trailing zeros of the next 50
/// bits)`, the value capped at 51 by the forced bit 50.
#[allow(
    clippy::cast_possible_truncation,
    reason = "the index is masked to 14 bits and the rank is at most 51"
)]
pub fn pattern(hash: u64) -> (usize, u8) {
    let index = (hash & (REGISTERS as u64 - 1)) as usize;
    let rank = ((hash >> P) | 1 << Q).trailing_zeros() as u8 + 1;
    (index, rank)
}

/// Why a byte string is not a Redis HLL.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HllParseError {
    /// Shorter than the 16-byte header.
    #[error("an HLL string has a 16-byte header, got {len} bytes")]
    TooShort {
        /// Length received.
        len: usize,
    },
    /// The first 4 bytes are not `HYLL`.
    #[error("not an HLL string: it does not start with \"HYLL\"")]
    BadMagic,
    /// The encoding byte is neither 0 (dense) nor 1 (sparse).
    #[error("unknown HLL encoding {0}")]
    UnknownEncoding(u8),
    /// A dense body that is not 12,288 bytes.
    #[error("a dense HLL body is 12288 bytes, got {len}")]
    DenseLength {
        /// Body length received.
        len: usize,
    },
    /// Sparse opcodes that do not cover exactly the 16,384 registers (a
    /// two-byte opcode cut short counts as not covering).
    #[error("sparse HLL opcodes must cover 16384 registers, they cover {covered}")]
    SparseLength {
        /// Registers covered, possibly more than 16,384.
        covered: usize,
    },
}

/// How the registers are held. Which one is a function of the registers
/// (see [`Repr::from_raw`]), so derived equality is register equality.
#[derive(Clone, PartialEq, Eq)]
enum Repr {
    /// At most `sparse::MAX_ENTRIES` (4,080) non-zero registers.
    Sparse(Sparse),
    /// More, of which at most `nibble::HIGH_MAX` (1,024) are 15 or more.
    Nibble(Nibble),
    /// More still: Redis's packed 6-bit array.
    Dense(Dense),
}

impl Repr {
    /// The representation of these registers (one byte each): the first of
    /// sparse, nibble, dense that can hold them. Both criteria only grow
    /// with the registers, so a sketch only ever moves forward in that
    /// order.
    fn from_raw(raw: &[u8]) -> Repr {
        let nonzero = raw.iter().filter(|&&v| v != 0).count();
        if nonzero <= sparse::MAX_ENTRIES {
            let entries = raw.iter().enumerate().filter(|&(_, &v)| v != 0);
            return Repr::Sparse(Sparse::from_sorted(entries.map(|(i, &v)| (i, v)), nonzero));
        }
        match Nibble::from_raw(raw) {
            Some(nibble) => Repr::Nibble(nibble),
            None => Repr::Dense(Dense::from_raw(raw)),
        }
    }
}

/// A Redis-compatible HyperLogLog (see the module documentation).
#[derive(Clone, PartialEq, Eq)]
pub struct Hll {
    repr: Repr,
}

impl Default for Hll {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Hll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let form = match self.repr {
            Repr::Sparse(_) => "sparse",
            Repr::Nibble(_) => "nibble",
            Repr::Dense(_) => "dense",
        };
        f.debug_struct("Hll")
            .field("form", &form)
            .field("nonzero_registers", &self.nonzero_registers())
            .finish()
    }
}

impl Hll {
    /// An empty sketch (no allocation).
    pub const fn new() -> Self {
        Self {
            repr: Repr::Sparse(Sparse::new()),
        }
    }

    /// `PFADD` of one element; tells whether a register changed.
    pub fn insert(&mut self, element: &[u8]) -> bool {
        self.insert_hash(murmur64a(element, REDIS_HLL_SEED))
    }

    /// Adds an element by its hash, `murmur64a(element, REDIS_HLL_SEED)`;
    /// tells whether a register changed.
    pub fn insert_hash(&mut self, hash: u64) -> bool {
        let (index, rank) = pattern(hash);
        self.set_max(index, rank)
    }

    /// Adds many elements by their hashes: the same registers as one
    /// [`insert_hash`](Self::insert_hash) each, in one tight loop over the
    /// array form, so the cache misses of one insert overlap the next's.
    pub fn insert_hashes(&mut self, hashes: &[u64]) {
        let mut rest = hashes;
        while let Some((&first, tail)) = rest.split_first() {
            match &mut self.repr {
                Repr::Dense(dense) => {
                    for &hash in rest {
                        let (index, rank) = pattern(hash);
                        dense.set_max(index, rank);
                    }
                    return;
                }
                Repr::Nibble(nibble) => {
                    let done = rest
                        .iter()
                        .take_while(|&&hash| {
                            let (index, rank) = pattern(hash);
                            nibble.set_max(index, rank) != SetOutcome::Full
                        })
                        .count();
                    // The one that did not fit changes the form; the rest
                    // go on in the new one.
                    let Some(&full) = rest.get(done) else {
                        return;
                    };
                    self.insert_hash(full);
                    rest = &rest[done + 1..];
                }
                Repr::Sparse(sparse) if rest.len() >= SPARSE_BULK_MIN => {
                    // One insert into the sparse array moves the entries
                    // after it (kilobytes once it holds a few thousand);
                    // sorted together, the inserts cost one pass over it.
                    let mut updates: Vec<u32> = rest
                        .iter()
                        .map(|&h| {
                            let (index, rank) = pattern(h);
                            sparse::pack(index, rank)
                        })
                        .collect();
                    updates.sort_unstable();
                    // Sorted by value within an index: the last of a run is
                    // its largest.
                    updates.dedup_by(|later, kept| {
                        let same = *later >> 8 == *kept >> 8;
                        if same {
                            *kept = *later;
                        }
                        same
                    });
                    if sparse.set_max_sorted(&updates) == SetOutcome::Full {
                        // Rare: past the sparse form, as in `set_max`.
                        let mut raw = RawRegisters::new();
                        raw.merge(self);
                        for &u in &updates {
                            let (index, value) = sparse::unpack(u);
                            let r = &mut raw.registers[index];
                            *r = (*r).max(value);
                        }
                        self.repr = Repr::from_raw(&raw.registers);
                    }
                    return;
                }
                Repr::Sparse(_) => {
                    self.insert_hash(first);
                    rest = tail;
                }
            }
        }
    }

    /// Register-wise maximum of the sparse registers with `entries` (an
    /// index-sorted list without repeats, made again by each call): sparse
    /// again if the union fits, else the next form that holds it.
    fn merge_sorted_into_sparse<I: Iterator<Item = (usize, u8)>>(
        &mut self,
        entries: impl Fn() -> I,
    ) {
        let Repr::Sparse(sparse) = &mut self.repr else {
            return;
        };
        // Counted first so the array is allocated once, exactly.
        let len = merge_sorted(sparse.iter(), entries()).count();
        if len <= sparse::MAX_ENTRIES {
            let merged = Sparse::from_sorted(merge_sorted(sparse.iter(), entries()), len);
            *sparse = merged;
        } else {
            let mut raw = RawRegisters::new();
            sparse.max_into(&mut raw.registers);
            for (index, value) in entries() {
                let r = &mut raw.registers[index];
                *r = (*r).max(value);
            }
            self.repr = Repr::from_raw(&raw.registers);
        }
    }

    fn set_max(&mut self, index: usize, value: u8) -> bool {
        let outcome = match &mut self.repr {
            Repr::Dense(dense) => return dense.set_max(index, value),
            Repr::Nibble(nibble) => nibble.set_max(index, value),
            Repr::Sparse(sparse) => sparse.set_max(index, value),
        };
        match outcome {
            SetOutcome::Unchanged => false,
            SetOutcome::Changed => true,
            SetOutcome::Full => {
                // Rare (once or twice in a sketch's life): go through one
                // byte per register and let `from_raw` pick the next form.
                let mut raw = RawRegisters::new();
                raw.merge(self);
                raw.registers[index] = value;
                self.repr = Repr::from_raw(&raw.registers);
                true
            }
        }
    }

    /// Register `index`, or `None` past the last one.
    pub fn register(&self, index: usize) -> Option<u8> {
        (index < REGISTERS).then(|| match &self.repr {
            Repr::Sparse(sparse) => sparse.get(index),
            Repr::Nibble(nibble) => nibble.get(index),
            Repr::Dense(dense) => dense.get(index),
        })
    }

    /// `(index, value)` of every non-zero register, by index.
    pub(super) fn nonzero(&self) -> Box<dyn Iterator<Item = (usize, u8)> + '_> {
        match &self.repr {
            Repr::Sparse(sparse) => Box::new(sparse.iter()),
            Repr::Nibble(nibble) => Box::new(nibble.nonzero()),
            Repr::Dense(dense) => Box::new(dense.nonzero()),
        }
    }

    /// How many registers are non-zero.
    pub fn nonzero_registers(&self) -> usize {
        match &self.repr {
            Repr::Sparse(sparse) => sparse.len(),
            _ => self.nonzero().count(),
        }
    }

    /// Whether the registers are held as an array of all 16,384 (4 or 6
    /// bits each) rather than as a sparse list.
    pub fn is_dense(&self) -> bool {
        !matches!(self.repr, Repr::Sparse(_))
    }

    /// Heap bytes held: the allocations' capacity (allocator overhead not
    /// included). Never more than [`DENSE_BYTES`].
    pub fn heap_bytes(&self) -> usize {
        match &self.repr {
            Repr::Sparse(sparse) => sparse.heap_bytes(),
            Repr::Nibble(nibble) => nibble.heap_bytes(),
            Repr::Dense(_) => DENSE_BYTES,
        }
    }

    fn histogram(&self, hist: &mut [u32; 64]) {
        match &self.repr {
            Repr::Sparse(sparse) => sparse.histogram(hist),
            Repr::Nibble(nibble) => nibble.histogram(hist),
            Repr::Dense(dense) => dense.histogram(hist),
        }
    }

    /// The estimate, as `PFCOUNT key` returns it.
    pub fn count(&self) -> u64 {
        let mut hist = [0; 64];
        self.histogram(&mut hist);
        estimate(&hist)
    }

    /// `PFMERGE`: every register becomes the larger of the two.
    pub fn merge_from(&mut self, other: &Hll) {
        match (&mut self.repr, &other.repr) {
            (_, Repr::Sparse(o)) if o.len() == 0 => {}
            (Repr::Dense(dense), Repr::Dense(o)) => dense.max_from(o),
            (Repr::Sparse(_), Repr::Sparse(o)) => self.merge_sorted_into_sparse(|| o.iter()),
            (_, Repr::Sparse(o)) => {
                for (index, value) in o.iter() {
                    self.set_max(index, value);
                }
            }
            _ => {
                let mut raw = RawRegisters::new();
                raw.merge(self);
                raw.merge(other);
                self.repr = Repr::from_raw(&raw.registers);
            }
        }
    }

    /// `PFCOUNT k1 … kn`: the estimate of the union of `parts`, without
    /// copying any of them. No parts count 0.
    pub fn union_count<'a>(parts: impl IntoIterator<Item = &'a Hll>) -> u64 {
        let mut raw = RawRegisters::new();
        for part in parts {
            raw.merge(part);
        }
        raw.count()
    }

    /// The string Redis would store for these registers (see the module
    /// documentation for when the encoding may differ from Redis's), with a
    /// valid cached cardinality.
    pub fn to_redis_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[ENCODING_SPARSE, 0, 0, 0]);
        // The cached cardinality, valid (bit 63 clear) unless the estimate
        // itself has bit 63 set, as Redis would store it too.
        out.extend_from_slice(&self.count().to_le_bytes());
        if !write_sparse(self.nonzero(), &mut out) {
            out.truncate(HEADER_BYTES);
            out[4] = ENCODING_DENSE;
            match &self.repr {
                Repr::Dense(dense) => out.extend_from_slice(dense.body()),
                _ => {
                    let mut raw = RawRegisters::new();
                    raw.merge(self);
                    out.extend_from_slice(Dense::from_raw(&raw.registers).body());
                }
            }
        }
        out
    }

    /// Parses a Redis HLL string (dense or sparse; the cached cardinality
    /// is ignored, counts are always recomputed). Never panics.
    pub fn from_redis_bytes(bytes: &[u8]) -> Result<Hll, HllParseError> {
        if bytes.len() < HEADER_BYTES {
            return Err(HllParseError::TooShort { len: bytes.len() });
        }
        let (header, body) = bytes.split_at(HEADER_BYTES);
        if &header[..4] != MAGIC {
            return Err(HllParseError::BadMagic);
        }
        let mut raw = RawRegisters::new();
        match header[4] {
            ENCODING_DENSE => {
                let dense =
                    Dense::from_body(body).ok_or(HllParseError::DenseLength { len: body.len() })?;
                dense.max_into(&mut raw.registers);
            }
            ENCODING_SPARSE => read_sparse(body, &mut raw.registers)?,
            other => return Err(HllParseError::UnknownEncoding(other)),
        }
        Ok(Hll {
            repr: Repr::from_raw(&raw.registers),
        })
    }
}

/// Union of two index-sorted register lists, the larger value on a tie,
/// as it goes (no allocation).
fn merge_sorted(
    a: impl Iterator<Item = (usize, u8)>,
    b: impl Iterator<Item = (usize, u8)>,
) -> impl Iterator<Item = (usize, u8)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (None, None) => None,
        (Some(_), None) => a.next(),
        (None, Some(_)) => b.next(),
        (Some(&(ia, va)), Some(&(ib, vb))) => {
            if ia < ib {
                a.next()
            } else if ib < ia {
                b.next()
            } else {
                a.next();
                b.next();
                Some((ia, va.max(vb)))
            }
        }
    })
}

/// Appends the sparse opcodes for these index-sorted non-zero registers;
/// `false` (with `out` partly written) if Redis would not keep them sparse:
/// a value over 32 or a string over [`REDIS_SPARSE_MAX_BYTES`].
fn write_sparse(registers: impl Iterator<Item = (usize, u8)>, out: &mut Vec<u8>) -> bool {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a run is at most 16,384 registers: `l` fits 14 bits, split over the opcode's two bytes"
    )]
    fn zeros(out: &mut Vec<u8>, len: usize) {
        let l = len - 1;
        if len <= ZERO_MAX_LEN {
            out.push(l as u8);
        } else {
            out.extend_from_slice(&[0x40 | (l >> 8) as u8, (l & 0xff) as u8]);
        }
    }
    fn val(out: &mut Vec<u8>, (value, len): (u8, u8)) {
        out.push(0x80 | (value - 1) << 2 | (len - 1));
    }

    // First register not yet written, and the VAL run being built (it ends
    // just before `next`).
    let mut next = 0;
    let mut run: Option<(u8, u8)> = None;
    for (index, value) in registers {
        if value > SPARSE_MAX_VALUE || out.len() > REDIS_SPARSE_MAX_BYTES {
            return false;
        }
        if let Some((v, len)) = run {
            if index == next && v == value && len < VAL_MAX_LEN {
                run = Some((v, len + 1));
                next += 1;
                continue;
            }
            val(out, (v, len));
        }
        if index > next {
            zeros(out, index - next);
        }
        run = Some((value, 1));
        next = index + 1;
    }
    if let Some(run) = run {
        val(out, run);
    }
    if next < REGISTERS {
        zeros(out, REGISTERS - next);
    }
    out.len() <= REDIS_SPARSE_MAX_BYTES
}

/// Writes the registers of a sparse body into `raw` (all zero), checking
/// that the opcodes cover exactly the 16,384 registers.
fn read_sparse(body: &[u8], raw: &mut [u8]) -> Result<(), HllParseError> {
    let mut index = 0usize;
    let mut bytes = body.iter();
    while let Some(&op) = bytes.next() {
        let len = match op >> 6 {
            0b00 => usize::from(op & 0x3f) + 1,
            0b01 => match bytes.next() {
                Some(&low) => (usize::from(op & 0x3f) << 8 | usize::from(low)) + 1,
                None => return Err(HllParseError::SparseLength { covered: index }),
            },
            _ => {
                let len = usize::from(op & 0x3) + 1;
                if let Some(run) = raw.get_mut(index..index + len) {
                    run.fill((op >> 2 & 0x1f) + 1);
                }
                len
            }
        };
        index += len;
        if index > REGISTERS {
            return Err(HllParseError::SparseLength { covered: index });
        }
    }
    if index == REGISTERS {
        Ok(())
    } else {
        Err(HllParseError::SparseLength { covered: index })
    }
}

/// One byte per register, for unions: Redis's `HLL_RAW` scratch array.
#[derive(Clone)]
pub(super) struct RawRegisters {
    registers: Box<[u8]>,
}

impl RawRegisters {
    /// All zero.
    pub(super) fn new() -> Self {
        Self {
            registers: vec![0; REGISTERS].into_boxed_slice(),
        }
    }

    /// Register-wise maximum with `hll`.
    pub(super) fn merge(&mut self, hll: &Hll) {
        match &hll.repr {
            Repr::Sparse(sparse) => sparse.max_into(&mut self.registers),
            Repr::Nibble(nibble) => nibble.max_into(&mut self.registers),
            Repr::Dense(dense) => dense.max_into(&mut self.registers),
        }
    }

    /// Adds an element by its hash.
    pub(super) fn insert_hash(&mut self, hash: u64) {
        let (index, rank) = pattern(hash);
        let r = &mut self.registers[index];
        *r = (*r).max(rank);
    }

    /// Register `index` (below [`REGISTERS`]).
    pub(super) fn get(&self, index: usize) -> u8 {
        self.registers[index]
    }

    /// Raises register `index` to `rank` if that is more; returns the
    /// value it had when it did.
    pub(super) fn raise(&mut self, index: usize, rank: u8) -> Option<u8> {
        let r = &mut self.registers[index];
        (rank > *r).then(|| std::mem::replace(r, rank))
    }

    /// The estimate of the registers.
    pub(super) fn count(&self) -> u64 {
        estimate(&self.histogram())
    }

    /// How many registers hold each value.
    pub(super) fn histogram(&self) -> [u32; 64] {
        // Eight sub-histograms, as in `Dense::histogram`, and all-zero
        // words skipped as Redis does (unions of small sketches are mostly
        // zeros).
        let mut lanes = [[0u32; 64]; 8];
        let mut zeros = 0;
        for chunk in self.registers.chunks_exact(8) {
            if chunk.iter().all(|&r| r == 0) {
                zeros += 8;
                continue;
            }
            for (lane, &r) in lanes.iter_mut().zip(chunk) {
                lane[usize::from(r & 63)] += 1;
            }
        }
        let mut hist = [0u32; 64];
        hist[0] = zeros;
        for lane in &lanes {
            for (h, l) in hist.iter_mut().zip(lane) {
                *h += l;
            }
        }
        hist
    }
}

/// Redis's `hllCount` from a register histogram (Ertl's estimator), with
/// the same operations in the same order.
pub(super) fn estimate(hist: &[u32; 64]) -> u64 {
    // Only crafted registers (every one at 50 or more, say) reach 2^63 and
    // beyond, up to infinity when z is 0. There `llroundl` overflows, which
    // on x86-64 gives i64::MIN; Redis returns it as 2^63 (`PFCOUNT` replies
    // -9223372036854775808). Saturating to that keeps the same answer.
    const OVERFLOW: f64 = 9_223_372_036_854_775_808.0; // 2^63
    let m = REGISTERS as f64;
    let mut z = m * tau((m - f64::from(hist[Q as usize + 1])) / m);
    for &h in hist[1..=Q as usize].iter().rev() {
        z += f64::from(h);
        z *= 0.5;
    }
    z += m * sigma(f64::from(hist[0]) / m);
    // `llroundl`: round half away from zero, as `f64::round`. All registers
    // zero makes z infinite and the estimate 0.
    let e = (ALPHA_INF * m * m / z).round();
    if e >= OVERFLOW {
        1 << 63
    } else {
        // `e` is a finite, non-negative whole number below 2^63 here.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked above: 0 <= e < 2^63, a whole number"
        )]
        let e = e as u64;
        e
    }
}

/// Redis's `hllSigma`.
fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if previous == z {
            return z;
        }
    }
}

/// Redis's `hllTau`. Its `pow(1 - x, 2)` is a product: compilers lower
/// `pow(v, 2.0)` to `v * v`, which is also the correctly rounded square.
fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        let d = 1.0 - x;
        z -= d * d * y;
        if previous == z {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::items_after_statements,
    reason = "test code: register values built below 64 by construction; helpers next to their use"
)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::uniques::nibble;

    /// A deterministic stream of well-mixed 64-bit values (SplitMix64).
    fn hashes(seed: u64, n: usize) -> impl Iterator<Item = u64> {
        let mut state = seed;
        (0..n).map(move |_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    }

    fn hll_of(hashes: impl IntoIterator<Item = u64>) -> Hll {
        let mut hll = Hll::new();
        for h in hashes {
            hll.insert_hash(h);
        }
        hll
    }

    /// The obvious model: one byte per register.
    fn model_of(hashes: impl IntoIterator<Item = u64>) -> Vec<u8> {
        let mut regs = vec![0u8; REGISTERS];
        for h in hashes {
            let (i, r) = pattern(h);
            regs[i] = regs[i].max(r);
        }
        regs
    }

    fn registers(hll: &Hll) -> Vec<u8> {
        (0..REGISTERS).map(|i| hll.register(i).unwrap()).collect()
    }

    /// The hash that sets register `index` to `value` (1..=51).
    fn hash_for(index: usize, value: u8) -> u64 {
        match value {
            // 51 comes from the forced bit: all 50 upper bits zero.
            51 => index as u64,
            v => index as u64 | 1 << (P + u32::from(v) - 1),
        }
    }

    #[test]
    fn pattern_extremes() {
        assert_eq!(pattern(0), (0, 51));
        assert_eq!(pattern(u64::MAX), (REGISTERS - 1, 1));
        assert_eq!(pattern(1 << 14), (0, 1));
        assert_eq!(pattern(1 << 63 | 5), (5, 50));
        for value in 1..=51 {
            assert_eq!(pattern(hash_for(77, value)), (77, value));
        }
    }

    /// `PFCOUNT` after `PFADD c user-0 … user-(n-1)` on redis-server 7.0.15,
    /// with the encoding `GET c` showed (1 = sparse).
    const REDIS_COUNTS: [(usize, u64, u8); 21] = [
        (1, 1, 1),
        (2, 2, 1),
        (10, 10, 1),
        (100, 99, 1),
        (128, 126, 1),
        (129, 127, 1),
        (200, 199, 1),
        (500, 496, 1),
        (700, 700, 1),
        (1000, 1003, 1),
        (1500, 1505, 1),
        (2000, 2006, 0),
        (3000, 3001, 0),
        (5000, 4970, 0),
        (6128, 6105, 0),
        (6129, 6106, 0),
        (10000, 9957, 0),
        (20000, 19980, 0),
        (50000, 49929, 0),
        (100_000, 100_165, 0),
        (200_000, 200_598, 0),
    ];

    #[test]
    fn counts_match_redis() {
        let mut hll = Hll::new();
        let mut added = 0;
        for (n, expected, encoding) in REDIS_COUNTS {
            for i in added..n {
                hll.insert(format!("user-{i}").as_bytes());
            }
            added = n;
            assert_eq!(hll.count(), expected, "{n} users");
            let union = Hll::union_count([&hll, &Hll::new()]);
            assert_eq!(union, expected, "{n} users, as a union");
            assert_eq!(hll.to_redis_bytes()[4], encoding, "{n} users");
        }
    }

    #[test]
    fn empty_counts_zero() {
        assert_eq!(Hll::new().count(), 0);
        assert_eq!(Hll::union_count([]), 0);
        assert_eq!(Hll::new().heap_bytes(), 0);
    }

    /// A dense Redis string with these registers and a stale cache.
    fn dense_bytes(values: impl Fn(usize) -> u8) -> Vec<u8> {
        let raw: Vec<u8> = (0..REGISTERS).map(values).collect();
        let mut bytes = b"HYLL\0\0\0\0\0\0\0\0\0\0\0\x80".to_vec();
        bytes.extend_from_slice(Dense::from_raw(&raw).body());
        bytes
    }

    /// Crafted registers, `SET` on redis-server 7.0.15 then `PFCOUNT`: an
    /// estimate of 2^63 or more overflows `llroundl` and Redis answers
    /// -2^63, i.e. 2^63 as its unsigned result.
    #[test]
    fn extreme_registers_match_redis() {
        type Registers = fn(usize) -> u8;
        let cases: [(&str, Registers, u64); 6] = [
            ("all 51", |_| 51, 1 << 63),
            ("all 63", |_| 63, 1 << 63),
            ("all 52", |_| 52, 1 << 63),
            ("all 50", |_| 50, 1 << 63),
            ("half 51", |i| if i < 8192 { 51 } else { 0 }, 13268),
            ("one 51", |i| if i == 0 { 51 } else { 0 }, 1),
        ];
        for (name, values, redis) in cases {
            let hll = Hll::from_redis_bytes(&dense_bytes(values)).unwrap();
            assert_eq!(hll.count(), redis, "{name}");
            assert_eq!(Hll::union_count([&hll]), redis, "{name}");
        }
    }

    fn form(hll: &Hll) -> &'static str {
        match hll.repr {
            Repr::Sparse(_) => "sparse",
            Repr::Nibble(_) => "nibble",
            Repr::Dense(_) => "dense",
        }
    }

    /// Checks everything observable against the one-byte-per-register model.
    fn check(hll: &Hll, model: &[u8]) {
        assert_eq!(registers(hll), model);
        let nonzero = model.iter().filter(|&&v| v != 0).count();
        assert_eq!(hll.nonzero_registers(), nonzero);
        let mut raw = RawRegisters::new();
        raw.registers.copy_from_slice(model);
        assert_eq!(hll.count(), raw.count(), "estimate from any form");
        assert!(hll.heap_bytes() <= DENSE_BYTES);
        let back = Hll::from_redis_bytes(&hll.to_redis_bytes()).unwrap();
        assert_eq!(&back, hll);
        assert_eq!(form(&back), form(hll));
    }

    #[test]
    fn moves_sparse_then_nibble_then_dense_without_changing_anything() {
        let mut hll = Hll::new();
        let mut model = vec![0u8; REGISTERS];
        fn set(hll: &mut Hll, model: &mut [u8], index: usize, value: u8) {
            let changed = value > model[index];
            model[index] = model[index].max(value);
            assert_eq!(hll.insert_hash(hash_for(index, value)), changed);
        }
        // Sparse up to 4,080 non-zero registers (values 1..=14).
        for i in 0..sparse::MAX_ENTRIES {
            set(&mut hll, &mut model, 4 * i, (i % 14) as u8 + 1);
        }
        assert_eq!(form(&hll), "sparse");
        set(&mut hll, &mut model, 0, 1); // no new register
        assert_eq!(form(&hll), "sparse");
        assert!(hll.heap_bytes() <= nibble::NIBBLE_BYTES);
        check(&hll, &model);

        set(&mut hll, &mut model, 1, 3);
        assert_eq!(form(&hll), "nibble");
        assert_eq!(hll.heap_bytes(), nibble::NIBBLE_BYTES);
        check(&hll, &model);

        // 1,024 registers of 15 and more, some raised again.
        for k in 0..nibble::HIGH_MAX {
            set(&mut hll, &mut model, 2 + 4 * k, 15 + (k % 36) as u8);
        }
        for k in (0..nibble::HIGH_MAX).step_by(7) {
            set(&mut hll, &mut model, 2 + 4 * k, 51);
            set(&mut hll, &mut model, 2 + 4 * k, 40); // lower: no change
        }
        set(&mut hll, &mut model, 4, 14); // a nibble register, raised in place
        assert_eq!(form(&hll), "nibble");
        check(&hll, &model);

        set(&mut hll, &mut model, 3, 15);
        assert_eq!(form(&hll), "dense");
        assert_eq!(hll.heap_bytes(), DENSE_BYTES);
        check(&hll, &model);
        set(&mut hll, &mut model, 3, 51);
        check(&hll, &model);
    }

    #[test]
    fn merge_equals_union_count_and_model() {
        for (na, nb) in [
            (0, 0),
            (10, 0),
            (0, 10),
            (300, 5000),
            (5000, 5000),
            (20_000, 40),
        ] {
            let a: Vec<u64> = hashes(1, na).collect();
            let b: Vec<u64> = hashes(2, nb).collect();
            let (ha, hb) = (hll_of(a.iter().copied()), hll_of(b.iter().copied()));
            let union = Hll::union_count([&ha, &hb]);
            let mut ab = ha.clone();
            ab.merge_from(&hb);
            let mut ba = hb.clone();
            ba.merge_from(&ha);
            let all = hll_of(a.iter().chain(&b).copied());
            assert_eq!(ab, all, "{na}+{nb}");
            assert_eq!(ba, all, "{na}+{nb}");
            assert_eq!(registers(&all), model_of(a.iter().chain(&b).copied()));
            assert_eq!(all.count(), union);
        }
    }

    #[test]
    fn sparse_bytes_of_known_registers() {
        let header = |card: u64| {
            let mut h = b"HYLL\x01\0\0\0".to_vec();
            h.extend_from_slice(&card.to_le_bytes());
            h
        };
        // Empty: one XZERO of 16384 (Redis's createHLLObject).
        assert_eq!(
            Hll::new().to_redis_bytes(),
            [header(0), vec![0x7f, 0xff]].concat()
        );

        // Registers 0 = 1, 65..=69 = 2, 16383 = 32: a run of 5 equal values
        // is split greedily 4 + 1; gaps of 64 and less are ZERO, longer XZERO.
        let mut hll = Hll::new();
        hll.insert_hash(hash_for(0, 1));
        for i in 65..=69 {
            hll.insert_hash(hash_for(i, 2));
        }
        hll.insert_hash(hash_for(16383, 32));
        // VAL 1 ×1; ZERO ×64 (1..=64); VAL 2 ×4; VAL 2 ×1;
        // XZERO ×16313 (70..=16382: 16312 = 0x3fb8); VAL 32 ×1.
        let body = [0x80, 63, 0x87, 0x84, 0x7f, 0xb8, 0xfc];
        let bytes = hll.to_redis_bytes();
        assert_eq!(bytes, [header(hll.count()), body.to_vec()].concat());
        assert_eq!(Hll::from_redis_bytes(&bytes).unwrap(), hll);

        // Redis may split the run as 1 + 4 instead: same registers.
        let mut other = header(0);
        other.extend_from_slice(&[0x80, 63, 0x84, 0x87, 0x7f, 0xb8, 0xfc]);
        assert_eq!(Hll::from_redis_bytes(&other).unwrap(), hll);
    }

    #[test]
    fn a_value_over_32_or_a_long_sparse_string_is_written_dense() {
        let mut hll = Hll::new();
        hll.insert_hash(hash_for(9, 33));
        let bytes = hll.to_redis_bytes();
        assert_eq!(bytes.len(), HEADER_BYTES + DENSE_BYTES);
        assert_eq!(bytes[4], ENCODING_DENSE);
        let back = Hll::from_redis_bytes(&bytes).unwrap();
        assert_eq!(back, hll);
        assert!(!back.is_dense(), "one register is held sparse in memory");

        // Isolated registers two apart: VAL, ZERO ×1, VAL, ..., VAL, then an
        // XZERO for the tail. 1,491 of them make 16 + 2·1491 - 1 + 2 = 2,999
        // bytes, 1,492 make 3,001: dense.
        let fits = hll_of((0..1491).map(|i| hash_for(2 * i, 1)));
        assert_eq!(fits.to_redis_bytes()[4], ENCODING_SPARSE);
        assert_eq!(fits.to_redis_bytes().len(), 2999);
        let too_long = hll_of((0..1492).map(|i| hash_for(2 * i, 1)));
        assert_eq!(too_long.to_redis_bytes()[4], ENCODING_DENSE);
    }

    #[test]
    fn round_trips_through_redis_bytes() {
        for n in [0, 1, 2, 100, 1_000, 4_100, 5_000, 50_000, 1_000_000] {
            let hll = hll_of(hashes(n as u64, n));
            let bytes = hll.to_redis_bytes();
            assert_eq!(&bytes[..4], MAGIC);
            let card = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
            assert_eq!(card, hll.count(), "cache valid and equal to the count");
            let back = Hll::from_redis_bytes(&bytes).unwrap();
            assert_eq!(back, hll, "{n}");
            assert_eq!(back.is_dense(), hll.is_dense(), "{n}");
            assert_eq!(back.to_redis_bytes(), bytes, "{n}");
        }
    }

    #[test]
    fn malformed_strings_are_errors() {
        let parse = Hll::from_redis_bytes;
        let mut sparse = b"HYLL\x01\0\0\0\0\0\0\0\0\0\0\0".to_vec();
        assert_eq!(
            parse(&sparse[..15]),
            Err(HllParseError::TooShort { len: 15 })
        );
        assert_eq!(
            parse(b"HYLX\x01\0\0\0\0\0\0\0\0\0\0\0\x7f\xff"),
            Err(HllParseError::BadMagic)
        );
        let mut bad = sparse.clone();
        bad[4] = 2;
        assert_eq!(parse(&bad), Err(HllParseError::UnknownEncoding(2)));
        let mut dense = sparse.clone();
        dense[4] = 0;
        dense.resize(HEADER_BYTES + DENSE_BYTES - 1, 0);
        assert_eq!(
            parse(&dense),
            Err(HllParseError::DenseLength {
                len: DENSE_BYTES - 1
            })
        );
        dense.push(0xff);
        assert!(parse(&dense).is_ok());

        assert_eq!(
            parse(&sparse),
            Err(HllParseError::SparseLength { covered: 0 })
        );
        sparse.push(0x7f); // XZERO cut short
        assert_eq!(
            parse(&sparse),
            Err(HllParseError::SparseLength { covered: 0 })
        );
        sparse.push(0xfe); // XZERO ×16383
        assert_eq!(
            parse(&sparse),
            Err(HllParseError::SparseLength { covered: 16383 })
        );
        let mut over = sparse.clone();
        over.push(0x83); // VAL 1 ×4
        assert_eq!(
            parse(&over),
            Err(HllParseError::SparseLength { covered: 16387 })
        );
        sparse.push(0x80); // VAL 1 ×1
        assert_eq!(parse(&sparse).unwrap().register(16383), Some(1));
        sparse.push(0x00);
        assert_eq!(
            parse(&sparse),
            Err(HllParseError::SparseLength { covered: 16385 })
        );
    }

    /// Registers set by `(index, low, high, roll)` picks: `high` (15..=51)
    /// when `roll < high_percent`, else `low` (1..=14).
    fn crafted(picks: &[(usize, u8, u8, u32)], high_percent: u32) -> (Hll, Vec<u8>) {
        let mut hll = Hll::new();
        let mut model = vec![0u8; REGISTERS];
        for &(index, low, high, roll) in picks {
            let value = if roll < high_percent { high } else { low };
            hll.insert_hash(hash_for(index, value));
            model[index] = model[index].max(value);
        }
        (hll, model)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// All three forms (sparse, nibble, dense) and merges across them.
        #[test]
        fn forms_and_merges_follow_the_model(
            a in proptest::collection::vec((0usize..REGISTERS, 1u8..=14, 15u8..=51, 0u32..100), 0..7_000),
            b in proptest::collection::vec((0usize..REGISTERS, 1u8..=14, 15u8..=51, 0u32..100), 0..7_000),
            high_a in 0u32..40,
            high_b in 0u32..40,
        ) {
            let (ha, ma) = crafted(&a, high_a);
            let (hb, mb) = crafted(&b, high_b);
            check(&ha, &ma);
            check(&hb, &mb);
            let both: Vec<u8> = ma.iter().zip(&mb).map(|(x, y)| *x.max(y)).collect();
            let mut ab = ha.clone();
            ab.merge_from(&hb);
            let mut ba = hb.clone();
            ba.merge_from(&ha);
            check(&ab, &both);
            prop_assert_eq!(&ab, &ba);
            prop_assert_eq!(Hll::union_count([&ha, &hb]), ab.count());
        }
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Hll::from_redis_bytes(&bytes);
        }

        #[test]
        fn parsing_arbitrary_sparse_bodies_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let bytes = [b"HYLL\x01\0\0\0\0\0\0\0\0\0\0\0".as_slice(), &body].concat();
            if let Ok(hll) = Hll::from_redis_bytes(&bytes) {
                // Whatever parses re-encodes to the same registers.
                let again = Hll::from_redis_bytes(&hll.to_redis_bytes()).unwrap();
                prop_assert_eq!(again, hll);
            }
        }

        #[test]
        fn parsing_arbitrary_dense_bodies_never_panics(seed in any::<u64>(), fill in 0usize..DENSE_BYTES) {
            let mut bytes = b"HYLL\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();
            bytes.extend(hashes(seed, DENSE_BYTES).enumerate().map(|(i, h)| if i < fill { h as u8 } else { 0 }));
            let hll = Hll::from_redis_bytes(&bytes).unwrap();
            prop_assert_eq!(Hll::from_redis_bytes(&hll.to_redis_bytes()).unwrap(), hll);
        }

        #[test]
        fn registers_follow_the_model(
            seed in any::<u64>(),
            n in 0usize..8_000,
            split in 0usize..8_000,
        ) {
            let all: Vec<u64> = hashes(seed, n).collect();
            let split = split.min(n);
            let hll = hll_of(all.iter().copied());
            prop_assert_eq!(registers(&hll), model_of(all.iter().copied()));
            let mut merged = hll_of(all[..split].iter().copied());
            merged.merge_from(&hll_of(all[split..].iter().copied()));
            prop_assert_eq!(&merged, &hll);
            let round = Hll::from_redis_bytes(&hll.to_redis_bytes()).unwrap();
            prop_assert_eq!(&round, &hll);
        }
    }
}
