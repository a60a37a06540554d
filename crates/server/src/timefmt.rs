//! Time as text, at the API edge and in settings: RFC 3339 instants and
//! durations like `90m`. The core only knows milliseconds since the epoch
//! and `Duration`s.

use std::time::Duration;

use impression_core::Timestamp;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;

/// `2025-01-01T00:00:00Z`, with fractional seconds only when there are some.
pub fn format_rfc3339(t: Timestamp) -> String {
    let nanos = i128::from(t.as_millis()) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|dt| dt.format(&Rfc3339).ok())
        // Timestamps come from parsed RFC 3339 or the clock: always in range.
        .unwrap_or_else(|| format!("@{}ms", t.as_millis()))
}

/// Parses `3600s`, `90m`, `1h`, `1h 30m`, `250ms`, or a bare number of
/// seconds. The error says what was expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}: expected a duration like `3600s`, `90m`, `1h` or `250ms`"))
}

/// A duration as the settings write it, in its largest whole unit: `400d`,
/// `25h`, `90m`, `7s` (or milliseconds).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    for (unit, name) in [(86_400, "d"), (3600, "h"), (60, "m")] {
        if secs.is_multiple_of(unit) {
            return format!("{}{name}", secs / unit);
        }
    }
    format!("{secs}s")
}

/// The last instant RFC 3339 can write in UTC: 9999-12-31T23:59:59.999Z.
const LATEST_MILLIS: u64 = 253_402_300_799_999;

/// Parses an RFC 3339 timestamp with any UTC offset; sub-millisecond digits
/// are dropped. `field` names the JSON field in the error.
///
/// The instant must lie between 1970 and the end of year 9999 *in UTC*:
/// `9999-12-31T23:59:59-23:00` is valid text but falls in year 10000, which
/// [`format_rfc3339`] cannot write back (a campaign with that start was
/// answered `"start_time": "@253402383599000ms"`).
pub fn parse_rfc3339(field: &str, text: &str) -> Result<Timestamp, ApiError> {
    let invalid = || {
        ApiError::BadRequest(format!(
            "{field} must be an RFC 3339 timestamp from 1970-01-01T00:00:00Z to \
             9999-12-31T23:59:59.999Z, like 2025-01-01T00:00:00Z"
        ))
    };
    let dt = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| invalid())?;
    let millis = dt.unix_timestamp_nanos().div_euclid(1_000_000);
    u64::try_from(millis)
        .ok()
        .filter(|&ms| ms <= LATEST_MILLIS)
        .map(Timestamp::from_millis)
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        for (text, secs) in [
            ("3600s", 3600),
            ("90m", 5400),
            ("1h", 3600),
            ("2s", 2),
            ("120", 120),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("expected a duration")
        );
    }

    #[test]
    fn round_trips_and_normalises_offsets_to_utc() {
        let t = parse_rfc3339("start_time", "2025-01-01T02:00:00.250+02:00").unwrap();
        assert_eq!(t, Timestamp::from_millis(1_735_689_600_250));
        assert_eq!(format_rfc3339(t), "2025-01-01T00:00:00.25Z");
        assert_eq!(
            format_rfc3339(Timestamp::from_secs(1_735_689_600)),
            "2025-01-01T00:00:00Z"
        );
    }

    /// Found by the `rfc3339` fuzz target: text in year 9999 with a negative
    /// offset is year 10000 in UTC; it parsed, and could not be formatted
    /// back (a campaign's `start_time` came back as `@...ms`).
    #[test]
    fn rejects_instants_after_year_9999_in_utc() {
        for bad in ["9999-12-31T02:00:06-22:11", "9999-12-31T23:59:59-23:00"] {
            let err = parse_rfc3339("start_time", bad).unwrap_err();
            assert!(
                err.to_string().contains("9999-12-31T23:59:59.999Z"),
                "{bad}"
            );
        }
        let last = parse_rfc3339("t", "9999-12-31T23:59:59.999Z").unwrap();
        assert_eq!(format_rfc3339(last), "9999-12-31T23:59:59.999Z");
        let early = parse_rfc3339("t", "9999-12-31T21:59:59+01:00").unwrap();
        assert_eq!(format_rfc3339(early), "9999-12-31T20:59:59Z");
    }

    #[test]
    fn rejects_non_rfc3339_and_pre_epoch() {
        for bad in ["2025-01-01", "yesterday", "1969-12-31T23:59:59Z", ""] {
            let err = parse_rfc3339("start_time", bad).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("start_time must be an RFC 3339"),
                "{bad}"
            );
        }
    }
}
