//! The summary: what was sent, what came back, how fast, how slow, and
//! whether the counts match. One [`Summary`] value is both printed as text
//! ([`Summary::write_text`]) and serialized as JSON (`--json`), so the two
//! never disagree.
//!
//! Latency is over requests that got an HTTP answer (any status), in
//! milliseconds, from an HDR histogram with 3 significant digits (so each
//! percentile is exact to 0.1%).

use std::collections::BTreeMap;
use std::io::{self, Write};

use hdrhistogram::Histogram;

use crate::args::{Distribution, Limit, Mode, Scope, Settings};
use crate::run::RunResult;
use crate::verify::{Status, Verification};

/// Everything a run reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// The run's shape.
    pub config: RunConfig,
    /// Where the load went, e.g. `127.0.0.1:8080`.
    pub target: String,
    /// Wall time from the first request to the last answer, seconds.
    pub elapsed_s: f64,
    /// The run was stopped early by Ctrl-C.
    pub interrupted: bool,
    /// Request counts.
    pub requests: Requests,
    /// Impression counts.
    pub impressions: Impressions,
    /// Rates over `elapsed_s`.
    pub throughput: Throughput,
    /// Latency percentiles, milliseconds.
    pub latency_ms: Latency,
    /// Failures.
    pub errors: Errors,
    /// The count check.
    pub verification: Verification,
}

/// The options that shape the load (echoed so a JSON file is self-describing).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunConfig {
    /// Endpoint driven.
    pub mode: Mode,
    /// Impressions per request.
    pub batch_size: u32,
    /// NDJSON batches.
    pub ndjson: bool,
    /// `--duration`, seconds, if the run was time-bound.
    pub duration_s: Option<f64>,
    /// `--count`, if the run was count-bound.
    pub count: Option<u64>,
    /// Connections.
    pub connections: u32,
    /// Open-loop target rate, impressions/s; `null` for closed loop.
    pub rate: Option<f64>,
    /// Campaigns.
    pub campaigns: u32,
    /// Users.
    pub users: u64,
    /// User distribution.
    pub distribution: Distribution,
    /// Zipf exponent.
    pub zipf_exponent: f64,
    /// Ads per campaign.
    pub ads: u32,
    /// Deliberate duplicate fraction.
    pub duplicate_ratio: f64,
    /// Seed.
    pub seed: u64,
    /// Loadgen's runtime threads.
    pub threads: u32,
    /// Dedup scope assumed by verification.
    pub dedup_scope: Scope,
    /// `impression-counter`, `noop-server`, or `null` for an existing server.
    pub spawned: Option<&'static str>,
}

impl RunConfig {
    /// The config part of the summary for these settings.
    pub fn from_settings(s: &Settings) -> Self {
        let a = &s.args;
        Self {
            mode: a.mode,
            batch_size: s.per_request,
            ndjson: a.ndjson,
            duration_s: match s.limit {
                Limit::Duration(d) => Some(d.as_secs_f64()),
                Limit::Count(_) => None,
            },
            count: match s.limit {
                Limit::Count(n) => Some(n),
                Limit::Duration(_) => None,
            },
            connections: a.connections,
            rate: a.rate,
            campaigns: a.campaigns,
            users: a.users,
            distribution: a.distribution,
            zipf_exponent: a.zipf_exponent,
            ads: a.ads,
            duplicate_ratio: a.duplicate_ratio,
            seed: a.seed,
            threads: a.threads,
            dedup_scope: s.scope,
            spawned: s.spawn.map(super::args::SpawnKind::binary_name),
        }
    }
}

/// Request counts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Requests {
    /// Sent.
    pub sent: u64,
    /// Answered with any HTTP status.
    pub answered: u64,
}

/// Impression counts: `sent = acknowledged + rejected + unknown`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Impressions {
    /// Sent.
    pub sent: u64,
    /// Acknowledged (202, or 200 for the pixel).
    pub acknowledged: u64,
    /// Refused: not counted.
    pub rejected: u64,
    /// No usable answer: may or may not have been counted.
    pub unknown: u64,
}

/// Rates over the elapsed time.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Throughput {
    /// Impressions sent per second.
    pub impressions_per_s: f64,
    /// Impressions acknowledged per second.
    pub acknowledged_per_s: f64,
    /// Requests sent per second.
    pub requests_per_s: f64,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Latency {
    /// Answered requests measured.
    pub samples: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    /// Percentiles of a histogram of microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self {
                samples: 0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
            };
        }
        Self {
            samples: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Failures, by kind.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Errors {
    /// Requests answered with a non-success status, by status.
    pub by_status: BTreeMap<String, u64>,
    /// Batch items rejected inside a 202, by code.
    pub batch_items_by_code: BTreeMap<String, u64>,
    /// Requests (or connection attempts: `connect`) without a usable answer.
    pub transport: BTreeMap<String, u64>,
}

impl Summary {
    /// Builds the summary of a finished run.
    pub fn new(
        settings: &Settings,
        target: String,
        result: &RunResult,
        verification: Verification,
    ) -> Self {
        let t = &result.tally;
        let secs = result.elapsed.as_secs_f64().max(1e-9);
        let keyed = |m: &BTreeMap<u16, u64>| m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        Self {
            config: RunConfig::from_settings(settings),
            target,
            elapsed_s: result.elapsed.as_secs_f64(),
            interrupted: result.interrupted,
            requests: Requests {
                sent: t.requests,
                answered: t.answered,
            },
            impressions: Impressions {
                sent: t.impressions,
                acknowledged: t.acked,
                rejected: t.rejected,
                unknown: t.unknown,
            },
            throughput: Throughput {
                impressions_per_s: t.impressions as f64 / secs,
                acknowledged_per_s: t.acked as f64 / secs,
                requests_per_s: t.requests as f64 / secs,
            },
            latency_ms: Latency::from_micros(&t.latency),
            errors: Errors {
                by_status: keyed(&t.status_errors),
                batch_items_by_code: keyed(&t.item_errors),
                transport: t
                    .transport_errors
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect(),
            },
            verification,
        }
    }

    /// The human-readable report.
    pub fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        let c = &self.config;
        let loop_kind = match c.rate {
            Some(r) => format!("open loop at {r} impressions/s"),
            None => "closed loop".to_owned(),
        };
        writeln!(
            out,
            "loadgen: {} mode against {}, {} connections, {loop_kind}{}",
            c.mode.as_str(),
            self.target,
            c.connections,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )?;
        let i = &self.impressions;
        writeln!(
            out,
            "  impressions  sent {}  acknowledged {}  rejected {}  unknown {}",
            i.sent, i.acknowledged, i.rejected, i.unknown
        )?;
        writeln!(
            out,
            "  requests     sent {}  answered {}  in {:.2} s",
            self.requests.sent, self.requests.answered, self.elapsed_s
        )?;
        let t = &self.throughput;
        writeln!(
            out,
            "  throughput   {:.0} impressions/s ({:.0} acknowledged/s), {:.0} requests/s",
            t.impressions_per_s, t.acknowledged_per_s, t.requests_per_s
        )?;
        let l = &self.latency_ms;
        writeln!(
            out,
            "  latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, {} samples)",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean, l.samples
        )?;
        let e = &self.errors;
        if e.by_status.is_empty() && e.batch_items_by_code.is_empty() && e.transport.is_empty() {
            writeln!(out, "  errors       none")?;
        } else {
            let list = |m: &BTreeMap<String, u64>| {
                m.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !e.by_status.is_empty() {
                writeln!(out, "  errors       by status: {}", list(&e.by_status))?;
            }
            if !e.batch_items_by_code.is_empty() {
                writeln!(
                    out,
                    "  errors       batch items by code: {}",
                    list(&e.batch_items_by_code)
                )?;
            }
            if !e.transport.is_empty() {
                writeln!(out, "  errors       transport: {}", list(&e.transport))?;
            }
        }
        self.write_verification(out)
    }

    fn write_verification(&self, out: &mut impl Write) -> io::Result<()> {
        let v = &self.verification;
        let reason = v.reason.as_deref().unwrap_or("");
        match v.status {
            Status::Skipped => writeln!(out, "  verification SKIPPED ({reason})"),
            Status::Error => writeln!(out, "  verification ERROR: {reason}"),
            Status::Match => {
                let (lo, hi) = v.campaigns.iter().fold((0, 0), |(lo, hi), c| {
                    (lo + c.expected_min, hi + c.expected_max)
                });
                let actual: u64 = v.campaigns.iter().map(|c| c.actual).sum();
                let range = if lo == hi {
                    format!("{lo} expected")
                } else {
                    format!("expected {lo}..={hi}")
                };
                let (users_lo, users_hi, users) =
                    v.campaigns.iter().fold((0, 0, 0), |(lo, hi, n), c| {
                        (
                            lo + c.users_expected_min,
                            hi + c.users_expected_max,
                            n + c.users_actual,
                        )
                    });
                writeln!(
                    out,
                    "  verification MATCH: {} campaigns, total {actual} ({range}), \
                     unique users {users} ({users_lo}..={users_hi} distinct sent), settled after {} ms",
                    v.campaigns.len(),
                    v.waited_ms
                )
            }
            Status::Mismatch => {
                writeln!(
                    out,
                    "  verification MISMATCH{}{reason}",
                    if reason.is_empty() { "" } else { ": " }
                )?;
                for c in &v.campaigns {
                    let mark = if c.ok() { "ok " } else { "BAD" };
                    writeln!(
                        out,
                        "    {mark} {}  expected {}..={}  actual {}  difference {:+}  \
                         users expected {}..={} (±3% past 128)  actual {}",
                        c.campaign_id,
                        c.expected_min,
                        c.expected_max,
                        c.actual,
                        c.difference,
                        c.users_expected_min,
                        c.users_expected_max,
                        c.users_actual
                    )?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::args::Args;
    use crate::ledger::Expected;
    use crate::run::Tally;
    use crate::verify::{Settled, compare};

    fn summary(totals: Vec<u64>) -> Summary {
        let users = totals.clone();
        summary_with_users(totals, users)
    }

    fn summary_with_users(totals: Vec<u64>, users: Vec<u64>) -> Summary {
        let settings = Args::try_parse_from(["loadgen", "--count", "100", "--campaigns", "2"])
            .unwrap()
            .validate()
            .unwrap();
        let mut tally = Tally::new().unwrap();
        tally.requests = 100;
        tally.answered = 99;
        tally.impressions = 100;
        tally.acked = 97;
        tally.rejected = 2;
        tally.unknown = 1;
        tally.status_errors.insert(503, 2);
        tally.transport_errors.insert("timeout", 1);
        for us in 1..=99 {
            tally.latency.record(us * 100).unwrap();
        }
        let result = RunResult {
            elapsed: Duration::from_secs(2),
            tally,
            interrupted: false,
        };
        let ids = vec!["c0".to_owned(), "c1".to_owned()];
        let expected = [Expected { lo: 50, hi: 50 }, Expected { lo: 47, hi: 48 }];
        let settled = Settled {
            totals,
            users,
            polls: 4,
            waited: Duration::from_millis(300),
            timed_out: false,
        };
        // Every impression by another user.
        let v = compare(&ids, &expected, &expected, &settled);
        Summary::new(&settings, "127.0.0.1:8080".into(), &result, v)
    }

    #[test]
    fn json_has_the_documented_shape() {
        let json = serde_json::to_value(summary(vec![50, 48])).unwrap();
        assert_eq!(json["config"]["mode"], "single");
        assert_eq!(json["config"]["count"], 100);
        assert_eq!(json["config"]["duration_s"], serde_json::Value::Null);
        assert_eq!(json["config"]["rate"], serde_json::Value::Null);
        assert_eq!(json["target"], "127.0.0.1:8080");
        assert_eq!(json["elapsed_s"], 2.0);
        assert_eq!(json["requests"]["sent"], 100);
        assert_eq!(json["impressions"]["acknowledged"], 97);
        assert_eq!(json["impressions"]["unknown"], 1);
        assert_eq!(json["throughput"]["impressions_per_s"], 50.0);
        assert_eq!(json["throughput"]["requests_per_s"], 50.0);
        assert_eq!(json["latency_ms"]["samples"], 99);
        // 3 significant digits: within 0.1%.
        let close = |v: &serde_json::Value, x: f64| (v.as_f64().unwrap() - x).abs() <= x * 1e-3;
        assert!(
            close(&json["latency_ms"]["p50"], 5.0),
            "{}",
            json["latency_ms"]
        );
        assert!(
            close(&json["latency_ms"]["max"], 9.9),
            "{}",
            json["latency_ms"]
        );
        for key in ["p90", "p99", "p99_9", "mean"] {
            assert!(json["latency_ms"][key].is_f64(), "{key}");
        }
        assert_eq!(json["errors"]["by_status"]["503"], 2);
        assert_eq!(json["errors"]["transport"]["timeout"], 1);
        assert_eq!(json["verification"]["status"], "match");
        let c = &json["verification"]["campaigns"][1];
        assert_eq!(c["campaign_id"], "c1");
        assert_eq!(c["expected_min"], 47);
        assert_eq!(c["expected_max"], 48);
        assert_eq!(c["actual"], 48);
        assert_eq!(c["difference"], 0);
        assert_eq!(c["users_expected_min"], 47);
        assert_eq!(c["users_expected_max"], 48);
        assert_eq!(c["users_actual"], 48);
        assert_eq!(c["users_ok"], true);
    }

    #[test]
    fn text_says_match_or_lists_differences() {
        let mut out = Vec::new();
        summary(vec![50, 47]).write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("verification MATCH"), "{text}");
        assert!(text.contains("p99"), "{text}");
        assert!(text.contains("by status: 503: 2"), "{text}");

        let mut out = Vec::new();
        let s = summary(vec![51, 40]);
        assert_eq!(s.verification.status, Status::Mismatch);
        s.write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("MISMATCH"), "{text}");
        assert!(
            text.contains("c0  expected 50..=50  actual 51  difference +1"),
            "{text}"
        );
        assert!(
            text.contains("c1  expected 47..=48  actual 40  difference -7"),
            "{text}"
        );

        // Right totals, wrong users: a mismatch too.
        let mut out = Vec::new();
        let s = summary_with_users(vec![50, 48], vec![49, 48]);
        assert_eq!(s.verification.status, Status::Mismatch);
        s.write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "BAD c0  expected 50..=50  actual 50  difference +0  users expected 50..=50"
            ),
            "{text}"
        );
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let h = Histogram::<u64>::new(3).unwrap();
        let l = Latency::from_micros(&h);
        assert_eq!(l.samples, 0);
        assert_eq!(l.max, 0.0);
    }
}
