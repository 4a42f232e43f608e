//! Spill files: where an import's records wait, outside memory and outside the database, until
//! the client half-closes and the writer commits them in one transaction.
//!
//! A spill file is an unnamed temporary file (`O_TMPFILE` where the system has it), so a
//! cancelled import, a failed one and even a killed server leave nothing behind: the file goes
//! away with its last descriptor. It is never fsynced, because nothing in it is durable until
//! the commit that reads it. It must never be read by anything but that commit.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

/// Buffer of the spill's writer and reader: large enough that a record rarely costs a syscall.
const BUFFER_BYTES: usize = 256 * 1024;

/// The writing end, filled as records arrive.
pub struct Spill {
    file: BufWriter<File>,
    records: u64,
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spill")
            .field("records", &self.records)
            .finish()
    }
}

/// One record read back. Reused from record to record, so reading allocates nothing new.
#[derive(Debug, Default)]
pub struct SpilledRecord {
    /// Its position in the client's batch, for error reports.
    pub index: u64,
    /// The stream key (a user id).
    pub key: String,
    pub id: Option<String>,
    pub payload: Vec<u8>,
}

impl Spill {
    /// A new, empty spill in `dir` (which should be on the database's disk, not in memory).
    pub fn new(dir: &std::path::Path) -> io::Result<Spill> {
        Ok(Spill {
            file: BufWriter::with_capacity(BUFFER_BYTES, tempfile::tempfile_in(dir)?),
            records: 0,
        })
    }

    /// Records spilled so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Adds one record.
    pub fn push(
        &mut self,
        index: u64,
        key: &str,
        id: Option<&str>,
        payload: &[u8],
    ) -> io::Result<()> {
        let file = &mut self.file;
        file.write_all(&index.to_le_bytes())?;
        write_bytes(file, key.as_bytes())?;
        match id {
            Some(id) => {
                file.write_all(&[1])?;
                write_bytes(file, id.as_bytes())?;
            }
            None => file.write_all(&[0])?,
        }
        write_bytes(file, payload)?;
        self.records += 1;
        Ok(())
    }

    /// Ends writing and rewinds, for the commit to read.
    pub fn finish(self) -> io::Result<SpillReader> {
        let records = self.records;
        let mut file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        Ok(SpillReader {
            file: BufReader::with_capacity(BUFFER_BYTES, file),
            remaining: records,
        })
    }
}

fn write_bytes(file: &mut BufWriter<File>, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "spilled field over 4 GiB"))?;
    file.write_all(&len.to_le_bytes())?;
    file.write_all(bytes)
}

/// The reading end, consumed by the commit.
pub struct SpillReader {
    file: BufReader<File>,
    remaining: u64,
}

impl std::fmt::Debug for SpillReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillReader")
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl SpillReader {
    /// Reads the next record into `record`; false after the last one.
    pub fn next(&mut self, record: &mut SpilledRecord) -> io::Result<bool> {
        if self.remaining == 0 {
            return Ok(false);
        }
        self.remaining -= 1;
        let mut index = [0u8; 8];
        self.file.read_exact(&mut index)?;
        record.index = u64::from_le_bytes(index);
        let mut key = std::mem::take(&mut record.key).into_bytes();
        read_bytes(&mut self.file, &mut key)?;
        record.key = into_string(key)?;
        let mut flag = [0u8; 1];
        self.file.read_exact(&mut flag)?;
        record.id = match flag[0] {
            0 => None,
            1 => {
                let mut id = record.id.take().unwrap_or_default().into_bytes();
                read_bytes(&mut self.file, &mut id)?;
                Some(into_string(id)?)
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "corrupt spill record",
                ));
            }
        };
        read_bytes(&mut self.file, &mut record.payload)?;
        Ok(true)
    }
}

fn read_bytes(file: &mut BufReader<File>, into: &mut Vec<u8>) -> io::Result<()> {
    let mut len = [0u8; 4];
    file.read_exact(&mut len)?;
    into.clear();
    into.resize(u32::from_le_bytes(len) as usize, 0);
    file.read_exact(into)
}

fn into_string(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_exactly_as_spilled() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(dir.path()).unwrap();
        spill.push(0, "alice", Some("id-1"), b"one").unwrap();
        spill.push(2, "bob", None, b"").unwrap();
        spill.push(3, "alice", Some(""), &[0, 255]).unwrap();
        assert_eq!(spill.records(), 3);
        let mut reader = spill.finish().unwrap();
        let mut record = SpilledRecord::default();
        let mut seen = Vec::new();
        while reader.next(&mut record).unwrap() {
            seen.push((
                record.index,
                record.key.clone(),
                record.id.clone(),
                record.payload.clone(),
            ));
        }
        assert_eq!(
            seen,
            vec![
                (0, "alice".into(), Some("id-1".into()), b"one".to_vec()),
                (2, "bob".into(), None, vec![]),
                (3, "alice".into(), Some(String::new()), vec![0, 255]),
            ]
        );
        // An unnamed file: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
