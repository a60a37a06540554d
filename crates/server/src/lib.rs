//! `impression-counter`: the HTTP service around the pure
//! [`impression_core`] engine.
//!
//! A request flows: [`routes`] (parse, validate, map errors) →
//! [`ingest`] (bounded queue, batching workers) → [`storage`] (the
//! [`Store`](storage::Store) seam and its backends) → the core engine.
//!
//! # Layout
//!
//! * [`config`]: environment variables and flags, validated at start-up.
//! * [`startup`]: build the application from config; run it until stopped.
//! * [`routes`]: one module per resource; the router and shared state.
//! * [`error`]: the one JSON error shape and every mapping into it.
//! * [`ingest`]: the queue, the workers and their drain on shutdown.
//! * [`bulk`]: low-priority threads for large batches, so reads come first.
//! * [`storage`]: the batch-shaped backend seam; [`storage::memory`] is the
//!   embedded engine.
//! * [`auth`]: API keys for the management endpoints.
//! * [`budget`]: the memory budget (`MEMORY_LIMIT`) and its check.
//! * [`pixel_id`]: the pixel's user ids for browsers that bring none
//!   (minted cookie, daily-keyed hash).
//! * [`client_addr`]: the client's address, through trusted proxies.
//! * [`rate_limit`]: the per-client rate limit on the tracking endpoints.
//! * [`edge`]: the one middleware for limits, CORS and request metrics.
//! * [`limits`]: the deadline on reading request bodies.
//! * [`server`]: the accept loop, connection limits and graceful shutdown.
//! * [`metrics`]: Prometheus counters, gauges and latency histograms.
//! * [`openapi`]: the generated OpenAPI spec and the offline docs page.
//! * [`dashboard`]: the live dashboard's pages and files, compiled in.
//! * [`telemetry`], [`shutdown`], [`timefmt`], [`secret`]: logs, signals,
//!   time text, values never printed.

pub mod auth;
pub mod budget;
pub mod bulk;
pub mod calendar;
pub mod client_addr;
pub mod config;
pub mod dashboard;
pub mod edge;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod paths;
pub mod pixel_id;
pub mod rate_limit;
pub mod routes;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod timefmt;
