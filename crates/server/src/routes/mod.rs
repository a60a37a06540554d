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
//! * [`stream`]: a campaign's stats as Server-Sent Events, once a second;
//! * [`ingest`]: ingest health (accepted and refused impressions, the
//!   queue) as JSON, for the dashboard;
//! * [`health`]: liveness, readiness and Prometheus metrics.
//!
//! The API description (`/openapi.json`) and its docs page (`/docs`) are
//! built in [`crate::openapi`] from these handlers' annotations and added
//! by the application's composition ([`crate::startup::app`]).

pub mod admission;
pub mod batch;
pub mod campaigns;
pub mod csv;
pub mod health;
pub mod impressions;
pub mod ingest;
pub mod pixel;
pub mod stats;
pub mod stream;
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
use tokio_util::sync::CancellationToken;

use crate::auth::{self, ApiKeys};
use crate::budget::{MemoryBudget, StateBytes};
use crate::client_addr::ClientAddrSettings;
use crate::error::ApiError;
use crate::ingest::IngestQueue;
use crate::metrics::Metrics;
use crate::paths;
use crate::pixel_id::{PixelIds, PixelSettings};
use crate::rate_limit::RateLimiter;
use crate::storage::Store;

/// What the handlers enforce, from the configuration. (Limits on
/// connections, headers and bodies are the edge's:
/// [`EdgeSettings`](crate::edge::EdgeSettings).)
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
    /// Hourly history kept, bounding `timeseries?resolution=hour` (and
    /// unique users per day).
    pub history: Duration,
    /// Daily history kept, bounding `timeseries?resolution=day`.
    pub daily_history: Duration,
    /// Longest user or ad id accepted, in bytes.
    pub max_id_bytes: usize,
    /// Most campaigns held.
    pub max_campaigns: u64,
    /// Most live dedup keys, if limited.
    pub max_dedup_keys: Option<u64>,
    /// The memory the state may hold.
    pub budget: MemoryBudget,
    /// Impressions per second per client on the tracking endpoints.
    pub rate_limit_per_client: Option<u32>,
    /// Live stats streams.
    pub streams: stream::StreamSettings,
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
    /// The per-client limit, if configured.
    pub rate_limiter: Option<RateLimiter>,
    /// The open stats streams, bounded by `MAX_STREAMS`.
    pub streams: stream::StreamSlots,
    /// Unique in the process, so per-thread caches keep applications apart.
    id: u64,
    shutting_down: AtomicBool,
    /// Cancelled when shutdown begins, which ends every open stream.
    shutdown: CancellationToken,
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
        let settings_rate = settings.rate_limit_per_client;
        let streams = stream::StreamSlots::new(settings.streams.max_streams);
        AppState(Arc::new(AppInner {
            store,
            clock,
            queue,
            metrics,
            settings,
            api_keys,
            pixel_ids,
            rate_limiter: settings_rate.map(RateLimiter::new),
            streams,
            id: NEXT_APP_ID.fetch_add(1, Ordering::Relaxed),
            shutting_down: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
        }))
    }

    /// This application's id, unique in the process.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Marks the service as draining: `/readyz` fails from now on, and
    /// every open stats stream ends (so graceful shutdown does not wait for
    /// them).
    pub fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::Relaxed);
        self.0.shutdown.cancel();
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_begun(&self) {
        self.0.shutdown.cancelled().await;
    }

    /// Whether the service is draining.
    pub fn is_shutting_down(&self) -> bool {
        self.0.shutting_down.load(Ordering::Relaxed)
    }

    /// Bytes the state holds now, by kind: the store's estimate and the
    /// queue's bound (queued impressions at their largest ids).
    pub fn state_bytes(&self) -> StateBytes {
        let per_impression =
            size_of::<impression_core::Impression>() + 2 * self.settings.max_id_bytes;
        StateBytes::new(
            self.store.memory_use(),
            self.queue.depth() * per_impression,
            self.rate_limiter
                .as_ref()
                .map_or(0, RateLimiter::heap_bytes),
        )
    }
}

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// Every API route (the paths in [`crate::paths`]).
///
/// Three groups: **tracking** (open to the world, CORS-enabled for browser
/// beacons), **management** (campaigns, stats, time series: API key when
/// configured), and **operations** (health and readiness always open,
/// metrics behind the API key; never shed, so load balancers and Prometheus
/// can still probe an overloaded node).
/// The docs, the error fallbacks, limits, CORS and request metrics are not
/// here: the application's composition ([`crate::startup::app`]) adds them
/// and puts the router behind [`crate::edge`].
pub fn router(state: AppState) -> Router {
    let settings = &state.settings;
    let tracking = Router::new()
        .route(paths::TRACK, post(impressions::track_impression))
        .route(
            paths::TRACK_BATCH,
            post(batch::track_batch).layer(DefaultBodyLimit::max(settings.batch_max_bytes)),
        )
        .route(paths::PIXEL, get(pixel::track_pixel));

    let management = Router::new()
        .route(
            paths::CAMPAIGNS,
            post(campaigns::create_campaign).get(campaigns::list_campaigns),
        )
        .route(paths::CAMPAIGN, get(campaigns::get_campaign))
        .route(paths::CAMPAIGN_STATS, get(stats::campaign_stats))
        .route(
            paths::CAMPAIGN_TIMESERIES,
            get(timeseries::campaign_timeseries),
        )
        .route(paths::CAMPAIGN_STATS_STREAM, get(stream::stats_stream))
        .route(paths::INGEST, get(ingest::ingest_health))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.api_keys),
            auth::require_key,
        ));

    let api = tracking.merge(management).with_state(state.clone());

    let metrics_route = Router::new()
        .route(paths::METRICS, get(health::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.api_keys),
            auth::require_key,
        ));
    let operations = Router::new()
        .route(paths::HEALTHZ, get(health::healthz))
        .route(paths::READYZ, get(health::readyz))
        .merge(metrics_route)
        .with_state(state);

    Router::new().merge(api).merge(operations)
}

/// `router` with the JSON answers for an unknown path (404) and a wrong
/// method (405). Applied once the whole surface is merged: axum gives a
/// route the 405 fallback only if it exists when the fallback is set.
pub fn with_error_fallbacks(router: Router) -> Router {
    router
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
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
