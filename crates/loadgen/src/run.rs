//! The load itself: a fixed set of connection tasks, closed or open loop.
//!
//! Every connection task loops: make sure its connection is usable, claim
//! the next request number `r` from a shared counter, build the request for
//! impressions `r × per_request ..` (keys come from [`Workload::key`], so
//! what is sent does not depend on which task sends it), send it, wait for
//! the whole answer, record the outcome. One request in flight per
//! connection; `--connections` decides the concurrency.
//!
//! * **Closed loop** (no `--rate`): the next request leaves as soon as the
//!   previous answer arrived; latency is measured from the actual send.
//! * **Open loop** (`--rate R`): request `r` is *scheduled* at
//!   `start + r × per_request / R` ([`Schedule`]), independently of answers.
//!   A task waits for that instant if it is early; if it is late (every
//!   connection was busy: the server is not keeping up), it sends at once.
//!   Latency is measured from the **scheduled** instant, so time spent
//!   waiting for a free connection counts, and a slow server cannot hide its
//!   latency by slowing the generator down (coordinated omission). Timers
//!   tick in milliseconds, so tasks wake up to one tick early and send at
//!   once ([`TIMER_SLACK`]); a request that leaves early is measured from
//!   its actual send, so neither the timer's lateness nor its earliness
//!   distorts the latency.
//!
//! A run ends after `--count` impressions were claimed, or when the next
//! request would start (closed loop) or is scheduled (open loop) at or after
//! the `--duration` deadline; requests in flight then finish, each bounded
//! by `--timeout`. Ctrl-C stops claiming work the same way.
//!
//! Outcomes go to the shared [`Ledger`] (keys) and to a per-task [`Tally`]
//! (counts and a latency histogram), merged after the tasks end, so the only
//! shared writes per request are a few relaxed atomic adds.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::args::{Limit, Mode};
use crate::client::{ClientError, Conn, Target};
use crate::ledger::Ledger;
use crate::progress::Progress;
use crate::request::{Encoder, Verdict, classify};
use crate::workload::{Key, Workload};

/// Highest latency the histogram holds exactly, in microseconds (one hour);
/// anything slower is recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A task gives up after this many connection attempts failed in a row.
const MAX_CONNECT_FAILURES: u32 = 5;

/// How early an open-loop task wakes before a request is due. Tokio's
/// timers have millisecond granularity and fire at the first tick *after*
/// the deadline, so sleeping until the due time itself would add up to a
/// millisecond of the generator's own lateness to every latency. Waking one
/// tick early and sending at once removes that; the request then leaves at
/// most this much before its scheduled time, which keeps the rate, and its
/// latency is measured from the actual send.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Pause between reconnection attempts, so a dead server does not turn the
/// generator into a busy loop of refused connections.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// What to send and how fast.
#[derive(Clone, Debug)]
pub struct RunPlan {
    /// Which endpoint.
    pub mode: Mode,
    /// `--ndjson` (batch mode).
    pub ndjson: bool,
    /// When to stop.
    pub limit: Limit,
    /// Impressions per request.
    pub per_request: u32,
    /// Open-loop target in impressions per second.
    pub rate: Option<f64>,
    /// Connection tasks.
    pub connections: u32,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl RunPlan {
    /// The impressions request `r` carries, or `None` once `--count` is
    /// exhausted.
    pub fn impressions_of(&self, r: u64) -> Option<Range<u64>> {
        let per = u64::from(self.per_request);
        let start = r.checked_mul(per)?;
        match self.limit {
            Limit::Count(n) if start >= n => None,
            Limit::Count(n) => Some(start..(start + per).min(n)),
            Limit::Duration(_) => Some(start..start + per),
        }
    }
}

/// The open-loop timetable: request `r` is due at `start + r × interval`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Instant,
    interval_ns: f64,
}

impl Schedule {
    /// `rate` impressions per second (positive, finite), `per_request`
    /// impressions per request.
    pub fn new(start: Instant, rate: f64, per_request: u32) -> Self {
        Self {
            start,
            interval_ns: f64::from(per_request) * 1e9 / rate,
        }
    }

    /// When request `r` is due. Computed from `r` rather than accumulated,
    /// so rounding never drifts.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "nanoseconds since the start: `r` and the interval are not negative, and a float-to-int `as` saturates"
    )]
    pub fn at(&self, r: u64) -> Instant {
        self.start + Duration::from_nanos((r as f64 * self.interval_ns) as u64)
    }
}

/// Progress counters, shared by all tasks and read by the progress bar.
#[derive(Debug, Default)]
pub struct Live {
    /// Impressions sent.
    pub impressions: AtomicU64,
    /// Impressions acknowledged.
    pub acked: AtomicU64,
    /// Requests that failed (any non-success).
    pub failures: AtomicU64,
}

/// Counts of one task, or of the whole run once merged.
#[derive(Clone, Debug)]
pub struct Tally {
    /// Requests sent.
    pub requests: u64,
    /// Requests that got an HTTP answer (any status).
    pub answered: u64,
    /// Impressions sent.
    pub impressions: u64,
    /// Impressions acknowledged.
    pub acked: u64,
    /// Impressions refused (not counted for sure).
    pub rejected: u64,
    /// Impressions with an unknown outcome.
    pub unknown: u64,
    /// Requests answered with a status other than success, by status.
    pub status_errors: BTreeMap<u16, u64>,
    /// Batch items rejected inside a 202 answer, by their code.
    pub item_errors: BTreeMap<u16, u64>,
    /// Requests without a (usable) answer, by kind; connection attempts that
    /// failed count under `connect`.
    pub transport_errors: BTreeMap<&'static str, u64>,
    /// Latency of answered requests, microseconds.
    pub latency: Histogram<u64>,
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            requests: 0,
            answered: 0,
            impressions: 0,
            acked: 0,
            rejected: 0,
            unknown: 0,
            status_errors: BTreeMap::new(),
            item_errors: BTreeMap::new(),
            transport_errors: BTreeMap::new(),
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
        })
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.answered += other.answered;
        self.impressions += other.impressions;
        self.acked += other.acked;
        self.rejected += other.rejected;
        self.unknown += other.unknown;
        for (k, v) in &other.status_errors {
            *self.status_errors.entry(*k).or_default() += v;
        }
        for (k, v) in &other.item_errors {
            *self.item_errors.entry(*k).or_default() += v;
        }
        for (k, v) in &other.transport_errors {
            *self.transport_errors.entry(k).or_default() += v;
        }
        // Same bounds on both sides, so this cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    fn transport(&mut self, kind: &'static str) {
        *self.transport_errors.entry(kind).or_default() += 1;
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct RunResult {
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// All tasks' counts.
    pub tally: Tally,
    /// The run was cut short by Ctrl-C.
    pub interrupted: bool,
}

/// A run that could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The histogram could not be created (bad bounds: a bug).
    #[error("latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    /// The first connections could not be opened.
    #[error(transparent)]
    Connect(#[from] ClientError),
}

/// Everything a connection task reads.
struct Ctx {
    plan: RunPlan,
    workload: Workload,
    ledger: Arc<Ledger>,
    target: Target,
    live: Arc<Live>,
    next_request: AtomicU64,
    schedule: Option<Schedule>,
    deadline: Option<Instant>,
}

/// Runs the load. `stop` turning true (Ctrl-C) ends it early.
#[expect(
    clippy::too_many_arguments,
    reason = "each is a distinct input of the run"
)]
pub async fn run(
    plan: RunPlan,
    workload: Workload,
    ledger: Arc<Ledger>,
    target: Target,
    campaigns: Vec<String>,
    live: Arc<Live>,
    progress: Progress,
    stop: watch::Receiver<bool>,
) -> Result<RunResult, RunError> {
    let empty = Tally::new()?;
    // Connect everything before the clock starts: connection set-up is not
    // part of the measured load, and a server that is not there fails fast.
    let mut conns = Vec::with_capacity(plan.connections as usize);
    for _ in 0..plan.connections {
        conns.push(Conn::connect(target.addr, plan.timeout).await?);
    }

    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        schedule: plan
            .rate
            .map(|rate| Schedule::new(start, rate, plan.per_request)),
        deadline: match plan.limit {
            Limit::Duration(d) => Some(start + d),
            Limit::Count(_) => None,
        },
        plan,
        workload,
        ledger,
        target,
        live: Arc::clone(&live),
        next_request: AtomicU64::new(0),
    });

    let ticker = tokio::spawn(progress.clone().tick_until_done(start, Arc::clone(&live)));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let encoder = Encoder::new(
                ctx.plan.mode,
                ctx.plan.ndjson,
                ctx.target.clone(),
                campaigns.clone(),
            );
            tokio::spawn(connection_task(
                Arc::clone(&ctx),
                conn,
                encoder,
                empty.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let mut tally = empty;
    for task in tasks {
        match task.await {
            Ok(t) => tally.merge(&t),
            // A panicking task is a bug; its requests are lost to the counts,
            // and saying so beats aborting the whole report.
            Err(e) => eprintln!("a connection task failed: {e}"),
        }
    }
    let elapsed = start.elapsed();
    ticker.abort();
    progress.finish();
    Ok(RunResult {
        elapsed,
        tally,
        interrupted: *stop.borrow(),
    })
}

/// Waits until `at`, or until a stop is requested; returns false on stop.
async fn wait_until(at: Instant, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep_until(at) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

async fn connection_task(
    ctx: Arc<Ctx>,
    conn: Conn,
    mut encoder: Encoder,
    mut tally: Tally,
    mut stop: watch::Receiver<bool>,
) -> Tally {
    let mut conn = Some(conn);
    let mut keys: Vec<Key> = Vec::with_capacity(ctx.plan.per_request as usize);
    let mut connect_failures = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        // A usable connection first, so a dead one never costs a request.
        let usable = match &mut conn {
            Some(c) => c.ready().await,
            None => false,
        };
        if !usable {
            conn = None;
            match Conn::connect(ctx.target.addr, ctx.plan.timeout).await {
                Ok(c) => {
                    conn = Some(c);
                    connect_failures = 0;
                }
                Err(e) => {
                    tally.transport(e.kind());
                    connect_failures += 1;
                    if connect_failures >= MAX_CONNECT_FAILURES
                        || !wait_until(Instant::now() + RECONNECT_BACKOFF, &mut stop).await
                    {
                        break;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };

        let r = ctx.next_request.fetch_add(1, Ordering::Relaxed);
        let Some(range) = ctx.plan.impressions_of(r) else {
            break;
        };
        let intended = match &ctx.schedule {
            Some(schedule) => {
                let due = schedule.at(r);
                if ctx.deadline.is_some_and(|d| due >= d) {
                    break;
                }
                // Wake up to one timer tick early (see TIMER_SLACK).
                let wake = due.checked_sub(TIMER_SLACK).unwrap_or(due);
                if wake > Instant::now() && !wait_until(wake, &mut stop).await {
                    break;
                }
                due
            }
            None => {
                let now = Instant::now();
                if ctx.deadline.is_some_and(|d| now >= d) {
                    break;
                }
                now
            }
        };

        keys.clear();
        keys.extend(range.map(|i| ctx.workload.key(i)));
        let n = keys.len() as u64;
        let req = encoder.request(&keys);
        // Latency counts from the scheduled time when sent late (waiting for
        // a busy connection is the server's latency), from the send when
        // sent early (see TIMER_SLACK). Closed loop: both are "now".
        let since = intended.min(Instant::now());
        let result = c.send(req, ctx.plan.timeout).await;
        tally.requests += 1;
        tally.impressions += n;
        ctx.live.impressions.fetch_add(n, Ordering::Relaxed);

        let answer = match result {
            Ok(a) => a,
            Err(e) => {
                // No answer: the server may or may not have queued them.
                tally.transport(e.kind());
                record_unknown(&ctx, &mut tally, &keys);
                ctx.live.failures.fetch_add(1, Ordering::Relaxed);
                conn = None;
                continue;
            }
        };
        tally.answered += 1;
        let micros = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        tally.latency.saturating_record(micros.max(1));

        match classify(ctx.plan.mode, keys.len(), answer.status, &answer.body) {
            Verdict::Acked => {
                for &k in &keys {
                    ctx.ledger.acked(k);
                }
                tally.acked += n;
                ctx.live.acked.fetch_add(n, Ordering::Relaxed);
            }
            Verdict::Partial(rejected) => {
                // `rejected` is sorted by index (classify checked it).
                let mut next = rejected.iter().peekable();
                let mut acked = 0;
                for (i, &k) in keys.iter().enumerate() {
                    if let Some(r) = next.next_if(|r| r.index == i) {
                        *tally.item_errors.entry(r.code).or_default() += 1;
                        tally.rejected += 1;
                    } else {
                        ctx.ledger.acked(k);
                        acked += 1;
                    }
                }
                tally.acked += acked;
                ctx.live.acked.fetch_add(acked, Ordering::Relaxed);
            }
            Verdict::Refused => {
                *tally
                    .status_errors
                    .entry(answer.status.as_u16())
                    .or_default() += 1;
                tally.rejected += n;
                ctx.live.failures.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Unknown => {
                if answer.status.is_success() {
                    tally.transport("malformed_answer");
                } else {
                    *tally
                        .status_errors
                        .entry(answer.status.as_u16())
                        .or_default() += 1;
                }
                record_unknown(&ctx, &mut tally, &keys);
                ctx.live.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tally
}

fn record_unknown(ctx: &Ctx, tally: &mut Tally, keys: &[Key]) {
    for &k in keys {
        ctx.ledger.unknown(k);
    }
    tally.unknown += keys.len() as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(limit: Limit, per_request: u32) -> RunPlan {
        RunPlan {
            mode: Mode::Batch,
            ndjson: false,
            limit,
            per_request,
            rate: None,
            connections: 1,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn count_limit_splits_into_requests() {
        let p = plan(Limit::Count(25), 10);
        assert_eq!(p.impressions_of(0), Some(0..10));
        assert_eq!(p.impressions_of(1), Some(10..20));
        assert_eq!(p.impressions_of(2), Some(20..25), "the last batch is short");
        assert_eq!(p.impressions_of(3), None);
        assert_eq!(p.impressions_of(u64::MAX), None);
        let p = plan(Limit::Duration(Duration::from_secs(1)), 1);
        assert_eq!(p.impressions_of(7), Some(7..8));
    }

    #[test]
    fn schedule_is_evenly_spaced_from_the_start() {
        let start = Instant::now();
        // 1,000 impressions/s, one per request: every millisecond.
        let s = Schedule::new(start, 1000.0, 1);
        assert_eq!(s.at(0), start);
        assert_eq!(s.at(1) - start, Duration::from_millis(1));
        assert_eq!(s.at(1500) - start, Duration::from_millis(1500));
        // 10,000 impressions/s in batches of 1,000: ten requests a second.
        let s = Schedule::new(start, 10_000.0, 1000);
        assert_eq!(s.at(3) - start, Duration::from_millis(300));
        // Computed, not accumulated: no drift after many requests.
        let s = Schedule::new(start, 3.0, 1);
        let late = s.at(3_000_000) - start;
        assert!(late.abs_diff(Duration::from_secs(1_000_000)) < Duration::from_micros(1));
    }

    #[test]
    fn schedule_is_monotonic() {
        let start = Instant::now();
        let s = Schedule::new(start, 7_777.0, 3);
        let mut prev = s.at(0);
        for r in 1..10_000 {
            let t = s.at(r);
            assert!(t > prev);
            prev = t;
        }
    }

    #[test]
    fn tallies_merge() {
        let mut a = Tally::new().unwrap();
        let mut b = Tally::new().unwrap();
        a.requests = 2;
        a.status_errors.insert(503, 1);
        a.latency.record(100).unwrap();
        b.requests = 3;
        b.status_errors.insert(503, 2);
        b.status_errors.insert(400, 1);
        b.transport("timeout");
        b.latency.record(300).unwrap();
        a.merge(&b);
        assert_eq!(a.requests, 5);
        assert_eq!(a.status_errors, BTreeMap::from([(400, 1), (503, 3)]));
        assert_eq!(a.transport_errors, BTreeMap::from([("timeout", 1)]));
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.latency.max(), 300);
    }
}
