//! Files: UploadFile, DownloadFile, GetFileInfo, GetUploadStatus and ListFiles, tus uploads
//! (for `http::tus`), plus the expiry sweep.
//!
//! Both upload front-ends, UploadFile and tus (POST and PATCH), run one pipeline: claim the id,
//! open the part, write, then either complete (fsync, verify, publish, mark complete) or keep
//! what is durable and record it as the upload's progress (see `Transfer`). A tus upload is
//! therefore an ordinary resumable upload with a server-chosen UUID: the same rows, quotas,
//! owners and checks, continued by either front-end. A tus chunk with `Upload-Checksum` counts
//! only once it verifies; until then its row is marked so that a crash cannot adopt it.
//!
//! An upload is metadata, then chunks. Bytes go to a temp part through the blob store while
//! SHA-256 is computed; the commit order is fsync, verify, rename, fsync the directory, and only
//! then the row is marked complete. Every failure keeps nothing, except that a resumable upload
//! (a client-chosen UUID) keeps the bytes it durably received when it is interrupted: its stream
//! broke, was cancelled, half-closed early, went idle, or sent a chunk refused for its offset or
//! size. A checksum mismatch is a failure and keeps nothing. This module never builds a path from
//! client input and never buffers a whole file.
//!
//! With auth on, a file belongs to the `sub` that uploaded it: only that user and service tokens
//! reach it, and anyone else is told it does not exist (NOT_FOUND for lookups, ALREADY_EXISTS for
//! an upload naming its id), so ids cannot be probed. Storage is accounted in rows that move in
//! the same transaction as the file row (see `store::files`): an upload reserves its declared
//! size while a call writes it, and only its kept bytes while it is interrupted.
//!
//! On PostgreSQL several replicas share the database and the storage directory: an upload's
//! claim on its id then holds across them (a database claim, taken after the in-process one),
//! and sweeps take turns, so that no replica writes or sweeps away an upload another one is
//! writing.

use crate::auth::{Identity, Role};
use crate::cancel::ClientCancelled;
use crate::error::{Error, Result};
use crate::files::{BlobStore, ChunkAlgorithm, PartHash, PartWriter, ReadFailure};
use crate::proto::{
    DownloadFileRequest, FileChunk, FileMetadata, GetUploadStatusResponse, ListFilesRequest,
    ListFilesResponse, UploadFileResponse, file_chunk, timestamp_from_micros,
};
use crate::store::{FileRow, QuotaRefusal, StorageLimits, Store};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64_URL};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use uuid::Uuid;

/// Largest chunk a download sends over gRPC. Two are read per blocking job, so an unread
/// download holds at most four (256 KiB).
pub const DOWNLOAD_CHUNK: usize = 64 * 1024;
/// Longest filename, in bytes.
const MAX_FILENAME_BYTES: usize = 255;
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
/// Interrupted uploads whose part hash state is cached (about 200 bytes each); past it the cache
/// starts over, and a continued upload reads its kept bytes again.
const MAX_CACHED_HASHES: usize = 10_000;

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// ListFiles page size when the request says 0, and the largest one.
const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = 1_000;

/// A tus upload as its client learns it (HEAD, and the answers to POST and PATCH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TusUpload {
    pub id: Uuid,
    /// Durable bytes (the whole length once complete).
    pub offset: u64,
    pub length: u64,
    /// `Upload-Metadata`: as the client sent it at creation, or built from the row (`filename`,
    /// `filetype`, `checksum`) for an upload made by UploadFile.
    pub metadata: String,
    /// When an incomplete upload expires, in microseconds since the epoch; `None` once complete.
    pub expires_at_micros: Option<i64>,
}

/// A tus creation, read from its headers by the HTTP layer.
#[derive(Debug, Clone, Default)]
pub struct TusCreate {
    /// `Upload-Length`.
    pub length: u64,
    /// `filename`, `filetype` and `checksum` (hex SHA-256 of the whole file) from
    /// `Upload-Metadata`; empty when absent.
    pub filename: String,
    pub filetype: String,
    pub checksum: String,
    /// The `Upload-Metadata` header as sent, kept for HEAD answers.
    pub metadata: String,
}

/// What a tus PATCH (or a creation-with-upload body) says besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct TusChunk {
    /// `Upload-Offset` (0 for a creation).
    pub offset: u64,
    /// `Content-Length`, when the body has one.
    pub content_length: Option<u64>,
    /// `Upload-Checksum`: the algorithm and the digest the body must have.
    pub checksum: Option<(ChunkAlgorithm, Vec<u8>)>,
}

/// Settings of the file capability.
#[derive(Debug, Clone)]
pub struct FileSettings {
    pub max_upload_bytes: u64,
    /// Quota on the declared sizes of every stored and in-progress file together.
    pub max_storage_bytes: u64,
    /// Quota on one user's files (uploads made with a user token); services count only against
    /// `max_storage_bytes`.
    pub max_storage_bytes_per_user: u64,
    /// How long an upload may send nothing, or a download's reader take nothing, before the
    /// transfer ends with DEADLINE_EXCEEDED.
    pub transfer_idle: Duration,
    pub upload_expiry: Duration,
    /// Base of download URLs, without a trailing slash.
    pub public_url: String,
    /// `--public-url` was given: tus `Location`s are absolute on it. Otherwise they are relative
    /// (`/files/<id>`), so a page reaches its upload on whatever origin it used (`localhost`
    /// rather than the listen address, a proxy in front), where an absolute URL on the listen
    /// address would be another origin that CORS and the console's CSP refuse.
    pub public_url_configured: bool,
    /// Signs download URLs, and requires the signature on plain-HTTP downloads, when auth is on.
    pub url_signer: Option<crate::auth::UrlSigner>,
}

/// Bytes moved, for introspection.
#[derive(Debug, Default)]
pub struct TransferStats {
    /// Upload bytes written to parts.
    pub uploaded: AtomicU64,
    /// Download bytes handed to gRPC and HTTP responses.
    pub downloaded: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct Files {
    pub transfers: Arc<TransferStats>,
    store: Store,
    blobs: BlobStore,
    settings: FileSettings,
    /// Uploads in progress, by id, with their live byte count. Holding an entry is the right to
    /// write that id's part.
    active: Arc<Mutex<HashMap<Uuid, Arc<AtomicU64>>>>,
    /// The part hash state of interrupted uploads this server recorded, with the row's
    /// `updated_at_micros` at that moment, so that a call continuing one (a tus PATCH per chunk)
    /// need not read and hash its kept bytes again.
    hashes: Arc<Mutex<HashMap<Uuid, (i64, PartHash)>>>,
    /// Upload tasks, so that shutdown can let each one finish or record its progress before
    /// the database closes.
    tasks: tokio_util::task::TaskTracker,
}

/// Parses a file id: a UUID in any of its usual spellings.
pub fn parse_file_id(id: &str) -> Result<Uuid> {
    if id.is_empty() {
        return Err(Error::invalid("file_id is required"));
    }
    Uuid::parse_str(id).map_err(|_| Error::invalid("file_id must be a UUID"))
}

/// A filename is metadata only, but it still has to be one name: no separators, no control
/// characters, not `.` or `..`, at most 255 bytes. Empty is allowed.
fn validate_filename(name: &str) -> Result<()> {
    if name.len() > MAX_FILENAME_BYTES {
        return Err(Error::invalid(format!(
            "filename is longer than {MAX_FILENAME_BYTES} bytes"
        )));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            "filename must not contain control characters",
        ));
    }
    if name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(Error::invalid(
            "filename must be a single name, without path separators",
        ));
    }
    Ok(())
}

/// `type/subtype` with optional parameters, printable ASCII, at most 255 bytes.
fn validate_content_type(value: &str) -> Result<String> {
    if value.is_empty() {
        return Ok(DEFAULT_CONTENT_TYPE.to_string());
    }
    let essence = value.split(';').next().unwrap_or_default().trim();
    let well_formed = value.len() <= 255
        && value.chars().all(|c| c.is_ascii() && !c.is_ascii_control())
        && essence
            .split_once('/')
            .is_some_and(|(t, s)| !t.is_empty() && !s.is_empty() && !s.contains('/'));
    if !well_formed {
        return Err(Error::invalid("content_type must look like type/subtype"));
    }
    Ok(value.to_string())
}

/// Empty, or 64 hex digits (normalized to lowercase).
fn validate_checksum(value: &str) -> Result<String> {
    if value.is_empty() || (value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit())) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(Error::invalid(
            "checksum must be the hex SHA-256 of the file (64 digits) or empty",
        ))
    }
}

/// The metadata message, validated.
struct Plan {
    id: Uuid,
    resumable: bool,
    filename: String,
    content_type: String,
    total_size: u64,
    /// Declared SHA-256, empty when the client gave none.
    checksum: String,
}

/// Releases an upload's claim on its id when the upload ends, however it ends.
struct Claim {
    id: Uuid,
    active: Arc<Mutex<HashMap<Uuid, Arc<AtomicU64>>>>,
    progress: Arc<AtomicU64>,
    /// The store's claim, which other servers sharing the database respect (it holds nothing on
    /// SQLite); released when this is dropped, after the in-process entry.
    _across_servers: Option<Box<dyn Send + Sync>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Whether `identity` reaches a file uploaded by `owner`. With auth off (`None`) every file is
/// open. A service reaches every file; a user only its own. A file with no owner (uploaded before
/// ownership existed, or with auth off) is for services only: nobody can prove it is theirs.
fn reaches(identity: Option<&Identity>, owner: &str) -> bool {
    match identity {
        None => true,
        Some(identity) if identity.role == Role::Service => true,
        Some(identity) => !owner.is_empty() && identity.sub == owner,
    }
}

/// The answer when another call holds an upload's claim.
fn busy() -> Error {
    Error::Aborted("another upload to this file_id is in progress".into())
}

/// A tus request whose `Upload-Offset` is not the upload's.
fn offset_mismatch(sent: u64, offset: u64) -> Error {
    Error::FailedPrecondition(format!(
        "Upload-Offset {sent} does not match the upload's offset {offset}"
    ))
}

/// A tus request body longer than the room left in its upload.
fn too_long(room: u64) -> Error {
    Error::ResourceExhausted(format!(
        "the request body is longer than the {room} bytes left before Upload-Length"
    ))
}

/// A ListFiles page token: the completion time and id of the last file of a page, as
/// `<micros>.<id>` in unpadded base64url, so that clients treat it as opaque.
fn page_token(completed_at_micros: i64, file_id: &str) -> String {
    BASE64_URL.encode(format!("{completed_at_micros}.{file_id}"))
}

/// Reads a token written by [`page_token`]; anything else is INVALID_ARGUMENT.
fn parse_page_token(token: &str) -> Result<(i64, String)> {
    let bad = || Error::invalid("page_token is not one this server returned");
    let text = BASE64_URL.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(text).map_err(|_| bad())?;
    let (at, id) = text.split_once('.').ok_or_else(bad)?;
    let at = at.parse::<i64>().map_err(|_| bad())?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok((at, id.to_string()))
}

/// The answer to an UploadFile naming an id that someone else holds, whatever that upload's
/// state: it says only that the id is taken.
fn taken(id: &Uuid) -> Error {
    Error::AlreadyExists(format!("file_id {id} is already taken"))
}

fn metadata_of(row: &FileRow) -> FileMetadata {
    FileMetadata {
        filename: row.filename.clone(),
        total_size: row.total_size as i64,
        content_type: row.content_type.clone(),
        checksum: row.checksum.clone(),
        file_id: row.file_id.clone(),
        created_at: Some(timestamp_from_micros(row.created_at_micros)),
        download_url: String::new(),
    }
}

impl Files {
    pub fn new(store: Store, blobs: BlobStore, settings: FileSettings) -> Self {
        Files {
            transfers: Arc::default(),
            store,
            blobs,
            settings,
            active: Arc::default(),
            hashes: Arc::default(),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Runs an upload on its own task, so that its cleanup completes even when the RPC's future
    /// is dropped because the client reset the call.
    pub async fn upload_in_task<S>(
        &self,
        messages: S,
        cancelled: ClientCancelled,
        identity: Option<Identity>,
    ) -> Result<UploadFileResponse, Status>
    where
        S: Stream<Item = Result<FileChunk, Status>> + Unpin + Send + 'static,
    {
        let files = self.clone();
        self.tasks
            .spawn(async move { files.upload(messages, cancelled, identity).await })
            .await
            .map_err(|e| Status::from(Error::Internal(format!("upload task failed: {e}"))))?
    }

    /// Waits for running upload tasks to finish (at shutdown, after the listener closed).
    pub async fn wait_for_uploads(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// How long a transfer may move nothing before it is ended.
    pub fn transfer_idle(&self) -> Duration {
        self.settings.transfer_idle
    }

    fn limits(&self) -> StorageLimits {
        StorageLimits {
            global: self.settings.max_storage_bytes,
            per_user: self.settings.max_storage_bytes_per_user,
        }
    }

    /// The client-facing refusal of a reservation that does not fit. A user is told about its
    /// own usage only; the global message names no one.
    fn over_quota(&self, refusal: QuotaRefusal, wanted: u64) -> Error {
        match refusal {
            QuotaRefusal::User { used } => Error::ResourceExhausted(format!(
                "storage quota per user: your files use {used} of {} bytes; {wanted} more do not fit",
                self.settings.max_storage_bytes_per_user
            )),
            QuotaRefusal::Global { used } => Error::ResourceExhausted(format!(
                "storage quota: {used} bytes of {} are in use; {wanted} more do not fit",
                self.settings.max_storage_bytes
            )),
        }
    }

    fn plan(&self, metadata: FileMetadata) -> Result<Plan> {
        if metadata.total_size < 0 {
            return Err(Error::invalid("total_size must be 0 or more"));
        }
        let total_size = metadata.total_size as u64;
        if total_size > self.settings.max_upload_bytes {
            return Err(Error::ResourceExhausted(format!(
                "total_size {total_size} is over the limit of {} bytes",
                self.settings.max_upload_bytes
            )));
        }
        validate_filename(&metadata.filename)?;
        let content_type = validate_content_type(&metadata.content_type)?;
        let checksum = validate_checksum(&metadata.checksum)?;
        let (id, resumable) = if metadata.file_id.is_empty() {
            (Uuid::new_v4(), false)
        } else {
            (parse_file_id(&metadata.file_id)?, true)
        };
        Ok(Plan {
            id,
            resumable,
            filename: metadata.filename,
            content_type,
            total_size,
            checksum,
        })
    }

    /// Claims `id` for one upload (or one sweep of it): in-process first (cheap), then in the
    /// store, which on PostgreSQL holds across every replica. ABORTED when anyone holds it.
    async fn claim(&self, id: Uuid) -> Result<Claim> {
        let mut claim = {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if active.contains_key(&id) {
                return Err(busy());
            }
            let progress = Arc::new(AtomicU64::new(0));
            active.insert(id, progress.clone());
            Claim {
                id,
                active: self.active.clone(),
                progress,
                _across_servers: None,
            }
        };
        // Dropping `claim` on the way out releases the in-process entry.
        match self.store.claim_upload(&id.to_string()).await? {
            Some(held) => claim._across_servers = Some(Box::new(held)),
            None => return Err(busy()),
        }
        Ok(claim)
    }

    /// Claims an id found in the storage directory without a row in the listing the sweep
    /// started from: `Some` only when, under the claim, it still has no row (an upload that
    /// began meanwhile, here or on another replica, holds the claim or has its row by then).
    async fn claim_leftover(&self, id: Uuid) -> Result<Option<Claim>> {
        let claim = match self.claim(id).await {
            Ok(claim) => claim,
            Err(Error::Aborted(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(match self.store.file(&id.to_string()).await? {
            None => Some(claim),
            Some(_) => None,
        })
    }

    /// The public URL of a file; signed, with an expiry, when auth is on.
    pub fn download_url(&self, id: &Uuid) -> String {
        let url = format!("{}/files/{}", self.settings.public_url, id.hyphenated());
        match &self.settings.url_signer {
            Some(signer) => format!("{url}?{}", signer.query(id)),
            None => url,
        }
    }

    /// Whether a plain-HTTP download of `id` with this query may go ahead: always when auth is
    /// off, else only with a genuine, unexpired signature.
    pub fn check_download_url(
        &self,
        id: &Uuid,
        query: Option<&str>,
    ) -> Result<(), crate::auth::UrlRefusal> {
        match &self.settings.url_signer {
            Some(signer) => signer.check(id, query),
            None => Ok(()),
        }
    }

    /// UploadFile. `cancelled` is raised when the client reset the call: the upload then counts
    /// as interrupted even though its stream looked complete. `identity` is the caller (`None`
    /// with auth off): it owns a new upload, and only it (or a service) may continue one.
    pub async fn upload<S>(
        &self,
        mut messages: S,
        cancelled: ClientCancelled,
        identity: Option<Identity>,
    ) -> Result<UploadFileResponse, Status>
    where
        S: Stream<Item = Result<FileChunk, Status>> + Unpin,
    {
        let idle = self.settings.transfer_idle;
        let first = tokio::time::timeout(idle, messages.next())
            .await
            .map_err(|_| {
                Error::DeadlineExceeded(format!(
                    "the upload sent no metadata within {} s",
                    idle.as_secs_f64()
                ))
            })?;
        let metadata = match first {
            None => return Err(Error::invalid("an upload starts with a metadata message").into()),
            Some(Err(status)) => return Err(status),
            Some(Ok(FileChunk {
                data: Some(file_chunk::Data::Metadata(metadata)),
                ..
            })) => metadata,
            Some(Ok(_)) => {
                return Err(
                    Error::invalid("the first message must be metadata, not a chunk").into(),
                );
            }
        };
        let plan = self.plan(metadata)?;
        let identity = identity.as_ref();
        let key = plan.id.to_string();
        // Someone else's id is taken, whatever its state, before anything else can answer
        // (not even ABORTED for an upload in progress).
        if plan.resumable
            && let Some(row) = self.store.file(&key).await?
            && !reaches(identity, &row.owner)
        {
            return Err(taken(&plan.id).into());
        }
        let claim = match self.claim(plan.id).await {
            Ok(claim) => claim,
            Err(busy @ Error::Aborted(_)) => {
                return Err(match self.store.file(&key).await? {
                    _ if identity.is_none() => busy,
                    Some(row) if reaches(identity, &row.owner) => busy,
                    // Another caller's upload holds the id (its row may not be written yet).
                    _ => taken(&plan.id),
                }
                .into());
            }
            Err(other) => return Err(other.into()),
        };

        let row = match self.store.file(&key).await? {
            Some(row) if !reaches(identity, &row.owner) => return Err(taken(&plan.id).into()),
            Some(row) if row.complete => {
                return Err(Error::AlreadyExists(format!(
                    "file {} is already complete",
                    row.file_id
                ))
                .into());
            }
            Some(row) => {
                if row.filename != plan.filename
                    || row.total_size != plan.total_size
                    || row.content_type != plan.content_type
                    || row.checksum != plan.checksum
                {
                    return Err(Error::FailedPrecondition(
                        "metadata differs from the interrupted upload with this file_id".into(),
                    )
                    .into());
                }
                self.reserve_whole(&row, false).await?;
                row
            }
            None => self.insert_planned(&plan, identity, "", false).await?,
        };

        let mut transfer = self.open_transfer(claim, &row).await?;
        match self.receive(&mut transfer, messages, cancelled).await {
            Ok(()) => {
                let done = self.complete_transfer(transfer).await?;
                Ok(UploadFileResponse {
                    file_id: plan.id.to_string(),
                    bytes_uploaded: done.bytes as i64,
                    download_url: self.download_url(&plan.id),
                    checksum_verified: done.verified,
                })
            }
            Err(error) => {
                // A checksum mismatch keeps nothing; any other interruption keeps what arrived.
                let keep = !matches!(error, Error::DataLoss(_));
                self.interrupt_transfer(transfer, keep).await;
                Err(error.into())
            }
        }
    }

    /// Records a new upload of `plan`, owned by `identity`, reserving its whole declared size
    /// (RESOURCE_EXHAUSTED when that does not fit). Its id must be claimed. `tus_metadata` is a
    /// tus creation's `Upload-Metadata` ('' for UploadFile); `unverified` marks a first chunk that
    /// must verify before it counts.
    async fn insert_planned(
        &self,
        plan: &Plan,
        identity: Option<&Identity>,
        tus_metadata: &str,
        unverified: bool,
    ) -> Result<FileRow> {
        let now = now_micros();
        let row = FileRow {
            file_id: plan.id.to_string(),
            filename: plan.filename.clone(),
            content_type: plan.content_type.clone(),
            total_size: plan.total_size,
            checksum: plan.checksum.clone(),
            resumable: plan.resumable,
            bytes_received: 0,
            complete: false,
            created_at_micros: now,
            updated_at_micros: now,
            owner: identity.map(|i| i.sub.clone()).unwrap_or_default(),
            charged: identity.is_some_and(|i| i.role == Role::User),
            reserved: plan.total_size,
            tus_metadata: tus_metadata.to_string(),
            unverified,
        };
        if let Err(refusal) = self.store.insert_upload(&row, self.limits()).await? {
            return Err(self.over_quota(refusal, plan.total_size));
        }
        Ok(row)
    }

    /// While an upload is interrupted it reserves only its kept bytes: a call that continues it
    /// reserves the whole declared size again, or is refused (RESOURCE_EXHAUSTED) with the kept
    /// bytes untouched. `unverified` marks a call whose chunk must verify before it counts.
    async fn reserve_whole(&self, row: &FileRow, unverified: bool) -> Result<()> {
        if let Err(refusal) = self
            .store
            .reserve_upload(&row.file_id, row.total_size, unverified, self.limits())
            .await?
        {
            let wanted = row.total_size.saturating_sub(row.reserved);
            return Err(self.over_quota(refusal, wanted));
        }
        Ok(())
    }

    /// Opens the part of a claimed upload whose row (as read under the claim) is in place,
    /// continuing after its recorded bytes. Their hash state comes from this server's cache when
    /// it recorded them itself and nobody has touched the row since; otherwise the kept bytes are
    /// read and hashed again. A part that cannot be opened loses the whole upload.
    async fn open_transfer(&self, claim: Claim, row: &FileRow) -> Result<Transfer> {
        let id = claim.id;
        let resume = self.cached_hash(id, row);
        let (part, received) = match self.blobs.start_part(id, row.bytes_received, resume).await {
            Ok(started) => started,
            Err(e) => {
                self.discard(id).await;
                return Err(Error::from(e));
            }
        };
        claim.progress.store(received, Ordering::Relaxed);
        Ok(Transfer {
            id,
            total: row.total_size,
            checksum: row.checksum.clone(),
            resumable: row.resumable,
            received,
            part: Some(part),
            broke: true,
            claim,
        })
    }

    /// Appends `bytes` to a transfer's part; the caller has checked that they fit its declared
    /// size. A write that fails leaves a part nobody can trust: the transfer then keeps nothing.
    async fn write(&self, transfer: &mut Transfer, bytes: Vec<u8>) -> Result<()> {
        let Some(part) = transfer.part.as_mut() else {
            return Err(Error::Internal("the upload's part failed earlier".into()));
        };
        let len = bytes.len() as u64;
        self.transfers.uploaded.fetch_add(len, Ordering::Relaxed);
        if let Err(e) = part.write(bytes).await {
            transfer.part = None;
            return Err(Error::from(e));
        }
        transfer.received += len;
        transfer
            .claim
            .progress
            .store(transfer.received, Ordering::Relaxed);
        Ok(())
    }

    /// Ends a transfer that holds all its declared bytes: fsync, verify the size and the declared
    /// SHA-256 (DATA_LOSS when it differs), rename into place, fsync the directory, and only then
    /// mark the row complete. Any failure keeps nothing.
    async fn complete_transfer(&self, mut transfer: Transfer) -> Result<Completed> {
        let id = transfer.id;
        let Some(part) = transfer.part.take() else {
            self.discard(id).await;
            return Err(Error::Internal("the upload's part failed earlier".into()));
        };
        let summary = match part.finish().await {
            Ok(summary) => summary,
            Err(e) => {
                self.discard(id).await;
                return Err(e.into());
            }
        };
        if summary.bytes != transfer.total {
            self.discard(id).await;
            return Err(Error::Internal(format!(
                "part holds {} bytes, expected {}",
                summary.bytes, transfer.total
            )));
        }
        let verified = !transfer.checksum.is_empty();
        if verified && summary.sha256 != transfer.checksum {
            self.discard(id).await;
            return Err(Error::DataLoss(format!(
                "checksum mismatch: declared {}, received bytes hash to {}",
                transfer.checksum, summary.sha256
            )));
        }
        let commit = async {
            self.blobs.publish(id).await?;
            self.store
                .complete_upload(&id.to_string(), &summary.sha256, now_micros())
                .await
        };
        if let Err(error) = commit.await {
            // The file may be in place without its row; the discard removes both.
            self.discard(id).await;
            return Err(error);
        }
        self.forget_hash(id);
        tracing::info!(file_id = %id, bytes = summary.bytes, verified, "upload complete");
        Ok(Completed {
            bytes: summary.bytes,
            verified,
        })
    }

    /// Ends a transfer before its last byte. A resumable upload keeps what its part durably holds
    /// when `keep` (and its part is still sound), and records that as its progress, releasing
    /// the rest of its reservation; anything else is discarded. Returns the bytes kept, `None`
    /// when the upload is gone.
    async fn interrupt_transfer(&self, mut transfer: Transfer, keep: bool) -> Option<u64> {
        let id = transfer.id;
        match transfer.part.take() {
            Some(part) if keep && transfer.resumable => {
                self.keep_interrupted(id, part, transfer.broke).await
            }
            other => {
                // Stop the writing thread before its part is removed.
                if let Some(part) = other {
                    let _ = part.finish().await;
                }
                self.discard(id).await;
                None
            }
        }
    }

    async fn receive<S>(
        &self,
        transfer: &mut Transfer,
        mut messages: S,
        cancelled: ClientCancelled,
    ) -> Result<()>
    where
        S: Stream<Item = Result<FileChunk, Status>> + Unpin,
    {
        let id = transfer.id;
        let resumed_from = transfer.received;
        let mut first_chunk = true;
        let idle = self.settings.transfer_idle;
        loop {
            let Ok(next) = tokio::time::timeout(idle, messages.next()).await else {
                return Err(Error::DeadlineExceeded(format!(
                    "the upload sent nothing for {} s; resume it from GetUploadStatus",
                    idle.as_secs_f64()
                )));
            };
            let Some(message) = next else { break };
            let message = match message {
                Ok(message) => message,
                // A chunk message over the size limit: the client's fault, with its status.
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    return Err(Error::ResourceExhausted(status.message().to_string()));
                }
                Err(status) => {
                    tracing::info!(file_id = %id, code = ?status.code(), "upload interrupted");
                    return Err(Error::invalid("the upload stream broke off"));
                }
            };
            match message.data {
                Some(file_chunk::Data::Chunk(bytes)) => {
                    let received = transfer.received;
                    // `offset` 0 means "not set", except on the first chunk of a call that
                    // continues an interrupted upload: a client that restarts from byte 0
                    // would otherwise have its bytes appended in the wrong place.
                    let continuing = first_chunk && resumed_from > 0;
                    first_chunk = false;
                    if (message.offset != 0 || continuing) && message.offset as u64 != received {
                        return Err(Error::FailedPrecondition(format!(
                            "chunk offset {} does not match the {received} bytes received",
                            message.offset
                        )));
                    }
                    if bytes.len() as u64 > transfer.total - received {
                        return Err(Error::invalid(format!(
                            "more bytes than the declared total_size of {}",
                            transfer.total
                        )));
                    }
                    if bytes.is_empty() {
                        continue;
                    }
                    self.write(transfer, bytes).await?;
                }
                Some(file_chunk::Data::Metadata(_)) => {
                    return Err(Error::invalid("metadata may only be sent once, first"));
                }
                None => return Err(Error::invalid("a message must carry metadata or a chunk")),
            }
        }

        // A client's cancel also ends the stream; only the flag tells it from a half-close.
        if cancelled.is_set() {
            return Err(Error::invalid("the upload was cancelled"));
        }
        if transfer.received < transfer.total {
            return Err(Error::invalid(format!(
                "the stream ended after {} of {} bytes",
                transfer.received, transfer.total
            )));
        }
        Ok(())
    }

    /// Keeps an interrupted resumable upload's durable bytes and records how many there are;
    /// their hash state is cached for the next call that continues it here. `None` when the
    /// bytes could not be kept (the upload is discarded).
    async fn keep_interrupted(
        &self,
        id: Uuid,
        part: crate::files::PartWriter,
        broke: bool,
    ) -> Option<u64> {
        match part.finish().await {
            Ok(summary) => {
                let now = now_micros();
                if let Err(e) = self
                    .store
                    .set_upload_progress(&id.to_string(), summary.bytes, now)
                    .await
                {
                    tracing::error!(file_id = %id, error = %crate::error::cause_chain(&e), "cannot record upload progress");
                    self.forget_hash(id);
                    return None;
                }
                self.remember_hash(id, now, summary.hash);
                if broke {
                    tracing::info!(file_id = %id, bytes = summary.bytes, "kept interrupted upload for resume");
                } else {
                    // A tus PATCH that ended with its body: the usual way to send a chunk.
                    tracing::debug!(file_id = %id, bytes = summary.bytes, "upload offset recorded");
                }
                Some(summary.bytes)
            }
            Err(e) => {
                tracing::error!(file_id = %id, error = %e, "cannot keep interrupted upload; discarding it");
                self.discard(id).await;
                None
            }
        }
    }

    /// Removes everything of an upload: its part, its file and its row.
    async fn discard(&self, id: Uuid) {
        self.forget_hash(id);
        let removed = async {
            self.blobs.remove_part(id).await?;
            self.blobs.remove_file(id).await?;
            self.store.delete_file(&id.to_string()).await
        };
        if let Err(e) = removed.await {
            tracing::error!(file_id = %id, error = %crate::error::cause_chain(&e), "cannot remove a failed upload");
        }
    }

    /// Caches the hash state of an upload's part after this server recorded `hash.bytes` as its
    /// progress at `recorded_at` (the row's `updated_at_micros`).
    fn remember_hash(&self, id: Uuid, recorded_at: i64, hash: PartHash) {
        let mut hashes = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        if hashes.len() >= MAX_CACHED_HASHES {
            // Interrupted uploads past the bound rehash their kept bytes when continued.
            hashes.clear();
        }
        hashes.insert(id, (recorded_at, hash));
    }

    /// The cached hash state of `row`'s kept bytes, when it is still theirs: recorded by this
    /// server, and the row unchanged since (another replica that moved it moved its timestamp).
    fn cached_hash(&self, id: Uuid, row: &FileRow) -> Option<PartHash> {
        let (recorded_at, hash) = self
            .hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)?;
        (recorded_at == row.updated_at_micros && hash.bytes == row.bytes_received).then_some(hash)
    }

    fn forget_hash(&self, id: Uuid) {
        self.hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// A complete file's row when `identity` reaches it, or NOT_FOUND with the same message
    /// either way, so that another user's ids cannot be told from ids that do not exist.
    pub async fn complete_file(&self, id: &Uuid, identity: Option<&Identity>) -> Result<FileRow> {
        match self.store.file(&id.to_string()).await? {
            Some(row) if row.complete && reaches(identity, &row.owner) => Ok(row),
            _ => Err(Error::NotFound(format!("no file {id}"))),
        }
    }

    /// A complete file's row when its bytes are there to be read: NOT_FOUND without a complete
    /// row the caller reaches, DATA_LOSS when the row is complete but its file is gone from the
    /// storage directory. The row is kept: only an operator can say whether the bytes can be
    /// restored. Plain-HTTP downloads pass `None`: their signed URL already granted the file.
    pub async fn readable_file(&self, id: &Uuid, identity: Option<&Identity>) -> Result<FileRow> {
        let row = self.complete_file(id, identity).await?;
        if !self.blobs.file_exists(*id).await {
            tracing::error!(file_id = %id, "stored file is missing from the storage directory");
            return Err(Error::DataLoss(format!(
                "the bytes of file {id} are missing from the server's storage"
            )));
        }
        Ok(row)
    }

    /// GetFileInfo: answers from the row, also for a file whose bytes are missing, with a fresh
    /// download URL (signed when auth is on), so that an expired link can be renewed.
    pub async fn info(&self, file_id: &str, identity: Option<&Identity>) -> Result<FileMetadata> {
        let id = parse_file_id(file_id)?;
        let mut metadata = metadata_of(&self.complete_file(&id, identity).await?);
        metadata.download_url = self.download_url(&id);
        Ok(metadata)
    }

    /// GetUploadStatus: live progress of a running upload, or the durable bytes of an
    /// interrupted one. Another user's upload is NOT_FOUND, like one that does not exist.
    pub async fn status(
        &self,
        file_id: &str,
        identity: Option<&Identity>,
    ) -> Result<GetUploadStatusResponse> {
        let id = parse_file_id(file_id)?;
        let row = self
            .store
            .file(&id.to_string())
            .await?
            .filter(|row| reaches(identity, &row.owner))
            .ok_or_else(|| Error::NotFound(format!("no upload {id}")))?;
        let live = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|p| p.load(Ordering::Relaxed));
        Ok(GetUploadStatusResponse {
            file_id: row.file_id,
            bytes_received: live.unwrap_or(row.bytes_received) as i64,
            total_size: row.total_size as i64,
            complete: row.complete,
        })
    }

    /// DownloadFile: the metadata, then chunks of at most 64 KiB from `offset`. The chunks come
    /// from the blob store's paced reader, one at a time and only as the client takes them; a
    /// client that takes nothing for the idle time gets DEADLINE_EXCEEDED when it reads again
    /// (its file is closed at once). When the client goes away the stream is dropped, and with
    /// it the reader.
    pub async fn download(
        &self,
        request: DownloadFileRequest,
        identity: Option<&Identity>,
    ) -> Result<impl Stream<Item = Result<FileChunk, Status>> + Send + 'static> {
        let id = parse_file_id(&request.file_id)?;
        let row = self.readable_file(&id, identity).await?;
        if request.offset < 0 || request.offset as u64 > row.total_size {
            return Err(Error::OutOfRange(format!(
                "offset {} is outside the file's {} bytes",
                request.offset, row.total_size
            )));
        }
        let offset = request.offset as u64;
        // The same metadata GetFileInfo answers, with a fresh download URL.
        let mut metadata = metadata_of(&row);
        metadata.download_url = self.download_url(&id);
        let first = FileChunk {
            data: Some(file_chunk::Data::Metadata(metadata)),
            offset: offset as i64,
        };
        let idle = self.settings.transfer_idle;
        let chunks = self
            .blobs
            .read(id, offset, row.total_size - offset, DOWNLOAD_CHUNK, 2, idle);
        let mut position = offset;
        let transfers = self.transfers.clone();
        let chunks = chunks.map(move |read| {
            let bytes = read.map_err(|failure| Status::from(read_error(failure, idle)))?;
            let chunk_offset = position;
            position += bytes.len() as u64;
            transfers
                .downloaded
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok(FileChunk {
                offset: chunk_offset as i64,
                data: Some(file_chunk::Data::Chunk(bytes)),
            })
        });
        Ok(tokio_stream::once(Ok(first)).chain(chunks))
    }

    // ------------------------------------------------------------------------------ tus

    /// Largest `Upload-Length` a tus creation may declare (`--max-upload-bytes`).
    pub fn max_upload_bytes(&self) -> u64 {
        self.settings.max_upload_bytes
    }

    /// Where a tus client reaches upload `id`: `<--public-url>/files/<id>` when the public base
    /// is configured, else the relative `/files/<id>`, which tus clients resolve against the
    /// endpoint they created it on.
    pub fn upload_url(&self, id: &Uuid) -> String {
        if self.settings.public_url_configured {
            format!("{}/files/{}", self.settings.public_url, id.hyphenated())
        } else {
            format!("/files/{}", id.hyphenated())
        }
    }

    /// Whether an incomplete upload is past its expiry: the sweep removes exactly these, and tus
    /// already treats them as gone. One being written here is not, whatever its timestamp.
    fn expired(&self, row: &FileRow) -> bool {
        let expiry = self.settings.upload_expiry.as_micros() as i64;
        !row.complete
            && row.updated_at_micros.saturating_add(expiry) < now_micros()
            && Uuid::parse_str(&row.file_id).is_ok_and(|id| {
                !self
                    .active
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&id)
            })
    }

    /// An upload's row as a tus request from `identity` may see it: NOT_FOUND, with one message,
    /// when there is none, when it is someone else's, and when it has expired.
    async fn tus_row(&self, id: &Uuid, identity: Option<&Identity>) -> Result<FileRow> {
        match self.store.file(&id.to_string()).await? {
            Some(row) if reaches(identity, &row.owner) && !self.expired(&row) => Ok(row),
            _ => Err(Error::NotFound(format!("no upload {id}"))),
        }
    }

    /// What a tus client learns about an upload.
    fn tus_view(&self, id: Uuid, row: &FileRow) -> TusUpload {
        let metadata = if row.tus_metadata.is_empty() {
            // An upload made by UploadFile: its metadata in tus's form.
            let mut pairs = vec![
                format!("filename {}", BASE64.encode(&row.filename)),
                format!("filetype {}", BASE64.encode(&row.content_type)),
            ];
            if !row.checksum.is_empty() {
                pairs.push(format!("checksum {}", BASE64.encode(&row.checksum)));
            }
            pairs.join(",")
        } else {
            row.tus_metadata.clone()
        };
        TusUpload {
            id,
            offset: if row.complete {
                row.total_size
            } else {
                row.bytes_received
            },
            length: row.total_size,
            metadata,
            expires_at_micros: (!row.complete).then(|| {
                row.updated_at_micros
                    .saturating_add(self.settings.upload_expiry.as_micros() as i64)
            }),
        }
    }

    /// The answer after a request that wrote `id`: read again, so that its expiry is the new one.
    async fn tus_view_now(&self, id: Uuid, fallback: &FileRow) -> Result<TusUpload> {
        Ok(match self.store.file(&id.to_string()).await? {
            Some(row) => self.tus_view(id, &row),
            None => self.tus_view(id, fallback),
        })
    }

    /// tus HEAD: an upload's durable offset, length, metadata and expiry. The offset is the
    /// recorded one: bytes a PATCH is writing right now count once it has ended.
    pub async fn tus_info(&self, id: &Uuid, identity: Option<&Identity>) -> Result<TusUpload> {
        let row = self.tus_row(id, identity).await?;
        Ok(self.tus_view(*id, &row))
    }

    /// tus POST (creation, and creation-with-upload when `body` is given): a new resumable
    /// upload with a server-chosen UUID, owned by `identity`, reserving its declared size against
    /// the quotas (RESOURCE_EXHAUSTED when it does not fit). Returns the upload and, when a body
    /// was written, how that went: the upload exists even when its first bytes were refused
    /// (except after a whole-file checksum mismatch, which deletes it). Runs on its own task, so
    /// that the body's end is recorded even when the client goes away.
    pub async fn tus_create<S, E>(
        &self,
        request: TusCreate,
        identity: Option<Identity>,
        body: Option<(TusChunk, S)>,
    ) -> Result<(TusUpload, Option<Error>)>
    where
        S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let files = self.clone();
        self.tasks
            .spawn(async move { files.tus_create_here(request, identity, body).await })
            .await
            .map_err(|e| Error::Internal(format!("upload task failed: {e}")))?
    }

    async fn tus_create_here<S, E>(
        &self,
        request: TusCreate,
        identity: Option<Identity>,
        body: Option<(TusChunk, S)>,
    ) -> Result<(TusUpload, Option<Error>)>
    where
        S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let identity = identity.as_ref();
        let total_size = i64::try_from(request.length)
            .map_err(|_| Error::ResourceExhausted("Upload-Length is too large".into()))?;
        let mut plan = self.plan(FileMetadata {
            filename: request.filename,
            total_size,
            content_type: request.filetype,
            checksum: request.checksum,
            ..Default::default()
        })?;
        // Every tus upload can be continued: that is what tus is for.
        plan.resumable = true;
        let claim = self.claim(plan.id).await?;
        let verifying = body
            .as_ref()
            .is_some_and(|(chunk, _)| chunk.checksum.is_some());
        let row = self
            .insert_planned(&plan, identity, &request.metadata, verifying)
            .await?;
        let outcome = match body {
            Some((chunk, body)) => {
                let transfer = self.open_transfer(claim, &row).await?;
                self.tus_body(transfer, chunk, body).await.err()
            }
            None if plan.total_size == 0 => {
                // Nothing to send: the empty file is complete at once.
                let transfer = self.open_transfer(claim, &row).await?;
                let nothing = tokio_stream::empty::<std::io::Result<bytes::Bytes>>();
                self.tus_body(transfer, TusChunk::default(), nothing)
                    .await
                    .err()
            }
            None => {
                // No call writes it now: it reserves only its (no) kept bytes until a PATCH.
                self.store
                    .set_upload_progress(&row.file_id, 0, now_micros())
                    .await?;
                drop(claim);
                None
            }
        };
        Ok((self.tus_view_now(plan.id, &row).await?, outcome))
    }

    /// tus PATCH: writes `body` at `chunk.offset` of upload `id`. NOT_FOUND for an upload the
    /// caller does not reach (or an expired one), ABORTED while another request writes it,
    /// FAILED_PRECONDITION when the offset is not the upload's, RESOURCE_EXHAUSTED past its length
    /// or the quota, DATA_LOSS when a checksum does not match (see [`Self::tus_body`]). Runs on
    /// its own task, so that what arrived is recorded even when the client goes away mid-body.
    pub async fn tus_patch<S, E>(
        &self,
        id: Uuid,
        identity: Option<Identity>,
        chunk: TusChunk,
        body: S,
    ) -> Result<TusUpload>
    where
        S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let files = self.clone();
        self.tasks
            .spawn(async move { files.tus_patch_here(id, identity, chunk, body).await })
            .await
            .map_err(|e| Error::Internal(format!("upload task failed: {e}")))?
    }

    async fn tus_patch_here<S, E>(
        &self,
        id: Uuid,
        identity: Option<Identity>,
        chunk: TusChunk,
        body: S,
    ) -> Result<TusUpload>
    where
        S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let identity = identity.as_ref();
        let row = self.tus_row(&id, identity).await?;
        if row.complete {
            return self.patch_complete(id, &row, &chunk);
        }
        if !row.resumable {
            return Err(busy());
        }
        let claim = self.claim(id).await?;
        // Read again under the claim: the request before this one may have moved it.
        let row = self.tus_row(&id, identity).await?;
        if row.complete {
            return self.patch_complete(id, &row, &chunk);
        }
        if chunk.offset != row.bytes_received {
            return Err(offset_mismatch(chunk.offset, row.bytes_received));
        }
        self.reserve_whole(&row, chunk.checksum.is_some()).await?;
        let transfer = self.open_transfer(claim, &row).await?;
        self.tus_body(transfer, chunk, body).await?;
        self.tus_view_now(id, &row).await
    }

    /// A PATCH to an upload that is already complete: an empty one at its end changes nothing
    /// (a client retrying its last request); anything else has no room.
    fn patch_complete(&self, id: Uuid, row: &FileRow, chunk: &TusChunk) -> Result<TusUpload> {
        if chunk.offset != row.total_size {
            return Err(offset_mismatch(chunk.offset, row.total_size));
        }
        if chunk.content_length != Some(0) {
            return Err(Error::ResourceExhausted(
                "the upload is complete; no more bytes fit".into(),
            ));
        }
        Ok(self.tus_view(id, row))
    }

    /// tus DELETE (termination): removes an incomplete upload, its bytes and its reservation.
    /// A complete upload is a file, and files are not deleted here (PERMISSION_DENIED); ABORTED
    /// while a request writes it.
    pub async fn tus_terminate(&self, id: &Uuid, identity: Option<&Identity>) -> Result<()> {
        let refuse_complete = || {
            Error::PermissionDenied(
                "the upload is complete: it is a stored file now, and termination removes only \
                 unfinished uploads"
                    .into(),
            )
        };
        if self.tus_row(id, identity).await?.complete {
            return Err(refuse_complete());
        }
        let _claim = self.claim(*id).await?;
        if self.tus_row(id, identity).await?.complete {
            return Err(refuse_complete());
        }
        self.forget_hash(*id);
        self.blobs.remove_part(*id).await?;
        self.blobs.remove_file(*id).await?;
        self.store.delete_file(&id.to_string()).await?;
        tracing::info!(file_id = %id, "upload terminated");
        Ok(())
    }

    /// Writes one tus request body into a claimed transfer, and ends the transfer: complete when
    /// it holds every declared byte, else kept (its durable bytes recorded as its offset).
    ///
    /// With a chunk checksum the body counts only whole and verified: it is hashed as it is
    /// written, and when it does not match (DATA_LOSS), breaks off, stalls or overflows, it is cut
    /// off again, so the offset stays where it was. Without one, whatever arrived before the body
    /// broke off or stalled (`--transfer-idle-secs`, DEADLINE_EXCEEDED) is kept. A body longer
    /// than the room left is RESOURCE_EXHAUSTED, refused from its `Content-Length` before any
    /// byte when it has one. The last request also checks the whole file against the declared
    /// SHA-256: a mismatch is DATA_LOSS, and the upload is deleted. Returns the new offset.
    async fn tus_body<S, E>(
        &self,
        mut transfer: Transfer,
        chunk: TusChunk,
        mut body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let id = transfer.id;
        if transfer.received != chunk.offset {
            // The part kept less than its row said (it was cut short on disk).
            let kept = self.interrupt_transfer(transfer, true).await.unwrap_or(0);
            return Err(offset_mismatch(chunk.offset, kept));
        }
        let room = transfer.total - transfer.received;
        if chunk.content_length.is_some_and(|len| len > room) {
            self.interrupt_transfer(transfer, true).await;
            return Err(too_long(room));
        }
        // A body of undeclared length (chunked) can only be found too long once part of it is
        // written: its start is marked so that a refused body keeps nothing (sha1 is the
        // cheapest mark the part has; its digest is never looked at).
        let guard_overflow = chunk.checksum.is_none() && chunk.content_length.is_none();
        let mark = match &chunk.checksum {
            Some((algorithm, _)) => Some(*algorithm),
            None if guard_overflow => Some(ChunkAlgorithm::Sha1),
            None => None,
        };
        if let Some(algorithm) = mark
            && let Some(part) = transfer.part.as_mut()
            && let Err(e) = part.check_chunk(algorithm).await
        {
            transfer.part = None;
            self.interrupt_transfer(transfer, false).await;
            return Err(e.into());
        }
        let mut overflowed = false;
        let idle = self.settings.transfer_idle;
        let ended: Result<()> = loop {
            let Ok(next) = tokio::time::timeout(idle, body.next()).await else {
                break Err(Error::DeadlineExceeded(format!(
                    "the request body sent nothing for {} s; continue from the upload's offset",
                    idle.as_secs_f64()
                )));
            };
            let bytes = match next {
                None => break Ok(()),
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => {
                    tracing::info!(file_id = %id, error = %e, "tus request body broke off");
                    break Err(Error::invalid("the request body broke off"));
                }
            };
            if bytes.len() as u64 > transfer.total - transfer.received {
                overflowed = true;
                break Err(too_long(room));
            }
            if bytes.is_empty() {
                continue;
            }
            if let Err(e) = self.write(&mut transfer, Vec::from(bytes)).await {
                break Err(e);
            }
        };
        let ended = match (&chunk.checksum, ended) {
            (None, Err(error)) if guard_overflow && overflowed => {
                self.cut_chunk(&mut transfer).await.and(Err(error))
            }
            (None, ended) if guard_overflow => self.keep_chunk(&mut transfer).await.and(ended),
            (None, ended) => ended,
            (Some((_, expected)), Ok(())) => self.verify_chunk(&mut transfer, expected).await,
            (Some(_), Err(error)) => self.cut_chunk(&mut transfer).await.and(Err(error)),
        };
        match ended {
            Ok(()) if transfer.received == transfer.total => {
                self.complete_transfer(transfer).await?;
                Ok(chunk.offset + room)
            }
            Ok(()) => {
                transfer.broke = false;
                self.interrupt_transfer(transfer, true)
                    .await
                    .ok_or_else(|| {
                        Error::Internal("the upload's progress could not be kept".into())
                    })
            }
            Err(error) => {
                self.interrupt_transfer(transfer, true).await;
                Err(error)
            }
        }
    }

    /// Checks the chunk written since `check_chunk` against `expected`: kept when it matches, cut
    /// off (DATA_LOSS) when it does not.
    async fn verify_chunk(&self, transfer: &mut Transfer, expected: &[u8]) -> Result<()> {
        let Some(part) = transfer.part.as_mut() else {
            return Err(Error::Internal("the upload's part failed earlier".into()));
        };
        let digest = match part.chunk_digest().await {
            Ok(digest) => digest,
            Err(e) => {
                transfer.part = None;
                return Err(e.into());
            }
        };
        if digest.as_deref() == Some(expected) {
            if let Err(e) = part.accept_chunk().await {
                transfer.part = None;
                return Err(e.into());
            }
            return Ok(());
        }
        self.cut_chunk(transfer).await?;
        Err(Error::DataLoss(
            "Upload-Checksum does not match the request body; the chunk was discarded".into(),
        ))
    }

    /// Ends the mark of `check_chunk` and keeps what was written since (an unchecked body that
    /// broke off keeps the bytes that arrived, as any resumable upload does).
    async fn keep_chunk(&self, transfer: &mut Transfer) -> Result<()> {
        let Some(part) = transfer.part.as_mut() else {
            return Ok(());
        };
        if let Err(e) = part.accept_chunk().await {
            transfer.part = None;
            return Err(e.into());
        }
        Ok(())
    }

    /// Cuts off the chunk written since `check_chunk`, so the transfer stands where it started.
    async fn cut_chunk(&self, transfer: &mut Transfer) -> Result<()> {
        let Some(part) = transfer.part.as_mut() else {
            return Ok(());
        };
        let cut = async {
            part.discard_chunk().await?;
            part.bytes().await
        };
        match cut.await {
            Ok(bytes) => {
                transfer.received = bytes;
                transfer.claim.progress.store(bytes, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                transfer.part = None;
                Err(e.into())
            }
        }
    }

    // ------------------------------------------------------------------------ ListFiles

    /// ListFiles: the caller's own complete files (every file for a service, and with auth off),
    /// newest completion first, each with the metadata GetFileInfo answers (a fresh download URL
    /// included). `limit` 0 means 100, and more than 1,000 means 1,000. The page token is opaque
    /// to clients: the completion time and id of the last file of the previous page, so pages
    /// never skip or repeat a file; a token this server did not write is INVALID_ARGUMENT.
    pub async fn list(
        &self,
        request: ListFilesRequest,
        identity: Option<&Identity>,
    ) -> Result<ListFilesResponse> {
        let limit = match request.limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(parse_page_token(&request.page_token)?)
        };
        let owner = match identity {
            None => None,
            Some(identity) if identity.role == Role::Service => None,
            // Files without an owner are for services only (see `reaches`).
            Some(identity) if identity.sub.is_empty() => {
                return Ok(ListFilesResponse::default());
            }
            Some(identity) => Some(identity.sub.as_str()),
        };
        let mut rows = self
            .store
            .complete_files(
                owner,
                after.as_ref().map(|(at, id)| (*at, id.as_str())),
                limit + 1,
            )
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => page_token(last.updated_at_micros, &last.file_id),
            _ => String::new(),
        };
        let files = rows
            .iter()
            .map(|row| {
                let mut metadata = metadata_of(row);
                if let Ok(id) = Uuid::parse_str(&row.file_id) {
                    metadata.download_url = self.download_url(&id);
                }
                metadata
            })
            .collect();
        Ok(ListFilesResponse {
            files,
            next_page_token,
        })
    }

    /// Removes what an abandoned upload or a crash left behind.
    ///
    /// Every run removes resumable uploads untouched for longer than the expiry. The run at
    /// start (`startup`), before any upload of this server can begin, also repairs what a crash
    /// can leave: incomplete one-shot uploads and parts without a row go (nobody holds their
    /// claim: on SQLite the single-server lock makes them this server's own; on PostgreSQL a
    /// replica that died lost its claims with its session); an upload whose file was already
    /// renamed into place is completed when it verifies, and removed when it does not; and a
    /// resumable upload's recorded bytes are set to what its part durably holds.
    ///
    /// It never deletes what it cannot prove is its own: a complete row whose file is missing
    /// is kept and reported as broken (downloads answer DATA_LOSS), and a file with no row is
    /// moved to `<storage>/orphans/`, not deleted.
    ///
    /// Each incomplete upload, part and file without a row is examined under its upload claim
    /// and re-read, so a sweep never races an upload, here or on another replica. A complete
    /// row needs no claim: nothing makes it incomplete again. On PostgreSQL one replica sweeps
    /// at a time; a replica that finds another one sweeping skips the round (an empty report).
    pub async fn sweep(&self, startup: bool) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let Some(_turn) = self.store.sweep_turn().await? else {
            tracing::debug!("another replica is sweeping uploads; skipping this round");
            return Ok(report);
        };
        let expired_before = now_micros() - self.settings.upload_expiry.as_micros() as i64;
        let candidates = if startup {
            self.store.all_files().await?
        } else {
            self.store.stale_uploads(expired_before).await?
        };
        let mut known = std::collections::HashSet::new();
        for candidate in candidates {
            let Ok(id) = Uuid::parse_str(&candidate.file_id) else {
                continue;
            };
            known.insert(id);
            if candidate.complete {
                if startup && !self.blobs.file_exists(id).await {
                    tracing::error!(
                        file_id = %id,
                        "stored file is missing from the storage directory; its row is kept as a \
                         broken record (downloads answer DATA_LOSS) until the bytes are restored"
                    );
                    report.files_missing += 1;
                }
                continue;
            }
            let _claim = match self.claim(id).await {
                Ok(claim) => claim,
                // An upload is running; it is not abandoned.
                Err(Error::Aborted(_)) => continue,
                Err(e) => return Err(e),
            };
            let Some(row) = self.store.file(&candidate.file_id).await? else {
                continue;
            };
            if row.complete {
                continue; // Completed since the listing.
            }
            if startup && self.blobs.file_exists(id).await {
                // Renamed into place, but the crash came before the row said so.
                self.repair_renamed(id, &row, &mut report).await?;
                continue;
            }
            if row.updated_at_micros < expired_before || (startup && !row.resumable) {
                self.discard(id).await;
                report.rows_removed += 1;
                continue;
            }
            if startup {
                self.repair_resumable(id, &row).await?;
            }
        }
        if startup {
            let inventory = self.blobs.inventory().await?;
            for id in inventory.parts {
                if !known.contains(&id)
                    && let Some(_claim) = self.claim_leftover(id).await?
                {
                    self.blobs.remove_part(id).await?;
                    report.parts_removed += 1;
                }
            }
            let mut orphans = Vec::new();
            for id in inventory.files {
                if !known.contains(&id)
                    && let Some(_claim) = self.claim_leftover(id).await?
                {
                    orphans.push(self.blobs.move_to_orphans(id).await?);
                    report.orphans_moved += 1;
                }
            }
            if !orphans.is_empty() {
                let moved: Vec<String> = orphans.iter().map(|p| p.display().to_string()).collect();
                tracing::warn!(
                    count = moved.len(),
                    moved = ?moved,
                    "stored files with no row moved to the orphans directory (not deleted)"
                );
            }
            for stray in inventory.strays {
                tracing::warn!(path = %stray.display(), "unexpected entry in the storage directory; left alone");
            }
        }
        Ok(report)
    }

    /// After a crash between the rename of a verified part and the row's completion: completes
    /// the upload when the file still verifies (its declared size, and its declared checksum if
    /// it had one), and removes it like a part otherwise.
    async fn repair_renamed(
        &self,
        id: Uuid,
        row: &FileRow,
        report: &mut SweepReport,
    ) -> Result<()> {
        let (bytes, sha256) = self.blobs.hash_file(id).await?;
        if bytes != row.total_size || (!row.checksum.is_empty() && row.checksum != sha256) {
            tracing::warn!(file_id = %id, "renamed file of an unfinished upload does not verify; removing it");
            self.discard(id).await;
            report.rows_removed += 1;
            return Ok(());
        }
        self.blobs.remove_part(id).await?;
        self.store
            .complete_upload(&row.file_id, &sha256, now_micros())
            .await?;
        report.uploads_completed += 1;
        Ok(())
    }

    /// After a crash: records what a resumable upload's part durably holds. A part that was
    /// being written with a chunk still to verify (`unverified`) is cut back to the recorded
    /// bytes first: nothing checked what lies past them.
    async fn repair_resumable(&self, id: Uuid, row: &FileRow) -> Result<()> {
        let durable = if row.unverified {
            self.blobs.cut_part(id, row.bytes_received).await?
        } else {
            self.blobs.sync_part(id).await?
        }
        .unwrap_or(0);
        if row.unverified {
            // Recording progress clears the mark, whatever the bytes.
            let bytes = durable.min(row.total_size);
            self.store
                .set_upload_progress(&row.file_id, bytes, row.updated_at_micros)
                .await?;
            return Ok(());
        }
        if durable != row.bytes_received {
            let bytes = durable.min(row.total_size);
            self.store
                .set_upload_progress(&row.file_id, bytes, row.updated_at_micros)
                .await?;
        }
        Ok(())
    }
}

/// The error a download ends with when its read stops early.
pub fn read_error(failure: ReadFailure, idle: Duration) -> Error {
    match failure {
        ReadFailure::Io(e) => Error::from(e),
        ReadFailure::Idle => Error::DeadlineExceeded(format!(
            "the download was not read for {} s",
            idle.as_secs_f64()
        )),
    }
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub rows_removed: u64,
    /// Uploads found verified and in place after a crash, and marked complete.
    pub uploads_completed: u64,
    pub parts_removed: u64,
    /// Complete rows whose file is missing: kept, reported, answering DATA_LOSS.
    pub files_missing: u64,
    /// Files with no row, moved to `<storage>/orphans/`.
    pub orphans_moved: u64,
}

/// One call's hold on an upload, from its claim to its end: the open part and how far its bytes
/// got. Both front-ends (UploadFile, and tus PATCH and POST) move bytes only through this, with
/// [`Files::open_transfer`], [`Files::write`], then [`Files::complete_transfer`] or
/// [`Files::interrupt_transfer`].
struct Transfer {
    id: Uuid,
    total: u64,
    /// The declared SHA-256 of the whole file; empty when none was declared.
    checksum: String,
    resumable: bool,
    /// Bytes in the part (kept ones included).
    received: u64,
    /// `None` once a write failed: the part cannot be trusted, and nothing is kept.
    part: Option<PartWriter>,
    /// Whether the transfer ended early (a broken, stalled or refused stream) rather than with
    /// a tus request body that simply ended before the upload's last byte; only for the logs.
    broke: bool,
    /// Held until the transfer is dropped, after its end was recorded.
    claim: Claim,
}

/// A completed upload.
struct Completed {
    bytes: u64,
    /// Whether a declared SHA-256 was checked.
    verified: bool,
}
