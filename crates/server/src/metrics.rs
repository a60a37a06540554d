//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! Each [`Metrics`] owns its own registry (no process-global recorder), so
//! several servers in one test process keep separate, exact numbers.
//!
//! * `impressions_received_total`: every impression submitted for tracking,
//!   valid or not;
//! * `impressions_rejected_total{reason}`: refused before counting (`invalid`,
//!   `unknown_campaign`, `not_started`, `queue_full`, `unavailable`);
//! * `impressions_counted_total`, `impressions_duplicate_total`: decided by
//!   the dedup rule;
//! * `ingest_queue_depth`, `dedup_live_keys`, `campaigns`: gauges read at
//!   scrape time;
//! * `ingest_batch_size`: impressions per worker batch;
//! * `store_apply_failures_total`: batches the backend failed to apply;
//! * `http_request_duration_seconds{method,route,status}`: latency histogram,
//!   labelled by route template (never by raw path, to bound cardinality).

use axum::extract::MatchedPath;
use impression_core::TrackOutcome;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::storage::StoreGauges;

/// Why an impression was refused before it was counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The request failed validation.
    Invalid,
    /// No such campaign.
    UnknownCampaign,
    /// The campaign has not started.
    NotStarted,
    /// The queue stayed full.
    QueueFull,
    /// The backend could not take it.
    Unavailable,
}

impl RejectReason {
    fn as_str(self) -> &'static str {
        match self {
            RejectReason::Invalid => "invalid",
            RejectReason::UnknownCampaign => "unknown_campaign",
            RejectReason::NotStarted => "not_started",
            RejectReason::QueueFull => "queue_full",
            RejectReason::Unavailable => "unavailable",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

/// Every route template, so a request's label is a static string: no
/// allocation per request, and no label from a client-chosen path.
const ROUTES: &[&str] = &[
    "/api/v1/impressions",
    "/api/v1/impressions/batch",
    "/api/v1/impressions/pixel.gif",
    "/api/v1/campaigns",
    "/api/v1/campaigns/{id}",
    "/api/v1/campaigns/{id}/stats",
    "/api/v1/campaigns/{id}/timeseries",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/",
    "/docs/{*rest}",
];

/// The route label of a request: its template, `other` for a template not
/// listed, `unmatched` when no route matched.
pub fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    matched
        .and_then(|m| ROUTES.iter().find(|r| **r == m.as_str()))
        .copied()
        .unwrap_or(if matched.is_some() {
            "other"
        } else {
            "unmatched"
        })
}

/// The method label of a request (non-standard methods share `OTHER`).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The service's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    received: Counter,
    rejected: Family<ReasonLabel, Counter>,
    counted: Counter,
    duplicates: Counter,
    apply_failures: Counter,
    batch_size: Histogram,
    queue_depth: Gauge,
    live_keys: Gauge,
    campaigns: Gauge,
    requests: HistogramFamily<RequestLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        fn latency() -> Histogram {
            // 50 µs .. ~3.3 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
        }
        let m = Metrics {
            registry: Registry::default(),
            received: Counter::default(),
            rejected: Family::default(),
            counted: Counter::default(),
            duplicates: Counter::default(),
            apply_failures: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            queue_depth: Gauge::default(),
            live_keys: Gauge::default(),
            campaigns: Gauge::default(),
            requests: Family::new_with_constructor(latency),
        };
        let mut registry = Registry::default();
        registry.register(
            "impressions_received",
            "Impressions submitted for tracking, valid or not",
            m.received.clone(),
        );
        registry.register(
            "impressions_rejected",
            "Impressions refused before counting, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "impressions_counted",
            "Impressions counted",
            m.counted.clone(),
        );
        registry.register(
            "impressions_duplicate",
            "Impressions found to be duplicates within the TTL",
            m.duplicates.clone(),
        );
        registry.register(
            "store_apply_failures",
            "Batches the storage backend failed to apply",
            m.apply_failures.clone(),
        );
        registry.register(
            "ingest_batch_size",
            "Impressions per batch applied by a worker",
            m.batch_size.clone(),
        );
        registry.register(
            "ingest_queue_depth",
            "Impressions waiting in the ingest queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "dedup_live_keys",
            "Keys held for duplicate detection",
            m.live_keys.clone(),
        );
        registry.register("campaigns", "Campaigns known", m.campaigns.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route template and status",
            m.requests.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One impression arrived at a track endpoint.
    pub fn impression_received(&self) {
        self.received.inc();
    }

    /// One impression was refused before counting.
    pub fn impression_rejected(&self, reason: RejectReason) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// `n` impressions were refused before counting, for one reason.
    pub fn impression_rejected_many(&self, reason: RejectReason, n: usize) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc_by(n as u64);
    }

    /// A worker applied a batch with these outcomes.
    pub fn batch_applied(&self, outcomes: &[TrackOutcome]) {
        let (mut counted, mut duplicates) = (0, 0);
        for outcome in outcomes {
            match outcome {
                TrackOutcome::Counted => counted += 1,
                TrackOutcome::Duplicate => duplicates += 1,
                TrackOutcome::Rejected(r) => self.impression_rejected(match r {
                    impression_core::Rejection::UnknownCampaign => RejectReason::UnknownCampaign,
                    impression_core::Rejection::NotStarted => RejectReason::NotStarted,
                }),
            }
        }
        self.counted.inc_by(counted);
        self.duplicates.inc_by(duplicates);
        self.batch_size.observe(outcomes.len() as f64);
    }

    /// A worker failed to apply a batch of `size` impressions.
    pub fn batch_failed(&self, size: usize) {
        self.apply_failures.inc();
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: RejectReason::Unavailable.as_str(),
            })
            .inc_by(size as u64);
    }

    /// The Prometheus text exposition, with gauges read now.
    pub fn render(&self, queue_depth: usize, store: StoreGauges) -> String {
        self.queue_depth.set(saturating_i64(queue_depth as u64));
        self.live_keys.set(saturating_i64(store.live_dedup_keys));
        self.campaigns.set(saturating_i64(store.campaigns));
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// One request finished with `status` after `seconds`.
    pub fn observe_request(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        seconds: f64,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .observe(seconds);
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
