//! Calendar time for reports: IANA time zones, local days and hours as
//! UTC ranges, and the `from`/`to` bounds of a query.
//!
//! The zone database is compiled into the binary (jiff's bundled copy), so
//! every node draws the same boundaries whatever its host has installed.
//!
//! Local days and hours are found by scanning UTC quarter hours: every
//! offset the database uses for the dates we keep is a whole number of
//! quarter hours, so every local midnight and every local hour starts on a
//! UTC quarter. A boundary is a quarter whose local date (or date and hour)
//! differs from the quarter before it, which also handles DST: a 23- or
//! 25-hour day, a day whose midnight falls in a gap (it starts at the first
//! local time it has), a repeated hour (one bucket of two hours).

use impression_core::{QUARTER_SECS, Timestamp};
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::timefmt::format_rfc3339;

/// A time zone asked for by name.
#[derive(Clone, Debug)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

/// Local calendar units buckets are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalUnit {
    /// Local hours.
    Hour,
    /// Local days.
    Day,
}

/// One end of a `from`/`to` range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// A calendar date, in the query's zone.
    Date(Date),
    /// An instant (RFC 3339).
    Instant(Timestamp),
}

impl Zone {
    /// UTC.
    pub fn utc() -> Self {
        Zone {
            name: "UTC".to_owned(),
            tz: TimeZone::UTC,
        }
    }

    /// The zone named `name` (`Europe/Berlin`, `UTC`); the error says why
    /// not.
    pub fn parse(name: &str) -> Result<Self, String> {
        let shown: String = name.chars().take(64).collect();
        if name.is_empty() || name.len() > 64 {
            return Err(format!(
                "tz must be an IANA time zone name like Europe/Berlin, got {shown:?}"
            ));
        }
        let tz = TimeZone::get(name).map_err(|_| {
            format!("unknown time zone {shown:?}: tz must be an IANA name like America/New_York")
        })?;
        Ok(Zone {
            name: name.to_owned(),
            tz,
        })
    }

    /// The name asked for.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn is_utc(&self) -> bool {
        self.tz == TimeZone::UTC
    }

    /// Seconds east of UTC at `secs` (Unix seconds).
    fn offset_at(&self, secs: u64) -> i64 {
        let ts = jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX))
            .unwrap_or(jiff::Timestamp::MAX);
        i64::from(self.tz.to_offset(ts).seconds())
    }

    /// Local seconds since the local epoch at `secs`.
    fn local_secs(&self, secs: u64) -> i64 {
        i64::try_from(secs).unwrap_or(i64::MAX) + self.offset_at(secs)
    }

    /// `secs` as RFC 3339 in this zone: `Z` in UTC, the local offset
    /// elsewhere (`2026-11-01T00:00:00-04:00`).
    pub fn label(&self, secs: u64) -> String {
        if self.is_utc() {
            return format_rfc3339(Timestamp::from_secs(secs));
        }
        let ts = jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX))
            .unwrap_or(jiff::Timestamp::MAX);
        ts.to_zoned(self.tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }

    /// The local date at `secs`.
    pub fn date_at(&self, secs: u64) -> Date {
        let ts = jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX))
            .unwrap_or(jiff::Timestamp::MAX);
        ts.to_zoned(self.tz.clone()).date()
    }

    /// The first instant of local day `date` (midnight, or the first local
    /// time the day has when midnight falls in a DST gap), in Unix seconds;
    /// `None` before 1970.
    pub fn start_of_day(&self, date: Date) -> Option<u64> {
        let zoned = date.to_zoned(self.tz.clone()).ok()?;
        u64::try_from(zoned.timestamp().as_second()).ok()
    }

    /// The starts (Unix seconds) of the local `unit`s beginning in
    /// `[from, to)`, with `from` itself first (callers pass a boundary).
    /// Both are whole quarter hours.
    pub fn local_starts(&self, from: u64, to: u64, unit: LocalUnit) -> Vec<u64> {
        let key = |secs: u64| {
            let local = self.local_secs(secs);
            match unit {
                LocalUnit::Hour => local.div_euclid(3600),
                LocalUnit::Day => local.div_euclid(86_400),
            }
        };
        let mut starts = Vec::new();
        let mut q = from;
        let mut last = None;
        while q < to {
            let k = key(q);
            if last != Some(k) {
                starts.push(q);
                last = Some(k);
            }
            q += QUARTER_SECS;
        }
        starts
    }

    /// The start of the local `unit` holding `secs`.
    pub fn unit_start(&self, secs: u64, unit: LocalUnit) -> u64 {
        match unit {
            LocalUnit::Day => self.start_of_day(self.date_at(secs)).unwrap_or(0).min(secs),
            LocalUnit::Hour => {
                // Back to the quarter where the local hour changed.
                let mut q = secs - secs % QUARTER_SECS;
                let hour = |s: u64| self.local_secs(s).div_euclid(3600);
                let this = hour(q);
                for _ in 0..8 {
                    match q.checked_sub(QUARTER_SECS) {
                        Some(before) if hour(before) == this => q = before,
                        _ => break,
                    }
                }
                q
            }
        }
    }

    /// Parses `from` or `to`: a date (`2026-11-01`, in this zone) or an RFC
    /// 3339 instant.
    pub fn parse_bound(field: &str, text: &str) -> Result<Bound, String> {
        if text.len() == 10
            && let Ok(date) = text.parse::<Date>()
        {
            return Ok(Bound::Date(date));
        }
        crate::timefmt::parse_rfc3339(field, text)
            .map(Bound::Instant)
            .map_err(|_| {
                format!(
                    "{field} must be a date like 2026-11-01 (in tz) or an RFC 3339 instant \
                     like 2026-11-01T00:00:00Z"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> Zone {
        Zone::parse(name).unwrap()
    }

    fn secs(rfc3339: &str) -> u64 {
        crate::timefmt::parse_rfc3339("t", rfc3339)
            .unwrap()
            .as_secs()
    }

    fn day(zone: &Zone, date: &str) -> (u64, u64) {
        let d: Date = date.parse().unwrap();
        (
            zone.start_of_day(d).unwrap(),
            zone.start_of_day(d.tomorrow().unwrap()).unwrap(),
        )
    }

    #[test]
    fn days_are_23_24_or_25_hours_and_start_at_local_midnight() {
        let ny = zone("America/New_York");
        let (start, end) = day(&ny, "2026-03-08"); // spring forward
        assert_eq!(end - start, 23 * 3600);
        assert_eq!(ny.label(start), "2026-03-08T00:00:00-05:00");
        let (start, end) = day(&ny, "2026-11-01"); // fall back
        assert_eq!(end - start, 25 * 3600);
        assert_eq!(ny.label(start), "2026-11-01T00:00:00-04:00");
        let berlin = zone("Europe/Berlin");
        let (start, end) = day(&berlin, "2026-03-29");
        assert_eq!(end - start, 23 * 3600);
        assert_eq!(start, secs("2026-03-28T23:00:00Z"));
        // Lord Howe moves by half an hour.
        let lh = zone("Australia/Lord_Howe");
        let (start, end) = day(&lh, "2026-10-04");
        assert_eq!(end - start, 23 * 3600 + 1800);
        let kathmandu = zone("Asia/Kathmandu");
        let (start, _) = day(&kathmandu, "2026-11-01");
        assert_eq!(start, secs("2026-10-31T18:15:00Z"));
        assert_eq!(kathmandu.label(start), "2026-11-01T00:00:00+05:45");
    }

    #[test]
    fn local_starts_follow_the_zone() {
        let ny = zone("America/New_York");
        let (start, _) = day(&ny, "2026-10-30");
        let (_, end) = day(&ny, "2026-11-02");
        let days = ny.local_starts(start, end, LocalUnit::Day);
        let lengths: Vec<u64> = days
            .windows(2)
            .map(|w| w[1] - w[0])
            .chain(std::iter::once(end - days[3]))
            .collect();
        assert_eq!(lengths, [24 * 3600, 24 * 3600, 25 * 3600, 24 * 3600]);
        // Hours in India start at :30 UTC.
        let kolkata = zone("Asia/Kolkata");
        let from = secs("2026-11-01T00:30:00Z");
        let hours = kolkata.local_starts(from, from + 3 * 3600, LocalUnit::Hour);
        assert_eq!(hours, [from, from + 3600, from + 7200]);
        assert_eq!(
            kolkata.unit_start(from + 4000, LocalUnit::Hour),
            from + 3600
        );
        // The repeated hour of a fall-back day is one bucket of two hours.
        let (start, end) = day(&ny, "2026-11-01");
        let hours = ny.local_starts(start, end, LocalUnit::Hour);
        assert_eq!(hours.len(), 24);
        assert_eq!(hours[2] - hours[1], 7200);
    }

    #[test]
    fn bounds_and_bad_names() {
        assert_eq!(
            Zone::parse_bound("from", "2026-11-01").unwrap(),
            Bound::Date("2026-11-01".parse().unwrap())
        );
        assert_eq!(
            Zone::parse_bound("to", "2026-11-01T05:00:00+01:00").unwrap(),
            Bound::Instant(Timestamp::from_secs(secs("2026-11-01T04:00:00Z")))
        );
        assert!(
            Zone::parse_bound("from", "yesterday")
                .unwrap_err()
                .contains("from must be a date")
        );
        assert!(
            Zone::parse("Mars/Olympus")
                .unwrap_err()
                .contains("unknown time zone")
        );
        assert!(Zone::parse("").is_err());
        assert_eq!(Zone::utc().label(0), "1970-01-01T00:00:00Z");
        assert_eq!(zone("UTC").label(0), "1970-01-01T00:00:00Z");
    }
}
