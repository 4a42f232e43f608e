//! Browsers on the shared listener: gRPC-Web (tonic-web) and CORS (tower-http), as two layers
//! of the connection's stack (see `super::serve_connection` for where they sit and why).
//!
//! [`GrpcWebGateLayer`] sends a request to tonic-web only when its `content-type` is one of
//! gRPC-Web's; tonic-web turns it into a plain gRPC request on the way in and the gRPC answer
//! (trailers included) into a gRPC-Web body on the way out. Every other request (native gRPC,
//! downloads, tus, `/metrics`, the console) goes past it untouched: tonic-web on its own answers
//! 400 to any HTTP/1 request that is not gRPC-Web, which would take the plain HTTP routes away.
//!
//! [`CorsGateLayer`] is tower-http's `CorsLayer` built from `--cors-origins`, or nothing at all
//! when that is unset. It answers preflight requests itself, before any token is checked, and
//! adds the CORS headers to every other answer, refusals included.
//!
//! This module never decides who may call what (the auth layer, further in, does), never reads
//! or changes a message, and never allows an origin that the operator did not list.

use crate::error::{Error, Result};
use http::header::{self, HeaderName};
use http::{HeaderValue, Method, Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::body::Body;
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

/// How long a browser may cache a preflight answer. The answer changes only with a restart.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Request headers that gRPC-Web clients (grpc-web, connect-web), tus clients (tus-js-client,
/// Uppy) and the console send. `authorization` must be listed by name: a wildcard would not
/// cover it.
const ALLOW_HEADERS: [&str; 17] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "grpc-accept-encoding",
    "grpc-encoding",
    "connect-protocol-version",
    "connect-timeout-ms",
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-checksum",
    "upload-concat",
    "upload-defer-length",
    "x-http-method-override",
];

/// Response headers a page may read: a gRPC-Web status (which comes in headers when the answer
/// has no message, a refusal for one) and what tus clients follow.
const EXPOSE_HEADERS: [&str; 13] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "location",
    "upload-offset",
    "upload-length",
    "upload-expires",
    "upload-metadata",
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
];

const ALLOW_METHODS: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// The CORS layer for `origins` (as `--cors-origins` parsed them); with none, a layer that adds
/// nothing. `*` among them allows any origin, and is worth a warning when tokens are checked:
/// any page a user opens could then call the API with a token that page holds.
pub fn cors_layer(origins: &[String], auth_on: bool) -> Result<CorsGateLayer> {
    let origins: Vec<&str> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.is_empty() {
        return Ok(CorsGateLayer(None));
    }
    let allow_origin = if origins.contains(&"*") {
        if auth_on {
            tracing::warn!(
                "WARNING: --cors-origins '*' with auth on: a page from any origin may call the \
                 API with a bearer token it holds. List the console's and your apps' origins \
                 instead"
            );
        } else {
            tracing::info!("CORS allows any origin (--cors-origins '*')");
        }
        AllowOrigin::any()
    } else {
        let mut list = Vec::with_capacity(origins.len());
        for &origin in &origins {
            let valid = crate::config::parse_origin(origin).map_err(Error::Config)?;
            let value = HeaderValue::from_str(&valid)
                .map_err(|e| Error::Config(format!("--cors-origins `{origin}`: {e}")))?;
            list.push(value);
        }
        tracing::info!(origins = ?origins, "CORS allows these origins");
        AllowOrigin::list(list)
    };
    let layer = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods(ALLOW_METHODS)
        .allow_headers(ALLOW_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSE_HEADERS.map(HeaderName::from_static))
        .max_age(PREFLIGHT_MAX_AGE);
    Ok(CorsGateLayer(Some(layer)))
}

/// A CORS preflight: `OPTIONS` asking for a method. A bare `OPTIONS` (tus capability discovery)
/// is an ordinary request for the routes to answer.
fn is_preflight<B>(request: &Request<B>) -> bool {
    request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Applies CORS to every request but a bare `OPTIONS`, or (`None`, no `--cors-origins`) to
/// none; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct CorsGateLayer(Option<CorsLayer>);

impl CorsGateLayer {
    /// Whether any origin is allowed, that is whether CORS headers are sent at all.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }
}

impl<S> Layer<S> for CorsGateLayer {
    type Service = CorsGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        // Off, the CORS service is only a way through to `inner`: every request bypasses it.
        CorsGate {
            cors: self.0.clone().unwrap_or_default().layer(inner),
            on: self.0.is_some(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CorsGate<S> {
    cors: Cors<S>,
    on: bool,
}

impl<S> Service<Request<Body>> for CorsGate<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.cors.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let bare_options = request.method() == Method::OPTIONS && !is_preflight(&request);
        if self.on && !bare_options {
            Box::pin(self.cors.call(request))
        } else {
            Box::pin(self.cors.get_mut().call(request))
        }
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = std::result::Result<T, E>> + Send>>;

/// The content types tonic-web translates (the same list it checks).
fn is_grpc_web<B>(request: &Request<B>) -> bool {
    matches!(
        request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some(
            "application/grpc-web"
                | "application/grpc-web+proto"
                | "application/grpc-web-text"
                | "application/grpc-web-text+proto"
        )
    )
}

/// Hands gRPC-Web requests to tonic-web and every other request straight on; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcWebGateLayer;

impl<S> Layer<S> for GrpcWebGateLayer {
    type Service = GrpcWebGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcWebGate { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcWebGate<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for GrpcWebGate<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if !is_grpc_web(&request) {
            return Box::pin(self.inner.call(request));
        }
        // The service that was polled ready serves this request; its clone stays for the next
        // one (which polls it first), as tower expects of a service moved into a wrapper.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        Box::pin(tonic_web::GrpcWebLayer::new().layer(ready).call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/x");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn only_grpc_web_content_types_go_to_tonic_web() {
        for (content_type, web) in [
            ("application/grpc-web", true),
            ("application/grpc-web+proto", true),
            ("application/grpc-web-text", true),
            ("application/grpc-web-text+proto", true),
            ("application/grpc", false),
            ("application/grpc+proto", false),
            ("application/grpc-web+json", false),
            ("application/offset+octet-stream", false),
            ("text/plain", false),
        ] {
            let r = request(Method::POST, &[("content-type", content_type)]);
            assert_eq!(is_grpc_web(&r), web, "{content_type}");
        }
        assert!(!is_grpc_web(&request(Method::GET, &[])));
    }

    #[test]
    fn a_preflight_asks_for_a_method() {
        let ask = [("access-control-request-method", "POST")];
        assert!(is_preflight(&request(Method::OPTIONS, &ask)));
        assert!(!is_preflight(&request(Method::OPTIONS, &[])));
        assert!(!is_preflight(&request(Method::POST, &ask)));
    }

    #[test]
    fn no_origins_no_layer_and_bad_ones_stop_the_start() {
        assert!(!cors_layer(&[], true).unwrap().is_on());
        assert!(!cors_layer(&["".into(), " ".into()], true).unwrap().is_on());
        assert!(cors_layer(&["*".into()], true).unwrap().is_on());
        assert!(
            cors_layer(
                &["https://a.example".into(), "http://localhost:5173".into()],
                false
            )
            .unwrap()
            .is_on()
        );
        assert!(matches!(
            cors_layer(&["https://a.example/app".into()], false),
            Err(Error::Config(_))
        ));
    }
}
