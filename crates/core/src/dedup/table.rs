//! The index of one shard: an open-addressing hash table of 8-byte slots.
//!
//! Each slot packs 32 bits of the key's hash and the 32-bit ring position of
//! its current entry (`hash << 32 | position`; 0 is empty, and the hash's top
//! bit is always set, so no full slot is 0). Lookups probe linearly from the
//! slot the hash's low bits name, comparing the stored hash bits before the
//! caller looks at the ring entry, so:
//!
//! * a new key costs one cache line of slots and no ring access;
//! * a live key costs that line and its ring entry;
//! * growing, shrinking and deleting (backward shift) rehash from the slots
//!   alone, never touching the ring.
//!
//! The load factor stays at or below 3/4, where linear probing almost always
//! ends within the first 64-byte line (8 slots). A general-purpose table
//! (hashbrown) keeps control bytes and buckets in separate arrays: one more
//! cache miss per lookup, the difference that decides throughput at 10M keys.

/// Most slots: positions in a shard stay far below this.
const MAX_SLOTS: usize = 1 << 31;
/// Smallest non-empty table.
const MIN_SLOTS: usize = 16;

/// The slots of one shard.
#[derive(Default)]
pub(super) struct SlotTable {
    slots: Vec<u64>,
    len: usize,
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
fn pos_of(slot: u64) -> u32 {
    slot as u32
}

impl SlotTable {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.slots.len()
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

    /// The position stored in the first slot whose hash bits equal `hash`,
    /// scanning from its home slot: the ring entry a lookup will read first.
    #[inline]
    pub(super) fn first_candidate(&self, hash: u32) -> Option<u32> {
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
            if hash_of(s) == hash {
                return Some(pos_of(s));
            }
            i = (i + 1) & mask;
        }
    }

    /// The slot holding the key with `hash` for which `is_key(position)`
    /// says yes.
    #[inline]
    pub(super) fn find(&self, hash: u32, mut is_key: impl FnMut(u32) -> bool) -> Option<usize> {
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
            if hash_of(s) == hash && is_key(pos_of(s)) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// The slot holding exactly (`hash`, `pos`).
    pub(super) fn find_exact(&self, hash: u32, pos: u32) -> Option<usize> {
        let wanted = (u64::from(hash) << 32) | u64::from(pos);
        self.find(hash, |p| p == pos)
            .filter(|&i| self.slots[i] == wanted)
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

    /// Adds a key known to be absent.
    pub(super) fn insert(&mut self, hash: u32, pos: u32) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.resize((self.slots.len() * 2).max(MIN_SLOTS));
        }
        self.place((u64::from(hash) << 32) | u64::from(pos));
        self.len += 1;
    }

    fn place(&mut self, slot: u64) {
        let mask = self.mask();
        let mut i = hash_of(slot) as usize & mask;
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
    }

    /// Removes a slot, shifting later members of its probe run back so
    /// lookups never stop at a hole too early.
    pub(super) fn remove_at(&mut self, slot: usize) {
        let mask = self.mask();
        let mut hole = slot;
        let mut j = slot;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s == 0 {
                break;
            }
            let home = hash_of(s) as usize & mask;
            // Move `s` into the hole unless its home lies after the hole
            // (cyclically, within (hole, j]).
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = 0;
        self.len -= 1;
    }

    /// Every stored position.
    pub(super) fn positions(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().filter(|&&s| s != 0).map(|&s| pos_of(s))
    }

    /// Gives memory back after a peak: below a quarter full, halve (and
    /// again) down to twice the live keys. The hysteresis keeps this rare.
    pub(super) fn shrink_if_sparse(&mut self) {
        const KEEP: usize = 4096;
        let cap = self.slots.len();
        if cap > KEEP && self.len * 4 < cap {
            let target = (self.len * 2).next_power_of_two().max(KEEP);
            self.resize(target);
        }
    }

    fn resize(&mut self, slots: usize) {
        let slots = slots.min(MAX_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![0; slots]);
        for s in old.into_iter().filter(|&s| s != 0) {
            self.place(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u64) -> u32 {
        slot_hash(xxhash_rust::xxh3::xxh3_64(&n.to_le_bytes()))
    }

    #[test]
    fn insert_find_remove_with_collisions_and_wraparound() {
        let mut t = SlotTable::default();
        // Many keys sharing a home slot (same low bits) and wrapping round
        // the end of the table.
        let crowd: Vec<u32> = (0..12).map(|i| (1 << 31) | (i << 20) | 15).collect();
        for (pos, &hash) in crowd.iter().enumerate() {
            t.insert(hash, pos as u32);
        }
        for (pos, &hash) in crowd.iter().enumerate() {
            let slot = t.find(hash, |p| p == pos as u32).unwrap();
            assert_eq!(t.pos(slot), pos as u32);
        }
        // Remove every other one; the rest must stay reachable.
        for (pos, &hash) in crowd.iter().enumerate().step_by(2) {
            let slot = t.find_exact(hash, pos as u32).unwrap();
            t.remove_at(slot);
        }
        for (pos, &hash) in crowd.iter().enumerate() {
            let found = t.find(hash, |p| p == pos as u32).is_some();
            assert_eq!(found, pos % 2 == 1, "key {pos}");
        }
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn a_table_under_churn_matches_a_map() {
        let mut t = SlotTable::default();
        let mut live = std::collections::HashMap::new();
        let mut rng = 7u64;
        for step in 0..200_000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let key = rng % 5_000;
            let hash = h(key);
            match live.get(&key) {
                Some(&pos) if step % 3 == 0 => {
                    let slot = t.find_exact(hash, pos).unwrap();
                    t.remove_at(slot);
                    live.remove(&key);
                }
                Some(&pos) => {
                    let slot = t.find(hash, |p| p == pos).unwrap();
                    t.set_pos(slot, step as u32);
                    live.insert(key, step as u32);
                }
                None => {
                    t.insert(hash, step as u32);
                    live.insert(key, step as u32);
                }
            }
            if step % 10_000 == 0 {
                t.shrink_if_sparse();
            }
        }
        assert_eq!(t.len(), live.len());
        for (&key, &pos) in &live {
            assert!(t.find(h(key), |p| p == pos).is_some(), "key {key}");
            assert!(t.first_candidate(h(key)).is_some());
        }
        let mut positions: Vec<u32> = t.positions().collect();
        let mut expected: Vec<u32> = live.values().copied().collect();
        positions.sort_unstable();
        expected.sort_unstable();
        assert_eq!(positions, expected);
    }

    #[test]
    fn shrinks_after_a_peak_and_keeps_its_keys() {
        let mut t = SlotTable::default();
        for k in 0..100_000u64 {
            t.insert(h(k), k as u32);
        }
        let peak = t.capacity();
        for k in 0..99_000u64 {
            let slot = t.find_exact(h(k), k as u32).unwrap();
            t.remove_at(slot);
        }
        t.shrink_if_sparse();
        assert!(t.capacity() < peak / 4, "{} after {peak}", t.capacity());
        for k in 99_000..100_000u64 {
            assert!(t.find(h(k), |p| p == k as u32).is_some());
        }
    }
}
