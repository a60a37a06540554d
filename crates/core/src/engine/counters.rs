//! One campaign's counters: its impressions and users over time, as a
//! whole and per ad.
//!
//! The campaign's impressions are exact to the second
//! ([`WindowCounter`]); each ad's, and those of ads beyond
//! `max_ads_per_campaign` (`other_ads`), to the minute ([`AdCounter`]).
//! Every counter has its unique users beside it ([`UniqueCounter`]), fed the
//! same counted impressions, so a user counted for an ad is a user of the
//! campaign too, and `unique_users` never exceeds the impressions of its
//! window.
//!
//! Which ads get their own counters depends only on the order in which ads
//! were first counted: the first `max_ads_per_campaign`. Replaying the
//! counted impressions in the order they were counted rebuilds the same
//! state.

use hashbrown::HashMap;

use crate::campaign::Campaign;
use crate::impression::AdId;
use crate::stats::{AdBreakdown, Stats};
use crate::time::Timestamp;
use crate::uniques::HllParseError;
use crate::window::{
    AdCounter, AdParts, Metric, QuarterCounter, QuarterParts, Resolution, UniqueCounter,
    UniqueCounterParts, WindowCounter, WindowImpressions, WindowParts, growth,
};

use super::EngineConfig;

/// One campaign's complete state as plain data, for snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignSnapshot {
    /// The campaign.
    pub campaign: Campaign,
    /// Its impressions.
    pub all: WindowParts,
    /// Its users.
    pub users: UniqueCounterParts,
    /// Its impressions per quarter hour, over the daily history.
    pub quarters: QuarterParts,
    /// Its ads' own counters, in ad id order.
    pub ads: Vec<(AdId, AdSnapshot)>,
    /// Counters of ads beyond the limit.
    pub other_ads: AdSnapshot,
    /// Whether an ad was refused its own counters.
    pub ads_limit_exceeded: bool,
}

/// An ad's counters as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdSnapshot {
    /// Its impressions, minute-exact.
    pub counts: AdParts,
    /// Its users.
    pub users: UniqueCounterParts,
}

/// What a change did to the heap bytes held, by kind (see
/// [`MemoryUse`](super::MemoryUse)).
#[derive(Clone, Copy, Debug, Default)]
pub struct Growth {
    /// Window counters and the per-ad map.
    pub counters: isize,
    /// Unique-user sketches.
    pub sketches: isize,
}

impl std::ops::AddAssign for Growth {
    fn add_assign(&mut self, other: Growth) {
        self.counters += other.counters;
        self.sketches += other.sketches;
    }
}

/// An ad's counters: its impressions and its users.
#[derive(Clone, Debug)]
struct AdState {
    counts: AdCounter,
    users: UniqueCounter,
}

impl AdState {
    fn new(history_hours: u64) -> Self {
        AdState {
            counts: AdCounter::new(history_hours),
            users: UniqueCounter::new(history_hours),
        }
    }

    fn record(&mut self, t: Timestamp, user: Option<u64>, now: Timestamp) -> Growth {
        Growth {
            counters: self.counts.record(t, now),
            sketches: user.map_or(0, |user| self.users.record(t, user, now)),
        }
    }

    /// Impressions and users at `now`; the windows are whole minutes.
    fn stats(&mut self, now: Timestamp) -> (Stats, Growth) {
        let mut stats = self.counts.stats(now);
        let minute = now.as_secs() / 60;
        let impressions = WindowImpressions {
            last_hour: self.counts.count_since(minute.saturating_sub(59)),
            last_day: self
                .counts
                .count_since((minute / 60).saturating_sub(23) * 60),
            total: stats.total,
        };
        let (users, sketches) = self.users.stats(now, impressions);
        stats.unique_users = users;
        (
            stats,
            Growth {
                counters: 0,
                sketches,
            },
        )
    }

    fn prune(&mut self, now: Timestamp) -> Growth {
        Growth {
            counters: self.counts.prune(now),
            sketches: self.users.prune(now),
        }
    }

    /// Its state as plain data, and what putting held-back users in grew.
    fn snapshot(&mut self) -> (AdSnapshot, isize) {
        let sketches = self.users.flush();
        let snapshot = AdSnapshot {
            counts: self.counts.to_parts(),
            users: self.users.to_parts(),
        };
        (snapshot, sketches)
    }

    fn restore(history_hours: u64, snapshot: AdSnapshot) -> Result<Self, HllParseError> {
        Ok(AdState {
            counts: AdCounter::from_parts(history_hours, snapshot.counts),
            users: UniqueCounter::from_parts(history_hours, snapshot.users)?,
        })
    }

    fn heap_bytes(&self) -> (usize, usize) {
        (self.counts.heap_bytes(), self.users.heap_bytes())
    }
}

/// A campaign's counters: all of it, and per ad.
pub(super) struct CampaignCounters {
    all: WindowCounter,
    users: UniqueCounter,
    quarters: QuarterCounter,
    ads: HashMap<AdId, AdState>,
    other_ads: AdState,
    ads_limit_exceeded: bool,
    max_ads: usize,
    history_hours: u64,
}

/// Heap bytes of one entry of the per-ad map: a bucket (key, counters) and
/// a control byte.
const AD_ENTRY_BYTES: usize = size_of::<(AdId, AdState)>() + 1;

impl CampaignCounters {
    pub(super) fn new(config: &EngineConfig) -> Self {
        CampaignCounters {
            all: WindowCounter::new(config.history_hours),
            users: UniqueCounter::new(config.history_hours),
            quarters: QuarterCounter::new(config.daily_history_days),
            ads: HashMap::new(),
            other_ads: AdState::new(config.history_hours),
            ads_limit_exceeded: false,
            max_ads: config.max_ads_per_campaign,
            history_hours: config.history_hours,
        }
    }

    /// Heap bytes held, all of it, by kind (for restores and tests;
    /// recording keeps the engine's totals up to date by changes instead).
    pub(super) fn heap_bytes(&self) -> Growth {
        let (mut counters, mut sketches) = (
            self.all.heap_bytes() + self.quarters.heap_bytes(),
            self.users.heap_bytes(),
        );
        for state in self.ads.values().chain(std::iter::once(&self.other_ads)) {
            let (c, s) = state.heap_bytes();
            counters += c;
            sketches += s;
        }
        counters += self.ads.capacity() * AD_ENTRY_BYTES
            + self.ads.keys().map(|ad| ad.as_str().len()).sum::<usize>();
        Growth {
            counters: growth(0, counters),
            sketches: growth(0, sketches),
        }
    }

    /// Records one counted impression of `ad` by the user with hash `user`
    /// (`None`: impressions only, for logs written before users were kept);
    /// returns the change in heap bytes.
    pub(super) fn record(
        &mut self,
        ad: &AdId,
        t: Timestamp,
        user: Option<u64>,
        now: Timestamp,
    ) -> Growth {
        let mut grew = Growth {
            counters: self.all.record(t, now) + self.quarters.record(t, now),
            sketches: user.map_or(0, |user| self.users.record(t, user, now)),
        };
        if let Some(state) = self.ads.get_mut(ad) {
            grew += state.record(t, user, now);
        } else if self.ads.len() < self.max_ads {
            let mut state = AdState::new(self.history_hours);
            grew += state.record(t, user, now);
            let capacity = self.ads.capacity();
            self.ads.insert(ad.clone(), state);
            let added_slots = self.ads.capacity() - capacity;
            grew.counters += growth(0, added_slots * AD_ENTRY_BYTES + ad.as_str().len());
        } else {
            self.ads_limit_exceeded = true;
            grew += self.other_ads.record(t, user, now);
        }
        grew
    }

    /// The campaign's impressions and users at `now`.
    pub(super) fn stats(&mut self, now: Timestamp) -> (Stats, Growth) {
        let mut stats = self.all.stats(now);
        let now_sec = now.as_secs();
        let impressions = WindowImpressions {
            last_hour: self.all.count_since((now_sec / 60).saturating_sub(59) * 60),
            last_day: self
                .all
                .count_since((now_sec / 3600).saturating_sub(23) * 3600),
            total: stats.total,
        };
        let (users, sketches) = self.users.stats(now, impressions);
        stats.unique_users = users;
        (
            stats,
            Growth {
                counters: 0,
                sketches,
            },
        )
    }

    /// The campaign and each ad at `now`.
    pub(super) fn breakdown(&mut self, now: Timestamp) -> (AdBreakdown, Growth) {
        let (campaign, mut grew) = self.stats(now);
        let mut ads: Vec<(AdId, Stats)> = Vec::with_capacity(self.ads.len());
        for (ad, state) in &mut self.ads {
            let (stats, g) = state.stats(now);
            grew += g;
            ads.push((ad.clone(), stats));
        }
        ads.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let (other, g) = self.other_ads.stats(now);
        grew += g;
        (
            AdBreakdown {
                campaign,
                ads,
                other,
                limit: self.max_ads,
                limit_exceeded: self.ads_limit_exceeded,
            },
            grew,
        )
    }

    /// Counted impressions per bucket (see [`WindowCounter::series`]).
    pub(super) fn series(&self, resolution: Resolution, first: u64, count: usize) -> Vec<u64> {
        self.all.series(resolution, first, count)
    }

    /// Distinct users per minute or hour bucket, each at most the bucket's
    /// impressions; per second there are no user sketches: zeros. Also
    /// what putting held-back users in grew.
    pub(super) fn user_series(
        &mut self,
        resolution: Resolution,
        first: u64,
        count: usize,
    ) -> (Vec<u64>, Growth) {
        let grew = Growth {
            counters: 0,
            sketches: self.users.flush(),
        };
        let users = match resolution {
            Resolution::Second => return (vec![0; count], grew),
            Resolution::Minute => self.users.minute_series(first, count),
            Resolution::Hour => self.users.hour_series(first, count),
        };
        let impressions = self.all.series(resolution, first, count);
        let series = users
            .into_iter()
            .zip(impressions)
            .map(|(u, i)| u.min(i))
            .collect();
        (series, grew)
    }

    /// `metric` over each UTC range `[from, to)` (Unix seconds):
    /// impressions summed from quarter hours (ranges of whole quarters), or
    /// the distinct users of the hours that start in the range, each at
    /// most the impressions of those hours. Also what putting held-back
    /// users in grew.
    pub(super) fn range_counts(
        &mut self,
        metric: Metric,
        ranges: &[(u64, u64)],
    ) -> (Vec<u64>, Growth) {
        match metric {
            Metric::Impressions => (
                ranges
                    .iter()
                    .map(|&(from, to)| self.quarters.sum(from, to))
                    .collect(),
                Growth::default(),
            ),
            Metric::UniqueUsers => {
                let grew = Growth {
                    counters: 0,
                    sketches: self.users.flush(),
                };
                let counts = ranges
                    .iter()
                    .map(|&(from, to)| {
                        let (first, end) = (from.div_ceil(3600), to.div_ceil(3600));
                        let users = self.users.union_hours(first, end);
                        users.min(self.quarters.sum(first * 3600, end * 3600))
                    })
                    .collect();
                (counts, grew)
            }
        }
    }

    /// The whole state as plain data, and what putting held-back users in
    /// grew.
    pub(super) fn snapshot(&mut self, campaign: &Campaign) -> (CampaignSnapshot, Growth) {
        let mut sketches = self.users.flush();
        let mut ads: Vec<(AdId, AdSnapshot)> = self
            .ads
            .iter_mut()
            .map(|(ad, state)| {
                let (snapshot, grew) = state.snapshot();
                sketches += grew;
                (ad.clone(), snapshot)
            })
            .collect();
        ads.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let (other_ads, grew) = self.other_ads.snapshot();
        sketches += grew;
        let snapshot = CampaignSnapshot {
            campaign: campaign.clone(),
            all: self.all.to_parts(),
            users: self.users.to_parts(),
            quarters: self.quarters.to_parts(),
            ads,
            other_ads,
            ads_limit_exceeded: self.ads_limit_exceeded,
        };
        (
            snapshot,
            Growth {
                counters: 0,
                sketches,
            },
        )
    }

    pub(super) fn restore(
        config: &EngineConfig,
        snapshot: CampaignSnapshot,
    ) -> Result<Self, HllParseError> {
        let history = config.history_hours;
        let mut counters = CampaignCounters::new(config);
        counters.all = WindowCounter::from_parts(history, snapshot.all);
        counters.users = UniqueCounter::from_parts(history, snapshot.users)?;
        counters.quarters =
            QuarterCounter::from_parts(config.daily_history_days, snapshot.quarters);
        counters.other_ads = AdState::restore(history, snapshot.other_ads)?;
        counters.ads_limit_exceeded = snapshot.ads_limit_exceeded;
        for (ad, parts) in snapshot.ads {
            counters.ads.insert(ad, AdState::restore(history, parts)?);
        }
        Ok(counters)
    }

    /// Drops what no window needs at `now`; returns the change in heap bytes.
    pub(super) fn prune(&mut self, now: Timestamp) -> Growth {
        let mut grew = Growth {
            counters: self.all.prune(now) + self.quarters.prune(now),
            sketches: self.users.prune(now),
        };
        grew += self.other_ads.prune(now);
        for state in self.ads.values_mut() {
            grew += state.prune(now);
        }
        grew
    }
}
