//! Unique users over time, per counter (a campaign, an ad): how many
//! distinct users it counted in the last hour, the last day, in total, and
//! per minute or hour.
//!
//! A [`UniqueCounter`] keeps a [`UniqueSketch`] (exact up to 128 users, a
//! Redis-identical HyperLogLog beyond) per minute of the last day that
//! counted someone, per hour of the kept history, and one for all time.
//! Recording an impression touches one sketch, its minute's: the hour
//! sketches and the total are built from minute sketches when their hour
//! closes (the first time the counter is used in a later hour), so an hour
//! costs its union once, not an insert per impression. A late impression,
//! whose hour has closed already, also goes into that hour and the total.
//!
//! # Windows
//!
//! At a moment in minute `m` of hour `h` (Unix minutes and hours):
//!
//! * `last_hour`: distinct users of minutes `m-59 ..= m`, the union of those
//!   minute sketches: the impression window's whole minutes (it holds up to
//!   59 seconds less than the campaign's second-exact `last_hour`);
//! * `last_day`: distinct users of hours `h-23 ..= h`, the union of those
//!   hour sketches and the current hour's minutes: between 23 and 24 hours,
//!   all inside the impression's `last_day`;
//! * `total`: every user ever counted.
//!
//! Each window lies inside the impression window of the same name, so a
//! count is clamped to the impressions counted in its own window (an HLL
//! estimate may overshoot a small exact number): `unique_users <=
//! impressions` always holds. Minutes stamped slightly ahead of `m` (clock
//! skew) are inside every window, as for impressions.
//!
//! # Recording in bulk
//!
//! Past a few thousand users a minute's sketch is a 8–12 KiB register
//! array, and an insert is one random byte in it: a cache miss when it
//! comes between other work (a dedup lookup, the next campaign's counters),
//! which cost as much as the rest of tracking together. So a user of the
//! newest minute is held back in a short list (up to 256) and put in with
//! the others in one tight loop, whose misses overlap; every read, and the
//! upkeep every second, puts them in first, so nothing reads a sketch that
//! misses a user. A sketch's registers do not depend on the order of its
//! inserts, so the counts are the same either way.
//!
//! # Reads in constant time
//!
//! A window is a union of up to 60 sketches. The counter keeps the unions
//! of the finished parts of its windows (minutes `m-59 .. m-1`; hours
//! `h-23 .. h-1` and the minutes of `h` before `m`; everything before `m`),
//! for the minute `m` they were made in, as [`UnionBase`]s: past the exact
//! threshold, registers with their histogram. Unions only grow, so a read
//! in the same minute is each union with the current minute's sketch on
//! top, which costs the registers that sketch set (a few hundred for a
//! busy minute), not all 16,384; a new minute costs one rebuild of the
//! hour's union, a new hour a rebuild of all three. A late impression is
//! added to the unions it falls in. The last answer is kept until something
//! is recorded. (`benches/reach.rs` measures all three cases.)

use std::collections::VecDeque;

use super::{MIN_HISTORY_HOURS, MINUTES_BACK, growth};
use crate::time::Timestamp;
use crate::uniques::{HllParseError, Overlay, UnionBase, UniqueParts, UniqueSketch};

/// Distinct users of one counter over the windows of
/// [`Stats`](crate::Stats) (see the module documentation for exactly which
/// minutes and hours each covers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UniqueStats {
    /// Distinct users of the current minute and the 59 before it.
    pub last_hour: u64,
    /// Distinct users of the current hour and the 23 before it.
    pub last_day: u64,
    /// Distinct users ever counted.
    pub total: u64,
}

/// The impressions counted in each window of [`UniqueStats`], for its
/// clamp.
#[derive(Clone, Copy, Debug, Default)]
pub struct WindowImpressions {
    /// Counted impressions of minutes `m-59 ..` on.
    pub last_hour: u64,
    /// Counted impressions of hours `h-23 ..` on.
    pub last_day: u64,
    /// All counted impressions.
    pub total: u64,
}

/// The contents of a [`UniqueCounter`] as plain data, for snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UniqueCounterParts {
    /// Minute sketches, ascending: (minutes since the epoch, sketch).
    pub minutes: Vec<(u64, UniqueParts)>,
    /// Sketches of closed hours, ascending: (hours since the epoch, sketch).
    pub hours: Vec<(u64, UniqueParts)>,
    /// Every user of the closed hours and of those that left the history.
    pub total: UniqueParts,
    /// The first hour not closed yet: its users are in minute sketches only.
    pub open_hour: u64,
}

#[derive(Clone, Debug)]
struct Minute {
    minute: u32,
    sketch: UniqueSketch,
}

#[derive(Clone, Debug)]
struct Hour {
    hour: u32,
    sketch: UniqueSketch,
}

/// The unions of the finished parts of the windows, for minute `minute`.
#[derive(Clone, Debug)]
struct Unions {
    minute: u64,
    /// Minutes `minute-59 .. minute-1`.
    hour: UnionBase,
    /// Hours `h-23 .. h-1` and minutes `h*60 .. minute-1` (`h` its hour).
    day: UnionBase,
    /// Everything before `minute`.
    total: UnionBase,
    /// The counts at `minute` (before their clamp), until the next
    /// recording.
    answer: Option<UniqueStats>,
}

/// Distinct users of one counter over time (see the module documentation).
#[derive(Clone, Debug)]
pub struct UniqueCounter {
    minutes: VecDeque<Minute>,
    hours: VecDeque<Hour>,
    total: UniqueSketch,
    open_hour: u64,
    history_hours: u64,
    unions: Option<Box<Unions>>,
    /// Users recorded in the newest minute and not yet in its sketch (see
    /// "Recording in bulk" in the module documentation).
    pending: Vec<u64>,
    /// Heap bytes of the minute and hour sketches and the total, kept as
    /// they change, so accounting never walks them.
    sketch_bytes: usize,
}

/// Users held back for the newest minute's sketch before they are put in
/// together: 2 KiB a counter at most.
const PENDING_MAX: usize = 256;

impl UniqueCounter {
    /// An empty counter keeping `history_hours` hour sketches (at least
    /// [`MIN_HISTORY_HOURS`]).
    pub fn new(history_hours: u64) -> Self {
        UniqueCounter {
            minutes: VecDeque::new(),
            hours: VecDeque::new(),
            total: UniqueSketch::new(),
            open_hour: 0,
            history_hours: history_hours.max(MIN_HISTORY_HOURS),
            unions: None,
            pending: Vec::new(),
            sketch_bytes: 0,
        }
    }

    /// Records the user with hash `user` (`murmur64a` of its id) of an
    /// impression counted at `t`, observed at `now`. Returns the change in
    /// [`UniqueCounter::heap_bytes`].
    pub fn record(&mut self, t: Timestamp, user: u64, now: Timestamp) -> isize {
        let now_minute = now.as_secs() / 60;
        let mut grew = if now_minute / 60 > self.open_hour {
            self.close_hours(now)
        } else {
            0
        };
        let minute = t.as_secs() / 60;
        let hour = minute / 60;
        // The common case, an impression of the newest minute: held back
        // and put in with the next ones.
        let newest = self.minutes.back().map(|m| u64::from(m.minute));
        if newest == Some(minute)
            && minute + MINUTES_BACK >= now_minute
            && hour >= self.open_hour
            && self.unions.as_ref().is_none_or(|u| minute >= u.minute)
        {
            if self.pending.len() == self.pending.capacity() {
                let capacity = self.pending.capacity();
                self.pending.reserve(1);
                grew += growth(
                    capacity * size_of::<u64>(),
                    self.pending.capacity() * size_of::<u64>(),
                );
            }
            self.pending.push(user);
            if let Some(unions) = &mut self.unions {
                unions.answer = None;
            }
            if self.pending.len() >= PENDING_MAX {
                grew += self.flush();
            }
            return grew;
        }
        grew += self.flush();
        let mut changed = false;
        let mut sketches = 0;
        if minute + MINUTES_BACK >= now_minute
            && let Ok(m) = u32::try_from(minute)
        {
            let (c, g) = self.insert_minute(m, user, &mut sketches);
            changed |= c;
            grew += g;
        }
        if hour < self.open_hour {
            // A late impression of a closed hour.
            if hour + self.history_hours > now_minute / 60
                && let Ok(h) = u32::try_from(hour)
            {
                let (c, g) = self.insert_hour(h, user, &mut sketches);
                changed |= c;
                grew += g;
            }
            changed |= insert_counted(&mut self.total, user, &mut sketches);
        }
        self.sketch_bytes = self.sketch_bytes.saturating_add_signed(sketches);
        grew += sketches;
        if let Some(unions) = &mut self.unions {
            if minute < unions.minute {
                // Already folded into the unions: add it there too.
                if minute + 59 >= unions.minute {
                    changed |= insert_into_union(&mut unions.hour, user, &mut grew);
                }
                if hour + 23 >= unions.minute / 60 {
                    changed |= insert_into_union(&mut unions.day, user, &mut grew);
                }
                changed |= insert_into_union(&mut unions.total, user, &mut grew);
            }
            if changed {
                unions.answer = None;
            }
        }
        grew
    }

    /// Distinct users at `now`, each window clamped to the impressions
    /// counted in it, and the change in [`UniqueCounter::heap_bytes`]: a
    /// read keeps the unions it builds, and closes finished hours.
    pub fn stats(
        &mut self,
        now: Timestamp,
        impressions: WindowImpressions,
    ) -> (UniqueStats, isize) {
        let before = self.heap_bytes();
        let answer = self.answer(now, impressions);
        (answer, growth(before, self.heap_bytes()))
    }

    fn answer(&mut self, now: Timestamp, impressions: WindowImpressions) -> UniqueStats {
        self.flush();
        let raw = self.raw_answer(now);
        UniqueStats {
            last_hour: raw.last_hour.min(impressions.last_hour),
            last_day: raw.last_day.min(impressions.last_day),
            total: raw.total.min(impressions.total),
        }
    }

    /// The counts before the clamp, kept until the next recording.
    fn raw_answer(&mut self, now: Timestamp) -> UniqueStats {
        self.close_hours(now);
        let minute = now.as_secs() / 60;
        self.prepare_unions(minute);
        let Some(unions) = self.unions.as_deref_mut() else {
            return UniqueStats::default();
        };
        if let Some(answer) = unions.answer {
            return answer;
        }
        let first = self
            .minutes
            .partition_point(|m| u64::from(m.minute) < minute);
        let current = Overlay::new(self.minutes.range(first..).map(|m| &m.sketch));
        let answer = UniqueStats {
            last_hour: unions.hour.count_with(&current),
            last_day: unions.day.count_with(&current),
            total: unions.total.count_with(&current),
        };
        unions.answer = Some(answer);
        answer
    }

    /// Distinct users of hours `first .. end` (Unix hours): closed hours'
    /// sketches and the minutes of open ones, once [`flush`](Self::flush)ed.
    pub fn union_hours(&self, first: u64, end: u64) -> u64 {
        let closed_end = end.min(self.open_hour);
        let from = self.hours.partition_point(|h| u64::from(h.hour) < first);
        let closed = self
            .hours
            .range(from..)
            .take_while(|h| u64::from(h.hour) < closed_end)
            .map(|h| &h.sketch);
        let open_first = first.max(self.open_hour);
        let from = self
            .minutes
            .partition_point(|m| u64::from(m.minute) < open_first * 60);
        let open = self
            .minutes
            .range(from..)
            .take_while(|m| u64::from(m.minute) < end.saturating_mul(60))
            .map(|m| &m.sketch);
        UniqueSketch::union_count(closed.chain(open))
    }

    /// Puts the users held back into the newest minute's sketch; returns
    /// the change in [`UniqueCounter::heap_bytes`]. Reads do it themselves;
    /// call it before [`minute_series`](Self::minute_series),
    /// [`hour_series`](Self::hour_series) and
    /// [`to_parts`](Self::to_parts), which read as they are.
    pub fn flush(&mut self) -> isize {
        if self.pending.is_empty() {
            return 0;
        }
        let Some(newest) = self.minutes.back_mut() else {
            // Unreachable: users are only held back for an existing minute.
            self.pending.clear();
            return 0;
        };
        let before = newest.sketch.heap_bytes();
        newest.sketch.insert_hashes(&self.pending);
        let grew = growth(before, newest.sketch.heap_bytes());
        self.sketch_bytes = self.sketch_bytes.saturating_add_signed(grew);
        self.pending.clear();
        grew
    }

    /// Distinct users of `count` consecutive minutes, the first being minute
    /// `first` (Unix minutes); zero where nobody was counted. Exact for the
    /// last day, once [`flush`](Self::flush)ed.
    pub fn minute_series(&self, first: u64, count: usize) -> Vec<u64> {
        let mut out = vec![0u64; count];
        let end = first.saturating_add(count as u64);
        let start = self
            .minutes
            .partition_point(|m| u64::from(m.minute) < first);
        for m in self.minutes.range(start..) {
            let minute = u64::from(m.minute);
            if minute >= end {
                break;
            }
            #[allow(
                clippy::cast_possible_truncation,
                reason = "below `count`, a usize, by the loop's bounds"
            )]
            let i = (minute - first) as usize;
            out[i] = m.sketch.count();
        }
        out
    }

    /// Distinct users of `count` consecutive hours, the first being hour
    /// `first` (Unix hours): a closed hour's sketch, or the union of an open
    /// hour's minutes. Exact for the kept history.
    pub fn hour_series(&self, first: u64, count: usize) -> Vec<u64> {
        let mut out = vec![0u64; count];
        let end = first.saturating_add(count as u64);
        let start = self.hours.partition_point(|h| u64::from(h.hour) < first);
        for h in self.hours.range(start..) {
            let hour = u64::from(h.hour);
            if hour >= end {
                break;
            }
            #[allow(
                clippy::cast_possible_truncation,
                reason = "below `count`, a usize, by the loop's bounds"
            )]
            let i = (hour - first) as usize;
            out[i] = h.sketch.count();
        }
        for hour in self.open_hour.max(first)..end {
            let from = self
                .minutes
                .partition_point(|m| u64::from(m.minute) < hour * 60);
            let minutes = self
                .minutes
                .range(from..)
                .take_while(|m| u64::from(m.minute) < (hour + 1) * 60)
                .map(|m| &m.sketch);
            #[allow(
                clippy::cast_possible_truncation,
                reason = "below `count`, a usize, by the loop's bounds"
            )]
            let i = (hour - first) as usize;
            out[i] = UniqueSketch::union_count(minutes);
        }
        out
    }

    /// Closes the hours before `now`'s, drops the minutes and hours no
    /// window needs any more, and the unions if they are stale; returns the
    /// change in [`UniqueCounter::heap_bytes`].
    pub fn prune(&mut self, now: Timestamp) -> isize {
        let before = self.heap_bytes();
        self.flush();
        if self.pending.capacity() > 0
            && self
                .minutes
                .back()
                .is_none_or(|m| u64::from(m.minute) + 1 < now.as_secs() / 60)
        {
            // Idle for a minute: give the buffer back.
            self.pending = Vec::new();
        }
        self.close_hours(now);
        let now_minute = now.as_secs() / 60;
        while let Some(m) = self
            .minutes
            .front()
            .filter(|m| u64::from(m.minute) + MINUTES_BACK < now_minute)
        {
            self.sketch_bytes -= m.sketch.heap_bytes();
            self.minutes.pop_front();
        }
        while let Some(h) = self
            .hours
            .front()
            .filter(|h| u64::from(h.hour) + self.history_hours <= now_minute / 60)
        {
            self.sketch_bytes -= h.sketch.heap_bytes();
            self.hours.pop_front();
        }
        // Unions unread for a few minutes are given back: a counter nobody
        // reads costs only its sketches.
        if self
            .unions
            .as_ref()
            .is_some_and(|u| u.minute + 2 < now_minute)
        {
            self.unions = None;
        }
        if self.minutes.capacity() > 2 * self.minutes.len().max(4) {
            self.minutes.shrink_to(self.minutes.len().max(4));
        }
        if self.hours.capacity() > 2 * self.hours.len().max(4) {
            self.hours.shrink_to(self.hours.len().max(4));
        }
        growth(before, self.heap_bytes())
    }

    /// Heap bytes held: sketches, the arrays holding them, the unions. Does
    /// not walk the sketches.
    pub fn heap_bytes(&self) -> usize {
        self.minutes.capacity() * size_of::<Minute>()
            + self.hours.capacity() * size_of::<Hour>()
            + self.sketch_bytes
            + self.pending.capacity() * size_of::<u64>()
            + self.unions.as_ref().map_or(0, |u| {
                size_of::<Unions>()
                    + u.hour.heap_bytes()
                    + u.day.heap_bytes()
                    + u.total.heap_bytes()
            })
    }

    /// The contents, for a snapshot (the unions are rebuilt when read), once
    /// [`flush`](Self::flush)ed.
    pub fn to_parts(&self) -> UniqueCounterParts {
        debug_assert!(self.pending.is_empty(), "to_parts before flush");
        UniqueCounterParts {
            minutes: self
                .minutes
                .iter()
                .map(|m| (u64::from(m.minute), m.sketch.to_parts()))
                .collect(),
            hours: self
                .hours
                .iter()
                .map(|h| (u64::from(h.hour), h.sketch.to_parts()))
                .collect(),
            total: self.total.to_parts(),
            open_hour: self.open_hour,
        }
    }

    /// A counter holding `parts` (as from [`UniqueCounter::to_parts`]);
    /// sketches whose bytes do not parse are an error.
    pub fn from_parts(
        history_hours: u64,
        parts: UniqueCounterParts,
    ) -> Result<Self, HllParseError> {
        let mut c = UniqueCounter::new(history_hours);
        c.open_hour = parts.open_hour;
        c.total = UniqueSketch::from_parts(parts.total)?;
        let mut minutes = parts.minutes;
        minutes.sort_unstable_by_key(|m| m.0);
        for (minute, sketch) in minutes {
            let (Ok(minute), sketch) = (u32::try_from(minute), UniqueSketch::from_parts(sketch)?)
            else {
                continue;
            };
            match c.minutes.back_mut() {
                Some(last) if last.minute == minute => last.sketch.merge_from(&sketch),
                _ => c.minutes.push_back(Minute { minute, sketch }),
            }
        }
        let mut hours = parts.hours;
        hours.sort_unstable_by_key(|h| h.0);
        for (hour, sketch) in hours {
            let (Ok(hour), sketch) = (u32::try_from(hour), UniqueSketch::from_parts(sketch)?)
            else {
                continue;
            };
            match c.hours.back_mut() {
                Some(last) if last.hour == hour => last.sketch.merge_from(&sketch),
                _ => c.hours.push_back(Hour { hour, sketch }),
            }
        }
        c.sketch_bytes = c
            .minutes
            .iter()
            .map(|m| m.sketch.heap_bytes())
            .sum::<usize>()
            + c.hours.iter().map(|h| h.sketch.heap_bytes()).sum::<usize>()
            + c.total.heap_bytes();
        Ok(c)
    }

    /// Inserts into the minute's sketch (made if needed); returns whether
    /// it changed and the change of the array's bytes, and adds the
    /// sketch's change to `sketches`.
    fn insert_minute(&mut self, minute: u32, user: u64, sketches: &mut isize) -> (bool, isize) {
        let mut grew = 0;
        let at = match self.minutes.back() {
            Some(last) if last.minute == minute => self.minutes.len() - 1,
            _ => {
                let i = self.minutes.partition_point(|m| m.minute < minute);
                if self.minutes.get(i).is_none_or(|m| m.minute != minute) {
                    let capacity = self.minutes.capacity();
                    self.minutes.insert(
                        i,
                        Minute {
                            minute,
                            sketch: UniqueSketch::new(),
                        },
                    );
                    grew += growth(
                        capacity * size_of::<Minute>(),
                        self.minutes.capacity() * size_of::<Minute>(),
                    );
                }
                i
            }
        };
        let changed = insert_counted(&mut self.minutes[at].sketch, user, sketches);
        (changed, grew)
    }

    /// As [`Self::insert_minute`], for a closed hour's sketch.
    fn insert_hour(&mut self, hour: u32, user: u64, sketches: &mut isize) -> (bool, isize) {
        let mut grew = 0;
        let i = self.hours.partition_point(|h| h.hour < hour);
        if self.hours.get(i).is_none_or(|h| h.hour != hour) {
            let capacity = self.hours.capacity();
            self.hours.insert(
                i,
                Hour {
                    hour,
                    sketch: UniqueSketch::new(),
                },
            );
            grew += growth(
                capacity * size_of::<Hour>(),
                self.hours.capacity() * size_of::<Hour>(),
            );
        }
        let changed = insert_counted(&mut self.hours[i].sketch, user, sketches);
        (changed, grew)
    }

    /// Closes every hour before `now`'s: its minutes' union becomes its
    /// hour sketch and joins the total. Returns the change in heap bytes.
    fn close_hours(&mut self, now: Timestamp) -> isize {
        let now_hour = now.as_secs() / 3600;
        if now_hour <= self.open_hour {
            return 0;
        }
        let before = self.heap_bytes();
        self.flush();
        let mut sketches = 0;
        // Hours with minutes still to fold: from the first open minute on.
        let first = self
            .minutes
            .partition_point(|m| u64::from(m.minute) < self.open_hour * 60);
        let mut i = first;
        while let Some(m) = self.minutes.get(i) {
            let hour = u64::from(m.minute) / 60;
            if hour >= now_hour {
                break;
            }
            let mut sketch = UniqueSketch::new();
            while let Some(m) = self
                .minutes
                .get(i)
                .filter(|m| u64::from(m.minute) / 60 == hour)
            {
                sketch.merge_from(&m.sketch);
                i += 1;
            }
            let total_before = self.total.heap_bytes();
            self.total.merge_from(&sketch);
            sketches += growth(total_before, self.total.heap_bytes());
            if let Ok(hour) = u32::try_from(hour) {
                let at = self.hours.partition_point(|h| h.hour < hour);
                match self.hours.get_mut(at) {
                    Some(h) if h.hour == hour => {
                        let before = h.sketch.heap_bytes();
                        h.sketch.merge_from(&sketch);
                        sketches += growth(before, h.sketch.heap_bytes());
                    }
                    _ => {
                        sketches += growth(0, sketch.heap_bytes());
                        self.hours.insert(at, Hour { hour, sketch });
                    }
                }
            }
        }
        self.sketch_bytes = self.sketch_bytes.saturating_add_signed(sketches);
        self.open_hour = now_hour;
        // The unions were for an hour now closed.
        self.unions = None;
        growth(before, self.heap_bytes())
    }

    /// Makes the unions current for minute `minute`.
    fn prepare_unions(&mut self, minute: u64) {
        let hour = minute / 60;
        if let Some(mut unions) = self.unions.take() {
            if unions.minute == minute {
                self.unions = Some(unions);
                return;
            }
            if unions.minute < minute && unions.minute / 60 == hour {
                // The same hour: the day and total unions take the minutes
                // finished since; the hour's union is rebuilt.
                let from = self
                    .minutes
                    .partition_point(|m| u64::from(m.minute) < unions.minute);
                for m in self.minutes.range(from..) {
                    if u64::from(m.minute) >= minute {
                        break;
                    }
                    unions.day.merge_from(&m.sketch);
                    unions.total.merge_from(&m.sketch);
                }
                unions.hour = UnionBase::new();
                self.merge_minutes(&mut unions.hour, minute.saturating_sub(59), minute);
                unions.minute = minute;
                unions.answer = None;
                self.unions = Some(unions);
                return;
            }
        }
        let mut day = UnionBase::new();
        let from = self
            .hours
            .partition_point(|h| u64::from(h.hour) + 23 < hour);
        for h in self.hours.range(from..) {
            if u64::from(h.hour) >= hour {
                break;
            }
            day.merge_from(&h.sketch);
        }
        self.merge_minutes(&mut day, hour * 60, minute);
        let mut total = UnionBase::new();
        total.merge_from(&self.total);
        // Open hours' minutes before `minute` (the closed ones are in
        // `total` already).
        self.merge_minutes(&mut total, self.open_hour * 60, minute);
        let mut last_hour = UnionBase::new();
        self.merge_minutes(&mut last_hour, minute.saturating_sub(59), minute);
        self.unions = Some(Box::new(Unions {
            minute,
            hour: last_hour,
            day,
            total,
            answer: None,
        }));
    }

    /// Merges the minute sketches of minutes `from .. to` into `union`.
    fn merge_minutes(&self, union: &mut UnionBase, from: u64, to: u64) {
        let start = self.minutes.partition_point(|m| u64::from(m.minute) < from);
        for m in self.minutes.range(start..) {
            if u64::from(m.minute) >= to {
                break;
            }
            union.merge_from(&m.sketch);
        }
    }
}

/// Inserts `user` into `union`, adding the change in its heap bytes to
/// `grew`; tells whether it changed.
fn insert_into_union(union: &mut UnionBase, user: u64, grew: &mut isize) -> bool {
    let before = union.heap_bytes();
    let changed = union.insert_hash(user);
    *grew += growth(before, union.heap_bytes());
    changed
}

/// Inserts `user` into `sketch`, adding the change in its heap bytes to
/// `grew`; tells whether it changed.
fn insert_counted(sketch: &mut UniqueSketch, user: u64, grew: &mut isize) -> bool {
    let before = sketch.heap_bytes();
    let changed = sketch.insert_hash(user);
    if changed {
        *grew += growth(before, sketch.heap_bytes());
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uniques::{REDIS_HLL_SEED, murmur64a};

    /// 2025-01-01T00:00:00Z: starts a minute, an hour and a day.
    const T0: u64 = 1_735_689_600;

    fn at(sec: u64) -> Timestamp {
        Timestamp::from_secs(sec)
    }

    fn user(n: u64) -> u64 {
        murmur64a(format!("user-{n}").as_bytes(), REDIS_HLL_SEED)
    }

    const PLENTY: WindowImpressions = WindowImpressions {
        last_hour: u64::MAX,
        last_day: u64::MAX,
        total: u64::MAX,
    };

    /// Distinct users by scanning: `(second, user)` pairs counted.
    fn scan(events: &[(u64, u64)], now: u64) -> UniqueStats {
        let (m, h) = (now / 60, now / 3600);
        let distinct = |keep: &dyn Fn(u64) -> bool| {
            let mut users: Vec<u64> = events.iter().filter(|e| keep(e.0)).map(|e| e.1).collect();
            users.sort_unstable();
            users.dedup();
            users.len() as u64
        };
        UniqueStats {
            last_hour: distinct(&|t| t / 60 + 59 >= m),
            last_day: distinct(&|t| t / 3600 + 23 >= h),
            total: distinct(&|_| true),
        }
    }

    #[test]
    fn windows_are_whole_minutes_and_hours_and_exact_when_small() {
        let mut c = UniqueCounter::new(168);
        let mut events = Vec::new();
        // 30 hours, a few users a minute, some coming back, some late.
        let mut rng = 12_345u64;
        for minute in 0..30 * 60 {
            let now = T0 + minute * 60 + 7;
            for _ in 0..3 {
                rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let u = (rng >> 33) % 90;
                let late = (rng >> 20).is_multiple_of(5);
                let t = if late { now - (rng >> 40) % 7200 } else { now };
                c.record(at(t), user(u), at(now));
                events.push((t, u));
            }
            if minute % 37 == 0 || minute == 30 * 60 - 1 {
                assert_eq!(
                    c.stats(at(now), PLENTY).0,
                    scan(&events, now),
                    "at minute {minute}"
                );
            }
        }
    }

    #[test]
    fn reads_in_the_same_minute_see_every_new_user() {
        let mut c = UniqueCounter::new(168);
        let now = T0 + 3 * 3600 + 10;
        for u in 0..50 {
            c.record(at(now), user(u), at(now));
            assert_eq!(c.stats(at(now), PLENTY).0.last_hour, u + 1);
        }
        // A repeat changes nothing; a late user of a folded minute counts.
        c.record(at(now), user(7), at(now));
        c.record(at(now - 1800), user(1000), at(now));
        let s = c.stats(at(now), PLENTY).0;
        assert_eq!((s.last_hour, s.last_day, s.total), (51, 51, 51));
    }

    #[test]
    fn counts_are_clamped_to_the_impressions_of_their_window() {
        let mut c = UniqueCounter::new(168);
        let now = T0 + 60;
        for u in 0..1000 {
            c.record(at(now), user(u), at(now));
        }
        let exact = c.stats(at(now), PLENTY).0;
        assert!(exact.total.abs_diff(1000) <= 30, "{exact:?}");
        let (clamped, _) = c.stats(
            at(now),
            WindowImpressions {
                last_hour: 990,
                last_day: 995,
                total: 1000,
            },
        );
        assert!(clamped.last_hour <= 990 && clamped.last_day <= 995 && clamped.total <= 1000);
    }

    #[test]
    fn series_count_each_minute_and_hour() {
        let mut c = UniqueCounter::new(168);
        let now = T0 + 2 * 3600 + 30;
        for (t, u) in [
            (T0, 1),
            (T0 + 5, 1),
            (T0 + 61, 2),
            (T0 + 3600, 3),
            (now, 1),
            (now, 4),
        ] {
            c.record(at(t), user(u), at(now));
        }
        c.flush();
        assert_eq!(c.minute_series(T0 / 60, 3), vec![1, 1, 0]);
        assert_eq!(c.hour_series(T0 / 3600, 3), vec![2, 1, 2]);
    }

    #[test]
    fn memory_is_accounted_and_pruned() {
        let mut c = UniqueCounter::new(MIN_HISTORY_HOURS);
        let mut accounted = 0isize;
        for minute in 0..3 * 1440 {
            let now = at(T0 + minute * 60);
            for u in 0..20 {
                accounted += c.record(now, user(minute * 1000 + u), now);
            }
            if minute % 60 == 0 {
                accounted += c.stats(now, PLENTY).1;
                accounted += c.prune(now);
            }
        }
        let end = at(T0 + 3 * 1440 * 60);
        accounted += c.prune(end);
        assert_eq!(accounted, c.heap_bytes().cast_signed());
        assert!(c.minutes.len() <= 1441);
        assert!(c.hours.len() as u64 <= MIN_HISTORY_HOURS);
    }

    #[test]
    fn parts_round_trip() {
        let mut c = UniqueCounter::new(168);
        let now = T0 + 5 * 3600;
        for u in 0..300 {
            c.record(at(now - (u % 4) * 3600), user(u), at(now));
        }
        let parts = c.to_parts();
        let mut back = UniqueCounter::from_parts(168, parts.clone()).unwrap();
        assert_eq!(back.to_parts(), parts);
        assert_eq!(back.stats(at(now), PLENTY).0, c.stats(at(now), PLENTY).0);
    }
}
