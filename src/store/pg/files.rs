//! The files tables on PostgreSQL: file rows, the storage totals that follow them, and the claims
//! that keep two replicas from writing (or sweeping) the same upload.
//!
//! Every write is one transaction on the pool, with the same semantics as the SQLite half in
//! `store::files`. Each change to what a row reserves locks the one `storage_total` row first
//! (`SELECT … FOR UPDATE`), checks the limits under that lock, and moves the totals in the same
//! transaction, so that replicas reserving at the same time take turns and two uploads can never
//! both fit into the same free space. File rows are locked before the totals, always in that
//! order. Claims are session-level advisory locks on one connection per replica outside the pool,
//! so a long upload never holds a pool connection. This module must never touch the log's tables,
//! nor hold the totals' lock across anything but its own statements.

use super::PgStore;
use crate::error::{Error, Result};
use crate::store::files::{
    ClaimSession, FileRow, HeldClaim, QuotaRefusal, StorageLimits, UploadClaim, to_i64,
};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection, Row};
use std::sync::{Arc, Mutex, Weak};

/// The `files` columns in the order `file_from_row` and `insert_upload` use (a macro, so that
/// each query is one `&'static str`).
macro_rules! file_columns {
    () => {
        "file_id, filename, content_type, total_size, checksum, resumable, \
         bytes_received, complete, created_at_micros, updated_at_micros, owner, charged, reserved, \
         tus_metadata, unverified"
    };
}

/// Takes an advisory lock on a key text (hashed by PostgreSQL, so every replica derives the same
/// key), without waiting.
const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended($1, 0))";
/// The key text of the turn to sweep uploads.
const SWEEP_KEY: &str = "streamhub upload sweep";

fn upload_key(file_id: &str) -> String {
    format!("streamhub upload {file_id}")
}

fn file_from_row(row: &PgRow) -> Result<FileRow> {
    Ok(FileRow {
        file_id: row.try_get("file_id")?,
        filename: row.try_get("filename")?,
        content_type: row.try_get("content_type")?,
        total_size: row.try_get::<i64, _>("total_size")? as u64,
        checksum: row.try_get("checksum")?,
        resumable: row.try_get("resumable")?,
        bytes_received: row.try_get::<i64, _>("bytes_received")? as u64,
        complete: row.try_get("complete")?,
        created_at_micros: row.try_get("created_at_micros")?,
        updated_at_micros: row.try_get("updated_at_micros")?,
        owner: row.try_get("owner")?,
        charged: row.try_get("charged")?,
        reserved: row.try_get::<i64, _>("reserved")? as u64,
        tus_metadata: row.try_get("tus_metadata")?,
        unverified: row.try_get("unverified")?,
    })
}

/// What a file row reserves: (owner, charged, reserved).
type Reservation = (String, bool, i64);

/// Moves the totals by `delta` bytes for a row of `owner` (its per-user row only when
/// `charged`), exactly as the SQLite half does. The `storage_total` row is locked first: every
/// change to either total goes through here, so under that lock nothing moves either of them
/// until COMMIT. With `limits`, a growth that would pass a limit is refused before anything is
/// written (the per-user limit first; `used` is what was in use before the request), and the
/// caller writes nothing else either. A shrink never goes below zero.
async fn move_totals(
    tx: &mut PgConnection,
    owner: &str,
    charged: bool,
    delta: i64,
    limits: Option<StorageLimits>,
) -> Result<Option<QuotaRefusal>> {
    if delta == 0 {
        return Ok(None);
    }
    let total: i64 = sqlx::query_scalar("SELECT bytes FROM storage_total WHERE id = 1 FOR UPDATE")
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::Internal("the storage_total row is missing".into()))?;
    if let Some(limits) = limits
        && delta > 0
    {
        let after = |bytes: i64| bytes.saturating_add(delta).max(0);
        if charged {
            let bytes: i64 = sqlx::query_scalar("SELECT bytes FROM storage_usage WHERE owner = $1")
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(0);
            let now = after(bytes);
            if now as u64 > limits.per_user {
                return Ok(Some(QuotaRefusal::User {
                    used: (now - delta).max(0) as u64,
                }));
            }
        }
        let now = after(total);
        if now as u64 > limits.global {
            return Ok(Some(QuotaRefusal::Global {
                used: (now - delta).max(0) as u64,
            }));
        }
    }
    if charged {
        sqlx::query(
            "INSERT INTO storage_usage (owner, bytes) VALUES ($1, GREATEST(0, $2)) \
             ON CONFLICT (owner) DO UPDATE SET bytes = GREATEST(0, storage_usage.bytes + $2)",
        )
        .bind(owner)
        .bind(delta)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE storage_total SET bytes = GREATEST(0, bytes + $1) WHERE id = 1")
        .bind(delta)
        .execute(&mut *tx)
        .await?;
    Ok(None)
}

/// The reservation of the incomplete upload `file_id`, if there is one, with its row locked.
async fn incomplete_reservation(
    tx: &mut PgConnection,
    file_id: &str,
) -> Result<Option<Reservation>> {
    Ok(sqlx::query_as(
        "SELECT owner, charged, reserved FROM files WHERE file_id = $1 AND NOT complete \
         FOR UPDATE",
    )
    .bind(file_id)
    .fetch_optional(tx)
    .await?)
}

/// The claim session of each open PostgreSQL store (by replica name) while any claim holds it.
static SESSIONS: Mutex<Vec<(Arc<str>, Weak<ClaimSession>)>> = Mutex::new(Vec::new());

/// Whether an error left the connection unusable (as opposed to a statement the database
/// refused on a healthy session, whose locks still stand).
fn is_connection_lost(e: &sqlx::Error) -> bool {
    !matches!(e, sqlx::Error::Database(_))
}

impl PgStore {
    /// See [`crate::store::Store::file`].
    pub(crate) async fn file(&self, file_id: &str) -> Result<Option<FileRow>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            file_columns!(),
            " FROM files WHERE file_id = $1"
        ))
        .bind(file_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(file_from_row).transpose()
    }

    /// See [`crate::store::Store::insert_upload`].
    pub(crate) async fn insert_upload(
        &self,
        file: &FileRow,
        limits: StorageLimits,
    ) -> Result<Result<(), QuotaRefusal>> {
        let mut tx = self.pool.begin().await?;
        if let Some(refused) = move_totals(
            &mut tx,
            &file.owner,
            file.charged,
            to_i64(file.reserved)?,
            Some(limits),
        )
        .await?
        {
            tx.rollback().await?;
            return Ok(Err(refused));
        }
        sqlx::query(concat!(
            "INSERT INTO files (",
            file_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ))
        .bind(&file.file_id)
        .bind(&file.filename)
        .bind(&file.content_type)
        .bind(to_i64(file.total_size)?)
        .bind(&file.checksum)
        .bind(file.resumable)
        .bind(to_i64(file.bytes_received)?)
        .bind(file.complete)
        .bind(file.created_at_micros)
        .bind(file.updated_at_micros)
        .bind(&file.owner)
        .bind(file.charged)
        .bind(to_i64(file.reserved)?)
        .bind(&file.tus_metadata)
        .bind(file.unverified)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// See [`crate::store::Store::reserve_upload`].
    pub(crate) async fn reserve_upload(
        &self,
        file_id: &str,
        reserve: u64,
        unverified: bool,
        limits: StorageLimits,
    ) -> Result<Result<(), QuotaRefusal>> {
        let mut tx = self.pool.begin().await?;
        let Some((owner, charged, reserved)) = incomplete_reservation(&mut tx, file_id).await?
        else {
            return Err(Error::NotFound(format!("no upload {file_id}")));
        };
        let delta = to_i64(reserve)? - reserved;
        if let Some(refused) = move_totals(&mut tx, &owner, charged, delta, Some(limits)).await? {
            tx.rollback().await?;
            return Ok(Err(refused));
        }
        sqlx::query("UPDATE files SET reserved = $2, unverified = $3 WHERE file_id = $1")
            .bind(file_id)
            .bind(to_i64(reserve)?)
            .bind(unverified)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// See [`crate::store::Store::set_upload_progress`].
    pub(crate) async fn set_upload_progress(
        &self,
        file_id: &str,
        bytes: u64,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if let Some((owner, charged, reserved)) = incomplete_reservation(&mut tx, file_id).await? {
            move_totals(&mut tx, &owner, charged, to_i64(bytes)? - reserved, None).await?;
            sqlx::query(
                "UPDATE files SET bytes_received = $2, reserved = $2, updated_at_micros = $3, \
                 unverified = FALSE WHERE file_id = $1",
            )
            .bind(file_id)
            .bind(to_i64(bytes)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// See [`crate::store::Store::complete_upload`].
    pub(crate) async fn complete_upload(
        &self,
        file_id: &str,
        checksum: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, bool, i64, i64)> = sqlx::query_as(
            "SELECT owner, charged, reserved, total_size FROM files WHERE file_id = $1 \
             FOR UPDATE",
        )
        .bind(file_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((owner, charged, reserved, total)) = row else {
            return Err(Error::Internal(format!("upload {file_id} has no row")));
        };
        // Only the startup repair completes a row that reserved less (its kept bytes).
        move_totals(&mut tx, &owner, charged, total - reserved, None).await?;
        sqlx::query(
            "UPDATE files SET complete = TRUE, checksum = $2, bytes_received = total_size, \
             reserved = total_size, updated_at_micros = $3, unverified = FALSE \
             WHERE file_id = $1",
        )
        .bind(file_id)
        .bind(checksum)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// See [`crate::store::Store::delete_file`].
    pub(crate) async fn delete_file(&self, file_id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let row: Option<Reservation> = sqlx::query_as(
            "DELETE FROM files WHERE file_id = $1 RETURNING owner, charged, reserved",
        )
        .bind(file_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((owner, charged, reserved)) = row {
            move_totals(&mut tx, &owner, charged, -reserved, None).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// See [`crate::store::Store::all_files`].
    pub(crate) async fn all_files(&self) -> Result<Vec<FileRow>> {
        let rows = sqlx::query(concat!("SELECT ", file_columns!(), " FROM files"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// See [`crate::store::Store::stale_uploads`].
    pub(crate) async fn stale_uploads(&self, before: i64) -> Result<Vec<FileRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            file_columns!(),
            " FROM files WHERE NOT complete AND updated_at_micros < $1"
        ))
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// See [`crate::store::Store::complete_files`]: one statement per shape, each matching a
    /// partial index (migrations_pg/0007_tus_files.sql); row comparisons walk the index.
    pub(crate) async fn complete_files(
        &self,
        owner: Option<&str>,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<FileRow>> {
        let limit = i64::from(limit);
        let rows = match (owner, after) {
            (None, None) => {
                sqlx::query(concat!(
                    "SELECT ",
                    file_columns!(),
                    " FROM files WHERE complete \
                     ORDER BY updated_at_micros DESC, file_id DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            (None, Some(after)) => {
                sqlx::query(concat!(
                    "SELECT ",
                    file_columns!(),
                    " FROM files WHERE complete AND (updated_at_micros, file_id) < ($1, $2) \
                     ORDER BY updated_at_micros DESC, file_id DESC LIMIT $3"
                ))
                .bind(after.0)
                .bind(after.1)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            (Some(owner), None) => {
                sqlx::query(concat!(
                    "SELECT ",
                    file_columns!(),
                    " FROM files WHERE complete AND owner = $1 \
                     ORDER BY updated_at_micros DESC, file_id DESC LIMIT $2"
                ))
                .bind(owner)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            (Some(owner), Some(after)) => {
                sqlx::query(concat!(
                    "SELECT ",
                    file_columns!(),
                    " FROM files WHERE complete AND owner = $1 \
                     AND (updated_at_micros, file_id) < ($2, $3) \
                     ORDER BY updated_at_micros DESC, file_id DESC LIMIT $4"
                ))
                .bind(owner)
                .bind(after.0)
                .bind(after.1)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(file_from_row).collect()
    }

    /// See [`crate::store::Store::claim_upload`]: an advisory lock on the upload's id, held by
    /// this replica's claim session until the guard is dropped.
    pub(crate) async fn claim_upload(&self, file_id: &str) -> Result<Option<UploadClaim>> {
        self.try_claim(upload_key(file_id)).await
    }

    /// See [`crate::store::Store::sweep_turn`]: one advisory lock on a fixed key, so that one
    /// replica at a time sweeps the shared storage directory.
    pub(crate) async fn sweep_turn(&self) -> Result<Option<UploadClaim>> {
        self.try_claim(SWEEP_KEY.to_owned()).await
    }

    /// This replica's claim session: the one that claims hold now, or a new one (connected at
    /// its first claim).
    fn claim_session(&self) -> Arc<ClaimSession> {
        let mut sessions = SESSIONS.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|(_, session)| session.strong_count() > 0);
        if let Some(session) = sessions
            .iter()
            .find(|(replica, _)| *replica == self.replica)
            .and_then(|(_, session)| session.upgrade())
        {
            return session;
        }
        let session = Arc::new(ClaimSession::default());
        sessions.push((self.replica.clone(), Arc::downgrade(&session)));
        session
    }

    /// Takes the advisory lock on `key` without waiting: `None` when another session holds it.
    /// Reconnects once when the claim connection was found lost (its locks went with it).
    async fn try_claim(&self, key: String) -> Result<Option<UploadClaim>> {
        let session = self.claim_session();
        let mut state = session.state.lock().await;
        let mut opened = false;
        loop {
            if state.conn.is_none() {
                state.conn = Some(PgConnection::connect_with(&self.options).await?);
                state.generation += 1;
                opened = true;
            }
            let conn = state
                .conn
                .as_mut()
                .ok_or_else(|| Error::Internal("the claim connection is not open".into()))?;
            match sqlx::query_scalar::<_, bool>(TRY_LOCK)
                .bind(&key)
                .fetch_one(conn)
                .await
            {
                Ok(taken) => {
                    if !taken
                        && Arc::strong_count(&session) == 1
                        && let Some(conn) = state.conn.take()
                    {
                        // Nothing holds the session: close it rather than drop it.
                        let _ = conn.close().await;
                    }
                    let generation = state.generation;
                    drop(state);
                    return Ok(taken.then(|| {
                        UploadClaim::held(HeldClaim {
                            store: self.clone(),
                            session: session.clone(),
                            key,
                            generation,
                        })
                    }));
                }
                Err(e) => {
                    let lost = is_connection_lost(&e);
                    if lost {
                        state.conn = None;
                    }
                    if lost && !opened {
                        tracing::warn!(
                            error = %crate::error::cause_chain(&e),
                            "the upload claim connection was lost, and the claims it held with \
                             it; reconnecting"
                        );
                        continue;
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// Releases a claim taken by [`Self::try_claim`] in session `generation`. A claim of an
    /// earlier session died with it and has nothing left to unlock.
    /// When no other claim holds the session any more, its connection is closed.
    pub(in crate::store) async fn release_claim(
        &self,
        session: &Arc<ClaimSession>,
        key: &str,
        generation: u64,
    ) {
        let mut state = session.state.lock().await;
        if state.generation != generation {
            return;
        }
        let Some(conn) = state.conn.as_mut() else {
            return;
        };
        match sqlx::query_scalar::<_, bool>(UNLOCK)
            .bind(key)
            .fetch_one(conn)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(key, "an upload claim was not held when released"),
            Err(e) => {
                tracing::warn!(
                    key,
                    error = %crate::error::cause_chain(&e),
                    "cannot release an upload claim"
                );
                if is_connection_lost(&e) {
                    state.conn = None;
                }
            }
        }
        // Only this release holds the session now (a claim being taken meanwhile waits for
        // the mutex, then opens a new connection).
        if Arc::strong_count(session) == 1
            && let Some(conn) = state.conn.take()
        {
            let _ = conn.close().await;
        }
    }
}

/// Two stores on one scratch database stand for two replicas. They find PostgreSQL as the
/// integration tests do, through `STREAMHUB_TEST_POSTGRES_URL` (default
/// `postgres://postgres@127.0.0.1:5432/postgres`), create and drop a database of their own, and
/// print one `skipped:` line when it is unreachable (a failure with
/// `STREAMHUB_REQUIRE_POSTGRES=1`).
#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::store::{FileRow, QuotaRefusal, StorageLimits, Store};
    use sqlx::Connection;
    use std::time::Duration;

    /// A fresh database on the test server, and two stores opened on it; `None` without one.
    async fn two_replicas(
        name: &str,
    ) -> Option<(String, Store, Store, Vec<crate::store::WriteQueue>)> {
        let url = admin_url();
        let mut admin = match sqlx::PgConnection::connect(&url).await {
            Ok(admin) => admin,
            Err(e) if std::env::var("STREAMHUB_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!(
                    "PostgreSQL unreachable at {} and STREAMHUB_REQUIRE_POSTGRES=1: {e}",
                    crate::secret::redact_url(&url)
                )
            }
            Err(e) => {
                // Straight to stderr: the harness captures `eprintln!` of a passing test.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "skipped: PostgreSQL unreachable at {} ({e}); set STREAMHUB_TEST_POSTGRES_URL",
                    crate::secret::redact_url(&url)
                );
                return None;
            }
        };
        let server = server_of(&url);
        let db = format!("streamhub_test_{name}_{}", std::process::id());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut admin)
            .await
            .expect("create the scratch database");
        let dir = std::env::temp_dir();
        let mut config = Config::in_dir(&dir);
        config.database_url = format!("{server}/{db}");
        let (a, qa) = crate::store::open(&config).await.expect("open replica a");
        let (b, qb) = crate::store::open(&config).await.expect("open replica b");
        Some((db, a, b, vec![qa, qb]))
    }

    fn admin_url() -> String {
        std::env::var("STREAMHUB_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// The URL without its database name, for naming another database on the same server.
    fn server_of(url: &str) -> String {
        let url = url.split('?').next().unwrap_or(url);
        match url.rsplit_once('/') {
            Some((server, _)) if server.contains("://") && !server.ends_with('/') => {
                server.to_string()
            }
            _ => url.to_string(),
        }
    }

    async fn drop_database(db: &str) {
        let mut admin = sqlx::PgConnection::connect(&admin_url())
            .await
            .expect("connect to the test server");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .expect("drop the scratch database");
    }

    fn upload(id: &str, size: u64) -> FileRow {
        FileRow {
            file_id: id.into(),
            filename: "f".into(),
            content_type: "application/octet-stream".into(),
            total_size: size,
            checksum: String::new(),
            resumable: true,
            bytes_received: 0,
            complete: false,
            created_at_micros: 1,
            updated_at_micros: 1,
            owner: "alice".into(),
            charged: true,
            reserved: size,
            tus_metadata: String::new(),
            unverified: false,
        }
    }

    #[tokio::test]
    async fn claims_and_sweep_turns_hold_across_replicas() {
        let Some((db, a, b, _queues)) = two_replicas("claims").await else {
            return;
        };
        let id = "0c2a2a55-9c77-4f0e-8a43-2b1f1b5b0c11";
        let held = a.claim_upload(id).await.unwrap().expect("a claims the id");
        assert!(
            b.claim_upload(id).await.unwrap().is_none(),
            "b must be refused"
        );
        let other = b
            .claim_upload("7d0f5d0e-1b9e-4a59-9d0c-5b1b2c3d4e5f")
            .await
            .unwrap();
        assert!(other.is_some(), "another id is free");
        let turn = a.sweep_turn().await.unwrap().expect("a sweeps");
        assert!(
            b.sweep_turn().await.unwrap().is_none(),
            "one sweep at a time"
        );
        drop(held);
        drop(turn);
        // The release runs on a task of its own.
        let mut got = None;
        for _ in 0..100 {
            got = b.claim_upload(id).await.unwrap();
            if got.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(got.is_some(), "b claims the id once a released it");
        assert!(b.sweep_turn().await.unwrap().is_some(), "b's turn to sweep");
        drop((got, other));
        drop_database(&db).await;
    }

    #[tokio::test]
    async fn concurrent_reservations_never_pass_the_quota() {
        let Some((db, a, b, _queues)) = two_replicas("quota").await else {
            return;
        };
        let limits = StorageLimits {
            global: 1000,
            per_user: 700,
        };
        let mut tasks = Vec::new();
        for i in 0..40 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let id = format!("id-{i}");
                let outcome = store
                    .insert_upload(&upload(&id, 100), limits)
                    .await
                    .unwrap();
                (id, outcome)
            }));
        }
        let mut stored = 0;
        // Which ones fit depends on who got the lock first.
        let mut one_stored = None;
        for task in tasks {
            let (id, outcome) = task.await.unwrap();
            match outcome {
                Ok(()) => {
                    stored += 1;
                    one_stored.get_or_insert(id);
                }
                Err(QuotaRefusal::User { used }) => assert_eq!(used, 700),
                Err(QuotaRefusal::Global { .. }) => panic!("the per-user limit comes first"),
            }
        }
        assert_eq!(stored, 7, "exactly the per-user quota's worth");
        let pg = a.postgres().unwrap();
        let (total, usage, sum): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT bytes FROM storage_total), \
             (SELECT bytes FROM storage_usage WHERE owner = 'alice'), \
             (SELECT SUM(reserved)::int8 FROM files)",
        )
        .fetch_one(&pg.pool)
        .await
        .unwrap();
        assert_eq!((total, usage, sum), (700, 700, 700));
        // Interrupted at 30 bytes: the rest is released; resuming reserves it again.
        let id = one_stored.expect("seven were stored");
        a.set_upload_progress(&id, 30, 2).await.unwrap();
        b.reserve_upload(&id, 100, false, limits)
            .await
            .unwrap()
            .unwrap();
        b.complete_upload(&id, "abc", 3).await.unwrap();
        let row = a.file(&id).await.unwrap().unwrap();
        assert!(row.complete && row.reserved == 100 && row.bytes_received == 100);
        a.delete_file(&id).await.unwrap();
        let total: i64 = sqlx::query_scalar("SELECT bytes FROM storage_total")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
        assert_eq!(total, 600);
        drop_database(&db).await;
    }
}
