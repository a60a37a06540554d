//! Which key each impression carries: campaigns, ads, users, duplicates.
//!
//! **The key of impression `i` is a pure function of `(seed, i)`.** Each
//! impression draws from its own random stream ([`SplitMix64::for_index`]),
//! so the keys do not depend on which connection sent them or in which
//! order: a `--count` run with the same seed and options sends the same
//! multiset of keys every time, however the scheduler interleaved it.
//!
//! A *duplicate* (probability `--duplicate-ratio`) repeats the key of an
//! earlier impression `j`, chosen uniformly in `0..i`. If `j` was itself a
//! duplicate, its own source is followed, so the chain always ends at a fresh
//! key; since `j` is uniform below `i`, the chain has `O(log i)` expected
//! steps even at ratio 1 (where every impression repeats impression 0's key).
//!
//! Users follow the chosen [`Distribution`] (uniform, or Zipf with rank 1 the
//! most frequent); campaigns and ads are uniform.

use std::convert::Infallible;

use rand::TryRng;
use rand_distr::Distribution as _;

use crate::args::{Distribution, Scope};

/// One impression's key, as indexes: campaign `campaign` of the run's list,
/// ad id `ad{ad}`, user id `u{user}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Index into the run's campaigns.
    pub campaign: u32,
    /// Ad number; the ad id sent is `ad{ad}`.
    pub ad: u32,
    /// User number; the user id sent is `u{user}`.
    pub user: u64,
}

/// SplitMix64: tiny, fast, and good enough to drive a load test; written out
/// here so the key sequence of a seed never changes with a dependency update.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The stream of impression `index`. The start is mixed from both seed
    /// and index, rather than `seed + index * gamma`, so that neighbouring
    /// indexes do not get overlapping (shifted) streams.
    pub fn for_index(seed: u64, index: u64) -> Self {
        Self::new(mix64(seed ^ mix64(index.wrapping_add(GOLDEN_GAMMA))))
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift: the bias is below
    /// `n / 2^64`, invisible at any `n` a load test uses.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Lets `rand_distr` distributions (Zipf) draw from a [`SplitMix64`].
impl TryRng for SplitMix64 {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.next() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// The shape of the generated traffic.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    /// Seed of every stream.
    pub seed: u64,
    /// Number of campaigns (`> 0`).
    pub campaigns: u32,
    /// Ads per campaign (`> 0`).
    pub ads: u32,
    /// Users (`> 0`).
    pub users: u64,
    /// How users are drawn.
    pub distribution: Distribution,
    /// Zipf exponent (finite, `>= 0`); unused for uniform.
    pub zipf_exponent: f64,
    /// Fraction of impressions repeating an earlier key, in `0..=1`.
    pub duplicate_ratio: f64,
}

/// A spec that cannot generate keys.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The Zipf parameters were refused.
    #[error("invalid Zipf distribution: {0}")]
    Zipf(#[from] rand_distr::ZipfError),
}

/// Users drawn by the configured distribution.
#[derive(Clone, Debug)]
enum UserSampler {
    Uniform(u64),
    Zipf {
        users: u64,
        zipf: rand_distr::Zipf<f64>,
    },
}

/// Generates the key of any impression index; see the module docs.
#[derive(Clone, Debug)]
pub struct Workload {
    spec: WorkloadSpec,
    users: UserSampler,
}

impl Workload {
    /// Builds the generator; fails only for Zipf parameters it cannot use.
    pub fn new(spec: WorkloadSpec) -> Result<Self, WorkloadError> {
        let users = match spec.distribution {
            Distribution::Uniform => UserSampler::Uniform(spec.users),
            Distribution::Zipf => UserSampler::Zipf {
                users: spec.users,
                zipf: rand_distr::Zipf::new(spec.users as f64, spec.zipf_exponent)?,
            },
        };
        Ok(Self { spec, users })
    }

    /// The key of impression `index`.
    pub fn key(&self, index: u64) -> Key {
        let mut i = index;
        loop {
            let mut rng = SplitMix64::for_index(self.spec.seed, i);
            // Drawn for every impression, duplicate or not, so that the
            // fresh key of `i` does not depend on the ratio's value.
            let dup = rng.unit();
            let source = rng.next();
            if i > 0 && dup < self.spec.duplicate_ratio {
                // Same multiply-shift as `below`, on the pre-drawn value.
                i = ((u128::from(source) * u128::from(i)) >> 64) as u64;
                continue;
            }
            return self.fresh(&mut rng);
        }
    }

    fn fresh(&self, rng: &mut SplitMix64) -> Key {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "`below(n)` is below n, here a u32"
        )]
        let (campaign, ad) = (
            rng.below(u64::from(self.spec.campaigns)) as u32,
            rng.below(u64::from(self.spec.ads)) as u32,
        );
        let user = match &self.users {
            UserSampler::Uniform(n) => rng.below(*n),
            UserSampler::Zipf { users, zipf } => {
                // Zipf yields ranks 1..=n as floats; rank 1 is user 0.
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "a rank is a whole float in 1..=users, clamped below anyway"
                )]
                let rank = zipf.sample(rng) as u64;
                rank.clamp(1, *users) - 1
            }
        };
        Key { campaign, ad, user }
    }
}

/// Maps a key to a dense number in `0..size()`, campaign-major, as the
/// server's dedup would see it: with [`Scope::Campaign`] the ad is ignored.
/// Campaign-major means each campaign owns one contiguous range, which lets
/// the ledger count per campaign by scanning ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyLayout {
    campaigns: u64,
    ads: u64,
    users: u64,
}

impl KeyLayout {
    /// The layout for these sizes; `None` if the space overflows 64 bits.
    pub fn new(campaigns: u32, ads: u32, users: u64, scope: Scope) -> Option<Self> {
        let ads = match scope {
            Scope::Ad => u64::from(ads),
            Scope::Campaign => 1,
        };
        let layout = Self {
            campaigns: u64::from(campaigns),
            ads,
            users,
        };
        layout
            .ads
            .checked_mul(users)?
            .checked_mul(layout.campaigns)?;
        Some(layout)
    }

    /// Dense numbers per campaign.
    pub fn per_campaign(&self) -> u64 {
        self.ads * self.users
    }

    /// Number of campaigns.
    pub fn campaigns(&self) -> u64 {
        self.campaigns
    }

    /// Number of users.
    pub fn users(&self) -> u64 {
        self.users
    }

    /// Total dense numbers.
    pub fn size(&self) -> u64 {
        self.campaigns * self.per_campaign()
    }

    /// The dense number of `key`.
    pub fn index(&self, key: Key) -> u64 {
        let ad = if self.ads == 1 { 0 } else { u64::from(key.ad) };
        (u64::from(key.campaign) * self.ads + ad) * self.users + key.user
    }

    /// The campaign a dense number belongs to.
    pub fn campaign_of(&self, index: u64) -> u64 {
        index / self.per_campaign()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn spec(distribution: Distribution, duplicate_ratio: f64) -> WorkloadSpec {
        WorkloadSpec {
            seed: 7,
            campaigns: 3,
            ads: 4,
            users: 1000,
            distribution,
            zipf_exponent: 1.0,
            duplicate_ratio,
        }
    }

    fn keys(w: &Workload, n: u64) -> Vec<Key> {
        (0..n).map(|i| w.key(i)).collect()
    }

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference code).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn unit_and_below_stay_in_range() {
        let mut r = SplitMix64::new(3);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(7) < 7);
        }
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn keys_are_a_function_of_seed_and_index() {
        for d in [Distribution::Uniform, Distribution::Zipf] {
            let a = Workload::new(spec(d, 0.3)).unwrap();
            let b = Workload::new(spec(d, 0.3)).unwrap();
            assert_eq!(keys(&a, 2000), keys(&b, 2000));
            // Out of order gives the same answers.
            assert_eq!(a.key(1234), keys(&b, 1235)[1234]);
            let other = Workload::new(WorkloadSpec {
                seed: 8,
                ..spec(d, 0.3)
            })
            .unwrap();
            assert_ne!(keys(&a, 100), keys(&other, 100));
        }
    }

    #[test]
    fn keys_stay_in_range() {
        for d in [Distribution::Uniform, Distribution::Zipf] {
            let w = Workload::new(spec(d, 0.1)).unwrap();
            for k in keys(&w, 20_000) {
                assert!(k.campaign < 3 && k.ad < 4 && k.user < 1000, "{k:?}");
            }
        }
    }

    #[test]
    fn uniform_covers_users_evenly() {
        let w = Workload::new(spec(Distribution::Uniform, 0.0)).unwrap();
        let mut hits = vec![0u32; 1000];
        for k in keys(&w, 100_000) {
            hits[usize::try_from(k.user).unwrap()] += 1;
        }
        // Expected 100 each; a bucket outside 50..150 would be a broken sampler.
        assert!(hits.iter().all(|&h| (50..150).contains(&h)), "{hits:?}");
        let mut campaigns = [0u32; 3];
        for k in keys(&w, 30_000) {
            campaigns[k.campaign as usize] += 1;
        }
        assert!(campaigns.iter().all(|&c| (9_000..11_000).contains(&c)));
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let w = Workload::new(spec(Distribution::Zipf, 0.0)).unwrap();
        let mut hits = vec![0u32; 1000];
        for k in keys(&w, 100_000) {
            hits[usize::try_from(k.user).unwrap()] += 1;
        }
        // With s = 1 and n = 1000, P(rank 1) = 1 / H(1000) ≈ 0.134 and
        // P(rank 2) ≈ 0.067.
        assert!((12_000..15_000).contains(&hits[0]), "rank 1: {}", hits[0]);
        assert!((5_700..7_700).contains(&hits[1]), "rank 2: {}", hits[1]);
        assert!(hits[0] > hits[9] && hits[9] > hits[999]);
    }

    #[test]
    fn duplicate_ratio_zero_keeps_fresh_keys() {
        // 3 × 4 × 1000 = 12,000 possible keys; 1,000 draws collide a little
        // by chance (birthday), but nowhere near a deliberate ratio.
        let w = Workload::new(spec(Distribution::Uniform, 0.0)).unwrap();
        let distinct: HashSet<Key> = keys(&w, 1000).into_iter().collect();
        assert!(distinct.len() > 940, "{}", distinct.len());
    }

    #[test]
    fn duplicate_ratio_repeats_earlier_keys() {
        let n = 10_000;
        let w = Workload::new(WorkloadSpec {
            users: 1 << 40, // fresh keys never collide by chance
            ..spec(Distribution::Uniform, 0.25)
        })
        .unwrap();
        let all = keys(&w, n);
        let mut seen = HashSet::new();
        let mut repeats = 0;
        for k in &all {
            if !seen.insert(*k) {
                repeats += 1;
            }
        }
        // Every repeat is of a key already sent (by construction), and their
        // share is the ratio: 2,500 expected, σ ≈ 43.
        assert!((2_300..2_700).contains(&repeats), "{repeats}");
        // Impression 0 is never a duplicate; a fresh key's stream does not
        // depend on the ratio.
        let fresh = Workload::new(WorkloadSpec {
            users: 1 << 40,
            ..spec(Distribution::Uniform, 0.0)
        })
        .unwrap();
        assert_eq!(w.key(0), fresh.key(0));
    }

    #[test]
    fn duplicate_ratio_one_repeats_the_first_key() {
        let w = Workload::new(spec(Distribution::Zipf, 1.0)).unwrap();
        let first = w.key(0);
        assert!(keys(&w, 5000).iter().all(|k| *k == first));
    }

    #[test]
    fn layout_is_dense_and_campaign_major() {
        let l = KeyLayout::new(3, 4, 1000, Scope::Ad).unwrap();
        assert_eq!(l.size(), 12_000);
        let k = Key {
            campaign: 2,
            ad: 3,
            user: 999,
        };
        assert_eq!(l.index(k), l.size() - 1);
        assert_eq!(l.campaign_of(l.index(k)), 2);
        let c = KeyLayout::new(3, 4, 1000, Scope::Campaign).unwrap();
        assert_eq!(c.size(), 3000);
        let other_ad = Key { ad: 0, ..k };
        assert_eq!(
            c.index(k),
            c.index(other_ad),
            "campaign scope ignores the ad"
        );
        assert_ne!(l.index(k), l.index(other_ad));
        assert!(KeyLayout::new(u32::MAX, u32::MAX, u64::MAX / 2, Scope::Ad).is_none());
    }
}
