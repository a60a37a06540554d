//! `--spawn` / `--spawn-noop`: run the server under test as a child process.
//!
//! The server gets a free loopback port (bind `127.0.0.1:0`, read the port,
//! release it, pass it as `SERVER_PORT` with `BIND_ADDR=127.0.0.1`). Another
//! process could take the port in between; on a test machine that is rare,
//! and the readiness check then fails with a clear message rather than
//! measuring the wrong server.
//!
//! Readiness is `GET /readyz` answering 200 before a deadline, while the
//! child is still alive. Stopping is SIGTERM (the server's graceful path:
//! finish requests, drain the queue, exit 0), then SIGKILL if it is still
//! running after [`STOP_GRACE`]. The child is also killed if loadgen exits
//! early by an error (`kill_on_drop`), so no server is left behind.
//!
//! The child's stdout and stderr go to a log file in the temp directory, so
//! its logs neither mix with the report nor cost terminal output; the last
//! lines are shown if it fails to start, and `main` removes the file after
//! a run that passed.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::api::ControlClient;
use crate::args::SpawnKind;
use crate::client::Target;

/// How long the server may take to exit after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// Pause between two readiness probes.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// The server could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No binary at the expected path.
    #[error("server binary {path} not found; {hint}")]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
        /// How to build it.
        hint: String,
    },
    /// Could not find or bind a free port, or start the process, or create
    /// the log file.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The process exited before it was ready.
    #[error("the server exited before it was ready ({status}); last lines of {log}:\n{tail}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// Its log file.
        log: String,
        /// The end of the log.
        tail: String,
    },
    /// `/readyz` did not answer 200 in time.
    #[error("the server was not ready within {timeout:?}; last lines of {log}:\n{tail}")]
    NotReady {
        /// The deadline.
        timeout: Duration,
        /// Its log file.
        log: String,
        /// The end of the log.
        tail: String,
    },
}

/// A running child server.
pub struct SpawnedServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    binary: PathBuf,
}

/// Where the binary is: `explicit`, or `kind`'s file next to the running
/// executable (both binaries are built into the same target directory).
pub fn locate(kind: SpawnKind, explicit: Option<&Path>) -> Result<PathBuf, SpawnError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|source| SpawnError::Io {
                what: "cannot find loadgen's own path".into(),
                source,
            })?
            .with_file_name(kind.binary_name()),
    };
    if path.is_file() {
        return Ok(path);
    }
    let hint = match (kind, explicit) {
        (_, Some(_)) => "check --server-bin".to_owned(),
        (SpawnKind::Server, None) => {
            "run `cargo build --release -p impression-counter` first (or pass --server-bin)"
                .to_owned()
        }
        (SpawnKind::Noop, None) => {
            "run `cargo build --release -p loadgen` first (or pass --server-bin)".to_owned()
        }
    };
    Err(SpawnError::Missing { path, hint })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16, SpawnError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| SpawnError::Io {
            what: "cannot find a free loopback port".into(),
            source,
        })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| SpawnError::Io {
            what: "cannot read the free port".into(),
            source,
        })
}

/// The last `n` lines of a file, or a note that it cannot be read.
fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

impl SpawnedServer {
    /// Starts `binary` on a free loopback port with `env` added, and waits
    /// until `/readyz` answers 200 (at most `ready_timeout`).
    pub async fn start(
        binary: PathBuf,
        env: &[(String, String)],
        ready_timeout: Duration,
    ) -> Result<Self, SpawnError> {
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = std::env::temp_dir().join(format!(
            "loadgen-{}-{}-{port}.log",
            binary
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let io = |what: String| move |source| SpawnError::Io { what, source };
        let out = std::fs::File::create(&log)
            .map_err(io(format!("cannot create the log file {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io("cannot share the log file".into()))?;
        let child = Command::new(&binary)
            .env("SERVER_PORT", port.to_string())
            .env("BIND_ADDR", "127.0.0.1")
            // The embedded in-memory store unless `--server-env` says
            // otherwise: a benchmark of a fresh build should not write a
            // data directory into the working directory.
            .env("STORAGE", "memory")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C at the terminal reaches only
            // loadgen, which then finishes, verifies, and stops the server
            // itself (a SIGINT would start its shutdown mid-run).
            .process_group(0)
            .spawn()
            .map_err(io(format!("cannot start {}", binary.display())))?;
        let mut server = Self {
            child,
            addr,
            log,
            binary,
        };
        server.wait_ready(ready_timeout).await?;
        Ok(server)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), SpawnError> {
        let deadline = Instant::now() + timeout;
        let mut control = ControlClient::new(Target::at(self.addr));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(SpawnError::Exited {
                    status,
                    log: self.log.display().to_string(),
                    tail: tail(&self.log, 20),
                });
            }
            if control.ready().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SpawnError::NotReady {
                    timeout,
                    log: self.log.display().to_string(),
                    tail: tail(&self.log, 20),
                });
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The binary that runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// SIGTERM, then wait up to [`STOP_GRACE`]; SIGKILL if it is still
    /// running. Returns how it exited.
    pub async fn stop(mut self) -> Result<ExitStatus, SpawnError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| SpawnError::Io { what, source }
        };
        if let Some(id) = self.child.id() {
            let pid = i32::try_from(id).map_err(|_| SpawnError::Io {
                what: "process id out of range".into(),
                source: std::io::Error::other(id.to_string()),
            })?;
            // ESRCH (already gone) is fine: `wait` below reports its status.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(status) => status.map_err(io("cannot wait for the server")),
            Err(_) => {
                self.child
                    .kill()
                    .await
                    .map_err(io("cannot kill the server"))?;
                self.child
                    .wait()
                    .await
                    .map_err(io("cannot wait for the server"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let err = locate(SpawnKind::Server, None);
        // The test executable lives in target/debug/deps, where no server
        // binary is built.
        match err {
            Err(SpawnError::Missing { hint, .. }) => {
                assert!(hint.contains("cargo build --release -p impression-counter"));
            }
            Ok(p) => assert!(p.ends_with("impression-counter")),
            Err(e) => panic!("{e}"),
        }
        let err = locate(SpawnKind::Noop, Some(Path::new("/nonexistent/noop"))).unwrap_err();
        assert!(err.to_string().contains("--server-bin"), "{err}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let path = std::env::temp_dir().join(format!("loadgen-tail-test-{}", std::process::id()));
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 2), "c\nd");
        assert_eq!(tail(&path, 10), "a\nb\nc\nd");
        std::fs::remove_file(&path).unwrap();
        assert!(tail(&path, 1).starts_with("(cannot read"));
    }
}
