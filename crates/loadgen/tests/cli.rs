//! The `loadgen` binary end to end, against servers on free loopback ports:
//! the real `noop-server` binary (spawned by loadgen itself), and an
//! in-process fake of the impression-counter API that counts distinct keys
//! exactly, optionally rejects some batch items, or miscounts on purpose.
//! Every run is a few hundred requests and bounded by a timeout.

// The fake server's handlers are test code too: a surprise should panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");
const NOOP: &str = env!("CARGO_BIN_EXE_noop-server");

/// Runs loadgen with `args`, killing it if it takes over 60 s.
async fn loadgen(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(LOADGEN)
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("loadgen finished within 60 s")
        .expect("loadgen ran")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not the JSON summary ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn spawned_noop_server_takes_a_bounded_load() {
    let out = loadgen(&[
        "--spawn-noop",
        "--server-bin",
        NOOP,
        "--count",
        "200",
        "--connections",
        "4",
        "--json",
        "-",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = json_of(&out);
    assert_eq!(s["impressions"]["sent"], 200);
    assert_eq!(s["impressions"]["acknowledged"], 200);
    assert_eq!(s["requests"]["answered"], 200);
    assert_eq!(s["latency_ms"]["samples"], 200);
    assert_eq!(s["verification"]["status"], "skipped");
    assert_eq!(s["config"]["spawned"], "noop-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopped: exit status: 0"), "{stderr}");
    // The server's log is removed after a run that passed.
    let log = stderr
        .split("(log: ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the log path is printed");
    assert!(!std::path::Path::new(log).exists(), "{log} left behind");
}

#[tokio::test]
async fn open_loop_sends_at_the_rate() {
    // 200 impressions at 4,000/s: about 50 ms.
    let out = loadgen(&[
        "--spawn-noop",
        "--server-bin",
        NOOP,
        "--count",
        "200",
        "--rate",
        "4000",
        "--connections",
        "4",
        "--json",
        "-",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = json_of(&out);
    assert_eq!(s["impressions"]["acknowledged"], 200);
    let elapsed = s["elapsed_s"].as_f64().unwrap();
    assert!(elapsed >= 0.045, "sent faster than the rate: {elapsed} s");
}

/// What the fake does wrong, if anything.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Exact,
    /// Counts one impression too many for the first campaign.
    Overcount,
    /// Counts one user too many for the first campaign.
    OvercountUsers,
}

#[derive(Default)]
struct Counts {
    campaigns: Vec<String>,
    keys: HashMap<String, HashSet<(String, String)>>,
}

#[derive(Clone)]
struct Fake {
    counts: Arc<Mutex<Counts>>,
    behaviour: Behaviour,
}

#[derive(serde::Deserialize)]
struct Item {
    campaign_id: String,
    user_id: String,
    ad_id: String,
}

impl Fake {
    /// Counts a key; 404 for an unknown campaign.
    fn track(&self, item: Item) -> Result<(), u16> {
        let mut c = self.counts.lock().unwrap();
        let keys = c.keys.get_mut(&item.campaign_id).ok_or(404u16)?;
        keys.insert((item.ad_id, item.user_id));
        Ok(())
    }
}

async fn create(State(f): State<Fake>) -> Response {
    let mut c = f.counts.lock().unwrap();
    let id = format!("00000000-0000-7000-8000-{:012}", c.campaigns.len());
    c.campaigns.push(id.clone());
    c.keys.insert(id.clone(), HashSet::new());
    (
        StatusCode::CREATED,
        axum::Json(json!({ "id": id, "name": "x" })),
    )
        .into_response()
}

async fn single(State(f): State<Fake>, body: Bytes) -> StatusCode {
    let Ok(item) = serde_json::from_slice::<Item>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    match f.track(item) {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::NOT_FOUND,
    }
}

/// Accepts a JSON array or NDJSON; refuses (400) every item whose user
/// number is a multiple of 7, so loadgen sees partial answers.
async fn batch(State(f): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-ndjson"));
    let items: Vec<Item> = if ndjson {
        let text = std::str::from_utf8(&body).unwrap();
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    let mut accepted = 0;
    let mut rejected = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let user: u64 = item.user_id.trim_start_matches('u').parse().unwrap();
        if user.is_multiple_of(7) {
            rejected.push(json!({"index": index, "error": "sevens", "code": 400}));
            continue;
        }
        match f.track(item) {
            Ok(()) => accepted += 1,
            Err(code) => rejected.push(json!({"index": index, "error": "?", "code": code})),
        }
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"accepted": accepted, "rejected": rejected})),
    )
        .into_response()
}

async fn pixel(State(f): State<Fake>, uri: Uri) -> Response {
    let mut q: HashMap<&str, &str> = HashMap::new();
    for pair in uri.query().unwrap_or("").split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            q.insert(k, v);
        }
    }
    let item = Item {
        campaign_id: q["campaign_id"].to_owned(),
        user_id: q["user_id"].to_owned(),
        ad_id: q["ad_id"].to_owned(),
    };
    match f.track(item) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "image/gif")],
            "GIF89a",
        )
            .into_response(),
        Err(_) => (
            StatusCode::NOT_FOUND,
            [("x-impression-error", "no campaign")],
        )
            .into_response(),
    }
}

async fn stats(State(f): State<Fake>, Path(id): Path<String>) -> Response {
    let c = f.counts.lock().unwrap();
    let Some(keys) = c.keys.get(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut total = keys.len() as u64;
    let mut users = keys
        .iter()
        .map(|(_, user)| user)
        .collect::<HashSet<_>>()
        .len() as u64;
    if c.campaigns.first() == Some(&id) {
        match f.behaviour {
            Behaviour::Exact => {}
            Behaviour::Overcount => total += 1,
            Behaviour::OvercountUsers => users += 1,
        }
    }
    let users = json!({"last_hour": users, "last_day": users, "total": users});
    axum::Json(json!({
        "campaign_id": id, "last_hour": total, "last_day": total, "total": total,
        "unique_users": users,
    }))
    .into_response()
}

/// Starts the fake on a free loopback port; it lives as long as the test's
/// runtime.
async fn fake(behaviour: Behaviour) -> SocketAddr {
    let state = Fake {
        counts: Arc::default(),
        behaviour,
    };
    let app = Router::new()
        .route("/api/v1/campaigns", post(create))
        .route("/api/v1/campaigns/{id}/stats", get(stats))
        .route("/api/v1/impressions", post(single))
        .route("/api/v1/impressions/batch", post(batch))
        .route("/api/v1/impressions/pixel.gif", get(pixel))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_verifies_against_an_exact_server() {
    let addr = fake(Behaviour::Exact).await;
    let url = format!("http://{addr}");
    for mode in [
        &["--mode", "single"][..],
        &["--mode", "pixel"],
        &["--mode", "batch", "--batch-size", "50"],
        &["--mode", "batch", "--batch-size", "50", "--ndjson"],
    ] {
        // Few users and a high duplicate ratio: many repeated keys.
        let mut args = vec![
            "--url",
            &url,
            "--count",
            "300",
            "--connections",
            "4",
            "--campaigns",
            "3",
            "--users",
            "50",
            "--ads",
            "2",
            "--distribution",
            "zipf",
            "--duplicate-ratio",
            "0.3",
            "--json",
            "-",
        ];
        args.extend_from_slice(mode);
        let out = loadgen(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode:?}: {stderr}");
        let s = json_of(&out);
        let v = &s["verification"];
        assert_eq!(v["status"], "match", "{mode:?}: {v}");
        let distinct: u64 = v["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["actual"].as_u64().unwrap())
            .sum();
        assert!(distinct < 300, "duplicates were sent: {distinct}");
        for c in v["campaigns"].as_array().unwrap() {
            // Two ads: fewer people than keys, and the fake is exact.
            assert_eq!(c["users_ok"], true, "{c}");
            assert!(c["users_actual"].as_u64() < c["actual"].as_u64(), "{c}");
        }
        assert_eq!(s["impressions"]["sent"], 300);
        if mode[1] == "batch" {
            // Users that are multiples of 7 were refused item by item.
            assert_eq!(s["requests"]["sent"], 6);
            let refused = s["errors"]["batch_items_by_code"]["400"].as_u64().unwrap();
            assert!(refused > 0);
            assert_eq!(s["impressions"]["rejected"], refused);
            assert_eq!(
                s["impressions"]["acknowledged"].as_u64().unwrap() + refused,
                300
            );
        } else {
            assert_eq!(s["impressions"]["acknowledged"], 300);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miscount_is_a_mismatch_and_fails() {
    let addr = fake(Behaviour::Overcount).await;
    let url = format!("http://{addr}");
    let out = loadgen(&[
        "--url",
        &url,
        "--count",
        "100",
        "--connections",
        "2",
        "--campaigns",
        "2",
        "--verify-timeout",
        "2s",
        "--json",
        "-",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let s = json_of(&out);
    assert_eq!(s["verification"]["status"], "mismatch");
    assert_eq!(s["verification"]["campaigns"][0]["difference"], 1);
    assert_eq!(s["verification"]["campaigns"][1]["difference"], 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MISMATCH"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miscount_of_users_is_a_mismatch_and_fails() {
    let addr = fake(Behaviour::OvercountUsers).await;
    let url = format!("http://{addr}");
    let out = loadgen(&[
        "--url",
        &url,
        "--count",
        "100",
        "--campaigns",
        "2",
        "--verify-timeout",
        "2s",
        "--json",
        "-",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let s = json_of(&out);
    let campaigns = &s["verification"]["campaigns"];
    assert_eq!(s["verification"]["status"], "mismatch");
    assert_eq!(campaigns[0]["difference"], 0);
    assert_eq!(campaigns[0]["users_ok"], false);
    assert_eq!(campaigns[1]["users_ok"], true);
}

#[tokio::test]
async fn no_server_is_a_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = loadgen(&["--url", &url, "--count", "10"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot create campaigns"), "{stderr}");
}

#[tokio::test]
async fn a_missing_server_binary_says_how_to_build_it() {
    let out = loadgen(&["--spawn", "--server-bin", "/nonexistent/impression-counter"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not found"), "{stderr}");
}
