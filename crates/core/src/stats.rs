//! The statistics answered for a campaign, and the windows they cover.

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
}
