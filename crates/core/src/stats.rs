//! The statistics answered for a campaign, and the windows they cover.

use crate::window::UniqueStats;

/// Length of the `last_hour` window, in seconds.
pub const LAST_HOUR_SECS: u64 = 3_600;
/// Length of the `last_day` window, in seconds.
pub const LAST_DAY_SECS: u64 = 86_400;

/// Counted impressions of one campaign.
///
/// `last_hour` and `last_day` are exact at one-second resolution: at a moment
/// in second `s` (Unix seconds), they count impressions whose timestamp lies in
/// seconds `s - 3599 ..= s` and `s - 86_399 ..= s`, the current partial second
/// included. Impressions stamped slightly in the future (clock skew between
/// nodes) are inside both windows. So `last_hour <= last_day <= total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    /// Counted impressions in the last 3,600 seconds.
    pub last_hour: u64,
    /// Counted impressions in the last 86,400 seconds.
    pub last_day: u64,
    /// All counted impressions since the campaign was created.
    pub total: u64,
    /// Distinct users among the counted impressions, over the same windows
    /// in whole minutes and hours (see [`UniqueStats`]); each at most the
    /// impressions of its window.
    pub unique_users: UniqueStats,
}

/// A campaign's counts broken down by ad.
///
/// The number of distinct ads tracked per campaign is bounded
/// ([`EngineConfig::max_ads_per_campaign`](crate::EngineConfig)); impressions
/// of ads beyond the bound are counted in `other` (and still in the
/// campaign's totals), so memory never grows without bound and nothing is lost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdBreakdown {
    /// The whole campaign's counts, from the same snapshot as the ads'.
    pub campaign: Stats,
    /// Each tracked ad's counts, in ad id order.
    pub ads: Vec<(crate::AdId, Stats)>,
    /// Counts of impressions of ads beyond the bound.
    pub other: Stats,
    /// The bound on distinct ads.
    pub limit: usize,
    /// Whether an ad was refused its own counters because of the bound.
    pub limit_exceeded: bool,
}
