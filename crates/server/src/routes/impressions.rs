//! `POST /api/v1/impressions`: validate now, count later.
//!
//! The request is validated synchronously (ids, campaign exists, campaign
//! started), stamped with its receive time, and queued for the workers. The
//! answer is 202 as soon as it is queued, or, with `?wait=true` (or on a
//! backend that acknowledges only after writing), once it was applied.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use impression_core::{Timestamp, TrackOutcome};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::admission::{Admission, EventTime, enqueue, rate_limit, reject_reason, rejection_error};
use crate::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::paths;

/// Body of `POST /api/v1/impressions`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TrackImpressionRequest {
    /// The campaign (UUID).
    #[schema(value_type = String, format = Uuid)]
    pub campaign_id: String,
    /// The viewer; 1..=512 bytes.
    #[schema(example = "user-1", min_length = 1, max_length = 512)]
    pub user_id: String,
    /// The creative; 1..=512 bytes.
    #[schema(example = "ad-1", min_length = 1, max_length = 512)]
    pub ad_id: String,
    /// When the impression happened (RFC 3339); defaults to when the server
    /// received it. At most `MAX_EVENT_AGE` (10 min) old and
    /// `MAX_CLOCK_SKEW` (5 s) ahead.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(default)]
    pub timestamp: Option<String>,
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
    path = paths::TRACK,
    tag = "impressions",
    params(TrackParams),
    request_body = TrackImpressionRequest,
    responses(
        (status = 202, description = "Validated and queued", body = Accepted),
        (status = 200, description = "With wait=true: processed", body = Processed),
        (status = 400, description = "Invalid ids or timestamp, or malformed JSON", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 409, description = "The campaign has not started", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "Over RATE_LIMIT_PER_CLIENT; see Retry-After",
            body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
        (status = 503, description = "Queue full, storage unavailable or MEMORY_LIMIT reached; see Retry-After",
            body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
pub async fn track_impression(
    State(app): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<TrackParams>,
    body: Result<ApiJson<TrackImpressionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let limited = rate_limit(&app, peer, &headers, 1, app.clock.now());
    handle(&app, params, limited, body).await
}

/// [`track_impression`] without the router, as the edge calls it: the same
/// extractors in the same order (query, then body), the same answers.
/// Borrowing the state instead of extracting a clone of it spares every
/// request a write to a reference count that all cores share.
pub async fn track_direct(app: &AppState, request: Request, peer: SocketAddr) -> Response {
    // What `ApiQuery` does, without taking the request apart and putting it
    // back together (two moves of its head and a drop of its parts).
    let params = match Query::<TrackParams>::try_from_uri(request.uri()) {
        Ok(Query(params)) => params,
        Err(rejection) => return ApiError::from(rejection).into_response(),
    };
    let limited = rate_limit(app, Some(peer.ip()), request.headers(), 1, app.clock.now());
    let body = ApiJson::from_request(request, app).await;
    handle(app, params, limited, body).await.into_response()
}

/// Tracks the request's impression; `limited` is the rate limit's verdict
/// on its client (checked before the body was read).
async fn handle(
    app: &AppState,
    params: TrackParams,
    limited: Result<(), ApiError>,
    body: Result<ApiJson<TrackImpressionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let received_at = app.clock.now();
    app.metrics.impression_received();
    let result = match (limited, body) {
        (Ok(()), Ok(ApiJson(req))) => track(app, req, received_at, params.wait).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
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
    let mut admission = Admission::new(app, received_at);
    let impression = admission
        .admit(
            &req.campaign_id,
            req.ad_id,
            req.user_id,
            req.timestamp.as_deref().map(EventTime::Rfc3339),
        )
        .await?;
    let id = impression.campaign_id;
    let Some(outcomes) = enqueue(app, vec![impression], wait).await? else {
        return Ok(accepted());
    };
    let status = match outcomes.first() {
        Some(TrackOutcome::Counted) => ProcessedStatus::Counted,
        Some(TrackOutcome::Duplicate) => ProcessedStatus::Duplicate,
        Some(TrackOutcome::Rejected(rejection)) => return Err(rejection_error(*rejection, id)),
        None => {
            return Err(ApiError::Internal(
                "no outcome for a processed impression".into(),
            ));
        }
    };
    if wait {
        Ok((StatusCode::OK, Json(Processed { status })).into_response())
    } else {
        Ok(accepted())
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
