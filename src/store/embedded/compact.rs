//! Compaction: a sealed segment that is mostly dead (records put again later, expired keys, audiences of
//! ended campaigns) has its live frames copied into the newest segment, byte for byte, and is deleted once the
//! copies are synced. Run by the checkpointer between checkpoints, one segment at a time, in chunks so that
//! readers never wait long for the lock; only the checkpointer changes the state, so nothing moves between
//! chunks.

use std::time::Instant;

use parking_lot::RwLock;

use super::apply::State;
use super::index::Loc;
use super::segments::{self, decode_op};
use crate::store::StoreError;

/// Frames looked at per hold of the write lock.
const CHUNK: usize = 2_000;

/// What one compaction did.
#[derive(Debug)]
pub struct Compacted {
    pub segment: u32,
    pub bytes: u64,
    pub moved: usize,
    pub moved_bytes: u64,
}

/// Compacts the sealed segment with the smallest live share if less than half of it is live, it is not still
/// dying, and the store is not `busy` or has piled up dead bytes
/// ([`super::segments::Segments::compaction_candidate`]): its live frames are written to the newest segment with
/// a mark for log LSN `lsn`, which the caller must sync before `remove` deletes the old one. Returns None when no segment needs it. On a failed write the frames not written stay
/// pending, for the caller to retry.
///
/// The segment is read into `buffer`, which the caller keeps between compactions: under load they come every
/// sync, and a fresh 64 MiB buffer each time cost more (zeroing, page faults) than reading into it. When no
/// segment needs compacting the buffer is released.
pub fn copy_live(
    state: &RwLock<State>,
    lsn: u64,
    busy: bool,
    buffer: &mut Vec<u8>,
) -> Result<Option<Compacted>, StoreError> {
    let Some((number, file)) = state.write().segments.compaction_candidate(Instant::now(), busy) else {
        *buffer = Vec::new();
        return Ok(None);
    };
    segments::read_all_into(&file, buffer)?;
    let bytes = &buffer[..];
    let frames = segments::frame_locs(number, bytes)?;
    let mut compacted = Compacted { segment: number, bytes: bytes.len() as u64, moved: 0, moved_bytes: 0 };
    for chunk in frames.chunks(CHUNK) {
        let mut state = state.write();
        for &at in chunk {
            let frame = frame_bytes(bytes, at);
            let op = decode_op(frame)?;
            if state.relocate(&op, at, frame) {
                compacted.moved += 1;
                compacted.moved_bytes += u64::from(at.len);
            }
        }
        // Before the lock goes: readers must find every frame the index points at in the file.
        state.segments.flush()?;
    }
    let mut state = state.write();
    state.mark(lsn);
    state.segments.flush()?;
    Ok(Some(compacted))
}

fn frame_bytes(segment: &[u8], at: Loc) -> &[u8] {
    &segment[at.at as usize..(at.at + at.len) as usize]
}
