//! The live progress bar (indicatif), or nothing.
//!
//! It is drawn on stderr, and only when stdout is a terminal and `--quiet`
//! was not given: a run piped into a file or another program (or run by a
//! script collecting `--json -`) stays free of control characters. It reads
//! the shared [`Live`] counters a few times a second; the connection tasks
//! never touch it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::args::Limit;
use crate::run::Live;

/// How often the bar is refreshed.
const TICK: Duration = Duration::from_millis(250);

/// A progress bar, possibly hidden.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    limit: Limit,
}

impl Progress {
    /// A bar for a run of `limit`, shown only if `enabled`.
    pub fn new(limit: Limit, enabled: bool) -> Self {
        let bar = enabled.then(|| {
            let (len, template) = match limit {
                Limit::Count(n) => (n, "{bar:20} {pos}/{len}  {wide_msg}"),
                Limit::Duration(d) => (
                    u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                    "{bar:20} {elapsed}/{duration}  {wide_msg}",
                ),
            };
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        Self { bar, limit }
    }

    /// Refreshes the bar until the task is aborted.
    pub async fn tick_until_done(self, start: Instant, live: Arc<Live>) {
        let Some(bar) = &self.bar else { return };
        let mut interval = tokio::time::interval(TICK);
        let mut last = (start, 0u64);
        loop {
            interval.tick().await;
            let now = Instant::now();
            let sent = live.impressions.load(Ordering::Relaxed);
            let acked = live.acked.load(Ordering::Relaxed);
            let failures = live.failures.load(Ordering::Relaxed);
            let rate = (sent - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-9);
            last = (now, sent);
            match self.limit {
                Limit::Count(_) => bar.set_position(sent),
                Limit::Duration(_) => {
                    bar.set_position(u64::try_from((now - start).as_millis()).unwrap_or(0));
                }
            }
            bar.set_message(format!(
                "{sent} sent  {acked} acked  {failures} failed requests  {rate:.0}/s"
            ));
        }
    }

    /// Removes the bar once the run is over.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
