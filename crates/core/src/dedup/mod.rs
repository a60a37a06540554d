//! Duplicate detection: the TTL rule and the index that applies it.
//!
//! # The rule
//!
//! Per key the index keeps `L`, the latest *counted* time. An impression at
//! `t` is a duplicate iff `|t - L| < TTL`; when counted, `L = max(L, t)`.
//! For impressions in time order this is the familiar rule: the first
//! impression opens a TTL window, duplicates inside it do not extend it, and
//! the first impression at or after `L + TTL` is counted and opens a new one.
//! Stating it with `|t - L|` keeps it exact when workers see receive times a
//! few milliseconds out of order. [`DedupRule`] is the one implementation.
//!
//! # The key
//!
//! The key is `(campaign, ad, user)`, or `(campaign, user)` with
//! [`DedupScope::Campaign`]. The index does not keep those strings: it keeps a
//! 128-bit xxh3 [`Fingerprint`] of them. With `n` live keys the chance that any
//! two distinct keys share a fingerprint is at most `n² / 2¹²⁹`: about
//! `1.5 × 10⁻²⁵` at ten million keys, far below the chance of a memory bit
//! flip, so a fingerprint match is treated as the same key.
//!
//! # The index
//!
//! [`DedupIndex`] is split into shards, each behind its own mutex, chosen by
//! the top bits of the fingerprint, so concurrent impressions for different
//! keys rarely meet on a lock. Each shard holds:
//!
//! * a FIFO ring of 24-byte entries `(fingerprint, L)` in insertion order, in
//!   fixed chunks of 1024 so it grows and shrinks without copying
//!   (`ring`);
//! * an open-addressing table of 8-byte slots (32 hash bits and a ring
//!   position), which finds a key's current entry with one cache line of
//!   slots plus, for a live key, its ring entry (`table`).
//!
//! Batches are checked a shard run at a time ([`ShardGuard::check_run`]):
//! first every impression's slot line and candidate ring entry are loaded,
//! independently of each other so the CPU overlaps the cache misses, then
//! the decisions are made in order from warm caches.
//!
//! Expiry is O(1) amortized with no sweeps: because every key lives for the
//! same span (TTL plus the allowed lateness) after its `L`, insertion order
//! is expiry order, so expired entries are always at the front of the ring
//! and each is popped exactly once, by the operation that finds it expired.
//! Popping does not touch the table: a slot whose entry left the ring is
//! dead, skipped by lookups and reused by inserts. When a key is counted
//! again, a new entry is appended and its slot re-pointed; the old entry is
//! marked superseded and dropped when it reaches the front.
//!
//! Memory per live key is one ring entry (24 bytes) plus one 8-byte slot at
//! a load factor between about 3/8 and 3/4: about 35–45 bytes, measured by the
//! `memory` benchmark.

mod ring;
mod table;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use xxhash_rust::xxh3::xxh3_128;

use crate::campaign::CampaignId;
use crate::impression::{AdId, UserId};
use crate::time::{Timestamp, duration_millis};

use self::ring::{Entry, Ring};
use self::table::{SlotTable, slot_hash};

/// Which impressions count as "the same" for the TTL rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DedupScope {
    /// Key `(campaign, ad, user)`: a user is counted once per ad per TTL.
    #[default]
    Ad,
    /// Key `(campaign, user)`: a user is counted once per campaign per TTL,
    /// whichever of its ads they saw.
    Campaign,
}

/// A 128-bit xxh3 hash standing in for a dedup key (see the module docs for
/// why 128 bits are enough).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// Low 64 bits: the table's hash bits come from its high half.
    lo: u64,
    /// High 64 bits: the top bits choose the shard.
    hi: u64,
}

impl Fingerprint {
    /// The fingerprint of an impression's dedup key under `scope`.
    pub fn of(campaign: &CampaignId, ad: &AdId, user: &UserId, scope: DedupScope) -> Self {
        // Typical ids are short: hash from the stack and only fall back to
        // the heap for long ones.
        const STACK: usize = 192;

        // The encoding is unambiguous: a scope tag, then the ad id with its
        // length (so "ab"+"c" and "a"+"bc" differ), then the user id, which
        // is last and needs no length.
        let ad = match scope {
            DedupScope::Ad => ad.as_str().as_bytes(),
            DedupScope::Campaign => &[],
        };
        let user = user.as_str().as_bytes();
        let scope_tag = match scope {
            DedupScope::Ad => 1u8,
            DedupScope::Campaign => 2u8,
        };
        let ad_len = u32::try_from(ad.len()).unwrap_or(u32::MAX).to_le_bytes();
        let parts: [&[u8]; 5] = [campaign.as_bytes(), &[scope_tag], &ad_len, ad, user];
        let len: usize = parts.iter().map(|p| p.len()).sum();

        let hash = if len <= STACK {
            let mut buf = [0u8; STACK];
            let mut at = 0;
            for p in parts {
                buf[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            xxh3_128(&buf[..len])
        } else {
            xxh3_128(&parts.concat())
        };
        Fingerprint::from_u128(hash)
    }

    /// A fingerprint from its 128-bit value.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "splits the value into its low and high 64 bits on purpose"
    )]
    pub const fn from_u128(v: u128) -> Self {
        Fingerprint {
            lo: v as u64,
            hi: (v >> 64) as u64,
        }
    }

    /// The 128-bit value.
    pub const fn as_u128(self) -> u128 {
        ((self.hi as u128) << 64) | self.lo as u128
    }
}

/// The TTL rule, on its own so every backend applies exactly the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupRule {
    ttl_ms: u64,
}

/// What [`DedupRule::decide`] says about one impression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Count it; the key's latest counted time becomes `new_last`.
    Count {
        /// `max(L, t)`.
        new_last: Timestamp,
    },
    /// Within one TTL of the latest counted impression of the same key.
    Duplicate,
}

impl DedupRule {
    /// The rule for a TTL (milliseconds are the finest unit that matters).
    pub fn new(ttl: Duration) -> Self {
        DedupRule {
            ttl_ms: duration_millis(ttl),
        }
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// Decides for an impression at `t`, given the key's latest counted time.
    pub fn decide(&self, last_counted: Option<Timestamp>, t: Timestamp) -> Decision {
        match last_counted {
            Some(last) if t.as_millis().abs_diff(last.as_millis()) < self.ttl_ms => {
                Decision::Duplicate
            }
            Some(last) => Decision::Count {
                new_last: last.max(t),
            },
            None => Decision::Count { new_last: t },
        }
    }
}

/// The sharded, self-expiring map from fingerprint to latest counted time.
pub struct DedupIndex {
    rule: DedupRule,
    /// An entry is kept until `L + retention_ms`: TTL plus the lateness an
    /// impression may have when it reaches the index.
    retention_ms: u64,
    shard_shift: u32,
    shards: Box<[CacheAligned<Mutex<Shard>>]>,
    /// Live keys, updated once per locked operation (not per key), so it
    /// can be read on every request without touching the shards.
    live: CacheAligned<AtomicUsize>,
    /// Heap bytes of every shard, updated when a locked operation changed
    /// them (a ring chunk or a table resize: rarely).
    heap: CacheAligned<AtomicUsize>,
}

/// What a run of [`DedupIndex::check_tallied`] calls changed, published
/// once ([`DedupIndex::publish`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    live: isize,
    heap: isize,
}

/// Keeps each shard's lock on its own cache lines, so two cores working on
/// neighbouring shards do not invalidate each other's lock word.
#[repr(align(128))]
struct CacheAligned<T>(T);

impl DedupIndex {
    /// An empty index.
    ///
    /// `max_lateness` is how far behind `now` an impression's timestamp may be
    /// when it is checked: entries are kept for `ttl + max_lateness` after
    /// their `L`, so such an impression still finds them. `shards` is rounded
    /// up to a power of two.
    pub fn new(ttl: Duration, max_lateness: Duration, shards: usize) -> Self {
        let shards = shards.clamp(1, 1 << 16).next_power_of_two();
        DedupIndex {
            rule: DedupRule::new(ttl),
            retention_ms: duration_millis(ttl).saturating_add(duration_millis(max_lateness)),
            // 64 for a single shard: `shard_of` treats that shift as 0.
            shard_shift: 64 - shards.trailing_zeros(),
            shards: (0..shards)
                .map(|i| {
                    #[allow(
                        clippy::cast_possible_truncation,
                        reason = "`i % 8` < 8: the cast cannot truncate"
                    )]
                    let stagger = (i % 8) as u8;
                    CacheAligned(Mutex::new(Shard {
                        table: SlotTable::staggered(stagger),
                        ..Shard::default()
                    }))
                })
                .collect(),
            live: CacheAligned(AtomicUsize::new(0)),
            heap: CacheAligned(AtomicUsize::new(0)),
        }
    }

    /// The rule this index applies.
    pub fn rule(&self) -> &DedupRule {
        &self.rule
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard a fingerprint lives in.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "`shard_shift` >= 48 (at most 2^16 shards): the result is below 2^16"
    )]
    pub fn shard_of(&self, fp: Fingerprint) -> usize {
        fp.hi.checked_shr(self.shard_shift).unwrap_or(0) as usize
    }

    /// Locks one shard, to decide a run of impressions under one lock.
    pub fn lock_shard(&self, shard: usize) -> ShardGuard<'_> {
        let shard = self.shards[shard].0.lock();
        let len_before = shard.live;
        let heap_before = shard.heap_bytes();
        ShardGuard {
            shard,
            index: self,
            len_before,
            heap_before,
        }
    }

    /// Decides one impression as `lock_shard(..).check(..)` does, but adds
    /// the change in live keys to `tally` instead of publishing it: a caller
    /// deciding a few impressions one by one publishes once
    /// ([`DedupIndex::publish`]), one write to the count all cores share
    /// instead of one per new key.
    pub fn check_tallied(
        &self,
        fp: Fingerprint,
        t: Timestamp,
        now: Timestamp,
        tally: &mut Tally,
    ) -> Decision {
        let mut shard = self.shards[self.shard_of(fp)].0.lock();
        let (live, heap) = (shard.live, shard.heap_bytes());
        shard.expire(now, self.retention_ms);
        let decision = shard.check(self.rule, fp, t);
        tally.live += crate::window::growth(live, shard.live);
        tally.heap += crate::window::growth(heap, shard.heap_bytes());
        decision
    }

    /// Publishes a tally of [`DedupIndex::check_tallied`] calls.
    pub fn publish(&self, tally: Tally) {
        add_signed(&self.live.0, tally.live);
        add_signed(&self.heap.0, tally.heap);
    }

    /// Heap bytes the index holds (capacity, not use), as of the last
    /// completed operation: one atomic read.
    pub fn heap_bytes(&self) -> usize {
        self.heap.0.load(Ordering::Relaxed)
    }

    /// Live keys as of the last completed operation: cheap (one atomic
    /// read), exact once no operation is in progress.
    pub fn len_estimate(&self) -> usize {
        self.live.0.load(Ordering::Relaxed)
    }

    /// Whether an impression of `fp` at `t` would be counted (a new key, or
    /// a live one whose last count is a TTL or more away), checked at `now`.
    /// Decides nothing and changes no key.
    pub fn would_count(&self, fp: Fingerprint, t: Timestamp, now: Timestamp) -> bool {
        let mut shard = self.lock_shard(self.shard_of(fp));
        shard.shard.expire(now, self.retention_ms);
        let last = shard.shard.find(fp).map(|slot| {
            shard
                .shard
                .ring
                .get(shard.shard.table.pos(slot))
                .last_counted()
        });
        matches!(self.rule.decide(last, t), Decision::Count { .. })
    }

    /// Whether `fp` is a live key at `now`.
    pub fn contains(&self, fp: Fingerprint, now: Timestamp) -> bool {
        let mut shard = self.lock_shard(self.shard_of(fp));
        shard.shard.expire(now, self.retention_ms);
        shard.shard.find(fp).is_some()
    }

    /// Decides one impression at `t` (checked at `now`) and records it if
    /// counted.
    pub fn check(&self, fp: Fingerprint, t: Timestamp, now: Timestamp) -> Decision {
        self.lock_shard(self.shard_of(fp)).check(fp, t, now)
    }

    /// Drops every entry expired at `now`, in every shard. Operations expire
    /// their own shard as they go; this reclaims memory of idle shards.
    pub fn expire(&self, now: Timestamp) {
        for shard in 0..self.shards.len() {
            self.lock_shard(shard).shard.expire(now, self.retention_ms);
        }
    }

    /// Calls `f` with every live key's fingerprint and latest counted time,
    /// one shard at a time (each shard is locked only while it is visited).
    pub fn for_each(&self, mut f: impl FnMut(Fingerprint, Timestamp)) {
        for shard in &self.shards {
            let shard = shard.0.lock();
            for e in shard.live_entries() {
                f(e.fp, e.last_counted());
            }
        }
    }

    /// Calls `f` with each shard's live keys and their latest counted
    /// times, copied out under the shard's lock and handed over after it is
    /// released: a caller doing slow work per shard (writing a file) holds
    /// up that shard's writers only for the copy.
    pub fn for_each_shard(&self, mut f: impl FnMut(&[(Fingerprint, Timestamp)])) {
        let mut entries = Vec::new();
        for shard in &self.shards {
            entries.clear();
            {
                let shard = shard.0.lock();
                entries.extend(shard.live_entries().map(|e| (e.fp, e.last_counted())));
            }
            f(&entries);
        }
    }

    /// Records that `fp` was counted at `last` (from a snapshot or a log):
    /// the key's latest counted time becomes the later of what it was and
    /// `last`. Idempotent; entries already expired at `now` are skipped.
    pub fn restore(&self, fp: Fingerprint, last: Timestamp, now: Timestamp) {
        if last.as_millis().saturating_add(self.retention_ms) <= now.as_millis() {
            return;
        }
        let mut shard = self.lock_shard(self.shard_of(fp));
        shard.shard.expire(now, self.retention_ms);
        shard.shard.restore(fp, last);
    }

    /// Number of live keys (keys whose entry has not expired yet).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().live).sum()
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One locked shard of a [`DedupIndex`].
pub struct ShardGuard<'a> {
    shard: MutexGuard<'a, Shard>,
    index: &'a DedupIndex,
    len_before: usize,
    heap_before: usize,
}

impl Drop for ShardGuard<'_> {
    /// Publishes the change in live keys and heap bytes once, as the lock
    /// is released (no write to the shared counts when nothing changed).
    fn drop(&mut self) {
        self.index.publish(Tally {
            live: crate::window::growth(self.len_before, self.shard.live),
            heap: crate::window::growth(self.heap_before, self.shard.heap_bytes()),
        });
    }
}

/// Adds a signed change to an unsigned count; no write for no change.
fn add_signed(count: &AtomicUsize, change: isize) {
    if change > 0 {
        count.fetch_add(change.unsigned_abs(), Ordering::Relaxed);
    } else if change < 0 {
        count.fetch_sub(change.unsigned_abs(), Ordering::Relaxed);
    }
}

impl ShardGuard<'_> {
    /// Decides one impression at `t` (checked at `now`) and records it if
    /// counted. `fp` must belong to this shard.
    pub fn check(&mut self, fp: Fingerprint, t: Timestamp, now: Timestamp) -> Decision {
        let index = self.index;
        self.shard.expire(now, index.retention_ms);
        self.shard.check(index.rule, fp, t)
    }

    /// Decides a run of impressions of this shard, in order, at `now`:
    /// `decided(i, decision)` is called for the `i`-th. Same results as
    /// calling [`ShardGuard::check`] for each, faster: the memory each
    /// decision needs is loaded for the whole run first.
    pub fn check_run(
        &mut self,
        run: &[(Fingerprint, Timestamp)],
        now: Timestamp,
        mut decided: impl FnMut(usize, Decision),
    ) {
        let index = self.index;
        let shard = &mut *self.shard;
        shard.expire(now, index.retention_ms);
        shard.warm(run.iter().map(|&(fp, _)| fp));
        for (i, &(fp, t)) in run.iter().enumerate() {
            decided(i, shard.check(index.rule, fp, t));
        }
    }
}

#[derive(Default)]
struct Shard {
    /// Slot of each key: its hash bits and its current ring position.
    table: SlotTable,
    ring: Ring,
    /// Live keys: counted up on insert, down when a key's current entry
    /// leaves the ring.
    live: usize,
}

impl Shard {
    fn heap_bytes(&self) -> usize {
        self.table.heap_bytes() + self.ring.heap_bytes()
    }

    fn check(&mut self, rule: DedupRule, fp: Fingerprint, t: Timestamp) -> Decision {
        match self.find(fp) {
            Some(slot) => {
                let pos = self.table.pos(slot);
                let last = self.ring.get(pos).last_counted();
                let decision = rule.decide(Some(last), t);
                if let Decision::Count { new_last } = decision
                    && new_last > last
                {
                    self.renew(slot, pos, fp, new_last);
                }
                decision
            }
            None => {
                self.insert(fp, t);
                Decision::Count { new_last: t }
            }
        }
    }

    fn restore(&mut self, fp: Fingerprint, last: Timestamp) {
        match self.find(fp) {
            Some(slot) => {
                let pos = self.table.pos(slot);
                if last > self.ring.get(pos).last_counted() {
                    self.renew(slot, pos, fp, last);
                }
            }
            None => self.insert(fp, last),
        }
    }

    fn find(&self, fp: Fingerprint) -> Option<usize> {
        let ring = &self.ring;
        self.table.find(
            slot_hash(fp.lo),
            |pos| ring.is_live(pos),
            |pos| ring.get(pos).fp == fp,
        )
    }

    /// A live key was counted again: append its new entry (so the ring stays
    /// in expiry order) and mark the old one superseded.
    fn renew(&mut self, slot: usize, old: u32, fp: Fingerprint, last: Timestamp) {
        self.ring.supersede(old);
        let pos = self.ring.push(Entry::new(fp, last));
        self.table.set_pos(slot, pos);
    }

    fn insert(&mut self, fp: Fingerprint, last: Timestamp) {
        // Rehash first when crowded, so dead slots are dropped rather than
        // the table grown around them.
        self.live += 1;
        self.rehash_if_needed();
        let pos = self.ring.push(Entry::new(fp, last));
        let ring = &self.ring;
        self.table
            .insert(slot_hash(fp.lo), pos, |p| ring.is_live(p));
    }

    fn rehash_if_needed(&mut self) {
        let ring = &self.ring;
        // A slot is kept if its entry is in the ring, current, and of its
        // own key (after 2^32 positions an old slot could point at a
        // newer, unrelated entry).
        self.table.rehash_if_needed(self.live, |hash, pos| {
            ring.is_live(pos) && {
                let e = ring.get(pos);
                !e.superseded() && slot_hash(e.fp.lo) == hash
            }
        });
    }

    /// Loads the slot lines and candidate ring entries of `fps`. Each load is
    /// independent of the others, so their cache misses overlap; the checks
    /// that follow then find everything in cache.
    fn warm(&self, fps: impl Iterator<Item = Fingerprint> + Clone) {
        let mut sink = 0u64;
        for fp in fps.clone() {
            sink ^= self.table.touch(slot_hash(fp.lo));
        }
        let ring = &self.ring;
        for fp in fps {
            if let Some(pos) = self
                .table
                .first_candidate(slot_hash(fp.lo), |p| ring.is_live(p))
            {
                sink ^= ring.get(pos).last_counted().as_millis();
            }
        }
        std::hint::black_box(sink);
    }

    /// Pops every front entry whose `L + retention` is at or before `now`.
    /// Only the ring is read, front to back: the table learns that a key
    /// expired from its slot's position having left the ring, so expiry
    /// costs no random memory access.
    fn expire(&mut self, now: Timestamp, retention_ms: u64) {
        let Some(cutoff) = now.as_millis().checked_sub(retention_ms) else {
            return;
        };
        let mut popped = false;
        while self.ring.front_ms() <= cutoff {
            let Some((_, entry)) = self.ring.front() else {
                break;
            };
            self.ring.pop_front();
            popped = true;
            if !entry.superseded() {
                self.live -= 1;
            }
        }
        if popped {
            self.rehash_if_needed();
        }
    }

    /// Every live key's entry.
    fn live_entries(&self) -> impl Iterator<Item = Entry> + '_ {
        let ring = &self.ring;
        self.table
            .positions()
            .filter(|&pos| ring.is_live(pos))
            .map(|pos| *ring.get(pos))
            .filter(|e| !e.superseded())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3600);

    fn ts(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn fp(n: u128) -> Fingerprint {
        // Spread test keys over shards the way real hashes are.
        Fingerprint::from_u128(xxh3_128(&n.to_le_bytes()))
    }

    fn counted(d: Decision) -> bool {
        matches!(d, Decision::Count { .. })
    }

    #[test]
    fn an_emptied_index_gives_its_memory_back_and_accounts_it() {
        let index = DedupIndex::new(Duration::from_secs(60), Duration::ZERO, 64);
        let t0 = Timestamp::from_secs(1_735_689_600);
        for n in 0..200_000 {
            index.check(fp(n), t0, t0);
        }
        assert!(index.heap_bytes() > 200_000 * 24, "{}", index.heap_bytes());
        index.expire(t0.saturating_add(Duration::from_secs(61)));
        assert_eq!(index.len(), 0);
        // What is left is each shard's smallest table: no ring chunk, no
        // spare.
        let floor = index.shard_count() * 16 * 8;
        assert!(
            index.heap_bytes() <= floor,
            "{} bytes held",
            index.heap_bytes()
        );
        // And the index works on: positions moved past the released chunks.
        let later = t0.saturating_add(Duration::from_secs(120));
        assert!(matches!(
            index.check(fp(7), later, later),
            Decision::Count { .. }
        ));
        assert_eq!(index.check(fp(7), later, later), Decision::Duplicate);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn rule_counts_at_exactly_ttl_and_not_a_millisecond_before() {
        let rule = DedupRule::new(TTL);
        let base = 10_000_000;
        let ttl = 3_600_000;
        let t0 = ts(base);
        assert_eq!(rule.decide(None, t0), Decision::Count { new_last: t0 });
        assert_eq!(
            rule.decide(Some(t0), ts(base + ttl - 1)),
            Decision::Duplicate
        );
        assert_eq!(
            rule.decide(Some(t0), ts(base + ttl)),
            Decision::Count {
                new_last: ts(base + ttl)
            }
        );
        // Out of order: symmetric, and L never moves backwards.
        assert_eq!(
            rule.decide(Some(t0), ts(base - ttl + 1)),
            Decision::Duplicate
        );
        assert_eq!(
            rule.decide(Some(t0), ts(base - ttl)),
            Decision::Count { new_last: t0 }
        );
    }

    #[test]
    fn duplicates_inside_the_window_do_not_extend_it() {
        let index = DedupIndex::new(TTL, Duration::ZERO, 4);
        let key = fp(1);
        assert!(counted(index.check(key, ts(0), ts(0))));
        assert!(!counted(index.check(key, ts(3_000_000), ts(3_000_000))));
        // 3_600_000 is one TTL after the counted one, not after the duplicate.
        assert!(counted(index.check(key, ts(3_600_000), ts(3_600_000))));
        assert!(!counted(index.check(key, ts(7_199_999), ts(7_199_999))));
        assert!(counted(index.check(key, ts(7_200_000), ts(7_200_000))));
    }

    #[test]
    fn out_of_order_by_a_few_ms_between_workers() {
        let index = DedupIndex::new(TTL, Duration::from_secs(1), 1);
        let key = fp(7);
        // Worker B processes an impression received at 10_005 before worker
        // A processes one received at 10_000: only one counts.
        assert!(counted(index.check(key, ts(10_005), ts(10_006))));
        assert!(!counted(index.check(key, ts(10_000), ts(10_007))));
        // The window runs from the latest counted time, 10_005.
        assert!(!counted(index.check(key, ts(3_610_004), ts(3_610_004))));
        assert!(counted(index.check(key, ts(3_610_005), ts(3_610_005))));
    }

    #[test]
    fn expired_keys_are_freed_and_stale_entries_do_not_remove_live_keys() {
        let index = DedupIndex::new(Duration::from_millis(100), Duration::ZERO, 1);
        for k in 0..5000 {
            index.check(fp(k), ts(0), ts(0));
        }
        assert_eq!(index.len(), 5000);
        // Key 0 is counted again at 100 ms: its first entry goes stale.
        assert!(counted(index.check(fp(0), ts(100), ts(100))));
        assert_eq!(index.len(), 1, "the other 4999 expired at 100 ms");
        // The stale entry of key 0 was popped without removing key 0.
        assert!(!counted(index.check(fp(0), ts(150), ts(150))));
        index.expire(ts(200));
        assert!(index.is_empty());
    }

    #[test]
    fn ring_positions_survive_many_chunk_crossings() {
        let index = DedupIndex::new(Duration::from_millis(10), Duration::ZERO, 1);
        // 20 generations of 3000 keys each, crossing chunk boundaries at
        // different offsets; each generation must be fully deduped and then
        // expire.
        for generation in 0..20u64 {
            let t = ts(generation * 10);
            for k in 0..3000u128 {
                let key = fp(k + u128::from(generation) * 1_000_000);
                assert!(counted(index.check(key, t, t)));
                assert!(!counted(index.check(key, t, t)));
            }
            assert_eq!(index.len(), 3000);
        }
    }

    #[test]
    fn shrinks_after_a_peak() {
        let index = DedupIndex::new(Duration::from_millis(10), Duration::ZERO, 1);
        for k in 0..100_000 {
            index.check(fp(k), ts(0), ts(0));
        }
        let peak = index.shards[0].0.lock().table.capacity();
        index.check(fp(u128::MAX), ts(10), ts(10));
        let after = index.shards[0].0.lock().table.capacity();
        assert!(after < peak / 4, "capacity {after} after a peak of {peak}");
    }

    #[test]
    fn scope_decides_what_counts_as_the_same_key() {
        let c: CampaignId = "b7da5a35-0974-4b7b-ab5d-576e9e628d80".parse().unwrap();
        let u = UserId::parse("user-1").unwrap();
        let ad1 = AdId::parse("ad-1").unwrap();
        let ad2 = AdId::parse("ad-2").unwrap();
        assert_ne!(
            Fingerprint::of(&c, &ad1, &u, DedupScope::Ad),
            Fingerprint::of(&c, &ad2, &u, DedupScope::Ad)
        );
        assert_eq!(
            Fingerprint::of(&c, &ad1, &u, DedupScope::Campaign),
            Fingerprint::of(&c, &ad2, &u, DedupScope::Campaign)
        );
        // Moving a byte between the ad and the user changes the key.
        assert_ne!(
            Fingerprint::of(
                &c,
                &AdId::parse("ab").unwrap(),
                &UserId::parse("c").unwrap(),
                DedupScope::Ad
            ),
            Fingerprint::of(
                &c,
                &AdId::parse("a").unwrap(),
                &UserId::parse("bc").unwrap(),
                DedupScope::Ad
            )
        );
        // Long ids take the heap path and hash the same bytes.
        let long = UserId::parse("u".repeat(500)).unwrap();
        assert_eq!(
            Fingerprint::of(&c, &ad1, &long, DedupScope::Ad),
            Fingerprint::of(&c, &ad1, &long.clone(), DedupScope::Ad)
        );
        assert_ne!(
            Fingerprint::of(&c, &ad1, &long, DedupScope::Ad),
            Fingerprint::of(&c, &ad2, &long, DedupScope::Ad)
        );
    }

    #[test]
    fn restore_keeps_the_latest_time_and_skips_expired_entries() {
        let index = DedupIndex::new(TTL, Duration::ZERO, 4);
        let now = ts(10_000_000);
        index.restore(fp(1), ts(9_000_000), now);
        index.restore(fp(1), ts(8_000_000), now); // older: ignored
        index.restore(fp(2), ts(1_000_000), now); // expired at `now`: skipped
        assert_eq!(index.len(), 1);
        let mut seen = Vec::new();
        index.for_each(|f, t| seen.push((f, t)));
        assert_eq!(seen, vec![(fp(1), ts(9_000_000))]);
        assert!(!counted(index.check(fp(1), ts(9_000_000 + 3_599_999), now)));
        assert!(counted(index.check(fp(1), ts(9_000_000 + 3_600_000), now)));
    }

    #[test]
    fn the_live_estimate_follows_inserts_and_expiry_and_contains_agrees() {
        let index = DedupIndex::new(Duration::from_millis(100), Duration::ZERO, 8);
        let run: Vec<(Fingerprint, Timestamp)> = (0..1000).map(|k| (fp(k), ts(0))).collect();
        for &(f, t) in &run {
            index.check(f, t, ts(0));
        }
        assert_eq!(index.len_estimate(), 1000);
        assert_eq!(index.len_estimate(), index.len());
        assert!(index.contains(fp(5), ts(50)));
        assert!(!index.contains(fp(5_000), ts(50)));
        index.expire(ts(100));
        assert_eq!(index.len_estimate(), 0);
        assert!(!index.contains(fp(5), ts(100)));
    }

    #[test]
    fn shard_choice_uses_top_bits_and_handles_one_shard() {
        let one = DedupIndex::new(TTL, Duration::ZERO, 1);
        assert_eq!(one.shard_of(Fingerprint::from_u128(u128::MAX)), 0);
        let many = DedupIndex::new(TTL, Duration::ZERO, 60);
        assert_eq!(many.shard_count(), 64);
        assert_eq!(many.shard_of(Fingerprint::from_u128(u128::MAX)), 63);
        assert_eq!(
            many.shard_of(Fingerprint::from_u128(u128::from(u64::MAX))),
            0
        );
    }
}
