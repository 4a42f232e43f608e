//! Tells a client's cancel apart from a half-close on request streams.
//!
//! hyper and tonic both report a request stream that the client reset with RST_STREAM(CANCEL)
//! as a clean end of stream, exactly like a half-close. For client-streaming RPCs that commit
//! at half-close (ProcessDataBatch, UploadFile) that would turn a cancel into a commit. This
//! layer watches each request body and raises a [`ClientCancelled`] flag, kept in the request's
//! extensions, the moment the body reports the cancel, before tonic hides it. It changes
//! nothing else about a request.

use bytes::Bytes;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::{Code, Status};

/// Raised when the client cancelled its request stream. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ClientCancelled(Arc<AtomicBool>);

impl ClientCancelled {
    /// True once the client reset its request stream. Read it after the stream ended.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Reads the flag from a request, or an unset one when the layer is not installed.
pub fn flag_of<T>(request: &tonic::Request<T>) -> ClientCancelled {
    request
        .extensions()
        .get::<ClientCancelled>()
        .cloned()
        .unwrap_or_default()
}

/// Installs a [`ClientCancelled`] flag on every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct CancelLayer;

impl<S> tower::Layer<S> for CancelLayer {
    type Service = CancelService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CancelService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CancelService<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for CancelService<S>
where
    S: tower::Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let flag = ClientCancelled::default();
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(flag.clone());
        let body = Body::new(WatchedBody { inner: body, flag });
        self.inner.call(Request::from_parts(parts, body))
    }
}

struct WatchedBody {
    inner: Body,
    flag: ClientCancelled,
}

impl HttpBody for WatchedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(status))) = &polled
            && status.code() == Code::Cancelled
        {
            self.flag.set();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
