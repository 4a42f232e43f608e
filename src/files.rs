//! The on-disk blob store for uploaded files.
//!
//! Bytes stream into `<storage>/tmp/<id>.part` on a blocking thread that hashes (SHA-256) as it
//! writes, so a file is never held in memory. A finished part is fsynced, then renamed to
//! `<storage>/<id>` and the directory fsynced: a crash leaves either the part or the whole file,
//! never a torn one. Reads stream in bounded chunks through a bounded channel. This module only
//! moves bytes; it never decides what an upload means and never touches the database. File names
//! on disk derive from the UUID alone, never from anything a client wrote.

use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Where the sweep puts stored files that have no row: `<storage>/orphans/`.
pub const ORPHANS_DIR: &str = "orphans";

/// Chunks queued between an upload call and its writing thread.
const WRITE_QUEUE: usize = 8;

/// Where files live.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
}

/// What a finished part holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSummary {
    pub bytes: u64,
    /// Lowercase hex SHA-256 of all the part's bytes.
    pub sha256: String,
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

    /// Starts writing `id`'s part on a blocking thread. With `keep` > 0 the first `keep` bytes of
    /// an existing part are kept (and hashed again); anything after them is cut off. Returns the
    /// writer and how many bytes it really kept, which is less than `keep` when the part on disk
    /// is shorter.
    pub async fn start_part(&self, id: Uuid, keep: u64) -> io::Result<(PartWriter, u64)> {
        let path = self.part_path(&id);
        let (file, hasher, kept) = tokio::task::spawn_blocking(move || open_part(&path, keep))
            .await
            .map_err(io::Error::other)??;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let task = tokio::task::spawn_blocking(move || write_part(file, hasher, kept, rx));
        Ok((PartWriter { tx: Some(tx), task }, kept))
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

    /// Streams `len` bytes of `id`'s file from `offset` in chunks of at most `chunk` bytes,
    /// through a bounded channel. The reading thread stops as soon as the receiver is dropped.
    pub fn read(
        &self,
        id: Uuid,
        offset: u64,
        len: u64,
        chunk: usize,
    ) -> mpsc::Receiver<io::Result<Vec<u8>>> {
        let (tx, rx) = mpsc::channel(4);
        let path = self.file_path(&id);
        tokio::task::spawn_blocking(move || {
            let result = (|| -> io::Result<()> {
                let mut file = File::open(&path)?;
                file.seek(SeekFrom::Start(offset))?;
                let mut left = len;
                while left > 0 {
                    let want = left.min(chunk as u64);
                    // `read_to_end` fills spare capacity without zeroing it first: a memset of
                    // every buffer cost ~9 % of an HTTP download.
                    let mut buf = Vec::with_capacity(want as usize);
                    (&mut file).take(want).read_to_end(&mut buf)?;
                    if (buf.len() as u64) < want {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file is shorter than its recorded size",
                        ));
                    }
                    left -= want;
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return Ok(()); // The reader went away.
                    }
                }
                Ok(())
            })();
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        });
        rx
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

fn open_part(path: &Path, keep: u64) -> io::Result<(File, Sha256, u64)> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(keep == 0)
        .open(path)?;
    let kept = keep.min(file.metadata()?.len());
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

fn write_part(
    mut file: File,
    mut hasher: Sha256,
    mut bytes: u64,
    mut chunks: mpsc::Receiver<Vec<u8>>,
) -> io::Result<PartSummary> {
    while let Some(chunk) = chunks.blocking_recv() {
        file.write_all(&chunk)?;
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
    }
    file.sync_all()?;
    Ok(PartSummary {
        bytes,
        sha256: format!("{:x}", hasher.finalize()),
    })
}

/// The writing end of a part. Chunks go to a blocking thread that writes and hashes them.
#[derive(Debug)]
pub struct PartWriter {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    task: tokio::task::JoinHandle<io::Result<PartSummary>>,
}

impl PartWriter {
    /// Queues a chunk. Fails if the writing thread hit an I/O error; `finish` then tells which.
    pub async fn write(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(io::Error::other("the part writer stopped"))
        }
    }

    /// Writes what is queued, fsyncs the part, and returns its size and SHA-256.
    pub async fn finish(mut self) -> io::Result<PartSummary> {
        drop(self.tx.take());
        (&mut self.task).await.map_err(io::Error::other)?
    }
}
