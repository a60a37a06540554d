//! The time limit on reading a request body: [`DeadlineBody`] fails once its
//! deadline passes, with [`BodyTimeout`], answered 408. The other limits on
//! what a client controls are enforced by [`crate::edge`] (headers, load
//! shedding), axum's `DefaultBodyLimit` (body size) and [`crate::server`]
//! (connections, header read time).

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

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
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
        timeout: Duration,
    }
}

impl<B> DeadlineBody<B> {
    /// `inner`, failing if it is not complete `timeout` after it is first
    /// found waiting for data.
    pub fn new(inner: B, timeout: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: None,
            timeout,
        }
    }
}

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
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
