//! The write-ahead log in front of the record segments: what makes a group commit durable.
//!
//! The writer thread appends one record per group commit and `fdatasync`s it; that is the durability point
//! (the callback, so the 202, follows it). The checkpointer then applies the records to the segments in large
//! checkpoints, each ending in a mark that names the last log record it applied (`segments.rs`). At start every
//! record after the last mark is applied again, so a crash loses nothing that was acknowledged and applies
//! nothing twice.
//!
//! Layout: `data/wal/{first lsn:020}.log` segments of up to [`SEGMENT_MAX_BYTES`], each starting with
//! [`MAGIC`]. A record is `len: u32, crc32: u32` then `len` bytes of body: `lsn: u64` and the ops (`codec.rs`).
//! LSNs increase by one per append (a failed append uses one up too). After a failed write the segment is
//! abandoned and the next append starts a new one, so a bad record can only be the last of its segment: replay
//! stops reading a segment at its first record that is cut short or fails its checksum, and goes on with the
//! next. A segment is deleted once a durable checkpoint covers every record in it.

pub mod codec;

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::encode::Op;
use crate::store::StoreError;

/// The folder of the log inside the data directory.
pub const DIR_NAME: &str = "wal";
/// First bytes of every segment.
const MAGIC: &[u8; 8] = b"HRLDWAL1";
/// A segment is closed once it holds this much; the next append starts a new one.
pub const SEGMENT_MAX_BYTES: u64 = 64 << 20;
const HEADER_BYTES: usize = 8;

/// The appending end of the log (owned by the writer thread).
pub struct Wal {
    dir: PathBuf,
    file: Option<File>,
    /// Bytes in the current segment.
    written: u64,
    next_lsn: u64,
    buf: Vec<u8>,
}

impl Wal {
    /// A log whose next record will be `next_lsn`, writing into `dir` (created if needed). The first segment
    /// is created by the first append.
    pub fn new(dir: &Path, next_lsn: u64) -> Result<Wal, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        Ok(Wal { dir: dir.to_path_buf(), file: None, written: 0, next_lsn, buf: Vec::with_capacity(1 << 16) })
    }

    /// Appends one record holding every op of `batches` and syncs it; returns its LSN. On failure the record
    /// may or may not be in the file (as with any failed fsync): the segment is abandoned either way.
    pub fn append<'a>(&mut self, batches: impl Iterator<Item = &'a [Op]>) -> Result<u64, StoreError> {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        self.buf.clear();
        self.buf.extend_from_slice(&[0; HEADER_BYTES]);
        self.buf.extend_from_slice(&lsn.to_le_bytes());
        for op in batches.flatten() {
            codec::encode(op, &mut self.buf);
        }
        let body_len = u32::try_from(self.buf.len() - HEADER_BYTES)
            .map_err(|_| StoreError::Unavailable("a group commit is larger than 4 GiB".into()))?;
        let crc = crc32fast::hash(&self.buf[HEADER_BYTES..]);
        self.buf[..4].copy_from_slice(&body_len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let result = self.write_record(lsn);
        if result.is_err() {
            self.file = None;
        }
        result.map(|()| lsn)
    }

    fn write_record(&mut self, lsn: u64) -> Result<(), StoreError> {
        if self.file.is_none() || self.written >= SEGMENT_MAX_BYTES {
            self.file = Some(self.start_segment(lsn)?);
        }
        let file = self.file.as_mut().expect("a segment is open");
        let path = &self.dir;
        file.write_all(&self.buf).and_then(|()| file.sync_data()).map_err(|e| io_error(path, e))?;
        self.written += self.buf.len() as u64;
        Ok(())
    }

    /// Creates the segment whose first record is `lsn`, durably (the file and its directory entry).
    fn start_segment(&mut self, lsn: u64) -> Result<File, StoreError> {
        let path = segment_path(&self.dir, lsn);
        let mut file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(|e| io_error(&path, e))?;
        file.write_all(MAGIC).and_then(|()| file.sync_all()).map_err(|e| io_error(&path, e))?;
        File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(|e| io_error(&self.dir, e))?;
        self.written = MAGIC.len() as u64;
        Ok(file)
    }
}

/// Reads every intact record of every segment in `dir`, in LSN order, passing `(lsn, ops)` to `apply`; returns
/// the highest LSN read (0 when there is none).
pub fn replay(dir: &Path, mut apply: impl FnMut(u64, Vec<Op>) -> Result<(), StoreError>) -> Result<u64, StoreError> {
    let mut last = 0;
    for (_, path) in segments(dir)? {
        let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
        let Some(mut rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
            tracing::warn!(segment = %path.display(), "write-ahead log segment without its header; skipped");
            continue;
        };
        while !rest.is_empty() {
            let Some(body) = next_record(&mut rest) else {
                tracing::warn!(
                    segment = %path.display(),
                    bytes = rest.len(),
                    "write-ahead log segment ends in an incomplete record (a write that was never acknowledged)"
                );
                break;
            };
            let (lsn, mut ops_bytes) = body.split_first_chunk::<8>().expect("next_record checks the length");
            let lsn = u64::from_le_bytes(*lsn);
            let mut ops = Vec::new();
            while !ops_bytes.is_empty() {
                ops.push(codec::decode(&mut ops_bytes)?);
            }
            if lsn <= last {
                return Err(StoreError::Corrupt(format!("write-ahead log LSN {lsn} after {last}")));
            }
            last = lsn;
            apply(lsn, ops)?;
        }
    }
    Ok(last)
}

/// Splits the next whole record with a good checksum off `rest`, returning its body.
fn next_record<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (header, after) = rest.split_first_chunk::<HEADER_BYTES>()?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len < 8 || after.len() < len || crc32fast::hash(&after[..len]) != crc {
        return None;
    }
    let (body, tail) = after.split_at(len);
    *rest = tail;
    Some(body)
}

/// Deletes every segment whose records are all at or below `applied` (never the newest segment).
pub fn remove_through(dir: &Path, applied: u64) -> Result<usize, StoreError> {
    let segments = segments(dir)?;
    let mut removed = 0;
    for pair in segments.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        if *next_first <= applied.saturating_add(1) {
            std::fs::remove_file(path).map_err(|e| io_error(path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Deletes every segment (after a replay whose result is durable).
pub fn remove_all(dir: &Path) -> Result<(), StoreError> {
    for (_, path) in segments(dir)? {
        std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
    }
    Ok(())
}

/// The segments in `dir` by first LSN (none if `dir` does not exist).
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    numbered_files(dir, ".log").map_err(|e| io_error(dir, e))
}

/// The files in `dir` named `{number}{suffix}`, by number (none if `dir` does not exist): the log's and the
/// record segments' files.
pub fn numbered_files<N: std::str::FromStr + Ord>(dir: &Path, suffix: &str) -> std::io::Result<Vec<(N, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let number = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(suffix));
        if let Some(number) = number.and_then(|n| n.parse::<N>().ok()) {
            files.push((number, path));
        }
    }
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}.log"))
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("write-ahead log {}: {e}", path.display()))
}

#[cfg(test)]
mod tests;
