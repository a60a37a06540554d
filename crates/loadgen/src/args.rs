//! Command-line options, and the checks clap cannot express.
//!
//! [`Args`] is what the user typed; [`Args::validate`] turns it into a
//! [`Settings`] that only holds consistent values (a run length, a key space
//! that fits in 64 bits, a rate that is positive and finite), so the rest of
//! the crate never re-checks them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How long a run lasts when neither `--duration` nor `--count` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Drives a running impression-counter server over HTTP, measures throughput
/// and latency, then checks that the server counted exactly what it
/// acknowledged.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    after_help = "Examples:\n  \
        loadgen --spawn --mode single --duration 5s\n  \
        loadgen --url http://127.0.0.1:8080 --mode batch --count 1000000 --distribution zipf\n  \
        loadgen --spawn-noop --duration 5s        # the no-op ceiling, same client"
)]
pub struct Args {
    /// Which endpoint to drive: `single` (POST /api/v1/impressions), `batch`
    /// (POST /api/v1/impressions/batch) or `pixel` (GET .../pixel.gif).
    #[arg(long, value_enum, default_value_t = Mode::Single)]
    pub mode: Mode,

    /// Impressions per request in `batch` mode.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: u32,

    /// In `batch` mode, send `application/x-ndjson` (one object per line)
    /// instead of a JSON array.
    #[arg(long)]
    pub ndjson: bool,

    /// Base URL of the server (http only); not with --spawn/--spawn-noop.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Run for this long, e.g. `10s`, `2m` [default: 10s unless --count].
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,

    /// Send exactly this many impressions, then stop.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,

    /// Campaigns to create first (fresh ones, so their totals start at zero).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub campaigns: u32,

    /// Distinct users to draw from.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub users: u64,

    /// How users are drawn: `uniform`, or `zipf` (a few users are very
    /// frequent, like real traffic).
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,

    /// Exponent `s` of the Zipf distribution (0 is uniform; larger is more
    /// skewed).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,

    /// Distinct ads per campaign to draw from (uniformly).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub ads: u32,

    /// Fraction of impressions that deliberately repeat the key of an earlier
    /// impression (0..=1).
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_ratio: f64,

    /// Target impressions per second, open loop: requests are scheduled at
    /// fixed intervals whatever the answers, and latency counts from the
    /// scheduled time. Without it: closed loop, as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Seed of the key generator: the same seed gives the same keys.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Also write the summary as JSON to this file (`-` for stdout; the text
    /// summary then goes to stderr).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Start the server binary on a free loopback port, run, verify, and stop
    /// it with SIGTERM.
    #[arg(long, conflicts_with_all = ["spawn_noop", "url"])]
    pub spawn: bool,

    /// Like --spawn, but start `noop-server` (the reference ceiling); implies
    /// --noop-target.
    #[arg(long, conflicts_with = "url")]
    pub spawn_noop: bool,

    /// Server binary for --spawn/--spawn-noop [default: `impression-counter`
    /// or `noop-server` next to this executable].
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,

    /// Extra environment for the spawned server, `KEY=VALUE` (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub server_env: Vec<(String, String)>,

    /// How long a spawned server may take to answer 200 on /readyz.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,

    /// The target is a `noop-server`: use made-up campaign ids instead of
    /// creating campaigns, and skip verification.
    #[arg(long)]
    pub noop_target: bool,

    /// Skip the verification step (e.g. when the server runs with a short TTL).
    #[arg(long)]
    pub no_verify: bool,

    /// How long verification may poll the stats for the totals to settle.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub verify_timeout: Duration,

    /// The server's `DEDUP_SCOPE`, which decides what counts as one key when
    /// computing the expected totals [default: `DEDUP_SCOPE` from
    /// --server-env if given, else `ad`, the server's default].
    #[arg(long, value_enum)]
    pub dedup_scope: Option<Scope>,

    /// Per-request timeout; a request that times out has an unknown outcome.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Worker threads of loadgen's own runtime (1 = a single thread, which
    /// leaves the other cores to the server).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,

    /// No progress bar (it is also off when stdout is not a terminal).
    #[arg(long, short)]
    pub quiet: bool,

    /// Allow a target that is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
}

/// Which endpoint is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `POST /api/v1/impressions`, one impression per request, 202.
    Single,
    /// `POST /api/v1/impressions/batch`, `--batch-size` per request, 202.
    Batch,
    /// `GET /api/v1/impressions/pixel.gif?...`, one per request, 200.
    Pixel,
}

impl Mode {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Batch => "batch",
            Mode::Pixel => "pixel",
        }
    }
}

/// How user ids are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every user equally likely.
    Uniform,
    /// User of rank `k` has weight `1 / k^s`.
    Zipf,
}

/// What the server treats as one dedup key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `(campaign, ad, user)`: the server's default.
    Ad,
    /// `(campaign, user)`: the server with `DEDUP_SCOPE=campaign`.
    Campaign,
}

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// After this many impressions were sent.
    Count(u64),
    /// When this much time has passed since the start.
    Duration(Duration),
}

/// Which server `--spawn`/`--spawn-noop` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnKind {
    /// The real service, binary `impression-counter`.
    Server,
    /// The reference no-op server, binary `noop-server`.
    Noop,
}

impl SpawnKind {
    /// The binary's file name in the target directory.
    pub fn binary_name(self) -> &'static str {
        match self {
            SpawnKind::Server => "impression-counter",
            SpawnKind::Noop => "noop-server",
        }
    }
}

/// Validated options: every value is in range and consistent with the others.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The options as parsed.
    pub args: Args,
    /// When the run ends.
    pub limit: Limit,
    /// Impressions per request (1 except in batch mode).
    pub per_request: u32,
    /// Server to start, if any.
    pub spawn: Option<SpawnKind>,
    /// The target is a noop server (no campaigns, no verification).
    pub noop_target: bool,
    /// The server's dedup scope, for the expected totals.
    pub scope: Scope,
}

/// Option combinations that clap alone does not reject.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgsError {
    /// `--rate` is not a positive finite number.
    #[error("--rate must be a positive number of impressions per second, got {0}")]
    Rate(f64),
    /// `--duplicate-ratio` outside 0..=1.
    #[error("--duplicate-ratio must be between 0 and 1, got {0}")]
    DuplicateRatio(f64),
    /// `--zipf-exponent` negative or not finite.
    #[error("--zipf-exponent must be a finite number >= 0, got {0}")]
    ZipfExponent(f64),
    /// `--ndjson` outside batch mode.
    #[error("--ndjson only applies to --mode batch")]
    NdjsonWithoutBatch,
    /// A zero duration or timeout.
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// `--server-env DEDUP_SCOPE=` with a value the server would refuse.
    #[error("--server-env DEDUP_SCOPE must be `ad` or `campaign`, got `{0}`")]
    ServerScope(String),
    /// campaigns × ads × users does not fit in 64 bits.
    #[error("--campaigns × --ads × --users is too large (must fit in 64 bits)")]
    KeySpace,
}

impl Args {
    /// Checks the combinations and derives the run's shape.
    pub fn validate(self) -> Result<Settings, ArgsError> {
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(ArgsError::Rate(rate));
        }
        if !(0.0..=1.0).contains(&self.duplicate_ratio) {
            return Err(ArgsError::DuplicateRatio(self.duplicate_ratio));
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
            return Err(ArgsError::ZipfExponent(self.zipf_exponent));
        }
        if self.ndjson && self.mode != Mode::Batch {
            return Err(ArgsError::NdjsonWithoutBatch);
        }
        if self.duration == Some(Duration::ZERO) {
            return Err(ArgsError::ZeroDuration("--duration"));
        }
        if self.timeout.is_zero() {
            return Err(ArgsError::ZeroDuration("--timeout"));
        }
        u64::from(self.campaigns)
            .checked_mul(u64::from(self.ads))
            .and_then(|n| n.checked_mul(self.users))
            .ok_or(ArgsError::KeySpace)?;

        let limit = match (self.count, self.duration) {
            (Some(n), _) => Limit::Count(n),
            (None, Some(d)) => Limit::Duration(d),
            (None, None) => Limit::Duration(DEFAULT_DURATION),
        };
        let per_request = match self.mode {
            Mode::Batch => self.batch_size,
            Mode::Single | Mode::Pixel => 1,
        };
        let spawn = if self.spawn {
            Some(SpawnKind::Server)
        } else if self.spawn_noop {
            Some(SpawnKind::Noop)
        } else {
            None
        };
        let noop_target = self.noop_target || self.spawn_noop;
        // A spawned server told its scope through --server-env is verified
        // with that scope unless --dedup-scope says otherwise (the last
        // occurrence wins, as it does for the child's environment).
        let server_scope = match self
            .server_env
            .iter()
            .rev()
            .find(|(k, _)| k == "DEDUP_SCOPE")
        {
            None => None,
            Some((_, v)) => match v.to_ascii_lowercase().as_str() {
                "ad" => Some(Scope::Ad),
                "campaign" => Some(Scope::Campaign),
                _ => return Err(ArgsError::ServerScope(v.clone())),
            },
        };
        let scope = self.dedup_scope.or(server_scope).unwrap_or(Scope::Ad);
        Ok(Settings {
            args: self,
            limit,
            per_request,
            spawn,
            noop_target,
            scope,
        })
    }
}

/// Parses `KEY=VALUE` for `--server-env`.
fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
    }

    fn settings(args: &[&str]) -> Settings {
        parse(args).unwrap().validate().unwrap()
    }

    #[test]
    fn defaults_match_the_documentation() {
        let s = settings(&[]);
        let a = &s.args;
        assert_eq!(a.mode, Mode::Single);
        assert_eq!(a.url, "http://127.0.0.1:8080");
        assert_eq!(a.connections, 64);
        assert_eq!(a.campaigns, 10);
        assert_eq!(a.users, 1_000_000);
        assert_eq!(a.ads, 10);
        assert_eq!(a.batch_size, 1000);
        assert_eq!(a.distribution, Distribution::Uniform);
        assert_eq!(a.zipf_exponent, 1.0);
        assert_eq!(a.duplicate_ratio, 0.0);
        assert_eq!(a.threads, 1);
        assert_eq!(a.rate, None);
        assert_eq!(s.limit, Limit::Duration(DEFAULT_DURATION));
        assert_eq!(s.per_request, 1);
        assert_eq!(s.spawn, None);
        assert!(!s.noop_target);
        assert_eq!(s.scope, Scope::Ad);
    }

    #[test]
    fn dedup_scope_follows_the_spawned_server() {
        let s = settings(&["--spawn", "--server-env", "DEDUP_SCOPE=campaign"]);
        assert_eq!(s.scope, Scope::Campaign);
        let s = settings(&[
            "--spawn",
            "--server-env",
            "DEDUP_SCOPE=campaign",
            "--dedup-scope",
            "ad",
        ]);
        assert_eq!(s.scope, Scope::Ad, "the explicit flag wins");
        let s = settings(&["--dedup-scope", "campaign"]);
        assert_eq!(s.scope, Scope::Campaign);
        let err = parse(&["--spawn", "--server-env", "DEDUP_SCOPE=user"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err, ArgsError::ServerScope("user".into()));
    }

    #[test]
    fn durations_counts_and_modes_parse() {
        let s = settings(&[
            "--duration",
            "1m30s",
            "--mode",
            "batch",
            "--batch-size",
            "50",
        ]);
        assert_eq!(s.limit, Limit::Duration(Duration::from_secs(90)));
        assert_eq!(s.per_request, 50);
        let s = settings(&["--count", "1000", "--mode", "pixel", "--batch-size", "50"]);
        assert_eq!(s.limit, Limit::Count(1000));
        assert_eq!(s.per_request, 1, "batch size only applies to batch mode");
        let s = settings(&["--timeout", "250ms", "--rate", "5000"]);
        assert_eq!(s.args.timeout, Duration::from_millis(250));
        assert_eq!(s.args.rate, Some(5000.0));
    }

    #[test]
    fn duration_and_count_conflict() {
        assert!(parse(&["--duration", "5s", "--count", "10"]).is_err());
        assert!(parse(&["--count", "0"]).is_err());
        assert!(parse(&["--duration", "five"]).is_err());
    }

    #[test]
    fn spawn_flags() {
        let s = settings(&["--spawn", "--server-env", "TTL=2h", "--server-env", "A=b=c"]);
        assert_eq!(s.spawn, Some(SpawnKind::Server));
        assert_eq!(
            s.args.server_env,
            vec![
                ("TTL".to_owned(), "2h".to_owned()),
                ("A".to_owned(), "b=c".to_owned())
            ]
        );
        let s = settings(&["--spawn-noop"]);
        assert_eq!(s.spawn, Some(SpawnKind::Noop));
        assert!(s.noop_target, "--spawn-noop implies --noop-target");
        assert!(parse(&["--spawn", "--spawn-noop"]).is_err());
        assert!(parse(&["--spawn", "--url", "http://127.0.0.1:1"]).is_err());
        assert!(parse(&["--server-env", "NOEQUALS"]).is_err());
        assert!(parse(&["--server-env", "=x"]).is_err());
    }

    #[test]
    fn inconsistent_values_are_rejected() {
        let err = |a: &[&str]| parse(a).unwrap().validate().unwrap_err();
        assert_eq!(err(&["--rate", "0"]), ArgsError::Rate(0.0));
        assert_eq!(err(&["--rate=-5"]), ArgsError::Rate(-5.0));
        assert_eq!(
            err(&["--duplicate-ratio", "1.5"]),
            ArgsError::DuplicateRatio(1.5)
        );
        assert_eq!(err(&["--zipf-exponent=-1"]), ArgsError::ZipfExponent(-1.0));
        assert_eq!(err(&["--ndjson"]), ArgsError::NdjsonWithoutBatch);
        assert_eq!(
            err(&["--duration", "0s"]),
            ArgsError::ZeroDuration("--duration")
        );
        assert_eq!(
            err(&["--users", "18446744073709551615", "--ads", "2"]),
            ArgsError::KeySpace
        );
        assert!(parse(&["--connections", "0"]).is_err());
        assert!(parse(&["--mode", "stream"]).is_err());
    }

    #[test]
    fn help_renders() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let help = Args::command().render_long_help().to_string();
        for flag in ["--mode", "--rate", "--spawn", "--json", "--duplicate-ratio"] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }
}
