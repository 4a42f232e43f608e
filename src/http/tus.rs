//! tus 1.0 uploads under `/files/` (core protocol with the creation, creation-with-upload,
//! termination, expiration and checksum extensions). Not built yet.

use axum::Router;

pub(super) fn router() -> Router {
    Router::new()
}
