//! Configuration: environment variables, each also a command-line flag,
//! turned into the settings of each component.
//!
//! Names and defaults of the original service are kept (`SERVER_PORT`, `TTL`,
//! `IMPRESSIONS_QUEUE_SIZE`, `IMPRESSION_WORKERS`). Every value is validated
//! while parsing, so an invalid one stops the process with a clear message and
//! a non-zero exit before anything binds. `impression-counter --help` lists
//! them all with their defaults.
//!
//! This is the only module that knows flags and environment variables.
//! Each component takes a small settings type of its own
//! ([`StorageSettings`], [`IngestSettings`], [`ApiSettings`],
//! [`EdgeSettings`], [`ConnectionLimits`], [`KeySources`]), built here by
//! [`Config`]'s methods, so no component depends on this module.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use impression_core::{DedupScope, EngineConfig};
use ipnet::IpNet;

use crate::auth::KeySources;
use crate::budget::{self, MemoryBudget, MemorySource, parse_size};
use crate::bulk::Priority;
use crate::client_addr::ClientAddrSettings;
use crate::edge::EdgeSettings;
use crate::ingest::{INGEST_GRACE, IngestSettings};
use crate::pixel_id::{PixelIdMode, PixelSettings};
use crate::routes::ApiSettings;
use crate::routes::stream::StreamSettings;
pub use crate::secret::Secret;
use crate::server::ConnectionLimits;
use crate::storage::disk::{DiskOptions, FsyncPolicy};
use crate::storage::redis::RedisOptions;
use crate::storage::{Backend, StorageSettings};
use crate::telemetry::LogFormat;
use crate::timefmt::parse_duration;

/// Everything the service can be told at start-up.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "impression-counter",
    version,
    about = "Counts ad impressions per campaign in real time, once per user per TTL, \
             with exact last-hour and last-day windows."
)]
pub struct Config {
    /// Port the HTTP server listens on (0 picks a free one).
    #[arg(long, env = "SERVER_PORT", default_value_t = 8080)]
    pub server_port: u16,

    /// Address the HTTP server binds to.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0")]
    pub bind_addr: IpAddr,

    /// Duplicate-detection window: an impression of the same (campaign, ad,
    /// user) within this span of the last counted one is a duplicate.
    /// Duration like `3600s`, `90m`, `1h`, `2s`; a bare number is seconds.
    #[arg(long, env = "TTL", default_value = "3600s", value_parser = parse_ttl)]
    pub ttl: Duration,

    /// Capacity of the queue between the HTTP handlers and the workers.
    #[arg(
        long,
        env = "IMPRESSIONS_QUEUE_SIZE",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..=10_000_000)
    )]
    pub impressions_queue_size: u32,

    /// Workers draining the queue in batches [default: number of CPU cores].
    #[arg(
        long,
        env = "IMPRESSION_WORKERS",
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    pub impression_workers: Option<u32>,

    /// Scheduling priority of the threads that parse large batch bodies:
    /// `idle` (Linux's `SCHED_IDLE`: stats reads never wait for them, but on a
    /// host kept busy by other processes batch ingest gets only what those
    /// leave) or a nice value from 0 (normal) to 19.
    #[arg(
        long,
        env = "BATCH_PARSE_PRIORITY",
        default_value = "idle",
        value_parser = parse_priority
    )]
    pub batch_parse_priority: Priority,

    /// What counts as the same impression: `ad` = (campaign, ad, user),
    /// `campaign` = (campaign, user) across all of its ads.
    #[arg(long, env = "DEDUP_SCOPE", value_enum, default_value_t = ScopeArg::Ad)]
    pub dedup_scope: ScopeArg,

    /// How long a track request waits for room when the queue is full
    /// before it is answered 503 with `Retry-After`; at most 24h.
    #[arg(long, env = "ENQUEUE_TIMEOUT", default_value = "100ms", value_parser = parse_bounded_duration)]
    pub enqueue_timeout: Duration,

    /// How far ahead of the server's clock an event `timestamp` may be
    /// (clock skew of clients); at most 24h.
    #[arg(long, env = "MAX_CLOCK_SKEW", default_value = "5s", value_parser = parse_bounded_duration)]
    pub max_clock_skew: Duration,

    /// How old an event `timestamp` may be when it arrives (late events from
    /// offline clients); at most 24h. Dedup keys are kept this much longer
    /// than the TTL so a late event still finds its key.
    #[arg(long, env = "MAX_EVENT_AGE", default_value = "10m", value_parser = parse_event_age)]
    pub max_event_age: Duration,

    /// Distinct ads given their own counters per campaign (for
    /// `stats?by=ad`); impressions of further ads are counted as `other_ads`.
    #[arg(
        long,
        env = "MAX_ADS_PER_CAMPAIGN",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub max_ads_per_campaign: u32,

    /// Hourly history kept per campaign for `timeseries?resolution=hour`;
    /// at least 25h.
    #[arg(long, env = "HISTORY", default_value = "7d", value_parser = parse_history)]
    pub history: Duration,

    /// How far back daily reports (`timeseries?resolution=day`) reach:
    /// quarter-hour counts are kept this long per campaign; 1d ..= 3660d.
    #[arg(
        long,
        env = "DAILY_HISTORY",
        default_value = "400d",
        value_parser = parse_daily_history
    )]
    pub daily_history: Duration,

    /// Most impressions in one batch request.
    #[arg(
        long,
        env = "BATCH_MAX_ITEMS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub batch_max_items: u32,

    /// Largest batch request body, in bytes.
    #[arg(
        long,
        env = "BATCH_MAX_BYTES",
        default_value_t = 8 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024)
    )]
    pub batch_max_bytes: u64,

    /// Cookie the tracking pixel reads the user id from when the URL has no
    /// `user_id`.
    #[arg(long, env = "PIXEL_COOKIE", default_value = "uid", value_parser = parse_cookie_name)]
    pub pixel_cookie: String,

    /// The pixel's other settings: how it identifies browsers (`PIXEL_ID`,
    /// `PIXEL_COOKIE_*`, `PIXEL_HASH_SECRET`).
    #[command(flatten)]
    pub pixel: PixelArgs,

    /// Who the client is behind proxies (`TRUSTED_PROXIES`).
    #[command(flatten)]
    pub client_addr: ClientAddrArgs,

    /// Where state lives: `memory` (lost on exit), `disk` (durable log and
    /// snapshots in `DATA_DIR`) or `redis` (shared by many nodes).
    #[arg(long, env = "STORAGE", value_enum, default_value_t = StorageKind::Disk)]
    pub storage: StorageKind,

    /// Shorthand for `STORAGE=memory`.
    #[arg(long)]
    pub in_memory: bool,

    /// Directory of the durable state (`STORAGE=disk`).
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// When the durable log is fsynced: `always` (before every
    /// acknowledgement, with group commit), `everysec`, or `no` (left to the
    /// OS).
    #[arg(long, env = "FSYNC", value_enum, default_value_t = FsyncArg::Everysec)]
    pub fsync: FsyncArg,

    /// Size at which a log segment is closed (`STORAGE=disk`); compaction
    /// folds closed segments into a snapshot once they outgrow it.
    #[arg(
        long,
        env = "LOG_SEGMENT_BYTES",
        default_value_t = 64 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(4096..)
    )]
    pub log_segment_bytes: u64,

    /// Redis URL for `STORAGE=redis` (`redis://[:password@]host:port[/db]`,
    /// `rediss://` for TLS).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Redis Cluster seed nodes for `STORAGE=redis`, comma-separated
    /// (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`); takes precedence over
    /// `REDIS_URL`.
    #[arg(long, env = "REDIS_CLUSTER_NODES", value_delimiter = ',')]
    pub redis_cluster_nodes: Vec<String>,

    /// Prefix of every Redis key this service writes.
    #[arg(long, env = "REDIS_PREFIX", default_value = "ic:")]
    pub redis_prefix: String,

    /// Redis Sentinel addresses for `STORAGE=redis`, comma-separated
    /// (`10.0.0.1:26379,10.0.0.2:26379`, or `redis://:password@host:26379`
    /// when the sentinels need a password): the node writes to the master
    /// they name `REDIS_SENTINEL_MASTER` and follows it when they promote
    /// another. `REDIS_URL`, if set, gives the scheme, credentials and
    /// database for the master (its host and port are not used).
    #[arg(long, env = "REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,

    /// The master name the sentinels of `REDIS_SENTINELS` monitor.
    #[arg(long, env = "REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// Replicas that must hold a chunk of impressions (Redis `WAIT`) before
    /// it is acknowledged; on a cluster, replicas of every master the chunk
    /// wrote to. Fewer within `REDIS_REPLICA_ACK_TIMEOUT`: 503. 0 (the
    /// default) acknowledges once the master has it, so a master crash may
    /// lose what it had not replicated yet.
    #[arg(long, env = "REDIS_MIN_REPLICAS_ACK", default_value_t = 0)]
    pub redis_min_replicas_ack: u32,

    /// How long to wait for `REDIS_MIN_REPLICAS_ACK` replicas (at most 2s).
    #[arg(long, env = "REDIS_REPLICA_ACK_TIMEOUT", default_value = "1s", value_parser = parse_replica_ack_timeout)]
    pub redis_replica_ack_timeout: Duration,

    /// API keys for the management endpoints (campaigns, stats, timeseries,
    /// metrics), comma-separated; clients send `Authorization: Bearer <key>`.
    /// Unset (and no `API_KEYS_FILE`): those endpoints are open.
    #[arg(long, env = "API_KEYS", hide_env_values = true)]
    pub api_keys: Option<Secret>,

    /// File with one API key per line (blank lines and `#` comments
    /// ignored); re-read on SIGHUP, so keys rotate without a restart.
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Origins allowed to call the tracking endpoints from browsers (CORS),
    /// comma-separated, or `*` for any.
    #[arg(
        long,
        env = "CORS_ALLOWED_ORIGINS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub cors_allowed_origins: Vec<String>,

    /// Largest request body, in bytes (batches: `BATCH_MAX_BYTES`).
    #[arg(
        long,
        env = "MAX_BODY_BYTES",
        default_value_t = 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024)
    )]
    pub max_body_bytes: u64,

    /// Largest total size of a request's headers, in bytes (431 beyond).
    #[arg(
        long,
        env = "MAX_HEADER_BYTES",
        default_value_t = 32 * 1024,
        value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024)
    )]
    pub max_header_bytes: u64,

    /// Longest user or ad id, in bytes (at most 512).
    #[arg(
        long,
        env = "MAX_ID_BYTES",
        default_value_t = 512,
        value_parser = clap::value_parser!(u16).range(1..=512)
    )]
    pub max_id_bytes: u16,

    /// Most campaigns this service holds; creating more is refused (409).
    #[arg(
        long,
        env = "MAX_CAMPAIGNS",
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_campaigns: u64,

    /// The memory the state may hold (dedup keys, counters, sketches,
    /// campaigns, queued work), e.g. `4GiB`, `512MiB`; `0` for no limit. At
    /// it, impressions that would add state get 503 until expiry frees room.
    /// [default: half of the memory the process may use: its cgroup limit,
    /// else physical memory]
    #[arg(long, env = "MEMORY_LIMIT", value_parser = parse_size)]
    pub memory_limit: Option<u64>,

    /// Most impressions per second per client address on the tracking
    /// endpoints (the client through `TRUSTED_PROXIES`); beyond it 429 with
    /// `Retry-After`. Unset: no limit.
    #[arg(
        long,
        env = "RATE_LIMIT_PER_CLIENT",
        value_parser = clap::value_parser!(u32).range(1..=10_000_000)
    )]
    pub rate_limit_per_client: Option<u32>,

    /// Most live stats streams (`/stats/stream`, the dashboard's live
    /// pages) open at once; beyond it a new stream is refused with 503.
    #[arg(
        long,
        env = "MAX_STREAMS",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub max_streams: u32,

    /// Most live duplicate-detection keys (embedded and disk stores); at the
    /// limit, impressions that would add a key are refused with 503 rather
    /// than let memory grow until the process is killed. Unset: unlimited.
    #[arg(long, env = "MAX_DEDUP_KEYS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_dedup_keys: Option<u64>,

    /// Most open client connections; beyond it a connection gets one 503
    /// answer and is closed.
    #[arg(
        long,
        env = "MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,

    /// Most API requests being handled at once; beyond it requests are shed
    /// with 503 and `Retry-After` before they use memory.
    #[arg(
        long,
        env = "MAX_IN_FLIGHT",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_in_flight: u32,

    /// How long a client may take to send a request's headers; also how long
    /// an idle keep-alive connection is kept. 1ms ..= 24h.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_read_timeout)]
    pub header_read_timeout: Duration,

    /// How long a client may take to send a request's body (408 beyond).
    /// 1ms ..= 24h.
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_read_timeout)]
    pub body_read_timeout: Duration,

    /// Log filter, in `tracing` `EnvFilter` syntax (e.g. `info`,
    /// `impression_counter=debug`).
    #[arg(long = "rust-log", env = "RUST_LOG", default_value = "info", value_parser = parse_log_filter)]
    pub rust_log: String,

    /// Log line format: human-readable `text` or one JSON object per line.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Text)]
    pub log_format: LogFormatArg,
}

/// Command-line flags and environment variables of the pixel's ids,
/// flattened into [`Config`]; [`Config::pixel`] makes them the pixel's
/// settings.
#[derive(Clone, Debug, Args)]
pub struct PixelArgs {
    /// How the pixel identifies a browser that sends neither `user_id` nor
    /// the cookie: `cookie` (a daily-keyed hash of its address, user agent
    /// and the campaign, also set as the cookie), `hash` (that hash, no
    /// cookie) or `off` (400).
    #[arg(
        long = "pixel-id",
        env = "PIXEL_ID",
        value_name = "MODE",
        value_enum,
        default_value_t = PixelIdArg::Cookie
    )]
    pub mode: PixelIdArg,

    /// Lifetime of the id cookie (`Max-Age`); 1s ..= 400d.
    #[arg(
        long = "pixel-cookie-max-age",
        env = "PIXEL_COOKIE_MAX_AGE",
        value_name = "DURATION",
        default_value = "365d",
        value_parser = parse_max_age
    )]
    pub cookie_max_age: Duration,

    /// Whether the id cookie is `SameSite=None; Secure` (sent on
    /// third-party requests, over HTTPS only). `false`, for plain-HTTP
    /// development, makes it `SameSite=Lax`: browsers refuse `SameSite=None`
    /// without `Secure`, and a Lax cookie is sent only when the page and
    /// the counter are the same site.
    #[arg(
        long = "pixel-cookie-secure",
        env = "PIXEL_COOKIE_SECURE",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub cookie_secure: bool,

    /// `Domain` of the id cookie (e.g. `counter.example`), to share it
    /// with subdomains; unset, it belongs to the exact host that set it.
    #[arg(
        long = "pixel-cookie-domain",
        env = "PIXEL_COOKIE_DOMAIN",
        value_name = "DOMAIN",
        value_parser = parse_domain
    )]
    pub cookie_domain: Option<String>,

    /// Secret the hashed ids are derived from, with the UTC date; at least
    /// 16 bytes, the same on every node. Unset: one is made once and kept
    /// in the storage (`DATA_DIR`, Redis; memory: for the process).
    #[arg(
        long = "pixel-hash-secret",
        env = "PIXEL_HASH_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        value_parser = SecretParser
    )]
    pub hash_secret: Option<Secret>,
}

/// `TRUSTED_PROXIES`, flattened into [`Config`]; [`Config::client_addr`]
/// makes it [`ClientAddrSettings`].
#[derive(Clone, Debug, Default, Args)]
pub struct ClientAddrArgs {
    /// Proxies (load balancers, CDNs) whose `X-Forwarded-For` is believed,
    /// comma-separated addresses or CIDR blocks (`10.0.0.0/8,::1`). From
    /// any other peer the header is ignored and the peer is the client.
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_net
    )]
    pub trusted_proxies: Vec<IpNet>,
}

/// Shortest `PIXEL_HASH_SECRET` accepted, in bytes.
const MIN_SECRET_BYTES: usize = 16;

/// Browsers keep a cookie at most 400 days whatever it asks
/// (RFC 6265bis; Chromium enforces it), so a longer `Max-Age` would only
/// mislead.
const MAX_COOKIE_AGE: Duration = Duration::from_secs(400 * 24 * 3600);

fn parse_max_age(text: &str) -> Result<Duration, String> {
    let age = parse_duration(text)?;
    if age < Duration::from_secs(1) {
        return Err("must be at least 1s (0 would delete the cookie it sets)".into());
    }
    if age > MAX_COOKIE_AGE {
        return Err("must be at most 400d (browsers keep a cookie no longer)".into());
    }
    Ok(age)
}

/// A host name for `Domain`: letters, digits, `-` and `.`, a leading dot
/// allowed (browsers ignore it).
fn parse_domain(text: &str) -> Result<String, String> {
    let domain = text.trim().to_ascii_lowercase();
    let labels = domain.strip_prefix('.').unwrap_or(&domain);
    let valid = !labels.is_empty()
        && labels.len() <= 253
        && labels.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(domain)
    } else {
        Err(format!(
            "{text:?} is not a domain name like counter.example"
        ))
    }
}

/// Parses `PIXEL_HASH_SECRET`. Not a plain function parser: clap repeats
/// a refused value in its message (`invalid value '...'`), and this one
/// must never be printed, so its error is built here without it.
#[derive(Clone, Copy, Debug)]
struct SecretParser;

impl clap::builder::TypedValueParser for SecretParser {
    type Value = Secret;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Secret, clap::Error> {
        let refuse = |why: &str| {
            let name = arg.map_or_else(|| "the pixel hash secret".to_owned(), ToString::to_string);
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("the value of {name} {why}\n"),
            )
            .with_cmd(cmd)
        };
        let Some(text) = value.to_str() else {
            return Err(refuse("is not UTF-8"));
        };
        if text.len() < MIN_SECRET_BYTES {
            return Err(refuse(&format!(
                "must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
            )));
        }
        text.parse()
            .map_err(|e: std::convert::Infallible| refuse(&e.to_string()))
    }
}

pub(crate) fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr.to_canonical()));
    }
    text.parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| format!("{text:?} is neither an IP address nor a CIDR block like 10.0.0.0/8"))
}

/// `PIXEL_ID` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PixelIdArg {
    /// Mint the hashed id and offer it as a cookie; count under it.
    #[default]
    Cookie,
    /// Count under the hashed id; never set a cookie.
    Hash,
    /// Refuse (400) a pixel without `user_id` or the cookie.
    Off,
}

/// `DEDUP_SCOPE` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScopeArg {
    /// One count per (campaign, ad, user) per TTL.
    Ad,
    /// One count per (campaign, user) per TTL.
    Campaign,
}

/// `STORAGE` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    /// The embedded engine only; everything is lost on exit.
    Memory,
    /// The embedded engine, made durable by a log and snapshots in `DATA_DIR`.
    Disk,
    /// Redis or Redis Cluster, shared by many stateless nodes.
    Redis,
}

/// `FSYNC` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FsyncArg {
    /// fsync before acknowledging; concurrent writers share one fsync.
    Always,
    /// fsync once a second: power loss loses at most about a second.
    Everysec,
    /// Never fsync explicitly; the OS writes back when it likes.
    No,
}

/// `LOG_FORMAT` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl Config {
    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_addr, self.server_port)
    }

    /// The storage backend, `--in-memory` taking precedence.
    pub fn storage_kind(&self) -> StorageKind {
        if self.in_memory {
            StorageKind::Memory
        } else {
            self.storage
        }
    }

    /// The engine configuration these settings imply.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            ttl: self.ttl,
            scope: match self.dedup_scope {
                ScopeArg::Ad => DedupScope::Ad,
                ScopeArg::Campaign => DedupScope::Campaign,
            },
            max_lateness: self.max_event_age + INGEST_GRACE,
            history_hours: self.history.as_secs().div_ceil(3600),
            max_ads_per_campaign: self.max_ads_per_campaign as usize,
            // Local hours in zones at a :30 or :45 offset are summed from
            // quarter hours too: keep them at least as long as HISTORY.
            daily_history_days: self
                .daily_history
                .max(self.history)
                .as_secs()
                .div_ceil(86_400),
            ..EngineConfig::default()
        }
    }

    /// Where state lives and how it is counted.
    pub fn storage(&self) -> StorageSettings {
        let backend = match self.storage_kind() {
            StorageKind::Memory => Backend::Memory,
            StorageKind::Disk => Backend::Disk {
                dir: self.data_dir.clone(),
                options: DiskOptions {
                    fsync: match self.fsync {
                        FsyncArg::Always => FsyncPolicy::Always,
                        FsyncArg::Everysec => FsyncPolicy::Everysec,
                        FsyncArg::No => FsyncPolicy::No,
                    },
                    segment_bytes: self.log_segment_bytes,
                },
            },
            StorageKind::Redis => Backend::Redis(RedisOptions {
                url: self.redis_url.clone(),
                cluster_nodes: self.redis_cluster_nodes.clone(),
                sentinels: self.redis_sentinels.clone(),
                sentinel_master: self.redis_sentinel_master.clone(),
                prefix: self.redis_prefix.clone(),
                min_replicas_ack: self.redis_min_replicas_ack,
                replica_ack_timeout: self.redis_replica_ack_timeout,
            }),
        };
        StorageSettings {
            backend,
            engine: self.engine(),
        }
    }

    /// The ingest queue and its workers.
    pub fn ingest(&self) -> IngestSettings {
        IngestSettings {
            queue_size: self.impressions_queue_size as usize,
            workers: self.impression_workers.map_or_else(
                || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
                |n| n as usize,
            ),
            enqueue_timeout: self.enqueue_timeout,
        }
    }

    /// What the handlers enforce.
    pub fn api(&self) -> ApiSettings {
        ApiSettings {
            max_clock_skew: self.max_clock_skew,
            max_event_age: self.max_event_age,
            batch_max_items: self.batch_max_items as usize,
            batch_max_bytes: usize::try_from(self.batch_max_bytes).unwrap_or(usize::MAX),
            pixel: self.pixel(),
            client_addr: self.client_addr(),
            history: Duration::from_secs(self.engine().history_hours * 3600),
            daily_history: Duration::from_secs(
                self.daily_history.as_secs().div_ceil(86_400) * 86_400,
            ),
            max_id_bytes: usize::from(self.max_id_bytes),
            max_campaigns: self.max_campaigns,
            max_dedup_keys: self.max_dedup_keys,
            budget: self.memory_budget().0,
            rate_limit_per_client: self.rate_limit_per_client,
            streams: StreamSettings {
                max_streams: self.max_streams as usize,
            },
        }
    }

    /// The memory budget, and where its limit came from (for the start-up
    /// log): `MEMORY_LIMIT`, or half of what the process may use.
    pub fn memory_budget(&self) -> (MemoryBudget, String) {
        let to_usize = |bytes: u64| usize::try_from(bytes).unwrap_or(usize::MAX);
        match self.memory_limit {
            Some(0) => (MemoryBudget::new(None), "none (MEMORY_LIMIT=0)".into()),
            Some(bytes) => (
                MemoryBudget::new(Some(to_usize(bytes))),
                format!("{} (MEMORY_LIMIT)", budget::human(bytes)),
            ),
            None => match budget::default_limit() {
                Some((bytes, source)) => {
                    let of = match source {
                        MemorySource::Cgroup => "the cgroup's memory limit",
                        MemorySource::Physical => "physical memory",
                    };
                    (
                        MemoryBudget::new(Some(to_usize(bytes))),
                        format!("{} (half of {of})", budget::human(bytes)),
                    )
                }
                None => (
                    MemoryBudget::new(None),
                    "none (the machine's memory is unknown; set MEMORY_LIMIT)".into(),
                ),
            },
        }
    }

    /// The pixel's settings: its cookie, how it identifies browsers.
    pub fn pixel(&self) -> PixelSettings {
        PixelSettings {
            mode: match self.pixel.mode {
                PixelIdArg::Cookie => PixelIdMode::Cookie,
                PixelIdArg::Hash => PixelIdMode::Hash,
                PixelIdArg::Off => PixelIdMode::Off,
            },
            cookie: self.pixel_cookie.clone(),
            cookie_max_age: self.pixel.cookie_max_age,
            cookie_secure: self.pixel.cookie_secure,
            cookie_domain: self.pixel.cookie_domain.clone(),
            hash_secret: self.pixel.hash_secret.clone(),
        }
    }

    /// Who the client is behind proxies.
    pub fn client_addr(&self) -> ClientAddrSettings {
        ClientAddrSettings::new(self.client_addr.trusted_proxies.clone())
    }

    /// What the edge enforces before the router.
    pub fn edge(&self) -> EdgeSettings {
        EdgeSettings {
            max_header_bytes: usize::try_from(self.max_header_bytes).unwrap_or(usize::MAX),
            max_in_flight: self.max_in_flight as usize,
            body_read_timeout: self.body_read_timeout,
            max_body_bytes: usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX),
            cors_allowed_origins: self.cors_allowed_origins.clone(),
        }
    }

    /// The accept loop's limits.
    pub fn connections(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections as usize,
            header_read_timeout: self.header_read_timeout,
            // hyper's hard cap on a connection's read buffer: well above
            // MAX_HEADER_BYTES, whose friendlier JSON 431 the edge answers.
            max_buf_bytes: usize::try_from(self.max_header_bytes)
                .unwrap_or(usize::MAX)
                .saturating_mul(4),
        }
    }

    /// Where the API keys come from.
    pub fn api_keys(&self) -> KeySources {
        KeySources {
            inline: self.api_keys.as_ref().map(|s| s.expose().to_owned()),
            file: self.api_keys_file.clone(),
        }
    }

    /// The log line format.
    pub fn log_format(&self) -> LogFormat {
        match self.log_format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// Longest timeout or clock skew accepted. Each becomes a deadline
/// (`now + timeout`) somewhere, and one near `u64::MAX` seconds overflows
/// it: hyper panicked on every connection with
/// `HEADER_READ_TIMEOUT=18446744073709551615s`, a start-up that looked fine.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

fn parse_bounded_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > MAX_TIMEOUT {
        return Err("must be at most 24h".into());
    }
    Ok(d)
}

fn parse_replica_ack_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > crate::storage::redis::MAX_REPLICA_ACK_TIMEOUT {
        return Err("must be more than 0 and at most 2s".into());
    }
    Ok(d)
}

fn parse_read_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_bounded_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms (0 would refuse every request)".into());
    }
    Ok(d)
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(365 * 24 * 3600);
    let ttl = parse_duration(s)?;
    if ttl < Duration::from_millis(1) {
        return Err("the TTL must be at least 1ms".into());
    }
    if ttl > MAX {
        return Err("the TTL must be at most 365 days".into());
    }
    Ok(ttl)
}

fn parse_event_age(s: &str) -> Result<Duration, String> {
    let age = parse_duration(s)?;
    if age > Duration::from_secs(24 * 3600) {
        return Err("MAX_EVENT_AGE must be at most 24h".into());
    }
    Ok(age)
}

fn parse_history(s: &str) -> Result<Duration, String> {
    let history = parse_duration(s)?;
    if history < Duration::from_secs(25 * 3600) {
        return Err("HISTORY must be at least 25h (the day window needs it)".into());
    }
    if history > Duration::from_secs(366 * 24 * 3600) {
        return Err("HISTORY must be at most 366 days".into());
    }
    Ok(history)
}

fn parse_daily_history(s: &str) -> Result<Duration, String> {
    let history = parse_duration(s)?;
    if history < Duration::from_secs(86_400) {
        return Err("DAILY_HISTORY must be at least 1d".into());
    }
    if history > Duration::from_secs(3660 * 86_400) {
        return Err("DAILY_HISTORY must be at most 3660d (ten years)".into());
    }
    Ok(history)
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    match s.trim() {
        "idle" => Ok(Priority::Idle),
        n => match n.parse::<i32>() {
            Ok(nice @ 0..=19) => Ok(Priority::Nice(nice)),
            _ => Err(format!(
                "expected `idle` or a nice value from 0 to 19, got `{s}`"
            )),
        },
    }
}

fn parse_cookie_name(s: &str) -> Result<String, String> {
    // RFC 6265 token: visible ASCII except separators.
    let valid = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not a valid cookie name"))
    }
}

fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("invalid log filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("impression-counter").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_original_service() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.server_port, 8080);
        assert_eq!(c.ttl, Duration::from_secs(3600));
        assert_eq!(c.impressions_queue_size, 1000);
        assert_eq!(c.dedup_scope, ScopeArg::Ad);
        assert!(c.ingest().workers >= 1);
    }

    #[test]
    fn invalid_values_are_refused_with_the_setting_named() {
        let err = parse(&["--ttl", "0s"]).unwrap_err().to_string();
        assert!(
            err.contains("--ttl") && err.contains("at least 1ms"),
            "{err}"
        );
        let err = parse(&["--impressions-queue-size", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--impressions-queue-size"), "{err}");
        let err = parse(&["--dedup-scope", "user"]).unwrap_err().to_string();
        assert!(err.contains("--dedup-scope"), "{err}");
        let err = parse(&["--rust-log", "info,=["]).unwrap_err().to_string();
        assert!(err.contains("invalid log filter"), "{err}");
    }

    #[test]
    fn batch_parse_priority_is_idle_or_a_nice_value() {
        assert_eq!(parse(&[]).unwrap().batch_parse_priority, Priority::Idle);
        for (text, priority) in [
            ("idle", Priority::Idle),
            ("0", Priority::Nice(0)),
            ("10", Priority::Nice(10)),
            ("19", Priority::Nice(19)),
        ] {
            let c = parse(&["--batch-parse-priority", text]).unwrap();
            assert_eq!(c.batch_parse_priority, priority, "{text}");
        }
        for bad in ["20", "-1", "high", ""] {
            let arg = format!("--batch-parse-priority={bad}");
            let err = parse(&[&arg]).unwrap_err().to_string();
            assert!(
                err.contains("--batch-parse-priority") && err.contains("nice value from 0 to 19"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn event_time_settings_are_bounded() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.max_clock_skew, Duration::from_secs(5));
        assert_eq!(c.max_event_age, Duration::from_secs(600));
        assert_eq!(c.engine().history_hours, 168);
        assert_eq!(
            c.engine().max_lateness,
            Duration::from_secs(600) + INGEST_GRACE
        );
        assert!(parse(&["--max-event-age", "24h"]).is_ok());
        let err = parse(&["--max-event-age", "25h"]).unwrap_err().to_string();
        assert!(err.contains("at most 24h"), "{err}");
        let err = parse(&["--history", "24h"]).unwrap_err().to_string();
        assert!(err.contains("at least 25h"), "{err}");
        assert!(parse(&["--pixel-cookie", "a;b"]).is_err());
        assert_eq!(
            parse(&["--pixel-cookie", "visitor_id"])
                .unwrap()
                .pixel_cookie,
            "visitor_id"
        );
    }

    /// Found by the `config_flags` fuzz target: a duration near `u64::MAX`
    /// seconds was accepted, then overflowed `Instant + Duration` (hyper
    /// panicked on every connection for `HEADER_READ_TIMEOUT`). Every
    /// duration setting is now bounded.
    #[test]
    fn durations_that_would_overflow_a_deadline_are_refused() {
        let fuzzed = "\u{b}\u{b}18446724073709551615s\u{b}\u{b}1h1hrs";
        assert!(parse_duration(fuzzed).is_ok(), "the input still parses");
        let timeouts = [
            "--header-read-timeout",
            "--body-read-timeout",
            "--enqueue-timeout",
            "--max-clock-skew",
        ];
        let bounded_before = ["--ttl", "--max-event-age", "--history", "--daily-history"];
        for flag in timeouts.iter().chain(&bounded_before) {
            for value in [fuzzed, "18446744073709551615s"] {
                let err = parse(&[flag, value]).unwrap_err().to_string();
                assert!(
                    err.contains(flag) && err.contains("at most"),
                    "{flag} {value:?}: {err}"
                );
            }
        }
        for flag in timeouts {
            assert!(parse(&[flag, "24h"]).is_ok(), "{flag}");
            let err = parse(&[flag, "25h"]).unwrap_err().to_string();
            assert!(err.contains("at most 24h"), "{flag}: {err}");
        }
        for flag in ["--header-read-timeout", "--body-read-timeout"] {
            let err = parse(&[flag, "0s"]).unwrap_err().to_string();
            assert!(err.contains("at least 1ms"), "{err}");
        }
        let config = parse(&["--enqueue-timeout", "0s"]).unwrap();
        assert_eq!(config.enqueue_timeout, Duration::ZERO);
    }

    #[test]
    fn max_streams_defaults_to_256_and_is_at_least_1() {
        assert_eq!(parse(&[]).unwrap().api().streams.max_streams, 256);
        assert_eq!(
            parse(&["--max-streams", "3"])
                .unwrap()
                .api()
                .streams
                .max_streams,
            3
        );
        let err = parse(&["--max-streams", "0"]).unwrap_err().to_string();
        assert!(err.contains("--max-streams"), "{err}");
    }

    #[test]
    fn api_keys_never_show_in_debug_output() {
        let c = parse(&["--api-keys", "k-123,k-456"]).unwrap();
        assert_eq!(c.api_keys.as_ref().map(Secret::expose), Some("k-123,k-456"));
        let debug = format!("{c:?}");
        assert!(!debug.contains("k-123"), "{debug}");
    }

    #[test]
    fn campaign_scope_reaches_the_engine() {
        let c = parse(&["--dedup-scope", "campaign", "--ttl", "90m"]).unwrap();
        let e = c.engine();
        assert_eq!(e.scope, DedupScope::Campaign);
        assert_eq!(e.ttl, Duration::from_secs(5400));
    }
}
