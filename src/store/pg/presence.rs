//! PostgreSQL queries for presence across replicas: this replica's leases on its members, and
//! the lapsed leases of replicas that died.
//!
//! Every decision about one user in one room ("is anyone else holding them present?") runs in
//! a transaction under a transaction-scoped advisory lock on that (space, room, user), so two
//! replicas deciding at once take turns. It must never touch the log.

use super::PgStore;
use crate::error::Result;
use sqlx::Row;
use std::time::Duration;

/// The database's clock in microseconds since the Unix epoch, so that every replica measures
/// leases by one clock. A macro, so that statements stay `&'static str`.
macro_rules! now_micros {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000000)::bigint"
    };
}

/// Takes the turn on one (space, room, user) for the rest of the transaction.
async fn lock_member(
    tx: &mut sqlx::PgConnection,
    space: i16,
    room: &str,
    user: &str,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))")
        .bind(format!("presence {} {room}{user}", room.len()))
        .bind(i64::from(space))
        .execute(tx)
        .await?;
    Ok(())
}

/// Whether a replica other than `replica` holds a live lease on the member.
async fn held_elsewhere(
    tx: &mut sqlx::PgConnection,
    space: i16,
    room: &str,
    user: &str,
    replica: &str,
) -> Result<bool> {
    let held: bool = sqlx::query_scalar(concat!(
        "SELECT EXISTS (SELECT 1 FROM presence_leases WHERE space = $1 AND room = $2 \
         AND user_id = $3 AND replica <> $4 AND expires_at > ",
        now_micros!(),
        ")"
    ))
    .bind(space)
    .bind(room)
    .bind(user)
    .bind(replica)
    .fetch_one(tx)
    .await?;
    Ok(held)
}

impl PgStore {
    /// Takes (or renews) this replica's lease on `user` in `room`. Returns whether another
    /// replica holds the user present already: then the user does not join anew.
    pub(crate) async fn take_presence_lease(
        &self,
        space: i16,
        room: &str,
        user: &str,
        lease: Duration,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        lock_member(&mut tx, space, room, user).await?;
        let elsewhere = held_elsewhere(&mut tx, space, room, user, &self.replica).await?;
        sqlx::query(concat!("INSERT INTO presence_leases (space, room, user_id, replica, expires_at) \
             VALUES ($1, $2, $3, $4, ", now_micros!(), " + $5) \
             ON CONFLICT (space, room, user_id, replica) DO UPDATE SET expires_at = EXCLUDED.expires_at"))
        .bind(space)
        .bind(room)
        .bind(user)
        .bind(&*self.replica)
        .bind(lease.as_micros() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(elsewhere)
    }

    /// Drops this replica's lease on `user` in `room`. Returns whether another replica still
    /// holds the user present: then the user does not leave.
    pub(crate) async fn drop_presence_lease(
        &self,
        space: i16,
        room: &str,
        user: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        lock_member(&mut tx, space, room, user).await?;
        sqlx::query(
            "DELETE FROM presence_leases WHERE space = $1 AND room = $2 AND user_id = $3 \
             AND replica = $4",
        )
        .bind(space)
        .bind(room)
        .bind(user)
        .bind(&*self.replica)
        .execute(&mut *tx)
        .await?;
        let elsewhere = held_elsewhere(&mut tx, space, room, user, &self.replica).await?;
        tx.commit().await?;
        Ok(elsewhere)
    }

    /// Pushes the expiry of this replica's leases on `held` (room, user) pairs `lease` into
    /// the future. Only the members this replica still holds: a lease whose drop failed is left
    /// to lapse, and a survivor (maybe this replica) announces the leave.
    pub(crate) async fn renew_presence_leases(
        &self,
        space: i16,
        held: &[(std::sync::Arc<str>, std::sync::Arc<str>)],
        lease: Duration,
    ) -> Result<()> {
        if held.is_empty() {
            return Ok(());
        }
        let rooms: Vec<&str> = held.iter().map(|(room, _)| &**room).collect();
        let users: Vec<&str> = held.iter().map(|(_, user)| &**user).collect();
        // An upsert: a lease that lapsed while this replica could not reach the database
        // comes back (its leave was announced meanwhile; the user is present again).
        sqlx::query(concat!(
            "INSERT INTO presence_leases (space, room, user_id, replica, expires_at) \
             SELECT $3, h.room, h.user_id, $2, ",
            now_micros!(),
            " + $1 FROM UNNEST($4::text[], $5::text[]) AS h(room, user_id) \
             ON CONFLICT (space, room, user_id, replica) DO UPDATE SET expires_at = EXCLUDED.expires_at"
        ))
        .bind(lease.as_micros() as i64)
        .bind(&*self.replica)
        .bind(space)
        .bind(rooms)
        .bind(users)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes the lapsed leases of `space` (of replicas that stopped renewing) and returns the
    /// (room, user) pairs that no replica holds present any more: their leave is owed. Each
    /// lapsed lease is returned to one caller only, however many replicas ask at once.
    pub(crate) async fn take_lapsed_presence(&self, space: i16) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(concat!(
            "DELETE FROM presence_leases WHERE ctid IN (SELECT ctid FROM presence_leases \
             WHERE space = $1 AND expires_at <= ",
            now_micros!(),
            " LIMIT 1000 FOR UPDATE SKIP LOCKED) \
             RETURNING room, user_id"
        ))
        .bind(space)
        .fetch_all(&self.pool)
        .await?;
        let mut owed = Vec::new();
        for row in rows {
            let room: String = row.try_get(0)?;
            let user: String = row.try_get(1)?;
            if owed.iter().any(|(r, u)| *r == room && *u == user) {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            lock_member(&mut tx, space, &room, &user).await?;
            let held: bool = sqlx::query_scalar(concat!(
                "SELECT EXISTS (SELECT 1 FROM presence_leases WHERE space = $1 AND room = $2 \
                 AND user_id = $3 AND expires_at > ",
                now_micros!(),
                ")"
            ))
            .bind(space)
            .bind(&room)
            .bind(&user)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            if !held {
                owed.push((room, user));
            }
        }
        Ok(owed)
    }

    /// Users that other replicas hold present in `room` now.
    pub(crate) async fn present_elsewhere(&self, space: i16, room: &str) -> Result<Vec<String>> {
        let users = sqlx::query_scalar(concat!(
            "SELECT DISTINCT user_id FROM presence_leases WHERE space = $1 AND room = $2 \
             AND replica <> $3 AND expires_at > ",
            now_micros!(),
            ""
        ))
        .bind(space)
        .bind(room)
        .bind(&*self.replica)
        .fetch_all(&self.pool)
        .await?;
        Ok(users)
    }
}
