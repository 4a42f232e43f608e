//! SQL for notification inboxes beside the log: each user's acknowledged cursor.
//!
//! The notifications themselves are ordinary log records (kind `notifications`), written only by
//! the log writer; this module never touches the log's tables (`streams`, `log`). Cursors are
//! written as jobs on the writer thread (`Store::write`), each a single statement in a
//! transaction of its own, so a cursor can never be seen half-updated or moved back; they are
//! read through the read-only pool. On PostgreSQL each method hands over to its half in
//! `pg::notify`, with the same semantics.

use super::Store;
use crate::error::Result;
use rusqlite::params;

impl Store {
    /// The sequence through which `user_id` has acknowledged notifications (0 when never).
    pub async fn notification_cursor(&self, user_id: &str) -> Result<u64> {
        if let Some(pg) = self.postgres() {
            return pg.notification_cursor(user_id).await;
        }
        let cursor: Option<i64> = sqlx::query_scalar(
            "SELECT acknowledged_through FROM notification_cursors WHERE user_id = ?1",
        )
        .bind(user_id)
        .fetch_optional(&self.sqlite()?.readers)
        .await?;
        Ok(cursor.unwrap_or(0) as u64)
    }

    /// Moves `user_id`'s cursor forward to `through`, or leaves it where it is when it is already
    /// at or past it, and returns the cursor as it now stands. One upsert statement: concurrent
    /// acknowledgements cannot interleave between a read and a write, so the larger always wins.
    pub async fn advance_notification_cursor(&self, user_id: &str, through: u64) -> Result<u64> {
        if let Some(pg) = self.postgres() {
            return pg.advance_notification_cursor(user_id, through).await;
        }
        let through = i64::try_from(through).map_err(|_| {
            crate::error::Error::Internal(format!("cursor {through} does not fit the store"))
        })?;
        let user_id = user_id.to_owned();
        let cursor: i64 = self
            .write(move |tx| {
                Ok(tx
                    .prepare_cached(
                        "INSERT INTO notification_cursors (user_id, acknowledged_through) \
                         VALUES (?1, ?2) ON CONFLICT (user_id) DO UPDATE SET \
                         acknowledged_through = \
                         max(acknowledged_through, excluded.acknowledged_through) \
                         RETURNING acknowledged_through",
                    )?
                    .query_row(params![user_id, through], |row| row.get(0))?)
            })
            .await?;
        Ok(cursor as u64)
    }
}
