//! The ingest pipeline: a bounded queue between the track handlers and a
//! pool of workers that apply impressions to the store in batches.
//!
//! * Handlers validate synchronously, then [`IngestQueue::submit`] a job: the
//!   impressions of one request (one for a single track or a pixel, up to
//!   the batch limit for a batch request).
//! * The queue is bounded in *impressions*, not jobs: a job takes one unit of
//!   room per impression and gives it back once applied. A job larger than
//!   the whole queue waits until the queue is empty and then fills it. When
//!   there is no room, the handler waits at most the enqueue timeout, then
//!   gives up with [`SubmitError::Full`] (the client gets 503 and
//!   `Retry-After`): back-pressure, never unbounded memory.
//! * A job may carry a [`Completion`]: a one-shot channel the worker answers
//!   with one outcome per impression once they were applied. `?wait=true`
//!   uses it, and so does every request on a backend that acknowledges only
//!   after writing (durable log, Redis).
//! * [`Workers`] take up to 64 jobs at a time and apply their impressions in
//!   chunks of at most [`MAX_WORKER_BATCH`], so a busy queue turns into large
//!   batches, an idle one into batches of one with no added latency, and no
//!   chunk keeps a runtime thread busy for long. A worker woken by one job
//!   lets the other ready tasks of its thread run once before it takes the
//!   queue's contents, so single-impression requests arriving together are
//!   applied together (see `gather_more`). The room of a turn's jobs goes
//!   back to the queue at once, after they were applied and answered.
//!
//! Shutdown drains: [`Workers::drain`] closes the queue to new jobs, applies
//! everything already in it, and only then returns, so nothing that was
//! acknowledged is dropped.

use std::sync::Arc;
use std::time::Duration;

use impression_core::{Clock, Impression, TrackOutcome};
use tokio::sync::{Mutex, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{CountedBySource, IdSource, Metrics};
use crate::storage::{Store, StoreError};
use crate::telemetry::chain;

/// The queue and its workers, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct IngestSettings {
    /// Impressions the queue holds (`IMPRESSIONS_QUEUE_SIZE`).
    pub queue_size: usize,
    /// Workers draining it.
    pub workers: usize,
    /// How long a handler waits for room before answering 503.
    pub enqueue_timeout: Duration,
}

/// Most impressions a worker applies in one call to the store: large enough
/// that a busy queue is applied in few calls, small enough that no call
/// holds a runtime thread (or a Redis script) for long.
pub const MAX_WORKER_BATCH: usize = 1024;

/// How late an impression may reach the engine after it was received: the
/// time it can spend in the queue. Dedup entries are kept this much longer
/// than the TTL so such an impression still finds its key. Generous on
/// purpose: it costs memory only in proportion to `INGEST_GRACE / TTL`.
pub const INGEST_GRACE: Duration = Duration::from_secs(30);

/// Answers a job once its impressions were applied: one outcome each, in order.
pub type Completion = oneshot::Sender<Result<Vec<TrackOutcome>, StoreError>>;

/// Jobs a worker takes off the queue at once.
const MAX_JOBS_PER_TURN: usize = 64;

/// One request's impressions, waiting for a worker.
struct Job {
    impressions: Vec<Impression>,
    completion: Option<Completion>,
    /// Where the impressions' user ids came from, for the counted metric
    /// (one per job: a request's ids all come from one place).
    source: IdSource,
    /// Units of queue room the job holds, given back by the worker once a
    /// turn's jobs were applied.
    room: u32,
}

/// Why impressions could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue stayed full for the whole enqueue timeout.
    #[error("the impression queue is full")]
    Full,
    /// The service is shutting down.
    #[error("the service is shutting down")]
    Closed,
}

/// The sending side of the queue, shared by every handler.
#[derive(Clone, Debug)]
pub struct IngestQueue {
    tx: mpsc::UnboundedSender<Job>,
    room: Arc<Semaphore>,
    capacity: u32,
    enqueue_timeout: Duration,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("impressions", &self.impressions.len())
            .finish_non_exhaustive()
    }
}

/// The receiving end of an [`IngestQueue`], for [`Workers::spawn`].
pub struct QueueReceiver {
    rx: mpsc::UnboundedReceiver<Job>,
    room: Arc<Semaphore>,
}

impl IngestQueue {
    /// A queue holding at most `capacity` impressions, and its receiving end.
    pub fn new(capacity: usize, enqueue_timeout: Duration) -> (Self, QueueReceiver) {
        let capacity = u32::try_from(capacity.max(1)).unwrap_or(u32::MAX);
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(capacity as usize));
        (
            IngestQueue {
                tx,
                room: Arc::clone(&room),
                capacity,
                enqueue_timeout,
            },
            QueueReceiver { rx, room },
        )
    }

    /// Queues one request's impressions, waiting at most the enqueue timeout
    /// for room. `completion`, if given, is answered once they were applied.
    /// Their user ids came in a JSON body ([`IdSource::Body`]).
    pub async fn submit(
        &self,
        impressions: Vec<Impression>,
        completion: Option<Completion>,
    ) -> Result<(), SubmitError> {
        self.submit_from(impressions, completion, IdSource::Body)
            .await
    }

    /// [`IngestQueue::submit`], for impressions whose user ids came from
    /// `source`.
    pub async fn submit_from(
        &self,
        impressions: Vec<Impression>,
        completion: Option<Completion>,
        source: IdSource,
    ) -> Result<(), SubmitError> {
        let wanted = u32::try_from(impressions.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity);
        // The permits are forgotten, not held: the worker gives a whole
        // turn's room back at once (`Semaphore::add_permits` takes the
        // waiters' lock, which once per job would be a second write to
        // shared state on every request).
        match self.room.try_acquire_many(wanted) {
            Ok(room) => room.forget(),
            Err(TryAcquireError::Closed) => return Err(SubmitError::Closed),
            Err(TryAcquireError::NoPermits) => {
                let waiting = self.room.acquire_many(wanted);
                match tokio::time::timeout(self.enqueue_timeout, waiting).await {
                    Ok(Ok(room)) => room.forget(),
                    Ok(Err(_)) => return Err(SubmitError::Closed),
                    Err(_) => return Err(SubmitError::Full),
                }
            }
        }
        self.tx
            .send(Job {
                impressions,
                completion,
                source,
                room: wanted,
            })
            .map_err(|e| {
                self.room.add_permits(e.0.room as usize);
                SubmitError::Closed
            })
    }

    /// The most impressions the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Impressions queued or being applied now.
    pub fn depth(&self) -> usize {
        (self.capacity as usize).saturating_sub(self.room.available_permits())
    }
}

/// The worker pool; dropping it without [`Workers::drain`] abandons the queue.
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

/// What a worker needs, shared by all of them.
struct WorkerContext {
    rx: Mutex<mpsc::UnboundedReceiver<Job>>,
    room: Arc<Semaphore>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` workers on the current runtime.
    pub fn spawn(
        count: usize,
        rx: QueueReceiver,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let stop = CancellationToken::new();
        let ctx = Arc::new(WorkerContext {
            rx: Mutex::new(rx.rx),
            room: rx.room,
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
    let mut jobs = Vec::with_capacity(MAX_JOBS_PER_TURN);
    loop {
        // One worker at a time waits on the queue; the others apply batches.
        let received = {
            let mut rx = ctx.rx.lock().await;
            let received = tokio::select! {
                biased;
                n = rx.recv_many(&mut jobs, MAX_JOBS_PER_TURN) => n,
                () = ctx.stop.cancelled() => {
                    // Refuse new jobs, keep the ones already queued.
                    rx.close();
                    rx.recv_many(&mut jobs, MAX_JOBS_PER_TURN).await
                }
            };
            if received > 0 && received < MAX_JOBS_PER_TURN {
                gather_more(&mut rx, &mut jobs).await;
            }
            received
        };
        if received == 0 {
            return; // closed and empty
        }
        let room = RoomBack {
            room: &ctx.room,
            units: jobs.iter().map(|j| j.room as usize).sum(),
        };
        apply_jobs(&ctx, &mut jobs).await;
        drop(room);
    }
}

/// Lets the other tasks of this runtime thread run once, then takes what
/// they queued meanwhile into the same turn.
///
/// Under load, single-impression requests arrive one job each; a worker
/// woken by the first would otherwise make a turn (and a wake-up, a batch,
/// a lock of each dedup shard and campaign it touches) for nearly every
/// request. tokio runs a yielded task again only after the thread's other
/// ready tasks (each request ready on its connections), so this costs no
/// more than one round of the scheduler in latency, and at low load, where
/// nothing else is ready, nothing at all.
async fn gather_more(rx: &mut mpsc::UnboundedReceiver<Job>, jobs: &mut Vec<Job>) {
    tokio::task::yield_now().await;
    while jobs.len() < MAX_JOBS_PER_TURN {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

/// Gives a turn's queue room back when dropped: once the turn's jobs were
/// answered, or if the worker unwinds.
struct RoomBack<'a> {
    room: &'a Semaphore,
    units: usize,
}

impl Drop for RoomBack<'_> {
    fn drop(&mut self) {
        self.room.add_permits(self.units);
    }
}

/// Applies the jobs' impressions in chunks and answers each job. A chunk
/// that fails stops the turn: its jobs and every later one get the error
/// (a client retrying a whole batch is safe: what was counted before is now
/// a duplicate).
async fn apply_jobs(ctx: &WorkerContext, jobs: &mut Vec<Job>) {
    let lengths: Vec<usize> = jobs.iter().map(|j| j.impressions.len()).collect();
    let total: usize = lengths.iter().sum();
    let mut outcomes: Vec<TrackOutcome> = Vec::with_capacity(total);
    let mut failure: Option<StoreError> = None;
    // One vector for the turn: the first job's, with the others appended.
    let mut all = match jobs.first_mut() {
        Some(first) => std::mem::take(&mut first.impressions),
        None => return,
    };
    all.reserve(total - all.len());
    for job in jobs.iter_mut().skip(1) {
        all.append(&mut job.impressions);
    }
    // No yield between chunks: a chunk large enough to hold up the runtime
    // thread is applied on a bulk thread while another thread takes over
    // this one's tasks (see `crate::bulk`), and a yield would let the turn
    // wait behind every ready request.
    for chunk in all.chunks(MAX_WORKER_BATCH) {
        match ctx.store.apply(chunk, ctx.clock.now()).await {
            Ok(applied) => {
                ctx.metrics.batch_applied(&applied);
                outcomes.extend(applied);
            }
            Err(e) => {
                let unapplied = total - outcomes.len();
                tracing::error!(error = %chain(&e), unapplied, "failed to apply a batch");
                ctx.metrics.batch_failed(unapplied);
                failure = Some(e);
                break;
            }
        }
    }
    drop(all);

    // Each job's outcomes are a slice of the turn's, in job order; a job
    // the failure cut short has fewer than its length. Its counted ones
    // were counted all the same, so they are tallied whatever the answer.
    let mut counted = CountedBySource::default();
    let mut at = 0;
    let mut failed = false;
    for (job, len) in jobs.drain(..).zip(lengths) {
        let end = (at + len).min(outcomes.len());
        let applied = outcomes.get(at..end).unwrap_or_default();
        at = end;
        let n = applied
            .iter()
            .filter(|o| **o == TrackOutcome::Counted)
            .count();
        counted.add(job.source, n as u64);
        failed = failed || applied.len() < len;
        if let Some(completion) = job.completion {
            let answer = match &failure {
                Some(e) if failed => Err(e.clone()),
                _ => Ok(applied.to_vec()),
            };
            // The waiter may have gone (client disconnected): fine.
            let _ = completion.send(answer);
        }
    }
    ctx.metrics.impressions_counted(&counted);
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
