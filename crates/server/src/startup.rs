//! Building the application from its configuration, and running it until
//! it is told to stop.
//!
//! [`Application::build`] binds the listener (port 0 picks a free one, which
//! is how tests run many servers at once), starts the ingest workers and the
//! housekeeping task, and wires the router. [`Application::run_until_stopped`]
//! serves until the given future resolves, then shuts down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use impression_core::{Clock, SystemClock};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::ApiKeys;
use crate::config::Config;
use crate::ingest::{IngestQueue, Workers, spawn_maintenance};
use crate::metrics::Metrics;
use crate::routes::{self, ApiSettings, AppState};
use crate::server::{self, ConnectionLimits};
use crate::storage::{self, Store};

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The API keys file could not be read.
    #[error(transparent)]
    ApiKeys(#[from] crate::auth::KeyFileError),
    /// The storage backend could not be opened.
    #[error("cannot open the {kind:?} storage: {source}")]
    Storage {
        /// Which backend.
        kind: crate::config::StorageKind,
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

/// A built, not yet running, application.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    store: Arc<dyn Store>,
    limits: ConnectionLimits,
    workers: Workers,
    maintenance: JoinHandle<()>,
    stop_maintenance: CancellationToken,
}

impl Application {
    /// Builds the application with the backend and clock the configuration
    /// implies.
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = storage::open(config, Arc::clone(&clock))
            .await
            .map_err(|source| StartupError::Storage {
                kind: config.storage_kind(),
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
        let api_keys = Arc::new(ApiKeys::from_config(config)?);
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
        let (queue, rx) = IngestQueue::new(
            config.impressions_queue_size as usize,
            config.enqueue_timeout,
        );
        let workers = Workers::spawn(
            config.workers(),
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
            ApiSettings::from(config),
            api_keys,
        );
        tracing::info!(
            %addr,
            ttl = ?config.ttl,
            queue = config.impressions_queue_size,
            workers = config.workers(),
            scope = ?config.dedup_scope,
            storage = ?config.storage_kind(),
            "impression-counter listening"
        );
        Ok(Application {
            listener,
            addr,
            state,
            store,
            limits: ConnectionLimits {
                max_connections: config.max_connections as usize,
                header_read_timeout: config.header_read_timeout,
                max_buf_bytes: usize::try_from(config.max_header_bytes)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(4),
            },
            workers,
            maintenance,
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
        let app = routes::app(self.state);
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
        if let Err(e) = self.store.close().await {
            tracing::error!(error = %e, "closing the storage failed");
            return Err(std::io::Error::other(e));
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}
