//! The index of one shard: an open-addressing hash table of 8-byte slots.
//!
//! Each slot packs 32 bits of the key's hash and the 32-bit ring position of
//! its current entry (`hash << 32 | position`; 0 is empty, and the hash's top
//! bit is always set, so no used slot is 0). Lookups probe linearly from the
//! slot the hash's low bits name, comparing the stored hash bits before the
//! caller looks at the ring entry, so:
//!
//! * a new key costs one cache line of slots and no ring access;
//! * a live key costs that line and its ring entry.
//!
//! **Expiry never touches the table.** A slot whose position has left the
//! ring (its key's current entry expired) is *dead*: lookups step over it,
//! an insert reuses the first dead slot on its probe path, and a rehash drops
//! the rest. Whether a slot is dead is arithmetic on its position and the
//! ring's bounds, so expiring a key costs no cache miss at all; that halves
//! the random memory traffic of a steady stream of new keys.
//!
//! Used slots (live and dead) stay at or below 5/8 to 27/32 of the table
//! (3/4 on average; the threshold is staggered across shards, see
//! [`SlotTable::staggered`]), where linear probing almost always ends within
//! the first 64-byte line (8 slots); past that the table is rehashed, dead slots dropped, and sized to
//! twice the live keys. A general-purpose table (hashbrown) keeps control
//! bytes and buckets in separate arrays: one more cache miss per lookup, and
//! deletions that must find the key, the difference that decides throughput
//! at 10M keys.

/// Most slots: positions in a shard stay far below this.
const MAX_SLOTS: usize = 1 << 31;
/// Smallest non-empty table.
const MIN_SLOTS: usize = 16;
/// Below this size a sparse table is not worth shrinking.
const KEEP_SLOTS: usize = 4096;

/// The slots of one shard.
#[derive(Default)]
pub(super) struct SlotTable {
    slots: Vec<u64>,
    /// Slots not empty: live and dead.
    used: usize,
    /// Shifts this table's growth threshold (see [`SlotTable::staggered`]).
    stagger: u8,
    /// The kept slots of one cluster during [`SlotTable::compact`], kept
    /// for the next (it grows to the longest cluster, a few dozen slots).
    scratch: Vec<u64>,
}

/// 32 bits of a key's hash, with the top bit set (so no slot is ever 0).
#[inline]
pub(super) fn slot_hash(lo: u64) -> u32 {
    ((lo >> 32) as u32) | (1 << 31)
}

#[inline]
fn hash_of(slot: u64) -> u32 {
    (slot >> 32) as u32
}

#[inline]
#[allow(
    clippy::cast_possible_truncation,
    reason = "the position is the slot's low 32 bits: truncation is the point"
)]
fn pos_of(slot: u64) -> u32 {
    slot as u32
}

impl SlotTable {
    /// An empty table whose growth threshold is shifted by `stagger`
    /// (0..8): it rebuilds once used slots pass (20 + stagger)/32 of it,
    /// between 62.5% and 84.4% instead of all at 75%. Keys spread evenly
    /// over the shards, so with one threshold every shard of an index
    /// crossed it within the same few thousand inserts and all rebuilt at
    /// once: one long pause for the workers and, through the memory bus and
    /// page faults, a tail for every request. Staggered, the rebuilds of a
    /// doubling spread over about a third of it.
    pub(super) fn staggered(stagger: u8) -> Self {
        SlotTable {
            stagger: stagger % 8,
            ..SlotTable::default()
        }
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Heap bytes held: the slots and the compaction scratch space.
    pub(super) fn heap_bytes(&self) -> usize {
        (self.slots.capacity() + self.scratch.capacity()) * size_of::<u64>()
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Loads the slot line a lookup of `hash` starts with and returns it,
    /// so a caller can touch many lines before it needs any (the loads then
    /// overlap instead of waiting for each other).
    #[inline]
    pub(super) fn touch(&self, hash: u32) -> u64 {
        match self.slots.len() {
            0 => 0,
            _ => self.slots[hash as usize & self.mask()],
        }
    }

    /// The position in the first live slot whose hash bits equal `hash`:
    /// the ring entry a lookup will read first.
    #[inline]
    pub(super) fn first_candidate(&self, hash: u32, is_live: impl Fn(u32) -> bool) -> Option<u32> {
        self.find(hash, is_live, |_| true)
            .map(|slot| self.pos(slot))
    }

    /// The live slot holding the key with `hash` for which
    /// `is_key(position)` says yes.
    #[inline]
    pub(super) fn find(
        &self,
        hash: u32,
        is_live: impl Fn(u32) -> bool,
        mut is_key: impl FnMut(u32) -> bool,
    ) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if hash_of(s) == hash && is_live(pos_of(s)) && is_key(pos_of(s)) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// The position a slot holds.
    #[inline]
    pub(super) fn pos(&self, slot: usize) -> u32 {
        pos_of(self.slots[slot])
    }

    /// Points a slot at a new position of the same key.
    #[inline]
    pub(super) fn set_pos(&mut self, slot: usize, pos: u32) {
        let s = self.slots[slot];
        self.slots[slot] = (s & !u64::from(u32::MAX)) | u64::from(pos);
    }

    /// Adds a key known to be absent, in the first dead slot on its probe
    /// path or else the empty slot that ends it.
    pub(super) fn insert(&mut self, hash: u32, pos: u32, is_live: impl Fn(u32) -> bool) {
        if (self.used + 1) * 4 > self.slots.len() * 3 {
            // The caller rehashes (dropping dead slots) before it gets here
            // in the normal course; this only keeps the table from filling.
            self.rebuild((self.slots.len() * 2).max(MIN_SLOTS), |_, _| true);
        }
        let slot = (u64::from(hash) << 32) | u64::from(pos);
        let mask = self.mask();
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s == 0 {
                self.slots[i] = slot;
                self.used += 1;
                return;
            }
            if !is_live(pos_of(s)) {
                self.slots[i] = slot;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Rehashes when used slots pass the threshold (about 3/4 of the
    /// table, see [`SlotTable::staggered`]), or live keys fall
    /// below 1/8 of a large one: dead slots are dropped and the table sized
    /// to twice the live keys (`live`). `is_current(hash, pos)` tells a slot
    /// worth keeping; it reads the ring, which is fine for an operation this
    /// rare (amortized over the inserts or expiries that led to it).
    pub(super) fn rehash_if_needed(&mut self, live: usize, is_current: impl Fn(u32, u32) -> bool) {
        let cap = self.slots.len();
        let crowded = self.used * 32 > cap * (20 + usize::from(self.stagger));
        // An emptied shard gives its table back whatever its size; a
        // sparse one keeps up to KEEP_SLOTS, so a shard whose keys come and
        // go does not rebuild on every swing.
        let sparse = (cap > KEEP_SLOTS && live * 8 < cap) || (live == 0 && cap > MIN_SLOTS);
        if !(crowded || sparse) {
            return;
        }
        let target = (live * 2).next_power_of_two().clamp(MIN_SLOTS, MAX_SLOTS);
        self.rebuild(target, is_current);
    }

    /// Moves the slots `keep(hash, pos)` accepts into a table of `size`.
    fn rebuild(&mut self, size: usize, keep: impl Fn(u32, u32) -> bool) {
        let size = size.clamp(MIN_SLOTS, MAX_SLOTS);
        if size == self.slots.len() && self.compact(&keep) {
            return;
        }
        let old = std::mem::replace(&mut self.slots, vec![0; size]);
        self.used = 0;
        let mask = self.mask();
        for s in old.into_iter().filter(|&s| s != 0) {
            if !keep(hash_of(s), pos_of(s)) {
                continue;
            }
            let mut i = hash_of(s) as usize & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
            self.used += 1;
        }
    }

    /// Drops the slots `keep(hash, pos)` rejects without a new table: the
    /// steady state of a shard (as many keys expiring as arriving) rebuilds
    /// at the same size again and again, and a new table each time made the
    /// process's memory swing by the size of the tables being rebuilt
    /// (allocated before the old ones were freed, and returned to the OS
    /// and taken back by the allocator in between).
    ///
    /// Cluster by cluster (a run of used slots between empty ones), the kept
    /// slots are lifted out in probe order and put back from their homes.
    /// With linear probing every slot's home lies in its own cluster, at or
    /// before it, so each lands at or after its home and at or before where
    /// it was: clusters only shrink, the empty slots between them stay
    /// empty, and every lookup still ends where it should. Returns false,
    /// doing nothing, if the table has no empty slot to start from.
    fn compact(&mut self, keep: &impl Fn(u32, u32) -> bool) -> bool {
        let Some(start) = self.slots.iter().position(|&s| s == 0) else {
            return false;
        };
        let mask = self.mask();
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut used = 0;
        // From just after an empty slot, so no cluster runs past the start.
        let mut i = (start + 1) & mask;
        let mut seen = 0;
        while seen < self.slots.len() {
            if self.slots[i] == 0 {
                i = (i + 1) & mask;
                seen += 1;
                continue;
            }
            scratch.clear();
            while self.slots[i] != 0 {
                let s = std::mem::take(&mut self.slots[i]);
                if keep(hash_of(s), pos_of(s)) {
                    scratch.push(s);
                }
                i = (i + 1) & mask;
                seen += 1;
            }
            for &s in &scratch {
                let mut j = hash_of(s) as usize & mask;
                while self.slots[j] != 0 {
                    j = (j + 1) & mask;
                }
                self.slots[j] = s;
            }
            used += scratch.len();
        }
        self.used = used;
        self.scratch = scratch;
        true
    }

    /// Every position in a used slot (the caller tells live from dead).
    pub(super) fn positions(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().filter(|&&s| s != 0).map(|&s| pos_of(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn h(n: u64) -> u32 {
        slot_hash(xxhash_rust::xxh3::xxh3_64(&n.to_le_bytes()))
    }

    /// Liveness for the tests: positions in `live` are live.
    struct Model {
        live: HashMap<u32, u64>,
    }

    #[test]
    fn dead_slots_are_skipped_reused_and_dropped() {
        let mut t = SlotTable::default();
        // Keys sharing a home slot, so they form one probe run.
        let crowd: Vec<u32> = (0..12).map(|i| (1 << 31) | (i << 20) | 15).collect();
        let mut model = Model {
            live: HashMap::new(),
        };
        for (pos, &hash) in (0u32..).zip(&crowd) {
            t.insert(hash, pos, |p| model.live.contains_key(&p));
            model.live.insert(pos, u64::from(pos));
        }
        // Every other key dies: lookups must step over the dead ones.
        for pos in (0..12u32).step_by(2) {
            model.live.remove(&pos);
        }
        let is_live = |p: u32| model.live.contains_key(&p);
        for (pos, &hash) in (0u32..).zip(&crowd) {
            let found = t.find(hash, is_live, |p| p == pos).is_some();
            assert_eq!(found, pos % 2 == 1, "key {pos}");
        }
        // A new key reuses a dead slot instead of growing the run.
        let used = t.used;
        t.insert(crowd[0], 100, is_live);
        assert_eq!(t.used, used);
        model.live.insert(100, 0);
        let is_live = |p: u32| model.live.contains_key(&p);
        assert!(t.find(crowd[0], is_live, |p| p == 100).is_some());
        // A rehash keeps exactly the live ones.
        t.rehash_if_needed(0, |_, _| true); // not needed: nothing happens
        assert_eq!(t.used, used);
        let mut sparse = SlotTable::default();
        for k in 0..10_000u32 {
            sparse.insert(h(k.into()), k, |_| true);
        }
        sparse.rehash_if_needed(10, |_, p| p < 10);
        assert_eq!(sparse.used, 10);
        assert!(sparse.capacity() <= 32);
        for k in 0..10u32 {
            assert!(sparse.find(h(k.into()), |_| true, |p| p == k).is_some());
        }
    }

    #[test]
    fn a_rebuild_at_the_same_size_compacts_in_place() {
        let mut t = SlotTable::default();
        // Enough keys for long clusters (load 3/4 of 4096 slots), then every
        // third dies.
        for k in 0..3_000u32 {
            t.insert(h(k.into()), k, |_| true);
        }
        let (cap, at) = (t.capacity(), t.slots.as_ptr());
        let alive = |p: u32| !p.is_multiple_of(3);
        t.rebuild(cap, |_, p| alive(p));
        assert_eq!(t.capacity(), cap);
        assert_eq!(t.slots.as_ptr(), at, "no new table");
        assert_eq!(t.used, (0..3_000u32).filter(|&p| alive(p)).count());
        for k in 0..3_000u32 {
            let found = t.find(h(k.into()), |_| true, |p| p == k).is_some();
            assert_eq!(found, alive(k), "key {k}");
        }
        // Probe runs start at their homes: inserts after compaction still
        // find their place, and every key is found.
        for k in 3_000..3_500u32 {
            t.insert(h(k.into()), k, |_| true);
        }
        for k in 3_000..3_500u32 {
            assert!(
                t.find(h(k.into()), |_| true, |p| p == k).is_some(),
                "key {k}"
            );
        }
    }

    #[test]
    fn a_table_under_churn_matches_a_map() {
        // Keys come and go: a key dies when its position leaves a sliding
        // window, as ring entries expire. The table must agree with a map.
        let mut t = SlotTable::default();
        let mut current: HashMap<u64, u32> = HashMap::new();
        let mut owner: HashMap<u32, u64> = HashMap::new();
        let window = 3_000u32;
        let mut rng = 7u64;
        for pos in 0..300_000u32 {
            // Position `pos - window` leaves the window: its key, if that was
            // its current position, dies.
            if let Some(departed) = pos.checked_sub(window)
                && let Some(key) = owner.remove(&departed)
            {
                current.remove(&key);
            }
            let oldest = pos.saturating_sub(window);
            let is_live = |p: u32| p >= oldest && p < pos;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let key = rng % 5_000;
            let hash = h(key);
            match t.find(hash, is_live, |p| current.get(&key) == Some(&p)) {
                Some(slot) => {
                    t.set_pos(slot, pos);
                    owner.remove(&current[&key]);
                }
                None => {
                    assert!(!current.contains_key(&key), "key {key} lost");
                    t.insert(hash, pos, is_live);
                }
            }
            current.insert(key, pos);
            owner.insert(pos, key);
            let is_live_after = |p: u32| p >= oldest && p <= pos;
            t.rehash_if_needed(current.len(), |_, p| is_live_after(p));
        }
        let end = 300_000u32;
        let is_live = |p: u32| p >= end - window && p < end;
        for (&key, &pos) in &current {
            assert!(
                t.find(h(key), is_live, |p| p == pos).is_some(),
                "key {key} at {pos}"
            );
        }
        assert!(
            t.capacity() <= 8 * window as usize,
            "{} slots",
            t.capacity()
        );
    }
}
