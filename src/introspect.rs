//! Introspection: the figures an operator scrapes from `GET /metrics` (Prometheus text format).
//!
//! A tower layer counts, per RPC, the calls in flight (held until the response body ends, so a
//! live stream counts for its whole life) and the final gRPC status codes. The rest is read at
//! scrape time from the parts that already keep it: hub receivers, the writer's queue and commit
//! sizes, bytes moved by the files service. Nothing here changes what a request does, and
//! nothing here is exposed per user or per stream key (no unbounded label sets).

use crate::log::Log;
use crate::log::writer::COMMIT_SIZE_BUCKETS;
use crate::service::files::TransferStats;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tonic::Status;
use tonic::body::Body;

/// The service's path prefix; other paths (health, reflection, HTTP) are not counted per RPC.
const SERVICE_PREFIX: &str = "/streaming.v1.StreamingService/";

/// Calls in flight and finished, per RPC.
#[derive(Debug, Default)]
struct RpcFigures {
    open: u64,
    /// Finished calls by gRPC status code (0 = OK).
    codes: BTreeMap<i32, u64>,
}

/// Per-RPC figures shared by the layer and the scrape. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RpcMetrics {
    rpcs: Arc<Mutex<BTreeMap<&'static str, RpcFigures>>>,
}

/// The RPC names of the contract: a path outside this list is not counted, so a client cannot
/// grow the label set.
const RPCS: [&str; 23] = [
    "StreamUserEvents",
    "DownloadFile",
    "SubscribeToNotifications",
    "UploadFile",
    "ProcessDataBatch",
    "CollectMetrics",
    "Chat",
    "Collaborate",
    "ProcessLiveData",
    "PublishUserEvent",
    "PublishNotification",
    "AcknowledgeNotifications",
    "GetFileInfo",
    "GetUploadStatus",
    "GetChatHistory",
    "QueryMetrics",
    "JoinRoom",
    "SendChatMessage",
    "OpenDocument",
    "SubmitCollaborationEvent",
    "ListStreams",
    "ListFiles",
    "ListMetricSeries",
];

impl RpcMetrics {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, RpcFigures>> {
        // Counters only: a poisoned lock holds nothing half-done.
        self.rpcs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn opened(&self, rpc: &'static str) {
        self.lock().entry(rpc).or_default().open += 1;
    }

    fn closed(&self, rpc: &'static str, code: i32) {
        let mut rpcs = self.lock();
        let figures = rpcs.entry(rpc).or_default();
        figures.open = figures.open.saturating_sub(1);
        *figures.codes.entry(code).or_default() += 1;
    }
}

fn rpc_of(path: &str) -> Option<&'static str> {
    let name = path.strip_prefix(SERVICE_PREFIX)?;
    RPCS.iter().copied().find(|rpc| *rpc == name)
}

/// Counts calls per RPC; see the module docs.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(pub RpcMetrics);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: RpcMetrics,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<Request<Body>> for RpcMetricsService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let rpc = rpc_of(request.uri().path());
        let call = self.inner.call(request);
        let Some(rpc) = rpc else {
            return Box::pin(call);
        };
        let metrics = self.metrics.clone();
        metrics.opened(rpc);
        let mut guard = CallGuard {
            metrics,
            rpc,
            code: None,
        };
        Box::pin(async move {
            let response = call.await?;
            // A trailers-only answer (most errors) carries its status in the headers.
            guard.code = grpc_status(response.headers());
            let (parts, body) = response.into_parts();
            Ok(Response::from_parts(
                parts,
                Body::new(CountedBody { inner: body, guard }),
            ))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Closes the call's count when dropped: at the end of the body, or when the call is abandoned
/// (a client gone before the end counts as CANCELLED unless a status was seen).
struct CallGuard {
    metrics: RpcMetrics,
    rpc: &'static str,
    code: Option<i32>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        const CANCELLED: i32 = 1;
        self.metrics
            .closed(self.rpc, self.code.unwrap_or(CANCELLED));
    }
}

struct CountedBody {
    inner: Body,
    guard: CallGuard,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && let Some(code) = grpc_status(trailers)
        {
            self.guard.code = Some(code);
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

/// Everything `/metrics` reads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Introspection {
    pub rpcs: RpcMetrics,
    pub log: Log,
    pub transfers: Arc<TransferStats>,
    /// Points received by CollectMetrics, committed or not.
    pub metric_points_received: Arc<std::sync::atomic::AtomicU64>,
}

/// `INVALID_ARGUMENT` for 3: the canonical gRPC spelling.
fn code_name(code: i32) -> String {
    let camel = format!("{:?}", tonic::Code::from_i32(code));
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

impl Introspection {
    /// The Prometheus text exposition of every figure.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rpcs = self.rpcs.lock();
        out.push_str("# HELP streamhub_rpc_open Calls in flight, streams for their whole life.\n");
        out.push_str("# TYPE streamhub_rpc_open gauge\n");
        for rpc in RPCS {
            let open = rpcs.get(rpc).map_or(0, |f| f.open);
            let _ = writeln!(out, "streamhub_rpc_open{{rpc=\"{rpc}\"}} {open}");
        }
        out.push_str("# HELP streamhub_rpc_finished_total Finished calls by gRPC status code.\n");
        out.push_str("# TYPE streamhub_rpc_finished_total counter\n");
        for (rpc, figures) in rpcs.iter() {
            for (code, count) in &figures.codes {
                let _ = writeln!(
                    out,
                    "streamhub_rpc_finished_total{{rpc=\"{rpc}\",code=\"{}\"}} {count}",
                    code_name(*code)
                );
            }
        }
        drop(rpcs);

        let hub = &self.log.hub;
        out.push_str("# HELP streamhub_hub_receivers Live subscriptions waiting on the hub.\n");
        out.push_str("# TYPE streamhub_hub_receivers gauge\n");
        let _ = writeln!(out, "streamhub_hub_receivers {}", hub.receiver_count());
        out.push_str("# HELP streamhub_hub_streams Streams with at least one live subscriber.\n");
        out.push_str("# TYPE streamhub_hub_streams gauge\n");
        let _ = writeln!(out, "streamhub_hub_streams {}", hub.stream_count());

        let writer = &self.log.writer;
        out.push_str("# HELP streamhub_writer_queue_depth Appends waiting for the writer.\n");
        out.push_str("# TYPE streamhub_writer_queue_depth gauge\n");
        let _ = writeln!(out, "streamhub_writer_queue_depth {}", writer.queue_depth());
        let stats = &writer.stats;
        out.push_str("# HELP streamhub_writer_records_total Records stored.\n");
        out.push_str("# TYPE streamhub_writer_records_total counter\n");
        let _ = writeln!(
            out,
            "streamhub_writer_records_total {}",
            stats.records.load(Ordering::Relaxed)
        );
        out.push_str("# HELP streamhub_writer_commit_records Records per group commit.\n");
        out.push_str("# TYPE streamhub_writer_commit_records histogram\n");
        let mut cumulative = 0;
        for (bound, count) in COMMIT_SIZE_BUCKETS.iter().zip(&stats.commit_sizes) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "streamhub_writer_commit_records_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let commits = stats.commits.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "streamhub_writer_commit_records_bucket{{le=\"+Inf\"}} {commits}"
        );
        let _ = writeln!(
            out,
            "streamhub_writer_commit_records_sum {}",
            stats.records.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "streamhub_writer_commit_records_count {commits}");

        out.push_str("# HELP streamhub_file_bytes_total File bytes moved, by direction.\n");
        out.push_str("# TYPE streamhub_file_bytes_total counter\n");
        let _ = writeln!(
            out,
            "streamhub_file_bytes_total{{direction=\"uploaded\"}} {}",
            self.transfers.uploaded.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "streamhub_file_bytes_total{{direction=\"downloaded\"}} {}",
            self.transfers.downloaded.load(Ordering::Relaxed)
        );

        out.push_str(
            "# HELP streamhub_metric_points_received_total Points received by CollectMetrics, \
             valid or not, committed or not.\n",
        );
        out.push_str("# TYPE streamhub_metric_points_received_total counter\n");
        let _ = writeln!(
            out,
            "streamhub_metric_points_received_total {}",
            self.metric_points_received.load(Ordering::Relaxed)
        );
        out
    }
}
