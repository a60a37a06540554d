//! MurmurHash64A (Austin Appleby's 64-bit MurmurHash2), bit for bit as Redis
//! computes it for `PFADD`.
//!
//! Redis hashes each `PFADD` element with seed [`REDIS_HLL_SEED`] and reads
//! the 8-byte blocks as little-endian integers (it does so on every
//! architecture, so this function is endian-neutral too). The tail of 1 to 7
//! bytes is folded in, also little-endian, followed by one multiplication;
//! an empty tail skips that multiplication.

/// The seed Redis 7.0 passes to MurmurHash64A for HyperLogLog elements
/// (`hllPatLen` in `src/hyperloglog.c`).
pub const REDIS_HLL_SEED: u64 = 0xadc8_3b19;

/// MurmurHash64A of `key`.
///
/// Redis declares the seed as a 32-bit `unsigned int`, so only seeds up to
/// `u32::MAX` have a Redis counterpart; larger ones still give a
/// well-defined hash.
pub fn murmur64a(key: &[u8], seed: u64) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;

    let mut h = seed ^ (key.len() as u64).wrapping_mul(M);
    let (blocks, tail) = key.as_chunks::<8>();
    for block in blocks {
        let mut k = u64::from_le_bytes(*block);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    if !tail.is_empty() {
        // The C switch falls through from `len & 7` down to byte 0: byte i
        // lands at bit 8·i, then one multiplication.
        for (i, &byte) in tail.iter().enumerate() {
            h ^= u64::from(byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uniques::hll::pattern;

    /// `(key, hash, (register, value))`. The hashes come from a separate
    /// Python transcription of Redis's C code; the register and value from a
    /// real `redis-server` 7.0.15: `PFADD k <key>` on an empty key leaves a
    /// sparse HLL whose one non-zero register (`GET k`) is the hash's low 14
    /// bits, holding 1 + the trailing zeros of the next 50. The keys cover
    /// every tail length 0..=7, one and two 8-byte blocks, and high bytes.
    const VECTORS: [(&[u8], u64, (usize, u8)); 14] = [
        (b"", 0xd8df_ea65_85bc_9732, (5938, 2)),
        (b"a", 0x53d2_470a_9b43_b1a7, (12711, 2)),
        (b"ab", 0x0eae_d676_4371_42cf, (719, 1)),
        (b"abc", 0x77ec_90ae_b374_e502, (9474, 1)),
        (b"abcd", 0xb079_ee3d_4420_2b3e, (11070, 8)),
        (b"abcde", 0x52a7_daa2_324a_0e8e, (3726, 4)),
        (b"abcdef", 0x3a4f_3a74_f538_b54f, (13647, 2)),
        (b"abcdefg", 0x22fe_613b_b08c_9602, (5634, 2)),
        (b"abcdefgh", 0xf3a6_5df5_5991_4567, (1383, 1)),
        (b"abcdefghi", 0x834f_ba4d_9152_daf7, (6903, 1)),
        (b"user-42", 0xbd99_8815_b235_ec8d, (11405, 1)),
        (b"0123456789abcdef", 0x9f85_6542_8eaa_573d, (5949, 1)),
        (b"0123456789abcdefXYZ", 0x0301_0947_24c4_601e, (8222, 1)),
        (b"\x00\xff\x80\x7f\x01", 0x3427_d822_a9c7_0ea1, (3745, 3)),
    ];

    #[test]
    fn known_vectors() {
        for (key, hash, register) in VECTORS {
            let ours = murmur64a(key, REDIS_HLL_SEED);
            assert_eq!(ours, hash, "{key:?}");
            assert_eq!(pattern(ours), register, "{key:?}");
        }
    }

    #[test]
    fn the_seed_matters() {
        assert_ne!(murmur64a(b"abc", 0), murmur64a(b"abc", REDIS_HLL_SEED));
    }
}
