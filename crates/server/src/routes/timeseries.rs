//! `GET /api/v1/campaigns/{id}/timeseries`: counted impressions, or
//! distinct users, per bucket.
//!
//! Read from the same window counters as the stats, so the series and the
//! windows always agree: the 3,600 one-second points of `window=1h` sum to
//! `last_hour`. Buckets are aligned to the resolution (whole seconds,
//! minutes, hours, UTC); the last point is the current, partial bucket;
//! buckets with nothing counted are present with `count: 0`.
//!
//! With `metric=unique_users` each point is the distinct users of its
//! bucket (they do not add up across buckets: a user seen in two minutes is
//! in both). Users are kept per minute and per hour, not per second, so
//! `resolution=second` is refused for that metric.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use impression_core::{Metric, Resolution};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AppState, parse_campaign_id};
use crate::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::paths;
use crate::timefmt::{format_rfc3339, parse_duration};

/// The resolutions `timeseries?resolution=` offers (for the API
/// description; the handler reads the text itself to answer a clear error).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum SeriesResolution {
    /// One point per second.
    Second,
    /// One point per minute.
    Minute,
    /// One point per hour.
    Hour,
}

/// The metrics `timeseries?metric=` offers (for the API description).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum SeriesMetric {
    /// Counted impressions per bucket (the default).
    Impressions,
    /// Distinct users per bucket (`minute` and `hour` only).
    UniqueUsers,
}

/// Query of the timeseries endpoint.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    /// `second` (window up to 1h), `minute` (up to 24h, the default) or
    /// `hour` (up to the retained history, 7 days by default).
    #[param(value_type = Option<SeriesResolution>, inline)]
    pub resolution: Option<String>,
    /// How far back, as a duration (`90s`, `30m`, `24h`, `7d`); defaults to
    /// 60 buckets. Rounded up to whole buckets.
    pub window: Option<String>,
    /// `impressions` (the default) or `unique_users` (distinct users per
    /// bucket; not with `resolution=second`).
    #[param(value_type = Option<SeriesMetric>, inline)]
    pub metric: Option<String>,
}

/// One bucket.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Point {
    /// Start of the bucket (RFC 3339, UTC).
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
    /// `second`, `minute` or `hour`.
    pub resolution: String,
    /// `impressions` or `unique_users`.
    pub metric: String,
    /// The buckets, oldest first; the last is the current one.
    pub points: Vec<Point>,
}

/// Reads a campaign's counts, or distinct users, per second, minute or hour.
#[utoipa::path(
    get,
    path = paths::CAMPAIGN_TIMESERIES,
    tag = "stats",
    params(("id" = String, Path, format = Uuid, description = "Campaign id (UUID)"), SeriesParams),
    responses(
        (status = 200, description = "The series", body = Series),
        (status = 400, description = "Bad id, resolution, metric or window, a window too long for the resolution, or unique_users per second", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub async fn campaign_timeseries(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<SeriesParams>,
) -> Result<Json<Series>, ApiError> {
    let id = parse_campaign_id(&id)?;
    let (resolution, name) = match params.resolution.as_deref().unwrap_or("minute") {
        "second" => (Resolution::Second, "second"),
        "minute" => (Resolution::Minute, "minute"),
        "hour" => (Resolution::Hour, "hour"),
        other => {
            return Err(ApiError::BadRequest(format!(
                "resolution must be `second`, `minute` or `hour`, got {:?}",
                other.chars().take(32).collect::<String>()
            )));
        }
    };
    let (metric, metric_name) = match params.metric.as_deref().unwrap_or("impressions") {
        "impressions" => (Metric::Impressions, "impressions"),
        "unique_users" => (Metric::UniqueUsers, "unique_users"),
        other => {
            return Err(ApiError::BadRequest(format!(
                "metric must be `impressions` or `unique_users`, got {:?}",
                other.chars().take(32).collect::<String>()
            )));
        }
    };
    if metric == Metric::UniqueUsers && resolution == Resolution::Second {
        return Err(ApiError::BadRequest(
            "metric=unique_users is kept per minute and per hour: use resolution=minute or hour"
                .to_owned(),
        ));
    }
    let width = resolution.secs();
    let window = match params.window.as_deref() {
        None => Duration::from_secs(60 * width),
        Some(text) => {
            parse_duration(text).map_err(|e| ApiError::BadRequest(format!("window: {e}")))?
        }
    };
    let limit = match resolution {
        Resolution::Second => Duration::from_secs(3600),
        Resolution::Minute => Duration::from_secs(86_400),
        Resolution::Hour => app.settings.history,
    };
    if window.is_zero() || window > limit {
        return Err(ApiError::BadRequest(format!(
            "window must be more than 0 and at most {} for resolution={name} \
             (second: up to 1h, minute: up to 24h, hour: up to {})",
            humantime::format_duration(limit),
            humantime::format_duration(app.settings.history),
        )));
    }
    let count = window.as_secs().div_ceil(width).max(1);
    let now_bucket = app.clock.now().as_secs() / width;
    let first = now_bucket + 1 - count.min(now_bucket + 1);
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the window is checked above: `count` is at most 3600 seconds, 1440 minutes or HISTORY (<= 366 days) in hours"
    )]
    let counts = app
        .store
        .timeseries(id, resolution, metric, first, count as usize)
        .await?
        .ok_or(ApiError::CampaignNotFound(id))?;
    let points = counts
        .into_iter()
        .enumerate()
        .map(|(i, count)| Point {
            t: format_rfc3339(impression_core::Timestamp::from_secs(
                (first + i as u64) * width,
            )),
            count,
        })
        .collect();
    Ok(Json(Series {
        campaign_id: id.to_string(),
        resolution: name.to_owned(),
        metric: metric_name.to_owned(),
        points,
    }))
}
