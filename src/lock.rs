//! The single-server locks: one server per database and per storage directory.
//!
//! A second server on the same files would run its startup sweep against the first one's
//! uploads and delete them, so each server holds an exclusive OS lock (`flock`) on
//! `<database>.lock` and on `<storage>/.streamhub.lock` for as long as it runs. The OS drops a
//! lock when its process dies, even by `kill -9`, so a stale lock file never keeps a server
//! from starting. Each file holds the holder's pid and listen address, so a refusal can name
//! it. The database file itself is never locked here: opening and closing a second descriptor
//! of it would drop SQLite's own POSIX locks.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The lock file's name inside the storage directory.
pub const STORAGE_LOCK_FILE: &str = ".streamhub.lock";

/// An exclusive lock held until dropped.
#[derive(Debug)]
pub struct ServerLock {
    file: File,
    path: PathBuf,
}

impl ServerLock {
    /// Takes the lock at `path` for `what` ("database", "storage directory") or explains who
    /// holds it. Never waits: a second server must fail at once, not hang.
    pub fn acquire(path: &Path, what: &str) -> Result<ServerLock> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| {
                Error::Config(format!(
                    "cannot open the {what} lock {}: {e}",
                    path.display()
                ))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.split_whitespace().collect::<Vec<_>>().join(", ");
                let holder = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("another server ({holder})")
                };
                return Err(Error::Config(format!(
                    "the {what} is in use by {holder}: {} is locked. One server per database \
                     and storage directory; stop the other one or give this one its own \
                     --database-url and --storage-dir",
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::Config(format!(
                    "cannot lock the {what} ({}): {e}",
                    path.display()
                )));
            }
        }
        let mut lock = ServerLock {
            file,
            path: path.to_path_buf(),
        };
        lock.record(None)?;
        Ok(lock)
    }

    /// Writes who holds the lock: this pid and, once bound, the listen address.
    pub fn record(&mut self, listen: Option<SocketAddr>) -> Result<()> {
        let mut text = format!("pid={}", std::process::id());
        if let Some(addr) = listen {
            text.push_str(&format!(" listen={addr}"));
        }
        text.push('\n');
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.lock");
        let mut first = ServerLock::acquire(&path, "database").unwrap();
        first
            .record(Some("127.0.0.1:4000".parse().unwrap()))
            .unwrap();
        let refused = ServerLock::acquire(&path, "database")
            .unwrap_err()
            .to_string();
        let pid = std::process::id();
        assert!(
            refused.contains(&format!("pid={pid}, listen=127.0.0.1:4000")),
            "{refused}"
        );
        assert!(refused.contains("the database is in use"), "{refused}");
        drop(first);
        ServerLock::acquire(&path, "database").expect("free again once dropped");
    }
}
