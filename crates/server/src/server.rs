//! Serving HTTP: the accept loop, connection limits and timeouts, and
//! graceful shutdown.
//!
//! This is what `axum::serve` does, plus what it cannot be told: each
//! connection is closed once it has waited `HEADER_READ_TIMEOUT` for a
//! request (headers trickling in, an idle keep-alive connection, one that
//! never sends a byte; see [`IdleWatch`](crate::edge::IdleWatch)), hyper's read buffer has a hard
//! cap on header bytes, and the loop enforces `MAX_CONNECTIONS`. HTTP/1.1 only: load balancers speak it to backends, and
//! sniffing for cleartext HTTP/2 would let a silent connection sit outside
//! every timeout. A connection over the limit is still
//! accepted, answered once with the JSON 503 and closed, so clients learn why
//! instead of hanging in the kernel's backlog.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::edge::{EdgeRoutes, WithEdge};
use crate::error::ApiError;

/// Connection-level limits.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most open connections.
    pub max_connections: usize,
    /// Time to send a request's headers; also the keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// Hard cap on a connection's read buffer (headers beyond it close the
    /// connection; the friendlier JSON 431 comes from a middleware below it).
    pub max_buf_bytes: usize,
}

/// How long shutdown waits for open connections to finish their requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and waits (at most 30 s) for requests in flight to finish.
pub async fn serve<R: EdgeRoutes>(
    listener: TcpListener,
    app: WithEdge<R>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut builder = http1::Builder::new();
    // hyper's own header read timeout (on by default, 30 s) is off: each
    // connection's `IdleWatch` does its job with one timer per connection
    // instead of one per request.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_buf_bytes.max(8192));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small request/response pairs: never wait for Nagle.
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                let (service, idle) = app.connection(peer);
                let conn =
                    graceful.watch(builder.serve_connection(io, TowerToHyperService::new(service)));
                let idle = idle.spawn(limits.header_read_timeout);
                tokio::spawn(async move {
                    tokio::select! {
                        ended = conn => {
                            if let Err(e) = ended {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        }
                        Ok(()) = idle => {
                            tracing::debug!(%peer, "closing a connection that sent no request in time");
                        }
                    }
                    drop(slot);
                });
            }
            Err(_) => {
                tracing::warn!(%peer, "refusing a connection over MAX_CONNECTIONS");
                let service = TowerToHyperService::new(tower::service_fn(over_the_limit));
                let conn = graceful.watch(builder.serve_connection(io, service));
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}

/// The only answer a connection over the limit gets.
async fn over_the_limit(_: Request<hyper::body::Incoming>) -> Result<Response, Infallible> {
    let mut response = ApiError::Unavailable(
        "the server is at its limit of open connections (MAX_CONNECTIONS); retry shortly".into(),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Ok(response)
}
