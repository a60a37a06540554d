//! The HTTP layer: parse, validate, map errors, hand off. No counting logic
//! lives here.
//!
//! * [`campaigns`]: create, read and list campaigns;
//! * [`impressions`]: track an impression (queued for the workers);
//! * [`stats`]: a campaign's counts;
//! * [`health`]: liveness, readiness and Prometheus metrics.
//!
//! The API description (`/openapi.json`) and its docs page (`/docs`) are
//! built in [`crate::openapi`].

pub mod campaigns;
pub mod health;
pub mod impressions;
pub mod stats;

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use impression_core::{CampaignId, Clock};

use crate::error::ApiError;
use crate::ingest::IngestQueue;
use crate::metrics::{self, Metrics};
use crate::openapi;
use crate::storage::Store;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler shares. One `Arc` inside, so the per-request clone
/// axum makes is a single reference-count increment.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// The shared parts of the application.
pub struct AppInner {
    /// Where campaigns and counts live.
    pub store: Arc<dyn Store>,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// The way to the ingest workers.
    pub queue: IngestQueue,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    shutting_down: AtomicBool,
}

impl AppState {
    /// Bundles the shared parts.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        queue: IngestQueue,
        metrics: Arc<Metrics>,
    ) -> Self {
        AppState(Arc::new(AppInner {
            store,
            clock,
            queue,
            metrics,
            shutting_down: AtomicBool::new(false),
        }))
    }

    /// Marks the service as draining: `/readyz` fails from now on.
    pub fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Whether the service is draining.
    pub fn is_shutting_down(&self) -> bool {
        self.0.shutting_down.load(Ordering::Relaxed)
    }
}

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/campaigns",
            post(campaigns::create_campaign).get(campaigns::list_campaigns),
        )
        .route("/api/v1/campaigns/{id}", get(campaigns::get_campaign))
        .route("/api/v1/campaigns/{id}/stats", get(stats::campaign_stats))
        .route("/api/v1/impressions", post(impressions::track_impression))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state.clone());

    Router::new()
        .merge(api)
        .merge(openapi::docs())
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            metrics::record_request,
        ))
}

async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    let path = uri.path();
    let shown = path.get(..200).unwrap_or(path);
    ApiError::RouteNotFound(format!("{method} {shown}"))
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

/// Parses a campaign id from a path segment.
fn parse_campaign_id(raw: &str) -> Result<CampaignId, ApiError> {
    Ok(raw.parse::<CampaignId>()?)
}
