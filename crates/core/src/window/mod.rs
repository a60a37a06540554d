//! Window counters: how counted impressions are kept over time, so that
//! "how many in the last hour, the last day, in total" and a time series
//! are answered in constant time from bounded memory.
//!
//! * [`WindowCounter`] ([`seconds`]): a campaign's counts, exact to the
//!   second: per-second counts for the last day, hour totals for the kept
//!   history, the total.
//! * [`UniqueCounter`] ([`uniques`]): a counter's distinct users, by
//!   minute, hour and in total (unique-user sketches).
//! * [`QuarterCounter`] ([`quarters`]): a campaign's counts per quarter
//!   hour over months, which calendar days in any time zone are sums of.
//! * [`AdCounter`] ([`minutes`]): an ad's counts, exact to the minute:
//!   per-minute counts for the last day, hour totals for the kept history,
//!   the total. A campaign may have thousands of ads, and their ids come
//!   from clients; a minute costs an ad 8 bytes where the second-exact
//!   form costs ~280, so invented ad ids cannot make per-ad state dominate
//!   memory (see `docs/semantics.md` for what minute-aligned windows mean).
//!
//! Both keep buckets sorted by time: impressions of the current minute, by
//! far the common case, reach the last bucket directly; late ones are found
//! by binary search. Both report the heap bytes they hold, and how a
//! recording changed them, for the engine's memory accounting.

pub mod minutes;
pub mod quarters;
pub mod seconds;
pub mod uniques;

pub use minutes::{AdCounter, AdParts};
pub use quarters::{QUARTER_SECS, QuarterCounter, QuarterParts, quarters_of};
pub use seconds::{WindowCounter, WindowParts};
pub use uniques::{UniqueCounter, UniqueCounterParts, UniqueStats, WindowImpressions};

use crate::stats::LAST_DAY_SECS;

/// Minute buckets kept behind the current minute: the day window starts at
/// most this many minutes back.
pub(crate) const MINUTES_BACK: u64 = LAST_DAY_SECS / 60;

/// Fewest hour buckets kept: the day window reaches into the 25th hour back.
pub const MIN_HISTORY_HOURS: u64 = LAST_DAY_SECS / 3600 + 1;

/// The bucket width of a time series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// One-second buckets (available for the last hour).
    Second,
    /// One-minute buckets (available for the last day).
    Minute,
    /// One-hour buckets (available for the retained history).
    Hour,
}

impl Resolution {
    /// The bucket width in seconds.
    pub const fn secs(self) -> u64 {
        match self {
            Resolution::Second => 1,
            Resolution::Minute => 60,
            Resolution::Hour => 3600,
        }
    }
}

/// What a time series counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Counted impressions.
    #[default]
    Impressions,
    /// Distinct users among them (kept per minute and per hour).
    UniqueUsers,
}

/// `after - before` as a signed change, for byte accounting (sizes are far
/// below `isize::MAX`).
#[must_use]
pub fn growth(before: usize, after: usize) -> isize {
    after.cast_signed() - before.cast_signed()
}
