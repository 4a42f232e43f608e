//! SQL for uploaded files, the storage accounting that follows them, and upload claims.
//!
//! Every file row carries what it reserves against the storage totals (`reserved`), and the totals
//! themselves are rows: `storage_total` (one row, for `--max-storage-bytes`) and `storage_usage`
//! (one row per user, for `--max-storage-bytes-per-user`). Every write runs as a job on the
//! writer thread (`Store::write`), in a `BEGIN IMMEDIATE` transaction of its own on the
//! database's one read-write connection, so it never contends with log appends for SQLite's
//! write lock. Each change to a file row that changes what it reserves moves the totals in that
//! same transaction, so a total is never computed with a `SUM` and can never drift from its rows,
//! and two uploads can never both fit into the same free space. Reads go through the read-only
//! pool, among them the newest-first listing of complete files (ListFiles), one statement per
//! shape so that each walks its partial index. This module never touches the log's tables (`streams`, `log`).
//!
//! On PostgreSQL every public method hands over to its half in `pg::files` (one transaction on
//! the pool per call, row locks for the totals), and upload claims hold across replicas. On
//! SQLite the single-server locks make every claim this server's own, so a claim here is a
//! guard that holds nothing.

use super::Store;
use super::pg::PgStore;
use crate::error::{Error, Result};
use rusqlite::{OptionalExtension, Transaction, params};
use sqlx::Row;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteRow;
use std::sync::Arc;

/// One uploaded (or uploading) file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub file_id: String,
    pub filename: String,
    pub content_type: String,
    pub total_size: u64,
    /// The client's declared SHA-256 while incomplete (may be empty); the verified one after.
    pub checksum: String,
    /// A client-chosen id: an interrupted upload keeps its bytes.
    pub resumable: bool,
    pub bytes_received: u64,
    pub complete: bool,
    pub created_at_micros: i64,
    pub updated_at_micros: i64,
    /// The `sub` that uploaded it; empty for legacy rows and uploads made with auth off.
    pub owner: String,
    /// Whether `reserved` counts in the owner's per-user usage row (user tokens only).
    pub charged: bool,
    /// Bytes this row counts against the storage totals now.
    pub reserved: u64,
    /// The `Upload-Metadata` a tus client created it with, as sent ('' for UploadFile's uploads):
    /// tus HEAD answers must carry it back.
    pub tus_metadata: String,
    /// A call is writing a chunk that must verify before it counts (tus `Upload-Checksum`), so
    /// the part may hold unverified bytes past `bytes_received`: the startup repair cuts them off
    /// instead of adopting them. Cleared whenever progress is recorded.
    pub unverified: bool,
}

/// Storage limits a reservation is checked against.
#[derive(Debug, Clone, Copy)]
pub struct StorageLimits {
    /// `--max-storage-bytes`: every row counts.
    pub global: u64,
    /// `--max-storage-bytes-per-user`: only charged rows count, in their owner's row.
    pub per_user: u64,
}

/// Why a reservation did not fit. Nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    /// The owner's own bytes in use before the request.
    User { used: u64 },
    /// Everyone's bytes in use before the request.
    Global { used: u64 },
}

/// PostgreSQL: the one connection whose session-level advisory locks are this server's claims,
/// outside the pool so that a long upload never holds one of the pool's connections. Every claim
/// holds it (`Arc`); it closes when the last claim is released, and the next claim opens it
/// again. A claim is as good as this session: when it breaks, PostgreSQL releases all its
/// locks, and the next claim opens a new session (a new generation).
#[derive(Default)]
pub(super) struct ClaimSession {
    pub(super) state: tokio::sync::Mutex<SessionState>,
}

impl std::fmt::Debug for ClaimSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimSession").finish_non_exhaustive()
    }
}

/// The claim connection, when open, and how many times it was opened: a claim taken on an
/// earlier connection died with it and has nothing left to unlock.
#[derive(Default)]
pub(super) struct SessionState {
    pub(super) conn: Option<PgConnection>,
    pub(super) generation: u64,
}

/// A claim (an upload id, or the turn to sweep), released when dropped. Holds nothing on
/// SQLite (`Default`). The store module does not export this type: callers keep it as
/// `Box<dyn Send + Sync>`, which drops it all the same.
#[derive(Debug, Default)]
pub struct UploadClaim {
    held: Option<HeldClaim>,
}

/// What releasing a PostgreSQL claim needs: its lock key text and the session generation it was
/// taken in.
#[derive(Debug)]
pub(super) struct HeldClaim {
    pub(super) store: PgStore,
    pub(super) session: Arc<ClaimSession>,
    pub(super) key: String,
    pub(super) generation: u64,
}

impl UploadClaim {
    pub(super) fn held(held: HeldClaim) -> Self {
        UploadClaim { held: Some(held) }
    }
}

impl Drop for UploadClaim {
    /// Drop cannot wait, so the unlock runs on a task of its own. Until it has run, the session
    /// still holds the lock: another server is refused a moment longer, and this server may take
    /// it again meanwhile (session locks stack, and each unlock releases one hold). Without a
    /// runtime (the process is ending) the lock ends with the session.
    fn drop(&mut self) {
        if let Some(held) = self.held.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                held.store
                    .release_claim(&held.session, &held.key, held.generation)
                    .await;
            });
        }
    }
}

fn file_from_row(row: &SqliteRow) -> Result<FileRow> {
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

/// The `files` columns in the order `file_from_row` and `insert_upload` use. A macro, so that
/// each query is one `&'static str` (`concat!`), as sqlx requires.
macro_rules! file_columns {
    () => {
        "file_id, filename, content_type, total_size, checksum, resumable, \
         bytes_received, complete, created_at_micros, updated_at_micros, owner, charged, reserved, \
         tus_metadata, unverified"
    };
}

pub(super) fn to_i64(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Internal(format!("{value} does not fit the store")))
}

/// What a file row reserves, as the accounting needs it: (owner, charged, reserved).
type Reservation = (String, bool, i64);

/// Reads a [`Reservation`] from the first three columns of a row.
fn reservation(row: &rusqlite::Row<'_>) -> rusqlite::Result<Reservation> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

/// Whether growing the totals by `delta` bytes for a row of `owner` would pass a limit, read
/// inside the job's transaction (which holds the write lock, so nothing moves the totals between
/// this check and the update that follows it). The per-user limit is checked first; `used` is
/// what was in use before the request.
fn refusal(
    tx: &Transaction<'_>,
    owner: &str,
    charged: bool,
    delta: i64,
    limits: StorageLimits,
) -> Result<Option<QuotaRefusal>> {
    // The same arithmetic as the updates in `move_totals`: a total never goes below zero.
    let after = |bytes: i64| bytes.saturating_add(delta).max(0);
    if charged {
        let bytes: i64 = tx
            .prepare_cached("SELECT bytes FROM storage_usage WHERE owner = ?1")?
            .query_row([owner], |row| row.get(0))
            .optional()?
            .unwrap_or(0);
        let now = after(bytes);
        if now as u64 > limits.per_user {
            return Ok(Some(QuotaRefusal::User {
                used: (now - delta).max(0) as u64,
            }));
        }
    }
    let bytes: i64 = tx
        .prepare_cached("SELECT bytes FROM storage_total WHERE id = 1")?
        .query_row([], |row| row.get(0))?;
    let now = after(bytes);
    if now as u64 > limits.global {
        return Ok(Some(QuotaRefusal::Global {
            used: (now - delta).max(0) as u64,
        }));
    }
    Ok(None)
}

/// Moves the totals by `delta` bytes for a row of `owner` (its per-user row only when
/// `charged`). With `limits`, a growth that would pass a limit is refused before anything is
/// written, and the caller writes nothing else either. A shrink never goes below zero (rows
/// written before the totals existed may release bytes they were never counted with).
fn move_totals(
    tx: &Transaction<'_>,
    owner: &str,
    charged: bool,
    delta: i64,
    limits: Option<StorageLimits>,
) -> Result<Option<QuotaRefusal>> {
    if delta == 0 {
        return Ok(None);
    }
    if let Some(limits) = limits
        && delta > 0
        && let Some(refused) = refusal(tx, owner, charged, delta, limits)?
    {
        return Ok(Some(refused));
    }
    if charged {
        tx.prepare_cached(
            "INSERT INTO storage_usage (owner, bytes) VALUES (?1, MAX(0, ?2)) \
             ON CONFLICT (owner) DO UPDATE SET bytes = MAX(0, bytes + ?2)",
        )?
        .execute(params![owner, delta])?;
    }
    let updated = tx
        .prepare_cached("UPDATE storage_total SET bytes = MAX(0, bytes + ?1) WHERE id = 1")?
        .execute([delta])?;
    if updated != 1 {
        return Err(Error::Internal("the storage_total row is missing".into()));
    }
    Ok(None)
}

/// The reservation of the incomplete upload `file_id`, if there is one.
fn incomplete_reservation(tx: &Transaction<'_>, file_id: &str) -> Result<Option<Reservation>> {
    Ok(tx
        .prepare_cached(
            "SELECT owner, charged, reserved FROM files WHERE file_id = ?1 AND complete = 0",
        )?
        .query_row([file_id], reservation)
        .optional()?)
}

impl Store {
    /// The file with this id, complete or not.
    pub async fn file(&self, file_id: &str) -> Result<Option<FileRow>> {
        if let Some(pg) = self.postgres() {
            return pg.file(file_id).await;
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            file_columns!(),
            " FROM files WHERE file_id = ?1"
        ))
        .bind(file_id)
        .fetch_optional(&self.sqlite()?.readers)
        .await?;
        row.as_ref().map(file_from_row).transpose()
    }

    /// Records a new upload reserving `file.reserved` bytes, in one transaction with the totals.
    /// `Ok(Err(_))` when it does not fit (nothing written); a constraint error if the id exists.
    pub async fn insert_upload(
        &self,
        file: &FileRow,
        limits: StorageLimits,
    ) -> Result<Result<(), QuotaRefusal>> {
        if let Some(pg) = self.postgres() {
            return pg.insert_upload(file, limits).await;
        }
        let file = file.clone();
        self.write(move |tx| {
            if let Some(refused) = move_totals(
                tx,
                &file.owner,
                file.charged,
                to_i64(file.reserved)?,
                Some(limits),
            )? {
                return Ok(Err(refused));
            }
            tx.prepare_cached(concat!(
                "INSERT INTO files (",
                file_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
            ))?
            .execute(params![
                file.file_id,
                file.filename,
                file.content_type,
                to_i64(file.total_size)?,
                file.checksum,
                file.resumable,
                to_i64(file.bytes_received)?,
                file.complete,
                file.created_at_micros,
                file.updated_at_micros,
                file.owner,
                file.charged,
                to_i64(file.reserved)?,
                file.tus_metadata,
                file.unverified,
            ])?;
            Ok(Ok(()))
        })
        .await
    }

    /// Sets what an incomplete upload reserves to `reserve` bytes (its whole declared size when a
    /// call resumes it), moving the totals in the same transaction, and marks whether the call
    /// writes a chunk that must verify first (`unverified`, see [`FileRow::unverified`]). Growth
    /// is checked against `limits`; `Ok(Err(_))` when it does not fit (nothing written).
    /// NOT_FOUND without the row.
    pub async fn reserve_upload(
        &self,
        file_id: &str,
        reserve: u64,
        unverified: bool,
        limits: StorageLimits,
    ) -> Result<Result<(), QuotaRefusal>> {
        if let Some(pg) = self.postgres() {
            return pg
                .reserve_upload(file_id, reserve, unverified, limits)
                .await;
        }
        let file_id = file_id.to_owned();
        self.write(move |tx| {
            let Some((owner, charged, reserved)) = incomplete_reservation(tx, &file_id)? else {
                return Err(Error::NotFound(format!("no upload {file_id}")));
            };
            let delta = to_i64(reserve)? - reserved;
            if let Some(refused) = move_totals(tx, &owner, charged, delta, Some(limits))? {
                return Ok(Err(refused));
            }
            tx.prepare_cached(
                "UPDATE files SET reserved = ?2, unverified = ?3 WHERE file_id = ?1",
            )?
            .execute(params![file_id, to_i64(reserve)?, unverified])?;
            Ok(Ok(()))
        })
        .await
    }

    /// Records how many bytes of an interrupted upload are durable (and verified: the
    /// `unverified` mark is cleared). No call is writing it any more, so it now reserves only
    /// those bytes; the rest of its declared size is released from the totals in the same
    /// transaction.
    pub async fn set_upload_progress(&self, file_id: &str, bytes: u64, now: i64) -> Result<()> {
        if let Some(pg) = self.postgres() {
            return pg.set_upload_progress(file_id, bytes, now).await;
        }
        let file_id = file_id.to_owned();
        self.write(move |tx| {
            if let Some((owner, charged, reserved)) = incomplete_reservation(tx, &file_id)? {
                move_totals(tx, &owner, charged, to_i64(bytes)? - reserved, None)?;
                tx.prepare_cached(
                    "UPDATE files SET bytes_received = ?2, reserved = ?2, updated_at_micros = ?3, \
                     unverified = 0 WHERE file_id = ?1",
                )?
                .execute(params![file_id, to_i64(bytes)?, now])?;
            }
            Ok(())
        })
        .await
    }

    /// Marks an upload complete with its verified checksum, once its file is in place. It
    /// reserved its whole declared size while the call wrote it, and keeps that.
    pub async fn complete_upload(&self, file_id: &str, checksum: &str, now: i64) -> Result<()> {
        if let Some(pg) = self.postgres() {
            return pg.complete_upload(file_id, checksum, now).await;
        }
        let file_id = file_id.to_owned();
        let checksum = checksum.to_owned();
        self.write(move |tx| {
            let row = tx
                .prepare_cached(
                    "SELECT owner, charged, reserved, total_size FROM files WHERE file_id = ?1",
                )?
                .query_row([&file_id], |row| {
                    Ok((reservation(row)?, row.get::<_, i64>(3)?))
                })
                .optional()?;
            let Some(((owner, charged, reserved), total)) = row else {
                return Err(Error::Internal(format!("upload {file_id} has no row")));
            };
            // Only the startup repair completes a row that reserved less (its kept bytes).
            move_totals(tx, &owner, charged, total - reserved, None)?;
            tx.prepare_cached(
                "UPDATE files SET complete = 1, checksum = ?2, bytes_received = total_size, \
                 reserved = total_size, updated_at_micros = ?3, unverified = 0 WHERE file_id = ?1",
            )?
            .execute(params![file_id, checksum, now])?;
            Ok(())
        })
        .await
    }

    /// Removes a file row and releases what it reserved, in one transaction.
    pub async fn delete_file(&self, file_id: &str) -> Result<()> {
        if let Some(pg) = self.postgres() {
            return pg.delete_file(file_id).await;
        }
        let file_id = file_id.to_owned();
        self.write(move |tx| {
            let row = tx
                .prepare_cached(
                    "DELETE FROM files WHERE file_id = ?1 RETURNING owner, charged, reserved",
                )?
                .query_row([&file_id], reservation)
                .optional()?;
            if let Some((owner, charged, reserved)) = row {
                move_totals(tx, &owner, charged, -reserved, None)?;
            }
            Ok(())
        })
        .await
    }

    /// Every file row, for the sweep (complete or not).
    pub async fn all_files(&self) -> Result<Vec<FileRow>> {
        if let Some(pg) = self.postgres() {
            return pg.all_files().await;
        }
        let rows = sqlx::query(concat!("SELECT ", file_columns!(), " FROM files"))
            .fetch_all(&self.sqlite()?.readers)
            .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// Incomplete uploads not touched since `before` (microseconds), for the expiry sweep.
    pub async fn stale_uploads(&self, before: i64) -> Result<Vec<FileRow>> {
        if let Some(pg) = self.postgres() {
            return pg.stale_uploads(before).await;
        }
        let rows = sqlx::query(concat!(
            "SELECT ",
            file_columns!(),
            " FROM files WHERE complete = 0 AND updated_at_micros < ?1"
        ))
        .bind(before)
        .fetch_all(&self.sqlite()?.readers)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// Up to `limit` complete files, newest completion first (ties by id, descending), starting
    /// after `after` (the completion time in microseconds and the id of the last file of the
    /// previous page); only `owner`'s when given. A complete row never changes again, so a file's
    /// place in this order is fixed and paging neither skips nor repeats one (a file completed
    /// meanwhile comes before the first page).
    pub async fn complete_files(
        &self,
        owner: Option<&str>,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<FileRow>> {
        if let Some(pg) = self.postgres() {
            return pg.complete_files(owner, after, limit).await;
        }
        let readers = &self.sqlite()?.readers;
        let limit = i64::from(limit);
        // One statement per shape, each matching a partial index (migrations/0008_tus_files.sql).
        let rows =
            match (owner, after) {
                (None, None) => {
                    sqlx::query(concat!(
                        "SELECT ",
                        file_columns!(),
                        " FROM files WHERE complete = 1 \
                     ORDER BY updated_at_micros DESC, file_id DESC LIMIT ?1"
                    ))
                    .bind(limit)
                    .fetch_all(readers)
                    .await?
                }
                (None, Some(after)) => sqlx::query(concat!(
                    "SELECT ",
                    file_columns!(),
                    " FROM files WHERE complete = 1 AND (updated_at_micros, file_id) < (?1, ?2) \
                     ORDER BY updated_at_micros DESC, file_id DESC LIMIT ?3"
                ))
                .bind(after.0)
                .bind(after.1)
                .bind(limit)
                .fetch_all(readers)
                .await?,
                (Some(owner), None) => {
                    sqlx::query(concat!(
                        "SELECT ",
                        file_columns!(),
                        " FROM files WHERE complete = 1 AND owner = ?1 \
                     ORDER BY updated_at_micros DESC, file_id DESC LIMIT ?2"
                    ))
                    .bind(owner)
                    .bind(limit)
                    .fetch_all(readers)
                    .await?
                }
                (Some(owner), Some(after)) => {
                    sqlx::query(concat!(
                        "SELECT ",
                        file_columns!(),
                        " FROM files WHERE complete = 1 AND owner = ?1 \
                     AND (updated_at_micros, file_id) < (?2, ?3) \
                     ORDER BY updated_at_micros DESC, file_id DESC LIMIT ?4"
                    ))
                    .bind(owner)
                    .bind(after.0)
                    .bind(after.1)
                    .bind(limit)
                    .fetch_all(readers)
                    .await?
                }
            };
        rows.iter().map(file_from_row).collect()
    }

    /// Claims the upload `file_id` for this server, so that no other server sharing the
    /// database writes it (or sweeps it away) meanwhile; `None` when another one holds it. The
    /// claim lasts until the guard is dropped. Callers take their in-process claim first: this
    /// one costs a round trip on PostgreSQL.
    pub async fn claim_upload(&self, file_id: &str) -> Result<Option<UploadClaim>> {
        if let Some(pg) = self.postgres() {
            return pg.claim_upload(file_id).await;
        }
        // The single-server locks make every upload this server's own.
        Ok(Some(UploadClaim::default()))
    }

    /// This server's turn to sweep uploads, or `None` when another server sharing the database
    /// is sweeping now (then this round is skipped). The turn lasts until the guard is dropped.
    pub async fn sweep_turn(&self) -> Result<Option<UploadClaim>> {
        if let Some(pg) = self.postgres() {
            return pg.sweep_turn().await;
        }
        Ok(Some(UploadClaim::default()))
    }
}
