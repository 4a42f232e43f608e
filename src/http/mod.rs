//! Plain-HTTP routes served on the gRPC listener: downloads under `/files/{id}`, tus uploads
//! under `/files/`, the web console under `/console`, `GET /metrics`, and `GET /`, a short page
//! that says what is listening here. Each route's module only speaks HTTP: what a file, an upload
//! or a metric is comes from the capability behind it.

mod console;
mod download;
mod tus;

use crate::auth::Verifier;
use crate::introspect::Introspection;
use crate::service::files::Files;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

/// `verifier` checks the bearer tokens of tus requests (`None` with auth off); downloads are
/// authorised by their signed URL instead.
pub fn router(
    files: Files,
    verifier: Option<Arc<Verifier>>,
    introspection: Introspection,
) -> Router {
    Router::new()
        .route("/", get(index))
        // Every `/files` route: tus uploads, and downloads of `/files/{id}` without tus headers.
        .merge(tus::router(files, verifier))
        .merge(console::router())
        .merge(
            Router::new()
                .route("/metrics", get(metrics))
                .with_state(introspection),
        )
}

/// `GET /`: what a person who opens the address in a browser (or curls it) should learn: what
/// this is, which version, and where to go next. Without it they got an empty 200 carrying
/// `grpc-status: 12`.
async fn index() -> Response {
    let text = format!(
        "streamhub {version}\n\
         A persistent, event-sourced gRPC streaming service.\n\
         \n\
         gRPC:     service streaming.v1.StreamingService on this address (HTTP/2),\n\
         \x20         with server reflection (grpcurl -plaintext HOST:PORT list) and gRPC health\n\
         gRPC-Web: the same service for browsers (HTTP/1.1 or HTTP/2; CORS from --cors-origins)\n\
         Console:  GET /console (the web console)\n\
         Files:    GET /files/{{id}} (download URLs returned by UploadFile and ListFiles)\n\
         \x20         tus 1.0 uploads at /files/ (OPTIONS /files/ lists the extensions)\n\
         Metrics:  GET /metrics (Prometheus text)\n\
         Docs:     README.md and docs/contract.md in the streamhub repository;\n\
         \x20         `streamhub --help` for the command line\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// `GET /metrics`: the Prometheus text exposition.
async fn metrics(State(introspection): State<Introspection>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        introspection.render(),
    )
        .into_response()
}
