//! The campaign's counter: exact per-second counts, summed hierarchically.
//!
//! A [`WindowCounter`] answers "how many counted impressions since second
//! `s`" for any `s` in the last day, exactly, in constant time, from memory
//! that is bounded whatever the traffic:
//!
//! * **minute buckets** for the last 1,441 minutes, each holding the minute's
//!   total and its 60 per-second counts. Only minutes that saw an impression
//!   have a bucket.
//! * **hour buckets** for the retained history (at least 25 hours, so the
//!   day window never needs a dropped one; 7 days by default).
//! * the all-time **total**.
//!
//! A window `[lo, now]` is summed as: the seconds of `lo`'s minute from `lo`
//! on (≤ 60 additions), the minute totals of the rest of `lo`'s hour (≤ 59),
//! and the hour totals after it (≤ 25 for a day, plus hours of history kept
//! past `now` by clock skew). That is at most ~145 additions over contiguous
//! memory, whatever the volume: no scan over impressions.
//!
//! Memory per campaign is bounded by its active minutes: at most
//! 1,441 × 280 bytes (bucket, its 60 counters and allocator overhead) ≈ 394 KiB
//! when it sees impressions every minute of the day, plus 16 bytes per
//! retained hour (2.7 KiB for 7 days). An idle campaign costs a few dozen bytes.
//!
//! Buckets are kept sorted by time. Impressions for the current minute, by
//! far the common case, hit the last bucket directly; late ones are found by
//! binary search.

use std::collections::VecDeque;

use super::UniqueStats;
use super::{MIN_HISTORY_HOURS, MINUTES_BACK, Resolution};
use crate::stats::{LAST_DAY_SECS, LAST_HOUR_SECS, Stats};
use crate::time::Timestamp;

/// The contents of a [`WindowCounter`] as plain data, for snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowParts {
    /// All counted impressions ever recorded.
    pub total: u64,
    /// Minute buckets, ascending: (minutes since the epoch, per-second counts).
    pub minutes: Vec<(u64, [u32; 60])>,
    /// Hour buckets, ascending: (hours since the epoch, count).
    pub hours: Vec<(u64, u64)>,
}

/// Exact counts of one campaign's counted impressions over time.
#[derive(Clone, Debug)]
pub struct WindowCounter {
    total: u64,
    minutes: VecDeque<MinuteBucket>,
    hours: VecDeque<HourBucket>,
    history_hours: u64,
}

#[derive(Clone, Debug)]
struct MinuteBucket {
    /// Minutes since the epoch.
    minute: u64,
    total: u64,
    seconds: Box<[u32; 60]>,
}

#[derive(Clone, Copy, Debug)]
struct HourBucket {
    /// Hours since the epoch.
    hour: u64,
    count: u64,
}

impl WindowCounter {
    /// An empty counter keeping `history_hours` hourly buckets (at least
    /// [`MIN_HISTORY_HOURS`]).
    pub fn new(history_hours: u64) -> Self {
        WindowCounter {
            total: 0,
            minutes: VecDeque::new(),
            hours: VecDeque::new(),
            history_hours: history_hours.max(MIN_HISTORY_HOURS),
        }
    }

    /// Records one counted impression at `t`, observed at `now`. Returns
    /// the change in [`WindowCounter::heap_bytes`]: zero unless a bucket was
    /// added or dropped (at most once a minute), so the caller's accounting
    /// costs nothing on the common path.
    pub fn record(&mut self, t: Timestamp, now: Timestamp) -> isize {
        self.total += 1;
        let sec = t.as_secs();
        let now_sec = now.as_secs();
        let (minute, hour) = (sec / 60, sec / 3600);
        let wants_minute = minute + MINUTES_BACK >= now_sec / 60;
        let wants_hour = hour + self.history_hours > now_sec / 3600;
        let existing = (!wants_minute || self.minutes.back().is_some_and(|b| b.minute == minute))
            && (!wants_hour || self.hours.back().is_some_and(|h| h.hour == hour));
        let before = if existing { 0 } else { self.heap_bytes() };
        if wants_minute {
            let bucket = self.minute_bucket(minute, now);
            bucket.total += 1;
            bucket.seconds[(sec % 60) as usize] += 1;
        }
        if wants_hour {
            self.hour_bucket(hour, now).count += 1;
        }
        if existing {
            0
        } else {
            super::growth(before, self.heap_bytes())
        }
    }

    /// The counts at `now`.
    pub fn stats(&self, now: Timestamp) -> Stats {
        let now_sec = now.as_secs();
        Stats {
            last_hour: self.count_since(now_sec.saturating_sub(LAST_HOUR_SECS - 1)),
            last_day: self.count_since(now_sec.saturating_sub(LAST_DAY_SECS - 1)),
            total: self.total,
            unique_users: UniqueStats::default(),
        }
    }

    /// All counted impressions ever recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Counted impressions in second `lo` or later. Exact for any `lo` at
    /// most a day before the latest `now` recorded with.
    pub fn count_since(&self, lo: u64) -> u64 {
        let lo_minute = lo / 60;
        let lo_hour = lo / 3600;
        let next_hour_minute = (lo_hour + 1) * 60;

        let first = self.minutes.partition_point(|b| b.minute < lo_minute);
        let within_lo_hour: u64 = self
            .minutes
            .range(first..)
            .take_while(|b| b.minute < next_hour_minute)
            .map(|b| {
                if b.minute == lo_minute {
                    b.seconds[(lo % 60) as usize..]
                        .iter()
                        .map(|&c| u64::from(c))
                        .sum()
                } else {
                    b.total
                }
            })
            .sum();

        let after = self.hours.partition_point(|h| h.hour <= lo_hour);
        let later_hours: u64 = self.hours.range(after..).map(|h| h.count).sum();
        within_lo_hour + later_hours
    }

    /// Counts of `count` consecutive buckets of `resolution`, the first being
    /// bucket number `first` (bucket number = Unix seconds / bucket width).
    /// Buckets with nothing counted are zero. Exact for second buckets within
    /// a day of the latest `now` recorded with, minute buckets likewise, and
    /// hour buckets within the retained history.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "each index is a bucket in `first..end`, minus `first`: below `count`, a usize"
    )]
    pub fn series(&self, resolution: Resolution, first: u64, count: usize) -> Vec<u64> {
        let mut out = vec![0u64; count];
        let end = first.saturating_add(count as u64);
        match resolution {
            Resolution::Hour => {
                let start = self.hours.partition_point(|h| h.hour < first);
                for h in self.hours.range(start..).take_while(|h| h.hour < end) {
                    out[(h.hour - first) as usize] = h.count;
                }
            }
            Resolution::Minute => {
                let start = self.minutes.partition_point(|b| b.minute < first);
                for b in self.minutes.range(start..).take_while(|b| b.minute < end) {
                    out[(b.minute - first) as usize] = b.total;
                }
            }
            Resolution::Second => {
                let start = self.minutes.partition_point(|b| b.minute < first / 60);
                for b in self
                    .minutes
                    .range(start..)
                    .take_while(|b| b.minute * 60 < end)
                {
                    for (i, &c) in b.seconds.iter().enumerate() {
                        let sec = b.minute * 60 + i as u64;
                        if (first..end).contains(&sec) {
                            out[(sec - first) as usize] = u64::from(c);
                        }
                    }
                }
            }
        }
        out
    }

    /// Drops buckets no window or history needs any more at `now`; returns
    /// the change in [`WindowCounter::heap_bytes`].
    pub fn prune(&mut self, now: Timestamp) -> isize {
        let before = self.heap_bytes();
        self.drop_old(now);
        let (minutes, hours) = (self.minutes.len(), self.hours.len());
        // Give back what a peak left behind, keeping room to grow.
        if self.minutes.capacity() > 2 * minutes.max(8) {
            self.minutes.shrink_to(minutes.max(8));
        }
        if self.hours.capacity() > 2 * hours.max(8) {
            self.hours.shrink_to(hours.max(8));
        }
        super::growth(before, self.heap_bytes())
    }

    fn drop_old(&mut self, now: Timestamp) {
        let now_sec = now.as_secs();
        while self
            .minutes
            .front()
            .is_some_and(|b| b.minute + MINUTES_BACK < now_sec / 60)
        {
            self.minutes.pop_front();
        }
        while self
            .hours
            .front()
            .is_some_and(|h| h.hour + self.history_hours <= now_sec / 3600)
        {
            self.hours.pop_front();
        }
    }

    /// The contents, for a snapshot.
    pub fn to_parts(&self) -> WindowParts {
        WindowParts {
            total: self.total,
            minutes: self
                .minutes
                .iter()
                .map(|b| (b.minute, *b.seconds))
                .collect(),
            hours: self.hours.iter().map(|h| (h.hour, h.count)).collect(),
        }
    }

    /// A counter holding `parts` (as from [`WindowCounter::to_parts`]).
    /// Buckets are sorted and merged, so the parts need not be.
    pub fn from_parts(history_hours: u64, parts: WindowParts) -> Self {
        let mut w = WindowCounter::new(history_hours);
        w.total = parts.total;
        let mut minutes = parts.minutes;
        minutes.sort_unstable_by_key(|m| m.0);
        for (minute, seconds) in minutes {
            let total = seconds.iter().map(|&c| u64::from(c)).sum();
            match w.minutes.back_mut() {
                Some(last) if last.minute == minute => {
                    last.total += total;
                    for (a, b) in last.seconds.iter_mut().zip(seconds) {
                        *a = a.saturating_add(b);
                    }
                }
                _ => w.minutes.push_back(MinuteBucket {
                    minute,
                    total,
                    seconds: Box::new(seconds),
                }),
            }
        }
        let mut hours = parts.hours;
        hours.sort_unstable_by_key(|h| h.0);
        for (hour, count) in hours {
            match w.hours.back_mut() {
                Some(last) if last.hour == hour => last.count += count,
                _ => w.hours.push_back(HourBucket { hour, count }),
            }
        }
        w
    }

    /// Heap bytes held (capacity, not length), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.minutes.capacity() * size_of::<MinuteBucket>()
            + self.minutes.len() * size_of::<[u32; 60]>()
            + self.hours.capacity() * size_of::<HourBucket>()
    }

    fn minute_bucket(&mut self, minute: u64, now: Timestamp) -> &mut MinuteBucket {
        let at = match self.minutes.back() {
            Some(last) if last.minute == minute => self.minutes.len() - 1,
            _ => {
                let i = self.minutes.partition_point(|b| b.minute < minute);
                if self.minutes.get(i).is_some_and(|b| b.minute == minute) {
                    i
                } else {
                    // A new bucket starts at most once a minute: the moment to
                    // drop the ones that fell out of the day.
                    self.drop_old(now);
                    let i = self.minutes.partition_point(|b| b.minute < minute);
                    self.minutes.insert(
                        i,
                        MinuteBucket {
                            minute,
                            total: 0,
                            seconds: Box::new([0; 60]),
                        },
                    );
                    i
                }
            }
        };
        &mut self.minutes[at]
    }

    fn hour_bucket(&mut self, hour: u64, now: Timestamp) -> &mut HourBucket {
        let at = match self.hours.back() {
            Some(last) if last.hour == hour => self.hours.len() - 1,
            _ => {
                let i = self.hours.partition_point(|h| h.hour < hour);
                if self.hours.get(i).is_some_and(|h| h.hour == hour) {
                    i
                } else {
                    self.drop_old(now);
                    let i = self.hours.partition_point(|h| h.hour < hour);
                    self.hours.insert(i, HourBucket { hour, count: 0 });
                    i
                }
            }
        };
        &mut self.hours[at]
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
    fn hour_window_rolls_over_at_its_edge_to_the_second() {
        let mut w = WindowCounter::new(168);
        w.record(at(T0), at(T0));
        w.record(Timestamp::from_millis(T0 * 1000 + 999), at(T0));
        assert_eq!(w.stats(at(T0)).last_hour, 2);
        // Still inside at T0 + 3599 (the window is seconds T0 ..= T0 + 3599).
        let edge = at(T0 + 3599);
        assert_eq!(w.stats(edge).last_hour, 2);
        assert_eq!(
            w.stats(Timestamp::from_millis((T0 + 3599) * 1000 + 999))
                .last_hour,
            2
        );
        // One second later both drop out of the hour but stay in the day.
        let s = w.stats(at(T0 + 3600));
        assert_eq!((s.last_hour, s.last_day, s.total), (0, 2, 2));
    }

    #[test]
    fn day_window_rolls_over_at_its_edge_to_the_second() {
        let mut w = WindowCounter::new(168);
        // One impression at 12:34:56 on the first day.
        let t = T0 + 12 * 3600 + 34 * 60 + 56;
        w.record(at(t), at(t));
        assert_eq!(w.stats(at(t + 86_399)).last_day, 1);
        let s = w.stats(at(t + 86_400));
        assert_eq!((s.last_hour, s.last_day, s.total), (0, 0, 1));
    }

    #[test]
    fn partial_minutes_and_hours_at_both_ends_are_exact() {
        let mut w = WindowCounter::new(168);
        // One impression every 7 seconds for 26 hours.
        let end = T0 + 26 * 3600;
        let mut t = T0;
        while t <= end {
            w.record(at(t), at(t));
            t += 7;
        }
        for now in [end, end + 1, end + 59, end + 3599, end + 3601, end + 86_399] {
            let expect =
                |span: u64| (T0..=end).step_by(7).filter(|&s| s + span > now).count() as u64;
            let s = w.stats(at(now));
            assert_eq!(s.last_hour, expect(3600), "last_hour at {now}");
            assert_eq!(s.last_day, expect(86_400), "last_day at {now}");
        }
    }

    #[test]
    fn late_and_future_impressions_land_in_their_own_second() {
        let mut w = WindowCounter::new(168);
        let now = T0 + 10 * 3600;
        w.record(at(now), at(now));
        w.record(at(now - 1800), at(now)); // 30 min late: hour and day
        w.record(at(now - 7200), at(now)); // 2 h late: day only
        w.record(at(now + 3), at(now)); // 3 s of skew ahead
        let s = w.stats(at(now));
        assert_eq!((s.last_hour, s.last_day, s.total), (3, 4, 4));
    }

    #[test]
    fn memory_is_bounded_by_the_day_and_history() {
        let mut w = WindowCounter::new(MIN_HISTORY_HOURS);
        // Three days of one impression per minute.
        let minutes = 3 * 1440;
        for m in 0..minutes {
            let t = at(T0 + m * 60);
            w.record(t, t);
        }
        assert!(
            w.minutes.len() <= 1441,
            "{} minute buckets",
            w.minutes.len()
        );
        assert!(w.hours.len() as u64 <= MIN_HISTORY_HOURS);
        let s = w.stats(at(T0 + (minutes - 1) * 60));
        assert_eq!((s.last_hour, s.last_day, s.total), (60, 1440, minutes));
    }

    #[test]
    fn series_sum_to_the_windows_and_zero_fill() {
        let mut w = WindowCounter::new(168);
        // Impressions at 00:00:00, 00:00:59, 00:01:00 and 01:30:00.
        for s in [T0, T0 + 59, T0 + 60, T0 + 5400] {
            w.record(at(s), at(s));
        }
        assert_eq!(w.series(Resolution::Second, T0 + 58, 4), vec![0, 1, 1, 0]);
        assert_eq!(w.series(Resolution::Minute, T0 / 60, 3), vec![2, 1, 0]);
        assert_eq!(w.series(Resolution::Hour, T0 / 3600, 3), vec![3, 1, 0]);
        // The last hour at 01:30:00, second by second, is `last_hour`.
        let now = T0 + 5400;
        let hour: u64 = w.series(Resolution::Second, now - 3599, 3600).iter().sum();
        assert_eq!(hour, w.stats(at(now)).last_hour);
        assert_eq!(hour, 1);
    }

    #[test]
    fn parts_round_trip() {
        let mut w = WindowCounter::new(168);
        for s in [T0, T0 + 59, T0 + 60, T0 + 5400, T0 + 5400] {
            w.record(at(s), at(s));
        }
        let parts = w.to_parts();
        assert_eq!(parts.minutes.len(), 3);
        let back = WindowCounter::from_parts(168, parts.clone());
        assert_eq!(back.to_parts(), parts);
        assert_eq!(back.stats(at(T0 + 5400)), w.stats(at(T0 + 5400)));
        assert_eq!(
            back.series(Resolution::Second, T0, 61),
            w.series(Resolution::Second, T0, 61)
        );
    }

    #[test]
    fn history_never_drops_below_what_the_day_window_needs() {
        let w = WindowCounter::new(1);
        assert_eq!(w.history_hours, MIN_HISTORY_HOURS);
    }
}
