//! `GET /healthz`, `GET /readyz`, `GET /metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::paths;

/// A health answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` (alive) or `ready` (can serve).
    pub status: String,
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(get, path = paths::HEALTHZ, tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the backend is reachable and the service is not draining.
#[utoipa::path(get, path = paths::READYZ, tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Shutting down or storage unavailable", body = ErrorBody),
    ))]
pub async fn readyz(State(app): State<AppState>) -> Result<Json<Health>, ApiError> {
    if app.is_shutting_down() {
        return Err(ApiError::Unavailable("the service is shutting down".into()));
    }
    app.store.check_ready().await?;
    Ok(Json(Health {
        status: "ready".into(),
    }))
}

/// Prometheus metrics, in the OpenMetrics text format.
#[utoipa::path(get, path = paths::METRICS, tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let text = app.metrics.render(
        app.queue.depth(),
        app.store.gauges(),
        app.state_bytes(),
        app.settings.budget.limit(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
