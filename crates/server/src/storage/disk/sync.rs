//! When the log reaches the disk: the fsync thread and group commit.
//!
//! Writers append to the log (a `write` into the page cache, which survives
//! a crash of the process) and tell the [`Syncer`] how far they wrote. A
//! dedicated thread calls `fdatasync`:
//!
//! * `always`: as soon as anything is unsynced. Writers that need durability
//!   wait on [`Syncer::wait_durable`]; all writes made while one fsync runs
//!   are covered by the next one, so a burst of writers shares a few fsyncs
//!   (group commit) instead of paying one each.
//! * `everysec`: once a second when anything is unsynced; nobody waits, and
//!   a power loss loses at most about the last second.
//! * `no`: never (the OS writes back on its own schedule); rotation and a
//!   clean shutdown still fsync.
//!
//! Offsets are a byte count over the whole log since start-up, so they keep
//! growing across segment files.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::FsyncPolicy;

/// Why the log could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// `fdatasync` failed: nothing written after the last good one can be
    /// promised.
    #[error("fsync of the log failed")]
    Fsync(#[source] std::io::Error),
    /// The fsync thread is gone.
    #[error("the fsync thread stopped")]
    Stopped,
}

/// How far the log is durable, or why it cannot be.
#[derive(Clone, Debug, Default)]
pub struct SyncStatus {
    /// Log offset up to which everything is on disk.
    pub synced: u64,
    /// Set when an fsync failed: nothing after it can be promised.
    pub failed: Option<Arc<SyncError>>,
}

struct State {
    file: Arc<File>,
    written: u64,
    synced: u64,
    stop: bool,
}

struct Shared {
    policy: FsyncPolicy,
    state: Mutex<State>,
    wake: Condvar,
    status: watch::Sender<SyncStatus>,
}

/// The fsync thread and the way to wait for it.
pub struct Syncer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Syncer {
    /// Starts syncing `file`, whose content up to `offset` is already durable.
    pub fn start(policy: FsyncPolicy, file: Arc<File>, offset: u64) -> Self {
        let (status, _) = watch::channel(SyncStatus {
            synced: offset,
            failed: None,
        });
        let shared = Arc::new(Shared {
            policy,
            state: Mutex::new(State {
                file,
                written: offset,
                synced: offset,
                stop: false,
            }),
            wake: Condvar::new(),
            status,
        });
        let thread = (policy != FsyncPolicy::No).then(|| {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("log-fsync".into())
                .spawn(move || run(&shared))
                .ok()
        });
        Syncer {
            shared,
            thread: Mutex::new(thread.flatten()),
        }
    }

    /// Notes that the log now reaches `offset`.
    pub fn written(&self, offset: u64) {
        let mut state = self.lock();
        state.written = state.written.max(offset);
        if self.shared.policy == FsyncPolicy::Always {
            self.shared.wake.notify_one();
        }
    }

    /// The log moved to a new segment file; everything up to `offset` was
    /// synced by the writer while rotating.
    pub fn switch_file(&self, file: Arc<File>, offset: u64) {
        let mut state = self.lock();
        state.file = file;
        state.written = state.written.max(offset);
        state.synced = state.synced.max(offset);
        let synced = state.synced;
        self.shared
            .status
            .send_modify(|s| s.synced = s.synced.max(synced));
    }

    /// Waits until the log is durable up to `offset`.
    pub async fn wait_durable(&self, offset: u64) -> Result<(), Arc<SyncError>> {
        let mut status = self.shared.status.subscribe();
        let status = status
            .wait_for(|s| s.synced >= offset || s.failed.is_some())
            .await
            .map_err(|_| Arc::new(SyncError::Stopped))?;
        match &status.failed {
            Some(e) if status.synced < offset => Err(Arc::clone(e)),
            _ => Ok(()),
        }
    }

    /// Syncs what is left and stops the thread (blocking: it joins the
    /// thread and fsyncs).
    pub fn stop(&self) -> Result<(), Arc<SyncError>> {
        {
            let mut state = self.lock();
            state.stop = true;
            self.shared.wake.notify_one();
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        // Whatever the policy, a clean shutdown leaves the log on disk.
        let file = Arc::clone(&self.lock().file);
        file.sync_data()
            .map_err(|e| Arc::new(SyncError::Fsync(e)))?;
        let failed = self.shared.status.borrow().failed.clone();
        failed.map_or(Ok(()), Err)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn run(shared: &Shared) {
    const TICK: Duration = Duration::from_secs(1);
    let mut next_tick = Instant::now() + TICK;
    loop {
        let (file, target) = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if state.stop {
                    return;
                }
                let pending = state.written > state.synced;
                let wait = match shared.policy {
                    FsyncPolicy::Always if pending => break,
                    FsyncPolicy::Always => Duration::from_secs(3600),
                    _ => {
                        let now = Instant::now();
                        if now >= next_tick {
                            next_tick = now + TICK;
                            if pending {
                                break;
                            }
                        }
                        next_tick - now.min(next_tick)
                    }
                };
                state = shared
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            (Arc::clone(&state.file), state.written)
        };
        let result = file.sync_data();
        let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => {
                // A rotation may have moved `synced` past `target` already.
                state.synced = state.synced.max(target);
                let synced = state.synced;
                shared
                    .status
                    .send_modify(|s| s.synced = s.synced.max(synced));
            }
            Err(e) => {
                let e = Arc::new(SyncError::Fsync(e));
                tracing::error!(error = %crate::telemetry::chain(&*e), "fsync of the log failed");
                shared.status.send_modify(|s| s.failed = Some(e));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn always_makes_waiters_durable_and_groups_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("log")).unwrap();
        file.write_all(b"0123456789").unwrap();
        let file = Arc::new(file);
        let syncer = Arc::new(Syncer::start(FsyncPolicy::Always, Arc::clone(&file), 0));
        let waiters: Vec<_> = (1..=10u64)
            .map(|offset| {
                let syncer = Arc::clone(&syncer);
                syncer.written(offset);
                tokio::spawn(async move { syncer.wait_durable(offset).await })
            })
            .collect();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert!(syncer.shared.status.borrow().synced >= 10);
        syncer.stop().unwrap();
    }

    #[tokio::test]
    async fn everysec_and_no_do_not_make_writers_wait_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        for policy in [FsyncPolicy::Everysec, FsyncPolicy::No] {
            let file = Arc::new(File::create(dir.path().join("log")).unwrap());
            let syncer = Syncer::start(policy, file, 0);
            syncer.written(5);
            // Already durable positions return at once.
            syncer.wait_durable(0).await.unwrap();
            syncer.stop().unwrap();
        }
    }
}
