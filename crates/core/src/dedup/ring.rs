//! The FIFO of one shard: entries in insertion order, which is expiry order.

use std::collections::VecDeque;

use super::Fingerprint;
use crate::time::Timestamp;

/// A key's fingerprint and latest counted time, as stored in the ring.
#[derive(Clone, Copy, Default)]
pub(super) struct Entry {
    pub(super) fp: Fingerprint,
    /// Milliseconds of the latest counted time; the top bit marks the entry
    /// *superseded*: its key was counted again and a newer entry holds it,
    /// so popping this one does not end the key.
    last: u64,
}

const SUPERSEDED: u64 = 1 << 63;

impl Entry {
    pub(super) fn new(fp: Fingerprint, last_counted: Timestamp) -> Self {
        Entry {
            fp,
            last: last_counted.as_millis() & !SUPERSEDED,
        }
    }

    pub(super) fn last_counted(&self) -> Timestamp {
        Timestamp::from_millis(self.last & !SUPERSEDED)
    }

    pub(super) fn superseded(&self) -> bool {
        self.last & SUPERSEDED != 0
    }
}

const CHUNK_BITS: u32 = 10;
const CHUNK_LEN: usize = 1 << CHUNK_BITS;
const CHUNK_MASK: u32 = (1 << CHUNK_BITS) - 1;
/// Chunk numbers live in the top `32 - CHUNK_BITS` bits of a position.
const CHUNK_NUMBER_MASK: u32 = u32::MAX >> CHUNK_BITS;

/// A FIFO of entries addressed by 32-bit positions that only grow (wrapping).
///
/// Entries live in fixed chunks so the ring grows and shrinks a chunk at a
/// time: no reallocation that would copy every entry and double the memory
/// for a moment, as a `Vec` or `VecDeque` would. Positions wrap at 2³², which
/// is safe because far fewer entries are ever live in one shard.
///
/// Invariant: `chunks` holds exactly the chunks from the one containing
/// `head` to the one containing `tail - 1`, plus the one containing `tail`
/// if `tail` is not at a chunk boundary.
pub(super) struct Ring {
    chunks: VecDeque<Box<[Entry]>>,
    /// Position of the oldest entry.
    head: u32,
    /// Position the next entry gets.
    tail: u32,
    /// One emptied chunk kept back, so a ring that hovers around a chunk
    /// boundary does not allocate and free on every crossing.
    spare: Option<Box<[Entry]>>,
    /// The oldest entry's latest counted time in milliseconds (`u64::MAX`
    /// when empty), kept beside the bounds: every operation asks whether
    /// the front has expired, and the answer is almost always no, which
    /// this tells without reaching into the front chunk (cold memory, one
    /// cache miss an operation).
    front_ms: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            chunks: VecDeque::new(),
            head: 0,
            tail: 0,
            spare: None,
            front_ms: u64::MAX,
        }
    }
}

impl Ring {
    /// The oldest entry's latest counted time in milliseconds, `u64::MAX`
    /// when the ring is empty.
    #[inline]
    pub(super) fn front_ms(&self) -> u64 {
        self.front_ms
    }

    fn chunk_index(&self, pos: u32) -> usize {
        ((pos >> CHUNK_BITS).wrapping_sub(self.head >> CHUNK_BITS) & CHUNK_NUMBER_MASK) as usize
    }

    pub(super) fn get(&self, pos: u32) -> &Entry {
        &self.chunks[self.chunk_index(pos)][(pos & CHUNK_MASK) as usize]
    }

    /// Whether `pos` is still in the ring (not yet popped).
    #[inline]
    pub(super) fn is_live(&self, pos: u32) -> bool {
        pos.wrapping_sub(self.head) < self.tail.wrapping_sub(self.head)
    }

    /// Marks the entry at `pos` as superseded by a newer one of its key.
    pub(super) fn supersede(&mut self, pos: u32) {
        let i = self.chunk_index(pos);
        self.chunks[i][(pos & CHUNK_MASK) as usize].last |= SUPERSEDED;
    }

    pub(super) fn push(&mut self, entry: Entry) -> u32 {
        if self.tail & CHUNK_MASK == 0 {
            let chunk = self
                .spare
                .take()
                .unwrap_or_else(|| vec![Entry::default(); CHUNK_LEN].into_boxed_slice());
            self.chunks.push_back(chunk);
        }
        let pos = self.tail;
        if pos == self.head {
            self.front_ms = entry.last_counted().as_millis();
        }
        let back = self.chunks.len() - 1;
        self.chunks[back][(pos & CHUNK_MASK) as usize] = entry;
        self.tail = pos.wrapping_add(1);
        pos
    }

    pub(super) fn front(&self) -> Option<(u32, Entry)> {
        self.nth(0)
    }

    /// An emptied ring gives back all its memory: its chunks, the spare and
    /// the list. Positions move on to the next chunk boundary, so every
    /// position handed out before stays behind the head (dead); the next
    /// push allocates one chunk.
    fn release(&mut self) {
        self.chunks = VecDeque::new();
        self.spare = None;
        let aligned = self.tail.wrapping_add(CHUNK_MASK) & !CHUNK_MASK;
        self.head = aligned;
        self.tail = aligned;
        self.front_ms = u64::MAX;
    }

    /// Heap bytes held: the chunks (the spare included) and their list.
    pub(super) fn heap_bytes(&self) -> usize {
        let chunks = self.chunks.len() + usize::from(self.spare.is_some());
        chunks * CHUNK_LEN * size_of::<Entry>() + self.chunks.capacity() * size_of::<Box<[Entry]>>()
    }

    /// The `n`-th entry from the front, with its position.
    pub(super) fn nth(&self, n: u32) -> Option<(u32, Entry)> {
        let len = self.tail.wrapping_sub(self.head);
        (n < len).then(|| {
            let pos = self.head.wrapping_add(n);
            (pos, *self.get(pos))
        })
    }

    pub(super) fn pop_front(&mut self) {
        debug_assert_ne!(self.head, self.tail);
        self.head = self.head.wrapping_add(1);
        if self.head == self.tail {
            self.release();
            return;
        }
        if self.head & CHUNK_MASK == 0 {
            self.spare = self.chunks.pop_front();
        }
        self.front_ms = match self.front() {
            Some((_, entry)) => entry.last_counted().as_millis(),
            None => u64::MAX,
        };
    }
}
