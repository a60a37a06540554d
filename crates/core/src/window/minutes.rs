//! An ad's counter: counts exact to the minute.
//!
//! [`AdCounter`] keeps, per minute of the last day that saw an impression,
//! the minute's count (8 bytes), per hour of the kept history the hour's
//! total, and the all-time total. Its windows are minute-aligned: at a
//! moment in minute `m` (Unix minutes), `last_hour` counts the impressions
//! stamped in minutes `m - 59 ..= m` and `last_day` those in
//! `m - 1439 ..= m`, the current partial minute included. (The campaign's
//! own windows, [`WindowCounter`](super::WindowCounter), are exact to the
//! second; an ad's window can hold up to 59 seconds more at its old edge.)
//!
//! A window `[lo, m]` is summed as the minutes of `lo`'s hour from `lo` on
//! (≤ 60 additions) and the hour totals after it (≤ 25 for a day): constant
//! work over contiguous memory, whatever the volume.

use std::collections::VecDeque;

use super::UniqueStats;
use super::{MIN_HISTORY_HOURS, MINUTES_BACK};
use crate::stats::Stats;
use crate::time::Timestamp;

/// Minutes in the `last_hour` window, the current one included.
const HOUR_MINUTES: u64 = 60;
/// Minutes in the `last_day` window, the current one included.
const DAY_MINUTES: u64 = 1440;

#[derive(Clone, Copy, Debug)]
struct MinuteCount {
    /// Minutes since the epoch (fits 32 bits until the year 10136).
    minute: u32,
    count: u32,
}

#[derive(Clone, Copy, Debug)]
struct HourCount {
    /// Hours since the epoch.
    hour: u32,
    count: u64,
}

/// The contents of an [`AdCounter`] as plain data, for snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdParts {
    /// All counted impressions ever recorded.
    pub total: u64,
    /// Minute buckets, ascending: (minutes since the epoch, count).
    pub minutes: Vec<(u64, u32)>,
    /// Hour buckets, ascending: (hours since the epoch, count).
    pub hours: Vec<(u64, u64)>,
}

impl From<super::WindowParts> for AdParts {
    /// The minute-exact contents of a second-exact counter (an ad's
    /// counters were second-exact before; their snapshots load as this).
    fn from(parts: super::WindowParts) -> Self {
        AdParts {
            total: parts.total,
            minutes: parts
                .minutes
                .into_iter()
                .map(|(minute, seconds)| {
                    (
                        minute,
                        seconds.iter().fold(0u32, |a, &c| a.saturating_add(c)),
                    )
                })
                .filter(|&(_, count)| count > 0)
                .collect(),
            hours: parts.hours,
        }
    }
}

/// Exact-to-the-minute counts of one ad's counted impressions.
#[derive(Clone, Debug)]
pub struct AdCounter {
    total: u64,
    minutes: VecDeque<MinuteCount>,
    hours: VecDeque<HourCount>,
    history_hours: u64,
}

impl AdCounter {
    /// An empty counter keeping `history_hours` hourly buckets (at least
    /// [`MIN_HISTORY_HOURS`]).
    pub fn new(history_hours: u64) -> Self {
        AdCounter {
            total: 0,
            minutes: VecDeque::new(),
            hours: VecDeque::new(),
            history_hours: history_hours.max(MIN_HISTORY_HOURS),
        }
    }

    /// Records one counted impression at `t`, observed at `now`. Returns
    /// the change in [`AdCounter::heap_bytes`] (zero unless a bucket array
    /// grew or shrank).
    pub fn record(&mut self, t: Timestamp, now: Timestamp) -> isize {
        self.total += 1;
        let sec = t.as_secs();
        let now_minute = now.as_secs() / 60;
        let (minute, hour) = (sec / 60, sec / 3600);
        let before = self.heap_bytes();
        if minute + MINUTES_BACK >= now_minute {
            self.add_minute(minute, now_minute);
        }
        if hour + self.history_hours > now_minute / 60 {
            self.add_hour(hour, now_minute / 60);
        }
        super::growth(before, self.heap_bytes())
    }

    /// The counts at `now` (minute-aligned windows, see the module docs).
    pub fn stats(&self, now: Timestamp) -> Stats {
        let now_minute = now.as_secs() / 60;
        Stats {
            last_hour: self.count_since(now_minute.saturating_sub(HOUR_MINUTES - 1)),
            last_day: self.count_since(now_minute.saturating_sub(DAY_MINUTES - 1)),
            total: self.total,
            unique_users: UniqueStats::default(),
        }
    }

    /// All counted impressions ever recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Counted impressions in minute `lo` or later. Exact for any `lo` at
    /// most a day before the latest `now` recorded with.
    pub fn count_since(&self, lo: u64) -> u64 {
        let lo_hour = lo / 60;
        let next_hour_minute = (lo_hour + 1) * 60;
        let first = self.minutes.partition_point(|b| u64::from(b.minute) < lo);
        let within_lo_hour: u64 = self
            .minutes
            .range(first..)
            .take_while(|b| u64::from(b.minute) < next_hour_minute)
            .map(|b| u64::from(b.count))
            .sum();
        let after = self.hours.partition_point(|h| u64::from(h.hour) <= lo_hour);
        let later_hours: u64 = self.hours.range(after..).map(|h| h.count).sum();
        within_lo_hour + later_hours
    }

    /// Drops buckets no window or history needs any more at `now`; returns
    /// the change in [`AdCounter::heap_bytes`].
    pub fn prune(&mut self, now: Timestamp) -> isize {
        let before = self.heap_bytes();
        let now_minute = now.as_secs() / 60;
        self.drop_old(now_minute);
        let (minutes, hours) = (self.minutes.len(), self.hours.len());
        if self.minutes.capacity() > 2 * minutes.max(4) {
            self.minutes.shrink_to(minutes.max(4));
        }
        if self.hours.capacity() > 2 * hours.max(4) {
            self.hours.shrink_to(hours.max(4));
        }
        super::growth(before, self.heap_bytes())
    }

    /// The contents, for a snapshot.
    pub fn to_parts(&self) -> AdParts {
        AdParts {
            total: self.total,
            minutes: self
                .minutes
                .iter()
                .map(|b| (u64::from(b.minute), b.count))
                .collect(),
            hours: self
                .hours
                .iter()
                .map(|h| (u64::from(h.hour), h.count))
                .collect(),
        }
    }

    /// A counter holding `parts` (as from [`AdCounter::to_parts`]). Buckets
    /// are sorted and merged, so the parts need not be; buckets beyond 32-bit
    /// minutes or hours (after the year 10136) cannot exist and are dropped.
    pub fn from_parts(history_hours: u64, parts: AdParts) -> Self {
        let mut c = AdCounter::new(history_hours);
        c.total = parts.total;
        let mut minutes = parts.minutes;
        minutes.sort_unstable_by_key(|m| m.0);
        for (minute, count) in minutes {
            let Ok(minute) = u32::try_from(minute) else {
                continue;
            };
            match c.minutes.back_mut() {
                Some(last) if last.minute == minute => {
                    last.count = last.count.saturating_add(count);
                }
                _ => c.minutes.push_back(MinuteCount { minute, count }),
            }
        }
        let mut hours = parts.hours;
        hours.sort_unstable_by_key(|h| h.0);
        for (hour, count) in hours {
            let Ok(hour) = u32::try_from(hour) else {
                continue;
            };
            match c.hours.back_mut() {
                Some(last) if last.hour == hour => last.count += count,
                _ => c.hours.push_back(HourCount { hour, count }),
            }
        }
        c
    }

    /// Heap bytes held (capacity, not length), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.minutes.capacity() * size_of::<MinuteCount>()
            + self.hours.capacity() * size_of::<HourCount>()
    }

    fn drop_old(&mut self, now_minute: u64) {
        while self
            .minutes
            .front()
            .is_some_and(|b| u64::from(b.minute) + MINUTES_BACK < now_minute)
        {
            self.minutes.pop_front();
        }
        while self
            .hours
            .front()
            .is_some_and(|h| u64::from(h.hour) + self.history_hours <= now_minute / 60)
        {
            self.hours.pop_front();
        }
    }

    fn add_minute(&mut self, minute: u64, now_minute: u64) {
        let Ok(minute) = u32::try_from(minute) else {
            return;
        };
        if let Some(last) = self.minutes.back_mut()
            && last.minute == minute
        {
            last.count = last.count.saturating_add(1);
            return;
        }
        let i = self.minutes.partition_point(|b| b.minute < minute);
        if let Some(b) = self.minutes.get_mut(i)
            && b.minute == minute
        {
            b.count = b.count.saturating_add(1);
            return;
        }
        // A new bucket starts at most once a minute: the moment to drop the
        // ones that fell out of the day.
        self.drop_old(now_minute);
        let i = self.minutes.partition_point(|b| b.minute < minute);
        self.minutes.insert(i, MinuteCount { minute, count: 1 });
    }

    fn add_hour(&mut self, hour: u64, now_hour: u64) {
        let Ok(hour) = u32::try_from(hour) else {
            return;
        };
        if let Some(last) = self.hours.back_mut()
            && last.hour == hour
        {
            last.count += 1;
            return;
        }
        let i = self.hours.partition_point(|h| h.hour < hour);
        if let Some(h) = self.hours.get_mut(i)
            && h.hour == hour
        {
            h.count += 1;
            return;
        }
        self.drop_old(now_hour * 60);
        let i = self.hours.partition_point(|h| h.hour < hour);
        self.hours.insert(i, HourCount { hour, count: 1 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-01-01T00:00:00Z: starts a minute, an hour and a day.
    const T0: u64 = 1_735_689_600;

    fn at(sec: u64) -> Timestamp {
        Timestamp::from_secs(sec)
    }

    #[test]
    fn windows_are_whole_minutes_the_current_one_included() {
        let mut c = AdCounter::new(168);
        // 00:00:30 and 00:59:59.
        c.record(at(T0 + 30), at(T0 + 30));
        c.record(at(T0 + 3599), at(T0 + 3599));
        // At 01:00:59 the hour window is minutes 00:01 ..= 01:00: 00:00:30 is out.
        let s = c.stats(at(T0 + 3659));
        assert_eq!((s.last_hour, s.last_day, s.total), (1, 2, 2));
        // At 00:59:00 both are in (minutes 00:00 ..= 00:59).
        assert_eq!(c.stats(at(T0 + 3540)).last_hour, 2);
        // The day window leaves 00:00 at 24:00:00 exactly.
        assert_eq!(c.stats(at(T0 + 86_399)).last_day, 2);
        assert_eq!(c.stats(at(T0 + 86_400)).last_day, 1);
    }

    #[test]
    fn windows_match_a_scan_at_every_edge() {
        let mut c = AdCounter::new(168);
        let end = T0 + 26 * 3600;
        let times: Vec<u64> = (T0..=end).step_by(37).collect();
        for &t in &times {
            c.record(at(t), at(t));
        }
        for now in [
            end,
            end + 1,
            end + 59,
            end + 60,
            end + 3599,
            end + 3601,
            end + 86_399,
        ] {
            let now_minute = now / 60;
            let expect = |span: u64| {
                times
                    .iter()
                    .filter(|&&t| t / 60 + span > now_minute)
                    .count() as u64
            };
            let s = c.stats(at(now));
            assert_eq!(s.last_hour, expect(HOUR_MINUTES), "last_hour at {now}");
            assert_eq!(s.last_day, expect(DAY_MINUTES), "last_day at {now}");
        }
    }

    #[test]
    fn late_impressions_land_in_their_own_minute() {
        let mut c = AdCounter::new(168);
        let now = T0 + 10 * 3600;
        c.record(at(now), at(now));
        c.record(at(now - 1800), at(now));
        c.record(at(now - 7200), at(now));
        let s = c.stats(at(now));
        assert_eq!((s.last_hour, s.last_day, s.total), (2, 3, 3));
    }

    #[test]
    fn memory_is_bounded_and_accounted() {
        let mut c = AdCounter::new(MIN_HISTORY_HOURS);
        let mut accounted: isize = 0;
        let minutes = 3 * 1440;
        for m in 0..minutes {
            let t = at(T0 + m * 60);
            accounted += c.record(t, t);
        }
        assert!(c.minutes.len() <= 1441, "{}", c.minutes.len());
        assert!(c.hours.len() as u64 <= MIN_HISTORY_HOURS);
        assert_eq!(accounted, c.heap_bytes().cast_signed());
        // A day later everything but the total and history is gone.
        let later = at(T0 + (minutes + 1441) * 60);
        accounted += c.prune(later);
        assert_eq!(accounted, c.heap_bytes().cast_signed());
        assert!(c.minutes.is_empty());
        assert_eq!(c.stats(later).total, minutes);
    }

    #[test]
    fn parts_round_trip() {
        let mut c = AdCounter::new(168);
        for s in [T0, T0 + 59, T0 + 60, T0 + 5400, T0 + 5400] {
            c.record(at(s), at(s));
        }
        let parts = c.to_parts();
        assert_eq!(
            parts.minutes,
            vec![(T0 / 60, 2), (T0 / 60 + 1, 1), (T0 / 60 + 90, 2)]
        );
        let back = AdCounter::from_parts(168, parts.clone());
        assert_eq!(back.to_parts(), parts);
        assert_eq!(back.stats(at(T0 + 5400)), c.stats(at(T0 + 5400)));
    }
}
