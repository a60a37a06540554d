//! A campaign's counts per quarter hour over months: what calendar days
//! (and hours) in any time zone are summed from.
//!
//! Every UTC offset in use is a whole number of quarter hours (+05:30
//! India, +05:45 Nepal, +08:45 Eucla, +12:45 Chatham; Lord Howe's DST
//! moves by 30 minutes), so every local midnight and every local hour of
//! the time zone database's present rules starts on a UTC quarter hour. A
//! local day is then a whole range of quarters, and its count is their
//! sum: exact in every zone, on DST days too (23 or 25 hours of quarters).
//!
//! [`QuarterCounter`] keeps, per UTC hour that saw an impression, the
//! counts of its four quarters (20 bytes an active hour; nothing for hours
//! without impressions), for `history_days` days plus one (a local day
//! starts up to 14 hours before the UTC one). An hour's four counts are
//! `u32`: a quarter saturates at 4,294,967,295 impressions (4.7M a second
//! for 15 minutes, in one campaign).

use std::collections::VecDeque;

use crate::time::Timestamp;

/// Seconds in a quarter hour.
pub const QUARTER_SECS: u64 = 900;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HourQuarters {
    /// Hours since the epoch (fits 32 bits until the year 491936).
    hour: u32,
    counts: [u32; 4],
}

/// The contents of a [`QuarterCounter`] as plain data, for snapshots:
/// (hours since the epoch, the four quarters' counts), ascending.
pub type QuarterParts = Vec<(u64, [u32; 4])>;

/// Counts per quarter hour, for the last `history_days` days.
#[derive(Clone, Debug)]
pub struct QuarterCounter {
    hours: VecDeque<HourQuarters>,
    /// Hours kept behind the current one.
    keep_hours: u64,
}

impl QuarterCounter {
    /// An empty counter keeping `history_days` days (and one more).
    pub fn new(history_days: u64) -> Self {
        QuarterCounter {
            hours: VecDeque::new(),
            keep_hours: history_days.saturating_add(1).saturating_mul(24),
        }
    }

    /// Counts an impression stamped `t`, seen at `now`; one older than the
    /// history is not kept. Returns the change in
    /// [`QuarterCounter::heap_bytes`].
    pub fn record(&mut self, t: Timestamp, now: Timestamp) -> isize {
        let secs = t.as_secs();
        let hour = secs / 3600;
        if hour + self.keep_hours < now.as_secs() / 3600 {
            return 0;
        }
        let Ok(hour) = u32::try_from(hour) else {
            return 0;
        };
        #[allow(
            clippy::cast_possible_truncation,
            reason = "a second of the hour over 900: 0..=3"
        )]
        let quarter = (secs % 3600 / QUARTER_SECS) as usize;
        // The common case, the newest hour: no search, no growth.
        if let Some(last) = self.hours.back_mut()
            && last.hour == hour
        {
            last.counts[quarter] = last.counts[quarter].saturating_add(1);
            return 0;
        }
        let before = self.heap_bytes();
        let at = self.hours.partition_point(|h| h.hour < hour);
        if self.hours.get(at).is_none_or(|h| h.hour != hour) {
            self.hours.insert(
                at,
                HourQuarters {
                    hour,
                    counts: [0; 4],
                },
            );
        }
        let count = &mut self.hours[at].counts[quarter];
        *count = count.saturating_add(1);
        super::growth(before, self.heap_bytes())
    }

    /// Impressions stamped in `[from, to)` (Unix seconds, both whole
    /// quarter hours; a quarter is counted if it starts in the range).
    pub fn sum(&self, from: u64, to: u64) -> u64 {
        let first_hour = from / 3600;
        let start = self
            .hours
            .partition_point(|h| u64::from(h.hour) < first_hour);
        let mut total = 0u64;
        for h in self.hours.range(start..) {
            let hour_start = u64::from(h.hour) * 3600;
            if hour_start >= to {
                break;
            }
            for (q, &count) in (0u64..).zip(&h.counts) {
                let q_start = hour_start + q * QUARTER_SECS;
                if (from..to).contains(&q_start) {
                    total += u64::from(count);
                }
            }
        }
        total
    }

    /// The earliest second the counts reach back to at `now`: a range
    /// starting before it is not fully known.
    pub fn kept_since(&self, now: Timestamp) -> u64 {
        (now.as_secs() / 3600).saturating_sub(self.keep_hours) * 3600
    }

    /// Drops the hours past the history; returns the change in
    /// [`QuarterCounter::heap_bytes`].
    pub fn prune(&mut self, now: Timestamp) -> isize {
        let before = self.heap_bytes();
        let now_hour = now.as_secs() / 3600;
        while self
            .hours
            .front()
            .is_some_and(|h| u64::from(h.hour) + self.keep_hours < now_hour)
        {
            self.hours.pop_front();
        }
        if self.hours.capacity() > 2 * self.hours.len().max(4) {
            self.hours.shrink_to(self.hours.len().max(4));
        }
        super::growth(before, self.heap_bytes())
    }

    /// The contents, for a snapshot.
    pub fn to_parts(&self) -> QuarterParts {
        self.hours
            .iter()
            .map(|h| (u64::from(h.hour), h.counts))
            .collect()
    }

    /// A counter holding `parts` (as from [`QuarterCounter::to_parts`], in
    /// any order; a repeated hour is added up).
    pub fn from_parts(history_days: u64, mut parts: QuarterParts) -> Self {
        let mut c = QuarterCounter::new(history_days);
        parts.sort_unstable_by_key(|p| p.0);
        for (hour, counts) in parts {
            let Ok(hour) = u32::try_from(hour) else {
                continue;
            };
            match c.hours.back_mut() {
                Some(last) if last.hour == hour => {
                    for (a, b) in last.counts.iter_mut().zip(counts) {
                        *a = a.saturating_add(b);
                    }
                }
                _ => c.hours.push_back(HourQuarters { hour, counts }),
            }
        }
        c
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.hours.capacity() * size_of::<HourQuarters>()
    }
}

/// Quarter-hour counts of a campaign's second-exact counter, for snapshots
/// written before quarters were kept: exact where the counter has seconds
/// (its last day), the whole hour in its first quarter where it has only
/// the hour.
pub fn quarters_of(parts: &super::WindowParts) -> QuarterParts {
    let mut out: Vec<(u64, [u32; 4])> = Vec::new();
    let mut add = |hour: u64, quarter: usize, count: u64| {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        match out.last_mut() {
            Some((h, counts)) if *h == hour => {
                counts[quarter] = counts[quarter].saturating_add(count);
            }
            _ => {
                let mut counts = [0u32; 4];
                counts[quarter] = count;
                out.push((hour, counts));
            }
        }
    };
    let first_minute_hour = parts.minutes.first().map(|m| m.0 / 60);
    for &(hour, count) in &parts.hours {
        // Hours the minutes cover are counted from the minutes.
        if first_minute_hour.is_some_and(|f| hour >= f) {
            continue;
        }
        add(hour, 0, count);
    }
    for (minute, seconds) in &parts.minutes {
        let count: u64 = seconds.iter().map(|&c| u64::from(c)).sum();
        if count > 0 {
            #[allow(
                clippy::cast_possible_truncation,
                reason = "a minute of the hour over 15: 0..=3"
            )]
            add(minute / 60, (minute % 60 / 15) as usize, count);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-01-01T00:00:00Z.
    const T0: u64 = 1_735_689_600;

    fn at(sec: u64) -> Timestamp {
        Timestamp::from_secs(sec)
    }

    #[test]
    fn sums_whole_quarters_of_any_range() {
        let mut c = QuarterCounter::new(400);
        let now = at(T0 + 86_400);
        // One impression per minute for a day.
        for m in 0..1440 {
            c.record(at(T0 + m * 60 + 7), now);
        }
        assert_eq!(c.sum(T0, T0 + 86_400), 1440);
        // A day in Asia/Kathmandu (+05:45) is 18:15 UTC to 18:15 UTC.
        let start = T0 + 18 * 3600 + 15 * 60;
        assert_eq!(c.sum(start - 86_400, start), 18 * 60 + 15);
        // A 23-hour DST day.
        assert_eq!(c.sum(T0, T0 + 23 * 3600), 23 * 60);
        assert_eq!(c.sum(T0 + 900, T0 + 1800), 15);
        assert_eq!(c.sum(T0, T0), 0);
    }

    #[test]
    fn late_events_count_in_their_quarter_and_old_ones_are_pruned() {
        let mut c = QuarterCounter::new(2);
        let now = at(T0 + 10 * 86_400);
        c.record(at(T0 + 10 * 86_400 - 100), now);
        // A late one, an hour back: inserted before.
        c.record(at(T0 + 10 * 86_400 - 3_700), now);
        assert_eq!(c.sum(T0 + 9 * 86_400, T0 + 11 * 86_400), 2);
        // Older than the history: not kept.
        assert_eq!(c.record(at(T0), now), 0);
        assert_eq!(c.sum(0, u64::MAX / 2), 2);
        c.prune(at(T0 + 14 * 86_400));
        assert_eq!(c.sum(0, u64::MAX / 2), 0);
        assert_eq!(c.heap_bytes(), 4 * size_of::<HourQuarters>());
    }

    #[test]
    fn parts_round_trip() {
        let mut c = QuarterCounter::new(400);
        let now = at(T0 + 86_400);
        for s in [0, 899, 900, 3_599, 3_600, 50_000] {
            c.record(at(T0 + s), now);
        }
        let back = QuarterCounter::from_parts(400, c.to_parts());
        assert_eq!(back.to_parts(), c.to_parts());
        assert_eq!(back.sum(T0, T0 + 900), 2);
    }

    #[test]
    fn quarters_of_second_exact_parts() {
        let mut seconds = [0u32; 60];
        seconds[0] = 2;
        let parts = super::super::WindowParts {
            total: 9,
            // Minute 20 and minute 75 of the epoch hour 0 and 1.
            minutes: vec![(20, seconds), (75, seconds)],
            hours: vec![(0, 5), (1, 2)],
        };
        // The minutes start in hour 0: both hours come from them, exactly.
        assert_eq!(
            quarters_of(&parts),
            vec![(0, [0, 2, 0, 0]), (1, [0, 2, 0, 0])]
        );
        let older = super::super::WindowParts {
            total: 7,
            minutes: vec![(75, seconds)],
            hours: vec![(0, 5), (1, 2)],
        };
        assert_eq!(
            quarters_of(&older),
            vec![(0, [5, 0, 0, 0]), (1, [0, 2, 0, 0])]
        );
    }
}
