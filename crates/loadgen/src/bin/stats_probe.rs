//! `stats-probe`: the latency of `GET /api/v1/campaigns/{id}/stats`.
//!
//! Optionally fills a fresh campaign with N counted impressions first
//! (`--fill`, batches of 10,000 distinct users with `wait=true`; a campaign
//! starts at most a minute in the past, so `--fill-spread` beyond that only
//! works with a campaign created earlier, `--campaign`), then reads its stats in open loop at `--rate` for
//! `--duration` on one keep-alive connection, and prints percentiles from an
//! HDR histogram. A read whose turn came while the previous one was still
//! waiting for its answer is timed from when it was *due*, so a slow answer
//! shows in the latency of the reads it delayed (no coordinated omission);
//! otherwise it is timed from when it was sent. Reads are paced with a
//! blocking sleep (tens of microseconds of precision) rather than tokio's
//! millisecond timer.
//!
//! ```sh
//! stats-probe --url http://127.0.0.1:8080 --fill 1000000 --rate 2000 --duration 10s
//! stats-probe --url http://127.0.0.1:8080 --campaign <id> --json stats.json
//! ```
//!
//! Run it beside `loadgen` to see stats latency while ingest runs at full
//! speed. Loopback targets only.

#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../api.rs"]
mod api;
#[allow(dead_code)]
#[path = "../client.rs"]
mod client;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::{Method, StatusCode, Uri};

use crate::api::ControlClient;
use crate::client::{Conn, Target, request_to};

/// Measures stats read latency over HTTP.
#[derive(Debug, Parser)]
#[command(name = "stats-probe", version)]
struct Args {
    /// Base URL of the server (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Campaign to read; a fresh one is created when absent.
    #[arg(long)]
    campaign: Option<String>,
    /// Counted impressions to put in the (fresh) campaign first.
    #[arg(long, default_value_t = 0)]
    fill: u64,
    /// How far back the filled impressions' timestamps go (the server's
    /// `MAX_EVENT_AGE` must allow it; 0 = now).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    fill_spread: Duration,
    /// Stats reads per second (open loop).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to read.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Write the result as JSON to this file (`-` = stdout).
    #[arg(long)]
    json: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = Target::resolve(&args.url, false).await?;
    let mut control = ControlClient::new(target.clone());
    let campaign = match &args.campaign {
        Some(c) => c.clone(),
        None => control.create_campaign("stats-probe").await?,
    };
    if args.fill > 0 {
        let started = Instant::now();
        fill(&target, &campaign, args.fill, args.fill_spread).await?;
        let total = control.counts(&campaign).await?.total;
        eprintln!(
            "filled {campaign} with {total} counted impressions in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        if total < args.fill {
            bail!("only {total} of {} impressions were counted", args.fill);
        }
    }

    let uri: Uri = format!("/api/v1/campaigns/{campaign}/stats").parse()?;
    let mut conn = Conn::connect(target.addr, Duration::from_secs(5)).await?;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let started = Instant::now();
    let mut errors = 0u64;
    let mut previous_done = started;
    for n in 0u64.. {
        let due = started + interval.mul_f64(n as f64);
        if due.duration_since(started) >= args.duration {
            break;
        }
        // A blocking sleep, on purpose: tokio's timer ticks in whole
        // milliseconds, too coarse to pace reads a millisecond apart, and
        // nothing else runs on this thread while no read is in flight.
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let from = if previous_done <= due {
            Instant::now()
        } else {
            due
        };
        let req = request_to(&target, Method::GET, uri.clone(), None);
        let result = conn.send(req, Duration::from_secs(5)).await;
        previous_done = Instant::now();
        match result {
            Ok(answer) if answer.status == StatusCode::OK => {
                let micros = u64::try_from(from.elapsed().as_micros()).unwrap_or(u64::MAX);
                latency.saturating_record(micros.max(1));
            }
            Ok(_) | Err(_) => {
                errors += 1;
                conn = Conn::connect(target.addr, Duration::from_secs(5)).await?;
            }
        }
    }
    let p = |q: f64| latency.value_at_quantile(q);
    let summary = serde_json::json!({
        "campaign_id": campaign,
        "reads": latency.len(),
        "errors": errors,
        "rate": args.rate,
        "latency_us": {
            "p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "p99_9": p(0.999), "max": latency.max(),
        },
    });
    println!(
        "{} stats reads at {}/s, {} errors: p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        latency.len(),
        args.rate,
        errors,
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999),
        latency.max()
    );
    match args.json.as_deref() {
        Some("-") => println!("{summary}"),
        Some(path) => {
            std::fs::write(path, summary.to_string()).context("writing the JSON summary")?;
        }
        None => {}
    }
    Ok(())
}

/// Posts `n` distinct impressions to `campaign` in NDJSON batches of 10,000
/// with `wait=true`, their timestamps spread evenly over the last `spread`.
async fn fill(target: &Target, campaign: &str, n: u64, spread: Duration) -> anyhow::Result<()> {
    let mut conn = Conn::connect(target.addr, Duration::from_secs(5)).await?;
    let uri: Uri = "/api/v1/impressions/batch?wait=true".parse()?;
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )
    .unwrap_or(u64::MAX);
    // A minute of margin so the oldest stay inside MAX_EVENT_AGE on arrival.
    let spread_ms = u64::try_from(spread.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_sub(60_000);
    let mut body = String::with_capacity(10_000 * 120);
    let mut sent = 0u64;
    while sent < n {
        body.clear();
        let end = (sent + 10_000).min(n);
        for i in sent..end {
            let ts = now_ms - spread_ms + spread_ms * i / n.max(1);
            body.push_str(&format!(
                "{{\"campaign_id\":\"{campaign}\",\"user_id\":\"probe-{i}\",\"ad_id\":\"ad-{}\",\"timestamp\":\"{}\"}}\n",
                i % 5,
                rfc3339(ts)
            ));
        }
        let mut req = request_to(
            target,
            Method::POST,
            uri.clone(),
            Some(Bytes::from(body.clone())),
        );
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        let answer = conn.send(req, Duration::from_secs(60)).await?;
        let processed: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        if answer.status != StatusCode::OK
            || processed["rejected"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        {
            let text = String::from_utf8_lossy(&answer.body);
            bail!(
                "filling failed: {} {}",
                answer.status,
                text.chars().take(300).collect::<String>()
            );
        }
        sent = end;
    }
    Ok(())
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds (civil-from-days).
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    #[allow(
        clippy::cast_possible_wrap,
        reason = "u64::MAX / 86_400 is below i64::MAX"
    )]
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_735_689_600_123), "2025-01-01T00:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
