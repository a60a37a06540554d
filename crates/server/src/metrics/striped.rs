//! Histograms for hot paths: no lock, no shared cache line per observation.
//!
//! prometheus-client's `Histogram` takes a mutex on every observation, and
//! its `Family` a read lock: on the single-impression path every request
//! would meet every other on the same lock word, across cores. A
//! [`StripedHistogram`] keeps 16 copies of its counters, each on its own
//! cache lines; a thread always adds to "its" stripe (chosen once, round
//! robin), so observations from different threads never touch the same
//! line. A scrape sums the stripes. [`StripedCounter`] does the same for a
//! counter incremented on every request. [`RequestLatency`] finds a request's
//! histogram by index (route, method, status), with no map and no lock.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::paths::Route;

const STRIPES: usize = 16;
/// Most buckets (+Inf included).
const MAX_BUCKETS: usize = 24;

#[repr(align(128))]
struct Stripe {
    buckets: [AtomicU64; MAX_BUCKETS],
    count: AtomicU64,
    /// Sum of observations, in units of 1e-9 (nanoseconds for latencies).
    sum_nanos: AtomicU64,
}

impl Default for Stripe {
    fn default() -> Self {
        Stripe {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

/// A histogram whose observations from different threads never contend.
pub struct StripedHistogram {
    bounds: &'static [f64],
    stripes: Box<[Stripe]>,
}

/// This thread's stripe: assigned round robin the first time it observes.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    INDEX.with(|i| *i)
}

impl StripedHistogram {
    /// A histogram with these upper bounds (ascending; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.len() < MAX_BUCKETS, "too many buckets");
        StripedHistogram {
            bounds,
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let stripe = &self.stripes[stripe_index()];
        let bucket = self.bounds.partition_point(|&b| b < value);
        stripe.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        stripe.count.fetch_add(1, Ordering::Relaxed);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "clamped to 0..=u64::MAX first; a float-to-int `as` saturates and maps NaN to 0"
        )]
        let nanos = (value * 1e9).clamp(0.0, u64::MAX as f64) as u64;
        stripe.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// (sum, count, per-bucket counts with their upper bounds, +Inf last).
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .map(|b| (b, 0))
            .collect();
        let (mut count, mut sum_nanos) = (0u64, 0u64);
        for stripe in &self.stripes {
            for (i, bucket) in buckets.iter_mut().enumerate() {
                bucket.1 += stripe.buckets[i].load(Ordering::Relaxed);
            }
            count += stripe.count.load(Ordering::Relaxed);
            sum_nanos = sum_nanos.wrapping_add(stripe.sum_nanos.load(Ordering::Relaxed));
        }
        (sum_nanos as f64 / 1e9, count, buckets)
    }
}

/// A counter whose increments from different threads never contend: one
/// cell per stripe, on its own cache lines; a scrape sums them.
pub struct StripedCounter {
    cells: Box<[Cell]>,
}

#[repr(align(128))]
#[derive(Default)]
struct Cell(AtomicU64);

impl Default for StripedCounter {
    fn default() -> Self {
        StripedCounter {
            cells: (0..STRIPES).map(|_| Cell::default()).collect(),
        }
    }
}

impl StripedCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.cells[stripe_index()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The total so far.
    pub fn get(&self) -> u64 {
        self.cells
            .iter()
            .fold(0u64, |sum, c| sum.wrapping_add(c.0.load(Ordering::Relaxed)))
    }
}

/// Exports one striped counter as a Prometheus counter (`<name>_total`).
pub struct CounterCollector {
    name: &'static str,
    help: &'static str,
    counter: std::sync::Arc<StripedCounter>,
}

impl CounterCollector {
    /// A collector for `counter`.
    pub fn new(
        name: &'static str,
        help: &'static str,
        counter: std::sync::Arc<StripedCounter>,
    ) -> Self {
        CounterCollector {
            name,
            help,
            counter,
        }
    }
}

impl std::fmt::Debug for CounterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterCollector")
            .field("name", &self.name)
            .finish()
    }
}

impl Collector for CounterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Counter)?;
        metric.encode_counter::<NoLabelSet, _, u64>(&self.counter.get(), None)
    }
}

/// Exports one striped histogram as a Prometheus histogram.
pub struct HistogramCollector {
    name: &'static str,
    help: &'static str,
    histogram: std::sync::Arc<StripedHistogram>,
}

impl HistogramCollector {
    /// A collector for `histogram`.
    pub fn new(
        name: &'static str,
        help: &'static str,
        histogram: std::sync::Arc<StripedHistogram>,
    ) -> Self {
        HistogramCollector {
            name,
            help,
            histogram,
        }
    }
}

impl std::fmt::Debug for HistogramCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistogramCollector")
            .field("name", &self.name)
            .finish()
    }
}

impl Collector for HistogramCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.histogram.snapshot();
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Histogram)?;
        metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Route templates, methods and statuses a request is labelled with.
pub struct Labels {
    /// The routes; a request matching none is `unmatched` (`other` is kept
    /// for a route missing from the list, which the table rules out).
    pub routes: &'static [Route],
    /// Methods; others are `OTHER`.
    pub methods: &'static [&'static str],
    /// Statuses with their label text; others are labelled `other`.
    pub statuses: &'static [(u16, &'static str)],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: &'static str,
}

/// Request latency by method, route template and status: one striped
/// histogram per combination seen, found by index.
pub struct RequestLatency {
    labels: Labels,
    slots: Box<[OnceLock<Box<StripedHistogram>>]>,
}

/// Latency bucket bounds: 50 µs to ~3.3 s, doubling.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_2, 0.000_4, 0.000_8, 0.001_6, 0.003_2, 0.006_4, 0.012_8, 0.025_6,
    0.051_2, 0.102_4, 0.204_8, 0.409_6, 0.819_2, 1.638_4, 3.276_8,
];

impl RequestLatency {
    /// Empty; histograms are created on first use.
    pub fn new(labels: Labels) -> Self {
        let routes = labels.routes.len() + 2;
        let methods = labels.methods.len() + 1;
        let statuses = labels.statuses.len() + 1;
        RequestLatency {
            labels,
            slots: (0..routes * methods * statuses)
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The route's index: its own, `other`, or `unmatched` (`None`).
    pub fn route_index(&self, route: Option<&Route>) -> usize {
        match route {
            Some(route) => self
                .labels
                .routes
                .iter()
                .position(|r| r.path == route.path)
                .unwrap_or(self.labels.routes.len()),
            None => self.labels.routes.len() + 1,
        }
    }

    /// The method's index (`OTHER` last).
    pub fn method_index(&self, method: &str) -> usize {
        self.labels
            .methods
            .iter()
            .position(|m| *m == method)
            .unwrap_or(self.labels.methods.len())
    }

    /// Records one request.
    pub fn observe(&self, route: usize, method: usize, status: u16, seconds: f64) {
        let statuses = self.labels.statuses.len() + 1;
        let methods = self.labels.methods.len() + 1;
        let status = self
            .labels
            .statuses
            .iter()
            .position(|s| s.0 == status)
            .unwrap_or(statuses - 1);
        let slot = (route * methods + method) * statuses + status;
        if let Some(cell) = self.slots.get(slot) {
            cell.get_or_init(|| Box::new(StripedHistogram::new(LATENCY_BOUNDS)))
                .observe(seconds);
        }
    }

    /// The label of route index `i`.
    pub fn route_name(&self, i: usize) -> &'static str {
        let fallback = if i == self.labels.routes.len() {
            "other"
        } else {
            "unmatched"
        };
        self.labels.routes.get(i).map_or(fallback, |r| r.path)
    }
}

impl std::fmt::Debug for RequestLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLatency").finish_non_exhaustive()
    }
}

impl Collector for RequestLatency {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let statuses = self.labels.statuses.len() + 1;
        let methods = self.labels.methods.len() + 1;
        let mut family = encoder.encode_descriptor(
            "http_request_duration_seconds",
            "HTTP request latency by route template and status",
            None,
            MetricType::Histogram,
        )?;
        for (i, cell) in self.slots.iter().enumerate() {
            let Some(histogram) = cell.get() else {
                continue;
            };
            let (sum, count, buckets) = histogram.snapshot();
            let labels = RequestLabels {
                route: self.route_name(i / statuses / methods),
                method: self
                    .labels
                    .methods
                    .get(i / statuses % methods)
                    .copied()
                    .unwrap_or("OTHER"),
                status: self
                    .labels
                    .statuses
                    .get(i % statuses)
                    .map_or("other", |s| s.1),
            };
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_from_many_threads_all_count() {
        let c = std::sync::Arc::new(StripedCounter::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || (0..1000).for_each(|_| c.inc()))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 8000);
    }

    #[test]
    fn observations_from_many_threads_all_count() {
        let h = std::sync::Arc::new(StripedHistogram::new(&[1.0, 2.0]));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let h = std::sync::Arc::clone(&h);
                std::thread::spawn(move || {
                    for v in [0.5, 1.5, 3.0] {
                        for _ in 0..1000 {
                            h.observe(v);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 24_000);
        assert_eq!(
            buckets,
            vec![(1.0, 8000), (2.0, 8000), (f64::INFINITY, 8000)]
        );
        assert!((sum - 8000.0 * 5.0).abs() < 1e-3, "{sum}");
    }
}
