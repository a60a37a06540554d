//! The binary's batch-parsing threads run at the priority
//! `BATCH_PARSE_PRIORITY` gives them, read back from `/proc` (Linux).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::process::ServerProcess;

/// `SCHED_OTHER` and `SCHED_IDLE` in `/proc/<pid>/task/<tid>/stat`.
const SCHED_OTHER: u64 = 0;
const SCHED_IDLE: u64 = 5;

/// (nice, policy) of each of the process's batch-parsing threads.
fn parse_threads(pid: u32) -> Vec<(i64, u64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with("bulk-parse") {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap();
        // Fields after the command name, which is in parentheses: the first
        // is field 3 (state); nice is field 19, policy field 41.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        found.push((fields[16].parse().unwrap(), fields[38].parse().unwrap()));
    }
    found
}

/// Sends one batch whose body is over 16 KiB, which is parsed on a parse
/// thread (starting them); returns its status.
fn send_large_batch(server: &ServerProcess) -> u16 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let campaign = server.create_campaign(&http, "priorities").await;
        let items: Vec<Value> = (0..300)
            .map(|i| {
                json!({
                    "campaign_id": campaign,
                    "user_id": format!("user-{i:08}"),
                    "ad_id": "ad-1",
                })
            })
            .collect();
        let body = serde_json::to_vec(&items).unwrap();
        assert!(body.len() >= 16 * 1024);
        http.post(server.url("/api/v1/impressions/batch"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

fn assert_parse_threads(env: &[(&str, &str)], expected: impl Fn(i64, u64) -> bool) {
    let server = ServerProcess::start(env);
    let status = send_large_batch(&server);
    assert!(status == 200 || status == 202, "{status}");
    // Each thread lowers its own priority as it starts: wait for all of them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let threads = parse_threads(server.pid());
        if !threads.is_empty() && threads.iter().all(|&(nice, policy)| expected(nice, policy)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{env:?}: parse threads (nice, policy) {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn batch_parsing_runs_under_sched_idle_by_default() {
    assert_parse_threads(&[("STORAGE", "memory")], |_, policy| policy == SCHED_IDLE);
}

#[test]
fn batch_parse_priority_can_be_a_nice_value() {
    assert_parse_threads(
        &[("STORAGE", "memory"), ("BATCH_PARSE_PRIORITY", "10")],
        |nice, policy| nice == 10 && policy == SCHED_OTHER,
    );
}
