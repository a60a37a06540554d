//! `GET /api/v1/ingest`: ingest health as JSON, what the dashboard's health
//! panel polls.
//!
//! The same numbers as `/metrics` (`impressions_received_total`,
//! `impressions_counted_total`, `impressions_duplicate_total`,
//! `impressions_rejected_total{reason}`, `store_apply_failures_total`,
//! `ingest_queue_depth`), as counters since the process started: a client
//! gets rates by differencing two reads, as Prometheus does. Per node: behind
//! a load balancer each answer is the node's that served it.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use crate::error::ErrorBody;
use crate::paths;

/// The ingest queue between the handlers and the workers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueFill {
    /// Impressions queued or being applied now.
    pub depth: u64,
    /// The most it holds (`IMPRESSIONS_QUEUE_SIZE`).
    pub capacity: u64,
    /// Open live stats streams (`/stats/stream`).
    pub streams: u64,
}

/// Ingest counters of this node since it started, and its queue now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IngestHealth {
    /// Impressions submitted for tracking, valid or not.
    pub received: u64,
    /// Impressions counted.
    pub counted: u64,
    /// Impressions found to be duplicates within the TTL.
    pub duplicates: u64,
    /// Impressions refused before counting, by reason (`invalid`,
    /// `unknown_campaign`, `not_started`, `queue_full`, `unavailable`,
    /// `memory_limit`, `rate_limited`), every reason present.
    pub rejected: BTreeMap<String, u64>,
    /// Batches the storage backend failed to apply.
    pub apply_failures: u64,
    /// The queue now.
    pub queue: QueueFill,
}

/// Ingest health: accepted and refused impressions, and the queue's fill.
#[utoipa::path(get, path = paths::INGEST, tag = "operations",
    responses(
        (status = 200, description = "Counters since the node started, and its queue now", body = IngestHealth),
        (status = 401, description = "API keys are configured and none was given", body = ErrorBody),
    ))]
pub async fn ingest_health(State(app): State<AppState>) -> Json<IngestHealth> {
    let counts = app.metrics.ingest_counts();
    Json(IngestHealth {
        received: counts.received,
        counted: counts.counted,
        duplicates: counts.duplicates,
        rejected: counts
            .rejected
            .iter()
            .map(|(reason, n)| (reason.as_str().to_owned(), *n))
            .collect(),
        apply_failures: counts.apply_failures,
        queue: QueueFill {
            depth: app.queue.depth() as u64,
            capacity: app.queue.capacity() as u64,
            streams: app.streams.open() as u64,
        },
    })
}
