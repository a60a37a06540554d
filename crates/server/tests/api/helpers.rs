//! Spawning the real application on a free port, and talking to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use impression_core::{
    AdBreakdown, Campaign, CampaignId, Clock, Impression, ManualClock, Metric, Resolution, Stats,
    Timestamp, TrackOutcome,
};
use impression_counter::config::Config;
use impression_counter::startup::Application;
use impression_counter::storage::memory::MemoryStore;
use impression_counter::storage::redis::RedisStore;
use impression_counter::storage::{self, Store, StoreError, StoreGauges};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::backends::{Backend, Guard};

/// 2025-01-01T00:00:00Z: where every test clock starts.
pub const T0: Timestamp = Timestamp::from_secs(1_735_689_600);

/// A running application and a client for it.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    _guard: Option<Guard>,
}

/// Flags for the test configuration; port 0 and loopback are always set.
pub fn config(flags: &[&str]) -> Config {
    let base = [
        "impression-counter",
        "--server-port",
        "0",
        "--bind-addr",
        "127.0.0.1",
    ];
    Config::try_parse_from(base.iter().chain(flags)).expect("valid test configuration")
}

/// The application with default settings, the embedded store and a manual
/// clock at [`T0`].
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// The application with extra flags (e.g. `["--ttl", "2s"]`), in memory.
pub async fn spawn_app_with(flags: &[&str]) -> TestApp {
    spawn(Backend::Memory, flags).await
}

/// The application on a backend, with extra flags.
pub async fn spawn(backend: Backend, flags: &[&str]) -> TestApp {
    let (backend_flags, guard) = backend.prepare();
    let mut all: Vec<&str> = backend_flags.iter().map(String::as_str).collect();
    all.extend_from_slice(flags);
    let config = config(&all);
    let clock = Arc::new(ManualClock::new(T0));
    let store = storage::open(&config.storage(), Arc::clone(&clock) as Arc<dyn Clock>)
        .await
        .expect("the backend opens");
    spawn_app_on_clock(config, store, clock, Some(guard)).await
}

/// Opens the Redis store a configuration with `--storage redis` names.
pub async fn open_redis(config: &Config) -> Result<RedisStore, StoreError> {
    let settings = config.storage();
    let storage::Backend::Redis(options) = &settings.backend else {
        panic!("the test configuration does not name the Redis backend");
    };
    RedisStore::open(options, &settings.engine).await
}

/// The application around a given store.
pub async fn spawn_app_on(config: Config, store: Arc<dyn Store>) -> TestApp {
    spawn_app_on_clock(config, store, Arc::new(ManualClock::new(T0)), None).await
}

async fn spawn_app_on_clock(
    config: Config,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    guard: Option<Guard>,
) -> TestApp {
    let app = Application::build_with(&config, store, Arc::clone(&clock) as Arc<dyn Clock>)
        .await
        .expect("the application builds");
    let addr: SocketAddr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        clock,
        stop: Some(stop),
        server: Some(server),
        _guard: guard,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Creates a campaign starting now; returns its id.
    pub async fn create_campaign(&self, name: &str) -> String {
        let response = self
            .client
            .post(self.url("/api/v1/campaigns"))
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("JSON body");
        body["id"].as_str().expect("an id").to_owned()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// `GET path` with an `Accept` header.
    pub async fn client_get_with_accept(&self, path: &str, accept: &str) -> Response {
        self.client
            .get(self.url(path))
            .header("accept", accept)
            .send()
            .await
            .expect("request sent")
    }

    /// `POST /api/v1/impressions` (202 expected by callers that care).
    pub async fn track(&self, campaign: &str, user: &str, ad: &str) -> Response {
        self.post_json(
            "/api/v1/impressions",
            &json!({ "campaign_id": campaign, "user_id": user, "ad_id": ad }),
        )
        .await
    }

    /// `POST /api/v1/impressions?wait=true`; returns `counted` or `duplicate`.
    pub async fn track_and_wait(&self, campaign: &str, user: &str, ad: &str) -> String {
        let response = self
            .post_json(
                "/api/v1/impressions?wait=true",
                &json!({ "campaign_id": campaign, "user_id": user, "ad_id": ad }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("JSON body");
        body["status"].as_str().expect("a status").to_owned()
    }

    /// The stats body, asserting a 200.
    pub async fn stats(&self, campaign: &str) -> Value {
        let response = self
            .get(&format!("/api/v1/campaigns/{campaign}/stats"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("JSON body")
    }

    /// `(last_hour, last_day, total)`.
    pub async fn counts(&self, campaign: &str) -> (u64, u64, u64) {
        let s = self.stats(campaign).await;
        let n = |k: &str| s[k].as_u64().expect("a count");
        (n("last_hour"), n("last_day"), n("total"))
    }

    /// The metrics text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.expect("text body")
    }

    /// Sends the stop signal without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits (bounded) for the server task to end after `begin_shutdown`.
    pub async fn wait_stopped(&mut self) {
        assert!(
            self.stops_within(Duration::from_secs(30)).await,
            "shutdown finishes within 30 s"
        );
    }

    /// Whether the server task ends within `limit` (it keeps running if not).
    pub async fn stops_within(&mut self, limit: Duration) -> bool {
        let Some(server) = self.server.as_mut() else {
            return true;
        };
        match tokio::time::timeout(limit, server).await {
            Err(_) => false,
            Ok(result) => {
                self.server = None;
                result
                    .expect("server task did not panic")
                    .expect("server returned Ok");
                true
            }
        }
    }
}

/// Asserts the error shape: JSON content type, `{error, code}` with the
/// status repeated. Returns the message.
pub async fn assert_error(response: Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/json", "error content type");
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(
        body["code"].as_u64(),
        Some(u64::from(status.as_u16())),
        "{body}"
    );
    let message = body["error"].as_str().expect("an error message").to_owned();
    assert!(!message.is_empty());
    assert_eq!(
        body.as_object().map(serde_json::Map::len),
        Some(2),
        "only error and code: {body}"
    );
    message
}

/// A real [`MemoryStore`] whose batches wait until the gate is opened: lets a
/// test fill the queue, or shut down with impressions still queued.
pub struct GatedStore {
    pub inner: MemoryStore,
    open: watch::Receiver<bool>,
}

impl GatedStore {
    pub fn new(config: &Config) -> (Arc<Self>, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        (
            Arc::new(GatedStore {
                inner: MemoryStore::new(config.engine()),
                open: rx,
            }),
            tx,
        )
    }
}

#[async_trait]
impl Store for GatedStore {
    async fn create_campaign(&self, c: Campaign) -> Result<Arc<Campaign>, StoreError> {
        self.inner.create_campaign(c).await
    }
    async fn campaign(&self, id: CampaignId) -> Result<Option<Arc<Campaign>>, StoreError> {
        self.inner.campaign(id).await
    }
    async fn list_campaigns(
        &self,
        after: Option<CampaignId>,
        limit: usize,
    ) -> Result<Vec<Arc<Campaign>>, StoreError> {
        self.inner.list_campaigns(after, limit).await
    }
    async fn apply(
        &self,
        batch: &[Impression],
        now: Timestamp,
    ) -> Result<Vec<TrackOutcome>, StoreError> {
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
        self.inner.apply(batch, now).await
    }
    async fn stats(&self, id: CampaignId, now: Timestamp) -> Result<Option<Stats>, StoreError> {
        self.inner.stats(id, now).await
    }
    async fn ad_stats(
        &self,
        id: CampaignId,
        now: Timestamp,
    ) -> Result<Option<AdBreakdown>, StoreError> {
        self.inner.ad_stats(id, now).await
    }
    async fn timeseries(
        &self,
        id: CampaignId,
        resolution: Resolution,
        metric: Metric,
        first: u64,
        count: usize,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        self.inner
            .timeseries(id, resolution, metric, first, count)
            .await
    }
    async fn range_counts(
        &self,
        id: CampaignId,
        metric: Metric,
        ranges: &[(u64, u64)],
        now: Timestamp,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        self.inner.range_counts(id, metric, ranges, now).await
    }
    async fn check_ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn maintain(&self, now: Timestamp) {
        self.inner.maintain(now).await;
    }
    fn acknowledges_after_apply(&self) -> bool {
        false
    }
    fn gauges(&self) -> StoreGauges {
        self.inner.gauges()
    }
}

/// `impressions_counted_total` summed over its `id_source` label: every
/// impression counted, whatever its id came from.
pub fn counted_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("impressions_counted_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// One sample of the metrics text (`name{labels} value`), if present.
pub fn metric(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `check` until it returns true, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        poll.tick().await;
    }
}
