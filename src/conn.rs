//! Connection serving: accepts TCP connections, gives each a deadline to open (TLS handshake
//! and HTTP preface), serves it with tonic's HTTP/2 and HTTP/1 settings, and sends GOAWAY to a
//! connection that holds no call for `--idle-connection-secs`.
//!
//! tonic's `Server` has no hook for either deadline, so each connection gets a server of its
//! own: the same builder, layers and settings as one shared server would have, fed with that one
//! connection, and with a shutdown signal of its own that fires on idleness, on server shutdown
//! or when the connection is gone. tonic then does what it does for every connection at
//! shutdown: a graceful GOAWAY, and the connection closes once its open calls have ended.
//!
//! Activity is counted at the HTTP layer: a call is open from the moment its request reaches
//! the service stack until its response body has been sent (or dropped). HTTP/2 pings, SETTINGS
//! and WINDOW_UPDATE frames never reach the service stack, so keepalive never counts as activity.
//! This module knows nothing of what a call does.
//!
//! Browsers reach the same listener: gRPC-Web requests, over HTTP/1.1 or HTTP/2, with or without
//! TLS, are translated to gRPC by a layer of the stack, and CORS (from `--cors-origins`) is
//! another; see [`web`] and [`serve_connection`] for where they sit.

use crate::auth::AuthLayer;
use crate::cancel::CancelLayer;
use crate::introspect::{RpcMetrics, RpcMetricsLayer};
use crate::message_limit::MessageLimitLayer;
use crate::tls::Tls;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::Connected;
use web::GrpcWebGateLayer;

mod web;

pub use web::{CorsGateLayer, cors_layer};

/// The client connection preface of HTTP/2 (RFC 9113 §3.4), before its SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Most bytes read while waiting for an HTTP/1 request line. A longer first line is handed to
/// hyper as it is, which refuses it.
const MAX_PREFACE_BYTES: usize = 8 * 1024;
/// A pause after a failed accept (out of file descriptors, for one), so that the loop does not
/// spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// What every connection is served with.
#[derive(Clone)]
pub struct Settings {
    /// Every route: gRPC services and the plain HTTP ones.
    pub routes: Routes,
    pub rpc_metrics: RpcMetrics,
    pub verifier: Option<Arc<crate::auth::Verifier>>,
    /// CORS for browser pages of other origins (see [`cors_layer`]); without origins it sends
    /// no CORS headers at all.
    pub cors: CorsGateLayer,
    pub max_message_bytes: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub max_concurrent_streams: u32,
    /// From accept to the end of the TLS handshake (with TLS) and the HTTP preface, together.
    pub open_timeout: Duration,
    /// With no open call for this long, a connection gets GOAWAY.
    pub idle_timeout: Duration,
}

/// Serves `listener` until `shutdown` is cancelled: then stops accepting (closing the listener),
/// sends GOAWAY to every connection and returns once all of them have closed. A connection that
/// is still opening at that moment is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Tls>,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let settings = Arc::new(settings);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(connection(
                    stream,
                    peer,
                    tls.clone(),
                    settings.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One connection, from accept to close.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Tls>,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let deadline = settings.open_timeout;
    match tls {
        None => {
            let opening = tokio::time::timeout(deadline, read_preface(stream));
            if let Some(io) = opened(opening, peer, deadline, &shutdown).await {
                serve_connection(io, &settings, shutdown).await;
            }
        }
        Some(tls) => {
            let opening = tokio::time::timeout(deadline, async {
                let stream = tls.accept(stream).await?;
                read_preface(stream).await
            });
            if let Some(io) = opened(opening, peer, deadline, &shutdown).await {
                serve_connection(io, &settings, shutdown).await;
            }
        }
    }
}

/// Waits for a connection to open in time; `None` (and the socket closed, by drop) when it
/// failed, stalled past its deadline, or the server began shutting down meanwhile.
async fn opened<T>(
    opening: impl Future<Output = Result<io::Result<T>, tokio::time::error::Elapsed>>,
    peer: SocketAddr,
    deadline: Duration,
    shutdown: &CancellationToken,
) -> Option<T> {
    tokio::select! {
        _ = shutdown.cancelled() => None,
        opened = opening => match opened {
            Ok(Ok(io)) => Some(io),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection failed to open; closed");
                None
            }
            Err(_) => {
                tracing::debug!(
                    %peer,
                    timeout = ?deadline,
                    "no TLS handshake or HTTP preface in time; connection closed"
                );
                None
            }
        },
    }
}

/// Reads until the connection has sent the HTTP/2 preface, or a line (an HTTP/1 request line),
/// or more than any request line needs. What was read is replayed to hyper.
async fn read_preface<S: AsyncRead + Unpin>(mut stream: S) -> io::Result<Prefaced<S>> {
    let mut buf = Vec::with_capacity(256);
    loop {
        let h2 = buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE);
        let maybe_h2 = buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf);
        let line = !maybe_h2 && buf.contains(&b'\n');
        if h2 || line || buf.len() >= MAX_PREFACE_BYTES {
            return Ok(Prefaced {
                prefix: buf,
                read: 0,
                inner: stream,
                gone: None,
            });
        }
        let mut chunk = [0u8; 1024];
        let want = (MAX_PREFACE_BYTES - buf.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before its HTTP preface",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A connection whose first bytes were read to check its preface: they are read again first.
/// Dropping it (hyper does when the connection ends) cancels the token in `gone`.
struct Prefaced<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
    gone: Option<DropGuard>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefaced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read < this.prefix.len() {
            let left = &this.prefix[this.read..];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.read += n;
            if this.read == this.prefix.len() {
                this.prefix = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefaced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The same connection information as the stream itself gives tonic.
impl<S: Connected> Connected for Prefaced<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Serves one opened connection until it closes: with the server's layers and HTTP settings,
/// and a shutdown signal that fires on server shutdown, on idleness, or once the connection is
/// gone (so that this returns).
async fn serve_connection<S>(mut io: Prefaced<S>, settings: &Settings, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let gone = CancellationToken::new();
    io.gone = Some(gone.clone().drop_guard());
    let (calls, _) = watch::channel(0usize);
    let calls = Arc::new(calls);
    let idle_timeout = settings.idle_timeout;
    let signal = {
        let calls = calls.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = gone.cancelled() => {}
                _ = idle(&calls, idle_timeout) => {
                    tracing::debug!(?idle_timeout, "connection idle; sending GOAWAY");
                }
            }
        }
    };
    // One connection, then nothing: the stream never ends, so tonic keeps serving it until the
    // signal, and not a moment less.
    let incoming =
        tokio_stream::once(Ok::<_, io::Error>(io)).chain(tokio_stream::pending::<io::Result<_>>());
    // Outermost first. CORS sits outside auth, so that a preflight is answered without a token
    // and a refusal still carries CORS headers a page needs to read it. gRPC-Web sits outside
    // the metrics, auth and message limit: they all see the plain gRPC request tonic-web makes
    // of it (its RPC's path, a status in trailers, decoded message prefixes), and a refusal
    // comes out as a gRPC-Web answer whose grpc-status a browser can read.
    let served = Server::builder()
        .layer(CallsLayer(calls))
        .layer(CancelLayer)
        .layer(settings.cors.clone())
        .layer(GrpcWebGateLayer)
        .layer(RpcMetricsLayer(settings.rpc_metrics.clone()))
        .layer(AuthLayer(settings.verifier.clone()))
        .layer(MessageLimitLayer::new(settings.max_message_bytes))
        .accept_http1(true)
        .http2_keepalive_interval(Some(settings.keepalive_interval))
        .http2_keepalive_timeout(Some(settings.keepalive_timeout))
        .max_concurrent_streams(Some(settings.max_concurrent_streams))
        .add_routes(settings.routes.clone())
        .serve_with_incoming_shutdown(incoming, signal)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "serving a connection failed");
    }
}

/// Resolves once the connection has had no open call for `timeout` in a row.
async fn idle(calls: &watch::Sender<usize>, timeout: Duration) {
    let mut open = calls.subscribe();
    loop {
        // The sender lives as long as the connection's server: an error here cannot happen
        // while there is a connection to time out.
        let none_open = open.wait_for(|n| *n == 0).await.is_ok();
        if !none_open {
            return std::future::pending().await;
        }
        let call_opened = tokio::time::timeout(timeout, open.wait_for(|n| *n > 0))
            .await
            .map(|opened| opened.is_ok());
        match call_opened {
            Err(_elapsed) => return,
            Ok(false) => return std::future::pending().await,
            Ok(true) => {}
        }
    }
}

/// Counts a connection's open calls: see [`CallGuard`].
#[derive(Clone)]
struct CallsLayer(Arc<watch::Sender<usize>>);

impl<S> tower::Layer<S> for CallsLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Calls {
            inner,
            calls: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Calls<S> {
    inner: S,
    calls: Arc<watch::Sender<usize>>,
}

/// One open call. Held by the request's future and then by its response body, and dropped when
/// the body has been sent or is dropped (a reset stream, a closed connection).
struct CallGuard(Arc<watch::Sender<usize>>);

impl CallGuard {
    fn new(calls: Arc<watch::Sender<usize>>) -> Self {
        calls.send_modify(|n| *n += 1);
        CallGuard(calls)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Calls<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body,
{
    type Response = http::Response<GuardedBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let guard = CallGuard::new(self.calls.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| GuardedBody {
                inner: Box::pin(body),
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its call open until it ends or is dropped.
struct GuardedBody<B> {
    inner: Pin<Box<B>>,
    _guard: CallGuard,
}

impl<B: http_body::Body> http_body::Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.get_mut().inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
