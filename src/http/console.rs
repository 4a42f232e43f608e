//! The web console at `/console`: a single page whose assets (`console/dist/`, built from
//! `console/src/` by esbuild and committed) are embedded in the binary, so `cargo build` needs
//! no npm and a running server serves exactly the console it was built with. The page talks to
//! this same listener through gRPC-Web, `/files/` (tus) and `/metrics`, with the token the
//! person pastes: this module serves bytes and headers only. It must never read a token,
//! touch the files or the database, or serve anything but the embedded assets.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// One embedded file and the headers it goes out with.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../../console/dist/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../console/dist/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../console/dist/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../../console/dist/favicon.svg"),
    },
];

/// Each asset's ETag: a strong validator from its SHA-256, computed once. The names carry no
/// content hash, so browsers revalidate every time (`no-cache`) and get a 304 while the binary
/// is the same; after an upgrade they get the new page and script together.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.bytes);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"\""))
        })
        .collect()
});

/// Where the page may load from and talk to: its own origin only, no inline script or style,
/// no framing (the page holds a token), and no `<base>` or form posts to elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub(super) fn router() -> Router {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// `/console/{name}`: an embedded asset by name; anything else is 404.
async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == path) {
        Some(at) => serve(at, &headers),
        None => (
            StatusCode::NOT_FOUND,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            "no such console asset\n",
        )
            .into_response(),
    }
}

/// The asset at `at`, or 304 when the client's `If-None-Match` already names its ETag.
fn serve(at: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[at];
    let etag = ETAGS[at].clone();
    let common = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        // Download URLs carry signatures: never hand them to another site as a Referer.
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
    ];
    if none_match(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.bytes,
    )
        .into_response()
}

/// Whether `If-None-Match` lists `etag` (or is `*`); weak forms compare equal, as RFC 9110
/// asks for this header.
fn none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_built_and_named_once() {
        for (i, asset) in ASSETS.iter().enumerate() {
            assert!(!asset.bytes.is_empty(), "{} is empty", asset.name);
            assert!(
                ASSETS[..i].iter().all(|a| a.name != asset.name),
                "{} twice",
                asset.name
            );
        }
        let index = std::str::from_utf8(ASSETS[0].bytes).expect("index.html is UTF-8");
        for asset in &ASSETS[1..] {
            assert!(
                index.contains(&format!("/console/{}", asset.name)),
                "index.html does not load {}",
                asset.name
            );
        }
    }

    #[test]
    fn if_none_match_forms() {
        let etag = HeaderValue::from_static("\"abc\"");
        for (value, matches) in [
            ("\"abc\"", true),
            ("W/\"abc\"", true),
            ("\"x\", \"abc\"", true),
            ("*", true),
            ("\"abcd\"", false),
            ("abc", false),
            ("", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(value).expect("header"),
            );
            assert_eq!(none_match(&headers, &etag), matches, "{value:?}");
        }
        assert!(!none_match(&HeaderMap::new(), &etag));
    }
}
