//! `POST /api/v1/impressions`: validate now, count later.
//!
//! The request is validated synchronously (ids, campaign exists, campaign
//! started), stamped with its receive time, and queued for the workers. The
//! answer is 202 as soon as it is queued, or, with `?wait=true` (or on a
//! backend that acknowledges only after writing), once it was applied.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use impression_core::{AdId, CampaignId, Impression, Rejection, Timestamp, TrackOutcome, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use crate::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::ingest::Queued;
use crate::metrics::RejectReason;
use crate::timefmt::format_rfc3339;

/// Body of `POST /api/v1/impressions`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TrackImpressionRequest {
    /// The campaign (UUID).
    #[schema(value_type = String, format = Uuid)]
    pub campaign_id: String,
    /// The viewer; 1..=512 bytes.
    #[schema(example = "user-1")]
    pub user_id: String,
    /// The creative; 1..=512 bytes.
    #[schema(example = "ad-1")]
    pub ad_id: String,
}

/// Query of `POST /api/v1/impressions`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TrackParams {
    /// Answer only once the impression was processed, saying whether it was
    /// counted (200 instead of 202).
    #[serde(default)]
    pub wait: bool,
}

/// Answer when the impression was queued.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// A human-readable confirmation.
    #[schema(example = "impression accepted")]
    pub message: String,
}

/// Answer with `?wait=true`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Processed {
    /// `counted`, or `duplicate` if the same key was counted less than one
    /// TTL away.
    pub status: ProcessedStatus,
}

/// What happened to a processed impression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProcessedStatus {
    /// Counted.
    Counted,
    /// A duplicate within the TTL; not counted.
    Duplicate,
}

/// Tracks one impression.
#[utoipa::path(
    post,
    path = "/api/v1/impressions",
    tag = "impressions",
    params(TrackParams),
    request_body = TrackImpressionRequest,
    responses(
        (status = 202, description = "Validated and queued", body = Accepted),
        (status = 200, description = "With wait=true: processed", body = Processed),
        (status = 400, description = "Invalid ids or malformed JSON", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 409, description = "The campaign has not started", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 503, description = "Queue full or storage unavailable; see Retry-After",
            body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
pub async fn track_impression(
    State(app): State<AppState>,
    ApiQuery(params): ApiQuery<TrackParams>,
    body: Result<ApiJson<TrackImpressionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let received_at = app.clock.now();
    app.metrics.impression_received();
    let result = match body {
        Ok(ApiJson(req)) => track(&app, req, received_at, params.wait).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        app.metrics.impression_rejected(reject_reason(e));
    }
    result
}

async fn track(
    app: &AppState,
    req: TrackImpressionRequest,
    received_at: Timestamp,
    wait: bool,
) -> Result<Response, ApiError> {
    let impression = Impression {
        campaign_id: req.campaign_id.parse()?,
        ad_id: AdId::parse(req.ad_id)?,
        user_id: UserId::parse(req.user_id)?,
        timestamp: received_at,
    };
    let id = impression.campaign_id;
    let campaign = app
        .store
        .campaign(id)
        .await?
        .ok_or(ApiError::CampaignNotFound(id))?;
    if !campaign.has_started(received_at) {
        return Err(not_started(id, campaign.start_time));
    }

    let must_wait = wait || app.store.acknowledges_after_apply();
    if !must_wait {
        app.queue
            .submit(Queued {
                impression,
                completion: None,
            })
            .await?;
        return Ok(accepted());
    }
    let (completion, processed) = oneshot::channel();
    app.queue
        .submit(Queued {
            impression,
            completion: Some(completion),
        })
        .await?;
    let outcome = processed
        .await
        .map_err(|_| ApiError::Unavailable("the service stopped before processing".into()))??;
    let status = match outcome {
        TrackOutcome::Counted => ProcessedStatus::Counted,
        TrackOutcome::Duplicate => ProcessedStatus::Duplicate,
        // Campaigns are immutable and never deleted, so these cannot change
        // between validation and processing; kept for completeness.
        TrackOutcome::Rejected(Rejection::UnknownCampaign) => {
            return Err(ApiError::CampaignNotFound(id));
        }
        TrackOutcome::Rejected(Rejection::NotStarted) => {
            return Err(not_started(id, campaign.start_time));
        }
    };
    if wait {
        Ok((StatusCode::OK, Json(Processed { status })).into_response())
    } else {
        Ok(accepted())
    }
}

fn not_started(id: CampaignId, start: Timestamp) -> ApiError {
    ApiError::CampaignNotStarted {
        id,
        starts: format_rfc3339(start),
    }
}

/// The 202 body never changes: answer it without serializing.
fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"message":"impression accepted"}"#,
    )
        .into_response()
}

fn reject_reason(e: &ApiError) -> RejectReason {
    match e {
        ApiError::CampaignNotFound(_) => RejectReason::UnknownCampaign,
        ApiError::CampaignNotStarted { .. } => RejectReason::NotStarted,
        ApiError::QueueFull => RejectReason::QueueFull,
        ApiError::Unavailable(_) | ApiError::Internal(_) => RejectReason::Unavailable,
        _ => RejectReason::Invalid,
    }
}
