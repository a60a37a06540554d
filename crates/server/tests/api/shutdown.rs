//! Graceful shutdown: stop accepting, finish in-flight requests, drain the
//! queue, exit 0. Nothing that got a 202 is dropped.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use impression_core::{CampaignId, Timestamp};
use reqwest::StatusCode;

use crate::helpers::{GatedStore, config, spawn_app_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_applies_every_accepted_impression_before_returning() {
    let config = config(&[
        "--impressions-queue-size",
        "1000",
        "--impression-workers",
        "2",
    ]);
    let (store, gate) = GatedStore::new(&config);
    let mut app = spawn_app_on(config, store.clone()).await;
    let c = app.create_campaign("c").await;
    let accepted = 300;
    for i in 0..accepted {
        let response = app.track(&c, &format!("user-{i}"), "ad").await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    // Workers are held at the gate: every impression is still queued or in
    // a batch being applied.
    let id: CampaignId = c.parse().unwrap();
    let now = Timestamp::from_secs(1_735_689_600);
    assert_eq!(store.inner.engine().stats(id, now).unwrap().total, 0);

    app.begin_shutdown();
    // While the queue cannot drain, the server must not return.
    assert!(
        !app.stops_within(Duration::from_millis(300)).await,
        "returned before draining"
    );
    gate.send(true).unwrap();
    app.wait_stopped().await;
    assert_eq!(store.inner.engine().stats(id, now).unwrap().total, accepted);
}

#[test]
fn the_binary_exits_0_on_sigterm_after_draining() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_impression-counter"))
        .env("SERVER_PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("STORAGE", "memory")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            (v["message"] == "impression-counter listening")
                .then(|| v["addr"].as_str().unwrap().to_owned())
        })
        .expect("the server logs its address");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let created: serde_json::Value = http
            .post(format!("http://{addr}/api/v1/campaigns"))
            .json(&serde_json::json!({ "name": "c" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for i in 0..100 {
            let response = http
                .post(format!("http://{addr}/api/v1/impressions"))
                .json(&serde_json::json!({ "campaign_id": created["id"], "user_id": format!("u{i}"), "ad_id": "a" }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
        }
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}; log: {rest:?}");
    for step in [
        "received SIGTERM",
        "draining the ingest queue",
        "shutdown complete",
    ] {
        assert!(
            rest.iter().any(|l| l.contains(step)),
            "no `{step}` in {rest:?}"
        );
    }
}

#[test]
fn invalid_configuration_exits_non_zero_before_binding() {
    for (var, value, named) in [
        ("TTL", "soon", "--ttl"),
        ("SERVER_PORT", "99999", "--server-port"),
        ("IMPRESSION_WORKERS", "0", "--impression-workers"),
        ("DEDUP_SCOPE", "user", "--dedup-scope"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_impression-counter"))
            .env(var, value)
            .env(
                "SERVER_PORT",
                if var == "SERVER_PORT" { value } else { "0" },
            )
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{var}={value}: {stderr}");
        assert!(
            output.stdout.is_empty(),
            "nothing was served or logged: {var}"
        );
    }
}

#[test]
fn help_lists_every_setting_with_its_default() {
    let output = Command::new(env!("CARGO_BIN_EXE_impression-counter"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "SERVER_PORT",
        "BIND_ADDR",
        "TTL",
        "IMPRESSIONS_QUEUE_SIZE",
        "IMPRESSION_WORKERS",
        "DEDUP_SCOPE",
        "RUST_LOG",
        "[default: 8080]",
        "[default: 3600s]",
        "[default: 1000]",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}
