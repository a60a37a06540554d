//! The HTTP layer: parse, validate, map errors, hand off. No counting logic
//! lives here.
//!
//! * [`campaigns`]: create, read and list campaigns;
//! * [`impressions`]: track one impression (queued for the workers);
//! * [`batch`]: track many in one request (JSON array or NDJSON);
//! * [`pixel`]: track from a 1x1 GIF URL (browsers, VAST players);
//! * [`admission`]: the rules all three apply before queueing;
//! * [`stats`]: a campaign's counts, optionally per ad;
//! * [`timeseries`]: counts per second, minute or hour;
//! * [`health`]: liveness, readiness and Prometheus metrics.
//!
//! The API description (`/openapi.json`) and its docs page (`/docs`) are
//! built in [`crate::openapi`].

pub mod admission;
pub mod batch;
pub mod campaigns;
pub mod health;
pub mod impressions;
pub mod pixel;
pub mod stats;
pub mod timeseries;

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use impression_core::{CampaignId, Clock};

use crate::auth::{self, ApiKeys};
use crate::client_addr::ClientAddrSettings;
use crate::config::Config;
use crate::edge::{Edge, WithEdge};
use crate::error::ApiError;
use crate::ingest::IngestQueue;
use crate::metrics::Metrics;
use crate::openapi;
use crate::pixel_id::{PixelIds, PixelSettings};
use crate::storage::Store;

/// Request-level limits and settings, from the configuration.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// How far ahead of the clock an event timestamp may be.
    pub max_clock_skew: Duration,
    /// How old an event timestamp may be on arrival.
    pub max_event_age: Duration,
    /// Most impressions per batch request.
    pub batch_max_items: usize,
    /// Largest batch body in bytes.
    pub batch_max_bytes: usize,
    /// How the pixel identifies browsers: its cookie, `PIXEL_ID` mode,
    /// hash secret.
    pub pixel: PixelSettings,
    /// Who the client is behind proxies.
    pub client_addr: ClientAddrSettings,
    /// Hourly history kept, bounding `timeseries?resolution=hour`.
    pub history: Duration,
    /// Longest user or ad id accepted, in bytes.
    pub max_id_bytes: usize,
    /// Most campaigns held.
    pub max_campaigns: u64,
    /// Most live dedup keys, if limited.
    pub max_dedup_keys: Option<u64>,
    /// Largest request body (other than batches), in bytes.
    pub max_body_bytes: usize,
    /// Largest total header size, in bytes.
    pub max_header_bytes: usize,
    /// Most requests handled at once.
    pub max_in_flight: usize,
    /// Time to send a body.
    pub body_read_timeout: Duration,
    /// Origins allowed to call tracking endpoints from browsers.
    pub cors_allowed_origins: Vec<String>,
}

impl From<&Config> for ApiSettings {
    fn from(c: &Config) -> Self {
        ApiSettings {
            max_clock_skew: c.max_clock_skew,
            max_event_age: c.max_event_age,
            batch_max_items: c.batch_max_items as usize,
            batch_max_bytes: usize::try_from(c.batch_max_bytes).unwrap_or(usize::MAX),
            pixel: PixelSettings::from_config(c),
            client_addr: ClientAddrSettings::from_config(c),
            history: Duration::from_secs(c.engine().history_hours * 3600),
            max_id_bytes: usize::from(c.max_id_bytes),
            max_campaigns: c.max_campaigns,
            max_dedup_keys: c.max_dedup_keys,
            max_body_bytes: usize::try_from(c.max_body_bytes).unwrap_or(usize::MAX),
            max_header_bytes: usize::try_from(c.max_header_bytes).unwrap_or(usize::MAX),
            max_in_flight: c.max_in_flight as usize,
            body_read_timeout: c.body_read_timeout,
            cors_allowed_origins: c.cors_allowed_origins.clone(),
        }
    }
}

static NEXT_APP_ID: AtomicU64 = AtomicU64::new(0);

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
    /// Request-level limits and settings.
    pub settings: ApiSettings,
    /// Keys for the management endpoints.
    pub api_keys: Arc<ApiKeys>,
    /// The pixel's user ids for browsers that bring none (and the keys
    /// they are derived with).
    pub pixel_ids: PixelIds,
    /// Unique in the process, so per-thread caches keep applications apart.
    id: u64,
    shutting_down: AtomicBool,
}

impl AppState {
    /// Bundles the shared parts.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        queue: IngestQueue,
        metrics: Arc<Metrics>,
        settings: ApiSettings,
        api_keys: Arc<ApiKeys>,
    ) -> Self {
        let pixel_ids = PixelIds::new(settings.pixel.clone());
        AppState(Arc::new(AppInner {
            store,
            clock,
            queue,
            metrics,
            settings,
            api_keys,
            pixel_ids,
            id: NEXT_APP_ID.fetch_add(1, Ordering::Relaxed),
            shutting_down: AtomicBool::new(false),
        }))
    }

    /// This application's id, unique in the process.
    pub fn id(&self) -> u64 {
        self.0.id
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
///
/// Three groups: **tracking** (open to the world, CORS-enabled for browser
/// beacons), **management** (campaigns, stats, time series: API key when
/// configured), and **operations** (health, readiness and docs always open,
/// metrics behind the API key; never shed, so load balancers and Prometheus
/// can still probe an overloaded node).
/// Limits, CORS and request metrics are not here: [`app`] puts the
/// router behind [`crate::edge`].
pub fn router(state: AppState) -> Router {
    let settings = &state.settings;
    let tracking = Router::new()
        .route(impressions::ROUTE, post(impressions::track_impression))
        .route(
            "/api/v1/impressions/batch",
            post(batch::track_batch).layer(DefaultBodyLimit::max(settings.batch_max_bytes)),
        )
        .route("/api/v1/impressions/pixel.gif", get(pixel::track_pixel));

    let management = Router::new()
        .route(
            "/api/v1/campaigns",
            post(campaigns::create_campaign).get(campaigns::list_campaigns),
        )
        .route("/api/v1/campaigns/{id}", get(campaigns::get_campaign))
        .route("/api/v1/campaigns/{id}/stats", get(stats::campaign_stats))
        .route(
            "/api/v1/campaigns/{id}/timeseries",
            get(timeseries::campaign_timeseries),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.api_keys),
            auth::require_key,
        ));

    let api = tracking.merge(management).with_state(state.clone());

    let metrics_route = Router::new()
        .route("/metrics", get(health::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.api_keys),
            auth::require_key,
        ));
    let operations = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(metrics_route)
        .with_state(state.clone());

    Router::new()
        .merge(api)
        .merge(operations)
        .merge(openapi::docs())
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// What the server serves: [`router`] behind the [edge](crate::edge) (limits, CORS,
/// shedding, request metrics, the default body limit).
///
/// The edge wraps the router once instead of being one of its layers:
/// every `Router::layer` boxes each route again and clones the layer per
/// request, which under callgrind cost about as much as the handler's own
/// work on the single-impression path (see BENCHMARKS.md).
pub fn app(state: AppState) -> WithEdge {
    let edge = Edge::new(state.clone());
    WithEdge::new(edge, router(state))
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
