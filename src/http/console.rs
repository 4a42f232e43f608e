//! The web console at `/console`: a single page served from assets embedded in the binary.
//! Not built yet.

use axum::Router;

pub(super) fn router() -> Router {
    Router::new()
}
