//! The real `impression-counter` binary as a child process: started with
//! environment variables, found by the address it logs, stopped with SIGTERM
//! or killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running server process.
pub struct ServerProcess {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    lines: mpsc::Receiver<String>,
    /// What it logged until it was listening.
    startup: Vec<String>,
}

impl ServerProcess {
    /// Starts the binary with `env` (JSON logs, a free loopback port) and
    /// waits until it logs its address; panics with its output if it exits.
    pub fn start(env: &[(&str, &str)]) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_impression-counter"));
        command
            .env("SERVER_PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the binary starts");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut seen = Vec::new();
        loop {
            match lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let addr = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .filter(|v| v["message"] == "impression-counter listening")
                        .and_then(|v| v["addr"].as_str().map(str::to_owned));
                    seen.push(line);
                    if let Some(addr) = addr {
                        return ServerProcess {
                            child,
                            addr,
                            lines,
                            startup: seen,
                        };
                    }
                }
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    panic!(
                        "the server did not start (exit {status:?}); output:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    }

    /// Runs the binary to completion with `env`, expecting it to fail at start.
    pub fn fail_to_start(env: &[(&str, &str)]) -> (ExitStatus, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_impression-counter"));
        command
            .env("SERVER_PORT", "0")
            .env("BIND_ADDR", "127.0.0.1");
        for (k, v) in env {
            command.env(k, v);
        }
        let output = command.output().expect("the binary runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status, text)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://host:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Creates a campaign named `name`; returns its id.
    pub async fn create_campaign(&self, http: &reqwest::Client, name: &str) -> String {
        let body: serde_json::Value = http
            .post(self.url("/api/v1/campaigns"))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// SIGTERM, then waits for the exit; returns the status and the whole log.
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let status = self.child.wait().expect("the server exits");
        let mut log = std::mem::take(&mut self.startup);
        log.extend(self.lines.try_iter());
        (status, log)
    }

    /// SIGKILL: no cleanup, no flush, no goodbye.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL delivered");
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // A failed test must not leave servers behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
