//! The pure core of `impression-counter`: what an impression is, when it
//! counts, and how counts are kept. No I/O, no async runtime, no clock
//! reads: time is always an argument, so every rule is testable with a fake
//! clock and every backend (memory, log, Redis) applies the same rules.
//!
//! # Layout
//!
//! * [`campaign`], [`impression`]: domain types that can only hold valid
//!   values (`CampaignName::parse`, `UserId::parse`, ...).
//! * [`dedup`]: the TTL duplicate rule ([`DedupRule`]) and the sharded,
//!   self-expiring index of 128-bit key fingerprints ([`DedupIndex`]).
//! * [`window`]: counters with exact windows over the last hour and day,
//!   readable in constant time: a campaign's exact to the second
//!   ([`WindowCounter`]), an ad's exact to the minute ([`AdCounter`]).
//! * [`stats`]: the numbers answered for a campaign ([`Stats`]).
//! * [`uniques`]: distinct users, exact when few, else a HyperLogLog that
//!   answers exactly as Redis's `PFCOUNT` ([`UniqueSketch`], [`Hll`]).
//! * [`engine`]: the above put together, thread-safe, batch-first
//!   ([`Engine`]).
//! * [`time`]: [`Timestamp`] and the injectable [`Clock`].
//! * `reference` (feature `reference`): a naive model of the same rules,
//!   for property tests.
//! * [`error`]: validation errors, worded for API clients.

pub mod campaign;
pub mod dedup;
pub mod engine;
pub mod error;
pub mod impression;
#[cfg(feature = "reference")]
pub mod reference;
pub mod stats;
pub mod time;
pub mod uniques;
pub mod window;

pub use campaign::{Campaign, CampaignId, CampaignName};
pub use dedup::{Decision, DedupIndex, DedupRule, DedupScope, Fingerprint};
pub use engine::{
    AdSnapshot, CampaignExists, CampaignSnapshot, Engine, EngineConfig, MemoryUse, RestoreError,
    user_hash,
};
pub use error::ValidationError;
pub use impression::{AdId, Impression, Rejection, TrackOutcome, UserId};
pub use stats::{AdBreakdown, Stats};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use uniques::{Hll, HllParseError, UniqueParts, UniqueSketch, murmur64a};
pub use window::{
    AdCounter, AdParts, Metric, QUARTER_SECS, QuarterCounter, QuarterParts, Resolution,
    UniqueCounter, UniqueCounterParts, UniqueStats, WindowCounter, WindowParts, quarters_of,
};
