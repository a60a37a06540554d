//! Limits on what a client controls, each answered with the API's JSON error:
//! total header size (431), in-flight requests (503 + `Retry-After`, shed
//! before they take memory), and time to send a body (408). Body sizes are
//! limited by axum's `DefaultBodyLimit` (413) and connections by
//! [`crate::server`].

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Middleware: refuses requests whose headers total more than `max` bytes.
/// The connection layer's own buffer limit is set well above it, so a
/// client gets this JSON answer rather than a bare disconnect.
pub async fn header_size(State(max): State<usize>, request: Request, next: Next) -> Response {
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + request.uri().path().len()
        + request.uri().query().map_or(0, str::len);
    if size > max {
        return ApiError::HeadersTooLarge(format!(
            "the request line and headers take {size} bytes; at most {max} are accepted (MAX_HEADER_BYTES)"
        ))
        .into_response();
    }
    next.run(request).await
}

/// Middleware: sheds a request with 503 when `MAX_IN_FLIGHT` are already
/// being handled. Shedding at the door keeps memory bounded under a flood:
/// a request refused here has cost almost nothing.
pub async fn shed_load(
    State(slots): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    match slots.try_acquire() {
        Ok(_slot) => next.run(request).await,
        Err(_) => ApiError::Unavailable(
            "the server is at its limit of requests in flight (MAX_IN_FLIGHT); retry shortly"
                .into(),
        )
        .into_response(),
    }
}

/// Middleware: a request's body must arrive within `timeout` of the
/// handler starting to read it, or reading fails with [`BodyTimeout`]
/// (answered 408). Stops slow-body clients from holding a request forever.
pub async fn body_deadline(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let request = request.map(|body| Body::new(DeadlineBody::new(body, timeout)));
    next.run(request).await
}

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (BODY_READ_TIMEOUT)")]
pub struct BodyTimeout(pub Duration);

/// Whether `error` or one of its causes is a [`BodyTimeout`].
pub fn is_body_timeout(error: &(dyn Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BodyTimeout>() {
            return true;
        }
        current = e.source();
    }
    false
}

pin_project! {
    /// A body that fails once its deadline passes. The timer only starts
    /// when the body is not already complete, so a small body that arrived
    /// with the headers costs no timer at all.
    struct DeadlineBody {
        #[pin]
        inner: Body,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
        timeout: Duration,
    }
}

impl DeadlineBody {
    fn new(inner: Body, timeout: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: None,
            timeout,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.is_none() {
            this.deadline.set(Some(tokio::time::sleep(*this.timeout)));
        }
        match this.deadline.as_pin_mut().map(|d| d.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(BodyTimeout(*this.timeout))))),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_timeouts_are_found_among_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] BodyTimeout);
        assert!(is_body_timeout(&Outer(BodyTimeout(Duration::from_secs(1)))));
        assert!(!is_body_timeout(&std::io::Error::other("no")));
    }
}
