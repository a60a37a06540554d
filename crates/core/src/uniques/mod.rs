//! Unique users: a HyperLogLog that gives the same numbers as Redis, so the
//! embedded and the Redis backends agree.
//!
//! * [`murmur64a`]: the hash Redis's `PFADD` applies to each element.
//! * [`Hll`]: a HyperLogLog whose registers, counts, unions and wire bytes
//!   are those of Redis 7.0 (`PFADD` / `PFCOUNT` / `PFMERGE` / `GET`).

mod dense;
pub mod hll;
pub mod murmur;
mod sparse;

pub use hll::{Hll, HllParseError};
pub use murmur::{REDIS_HLL_SEED, murmur64a};
