//! `POST /api/v1/campaigns`, `GET /api/v1/campaigns`, `GET /api/v1/campaigns/{id}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use impression_core::{Campaign, CampaignId, CampaignName};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AppState, parse_campaign_id};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::paths;
use crate::timefmt::{format_rfc3339, parse_rfc3339};

/// How far in the past a start time may be: the original service demanded a
/// future start; this tolerates clock skew between client and server.
pub const START_TIME_TOLERANCE: Duration = Duration::from_secs(60);
/// Page size when `limit` is absent.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page size.
pub const MAX_PAGE: usize = 1000;

/// Body of `POST /api/v1/campaigns`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateCampaignRequest {
    /// Display name, trimmed; 1..=256 characters.
    #[schema(
        example = "Summer sale",
        min_length = 1,
        max_length = 256,
        pattern = r"\S"
    )]
    pub name: String,
    /// When impressions start to count (RFC 3339). Defaults to now; at most
    /// 60 seconds in the past.
    #[schema(value_type = Option<String>, format = DateTime, example = "2030-01-01T00:00:00Z")]
    #[serde(default)]
    pub start_time: Option<String>,
}

/// A campaign.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CampaignBody {
    /// Server-chosen id.
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    /// Display name.
    pub name: String,
    /// When impressions start to count.
    #[schema(value_type = String, format = DateTime)]
    pub start_time: String,
}

impl From<&Campaign> for CampaignBody {
    fn from(c: &Campaign) -> Self {
        CampaignBody {
            id: c.id.to_string(),
            name: c.name.to_string(),
            start_time: format_rfc3339(c.start_time),
        }
    }
}

/// Answer to `POST /api/v1/campaigns`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CampaignCreated {
    /// Server-chosen id.
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    /// Display name, as stored (trimmed).
    pub name: String,
    /// When impressions start to count.
    #[schema(value_type = String, format = DateTime)]
    pub start_time: String,
    /// A human-readable confirmation.
    pub message: String,
}

/// A page of campaigns.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CampaignPage {
    /// Campaigns in id order (ids are time-ordered UUIDv7, so creation order).
    pub campaigns: Vec<CampaignBody>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /api/v1/campaigns`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    pub cursor: Option<String>,
}

/// Registers a campaign.
#[utoipa::path(
    post,
    path = paths::CAMPAIGNS,
    tag = "campaigns",
    request_body = CreateCampaignRequest,
    responses(
        (status = 201, description = "Created", body = CampaignCreated,
            headers(("Location" = String, description = "/api/v1/campaigns/{id}"))),
        (status = 400, description = "Invalid name or start time, or malformed JSON", body = ErrorBody),
        (status = 401, description = "API keys are configured and none valid was sent", body = ErrorBody),
        (status = 409, description = "MAX_CAMPAIGNS reached", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub async fn create_campaign(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<CreateCampaignRequest>,
) -> Result<Response, ApiError> {
    let name = CampaignName::parse(&req.name)?;
    let now = app.clock.now();
    let start_time = match req.start_time.as_deref() {
        None => now,
        Some(text) => parse_rfc3339("start_time", text)?,
    };
    if start_time < now.saturating_sub(START_TIME_TOLERANCE) {
        return Err(ApiError::BadRequest(format!(
            "start_time {} is in the past; it may be at most {} seconds before now ({})",
            format_rfc3339(start_time),
            START_TIME_TOLERANCE.as_secs(),
            format_rfc3339(now)
        )));
    }
    let held = app.store.gauges().campaigns;
    if held >= app.settings.max_campaigns {
        return Err(ApiError::Conflict(format!(
            "this server holds {held} campaigns, its limit (MAX_CAMPAIGNS); no more can be created"
        )));
    }
    let campaign = Campaign {
        id: CampaignId::from_uuid(uuid::Uuid::now_v7()),
        name,
        start_time,
    };
    let campaign = app.store.create_campaign(campaign).await?;
    let body = CampaignBody::from(campaign.as_ref());
    let location = format!("/api/v1/campaigns/{}", body.id);
    let created = CampaignCreated {
        id: body.id,
        name: body.name,
        start_time: body.start_time,
        message: "campaign created".to_owned(),
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    )
        .into_response())
}

/// Reads one campaign.
#[utoipa::path(
    get,
    path = paths::CAMPAIGN,
    tag = "campaigns",
    params(("id" = String, Path, format = Uuid, description = "Campaign id (UUID)")),
    responses(
        (status = 200, description = "The campaign", body = CampaignBody),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub async fn get_campaign(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CampaignBody>, ApiError> {
    let id = parse_campaign_id(&id)?;
    let campaign = app
        .store
        .campaign(id)
        .await?
        .ok_or(ApiError::CampaignNotFound(id))?;
    Ok(Json(CampaignBody::from(campaign.as_ref())))
}

/// Lists campaigns, a page at a time.
#[utoipa::path(
    get,
    path = paths::CAMPAIGNS,
    tag = "campaigns",
    params(ListParams),
    responses(
        (status = 200, description = "A page of campaigns", body = CampaignPage),
        (status = 400, description = "Invalid limit or cursor", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub async fn list_campaigns(
    State(app): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<CampaignPage>, ApiError> {
    let limit = match params.limit {
        None => DEFAULT_PAGE,
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the pattern bounds `n` to 1..=1000"
        )]
        Some(n @ 1..=1000) => n as usize,
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_PAGE}, got {n}"
            )));
        }
    };
    let after = params
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<CampaignId>().map_err(|_| {
                ApiError::BadRequest("cursor is not a cursor returned by this API".into())
            })
        })
        .transpose()?;
    // One more than asked tells whether another page exists.
    let mut page: Vec<Arc<Campaign>> = app.store.list_campaigns(after, limit + 1).await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next_cursor = more
        .then(|| page.last().map(|c| c.id.to_string()))
        .flatten();
    Ok(Json(CampaignPage {
        campaigns: page
            .iter()
            .map(|c| CampaignBody::from(c.as_ref()))
            .collect(),
        next_cursor,
    }))
}
