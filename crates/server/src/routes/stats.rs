//! `GET /api/v1/campaigns/{id}/stats`.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AppState, parse_campaign_id};
use crate::error::{ApiError, ApiPath, ErrorBody};

/// A campaign's counted impressions. Windows are exact at one-second
/// resolution and include the current partial second.
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
}

/// Reads a campaign's counts. Constant time whatever the campaign's volume.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}/stats",
    tag = "stats",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses(
        (status = 200, description = "The counts", body = StatsBody),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub async fn campaign_stats(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<StatsBody>, ApiError> {
    let id = parse_campaign_id(&id)?;
    let stats = app
        .store
        .stats(id, app.clock.now())
        .await?
        .ok_or(ApiError::CampaignNotFound(id))?;
    Ok(Json(StatsBody {
        campaign_id: id.to_string(),
        last_hour: stats.last_hour,
        last_day: stats.last_day,
        total: stats.total,
    }))
}
