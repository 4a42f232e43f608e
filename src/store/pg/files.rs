//! PostgreSQL queries for files (filled in by the PostgreSQL work).

use super::PgStore;

#[allow(dead_code)]
impl PgStore {}
