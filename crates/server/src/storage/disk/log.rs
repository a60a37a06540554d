//! The append side of the log: the open segment, rotation, and the failure
//! latch.
//!
//! One writer at a time (the [`Log::lock`] guard) encodes a record and
//! appends it as one checksummed frame with a single `write`, so the log
//! order is the order in which writers held the lock. The
//! [`Syncer`](super::sync::Syncer) makes what was written durable.
//!
//! A full segment is closed with an fsync, so every closed segment is
//! complete on disk (recovery relies on it: a torn frame is only allowed at
//! the end of the last segment), and a new one is created. That is blocking
//! disk work under the writer lock; it runs through [`bulk::blocking`], so a
//! runtime thread that happens to rotate hands its other tasks over first.
//!
//! If a write or an fsync ever fails, the log is behind memory: the latch
//! ([`Log::check_writable`]) refuses every later write until a restart
//! rebuilds the state from what is on disk.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::layout::{LOG_MAGIC, LogPosition, segment_path};
use super::sync::Syncer;
use super::{DiskError, DiskOptions, frame, io_error};
use crate::bulk;

/// Why the log can no longer be written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Appending a frame failed.
    #[error("writing {path}")]
    Write {
        /// The segment.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Closing a full segment failed (its fsync, or creating the next one).
    #[error("rotating the log past {path}")]
    Rotate {
        /// The full segment.
        path: PathBuf,
        /// The cause.
        #[source]
        source: DiskError,
    },
    /// The fsync thread could not make the log durable.
    #[error(transparent)]
    Sync(Arc<super::sync::SyncError>),
}

/// The open segment and the encoding buffers.
pub struct Writer {
    segment: u64,
    file: Arc<File>,
    segment_len: u64,
    /// Bytes appended to the log since start-up, across segments.
    offset: u64,
    /// The record being encoded, by the holder of the lock.
    pub payload: Vec<u8>,
    framed: Vec<u8>,
}

impl Writer {
    /// The log offset after everything appended so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Where the next frame will be written.
    pub fn position(&self) -> LogPosition {
        LogPosition {
            segment: self.segment,
            offset: self.segment_len,
        }
    }
}

/// The log's append side.
pub struct Log {
    dir: PathBuf,
    options: DiskOptions,
    /// A `std` mutex rather than `parking_lot`'s: the holder runs a whole
    /// batch (engine and `write`), and `parking_lot` has its waiters spin
    /// and `sched_yield` before they sleep, which on a two-core machine
    /// took the CPU the holder needed (9% of the server's CPU in a profile
    /// of batch ingest, under 2% with this one).
    writer: std::sync::Mutex<Writer>,
    syncer: Syncer,
    /// Set once a write failed: memory is ahead of the log from then on.
    failed: Mutex<Option<Arc<LogError>>>,
}

/// What rotation tells its caller: a segment was closed.
pub struct Closed {
    /// The closed segment's length.
    pub bytes: u64,
}

impl Log {
    /// Starts appending to a new segment `segment` in `dir`.
    pub fn start(dir: &Path, options: DiskOptions, segment: u64) -> Result<Self, DiskError> {
        let file = Arc::new(create_segment(dir, segment)?);
        Ok(Log {
            dir: dir.to_owned(),
            options,
            syncer: Syncer::start(options.fsync, Arc::clone(&file), 0),
            writer: std::sync::Mutex::new(Writer {
                segment,
                file,
                segment_len: LOG_MAGIC.len() as u64,
                offset: 0,
                payload: Vec::new(),
                framed: Vec::new(),
            }),
            failed: Mutex::new(None),
        })
    }

    /// The segment being written: every one before it is closed.
    pub fn current_segment(&self) -> u64 {
        self.lock().segment
    }

    /// Takes the writer: the holder appends in log order.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        // Poisoning ignored, as with `parking_lot`: every append starts by
        // clearing the buffers, and a torn write trips the latch.
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err` once a write failed (see the module docs).
    pub fn check_writable(&self) -> Result<(), Arc<LogError>> {
        match self.failed.lock().as_ref() {
            None => Ok(()),
            Some(e) => Err(Arc::clone(e)),
        }
    }

    /// Latches `error`: nothing more is written.
    pub fn fail(&self, error: LogError) -> Arc<LogError> {
        let error = Arc::new(error);
        tracing::error!(
            error = %crate::telemetry::chain(&*error),
            "the durable log failed; refusing writes until restart"
        );
        Arc::clone(self.failed.lock().get_or_insert(error))
    }

    /// Appends the record in `w.payload` as one frame. Returns the log
    /// offset after it, and the segment closed if the append filled one.
    pub fn append(&self, w: &mut Writer) -> Result<(u64, Option<Closed>), Arc<LogError>> {
        w.framed.clear();
        frame::encode_frame(&mut w.framed, &w.payload);
        if let Err(source) = (&*w.file).write_all(&w.framed) {
            let path = segment_path(&self.dir, w.segment);
            return Err(self.fail(LogError::Write { path, source }));
        }
        w.segment_len += w.framed.len() as u64;
        w.offset += w.framed.len() as u64;
        self.syncer.written(w.offset);
        if w.segment_len < self.options.segment_bytes {
            return Ok((w.offset, None));
        }
        let closed = bulk::blocking(|| self.rotate(w)).map_err(|e| self.fail(e))?;
        Ok((w.offset, Some(closed)))
    }

    /// Closes the full segment (fsynced: closed segments are always complete)
    /// and starts the next one.
    fn rotate(&self, w: &mut Writer) -> Result<Closed, LogError> {
        let rotate_error = |source| LogError::Rotate {
            path: segment_path(&self.dir, w.segment),
            source,
        };
        w.file.sync_data().map_err(|source| {
            rotate_error(DiskError::Io {
                context: "fsync".into(),
                source,
            })
        })?;
        let next = w.segment + 1;
        let file = Arc::new(create_segment(&self.dir, next).map_err(rotate_error)?);
        self.syncer.switch_file(Arc::clone(&file), w.offset);
        let bytes = w.segment_len;
        w.file = file;
        w.segment = next;
        w.segment_len = LOG_MAGIC.len() as u64;
        Ok(Closed { bytes })
    }

    /// Waits for the log to be durable up to `offset` if the policy says
    /// acknowledgements wait for it.
    pub async fn durable(&self, offset: u64) -> Result<(), Arc<LogError>> {
        if self.options.fsync == super::FsyncPolicy::Always {
            self.syncer
                .wait_durable(offset)
                .await
                .map_err(|e| self.fail(LogError::Sync(e)))?;
        }
        Ok(())
    }

    /// Syncs what is left and stops the fsync thread (blocking: joins it).
    pub fn close(&self) -> Result<(), LogError> {
        self.syncer.stop().map_err(LogError::Sync)
    }
}

/// Creates segment `n`: its magic, fsynced, and the directory entry too.
pub fn create_segment(dir: &Path, n: u64) -> Result<File, DiskError> {
    let path = segment_path(dir, n);
    let mut file = File::options()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io_error(format!("creating {}", path.display())))?;
    file.write_all(LOG_MAGIC)
        .and_then(|()| file.sync_data())
        .and_then(|()| frame::sync_dir(dir))
        .map_err(io_error(format!("initialising {}", path.display())))?;
    Ok(file)
}
