//! The ingest pipeline: a bounded queue between the track handlers and a
//! pool of workers that apply impressions to the store in batches.
//!
//! * Handlers validate synchronously, then [`IngestQueue::submit`] a
//!   [`Queued`] impression. When the queue is full they wait at most the
//!   configured enqueue timeout, then give up with [`SubmitError::Full`] (the
//!   client gets 503 and `Retry-After`): back-pressure, never unbounded memory.
//! * Each queued impression may carry a [`Completion`]: a one-shot channel
//!   the worker answers once the batch holding it was applied. `?wait=true`
//!   uses it, and so does every request on a backend that acknowledges only
//!   after writing (durable log, Redis).
//! * [`Workers`] take up to [`MAX_WORKER_BATCH`] impressions at a time
//!   (`recv_many`), so a busy queue turns into large batches and an idle one
//!   into batches of one with no added latency.
//!
//! Shutdown drains: [`Workers::drain`] closes the queue to new impressions,
//! applies everything already in it, and only then returns, so nothing that
//! was acknowledged is dropped.

use std::sync::Arc;
use std::time::Duration;

use impression_core::{Clock, Impression, TrackOutcome};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::MAX_WORKER_BATCH;
use crate::metrics::Metrics;
use crate::storage::{Store, StoreError};

/// Answers one queued impression once its batch was applied.
pub type Completion = oneshot::Sender<Result<TrackOutcome, StoreError>>;

/// An impression waiting for a worker.
#[derive(Debug)]
pub struct Queued {
    /// The validated impression, stamped with its receive time.
    pub impression: Impression,
    /// Who to tell when it has been applied, if anyone is waiting.
    pub completion: Option<Completion>,
}

/// Why an impression could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue stayed full for the whole enqueue timeout.
    #[error("the impression queue is full")]
    Full,
    /// The service is shutting down.
    #[error("the service is shutting down")]
    Closed,
}

/// The sending side of the queue, cloned into every handler.
#[derive(Clone, Debug)]
pub struct IngestQueue {
    tx: mpsc::Sender<Queued>,
    enqueue_timeout: Duration,
}

impl IngestQueue {
    /// A queue holding at most `capacity` impressions, and its receiving end
    /// for [`Workers::spawn`].
    pub fn new(capacity: usize, enqueue_timeout: Duration) -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            IngestQueue {
                tx,
                enqueue_timeout,
            },
            rx,
        )
    }

    /// Queues an impression, waiting at most the enqueue timeout for room.
    pub async fn submit(&self, item: Queued) -> Result<(), SubmitError> {
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SubmitError::Closed),
            Err(mpsc::error::TrySendError::Full(item)) => {
                match tokio::time::timeout(self.enqueue_timeout, self.tx.send(item)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(SubmitError::Closed),
                    Err(_) => Err(SubmitError::Full),
                }
            }
        }
    }

    /// Impressions waiting in the queue now.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// The worker pool; dropping it without [`Workers::drain`] abandons the queue.
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

/// What a worker needs, shared by all of them.
struct WorkerContext {
    rx: Mutex<mpsc::Receiver<Queued>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` workers on the current runtime.
    pub fn spawn(
        count: usize,
        rx: mpsc::Receiver<Queued>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let stop = CancellationToken::new();
        let ctx = Arc::new(WorkerContext {
            rx: Mutex::new(rx),
            store,
            clock,
            metrics,
            stop: stop.clone(),
        });
        let handles = (0..count.max(1))
            .map(|_| tokio::spawn(run_worker(Arc::clone(&ctx))))
            .collect();
        Workers { handles, stop }
    }

    /// Closes the queue, applies everything still in it, and waits for every
    /// worker to finish.
    pub async fn drain(self) {
        self.stop.cancel();
        for handle in self.handles {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "an ingest worker failed");
            }
        }
    }
}

async fn run_worker(ctx: Arc<WorkerContext>) {
    let mut queued = Vec::with_capacity(MAX_WORKER_BATCH);
    let mut batch = Vec::with_capacity(MAX_WORKER_BATCH);
    let mut completions = Vec::with_capacity(MAX_WORKER_BATCH);
    loop {
        // One worker at a time waits on the queue; the others apply batches.
        let received = {
            let mut rx = ctx.rx.lock().await;
            tokio::select! {
                biased;
                n = rx.recv_many(&mut queued, MAX_WORKER_BATCH) => n,
                () = ctx.stop.cancelled() => {
                    // Refuse new impressions, keep the ones already queued.
                    rx.close();
                    rx.recv_many(&mut queued, MAX_WORKER_BATCH).await
                }
            }
        };
        if received == 0 {
            return; // closed and empty
        }
        for q in queued.drain(..) {
            batch.push(q.impression);
            completions.push(q.completion);
        }
        apply(&ctx, &batch, &mut completions).await;
        batch.clear();
    }
}

async fn apply(
    ctx: &WorkerContext,
    batch: &[Impression],
    completions: &mut Vec<Option<Completion>>,
) {
    match ctx.store.apply(batch, ctx.clock.now()).await {
        Ok(outcomes) => {
            ctx.metrics.batch_applied(&outcomes);
            for (completion, outcome) in completions.drain(..).zip(outcomes) {
                if let Some(c) = completion {
                    // The waiter may have gone (client disconnected): fine.
                    let _ = c.send(Ok(outcome));
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, size = batch.len(), "failed to apply a batch");
            ctx.metrics.batch_failed(batch.len());
            for c in completions.drain(..).flatten() {
                let _ = c.send(Err(e.clone()));
            }
        }
    }
    completions.clear();
}

/// Runs the store's housekeeping about once a second until `stop`.
pub fn spawn_maintenance(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => store.maintain(clock.now()).await,
            }
        }
    })
}
