//! The application's composition: building it from its configuration, and
//! running it until it is told to stop.
//!
//! [`Application::build`] binds the listener (port 0 picks a free one, which
//! is how tests run many servers at once), starts the ingest workers and the
//! housekeeping task, and wires the router. [`Application::run_until_stopped`]
//! serves until the given future resolves, then shuts down in order. [`app`]
//! is what is served: the router behind the edge, with the routes plugged
//! into the edge. Tests that need no socket call it directly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use impression_core::{Clock, SystemClock};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::ApiKeys;
use crate::config::Config;
use crate::dashboard;
use crate::edge::{Edge, EdgeRoutes, EdgeSettings, WithEdge};
use crate::error::ApiError;
use crate::ingest::{IngestQueue, Workers, spawn_maintenance};
use crate::metrics::Metrics;
use crate::openapi;
use crate::paths::{self, Route};
use crate::routes::{self, AppState};
use crate::server::{self, ConnectionLimits};
use crate::storage::{self, Store};
use crate::telemetry::chain;

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The API keys file could not be read.
    #[error(transparent)]
    ApiKeys(#[from] crate::auth::KeyFileError),
    /// The storage backend could not be opened.
    #[error("cannot open the {backend} storage")]
    Storage {
        /// Which backend.
        backend: &'static str,
        /// The cause.
        source: crate::storage::StoreError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the server serves: the routes, the API docs and the dashboard
/// behind the edge,
/// the edge calling the hot route through the state.
pub fn app(state: AppState, edge: &EdgeSettings) -> WithEdge<AppState> {
    let edge = Edge::new(edge, Arc::clone(&state.metrics), state.clone());
    let router = routes::router(state)
        .merge(openapi::docs())
        .merge(dashboard::router());
    WithEdge::new(edge, routes::with_error_fallbacks(router))
}

/// The edge calls the hot route and renders its refusals through the
/// state: see [`EdgeRoutes`].
impl EdgeRoutes for AppState {
    async fn track(&self, request: Request<Body>, peer: std::net::SocketAddr) -> Response {
        routes::impressions::track_direct(self, request, peer).await
    }

    /// The pixel answers its GIF with the reason in `X-Impression-Error`
    /// whatever refused it, so an `<img>` never shows as broken on a page.
    fn refusal(&self, route: Option<&Route>, error: ApiError) -> Response {
        match route {
            Some(route) if route.path == paths::PIXEL => routes::pixel::refusal(&error),
            _ => error.into_response(),
        }
    }
}

/// A built, not yet running, application.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    edge: EdgeSettings,
    store: Arc<dyn Store>,
    limits: ConnectionLimits,
    workers: Workers,
    maintenance: JoinHandle<()>,
    memory_watch: JoinHandle<()>,
    stop_maintenance: CancellationToken,
}

impl Application {
    /// Builds the application with the backend and clock the configuration
    /// implies.
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let settings = config.storage();
        let store = storage::open(&settings, Arc::clone(&clock))
            .await
            .map_err(|source| StartupError::Storage {
                backend: settings.backend.name(),
                source,
            })?;
        Self::build_with(config, store, clock).await
    }

    /// Builds the application around a given backend and clock (tests pass a
    /// manual clock to cross TTLs and windows without waiting).
    pub async fn build_with(
        config: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        let api_keys = Arc::new(ApiKeys::load(config.api_keys())?);
        if api_keys.enabled() {
            crate::auth::reload_on_sighup(Arc::clone(&api_keys));
        } else {
            tracing::warn!(
                "no API_KEYS or API_KEYS_FILE: campaign, stats and metrics endpoints are open \
                 to anyone who can reach this port"
            );
        }
        let addr = config.listen_addr();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr, source })?;

        let metrics = Arc::new(Metrics::new());
        let ingest = config.ingest();
        let (queue, rx) = IngestQueue::new(ingest.queue_size, ingest.enqueue_timeout);
        let workers = Workers::spawn(
            ingest.workers,
            rx,
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&metrics),
        );
        let stop_maintenance = CancellationToken::new();
        let maintenance = spawn_maintenance(
            Arc::clone(&store),
            Arc::clone(&clock),
            stop_maintenance.clone(),
        );
        let state = AppState::new(
            Arc::clone(&store),
            clock,
            queue,
            metrics,
            config.api(),
            api_keys,
        );
        let (budget, memory_limit) = config.memory_budget();
        let memory_watch = crate::budget::spawn_watch(
            budget,
            {
                let state = state.clone();
                move || {
                    // The rate limit forgets idle clients on the same tick.
                    if let Some(limiter) = &state.rate_limiter {
                        limiter.sweep(state.clock.now());
                    }
                    state.state_bytes().total()
                }
            },
            stop_maintenance.clone(),
        );
        tracing::info!(
            %addr,
            ttl = ?config.ttl,
            queue = ingest.queue_size,
            workers = ingest.workers,
            scope = ?config.dedup_scope,
            storage = ?config.storage_kind(),
            %memory_limit,
            "impression-counter listening"
        );
        Ok(Application {
            listener,
            addr,
            state,
            edge: config.edge(),
            store,
            limits: config.connections(),
            workers,
            maintenance,
            memory_watch,
            stop_maintenance,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state, for tests that look beneath the API.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then: stops accepting, finishes the
    /// requests in flight, applies every queued impression, and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let app = app(self.state, &self.edge);
        server::serve(self.listener, app, self.limits, async move {
            shutdown.await;
            state.begin_shutdown();
            tracing::info!("shutting down: finishing requests in flight");
        })
        .await;

        tracing::info!("draining the ingest queue");
        self.workers.drain().await;
        self.stop_maintenance.cancel();
        let _ = self.maintenance.await;
        let _ = self.memory_watch.await;
        if let Err(e) = self.store.close().await {
            tracing::error!(error = %chain(&e), "closing the storage failed");
            return Err(std::io::Error::other(e));
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}
