//! `noop-server`: the reference ceiling for benchmarks.
//!
//! The same framework, runtime and allocator as the real service (axum 0.8
//! on a multi-threaded tokio runtime, mimalloc, `TCP_NODELAY` on accepted
//! sockets), the same request parsing (the track JSON into three `String`s
//! through `axum::Json`), and the same 202 answer, but no validation, no queue and
//! no counting. The ratio *server throughput / noop throughput*, measured by
//! the same client on the same machine, is then the share of the HTTP
//! ceiling the service keeps; anything added here would blur it.
//!
//! Routes: `POST /api/v1/impressions` -> 202 `{"message":"impression
//! accepted"}`; `GET /readyz` -> 200 (so `loadgen --spawn-noop` can wait for
//! it like for the real server). Port from `--port` or `SERVER_PORT` (default
//! 8090), address from `--bind` or `BIND_ADDR` (default 127.0.0.1). Stops on
//! SIGTERM or Ctrl-C.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Json;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::{Listener, ListenerExt};
use clap::Parser;

/// The same allocator as the service (mimalloc): the ratio measures the
/// service's work, not a difference in allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Options.
#[derive(Debug, Parser)]
#[command(
    name = "noop-server",
    version,
    about = "No-op reference server for loadgen benchmarks"
)]
struct Options {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "SERVER_PORT", default_value_t = 8090)]
    port: u16,
    /// Address to bind.
    #[arg(long, env = "BIND_ADDR", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
}

/// The track body, parsed exactly like the real service parses it.
#[derive(serde::Deserialize)]
struct TrackImpression {
    #[expect(dead_code, reason = "parsed to pay the parsing cost, never read")]
    campaign_id: String,
    #[expect(dead_code, reason = "parsed to pay the parsing cost, never read")]
    user_id: String,
    #[expect(dead_code, reason = "parsed to pay the parsing cost, never read")]
    ad_id: String,
}

async fn track(Json(_body): Json<TrackImpression>) -> impl IntoResponse {
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"message":"impression accepted"}"#,
    )
}

async fn ready() -> StatusCode {
    StatusCode::OK
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let options = Options::parse();
    let app = Router::new()
        .route("/api/v1/impressions", post(track))
        .route("/readyz", get(ready));
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(options.bind, options.port))
        .await?
        .tap_io(|tcp| {
            // Small request/answer pairs: never wait for Nagle.
            let _ = tcp.set_nodelay(true);
        });
    eprintln!("noop-server listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
}
