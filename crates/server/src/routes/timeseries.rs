//! `GET /api/v1/campaigns/{id}/timeseries`: counted impressions, or
//! distinct users, per second, minute, hour or calendar day, in any time
//! zone, as JSON or CSV.
//!
//! Read from the same counters as the stats, so the series and the windows
//! always agree: the 3,600 one-second points of `window=1h` sum to
//! `last_hour`. Buckets are aligned to the resolution in the query's zone
//! (`tz`, UTC by default): seconds and minutes are the same everywhere;
//! hours and days are local, so a day in New York is 23, 24 or 25 hours
//! and a day in Kathmandu starts at 18:15 UTC. The last point is the
//! current, partial bucket unless `to` ends earlier; buckets with nothing
//! counted are present with `count: 0`.
//!
//! How far back each resolution reaches is what is kept: seconds for an
//! hour, minutes for a day, hours for `HISTORY`, days for `DAILY_HISTORY`
//! (counted per UTC quarter hour, so exact in every zone). Distinct users
//! are kept per minute and hour: per second they are refused, per day they
//! reach back `HISTORY`, and in zones whose offset is not a whole number of
//! hours (India, Nepal) a local hour's or day's users are those of the UTC
//! hours starting in it (30 or 45 minutes later). They never add up across
//! buckets: a user seen in two minutes is in both.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use impression_core::{Metric, Resolution};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::csv::Format;
use super::{AppState, parse_campaign_id};
use crate::calendar::{Bound, LocalUnit, Zone};
use crate::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::paths;
use crate::timefmt::{format_duration, parse_duration};

/// The resolutions `timeseries?resolution=` offers (for the API
/// description; the handler reads the text itself to answer a clear error).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum SeriesResolution {
    /// One point per second (the last hour).
    Second,
    /// One point per minute (the last day).
    Minute,
    /// One point per local hour (`HISTORY`).
    Hour,
    /// One point per local calendar day (`DAILY_HISTORY`).
    Day,
}

/// The metrics `timeseries?metric=` offers (for the API description).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum SeriesMetric {
    /// Counted impressions per bucket (the default).
    Impressions,
    /// Distinct users per bucket (not per second).
    UniqueUsers,
}

/// The answer formats (for the API description).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum AnswerFormat {
    /// JSON (the default).
    Json,
    /// CSV with a header row (also chosen by `Accept: text/csv`).
    Csv,
}

/// Query of the timeseries endpoint.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    /// `second` (up to the last hour), `minute` (up to the last day, the
    /// default), `hour` (up to `HISTORY`, 7 days by default) or `day` (up
    /// to `DAILY_HISTORY`, 400 days by default).
    #[param(value_type = Option<SeriesResolution>, inline)]
    pub resolution: Option<String>,
    /// How far back from now, as a duration (`90s`, `30m`, `24h`, `7d`);
    /// defaults to 60 buckets (30 for days). Rounded up to whole buckets.
    /// Not with `from`/`to`.
    pub window: Option<String>,
    /// `impressions` (the default) or `unique_users` (distinct users per
    /// bucket; not with `resolution=second`).
    #[param(value_type = Option<SeriesMetric>, inline)]
    pub metric: Option<String>,
    /// An IANA time zone (`America/New_York`, `Asia/Kolkata`); default
    /// `UTC`. Hours and days are local to it, and `t` carries its offset.
    pub tz: Option<String>,
    /// First bucket: a date (`2026-11-01`, its start in `tz`) or an RFC
    /// 3339 instant (the bucket holding it).
    pub from: Option<String>,
    /// Last bucket, inclusive: a date (`2026-11-30`, up to its end in
    /// `tz`) or an RFC 3339 instant (the bucket holding it). Default: the
    /// current bucket.
    pub to: Option<String>,
    /// `json` (the default) or `csv`.
    #[param(value_type = Option<AnswerFormat>, inline)]
    pub format: Option<String>,
}

/// One bucket.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Point {
    /// Start of the bucket (RFC 3339, with the offset of `tz` at that
    /// moment; `Z` in UTC).
    #[schema(value_type = String, format = DateTime)]
    pub t: String,
    /// Counted impressions in the bucket, or its distinct users with
    /// `metric=unique_users`.
    pub count: u64,
}

/// Counted impressions (or distinct users) per bucket, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Series {
    /// The campaign.
    #[schema(value_type = String, format = Uuid)]
    pub campaign_id: String,
    /// `second`, `minute`, `hour` or `day`.
    pub resolution: String,
    /// `impressions` or `unique_users`.
    pub metric: String,
    /// The time zone of the buckets.
    pub tz: String,
    /// The buckets, oldest first.
    pub points: Vec<Point>,
}

/// Reads a campaign's counts, or distinct users, per second, minute, local
/// hour or local day.
#[utoipa::path(
    get,
    path = paths::CAMPAIGN_TIMESERIES,
    tag = "stats",
    params(("id" = String, Path, format = Uuid, description = "Campaign id (UUID)"), SeriesParams),
    responses(
        (status = 200, description = "The series: JSON, or CSV (`t,count`) with `format=csv` or `Accept: text/csv`",
            content((Series = "application/json"), (String = "text/csv"))),
        (status = 400, description = "Bad id, resolution, metric, window, tz, from, to or format; a range reversed, too long, or beyond what is kept (the message names the limit); unique_users per second", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub async fn campaign_timeseries(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<SeriesParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_campaign_id(&id)?;
    let format = Format::negotiate(params.format.as_deref(), &headers)?;
    let query = Query::parse(&params)?;
    let buckets = query.buckets(&app, &params)?;
    let counts = if let Some((first, count)) = buckets.uniform {
        app.store
            .timeseries(id, query.resolution.store(), query.metric, first, count)
            .await?
    } else {
        app.store
            .range_counts(id, query.metric, &buckets.ranges, app.clock.now())
            .await?
    }
    .ok_or(ApiError::CampaignNotFound(id))?;
    let points: Vec<Point> = buckets
        .ranges
        .iter()
        .zip(counts)
        .map(|(&(start, _), count)| Point {
            t: query.zone.label(start),
            count,
        })
        .collect();
    let series = Series {
        campaign_id: id.to_string(),
        resolution: query.resolution.name().to_owned(),
        metric: query.metric_name().to_owned(),
        tz: query.zone.name().to_owned(),
        points,
    };
    match format {
        Format::Json => Ok(Json(series).into_response()),
        Format::Csv => super::csv::response(
            &format!("{id}-{}-{}.csv", series.resolution, series.metric),
            &["t", "count"],
            series
                .points
                .iter()
                .map(|p| [p.t.clone(), p.count.to_string()]),
        ),
    }
}

/// A series' bucket width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Width {
    Second,
    Minute,
    Hour,
    Day,
}

impl Width {
    fn name(self) -> &'static str {
        match self {
            Width::Second => "second",
            Width::Minute => "minute",
            Width::Hour => "hour",
            Width::Day => "day",
        }
    }

    /// The store's resolution for UTC-aligned buckets of this width.
    fn store(self) -> Resolution {
        match self {
            Width::Second => Resolution::Second,
            Width::Minute => Resolution::Minute,
            Width::Hour | Width::Day => Resolution::Hour,
        }
    }

    /// Nominal seconds (a local hour or day may differ).
    fn secs(self) -> u64 {
        match self {
            Width::Second => 1,
            Width::Minute => 60,
            Width::Hour => 3600,
            Width::Day => 86_400,
        }
    }
}

/// What was asked, checked.
struct Query {
    resolution: Width,
    metric: Metric,
    zone: Zone,
}

/// The buckets to answer: each one's UTC range `[start, end)`, and, when
/// they are consecutive whole buckets of the store's own resolution, the
/// first bucket's number and the count (read with `timeseries`, else with
/// `range_counts`).
struct Buckets {
    ranges: Vec<(u64, u64)>,
    uniform: Option<(u64, usize)>,
}

impl Query {
    fn parse(params: &SeriesParams) -> Result<Self, ApiError> {
        let resolution = match params.resolution.as_deref().unwrap_or("minute") {
            "second" => Width::Second,
            "minute" => Width::Minute,
            "hour" => Width::Hour,
            "day" => Width::Day,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "resolution must be `second`, `minute`, `hour` or `day`, got {:?}",
                    other.chars().take(32).collect::<String>()
                )));
            }
        };
        let metric = match params.metric.as_deref().unwrap_or("impressions") {
            "impressions" => Metric::Impressions,
            "unique_users" => Metric::UniqueUsers,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "metric must be `impressions` or `unique_users`, got {:?}",
                    other.chars().take(32).collect::<String>()
                )));
            }
        };
        if metric == Metric::UniqueUsers && resolution == Width::Second {
            return Err(ApiError::BadRequest(
                "metric=unique_users is kept per minute and per hour: use resolution=minute, \
                 hour or day"
                    .to_owned(),
            ));
        }
        let zone = match params.tz.as_deref() {
            None => Zone::utc(),
            Some(name) => Zone::parse(name).map_err(ApiError::BadRequest)?,
        };
        Ok(Query {
            resolution,
            metric,
            zone,
        })
    }

    fn metric_name(&self) -> &'static str {
        match self.metric {
            Metric::Impressions => "impressions",
            Metric::UniqueUsers => "unique_users",
        }
    }

    /// How far back this series may reach, for the messages and the check.
    fn reach(&self, app: &AppState) -> (Duration, &'static str) {
        match (self.resolution, self.metric) {
            (Width::Second, _) => (Duration::from_secs(3600), "1h"),
            (Width::Minute, _) => (Duration::from_secs(86_400), "24h"),
            (Width::Hour, _) | (Width::Day, Metric::UniqueUsers) => {
                (app.settings.history, "HISTORY")
            }
            (Width::Day, Metric::Impressions) => (app.settings.daily_history, "DAILY_HISTORY"),
        }
    }

    fn local_unit(&self) -> Option<LocalUnit> {
        match self.resolution {
            Width::Hour => Some(LocalUnit::Hour),
            Width::Day => Some(LocalUnit::Day),
            Width::Second | Width::Minute => None,
        }
    }

    /// The start of the bucket holding `secs`.
    fn bucket_start(&self, secs: u64) -> u64 {
        match self.local_unit() {
            Some(unit) => self.zone.unit_start(secs, unit),
            None => secs - secs % self.resolution.secs(),
        }
    }

    /// Where a bound puts the range's start (`end = false`) or its end,
    /// exclusive (`end = true`).
    fn bound_secs(&self, bound: Bound, end: bool) -> Result<u64, ApiError> {
        let before_1970 =
            || ApiError::BadRequest("from and to must not be before 1970-01-01".to_owned());
        match bound {
            Bound::Instant(t) if end => {
                let start = self.bucket_start(t.as_secs());
                Ok(self.next_bucket(start))
            }
            Bound::Instant(t) => Ok(self.bucket_start(t.as_secs())),
            Bound::Date(date) if end => {
                let next = date.tomorrow().map_err(|_| before_1970())?;
                self.zone.start_of_day(next).ok_or_else(before_1970)
            }
            Bound::Date(date) => self.zone.start_of_day(date).ok_or_else(before_1970),
        }
    }

    /// The start of the bucket after the one starting at `start`.
    fn next_bucket(&self, start: u64) -> u64 {
        match self.local_unit() {
            // A local hour or day is at least 30 minutes and at most 26
            // hours: its successor starts within that.
            Some(unit) => {
                let probe = start + self.resolution.secs() * 2;
                self.zone
                    .local_starts(start, probe, unit)
                    .get(1)
                    .copied()
                    .unwrap_or(start + self.resolution.secs())
            }
            None => start + self.resolution.secs(),
        }
    }

    /// The earliest bucket start the kept counts fully cover at `now`.
    fn kept_since(&self, now: u64, app: &AppState) -> u64 {
        let earliest = match (self.resolution, self.metric) {
            (Width::Second, _) => now.saturating_sub(3599),
            (Width::Minute, _) => (now / 60).saturating_sub(1439) * 60,
            (Width::Hour, _) | (Width::Day, Metric::UniqueUsers) => {
                let hours = app.settings.history.as_secs() / 3600;
                (now / 3600).saturating_sub(hours.saturating_sub(1)) * 3600
            }
            (Width::Day, Metric::Impressions) => {
                let days = app.settings.daily_history.as_secs() / 86_400;
                let today = self.zone.date_at(now);
                let first = i32::try_from(days.saturating_sub(1))
                    .ok()
                    .and_then(|back| today.checked_sub(jiff::Span::new().days(back)).ok());
                return first.and_then(|d| self.zone.start_of_day(d)).unwrap_or(0);
            }
        };
        let start = self.bucket_start(earliest);
        if start == earliest {
            start
        } else {
            self.next_bucket(start)
        }
    }

    fn buckets(&self, app: &AppState, params: &SeriesParams) -> Result<Buckets, ApiError> {
        let now = app.clock.now().as_secs();
        let width = self.resolution.secs();
        let (reach, reach_name) = self.reach(app);
        let name = self.resolution.name();
        let most = match self.resolution {
            Width::Day => reach.as_secs().div_ceil(86_400),
            _ => reach.as_secs().div_ceil(width),
        };
        let bound = |field: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| Zone::parse_bound(field, t).map_err(ApiError::BadRequest))
                .transpose()
        };
        let (from, to) = (bound("from", &params.from)?, bound("to", &params.to)?);
        if params.window.is_some() && (from.is_some() || to.is_some()) {
            return Err(ApiError::BadRequest(
                "give either window or from/to, not both".to_owned(),
            ));
        }
        let end = match to {
            Some(b) => self.bound_secs(b, true)?,
            None => self.next_bucket(self.bucket_start(now)),
        };
        let start = match from {
            Some(b) => self.bound_secs(b, false)?,
            None => {
                let count = match params.window.as_deref() {
                    None if self.resolution == Width::Day => 30,
                    None => 60,
                    Some(text) => {
                        let window = parse_duration(text)
                            .map_err(|e| ApiError::BadRequest(format!("window: {e}")))?;
                        if window.is_zero() || window > reach {
                            return Err(ApiError::BadRequest(format!(
                                "window must be more than 0 and at most {} for resolution={name} \
                                 (second: up to 1h, minute: up to 24h, hour: up to HISTORY, {}, \
                                 day: up to DAILY_HISTORY, {})",
                                format_duration(reach),
                                format_duration(app.settings.history),
                                format_duration(app.settings.daily_history),
                            )));
                        }
                        window.as_secs().div_ceil(width).max(1)
                    }
                };
                self.count_back(end, count)
            }
        };
        if start >= end {
            return Err(ApiError::BadRequest(format!(
                "from must be before to (from starts at {}, to ends at {})",
                self.zone.label(start),
                self.zone.label(end)
            )));
        }
        let kept = self.kept_since(now, app);
        if start < kept {
            return Err(ApiError::BadRequest(format!(
                "resolution={name}{} reaches back {reach_name} ({}): from must be at or after {}",
                if self.metric == Metric::UniqueUsers && self.resolution == Width::Day {
                    " with metric=unique_users"
                } else {
                    ""
                },
                format_duration(reach),
                self.zone.label(kept)
            )));
        }
        let too_many = || {
            ApiError::BadRequest(format!(
                "at most {most} points for resolution={name} ({reach_name}: {})",
                format_duration(reach),
            ))
        };
        if (end - start) / width > most + 1 {
            return Err(too_many());
        }
        let starts: Vec<u64> = match self.local_unit() {
            Some(unit) => self.zone.local_starts(start, end, unit),
            None => (start..end)
                .step_by(usize::try_from(width).unwrap_or(1))
                .collect(),
        };
        if starts.len() as u64 > most {
            return Err(too_many());
        }
        let ranges: Vec<(u64, u64)> = starts
            .iter()
            .zip(starts.iter().skip(1).copied().chain(std::iter::once(end)))
            .map(|(&a, b)| (a, b))
            .collect();
        let store_width = self.resolution.store().secs();
        let uniform = (self.resolution != Width::Day
            && ranges
                .iter()
                .all(|&(a, b)| a % store_width == 0 && b - a == store_width))
        .then_some((start / store_width, ranges.len()));
        Ok(Buckets { ranges, uniform })
    }

    /// The start of the bucket `count` buckets back from the one ending at
    /// `end` (that one included).
    fn count_back(&self, end: u64, count: u64) -> u64 {
        let width = self.resolution.secs();
        match self.local_unit() {
            None => end.saturating_sub(count.saturating_mul(width)),
            Some(unit) => {
                // Local hours and days vary in length: list a little more
                // than enough, keep the last `count`.
                let from = self.bucket_start(end.saturating_sub((count + 2).saturating_mul(width)));
                let starts = self.zone.local_starts(from, end, unit);
                let keep = usize::try_from(count)
                    .unwrap_or(usize::MAX)
                    .min(starts.len());
                starts.get(starts.len() - keep).copied().unwrap_or(from)
            }
        }
    }
}
