//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! Each [`Metrics`] owns its own registry (no process-global recorder), so
//! several servers in one test process keep separate, exact numbers.
//!
//! * `impressions_received_total`: every impression submitted for tracking,
//!   valid or not;
//! * `impressions_rejected_total{reason}`: refused before counting (`invalid`,
//!   `unknown_campaign`, `not_started`, `queue_full`, `unavailable`);
//! * `impressions_counted_total{id_source}`, `impressions_duplicate_total`:
//!   decided by the dedup rule; counted impressions by where their user id
//!   came from ([`IdSource`]: `body` for the JSON endpoints; for the pixel
//!   `url`, `cookie`, `minted` or `hash`), so operators see how much of the
//!   count rests on ids the service made up. The sum over `id_source` is
//!   the total counted;
//! * `ingest_queue_depth`, `dedup_live_keys`, `campaigns`: gauges read at
//!   scrape time;
//! * `memory_state_bytes{kind}` (`dedup`, `counters`, `sketches`,
//!   `campaigns`, `queue`) and `memory_limit_bytes`: the memory budget;
//! * `redis_masters_up`, `redis_reconnects_total`, `redis_failovers_total`,
//!   `redis_replica_ack_refusals_total` (Redis backend only, 0 otherwise):
//!   masters answering, connections replaced (stuck, or a new master),
//!   master changes seen (failovers, slots moved), chunks answered 503 for
//!   want of `REDIS_MIN_REPLICAS_ACK` replicas;
//! * `ingest_batch_size`: impressions per worker batch;
//! * `store_apply_failures_total`: batches the backend failed to apply;
//! * `http_request_duration_seconds{method,route,status}`: latency histogram,
//!   labelled by route template (never by raw path, to bound cardinality).

mod striped;

use std::sync::Arc;

use impression_core::TrackOutcome;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use self::striped::{
    CounterCollector, HistogramCollector, Labels, RequestLatency, StripedCounter, StripedHistogram,
};

use crate::budget::StateBytes;
use crate::paths::{self, Route};
use crate::storage::{BackendGauges, StoreGauges};

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
    /// It would have added state past `MEMORY_LIMIT`.
    MemoryLimit,
    /// Its client was over `RATE_LIMIT_PER_CLIENT`.
    RateLimited,
}

impl RejectReason {
    /// Every reason, in label order.
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Invalid,
        RejectReason::UnknownCampaign,
        RejectReason::NotStarted,
        RejectReason::QueueFull,
        RejectReason::Unavailable,
        RejectReason::MemoryLimit,
        RejectReason::RateLimited,
    ];

    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::Invalid => "invalid",
            RejectReason::UnknownCampaign => "unknown_campaign",
            RejectReason::NotStarted => "not_started",
            RejectReason::QueueFull => "queue_full",
            RejectReason::Unavailable => "unavailable",
            RejectReason::MemoryLimit => "memory_limit",
            RejectReason::RateLimited => "rate_limited",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Where the user id of an impression came from: the `id_source` label of
/// `impressions_counted_total`. Travels with a request's impressions
/// through the ingest queue (one per job), since whether they counted is
/// only known once a worker applied them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IdSource {
    /// The JSON body of `POST /api/v1/impressions` or of a batch.
    #[default]
    Body,
    /// The pixel's `user_id` URL parameter.
    Url,
    /// The pixel's id cookie, as the browser sent it back.
    Cookie,
    /// Made by the pixel (`PIXEL_ID=cookie`) for a browser without the
    /// cookie, and offered to it in `Set-Cookie`.
    Minted,
    /// Derived by the pixel (`PIXEL_ID=hash`) from the client's address,
    /// user agent and the campaign; no cookie.
    Hash,
}

impl IdSource {
    /// Every source, in label order.
    pub const ALL: [IdSource; 5] = [
        IdSource::Body,
        IdSource::Url,
        IdSource::Cookie,
        IdSource::Minted,
        IdSource::Hash,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            IdSource::Body => "body",
            IdSource::Url => "url",
            IdSource::Cookie => "cookie",
            IdSource::Minted => "minted",
            IdSource::Hash => "hash",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdSourceLabel {
    id_source: &'static str,
}

/// Counted impressions of a worker's turn, by [`IdSource`]; published with
/// [`Metrics::impressions_counted`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountedBySource([u64; IdSource::ALL.len()]);

impl CountedBySource {
    /// Adds `n` counted impressions from `source`.
    pub fn add(&mut self, source: IdSource, n: u64) {
        self.0[source as usize] += n;
    }

    /// The count for `source`.
    pub fn get(&self, source: IdSource) -> u64 {
        self.0[source as usize]
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// Statuses the service answers; any other is labelled `other`.
const STATUSES: &[(u16, &str)] = &[
    (200, "200"),
    (201, "201"),
    (202, "202"),
    (204, "204"),
    (303, "303"),
    (304, "304"),
    (400, "400"),
    (401, "401"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (413, "413"),
    (415, "415"),
    (429, "429"),
    (431, "431"),
    (500, "500"),
    (503, "503"),
];

/// Batch size bucket bounds: 1 to 16,384, by fours.
const BATCH_BOUNDS: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0];

/// The ingest counters since the process started (see
/// [`Metrics::ingest_counts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestCounts {
    /// `impressions_received_total`.
    pub received: u64,
    /// `impressions_counted_total`, summed over `id_source`.
    pub counted: u64,
    /// `impressions_duplicate_total`.
    pub duplicates: u64,
    /// `impressions_rejected_total`, by reason (every reason, 0 included).
    pub rejected: [(RejectReason, u64); RejectReason::ALL.len()],
    /// `store_apply_failures_total`.
    pub apply_failures: u64,
}

/// The service's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    /// Striped: incremented by every track request, on every core.
    received: Arc<StripedCounter>,
    rejected: Family<ReasonLabel, Counter>,
    /// The children of `impressions_counted_total{id_source}`, indexed by
    /// [`IdSource`], so a worker's increment is one atomic add rather than
    /// a lookup in the family's map.
    counted: [Counter; IdSource::ALL.len()],
    counted_family: Family<IdSourceLabel, Counter>,
    duplicates: Counter,
    apply_failures: Counter,
    batch_size: Arc<StripedHistogram>,
    queue_depth: Gauge,
    live_keys: Gauge,
    campaigns: Gauge,
    redis: RedisMetrics,
    state_bytes: Family<KindLabel, Gauge>,
    memory_limit: Gauge,
    requests: Arc<RequestLatency>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            received: Arc::new(StripedCounter::default()),
            rejected: Family::default(),
            counted: Default::default(),
            counted_family: Family::default(),
            duplicates: Counter::default(),
            apply_failures: Counter::default(),
            batch_size: Arc::new(StripedHistogram::new(BATCH_BOUNDS)),
            queue_depth: Gauge::default(),
            live_keys: Gauge::default(),
            campaigns: Gauge::default(),
            redis: RedisMetrics::default(),
            state_bytes: Family::default(),
            memory_limit: Gauge::default(),
            requests: Arc::new(RequestLatency::new(Labels {
                routes: paths::ROUTES,
                methods: METHODS,
                statuses: STATUSES,
            })),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(CounterCollector::new(
            "impressions_received",
            "Impressions submitted for tracking, valid or not",
            Arc::clone(&m.received),
        )));
        registry.register(
            "impressions_rejected",
            "Impressions refused before counting, by reason",
            m.rejected.clone(),
        );
        // Every label exists from the start (at 0), so a dashboard's rate
        // of `minted` is 0 rather than missing before the first one.
        let counted = IdSource::ALL.map(|source| {
            m.counted_family
                .get_or_create(&IdSourceLabel {
                    id_source: source.as_str(),
                })
                .clone()
        });
        registry.register(
            "impressions_counted",
            "Impressions counted, by where their user id came from",
            m.counted_family.clone(),
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
        registry.register_collector(Box::new(HistogramCollector::new(
            "ingest_batch_size",
            "Impressions per batch applied by a worker",
            Arc::clone(&m.batch_size),
        )));
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
        m.redis.register(&mut registry);
        registry.register(
            "memory_state_bytes",
            "Bytes the state holds by kind, as the service accounts them against MEMORY_LIMIT",
            m.state_bytes.clone(),
        );
        registry.register(
            "memory_limit_bytes",
            "MEMORY_LIMIT in bytes (0: no limit)",
            m.memory_limit.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&m.requests)));
        Metrics {
            registry,
            counted,
            ..m
        }
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

    /// A worker applied a batch with these outcomes. Counted impressions
    /// are published per turn with [`Metrics::impressions_counted`], which
    /// knows each job's id source.
    pub fn batch_applied(&self, outcomes: &[TrackOutcome]) {
        let mut duplicates = 0;
        for outcome in outcomes {
            match outcome {
                TrackOutcome::Counted => {}
                TrackOutcome::Duplicate => duplicates += 1,
                TrackOutcome::Rejected(r) => self.impression_rejected(match r {
                    impression_core::Rejection::UnknownCampaign => RejectReason::UnknownCampaign,
                    impression_core::Rejection::NotStarted => RejectReason::NotStarted,
                }),
            }
        }
        self.duplicates.inc_by(duplicates);
        self.batch_size.observe(outcomes.len() as f64);
    }

    /// A worker's turn counted these impressions.
    pub fn impressions_counted(&self, by_source: &CountedBySource) {
        for (counter, &n) in self.counted.iter().zip(&by_source.0) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
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

    /// The ingest counters as they stand: what `GET /api/v1/ingest` shows,
    /// the same numbers `/metrics` exposes.
    pub fn ingest_counts(&self) -> IngestCounts {
        let rejected = RejectReason::ALL.map(|reason| {
            let n = self
                .rejected
                .get(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .map_or(0, |c| c.get());
            (reason, n)
        });
        IngestCounts {
            received: self.received.get(),
            counted: self.counted.iter().map(Counter::get).sum(),
            duplicates: self.duplicates.get(),
            rejected,
            apply_failures: self.apply_failures.get(),
        }
    }

    /// The Prometheus text exposition, with gauges read now.
    pub fn render(
        &self,
        queue_depth: usize,
        store: StoreGauges,
        state: StateBytes,
        memory_limit: Option<usize>,
    ) -> String {
        self.queue_depth.set(saturating_i64(queue_depth as u64));
        self.live_keys.set(saturating_i64(store.live_dedup_keys));
        self.campaigns.set(saturating_i64(store.campaigns));
        if let Some(backend) = store.backend {
            self.redis.set(backend);
        }
        for (kind, bytes) in state.by_kind() {
            self.state_bytes
                .get_or_create(&KindLabel { kind })
                .set(saturating_i64(bytes as u64));
        }
        self.memory_limit
            .set(saturating_i64(memory_limit.unwrap_or(0) as u64));
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The route a request matched, if any, as a label index and its
    /// static name (`unmatched` when no route serves the path).
    pub fn request_route(&self, route: Option<&Route>) -> (usize, &'static str) {
        let index = self.requests.route_index(route);
        (index, self.requests.route_name(index))
    }

    /// One request on route index `route` finished with `status` after
    /// `seconds`.
    pub fn observe_request(&self, route: usize, method: &str, status: u16, seconds: f64) {
        let method = self.requests.method_index(method);
        self.requests.observe(route, method, status, seconds);
    }
}

/// The Redis backend's connection state (zero with other backends).
#[derive(Default)]
struct RedisMetrics {
    masters_up: Gauge,
    reconnects: Counter,
    failovers: Counter,
    ack_refusals: Counter,
}

impl RedisMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "redis_masters_up",
            "Redis masters that answered the last check (Redis backend)",
            self.masters_up.clone(),
        );
        registry.register(
            "redis_reconnects",
            "Redis connections replaced because they were stuck or the master moved",
            self.reconnects.clone(),
        );
        registry.register(
            "redis_failovers",
            "Changes of Redis master seen: failovers, cluster slots moved",
            self.failovers.clone(),
        );
        registry.register(
            "redis_replica_ack_refusals",
            "Chunks answered 503 because fewer than REDIS_MIN_REPLICAS_ACK replicas acknowledged them",
            self.ack_refusals.clone(),
        );
    }

    /// Sets the counters to the store's totals (they only grow).
    fn set(&self, backend: BackendGauges) {
        self.masters_up.set(saturating_i64(backend.masters_up));
        for (counter, total) in [
            (&self.reconnects, backend.reconnects),
            (&self.failovers, backend.failovers),
            (&self.ack_refusals, backend.replica_ack_refusals),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_impressions_are_labelled_by_id_source() {
        let m = Metrics::new();
        let text = m.render(0, StoreGauges::default(), StateBytes::default(), None);
        for source in IdSource::ALL {
            let line = format!(
                "impressions_counted_total{{id_source=\"{}\"}} 0",
                source.as_str()
            );
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        let mut tally = CountedBySource::default();
        tally.add(IdSource::Minted, 2);
        tally.add(IdSource::Body, 5);
        tally.add(IdSource::Minted, 1);
        assert_eq!(tally.get(IdSource::Minted), 3);
        m.impressions_counted(&tally);
        m.batch_applied(&[TrackOutcome::Counted, TrackOutcome::Duplicate]);
        let text = m.render(0, StoreGauges::default(), StateBytes::default(), None);
        for line in [
            r#"impressions_counted_total{id_source="minted"} 3"#,
            r#"impressions_counted_total{id_source="body"} 5"#,
            r#"impressions_counted_total{id_source="hash"} 0"#,
            "impressions_duplicate_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }
}
