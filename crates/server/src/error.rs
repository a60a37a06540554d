//! Every error the API answers, in one shape: `{"error": "...", "code": N}`.
//!
//! Handlers return `Result<_, ApiError>`, and `?` maps domain, storage and
//! queue errors to a status here, in one place. The framework's own
//! rejections (bad JSON, wrong content type, oversized body, bad query
//! string, unknown route, wrong method) are mapped too, through the
//! [`ApiJson`], [`ApiQuery`] and [`ApiPath`] extractors and the router's
//! fallbacks, so a client never sees a plain-text error. Internal causes are
//! logged, never sent.

use axum::Json;
use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use impression_core::{CampaignId, ValidationError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ingest::SubmitError;
use crate::storage::StoreError;
use crate::telemetry::chain;

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    #[schema(example = "campaign 0193a8e4-6f7e-7cc3-9b6a-3f1d2e4c5b6a not found")]
    pub error: String,
    /// The HTTP status code, repeated for clients that only see the body.
    #[schema(example = 404)]
    pub code: u16,
}

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a field is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not JSON as announced.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body exceeds the size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The headers exceed the size limit.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// The body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// No valid API key for a protected endpoint.
    #[error("{0}")]
    Unauthorized(String),
    /// The request conflicts with a limit or the current state.
    #[error("{0}")]
    Conflict(String),
    /// No campaign has this id.
    #[error("campaign {0} not found")]
    CampaignNotFound(CampaignId),
    /// The campaign exists but an impression before its start cannot count.
    #[error("campaign {id} has not started yet{}", starts_at(.starts.as_deref()))]
    CampaignNotStarted {
        /// The campaign.
        id: CampaignId,
        /// Its start time, RFC 3339, when known.
        starts: Option<String>,
    },
    /// No route has this path.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// The route exists, not with this method.
    #[error("method {0} is not allowed on this route")]
    MethodNotAllowed(String),
    /// The ingest queue stayed full; retry after a moment.
    #[error("the impression queue is full; retry shortly")]
    QueueFull,
    /// Shutting down, or the backend cannot take requests.
    #[error("{0}")]
    Unavailable(String),
    /// The impression would add state past the memory limit.
    #[error("{0}")]
    MemoryLimit(String),
    /// The client sent more than `RATE_LIMIT_PER_CLIENT` allows.
    #[error("{message}")]
    TooManyRequests {
        /// What happened, for a human.
        message: String,
        /// Seconds until the client may send again.
        retry_after: u64,
    },
    /// A bug or backend fault. The cause is logged, not shown.
    #[error("internal error")]
    Internal(String),
}

fn starts_at(starts: Option<&str>) -> String {
    starts
        .map(|s| format!(": it starts at {s}"))
        .unwrap_or_default()
}

impl ApiError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Conflict(_) | ApiError::CampaignNotStarted { .. } => StatusCode::CONFLICT,
            ApiError::CampaignNotFound(_) | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::QueueFull | ApiError::Unavailable(_) | ApiError::MemoryLimit(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiError {
    /// `Retry-After` for a 503 or 429: a second, five at the memory limit
    /// (room comes back only as older state expires), and for a rate limit
    /// the seconds the client owes.
    pub fn retry_after(&self) -> HeaderValue {
        match self {
            ApiError::MemoryLimit(_) => HeaderValue::from_static("5"),
            ApiError::TooManyRequests { retry_after, .. } => HeaderValue::from(*retry_after),
            _ => HeaderValue::from_static("1"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let body = ErrorBody {
            error: self.to_string(),
            code: status.as_u16(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, self.retry_after());
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"impression-counter\""),
            );
        }
        response
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    /// An unavailable backend is a 503 whose message carries the causes
    /// (`storage is unavailable: Redis: timed out`): they tell the client
    /// what to wait for. Anything else is a 500 whose causes are logged only.
    fn from(e: StoreError) -> Self {
        let message = chain(&e).to_string();
        match e {
            StoreError::Unavailable { .. } => ApiError::Unavailable(message),
            StoreError::CampaignExists(_) | StoreError::Internal { .. } => {
                ApiError::Internal(message)
            }
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Full => ApiError::QueueFull,
            SubmitError::Closed => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if crate::limits::is_body_timeout(&rejection) {
            return ApiError::RequestTimeout(
                "the request body did not arrive in time (BODY_READ_TIMEOUT)".into(),
            );
        }
        let message = rejection.body_text();
        match rejection.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(message),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(message),
            // axum answers 422 for well-formed JSON of the wrong shape; the
            // API contract says 400 for every malformed body.
            _ => ApiError::BadRequest(message),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// `axum::Json`, with rejections in the API's error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query`, with rejections in the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path`, with rejections in the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let response =
            ApiError::Internal("disk /dev/sda1 on fire at 0xdeadbeef".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "error": "internal error", "code": 500 })
        );
    }

    #[tokio::test]
    async fn unavailable_errors_say_when_to_retry() {
        let response = ApiError::QueueFull.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
