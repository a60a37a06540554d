//! `GET /api/v1/campaigns/{id}/stats`, optionally broken down per ad.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use impression_core::{Stats, UniqueStats};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::csv::Format;
use super::{AppState, parse_campaign_id};
use crate::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::paths;

/// Distinct users among the counted impressions (reach). Exact up to 128
/// users per sketch, a HyperLogLog (0.81% standard error) beyond; each
/// number is at most the impressions of its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UniqueUsers {
    /// Distinct users of the current minute and the 59 before it (whole
    /// minutes, so up to 59 seconds less than the impressions' `last_hour`).
    pub last_hour: u64,
    /// Distinct users of the current hour and the 23 before it (whole
    /// hours: between 23 and 24 hours).
    pub last_day: u64,
    /// Distinct users ever counted.
    pub total: u64,
}

impl From<UniqueStats> for UniqueUsers {
    fn from(u: UniqueStats) -> Self {
        UniqueUsers {
            last_hour: u.last_hour,
            last_day: u.last_day,
            total: u.total,
        }
    }
}

/// Counted impressions over the two windows and in total, and the distinct
/// users among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WindowCounts {
    /// Counted impressions in the last 3,600 seconds.
    pub last_hour: u64,
    /// Counted impressions in the last 86,400 seconds.
    pub last_day: u64,
    /// All counted impressions.
    pub total: u64,
    /// Distinct users among them.
    pub unique_users: UniqueUsers,
}

impl From<Stats> for WindowCounts {
    fn from(s: Stats) -> Self {
        WindowCounts {
            last_hour: s.last_hour,
            last_day: s.last_day,
            total: s.total,
            unique_users: s.unique_users.into(),
        }
    }
}

/// A campaign's counted impressions. Windows are exact at one-second
/// resolution and include the current partial second. Without `by=ad` the
/// answer has exactly `campaign_id`, `last_hour`, `last_day`, `total` and
/// `unique_users`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsBody {
    /// The campaign.
    #[schema(value_type = String, format = Uuid)]
    pub campaign_id: String,
    /// Counted impressions in the last 3,600 seconds.
    pub last_hour: u64,
    /// Counted impressions in the last 86,400 seconds.
    pub last_day: u64,
    /// All counted impressions.
    pub total: u64,
    /// Distinct users among the counted impressions, per window.
    pub unique_users: UniqueUsers,
    /// With `by=ad`: counts per ad id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ads: Option<BTreeMap<String, WindowCounts>>,
    /// With `by=ad`: counts of ads beyond the per-campaign limit, which have
    /// no counters of their own.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub other_ads: Option<WindowCounts>,
    /// With `by=ad`: the most ads tracked per campaign (`MAX_ADS_PER_CAMPAIGN`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ads_limit: Option<u64>,
    /// With `by=ad`: whether some ad exceeded the limit (see `other_ads`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ads_limit_exceeded: Option<bool>,
}

impl StatsBody {
    fn plain(campaign_id: String, stats: Stats) -> Self {
        StatsBody {
            campaign_id,
            last_hour: stats.last_hour,
            last_day: stats.last_day,
            total: stats.total,
            unique_users: stats.unique_users.into(),
            ads: None,
            other_ads: None,
            ads_limit: None,
            ads_limit_exceeded: None,
        }
    }
}

/// The breakdowns `stats?by=` offers (for the API description; the
/// handler reads the text itself to answer a clear error).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Breakdown {
    /// Counts per ad id.
    Ad,
}

/// Query of the stats endpoint.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// `ad` adds a breakdown per ad.
    #[param(value_type = Option<Breakdown>, inline)]
    pub by: Option<String>,
    /// `json` (the default) or `csv` (also chosen by `Accept: text/csv`):
    /// a header row, then the campaign, each ad and the other ads, one row
    /// each.
    #[param(value_type = Option<super::timeseries::AnswerFormat>, inline)]
    pub format: Option<String>,
}

/// The CSV columns of a stats answer.
const CSV_HEADER: [&str; 8] = [
    "scope",
    "ad_id",
    "last_hour",
    "last_day",
    "total",
    "unique_users_last_hour",
    "unique_users_last_day",
    "unique_users_total",
];

fn csv_row(scope: &str, ad_id: &str, s: &WindowCounts) -> [String; 8] {
    [
        scope.to_owned(),
        ad_id.to_owned(),
        s.last_hour.to_string(),
        s.last_day.to_string(),
        s.total.to_string(),
        s.unique_users.last_hour.to_string(),
        s.unique_users.last_day.to_string(),
        s.unique_users.total.to_string(),
    ]
}

impl StatsBody {
    /// The answer as CSV rows: `campaign`, then `ad` per ad (by id), then
    /// `other_ads` (with `by=ad`).
    fn csv_rows(&self) -> Vec<[String; 8]> {
        let campaign = WindowCounts {
            last_hour: self.last_hour,
            last_day: self.last_day,
            total: self.total,
            unique_users: self.unique_users,
        };
        let mut rows = vec![csv_row("campaign", "", &campaign)];
        for (ad, counts) in self.ads.iter().flatten() {
            rows.push(csv_row("ad", ad, counts));
        }
        if let Some(other) = &self.other_ads {
            rows.push(csv_row("other_ads", "", other));
        }
        rows
    }
}

/// Reads a campaign's counts. Constant time whatever the campaign's volume
/// (per ad: proportional to the number of ads).
#[utoipa::path(
    get,
    path = paths::CAMPAIGN_STATS,
    tag = "stats",
    params(("id" = String, Path, format = Uuid, description = "Campaign id (UUID)"), StatsParams),
    responses(
        (status = 200, description = "The counts: JSON, or CSV with `format=csv` or `Accept: text/csv`",
            content((StatsBody = "application/json"), (String = "text/csv"))),
        (status = 400, description = "The id is not a UUID, `by` is not `ad`, or `format` is neither `json` nor `csv`", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub async fn campaign_stats(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<StatsParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_campaign_id(&id)?;
    let format = Format::negotiate(params.format.as_deref(), &headers)?;
    let body = stats_body(&app, id, params.by.as_deref()).await?;
    match format {
        Format::Json => Ok(Json(body).into_response()),
        Format::Csv => {
            super::csv::response(&format!("{id}-stats.csv"), &CSV_HEADER, body.csv_rows())
        }
    }
}

pub(super) async fn stats_body(
    app: &AppState,
    id: impression_core::CampaignId,
    by: Option<&str>,
) -> Result<StatsBody, ApiError> {
    let by_ad = match by {
        None => false,
        Some("ad") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "by must be `ad`, got {:?}",
                other.chars().take(32).collect::<String>()
            )));
        }
    };
    let now = app.clock.now();
    if !by_ad {
        let stats = app
            .store
            .stats(id, now)
            .await?
            .ok_or(ApiError::CampaignNotFound(id))?;
        return Ok(StatsBody::plain(id.to_string(), stats));
    }
    // One snapshot for the campaign and its ads, so they always add up.
    let breakdown = app
        .store
        .ad_stats(id, now)
        .await?
        .ok_or(ApiError::CampaignNotFound(id))?;
    let mut body = StatsBody::plain(id.to_string(), breakdown.campaign);
    body.ads = Some(
        breakdown
            .ads
            .into_iter()
            .map(|(ad, s)| (ad.to_string(), s.into()))
            .collect(),
    );
    body.other_ads = Some(breakdown.other.into());
    body.ads_limit = Some(breakdown.limit as u64);
    body.ads_limit_exceeded = Some(breakdown.limit_exceeded);
    Ok(body)
}
