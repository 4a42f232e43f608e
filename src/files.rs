//! The on-disk blob store for uploaded files.
//!
//! Bytes go to `<storage>/tmp/<id>.part`, hashed (SHA-256) as they are written, so a file is never
//! held in memory. A finished part is fsynced, then renamed to `<storage>/<id>` and the directory
//! fsynced: a crash leaves either the part or the whole file, never a torn one.
//!
//! No transfer ever holds a blocking thread while it waits on the network: each chunk is written
//! (or read) by its own short `spawn_blocking` job, with at most one job in flight per transfer,
//! so a stalled upload or an unread download costs about one chunk of memory and no thread. A read
//! also carries a send deadline: a reader that takes nothing for the idle time is ended. This
//! module only moves bytes; it never decides what an upload means and never touches the database.
//! File names on disk derive from the UUID alone, never from anything a client wrote.
//!
//! A part can also check one stretch of its bytes (a tus chunk with `Upload-Checksum`) against a
//! digest of its own, and cut that stretch off again when it does not match, so that an
//! unverified chunk never becomes part of the upload. A finished part hands back its hash state
//! ([`PartHash`]), so that the next call continuing it need not read its kept bytes again.
//!
//! On PostgreSQL every replica opens the same storage directory. Nothing here changes for that:
//! the file service claims an id (across replicas) before it touches that id's part or file, and
//! sweeps take turns, so this module never needs to know who else is writing.

use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Where the sweep puts stored files that have no row: `<storage>/orphans/`.
pub const ORPHANS_DIR: &str = "orphans";

/// Where files live.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
}

/// What a finished part holds.
#[derive(Debug, Clone)]
pub struct PartSummary {
    pub bytes: u64,
    /// Lowercase hex SHA-256 of all the part's bytes.
    pub sha256: String,
    /// The SHA-256 state after those bytes, to continue the part without reading them again.
    pub hash: PartHash,
}

/// The SHA-256 state of a part's first `bytes` bytes. Handing it to [`BlobStore::start_part`]
/// saves reading (and hashing) those bytes again; it must come from the same part, and the caller
/// must know the part's first `bytes` bytes have not changed since (the files service keys it by
/// the row's last update).
#[derive(Clone)]
pub struct PartHash {
    pub bytes: u64,
    hasher: Sha256,
}

impl std::fmt::Debug for PartHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartHash")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// A digest a chunk of a part can be checked against (tus `Upload-Checksum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkAlgorithm {
    Sha1,
    Sha256,
}

impl ChunkAlgorithm {
    /// Bytes of this algorithm's digest.
    pub fn digest_len(self) -> usize {
        match self {
            ChunkAlgorithm::Sha1 => 20,
            ChunkAlgorithm::Sha256 => 32,
        }
    }

    fn hasher(self) -> ChunkHasher {
        match self {
            ChunkAlgorithm::Sha1 => ChunkHasher::Sha1(sha1::Sha1::new()),
            ChunkAlgorithm::Sha256 => ChunkHasher::Sha256(Sha256::new()),
        }
    }
}

#[derive(Clone)]
enum ChunkHasher {
    Sha1(sha1::Sha1),
    Sha256(Sha256),
}

impl ChunkHasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            ChunkHasher::Sha1(h) => h.update(data),
            ChunkHasher::Sha256(h) => h.update(data),
        }
    }

    fn digest(&self) -> Vec<u8> {
        match self.clone() {
            ChunkHasher::Sha1(h) => h.finalize().to_vec(),
            ChunkHasher::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

/// A chunk being checked: where it started (to cut it off again) and its digest so far.
struct ChunkCheck {
    start: u64,
    start_hasher: Sha256,
    digest: ChunkHasher,
}

impl std::fmt::Debug for ChunkCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCheck")
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl BlobStore {
    /// Opens (and creates) the storage directory and its `tmp` subdirectory.
    pub fn open(root: &Path) -> io::Result<Self> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        Ok(BlobStore {
            root: root.to_path_buf(),
            tmp,
        })
    }

    fn part_path(&self, id: &Uuid) -> PathBuf {
        self.tmp.join(format!("{}.part", id.hyphenated()))
    }

    fn file_path(&self, id: &Uuid) -> PathBuf {
        self.root.join(id.hyphenated().to_string())
    }

    /// Opens `id`'s part for writing. With `keep` > 0 the first `keep` bytes of an existing part
    /// are kept (and hashed again, unless `resume` holds their hash state); anything after them is
    /// cut off. Returns the writer and how many bytes it really kept, which is less than `keep`
    /// when the part on disk is shorter.
    pub async fn start_part(
        &self,
        id: Uuid,
        keep: u64,
        resume: Option<PartHash>,
    ) -> io::Result<(PartWriter, u64)> {
        let path = self.part_path(&id);
        let (file, hasher, kept) =
            tokio::task::spawn_blocking(move || open_part(&path, keep, resume))
                .await
                .map_err(io::Error::other)??;
        let state = PartState {
            file,
            hasher,
            bytes: kept,
            chunk: None,
        };
        Ok((
            PartWriter {
                state: Some(state),
                job: None,
                queue: Arc::default(),
            },
            kept,
        ))
    }

    /// Moves a finished, verified part into place: rename, then fsync the directory so the new
    /// name is durable.
    pub async fn publish(&self, id: Uuid) -> io::Result<()> {
        let (from, to, dir) = (self.part_path(&id), self.file_path(&id), self.root.clone());
        tokio::task::spawn_blocking(move || {
            fs::rename(&from, &to)?;
            File::open(&dir)?.sync_all()
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Removes a part; a missing one is fine.
    pub async fn remove_part(&self, id: Uuid) -> io::Result<()> {
        remove_if_present(&self.part_path(&id)).await
    }

    /// Removes a published file; a missing one is fine.
    pub async fn remove_file(&self, id: Uuid) -> io::Result<()> {
        remove_if_present(&self.file_path(&id)).await
    }

    /// The size of `id`'s part after making its bytes durable, or `None` without a part.
    pub async fn sync_part(&self, id: Uuid) -> io::Result<Option<u64>> {
        let path = self.part_path(&id);
        tokio::task::spawn_blocking(move || match File::open(&path) {
            Ok(file) => {
                file.sync_all()?;
                Ok(Some(file.metadata()?.len()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Cuts `id`'s part to at most `len` bytes and makes that durable; returns its size after,
    /// or `None` without a part. For the startup repair of a part that may hold an unverified
    /// chunk past its recorded bytes.
    pub async fn cut_part(&self, id: Uuid, len: u64) -> io::Result<Option<u64>> {
        let path = self.part_path(&id);
        tokio::task::spawn_blocking(move || match OpenOptions::new().write(true).open(&path) {
            Ok(file) => {
                let size = file.metadata()?.len();
                if size > len {
                    file.set_len(len)?;
                }
                file.sync_all()?;
                Ok(Some(size.min(len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
        .map_err(io::Error::other)?
    }

    /// The size and lowercase hex SHA-256 of `id`'s published file.
    pub async fn hash_file(&self, id: Uuid) -> io::Result<(u64, String)> {
        let path = self.file_path(&id);
        tokio::task::spawn_blocking(move || {
            let mut file = File::open(&path)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut bytes = 0u64;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                bytes += n as u64;
            }
            Ok((bytes, format!("{:x}", hasher.finalize())))
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Moves a published file that has no row into `<storage>/orphans/`, where an operator can
    /// look at it; the sweep never deletes a file it cannot prove is its own. Returns where it
    /// went.
    pub async fn move_to_orphans(&self, id: Uuid) -> io::Result<PathBuf> {
        let (from, dir) = (self.file_path(&id), self.root.join(ORPHANS_DIR));
        tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&dir)?;
            let to = dir.join(id.hyphenated().to_string());
            fs::rename(&from, &to)?;
            File::open(&dir)?.sync_all()?;
            Ok(to)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Whether `id`'s published file exists.
    pub async fn file_exists(&self, id: Uuid) -> bool {
        tokio::fs::try_exists(self.file_path(&id))
            .await
            .unwrap_or(false)
    }

    /// Ids of every part and every published file, for the sweep. Names that are not ours are
    /// reported separately so the sweep can remove them.
    pub async fn inventory(&self) -> io::Result<Inventory> {
        let (root, tmp) = (self.root.clone(), self.tmp.clone());
        tokio::task::spawn_blocking(move || {
            let mut inventory = Inventory::default();
            for entry in fs::read_dir(&tmp)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                match name
                    .strip_suffix(".part")
                    .and_then(|n| Uuid::parse_str(n).ok())
                {
                    Some(id) => inventory.parts.push(id),
                    None => inventory.strays.push(entry.path()),
                }
            }
            for entry in fs::read_dir(&root)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == crate::lock::STORAGE_LOCK_FILE {
                    continue;
                }
                match Uuid::parse_str(&name) {
                    Ok(id) => inventory.files.push(id),
                    Err(_) => inventory.strays.push(entry.path()),
                }
            }
            Ok(inventory)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Streams `len` bytes of `id`'s file from `offset` in chunks of at most `chunk` bytes. A
    /// small async task reads `pieces` chunks at a time (on one short blocking job, so that small
    /// chunks do not cost a thread hand-off each), and only while the reader has at most `pieces`
    /// chunks left to take, so at most `2 × pieces` chunks (plus one being read) exist per reader. When the reader takes
    /// nothing for `idle`, the task closes the file and stops: the stream then ends with
    /// [`ReadFailure::Idle`]. Dropping the stream stops the task too.
    pub fn read(
        &self,
        id: Uuid,
        offset: u64,
        len: u64,
        chunk: usize,
        pieces: usize,
        idle: Duration,
    ) -> ReadStream {
        let pieces = pieces.max(1);
        // Room for two reads: the next one starts while the reader still has half to take.
        let (tx, rx) = mpsc::channel(2 * pieces);
        let idled = Arc::new(AtomicBool::new(false));
        let path = self.file_path(&id);
        let flag = idled.clone();
        tokio::spawn(async move {
            let opened = tokio::task::spawn_blocking(move || -> io::Result<File> {
                let mut file = File::open(&path)?;
                file.seek(SeekFrom::Start(offset))?;
                Ok(file)
            })
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
            let mut file = match opened {
                Ok(file) => file,
                Err(e) => {
                    let _ = tx.send(Err(ReadFailure::Io(e))).await;
                    return;
                }
            };
            let mut left = len;
            while left > 0 {
                let n = (left.div_ceil(chunk as u64) as usize).min(pieces);
                let mut permits = match tokio::time::timeout(idle, tx.reserve_many(n)).await {
                    Ok(Ok(permits)) => permits,
                    Ok(Err(_)) => return, // The reader went away.
                    Err(_) => {
                        // Set before the sender is dropped, so the reader sees it at the end.
                        flag.store(true, Ordering::Release);
                        return;
                    }
                };
                let wants: Vec<u64> = (0..n as u64)
                    .map(|i| (left - i * chunk as u64).min(chunk as u64))
                    .collect();
                let read = tokio::task::spawn_blocking(move || read_chunks(file, &wants))
                    .await
                    .map_err(io::Error::other)
                    .and_then(|r| r);
                match read {
                    Ok((back, bufs)) => {
                        file = back;
                        for (buf, permit) in bufs.into_iter().zip(&mut permits) {
                            left -= buf.len() as u64;
                            permit.send(Ok(buf));
                        }
                    }
                    Err(e) => {
                        if let Some(permit) = permits.next() {
                            permit.send(Err(ReadFailure::Io(e)));
                        }
                        return;
                    }
                }
            }
        });
        ReadStream {
            rx,
            idled,
            ended: false,
        }
    }
}

/// Reads one chunk of each size in `wants` from where `file` stands, and hands the file back.
fn read_chunks(mut file: File, wants: &[u64]) -> io::Result<(File, Vec<Vec<u8>>)> {
    let mut out = Vec::with_capacity(wants.len());
    for &want in wants {
        let (back, buf) = read_chunk(file, want)?;
        file = back;
        out.push(buf);
    }
    Ok((file, out))
}

/// Reads exactly `want` bytes from where `file` stands, and hands the file back.
fn read_chunk(mut file: File, want: u64) -> io::Result<(File, Vec<u8>)> {
    // `read_to_end` fills spare capacity without zeroing it first: a memset of every buffer
    // cost ~9 % of an HTTP download.
    let mut buf = Vec::with_capacity(want as usize);
    (&mut file).take(want).read_to_end(&mut buf)?;
    if (buf.len() as u64) < want {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file is shorter than its recorded size",
        ));
    }
    Ok((file, buf))
}

/// Why a read stream ended early.
#[derive(Debug)]
pub enum ReadFailure {
    Io(io::Error),
    /// The reader took nothing for the idle time; the file was closed.
    Idle,
}

/// The chunks of one read, from [`BlobStore::read`].
#[derive(Debug)]
pub struct ReadStream {
    rx: mpsc::Receiver<Result<Vec<u8>, ReadFailure>>,
    idled: Arc<AtomicBool>,
    ended: bool,
}

impl tokio_stream::Stream for ReadStream {
    type Item = Result<Vec<u8>, ReadFailure>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // A reader that comes back after its deadline gets the deadline, not the chunk that
        // was waiting for it: the transfer is over.
        if self.idled.load(Ordering::Acquire) {
            self.ended = true;
            return Poll::Ready(Some(Err(ReadFailure::Idle)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) if self.idled.load(Ordering::Acquire) => {
                self.ended = true;
                Poll::Ready(Some(Err(ReadFailure::Idle)))
            }
            other => other,
        }
    }
}

/// What the storage directory holds.
#[derive(Debug, Default)]
pub struct Inventory {
    pub parts: Vec<Uuid>,
    pub files: Vec<Uuid>,
    /// Entries with names this store never writes.
    pub strays: Vec<PathBuf>,
}

async fn remove_if_present(path: &Path) -> io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn open_part(path: &Path, keep: u64, resume: Option<PartHash>) -> io::Result<(File, Sha256, u64)> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(keep == 0)
        .open(path)?;
    let kept = keep.min(file.metadata()?.len());
    if let Some(resume) = resume.filter(|r| r.bytes == kept && kept > 0) {
        file.set_len(kept)?;
        file.seek(SeekFrom::Start(kept))?;
        return Ok((file, resume.hasher, kept));
    }
    let mut hasher = Sha256::new();
    if kept > 0 {
        let mut left = kept;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..n])?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
    }
    file.set_len(kept)?;
    file.seek(SeekFrom::Start(kept))?;
    Ok((file, hasher, kept))
}

/// Writes and hashes `data` at the end of the part.
fn write_data(state: &mut PartState, data: &[u8]) -> io::Result<()> {
    state.file.write_all(data)?;
    state.hasher.update(data);
    if let Some(chunk) = &mut state.chunk {
        chunk.digest.update(data);
    }
    state.bytes += data.len() as u64;
    Ok(())
}

/// An open part, moved into each write job and back.
#[derive(Debug)]
struct PartState {
    file: File,
    hasher: Sha256,
    bytes: u64,
    /// The chunk being checked, from [`PartWriter::check_chunk`].
    chunk: Option<ChunkCheck>,
}

/// Bytes an upload gathers while a write job is in flight, before it waits for that job.
const WRITE_BUFFER: usize = 512 * 1024;

/// Chunks waiting for the write job, and whether one is running.
#[derive(Debug, Default)]
struct Pending {
    buffer: Vec<u8>,
    running: bool,
}

/// The writing end of a part. A short blocking job writes and hashes what has arrived and keeps
/// going while more arrives (at most 512 KiB waits for it); when nothing is left it ends, so no
/// thread is held while the upload waits on the network, and every byte received reaches the
/// file without waiting for the next one.
#[derive(Debug)]
pub struct PartWriter {
    /// The part when no job holds it.
    state: Option<PartState>,
    job: Option<tokio::task::JoinHandle<io::Result<PartState>>>,
    queue: Arc<std::sync::Mutex<Pending>>,
}

impl PartWriter {
    /// The part, once the running job (if any) has written everything queued.
    async fn settle(&mut self) -> io::Result<PartState> {
        if let Some(job) = self.job.take() {
            return job.await.map_err(io::Error::other)?;
        }
        self.state
            .take()
            .ok_or_else(|| io::Error::other("the part writer failed earlier"))
    }

    /// Queues a chunk for the running job, or starts a job for it. Waits only when 512 KiB are
    /// already queued. Fails with an earlier job's I/O error, if it had one; the writer is
    /// unusable then.
    pub async fn write(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        let mut chunk = Some(chunk);
        loop {
            {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.running && queue.buffer.len() < WRITE_BUFFER {
                    if let Some(chunk) = chunk.take() {
                        queue.buffer.extend_from_slice(&chunk);
                    }
                    return Ok(());
                }
                if !queue.running {
                    if let Some(chunk) = chunk.take() {
                        if queue.buffer.is_empty() {
                            queue.buffer = chunk;
                        } else {
                            queue.buffer.extend_from_slice(&chunk);
                        }
                    }
                    queue.running = true;
                    break;
                }
            }
            // Full: the running job drains the queue and ends; then start the next one.
            let state = self.settle().await?;
            self.state = Some(state);
        }
        let state = self.settle().await?;
        let queue = self.queue.clone();
        self.job = Some(tokio::task::spawn_blocking(move || drain(state, &queue)));
        Ok(())
    }

    /// Writes everything received, fsyncs the part, and returns its size and SHA-256.
    pub async fn finish(mut self) -> io::Result<PartSummary> {
        let state = self.settle().await?;
        tokio::task::spawn_blocking(move || {
            state.file.sync_all()?;
            let hash = PartHash {
                bytes: state.bytes,
                hasher: state.hasher.clone(),
            };
            Ok(PartSummary {
                bytes: state.bytes,
                sha256: format!("{:x}", state.hasher.finalize()),
                hash,
            })
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Bytes in the part once everything queued is written.
    pub async fn bytes(&mut self) -> io::Result<u64> {
        let state = self.settle().await?;
        let bytes = state.bytes;
        self.state = Some(state);
        Ok(bytes)
    }

    /// Starts checking the bytes written from now on with `algorithm`: [`Self::chunk_digest`]
    /// tells their digest, and [`Self::discard_chunk`] cuts them off again.
    pub async fn check_chunk(&mut self, algorithm: ChunkAlgorithm) -> io::Result<()> {
        let mut state = self.settle().await?;
        state.chunk = Some(ChunkCheck {
            start: state.bytes,
            start_hasher: state.hasher.clone(),
            digest: algorithm.hasher(),
        });
        self.state = Some(state);
        Ok(())
    }

    /// The digest of the bytes written since [`Self::check_chunk`], once all are written; `None`
    /// when no chunk is being checked.
    pub async fn chunk_digest(&mut self) -> io::Result<Option<Vec<u8>>> {
        let state = self.settle().await?;
        let digest = state.chunk.as_ref().map(|c| c.digest.digest());
        self.state = Some(state);
        Ok(digest)
    }

    /// Cuts off every byte written since [`Self::check_chunk`] (the part and its hash go back to
    /// where they were then) and ends the check; without a check it does nothing. The cut is
    /// made durable by [`Self::finish`].
    pub async fn discard_chunk(&mut self) -> io::Result<()> {
        let mut state = self.settle().await?;
        let Some(chunk) = state.chunk.take() else {
            self.state = Some(state);
            return Ok(());
        };
        let state = tokio::task::spawn_blocking(move || {
            state.file.set_len(chunk.start)?;
            state.file.seek(SeekFrom::Start(chunk.start))?;
            state.hasher = chunk.start_hasher;
            state.bytes = chunk.start;
            Ok::<_, io::Error>(state)
        })
        .await
        .map_err(io::Error::other)??;
        self.state = Some(state);
        Ok(())
    }

    /// Ends the check of [`Self::check_chunk`], keeping its bytes.
    pub async fn accept_chunk(&mut self) -> io::Result<()> {
        let mut state = self.settle().await?;
        state.chunk = None;
        self.state = Some(state);
        Ok(())
    }
}

/// The write job: writes what is queued until the queue is empty, then ends (marking itself
/// stopped under the lock, so a chunk queued at that moment starts the next job).
fn drain(mut state: PartState, queue: &std::sync::Mutex<Pending>) -> io::Result<PartState> {
    loop {
        let data = {
            let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.buffer.is_empty() {
                queue.running = false;
                return Ok(state);
            }
            std::mem::take(&mut queue.buffer)
        };
        if let Err(e) = write_data(&mut state, &data) {
            queue.lock().unwrap_or_else(|p| p.into_inner()).running = false;
            return Err(e);
        }
    }
}
