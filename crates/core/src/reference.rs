//! A naive reference model of the counting rules, for tests.
//!
//! It keeps every counted impression in a list and scans it for every
//! decision and every answer: obviously right, hopelessly slow. Property
//! tests drive the real engine (and every storage backend) and this model
//! with the same random operations and compare every answer.

use std::collections::HashMap;
use std::time::Duration;

use crate::campaign::CampaignId;
use crate::dedup::DedupScope;
use crate::impression::{AdId, Impression, Rejection, TrackOutcome, UserId};
use crate::stats::{AdBreakdown, LAST_DAY_SECS, LAST_HOUR_SECS, Stats};
use crate::time::{Timestamp, duration_millis};
use crate::window::{Metric, Resolution, UniqueStats};

/// The model: campaigns' start times and every counted impression.
#[derive(Clone, Debug)]
pub struct ReferenceModel {
    ttl_ms: u64,
    scope: DedupScope,
    max_ads: usize,
    starts: HashMap<CampaignId, Timestamp>,
    counted: Vec<(CampaignId, AdId, UserId, Timestamp)>,
}

impl ReferenceModel {
    /// A model with this TTL, scope and per-campaign ad limit.
    pub fn new(ttl: Duration, scope: DedupScope, max_ads: usize) -> Self {
        ReferenceModel {
            ttl_ms: duration_millis(ttl),
            scope,
            max_ads,
            starts: HashMap::new(),
            counted: Vec::new(),
        }
    }

    /// Registers a campaign.
    pub fn create_campaign(&mut self, id: CampaignId, start: Timestamp) {
        self.starts.insert(id, start);
    }

    /// Decides one impression, recording it if counted.
    pub fn track(&mut self, imp: &Impression) -> TrackOutcome {
        let Some(&start) = self.starts.get(&imp.campaign_id) else {
            return TrackOutcome::Rejected(Rejection::UnknownCampaign);
        };
        if imp.timestamp < start {
            return TrackOutcome::Rejected(Rejection::NotStarted);
        }
        let latest = self
            .counted
            .iter()
            .filter(|(c, ad, user, _)| {
                *c == imp.campaign_id
                    && *user == imp.user_id
                    && (self.scope == DedupScope::Campaign || *ad == imp.ad_id)
            })
            .map(|e| e.3.as_millis())
            .max();
        if latest.is_some_and(|l| l.abs_diff(imp.timestamp.as_millis()) < self.ttl_ms) {
            return TrackOutcome::Duplicate;
        }
        self.counted.push((
            imp.campaign_id,
            imp.ad_id.clone(),
            imp.user_id.clone(),
            imp.timestamp,
        ));
        TrackOutcome::Counted
    }

    /// The campaign's stats at `now`.
    pub fn stats(&self, id: CampaignId, now: Timestamp) -> Option<Stats> {
        self.starts.get(&id)?;
        let mut stats = window(self.of(id).map(|e| e.3), now);
        stats.unique_users = users(self.of(id).map(|e| (&e.2, e.3)), now);
        Some(stats)
    }

    /// The campaign's per-ad stats at `now`: the first `max_ads` ads counted
    /// get their own, the rest are summed in `other`; ads' windows are whole
    /// minutes.
    pub fn ad_stats(&self, id: CampaignId, now: Timestamp) -> Option<AdBreakdown> {
        self.starts.get(&id)?;
        let mut own: Vec<&AdId> = Vec::new();
        for e in self.of(id) {
            if !own.contains(&&e.1) && own.len() < self.max_ads {
                own.push(&e.1);
            }
        }
        let mut ads: Vec<(AdId, Stats)> = own
            .iter()
            .map(|&ad| {
                let of_ad = || self.of(id).filter(|e| e.1 == *ad);
                let mut s = minute_window(of_ad().map(|e| e.3), now);
                s.unique_users = users(of_ad().map(|e| (&e.2, e.3)), now);
                (ad.clone(), s)
            })
            .collect();
        ads.sort_by(|a, b| a.0.cmp(&b.0));
        let distinct: std::collections::HashSet<&AdId> = self.of(id).map(|e| &e.1).collect();
        let others = || self.of(id).filter(|e| !own.contains(&&e.1));
        let mut other = minute_window(others().map(|e| e.3), now);
        other.unique_users = users(others().map(|e| (&e.2, e.3)), now);
        Some(AdBreakdown {
            campaign: self.stats(id, now)?,
            ads,
            other,
            limit: self.max_ads,
            limit_exceeded: distinct.len() > self.max_ads,
        })
    }

    /// `metric` per bucket, as the engine's `timeseries` (unique users are
    /// kept per minute and hour only: per second, zeros).
    pub fn series(
        &self,
        id: CampaignId,
        resolution: Resolution,
        metric: Metric,
        first: u64,
        count: usize,
    ) -> Option<Vec<u64>> {
        self.starts.get(&id)?;
        let width = resolution.secs();
        Some(
            (first..first + count as u64)
                .map(|bucket| {
                    let of_bucket = || self.of(id).filter(|e| e.3.as_secs() / width == bucket);
                    match metric {
                        Metric::Impressions => of_bucket().count() as u64,
                        Metric::UniqueUsers if resolution == Resolution::Second => 0,
                        Metric::UniqueUsers => distinct(of_bucket().map(|e| &e.2)),
                    }
                })
                .collect(),
        )
    }

    /// `metric` over UTC ranges `[from, to)`, as the engine's
    /// `range_counts`: impressions stamped in the range; distinct users of
    /// the hours starting in it (all history is kept here: callers stay
    /// within the engine's).
    pub fn range_counts(
        &self,
        id: CampaignId,
        metric: Metric,
        ranges: &[(u64, u64)],
    ) -> Option<Vec<u64>> {
        self.starts.get(&id)?;
        Some(
            ranges
                .iter()
                .map(|&(from, to)| match metric {
                    Metric::Impressions => self
                        .of(id)
                        .filter(|e| (from..to).contains(&e.3.as_secs()))
                        .count() as u64,
                    Metric::UniqueUsers => {
                        let hours = from.div_ceil(3600) * 3600..to.div_ceil(3600) * 3600;
                        distinct(
                            self.of(id)
                                .filter(|e| hours.contains(&e.3.as_secs()))
                                .map(|e| &e.2),
                        )
                    }
                })
                .collect(),
        )
    }

    fn of(&self, id: CampaignId) -> impl Iterator<Item = &(CampaignId, AdId, UserId, Timestamp)> {
        self.counted.iter().filter(move |e| e.0 == id)
    }
}

/// Distinct users of `events` (user, time) at `now`: last hour by whole
/// minutes (`m-59 ..`), last day by whole hours (`h-23 ..`), in total.
fn users<'a>(events: impl Iterator<Item = (&'a UserId, Timestamp)>, now: Timestamp) -> UniqueStats {
    let events: Vec<(&UserId, Timestamp)> = events.collect();
    let (minute, hour) = (now.as_secs() / 60, now.as_secs() / 3600);
    let of = |keep: &dyn Fn(Timestamp) -> bool| {
        distinct(events.iter().filter(|e| keep(e.1)).map(|e| e.0))
    };
    UniqueStats {
        last_hour: of(&|t| t.as_secs() / 60 + 59 >= minute),
        last_day: of(&|t| t.as_secs() / 3600 + 23 >= hour),
        total: of(&|_| true),
    }
}

fn distinct<'a>(users: impl Iterator<Item = &'a UserId>) -> u64 {
    users.collect::<std::collections::HashSet<_>>().len() as u64
}

/// An ad's windows: whole minutes, the current one included.
fn minute_window(times: impl Iterator<Item = Timestamp>, now: Timestamp) -> Stats {
    let now_minute = now.as_secs() / 60;
    let mut s = Stats::default();
    for t in times {
        let minute = t.as_secs() / 60;
        s.total += 1;
        s.last_hour += u64::from(minute + LAST_HOUR_SECS / 60 > now_minute);
        s.last_day += u64::from(minute + LAST_DAY_SECS / 60 > now_minute);
    }
    s
}

/// A campaign's windows: exact to the second.
fn window(times: impl Iterator<Item = Timestamp>, now: Timestamp) -> Stats {
    let now_sec = now.as_secs();
    let mut s = Stats::default();
    for t in times {
        s.total += 1;
        s.last_hour += u64::from(t.as_secs() + LAST_HOUR_SECS > now_sec);
        s.last_day += u64::from(t.as_secs() + LAST_DAY_SECS > now_sec);
    }
    s
}
