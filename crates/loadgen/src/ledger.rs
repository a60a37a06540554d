//! What the server acknowledged, and what it may or may not have seen.
//!
//! The server counts a key once per TTL (one hour by default, longer than any
//! run), and every campaign is created fresh, so a campaign's exact expected
//! `total` is the number of **distinct keys among acknowledged impressions**.
//! Impressions whose request failed without an answer (transport error,
//! timeout, a 5xx other than 503) have an *unknown* outcome: each such key
//! that was never acknowledged may add one. Hence the range
//! `[acked, acked + unknown-and-not-acked]` per campaign ([`Expected`]).
//!
//! Keys are stored as dense numbers ([`KeyLayout`]). When the key space is
//! small enough (the defaults: 10 × 10 × 1M = 10⁸ keys = 12.5 MB) acknowledged
//! keys go into a bitset of atomics: one `fetch_or` per impression, shared by
//! every connection without a lock, and memory that does not grow with the
//! run's length. Larger spaces fall back to a hash set behind a mutex. Unknown
//! outcomes are rare, so they always use a hash set.
//!
//! The same keys give each campaign's expected **unique users**: the
//! distinct user numbers among its acknowledged keys (whatever the ad),
//! widened likewise by users seen only in unknown-outcome keys
//! ([`Ledger::expected_users`]).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::workload::{Key, KeyLayout};

/// Key spaces up to this many keys use a bitset (128 MiB at most).
pub const BITSET_MAX_KEYS: u64 = 1 << 30;

/// Expected `total` of one campaign: `lo` if every unknown outcome was lost,
/// `hi` if every one was counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Expected {
    /// Distinct acknowledged keys.
    pub lo: u64,
    /// `lo` plus distinct unknown-outcome keys that were never acknowledged.
    pub hi: u64,
}

impl Expected {
    /// Whether `total` is a possible correct answer.
    pub fn admits(&self, total: u64) -> bool {
        (self.lo..=self.hi).contains(&total)
    }
}

enum AckedSet {
    Bits(Vec<AtomicU64>),
    Hashed(Mutex<HashSet<u64>>),
}

/// The acknowledged and unknown-outcome keys of a run; see the module docs.
pub struct Ledger {
    layout: KeyLayout,
    acked: AckedSet,
    unknown: Mutex<HashSet<u64>>,
}

/// A poisoned lock only means another connection task panicked while
/// inserting a number; the set itself is still a valid set.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Ledger {
    /// An empty ledger for this key space.
    pub fn new(layout: KeyLayout) -> Self {
        Self::with_bitset_limit(layout, BITSET_MAX_KEYS)
    }

    fn with_bitset_limit(layout: KeyLayout, max_bits: u64) -> Self {
        let acked = if layout.size() <= max_bits {
            #[allow(
                clippy::cast_possible_truncation,
                reason = "size <= `max_bits` (at most `BITSET_MAX_KEYS`, 2^30): at most 2^24 words"
            )]
            let words = layout.size().div_ceil(64) as usize;
            AckedSet::Bits((0..words).map(|_| AtomicU64::new(0)).collect())
        } else {
            AckedSet::Hashed(Mutex::new(HashSet::new()))
        };
        Self {
            layout,
            acked,
            unknown: Mutex::new(HashSet::new()),
        }
    }

    /// Records that the server acknowledged an impression with `key`.
    pub fn acked(&self, key: Key) {
        let i = self.layout.index(key);
        match &self.acked {
            // Relaxed: the counts are read only after every connection task
            // was joined, which orders all these writes before the reads.
            AckedSet::Bits(words) => {
                words[(i / 64) as usize].fetch_or(1 << (i % 64), Ordering::Relaxed);
            }
            AckedSet::Hashed(set) => {
                lock(set).insert(i);
            }
        }
    }

    /// Records that an impression with `key` may or may not have been counted.
    pub fn unknown(&self, key: Key) {
        lock(&self.unknown).insert(self.layout.index(key));
    }

    fn is_acked(&self, i: u64) -> bool {
        match &self.acked {
            AckedSet::Bits(words) => {
                words[(i / 64) as usize].load(Ordering::Relaxed) & (1 << (i % 64)) != 0
            }
            AckedSet::Hashed(set) => lock(set).contains(&i),
        }
    }

    /// Expected totals, one per campaign in index order.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "campaign numbers are below the campaign count, a u32 (`KeyLayout::new`)"
    )]
    pub fn expected(&self) -> Vec<Expected> {
        let campaigns = self.layout.campaigns() as usize;
        let per = self.layout.per_campaign();
        let mut out = vec![Expected::default(); campaigns];
        match &self.acked {
            AckedSet::Bits(words) => {
                for (c, e) in out.iter_mut().enumerate() {
                    let lo = c as u64 * per;
                    e.lo = count_ones(words, lo, lo + per);
                }
            }
            AckedSet::Hashed(set) => {
                for &i in lock(set).iter() {
                    out[self.layout.campaign_of(i) as usize].lo += 1;
                }
            }
        }
        for e in &mut out {
            e.hi = e.lo;
        }
        for &i in lock(&self.unknown).iter() {
            if !self.is_acked(i) {
                out[self.layout.campaign_of(i) as usize].hi += 1;
            }
        }
        out
    }
}

/// Distinct user numbers of one campaign.
enum UserSet {
    Bits(Vec<u64>),
    Hashed(HashSet<u64>),
}

impl UserSet {
    fn new(users: u64) -> Self {
        match usize::try_from(users.div_ceil(64)) {
            Ok(words) if users <= BITSET_MAX_KEYS => UserSet::Bits(vec![0; words]),
            _ => UserSet::Hashed(HashSet::new()),
        }
    }

    /// Adds `user`; tells whether it is new.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a bitset is only made for at most `BITSET_MAX_KEYS` (2^30) users"
    )]
    fn insert(&mut self, user: u64) -> bool {
        match self {
            UserSet::Bits(words) => {
                let (word, bit) = ((user / 64) as usize, 1 << (user % 64));
                let new = words[word] & bit == 0;
                words[word] |= bit;
                new
            }
            UserSet::Hashed(set) => set.insert(user),
        }
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "a bitset is only made for at most `BITSET_MAX_KEYS` (2^30) users"
    )]
    fn contains(&self, user: u64) -> bool {
        match self {
            UserSet::Bits(words) => words[(user / 64) as usize] & (1 << (user % 64)) != 0,
            UserSet::Hashed(set) => set.contains(&user),
        }
    }
}

impl Ledger {
    /// Expected unique users, one per campaign in index order (see the
    /// module docs).
    #[allow(
        clippy::cast_possible_truncation,
        reason = "campaign numbers are below the campaign count, a u32 (`KeyLayout::new`)"
    )]
    pub fn expected_users(&self) -> Vec<Expected> {
        let campaigns = self.layout.campaigns() as usize;
        let users = self.layout.users();
        let mut seen: Vec<UserSet> = (0..campaigns).map(|_| UserSet::new(users)).collect();
        let mut out = vec![Expected::default(); campaigns];
        let mut add = |i: u64| {
            let c = self.layout.campaign_of(i) as usize;
            if seen[c].insert(i % users) {
                out[c].lo += 1;
            }
        };
        match &self.acked {
            AckedSet::Bits(words) => {
                for (w, word) in words.iter().enumerate() {
                    let mut bits = word.load(Ordering::Relaxed);
                    while bits != 0 {
                        add(w as u64 * 64 + u64::from(bits.trailing_zeros()));
                        bits &= bits - 1;
                    }
                }
            }
            AckedSet::Hashed(set) => lock(set).iter().for_each(|&i| add(i)),
        }
        for e in &mut out {
            e.hi = e.lo;
        }
        let mut extra: Vec<UserSet> = (0..campaigns).map(|_| UserSet::new(users)).collect();
        for &i in lock(&self.unknown).iter() {
            let (c, user) = (self.layout.campaign_of(i) as usize, i % users);
            if !seen[c].contains(user) && extra[c].insert(user) {
                out[c].hi += 1;
            }
        }
        out
    }
}

/// Set bits among positions `lo..hi` of a bitset.
fn count_ones(words: &[AtomicU64], lo: u64, hi: u64) -> u64 {
    if lo >= hi {
        return 0;
    }
    let (first, last) = ((lo / 64) as usize, ((hi - 1) / 64) as usize);
    let word = |w: usize| words[w].load(Ordering::Relaxed);
    // Masks keep the bits at or after `lo` in the first word, and at or
    // before `hi - 1` in the last.
    let head = u64::MAX << (lo % 64);
    let tail = u64::MAX >> (63 - (hi - 1) % 64);
    if first == last {
        return u64::from((word(first) & head & tail).count_ones());
    }
    let middle: u64 = (first + 1..last)
        .map(|w| u64::from(word(w).count_ones()))
        .sum();
    u64::from((word(first) & head).count_ones())
        + middle
        + u64::from((word(last) & tail).count_ones())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Scope;
    use crate::workload::{SplitMix64, Workload, WorkloadSpec};

    fn key(campaign: u32, ad: u32, user: u64) -> Key {
        Key { campaign, ad, user }
    }

    /// Both representations, so each test checks both.
    fn ledgers(layout: KeyLayout) -> [Ledger; 2] {
        [Ledger::new(layout), Ledger::with_bitset_limit(layout, 0)]
    }

    #[test]
    fn expected_counts_distinct_acked_keys() {
        // 3 campaigns × 2 ads × 37 users: campaign ranges of 74 bits, not
        // aligned to words, so the edge masks are exercised.
        let layout = KeyLayout::new(3, 2, 37, Scope::Ad).unwrap();
        for l in ledgers(layout) {
            l.acked(key(0, 0, 0));
            l.acked(key(0, 0, 0)); // a duplicate counts once
            l.acked(key(0, 1, 0)); // another ad is another key
            l.acked(key(1, 1, 36));
            l.acked(key(2, 0, 0));
            l.acked(key(2, 1, 36));
            assert_eq!(
                l.expected(),
                vec![
                    Expected { lo: 2, hi: 2 },
                    Expected { lo: 1, hi: 1 },
                    Expected { lo: 2, hi: 2 }
                ]
            );
        }
    }

    #[test]
    fn unknown_outcomes_widen_the_range_unless_also_acked() {
        let layout = KeyLayout::new(2, 1, 100, Scope::Ad).unwrap();
        for l in ledgers(layout) {
            l.acked(key(0, 0, 1));
            l.unknown(key(0, 0, 1)); // acked elsewhere: counted for sure
            l.unknown(key(0, 0, 2));
            l.unknown(key(0, 0, 2)); // the same unknown key adds one at most
            l.unknown(key(1, 0, 3));
            assert_eq!(
                l.expected(),
                vec![Expected { lo: 1, hi: 2 }, Expected { lo: 0, hi: 1 }]
            );
        }
    }

    #[test]
    fn campaign_scope_merges_ads() {
        let layout = KeyLayout::new(1, 5, 10, Scope::Campaign).unwrap();
        for l in ledgers(layout) {
            l.acked(key(0, 0, 4));
            l.acked(key(0, 3, 4));
            l.unknown(key(0, 4, 4));
            assert_eq!(l.expected(), vec![Expected { lo: 1, hi: 1 }]);
        }
    }

    #[test]
    fn bitset_and_hash_set_agree_with_a_naive_count() {
        let spec = WorkloadSpec {
            seed: 11,
            campaigns: 5,
            ads: 3,
            users: 61,
            distribution: crate::args::Distribution::Zipf,
            zipf_exponent: 0.8,
            duplicate_ratio: 0.2,
        };
        let w = Workload::new(spec).unwrap();
        let layout = KeyLayout::new(5, 3, 61, Scope::Ad).unwrap();
        let mut rng = SplitMix64::new(1);
        let mut acked = HashSet::new();
        let mut unknown = HashSet::new();
        let [a, b] = ledgers(layout);
        for i in 0..3000 {
            let k = w.key(i);
            if rng.below(10) == 0 {
                unknown.insert(k);
                a.unknown(k);
                b.unknown(k);
            } else {
                acked.insert(k);
                a.acked(k);
                b.acked(k);
            }
        }
        let naive: Vec<Expected> = (0..5)
            .map(|c| {
                let lo = acked.iter().filter(|k| k.campaign == c).count() as u64;
                let extra = unknown
                    .iter()
                    .filter(|k| k.campaign == c && !acked.contains(k))
                    .count() as u64;
                Expected { lo, hi: lo + extra }
            })
            .collect();
        assert_eq!(a.expected(), naive);
        assert_eq!(b.expected(), naive);
    }

    #[test]
    fn unique_users_are_distinct_users_over_every_ad() {
        for scope in [Scope::Ad, Scope::Campaign] {
            let layout = KeyLayout::new(2, 3, 70, scope).unwrap();
            for l in ledgers(layout) {
                l.acked(key(0, 0, 5));
                l.acked(key(0, 2, 5)); // the same person on another ad
                l.acked(key(0, 1, 69));
                l.acked(key(1, 0, 0));
                l.unknown(key(1, 1, 0)); // acked by another key: no widening
                l.unknown(key(1, 2, 7));
                l.unknown(key(1, 0, 7)); // the same unknown user once
                assert_eq!(
                    l.expected_users(),
                    vec![Expected { lo: 2, hi: 2 }, Expected { lo: 1, hi: 2 }],
                    "{scope:?}"
                );
            }
        }
    }

    #[test]
    fn count_ones_over_any_range() {
        let words: Vec<AtomicU64> = [0xF0F0_F0F0_F0F0_F0F0u64, u64::MAX, 0x1]
            .into_iter()
            .map(AtomicU64::new)
            .collect();
        let naive = |lo: u64, hi: u64| {
            (lo..hi)
                .filter(|&i| {
                    words[(i / 64) as usize].load(Ordering::Relaxed) & (1 << (i % 64)) != 0
                })
                .count() as u64
        };
        for lo in 0..192 {
            for hi in lo..=192 {
                assert_eq!(count_ones(&words, lo, hi), naive(lo, hi), "{lo}..{hi}");
            }
        }
    }

    #[test]
    fn expected_admits_its_range() {
        let e = Expected { lo: 3, hi: 5 };
        assert!(!e.admits(2) && e.admits(3) && e.admits(5) && !e.admits(6));
    }
}
