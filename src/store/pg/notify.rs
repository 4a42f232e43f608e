//! Notification cursors on PostgreSQL: each user's acknowledged cursor, shared by every replica.
//!
//! The same semantics as the SQLite half in `store::notify`: a cursor is written by one upsert
//! statement (its own transaction), which takes the larger of the stored and the new value under
//! the row's lock, so concurrent acknowledgements from any replicas cannot move it back. This
//! module must never touch the log's tables; the notifications themselves are log records.

use super::PgStore;
use crate::error::{Error, Result};

impl PgStore {
    /// See [`crate::store::Store::notification_cursor`].
    pub(crate) async fn notification_cursor(&self, user_id: &str) -> Result<u64> {
        let cursor: Option<i64> = sqlx::query_scalar(
            "SELECT acknowledged_through FROM notification_cursors WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(cursor.unwrap_or(0) as u64)
    }

    /// See [`crate::store::Store::advance_notification_cursor`].
    pub(crate) async fn advance_notification_cursor(
        &self,
        user_id: &str,
        through: u64,
    ) -> Result<u64> {
        let through = i64::try_from(through)
            .map_err(|_| Error::Internal(format!("cursor {through} does not fit the store")))?;
        let cursor: i64 = sqlx::query_scalar(
            "INSERT INTO notification_cursors (user_id, acknowledged_through) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET acknowledged_through = \
             GREATEST(notification_cursors.acknowledged_through, EXCLUDED.acknowledged_through) \
             RETURNING acknowledged_through",
        )
        .bind(user_id)
        .bind(through)
        .fetch_one(&self.pool)
        .await?;
        Ok(cursor as u64)
    }
}
