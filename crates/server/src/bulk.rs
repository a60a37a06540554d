//! Bulk work: the CPU-heavy part of ingest (parsing a large batch body,
//! applying a large batch to the engine) runs on a few low-priority threads
//! instead of the async runtime's, so that reads are served first.
//!
//! Why: at full ingest speed every core is busy. Work done on a runtime
//! thread holds up every request queued behind it on that thread, and work
//! handed off with `block_in_place` alone still competes for a core with the
//! runtime's threads on equal terms, so a read that wakes up waits for a
//! scheduler slice. Bulk threads run at a lower priority (see [`Priority`]):
//! when a runtime thread wakes for a request, the kernel gives it a bulk
//! thread's core first.
//!
//! * Applying runs at nice 5: it drains the ingest queue, and it must keep a
//!   real share of a busy machine.
//! * Parsing, the largest part of batch ingest, runs under `SCHED_IDLE`: at
//!   any nice value the kernel lets a running thread finish its time slice
//!   before a woken one runs, which holds a read for up to a couple of
//!   milliseconds; a `SCHED_IDLE` thread gives way at once. Parsing is not
//!   starved on an otherwise idle machine (it gets every cycle nothing else
//!   wants, and the clients that send it wait for its answers, so they
//!   cannot outrun it). On a machine busy with other work at normal
//!   priority it waits for that work; `BATCH_PARSE_PRIORITY` gives it a nice
//!   value instead ([`set_parse_priority`]).
//!
//! [`run`] is `block_in_place` plus a hop to a bulk pool: the runtime thread
//! hands its queue of tasks to another thread, then sleeps (using no CPU)
//! until a bulk thread has run the work. Because the caller waits, the work
//! may borrow from it, and the stores keep their `&self`, `&[Impression]`
//! signatures. Handing owned work over and awaiting it instead would wake a
//! runtime thread from a bulk thread for every answer, which puts reads
//! behind those wake-ups.
//!
//! Small work stays where it is: the hop costs two thread wake-ups, more
//! than parsing a small batch or counting a few impressions (see
//! [`is_large_batch`] and [`is_large_body`]). Each kind has a pool (rayon's,
//! one per process, started on first use) with one thread per core.
//! BENCHMARKS.md has the measurements behind these choices.

use std::future::Future;
use std::sync::OnceLock;

/// Applying at least this many impressions is bulk work.
pub const BULK_MIN_IMPRESSIONS: usize = 256;

/// Parsing a request body of at least this many bytes is bulk work (about
/// [`BULK_MIN_IMPRESSIONS`] impressions of JSON).
pub const BULK_MIN_BODY_BYTES: usize = 16 * 1024;

/// Whether applying `len` impressions is bulk work.
pub fn is_large_batch(len: usize) -> bool {
    len >= BULK_MIN_IMPRESSIONS
}

/// Whether parsing a body of `bytes` is bulk work.
pub fn is_large_body(bytes: usize) -> bool {
    bytes >= BULK_MIN_BODY_BYTES
}

/// What bulk work is: it decides the pool, and so the priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bulk {
    /// Applying impressions to the store (nice 5): it drains the ingest
    /// queue, so it comes before parsing, which fills it.
    Apply,
    /// Parsing and admitting a batch body (`SCHED_IDLE` unless
    /// [`set_parse_priority`] said otherwise).
    Parse,
}

/// The parse threads' priority: set once at start-up, fixed from the first
/// time it is read.
static PARSE_PRIORITY: OnceLock<Priority> = OnceLock::new();

/// Sets the priority of the threads that parse batch bodies (the
/// `BATCH_PARSE_PRIORITY` setting). Takes effect only before they start:
/// returns `false`, and changes nothing, once the priority has been read.
pub fn set_parse_priority(priority: Priority) -> bool {
    PARSE_PRIORITY.set(priority).is_ok()
}

/// A bulk thread's scheduling priority, at most the runtime threads' (nice 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// The normal policy at this nice value (0 is normal, 19 the lowest).
    Nice(i32),
    /// `SCHED_IDLE` on Linux: runs when nothing else wants the core, and a
    /// waking thread of normal priority takes the core at once. Nice 19
    /// elsewhere.
    Idle,
}

impl Bulk {
    /// The priority of this kind's threads. A thread may always lower its
    /// own priority but cannot raise it back without privileges, which is
    /// why bulk work has threads of its own.
    pub fn priority(self) -> Priority {
        match self {
            Bulk::Apply => Priority::Nice(5),
            Bulk::Parse => *PARSE_PRIORITY.get_or_init(|| Priority::Idle),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Bulk::Apply => "bulk-apply",
            Bulk::Parse => "bulk-parse",
        }
    }

    fn pool(self) -> Option<&'static rayon_core::ThreadPool> {
        static APPLY: OnceLock<Option<rayon_core::ThreadPool>> = OnceLock::new();
        static PARSE: OnceLock<Option<rayon_core::ThreadPool>> = OnceLock::new();
        let cell = match self {
            Bulk::Apply => &APPLY,
            Bulk::Parse => &PARSE,
        };
        cell.get_or_init(|| {
            rayon_core::ThreadPoolBuilder::new()
                .thread_name(move |i| format!("{}-{i}", self.name()))
                .start_handler(move |_| lower_priority(self.priority()))
                .build()
                .inspect_err(|e| {
                    tracing::error!(error = %e, "no bulk threads: bulk work runs in place");
                })
                .ok()
        })
        .as_ref()
    }
}

/// Lowers the calling thread's priority (on Linux, priorities are per
/// thread: this thread's only). A failure leaves the thread at normal
/// priority, which costs read latency, not correctness.
pub(crate) fn lower_priority(priority: Priority) {
    let lowered = match priority {
        Priority::Nice(nice) => set_nice(nice),
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Priority::Idle => {
            use thread_priority::{
                NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            };
            thread_priority::set_thread_priority_and_policy(
                thread_priority::thread_native_id(),
                ThreadPriority::Min,
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
            )
            .map_err(|e| e.to_string())
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        Priority::Idle => set_nice(19),
    };
    if let Err(error) = lowered {
        tracing::warn!(%error, ?priority, "could not lower a bulk thread's priority");
    }
}

fn set_nice(nice: i32) -> Result<(), String> {
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
        .map_err(|e| e.to_string())
}

/// Runs `work` on a thread of `kind`'s pool if it is `large` and the
/// calling thread can hand its tasks over (see `can_hand_off`); in place
/// otherwise. A panic in `work` resumes in the caller.
pub fn run<R: Send>(kind: Bulk, large: bool, work: impl FnOnce() -> R + Send) -> R {
    if !(large && can_hand_off()) {
        return work();
    }
    match kind.pool() {
        Some(pool) => tokio::task::block_in_place(|| pool.install(work)),
        None => tokio::task::block_in_place(work),
    }
}

/// Runs blocking work (an fsync, a thread join) without holding up the
/// runtime's other tasks: on a thread of a multi-threaded runtime, with
/// `block_in_place` (the thread hands its tasks to another first); in place
/// anywhere else.
pub fn blocking<R>(work: impl FnOnce() -> R) -> R {
    if can_hand_off() {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// [`run`] for async work (which may await the runtime's I/O): on a bulk
/// thread it is driven with the runtime's handle; in place it is awaited.
pub async fn run_async<F>(kind: Bulk, large: bool, work: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if !(large && can_hand_off()) {
        return work.await;
    }
    let runtime = tokio::runtime::Handle::current();
    run(kind, true, move || runtime.block_on(work))
}

/// Whether the calling thread can hand work off: it is a thread of a
/// multi-threaded tokio runtime. A current-thread runtime's only thread
/// cannot hand its tasks over, and outside a runtime (bulk threads
/// included) work simply runs where it is.
fn can_hand_off() -> bool {
    rayon_core::current_thread_index().is_none()
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran_on() -> (Option<String>, Priority) {
        let thread = std::thread::current().name().map(str::to_owned);
        (thread, current_priority())
    }

    /// The calling thread's priority, read back from the kernel.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn current_priority() -> Priority {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let policy = thread_priority::thread_schedule_policy();
        if policy.is_ok_and(|p| p == ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle))
        {
            return Priority::Idle;
        }
        let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        Priority::Nice(nice.unwrap_or(i32::MIN))
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn current_priority() -> Priority {
        // Elsewhere `Idle` is nice 19.
        match rustix::process::getpriority_process(None) {
            Ok(19) => Priority::Idle,
            nice => Priority::Nice(nice.unwrap_or(i32::MIN)),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn large_work_runs_on_its_kind_of_thread_at_its_priority() {
        assert_eq!(Bulk::Apply.priority(), Priority::Nice(5));
        assert_eq!(Bulk::Parse.priority(), Priority::Idle);
        for kind in [Bulk::Apply, Bulk::Parse] {
            let (name, priority) = run(kind, true, ran_on);
            assert!(
                name.as_deref().is_some_and(|n| n.starts_with(kind.name())),
                "{name:?}"
            );
            assert_eq!(priority, kind.priority());
        }
        // The runtime's own threads keep normal priority.
        assert_eq!(current_priority(), Priority::Nice(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn large_work_leaves_the_runtime_free_for_other_tasks() {
        // One runtime thread. The work blocks until another task has run,
        // which can only happen if the runtime thread was handed over.
        let (tx, rx) = std::sync::mpsc::channel();
        let work = tokio::spawn(async move {
            run(Bulk::Apply, true, move || {
                rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok()
            })
        });
        tokio::task::yield_now().await;
        let other = tokio::spawn(async move { tx.send(()).is_ok() });
        assert!(
            work.await.unwrap_or(false),
            "no other task ran while the work blocked"
        );
        assert!(other.await.unwrap_or(false));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn async_work_runs_on_a_bulk_thread_and_can_use_the_runtime() {
        let (value, name) = run_async(Bulk::Parse, true, async {
            let value = tokio::spawn(async { 7 }).await.unwrap_or(0);
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            (value, ran_on().0)
        })
        .await;
        assert_eq!(value, 7);
        assert!(name.is_some_and(|n| n.starts_with("bulk-parse-")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn small_work_runs_in_place() {
        let here = std::thread::current().id();
        let ran = run(Bulk::Apply, false, || std::thread::current().id());
        assert_eq!(ran, here);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_current_thread_runtime_work_runs_in_place() {
        // block_in_place would panic here.
        let here = std::thread::current().id();
        assert_eq!(run(Bulk::Apply, true, || std::thread::current().id()), here);
        let awaited = run_async(Bulk::Parse, true, async {
            tokio::task::yield_now().await;
            std::thread::current().id()
        })
        .await;
        assert_eq!(awaited, here);
    }

    #[test]
    fn outside_a_runtime_work_runs_in_place() {
        let here = std::thread::current().id();
        assert_eq!(run(Bulk::Apply, true, || std::thread::current().id()), here);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_panic_resumes_in_the_caller() {
        let caught =
            tokio::spawn(async { run(Bulk::Apply, true, || -> u8 { panic!("boom") }) }).await;
        assert!(caught.is_err_and(|e| e.is_panic()));
        // The pool survives it.
        assert_eq!(run(Bulk::Apply, true, || 3), 3);
    }
}
