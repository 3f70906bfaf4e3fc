//! The record segments: append-only files holding the live version of every record, which the checkpointer
//! writes behind the write-ahead log and the index points into.
//!
//! Layout: `data/records/{n:010}.seg`, each starting with [`MAGIC`], then frames `len: u32, crc32: u32` and
//! `len` bytes of body: an op in the log's binary form (`wal/codec.rs`), or a checkpoint mark (`0xF0`, the
//! last log LSN applied, the highest seq). A checkpoint appends its ops' frames and then its mark in one write,
//! so frames after the last mark are a checkpoint that never finished: the scan at start ignores them and cuts
//! them off. Only the newest segment is appended to; once it holds [`SEGMENT_MAX_BYTES`] the next checkpoint
//! starts a new one. Compaction (`compact.rs`) copies a sealed segment's live frames into the newest one and
//! deletes it.
//!
//! Every segment counts its live bytes (frames the index points at), so compaction knows which are mostly
//! dead. Readers reach a frame through [`Located`], which holds the file open: a segment deleted by compaction
//! after a reader found its frame is still readable through the handle.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::encode::Op;
use super::index::{Index, Loc};
use super::wal::codec;
use crate::store::StoreError;

/// The folder of the segments inside the data directory.
pub const DIR_NAME: &str = "records";
const MAGIC: &[u8; 8] = b"HRLDSEG1";
/// A segment is sealed once it holds this much; the next checkpoint starts a new one.
pub const SEGMENT_MAX_BYTES: u64 = 64 << 20;
/// A segment whose live bytes, at the pace they died since the previous look for a compaction candidate, would
/// all be gone within this long is still dying: compacting it now would copy frames about to die.
const DYING_WITHIN: Duration = Duration::from_secs(120);
/// While the store is busy, compaction waits until the sealed segments hold more dead bytes than this and than
/// twice their live bytes: the space it would win is not worth the CPU that the load needs.
const BUSY_DEAD_MIN: u64 = 1 << 30;
const HEADER_BYTES: usize = 8;
/// The body tag of a checkpoint mark (op tags are small numbers).
const CHECKPOINT: u8 = 0xF0;

/// One segment file and its accounting.
pub struct Segment {
    pub file: Arc<File>,
    /// Bytes written, the header included.
    pub len: u64,
    /// Bytes of the frames the index points at.
    pub live: u64,
    /// Live bytes that died since compaction last looked for a candidate ([`Segments::compaction_candidate`]).
    pub died: u64,
}

/// The segments of a data directory: the sealed ones and the newest, which frames are appended to through an
/// in-memory buffer until [`Segments::flush`].
pub struct Segments {
    dir: PathBuf,
    /// [`SEGMENT_MAX_BYTES`], smaller in tests.
    max_bytes: u64,
    files: BTreeMap<u32, Segment>,
    active: u32,
    pending: Vec<u8>,
    /// When compaction last looked for a candidate: the pace of `died` is measured from it.
    last_look: Option<Instant>,
}

/// What the scan at start found in the last complete checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// The last log LSN whose ops are in the segments.
    pub lsn: u64,
    pub max_seq: u64,
}

/// A frame and an open handle on its file, to read without holding the store's lock.
pub struct Located {
    file: Arc<File>,
    loc: Loc,
}

impl Located {
    /// Reads and checks the frame; a frame that fails its checksum or does not decode is corrupt.
    pub fn read(&self) -> Result<Op, StoreError> {
        let mut frame = vec![0; self.loc.len as usize];
        self.file.read_exact_at(&mut frame, u64::from(self.loc.at)).map_err(read_error)?;
        decode_op(&frame)
    }

    /// Reads the frames of `located`, returned in the same order. Frames that lie close together in one segment
    /// are read with one `pread`, gaps included: the loader's page of due sends was mostly written one after
    /// another, and a call per frame was a third of the loader's cost during a spike.
    pub fn read_many(located: &[Located]) -> Result<Vec<Op>, StoreError> {
        let mut order: Vec<usize> = (0..located.len()).collect();
        order.sort_unstable_by_key(|&i| (located[i].loc.seg, located[i].loc.at));
        let mut ops: Vec<Option<Op>> = located.iter().map(|_| None).collect();
        let mut span = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let Loc { seg, at, len } = located[order[i]].loc;
            let start = u64::from(at);
            let mut end = start + u64::from(len);
            let mut j = i + 1;
            while let Some(next) = order.get(j).map(|&k| located[k].loc) {
                let next_end = u64::from(next.at) + u64::from(next.len);
                if next.seg != seg || u64::from(next.at) > end + COALESCE_GAP || next_end - start > COALESCE_MAX {
                    break;
                }
                end = end.max(next_end);
                j += 1;
            }
            span.resize((end - start) as usize, 0);
            located[order[i]].file.read_exact_at(&mut span, start).map_err(read_error)?;
            for &k in &order[i..j] {
                let Loc { at, len, .. } = located[k].loc;
                let from = (u64::from(at) - start) as usize;
                ops[k] = Some(decode_op(&span[from..from + len as usize])?);
            }
            i = j;
        }
        Ok(ops.into_iter().map(|op| op.expect("every frame was read")).collect())
    }
}

/// Frames at most this far apart are read together with the bytes between them (a page of the page cache).
const COALESCE_GAP: u64 = 4096;
/// One read covers at most this many bytes.
const COALESCE_MAX: u64 = 1 << 20;

fn read_error(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("reading a record segment: {e}"))
}

impl Segments {
    /// Opens the segments in `dir` (created if needed), putting every op of every complete checkpoint into
    /// `index` in order, and cuts off what follows the newest segment's last mark. Starts the first segment of
    /// an empty directory.
    pub fn open(dir: &Path, index: &mut Index) -> Result<(Segments, Scanned), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let mut segments = Segments {
            dir: dir.to_path_buf(),
            max_bytes: SEGMENT_MAX_BYTES,
            files: BTreeMap::new(),
            active: 0,
            pending: Vec::new(),
            last_look: None,
        };
        let numbers = list(dir)?;
        let mut scanned = Scanned::default();
        let mut dead = Vec::new();
        for (i, (number, path)) in numbers.iter().enumerate() {
            let (number, newest) = (*number, i + 1 == numbers.len());
            let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
            let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| io_error(path, e))?;
            segments.files.insert(number, Segment { file: Arc::new(file), len: bytes.len() as u64, live: 0, died: 0 });
            segments.active = number;
            let end = if bytes.len() < MAGIC.len() && newest {
                // Cut short while it was being created: it holds nothing.
                0
            } else if !bytes.starts_with(MAGIC) {
                return Err(StoreError::Corrupt(format!("{} is not a record segment", path.display())));
            } else {
                scan(number, &bytes, |frame, loc| match frame {
                    Frame::Op(op) => {
                        segments.live_at(loc);
                        index.put(&op, loc, &mut dead);
                        dead.drain(..).for_each(|d| segments.dead_at(d));
                    }
                    Frame::Checkpoint(mark) => scanned = mark,
                })?
            };
            if end == bytes.len() {
                continue;
            }
            if newest {
                tracing::warn!(segment = %path.display(), bytes = bytes.len() - end, "cut off an unfinished checkpoint");
                let file = &segments.files[&number].file;
                file.set_len(end as u64).and_then(|()| file.sync_all()).map_err(|e| io_error(path, e))?;
                segments.files.get_mut(&number).expect("inserted above").len = end as u64;
            } else {
                tracing::error!(segment = %path.display(), "a sealed record segment ends in an unfinished checkpoint");
            }
        }
        index.drop_ended_audiences(&mut dead);
        dead.drain(..).for_each(|d| segments.dead_at(d));
        match segments.files.get(&segments.active) {
            Some(active) if active.len == 0 => segments.write_header()?,
            Some(_) => {}
            None => segments.start(0)?,
        }
        Ok((segments, scanned))
    }

    /// Appends `op`'s frame to the pending buffer; returns where it will be.
    pub fn append(&mut self, op: &Op) -> Loc {
        let start = self.pending.len();
        self.pending.extend_from_slice(&[0; HEADER_BYTES]);
        codec::encode(op, &mut self.pending);
        self.seal_frame(start)
    }

    /// Appends a frame copied whole (from a segment being compacted).
    pub fn append_frame(&mut self, frame: &[u8]) -> Loc {
        let start = self.pending.len();
        self.pending.extend_from_slice(frame);
        self.loc_of(start)
    }

    /// Appends a checkpoint mark: every frame before it is part of a complete checkpoint.
    pub fn append_mark(&mut self, mark: Scanned) {
        let start = self.pending.len();
        self.pending.extend_from_slice(&[0; HEADER_BYTES]);
        self.pending.push(CHECKPOINT);
        self.pending.extend_from_slice(&mark.lsn.to_le_bytes());
        self.pending.extend_from_slice(&mark.max_seq.to_le_bytes());
        self.seal_frame(start);
    }

    fn seal_frame(&mut self, start: usize) -> Loc {
        let body = &self.pending[start + HEADER_BYTES..];
        let len = u32::try_from(body.len()).expect("a record is smaller than 4 GiB");
        let crc = crc32fast::hash(body);
        self.pending[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.pending[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.loc_of(start)
    }

    fn loc_of(&self, start: usize) -> Loc {
        let written = self.files[&self.active].len;
        let at = u32::try_from(written + start as u64).expect("a segment is sealed long before 4 GiB");
        let len = u32::try_from(self.pending.len() - start).expect("a record is smaller than 4 GiB");
        Loc { seg: self.active, at, len }
    }

    /// Writes the pending frames to the newest segment (not synced). On failure they stay pending, to be
    /// written again at the same offset.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let active = self.files.get_mut(&self.active).expect("the active segment is listed");
        active.file.write_all_at(&self.pending, active.len).map_err(|e| io_error(&self.dir, e))?;
        active.len += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// The newest segment's file, to sync outside the store's lock.
    pub fn active_file(&self) -> Arc<File> {
        self.files[&self.active].file.clone()
    }

    /// Starts a new segment once the newest is full (after a flush). Returns whether it did.
    pub fn roll_if_full(&mut self) -> Result<bool, StoreError> {
        if self.files[&self.active].len < self.max_bytes || !self.pending.is_empty() {
            return Ok(false);
        }
        self.start(self.active + 1)?;
        Ok(true)
    }

    /// Reads the frame at `loc`, from the pending buffer if it is not written yet.
    pub fn read(&self, loc: Loc) -> Result<Op, StoreError> {
        let written = self.files.get(&loc.seg).map(|s| s.len);
        if loc.seg == self.active
            && let Some(written) = written
            && u64::from(loc.at) >= written
        {
            let start = (u64::from(loc.at) - written) as usize;
            let frame = self
                .pending
                .get(start..start + loc.len as usize)
                .ok_or_else(|| StoreError::Corrupt("a record points past the pending frames".into()))?;
            return decode_op(frame);
        }
        self.locate(loc)?.read()
    }

    /// The frame at `loc` with a handle on its file, for reading after the lock is released.
    pub fn locate(&self, loc: Loc) -> Result<Located, StoreError> {
        let segment = self
            .files
            .get(&loc.seg)
            .ok_or_else(|| StoreError::Corrupt(format!("a record points into missing segment {}", loc.seg)))?;
        Ok(Located { file: segment.file.clone(), loc })
    }

    pub fn live_at(&mut self, loc: Loc) {
        if let Some(segment) = self.files.get_mut(&loc.seg) {
            segment.live += u64::from(loc.len);
        }
    }

    pub fn dead_at(&mut self, loc: Loc) {
        if let Some(segment) = self.files.get_mut(&loc.seg) {
            segment.live = segment.live.saturating_sub(u64::from(loc.len));
            segment.died += u64::from(loc.len);
        }
    }

    /// The sealed segment with the smallest share of live bytes, if less than half of it is live and it is not
    /// still dying: one whose live bytes would all be gone within [`DYING_WITHIN`] at the pace they died since
    /// the previous call (`now` is the time of this one) waits, because compacting it now would copy frames about
    /// to die. A spike's scheduled records die over its minute; compacting their segments at half live, then the
    /// copies at half live, was ~5–8% of a 30,000/s spike's CPU. Once the deaths stop (what is left lives on) or
    /// slow to a trickle, it is compacted.
    ///
    /// While the store is `busy`, none is, unless the sealed segments' dead bytes exceed [`BUSY_DEAD_MIN`] and
    /// twice their live bytes.
    pub fn compaction_candidate(&mut self, now: Instant, busy: bool) -> Option<(u32, Arc<File>)> {
        let active = self.active;
        let sealed = self.files.iter().filter(|(number, _)| **number != active).map(|(_, s)| s);
        let (dead, live) = sealed.fold((0, 0), |(dead, live), s| (dead + (s.len - s.live), live + s.live));
        let defer = busy && (dead < BUSY_DEAD_MIN || dead < 2 * live);
        let since = self.last_look.map_or(Duration::ZERO, |last| now.saturating_duration_since(last));
        let dying = |s: &Segment| {
            s.died > 0 && u128::from(s.live) * since.as_millis() < u128::from(s.died) * DYING_WITHIN.as_millis()
        };
        let candidate = self
            .files
            .iter()
            .filter(|(number, s)| !defer && **number != active && s.live * 2 < s.len && !dying(s))
            .min_by_key(|(_, s)| (s.live * 1000).checked_div(s.len).unwrap_or(0))
            .map(|(number, s)| (*number, s.file.clone()));
        self.files.values_mut().for_each(|s| s.died = 0);
        self.last_look = Some(now);
        candidate
    }

    /// Forgets a sealed segment and deletes its file (open handles keep reading it).
    pub fn remove(&mut self, number: u32) -> Result<(), StoreError> {
        assert_ne!(number, self.active, "the newest segment is never removed");
        self.files.remove(&number);
        let path = segment_path(&self.dir, number);
        std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        sync_dir(&self.dir)
    }

    /// Seals segments at `max_bytes` instead of [`SEGMENT_MAX_BYTES`] (tests use small ones).
    #[cfg(test)]
    pub fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes;
    }

    /// (segment number, bytes, live bytes) of every segment, oldest first.
    pub fn usage(&self) -> Vec<(u32, u64, u64)> {
        self.files.iter().map(|(n, s)| (*n, s.len, s.live)).collect()
    }

    /// Creates segment `number` durably (the file with its header, and its directory entry) and makes it the
    /// newest.
    fn start(&mut self, number: u32) -> Result<(), StoreError> {
        let path = segment_path(&self.dir, number);
        let file =
            OpenOptions::new().create_new(true).read(true).write(true).open(&path).map_err(|e| io_error(&path, e))?;
        self.files.insert(number, Segment { file: Arc::new(file), len: 0, live: 0, died: 0 });
        self.active = number;
        self.write_header()?;
        sync_dir(&self.dir)
    }

    fn write_header(&mut self) -> Result<(), StoreError> {
        let active = self.files.get_mut(&self.active).expect("the active segment is listed");
        let file = &active.file;
        (file.set_len(0).and_then(|()| file.write_all_at(MAGIC, 0)).and_then(|()| file.sync_all()))
            .map_err(|e| io_error(&self.dir, e))?;
        active.len = MAGIC.len() as u64;
        Ok(())
    }
}

/// What a frame holds.
pub enum Frame {
    Op(Op),
    Checkpoint(Scanned),
}

/// Passes every frame of each complete checkpoint of `bytes` (a whole segment, header included) to `visit`,
/// the ops of a checkpoint only once its mark has been read; returns where the last complete checkpoint ends.
/// A frame that fails its checksum ends the scan like a torn write; one that passes it but does not decode is
/// corrupt.
pub fn scan(number: u32, bytes: &[u8], mut visit: impl FnMut(Frame, Loc)) -> Result<usize, StoreError> {
    let mut at = MAGIC.len();
    let mut end = at;
    let mut unfinished = Vec::new();
    while let Some(frame) = next_frame(&bytes[at..]) {
        let loc = Loc {
            seg: number,
            at: u32::try_from(at).map_err(|_| StoreError::Corrupt("record segment over 4 GiB".into()))?,
            len: frame.len() as u32,
        };
        at += frame.len();
        match decode(frame)? {
            Frame::Op(op) => unfinished.push((op, loc)),
            mark @ Frame::Checkpoint(_) => {
                unfinished.drain(..).for_each(|(op, loc)| visit(Frame::Op(op), loc));
                visit(mark, loc);
                end = at;
            }
        }
    }
    Ok(end)
}

/// The location of every op frame of a sealed segment (`bytes`, header included), checksums checked.
pub fn frame_locs(number: u32, bytes: &[u8]) -> Result<Vec<Loc>, StoreError> {
    let mut at = MAGIC.len();
    let mut locs = Vec::new();
    while let Some(frame) = next_frame(&bytes[at..]) {
        if frame[HEADER_BYTES] != CHECKPOINT {
            let start = u32::try_from(at).map_err(|_| StoreError::Corrupt("record segment over 4 GiB".into()))?;
            locs.push(Loc { seg: number, at: start, len: frame.len() as u32 });
        }
        at += frame.len();
    }
    Ok(locs)
}

/// Splits the next whole frame with a good checksum off the front of `rest`, header included.
fn next_frame(rest: &[u8]) -> Option<&[u8]> {
    let (header, after) = rest.split_first_chunk::<HEADER_BYTES>()?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || after.len() < len || crc32fast::hash(&after[..len]) != crc {
        return None;
    }
    Some(&rest[..HEADER_BYTES + len])
}

/// Decodes a whole frame (header included) after checking it.
fn decode(frame: &[u8]) -> Result<Frame, StoreError> {
    let body = next_frame(frame)
        .filter(|f| f.len() == frame.len())
        .ok_or_else(|| StoreError::Corrupt("a record fails its checksum".into()))?;
    let mut body = &body[HEADER_BYTES..];
    if body.first() == Some(&CHECKPOINT) {
        let fields: [u8; 16] =
            body[1..].try_into().map_err(|_| StoreError::Corrupt("a checkpoint mark of the wrong length".into()))?;
        let (lsn, max_seq) = fields.split_at(8);
        return Ok(Frame::Checkpoint(Scanned {
            lsn: u64::from_le_bytes(lsn.try_into().expect("8 bytes")),
            max_seq: u64::from_le_bytes(max_seq.try_into().expect("8 bytes")),
        }));
    }
    let op = codec::decode(&mut body)?;
    if !body.is_empty() {
        return Err(StoreError::Corrupt("a record frame holds more than one op".into()));
    }
    Ok(Frame::Op(op))
}

/// Decodes a frame that must hold an op.
pub fn decode_op(frame: &[u8]) -> Result<Op, StoreError> {
    match decode(frame)? {
        Frame::Op(op) => Ok(op),
        Frame::Checkpoint(_) => Err(StoreError::Corrupt("a record points at a checkpoint mark".into())),
    }
}

/// Reads a whole sealed segment into `bytes` (resized to the file's length; only growth is zero-filled).
pub fn read_all_into(file: &File, bytes: &mut Vec<u8>) -> Result<(), StoreError> {
    let read = |e| StoreError::Unavailable(format!("reading a record segment: {e}"));
    bytes.resize(file.metadata().map_err(read)?.len() as usize, 0);
    file.read_exact_at(bytes, 0).map_err(read)
}

/// The segments in `dir` by number.
fn list(dir: &Path) -> Result<Vec<(u32, PathBuf)>, StoreError> {
    super::wal::numbered_files(dir, ".seg").map_err(|e| io_error(dir, e))
}

fn segment_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:010}.seg"))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("record segments {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(i: usize, bytes: usize) -> Op {
        Op::Template { id: format!("t{i}"), value: vec![i as u8; bytes] }
    }

    #[test]
    fn frames_read_together_come_back_in_the_order_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let (mut segments, _) = Segments::open(dir.path(), &mut Index::default()).unwrap();
        const FAR: usize = 2 * COALESCE_GAP as usize;
        segments.set_max_bytes(FAR as u64);
        // Small frames one after another, one far from its neighbours (past a frame larger than the gap), and
        // frames in a second segment.
        let mut locs = Vec::new();
        for i in 0..12 {
            let size = if i == 5 { FAR } else { 40 + i };
            locs.push(segments.append(&template(i, size)));
            if i == 8 {
                segments.flush().unwrap();
                assert!(segments.roll_if_full().unwrap(), "the large frame fills the first segment");
            }
        }
        segments.flush().unwrap();
        assert!(locs.iter().any(|l| l.seg != locs[0].seg), "frames in two segments");

        let asked: Vec<usize> = vec![11, 3, 0, 9, 5, 3, 1, 10, 7, 2, 6, 4, 8];
        let located: Vec<Located> = asked.iter().map(|&i| segments.locate(locs[i]).unwrap()).collect();
        let read = Located::read_many(&located).unwrap();
        let expected: Vec<Op> = asked.iter().map(|&i| template(i, if i == 5 { FAR } else { 40 + i })).collect();
        assert_eq!(read, expected);
    }
}
