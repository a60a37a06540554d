//! A per-client rate limit on the tracking endpoints
//! (`RATE_LIMIT_PER_CLIENT`, impressions per second per client address).
//!
//! The client is who [`crate::client_addr`] says (the TCP peer, or behind
//! `TRUSTED_PROXIES` the address they name), so the pixel's ids and the
//! limit agree on who a client is.
//!
//! It is the generic cell rate algorithm: per client, the theoretical
//! arrival time `tat` of its next impression, which each admitted
//! impression pushes `1 / rate` further. A request is admitted when `tat`
//! is at most one second ahead of now (a client may burst a second's worth)
//! and then charged all its impressions: a batch larger than the burst is
//! admitted when the client owes nothing and leaves it in debt, so the
//! average rate holds whatever the request size. Refused requests are
//! charged nothing and told when to retry.
//!
//! Time is the application's clock, in microseconds, so tests move it with
//! the manual clock. State is one 64-bit `tat` per active client in 64
//! locked shards; a client whose `tat` has passed owes nothing and is
//! dropped by [`RateLimiter::sweep`] (once a second), so memory follows the
//! clients of the last second, not of all time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use impression_core::Timestamp;
use parking_lot::Mutex;

const SHARDS: usize = 64;
/// A client may run this far ahead of its rate: one second's worth.
const BURST_US: u64 = 1_000_000;

/// The per-client limit.
pub struct RateLimiter {
    /// Microseconds one impression takes of a client's allowance.
    interval_us: u64,
    shards: Box<[Mutex<HashMap<IpAddr, u64>>]>,
    /// Heap bytes of the shards' maps, as of the last sweep.
    heap: AtomicUsize,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("interval_us", &self.interval_us)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limit of `per_second` impressions per second per client (at
    /// least 1).
    pub fn new(per_second: u32) -> Self {
        RateLimiter {
            interval_us: (1_000_000 / u64::from(per_second.max(1))).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            heap: AtomicUsize::new(0),
        }
    }

    /// The limit, in impressions per second.
    pub fn per_second(&self) -> u64 {
        1_000_000 / self.interval_us
    }

    /// Admits `n` impressions of `client` at `now`, or says how long to
    /// wait before the next try.
    pub fn check(&self, client: IpAddr, n: u32, now: Timestamp) -> Result<(), Duration> {
        let now_us = now.as_millis().saturating_mul(1000);
        let mut shard = self.shards[shard_of(client)].lock();
        let tat = shard.get(&client).copied().unwrap_or(now_us).max(now_us);
        let ahead = tat - now_us;
        if ahead > BURST_US {
            return Err(Duration::from_micros(ahead - BURST_US));
        }
        let charge = u64::from(n.max(1)).saturating_mul(self.interval_us);
        shard.insert(client, tat.saturating_add(charge));
        Ok(())
    }

    /// Forgets the clients that owe nothing at `now`, and gives back the
    /// room they took. Call about once a second.
    pub fn sweep(&self, now: Timestamp) {
        let now_us = now.as_millis().saturating_mul(1000);
        let mut heap = 0;
        for shard in &self.shards {
            let mut clients = shard.lock();
            clients.retain(|_, tat| *tat > now_us);
            let len = clients.len();
            if clients.capacity() > 2 * len.max(16) {
                clients.shrink_to(len * 2);
            }
            heap += map_bytes(clients.capacity());
        }
        self.heap.store(heap, Ordering::Relaxed);
    }

    /// Heap bytes the clients' state held at the last sweep.
    pub fn heap_bytes(&self) -> usize {
        self.heap.load(Ordering::Relaxed)
    }
}

/// A hash map of `capacity` (client, `tat`) entries: a bucket each, and a
/// control byte, over the 8/7 load of hashbrown.
fn map_bytes(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8).div_ceil(7).next_power_of_two();
    buckets * (size_of::<(IpAddr, u64)>() + 1)
}

fn shard_of(client: IpAddr) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    // A fixed hasher: shard choice need not be secret, only spread.
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(client);
    #[allow(
        clippy::cast_possible_truncation,
        reason = "reduced modulo SHARDS (64) first"
    )]
    let shard = (hash % SHARDS as u64) as usize;
    shard
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_735_689_600_000;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(T0 + ms)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_client_bursts_a_second_then_keeps_the_rate() {
        let limit = RateLimiter::new(10);
        let a = ip("10.0.0.1");
        // Ten at once fill the second; the allowance runs one ahead of it.
        for _ in 0..11 {
            assert_eq!(limit.check(a, 1, at(0)), Ok(()));
        }
        let wait = limit.check(a, 1, at(0)).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Another client is not affected.
        assert_eq!(limit.check(ip("10.0.0.2"), 1, at(0)), Ok(()));
        // A tenth of a second later one more is allowed.
        assert_eq!(limit.check(a, 1, at(100)), Ok(()));
        assert!(limit.check(a, 1, at(100)).is_err());
    }

    #[test]
    fn a_large_batch_is_admitted_then_paid_for() {
        let limit = RateLimiter::new(100);
        let a = ip("::1");
        assert_eq!(limit.check(a, 1000, at(0)), Ok(()));
        // It owes 10 s: refused until it is back within a second.
        assert_eq!(limit.check(a, 1, at(0)), Err(Duration::from_secs(9)));
        assert!(limit.check(a, 1, at(8_999)).is_err());
        assert_eq!(limit.check(a, 1, at(9_000)), Ok(()));
    }

    #[test]
    fn sweeping_forgets_clients_that_owe_nothing() {
        let limit = RateLimiter::new(1000);
        for n in 0..10_000u32 {
            let client = IpAddr::from(n.to_be_bytes());
            assert_eq!(limit.check(client, 1, at(0)), Ok(()));
        }
        limit.sweep(at(0));
        assert!(limit.heap_bytes() > 10_000 * size_of::<(IpAddr, u64)>());
        limit.sweep(at(10));
        let total: usize = limit.shards.iter().map(|s| s.lock().len()).sum();
        assert_eq!(total, 0);
        assert!(limit.heap_bytes() < 64 * 1024, "{}", limit.heap_bytes());
    }
}
