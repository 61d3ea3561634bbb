//! The log: every batch the store keeps, written once, and one record per
//! step, appended to checksummed segment files beside the redb file
//! (design notes §50, §51).
//!
//! redb holds everything small (safety state, certificates, headers, the
//! at-most-once keys) and the index of the batches, `batch_log`: (sequence
//! number, digest) → where the batch's record is. The bulk bytes, the
//! batches, never enter a B-tree. A step appends its batches' records and
//! then its step record (`step.rs`: the step's records and deliveries, each
//! batch named by where it is) to the open segment and `fdatasync`s it:
//! the step is durable from then on. Its redb transaction, which refers to
//! the batch records, is committed after that (mostly without an fsync:
//! the storage module doc). So
//!
//! - nothing names bytes that are not durable (the append is synced
//!   first); a crash during an append leaves a torn tail no position
//!   names, at the end of a segment, and a restart appends to a new one;
//! - a batch record is read back only through the index, and checked there:
//!   its magic, its length, the sequence number and digest it was written
//!   for, and a CRC-32 of all of that and the batch. A torn or damaged
//!   record is refused with an error that names the file and offset, never
//!   decoded;
//! - step records are read only by the open's replay ([`steps_from`]), from
//!   the position redb's last durable commit names; they are numbered, so a
//!   missing one is a gap, refused;
//! - redb's file holds no batches, so its repair walk after a crash (a
//!   read of the whole file) stays short however long the history;
//! - a segment is deleted once no index entry refers to it (pruned blocks,
//!   discarded batches) and a durable redb commit has passed it (its step
//!   records will not be replayed); a segment left with none by a crash is
//!   deleted by the next open, after its replay.
//!
//! A segment starts with a header of [`SEGMENT_HEADER_BYTES`]: the text
//! `bftd batch log\n\0`, the layout version (`u32`, 1), and the committee
//! epoch of its first record (`u64`; 0 until committee epochs exist,
//! design notes §49, which asks for it so that pruning and recovery can
//! tell a segment's committee without reading its records), then records.
//! Record layout, little-endian: magic (4 bytes: `bftB` a batch, `bftS` a
//! step), body length (4), sequence number (8: the batch's, or the step's
//! number), digest (32: the batch's, zeros for a step), CRC-32 (4) of the
//! 48 bytes before it and the body, then the body: the batch's or the step
//! record's codec encoding.

use super::layout::{batch_from_key, BatchKey};
use super::DiskStorageError;
use bftd_crypto::Digest;
use bftd_protocol::{codec, Batch, SeqNum};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A segment takes appends until it holds this much; the step that finds it
/// full starts the next one (so a segment may exceed it by one step). Unit
/// tests use small segments, so that they rotate and delete them.
pub(super) const SEGMENT_BYTES: u64 = if cfg!(test) {
    256 * 1024
} else {
    64 * 1024 * 1024
};

/// A segment's header: text, layout version, epoch, 4 bytes reserved.
pub(super) const SEGMENT_HEADER_BYTES: usize = 32;
const SEGMENT_MAGIC: [u8; 16] = *b"bftd batch log\n\0";
const LAYOUT_VERSION: u32 = 1;
const MAGIC: [u8; 4] = *b"bftB";
/// A step record's magic (design notes §51): the header's sequence number
/// field holds the step's number, its digest field zeros.
const STEP_MAGIC: [u8; 4] = *b"bftS";
/// Magic, length, sequence number, digest, CRC.
pub(super) const HEADER_BYTES: usize = 4 + 4 + 8 + 32 + 4;
/// Where the CRC sits in the header (it covers everything else).
const CRC_AT: usize = HEADER_BYTES - 4;
const SUFFIX: &str = ".seg";

/// Where a test stops a step as if the process died there (the write
/// path's crash points, between its writes).
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CrashPoint {
    /// Half of the step's log bytes written, not synced; no commit.
    TornAppend,
    /// The step's log bytes written and synced; no commit.
    BeforeCommit,
    /// The redb commit done; the segments it emptied neither counted nor
    /// deleted.
    AfterCommit,
}

#[cfg(test)]
pub(super) fn crashed() -> DiskStorageError {
    DiskStorageError::Log {
        path: PathBuf::from("(a test's crash point)"),
        source: io::Error::other("simulated crash"),
    }
}

/// Where a batch's record is: what the `batch_log` table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Location {
    pub segment: u64,
    /// The record's first byte (its header) in the segment.
    pub offset: u64,
    /// The batch's encoded length (the record is [`HEADER_BYTES`] more).
    pub len: u32,
}

/// A [`Location`] as an index value: segment, offset, length, big-endian.
pub(super) type LocationBytes = [u8; 20];

/// Where the log stands after a step: the next record goes at `offset` in
/// `segment` (or at the start of a later segment), and is step `next_step`.
/// Every redb commit records it (`meta/log`), so after a crash the steps
/// to replay are those from here on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Position {
    pub segment: u64,
    pub offset: u64,
    pub next_step: u64,
}

impl Location {
    pub fn to_bytes(self) -> LocationBytes {
        let mut out = [0u8; 20];
        let (segment, rest) = out.split_at_mut(8);
        let (offset, len) = rest.split_at_mut(8);
        segment.copy_from_slice(&self.segment.to_be_bytes());
        offset.copy_from_slice(&self.offset.to_be_bytes());
        len.copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: LocationBytes) -> Location {
        let mut segment = [0u8; 8];
        let mut offset = [0u8; 8];
        let mut len = [0u8; 4];
        let (segment_part, rest) = bytes.split_at(8);
        let (offset_part, len_part) = rest.split_at(8);
        segment.copy_from_slice(segment_part);
        offset.copy_from_slice(offset_part);
        len.copy_from_slice(len_part);
        Location {
            segment: u64::from_be_bytes(segment),
            offset: u64::from_be_bytes(offset),
            len: u32::from_be_bytes(len),
        }
    }
}

/// The directory of `store`'s segments: `<store file>.batches`.
pub(super) fn directory(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(".batches");
    store.with_file_name(name)
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016x}{SUFFIX}"))
}

fn segment_id(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(SUFFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The writer's side of the log: the open segment, what the current step
/// staged, and how many index entries refer to each segment. Owned by the
/// store behind a lock: one step writes at a time.
#[derive(Debug)]
pub(super) struct BatchLog {
    dir: PathBuf,
    /// The segment taking appends; none until the first append after
    /// opening (a restart never appends after bytes a crash may have torn).
    current: Option<Segment>,
    next_id: u64,
    /// Index entries per segment, as committed.
    live: BTreeMap<u64, u64>,
    /// Records the current step appends, written and synced by [`Self::sync`].
    staged: Vec<u8>,
    /// The segment of each staged record.
    added: Vec<u64>,
    /// The segment of each index entry the current step removed.
    freed: Vec<u64>,
    /// The number of the next step record.
    next_step: u64,
    /// `next_step` as of the last sync: a step whose record was staged but
    /// never synced gives its number to the next one.
    synced_next_step: u64,
    /// When the last durable commit was (see `write::DURABLE_EVERY`).
    durable_at: std::time::Instant,
    /// Segments nothing refers to that may still hold steps to replay:
    /// deleted once a durable commit has passed them.
    unreferenced: std::collections::BTreeSet<u64>,
    /// Where the next step stops (tests).
    #[cfg(test)]
    pub crash_at: Option<CrashPoint>,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    file: File,
    /// Bytes written and synced.
    len: u64,
}

impl BatchLog {
    /// Opens the log of a store whose index refers to segments as `live`
    /// counts and whose last durable commit recorded `durable` (`None`: no
    /// step to replay): creates the directory if absent (only if nothing
    /// refers to it), refuses a segment the index needs that is not there,
    /// and deletes the segments nothing refers to (left by a crash) below
    /// `durable`'s; those from there on hold the steps to replay, and go
    /// with [`Self::made_durable`] after the replay.
    pub fn open(
        store: &Path,
        live: BTreeMap<u64, u64>,
        durable: Option<Position>,
    ) -> Result<BatchLog, DiskStorageError> {
        let dir = directory(store);
        let io_error = |source| DiskStorageError::Log {
            path: dir.clone(),
            source,
        };
        if !dir.try_exists().map_err(io_error)? {
            if let Some((&segment, _)) = live.first_key_value() {
                return Err(missing(&dir, segment));
            }
            std::fs::create_dir(&dir).map_err(io_error)?;
            let parent = match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            sync_directory(parent).map_err(io_error)?;
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            // Files that are not segments are not ours to touch.
            if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
                found.push(id);
            }
        }
        if let Some(&segment) = live.keys().find(|id| !found.contains(id)) {
            return Err(missing(&dir, segment));
        }
        let durable_segment = durable.map_or(u64::MAX, |position| position.segment);
        let mut unreferenced = std::collections::BTreeSet::new();
        for &id in found.iter().filter(|id| !live.contains_key(id)) {
            if id >= durable_segment {
                unreferenced.insert(id);
                continue;
            }
            let path = segment_path(&dir, id);
            std::fs::remove_file(&path).map_err(io_error)?;
            tracing::info!(path = %path.display(), "deleted a segment of the batch log that nothing refers to");
        }
        let next_id = found
            .iter()
            .chain(live.keys())
            .max()
            .map_or(0, |id| id.saturating_add(1));
        Ok(BatchLog {
            dir,
            current: None,
            next_id,
            live,
            staged: Vec::new(),
            added: Vec::new(),
            freed: Vec::new(),
            next_step: durable.map_or(0, |position| position.next_step),
            synced_next_step: durable.map_or(0, |position| position.next_step),
            durable_at: std::time::Instant::now(),
            unreferenced,
            #[cfg(test)]
            crash_at: None,
        })
    }

    /// Stages the current step's record (after its batches' records):
    /// `body` is what a replay needs to redo the step. Returns where the
    /// log will stand after it.
    pub fn stage_step(&mut self, body: &[u8]) -> Result<Position, DiskStorageError> {
        let step = self.next_step;
        self.stage_record(STEP_MAGIC, SeqNum(step), &Digest::ZERO, |out| {
            out.extend_from_slice(body);
            Ok(())
        })?;
        self.next_step = step.saturating_add(1);
        Ok(self.position())
    }

    /// Where the log stands, counting what is staged: the next record's
    /// place, or the start of the next segment if none is open.
    pub fn position(&self) -> Position {
        let (segment, offset) = match &self.current {
            Some(segment) => (
                segment.id,
                segment.len.saturating_add(self.staged.len() as u64),
            ),
            None => (self.next_id, SEGMENT_HEADER_BYTES as u64),
        };
        Position {
            segment,
            offset,
            next_step: self.next_step,
        }
    }

    /// A durable redb commit recorded `position`: the steps before it will
    /// never be replayed, so the segments below its segment that nothing
    /// refers to go.
    pub fn made_durable(&mut self, position: Position) {
        self.durable_at = std::time::Instant::now();
        let current = self.current.as_ref().map(|segment| segment.id);
        let below = self
            .unreferenced
            .range(..position.segment)
            .copied()
            .filter(|id| Some(*id) != current && !self.live.contains_key(id))
            .collect::<Vec<_>>();
        for id in below {
            self.unreferenced.remove(&id);
            self.delete(id);
        }
    }

    /// Whether this step's redb commit should be durable: the last one was
    /// [`super::write::DURABLE_EVERY`] ago or more.
    pub fn durable_due(&self) -> bool {
        self.durable_at.elapsed() >= super::write::DURABLE_EVERY
    }

    /// Makes the next step's commit durable (tests).
    #[cfg(test)]
    pub fn durable_overdue(&mut self) {
        let past = std::time::Instant::now().checked_sub(super::write::DURABLE_EVERY);
        self.durable_at = past.unwrap_or(self.durable_at);
    }

    /// A replayed step's index entry refers to `segment` (the record was
    /// written before the crash).
    pub fn referenced(&mut self, segment: u64) {
        self.added.push(segment);
    }

    /// The step number of the next step record (a replay continues after
    /// its last step).
    pub fn set_next_step(&mut self, step: u64) {
        self.next_step = step;
        self.synced_next_step = step;
    }

    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// Stages `batch`'s record for the current step; returns where it will
    /// be once [`Self::sync`] wrote it.
    pub fn stage(
        &mut self,
        seq: SeqNum,
        digest: &Digest,
        batch: &Batch,
    ) -> Result<Location, DiskStorageError> {
        let dir = self.dir.clone();
        let (id, offset, len) = self.stage_record(MAGIC, seq, digest, |out| {
            codec::encode_append(batch, out).map_err(|source| DiskStorageError::Encode {
                path: dir,
                table: "batch_log",
                source,
            })
        })?;
        self.added.push(id);
        Ok(Location {
            segment: id,
            offset,
            len,
        })
    }

    /// Stages a record: header, then what `body` appends. Returns its
    /// segment, offset and body length.
    fn stage_record(
        &mut self,
        magic: [u8; 4],
        seq: SeqNum,
        digest: &Digest,
        body: impl FnOnce(&mut Vec<u8>) -> Result<(), DiskStorageError>,
    ) -> Result<(u64, u64, u32), DiskStorageError> {
        let segment = self.segment_for_step()?;
        let (id, written) = (segment.id, segment.len);
        if written == 0 && self.staged.is_empty() {
            // A new segment's header, written and synced with its first
            // record.
            self.staged.extend_from_slice(&SEGMENT_MAGIC);
            self.staged.extend_from_slice(&LAYOUT_VERSION.to_le_bytes());
            self.staged.extend_from_slice(&0u64.to_le_bytes());
            self.staged.resize(SEGMENT_HEADER_BYTES, 0);
        }
        let start = self.staged.len();
        let offset = written.saturating_add(start as u64);
        self.staged.resize(start + HEADER_BYTES, 0);
        if let Err(error) = body(&mut self.staged) {
            self.staged.truncate(start);
            return Err(error);
        }
        let record = self.staged.get_mut(start..).unwrap_or_default();
        let len = record.len().saturating_sub(HEADER_BYTES);
        let Ok(len) = u32::try_from(len) else {
            self.staged.truncate(start);
            return Err(DiskStorageError::Log {
                path: self.dir.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "a record of 4 GiB or more"),
            });
        };
        write_header(record, magic, len, seq, digest);
        Ok((id, offset, len))
    }

    /// Notes that the current step removed an index entry of `segment`.
    pub fn free(&mut self, segment: u64) {
        self.freed.push(segment);
    }

    /// Writes what the step staged and makes it durable. Call before
    /// committing the transaction that refers to it.
    pub fn sync(&mut self) -> Result<(), DiskStorageError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let Some(segment) = self.current.as_mut() else {
            // `stage` opened one; only a failed sync closes it, and that
            // step failed. Never report staged bytes durable.
            return Err(DiskStorageError::Log {
                path: self.dir.clone(),
                source: io::Error::other("staged records but no open segment"),
            });
        };
        #[cfg(test)]
        if self.crash_at == Some(CrashPoint::TornAppend) {
            let half = self.staged.get(..self.staged.len() / 2).unwrap_or_default();
            segment
                .file
                .write_all_at(half, segment.len)
                .map_err(|source| DiskStorageError::Log {
                    path: self.dir.clone(),
                    source,
                })?;
            return Err(crashed());
        }
        let result = segment
            .file
            .write_all_at(&self.staged, segment.len)
            .and_then(|()| segment.file.sync_data());
        match result {
            Ok(()) => {
                segment.len = segment.len.saturating_add(self.staged.len() as u64);
                self.staged.clear();
                self.synced_next_step = self.next_step;
                Ok(())
            }
            Err(source) => {
                // What reached the file is not referred to; append no more
                // after it.
                let path = segment_path(&self.dir, segment.id);
                self.current = None;
                Err(DiskStorageError::Log { path, source })
            }
        }
    }

    /// The step's transaction committed: its index entries count, and a
    /// segment it left with none is deleted with the next durable commit.
    pub fn committed(&mut self) {
        for id in self.added.drain(..) {
            let count = self.live.entry(id).or_insert(0);
            *count = count.saturating_add(1);
            // Referred to again (a replay redoing the steps that wrote it).
            self.unreferenced.remove(&id);
        }
        for id in std::mem::take(&mut self.freed) {
            let Some(count) = self.live.get_mut(&id) else {
                continue;
            };
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.live.remove(&id);
                self.forget(id);
            }
        }
    }

    /// Nothing refers to segment `id` any more, as of a commit that may not
    /// be durable: it goes with the next durable commit ([`Self::made_durable`]).
    /// Deleting it sooner would let a crash roll redb back to an index that
    /// still names it, and its step records may be replayed.
    fn forget(&mut self, id: u64) {
        self.unreferenced.insert(id);
    }

    /// The step failed before or at its commit: forget what it staged (bytes
    /// already appended are referred to by nothing). A step record that was
    /// never synced gives its number to the next step; one that was keeps
    /// it (a replay will redo that step).
    pub fn aborted(&mut self) {
        self.staged.clear();
        self.added.clear();
        self.freed.clear();
        self.next_step = self.synced_next_step;
    }

    /// Segments and the index entries that refer to each (for tests).
    #[cfg(test)]
    pub fn live(&self) -> &BTreeMap<u64, u64> {
        &self.live
    }

    fn delete(&self, id: u64) {
        let path = segment_path(&self.dir, id);
        // A segment that cannot be deleted now is deleted by the next open.
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), %error, "cannot delete a segment of the batch log");
        }
    }

    /// The segment this step appends to: the open one, or a new one if
    /// there is none or it is full and the step has staged nothing yet.
    fn segment_for_step(&mut self) -> Result<&Segment, DiskStorageError> {
        let full = self
            .current
            .as_ref()
            .is_none_or(|segment| segment.len >= SEGMENT_BYTES);
        if full && self.staged.is_empty() {
            let id = self.next_id;
            let path = segment_path(&self.dir, id);
            let io_error = |source| DiskStorageError::Log {
                path: path.clone(),
                source,
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io_error)?;
            // The new name must survive a power loss before an index entry
            // refers to it.
            sync_directory(&self.dir).map_err(io_error)?;
            self.next_id = id.saturating_add(1);
            if let Some(old) = self.current.take() {
                if !self.live.contains_key(&old.id) {
                    self.forget(old.id);
                }
            }
            self.current = Some(Segment { id, file, len: 0 });
        }
        self.current.as_ref().ok_or_else(|| DiskStorageError::Log {
            path: self.dir.clone(),
            source: io::Error::other("no open segment"),
        })
    }
}

/// Reads the batch at `location`, stored for `key`, and checks it; returns
/// it and its encoded length.
pub(super) fn read(
    dir: &Path,
    key: BatchKey,
    location: Location,
) -> Result<(Batch, usize), DiskStorageError> {
    let path = segment_path(dir, location.segment);
    let damaged = |reason: String| DiskStorageError::DamagedLog {
        path: path.clone(),
        offset: location.offset,
        reason,
    };
    let file = File::open(&path).map_err(|source| DiskStorageError::Log {
        path: path.clone(),
        source,
    })?;
    // A length no batch can have (the index is checksummed by redb, so this
    // is damage redb missed) is refused before it is allocated.
    if u64::from(location.len) > codec::MAX_MESSAGE_BYTES {
        return Err(damaged(format!(
            "the index gives a record of {} bytes, more than any batch",
            location.len
        )));
    }
    let len = location.len as usize;
    let mut record = vec![0u8; HEADER_BYTES.saturating_add(len)];
    file.read_exact_at(&mut record, location.offset)
        .map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => damaged("the record is cut short".into()),
            _ => DiskStorageError::Log {
                path: path.clone(),
                source,
            },
        })?;
    let batch = check(&record, key).map_err(|damage| match damage {
        Damage::Record(reason) => damaged(reason),
        Damage::Batch(source) => DiskStorageError::Decode {
            path: path.clone(),
            table: "batch_log",
            source,
        },
    })?;
    Ok((batch, len))
}

/// A step record read back by a replay: its number, what
/// [`BatchLog::stage_step`] staged, and where the log stood after it.
#[derive(Debug)]
pub(super) struct LoggedStep {
    pub step: u64,
    pub body: Vec<u8>,
    pub after: Position,
}

/// The step records from `from` on, in order: what a crash may have left
/// unapplied in redb. Batch records between them are skipped (a step record
/// names the batches it refers to). In each segment the walk ends at the
/// first record that is cut short or is not a record, and a step record that
/// fails its checksum ends it too unless an intact step record follows: the
/// tail a crash tore, which no durable position names (a restart appends to
/// a new segment). Steps are numbered, so a record lost in the middle shows
/// as a gap or as damage before intact steps, refused, never skipped.
pub(super) fn steps_from(dir: &Path, from: Position) -> Result<Vec<LoggedStep>, DiskStorageError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskStorageError::Log { path, source }
    };
    let mut ids = Vec::new();
    if dir.try_exists().map_err(io_error(dir))? {
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
                if id >= from.segment {
                    ids.push(id);
                }
            }
        }
    }
    ids.sort_unstable();
    let mut expected = from.next_step;
    let mut steps = Vec::new();
    for id in ids {
        let path = segment_path(dir, id);
        let file = File::open(&path).map_err(io_error(&path))?;
        let file_len = file.metadata().map_err(io_error(&path))?.len();
        let mut offset = if id == from.segment {
            from.offset
        } else {
            SEGMENT_HEADER_BYTES as u64
        };
        let mut header = [0u8; HEADER_BYTES];
        // Where a step record failed its checksum, in this segment.
        let mut damaged = None;
        loop {
            let body_at = offset.saturating_add(HEADER_BYTES as u64);
            if body_at > file_len {
                break;
            }
            file.read_exact_at(&mut header, offset)
                .map_err(io_error(&path))?;
            let field = |range: std::ops::Range<usize>| header.get(range).unwrap_or_default();
            let mut len = [0u8; 4];
            len.copy_from_slice(field(4..8));
            let len = u64::from(u32::from_le_bytes(len));
            let end = body_at.saturating_add(len);
            if end > file_len {
                break;
            }
            if field(0..4) == MAGIC {
                offset = end;
                continue;
            }
            if field(0..4) != STEP_MAGIC || len > codec::MAX_MESSAGE_BYTES {
                break;
            }
            let mut body = vec![0u8; len as usize];
            file.read_exact_at(&mut body, body_at)
                .map_err(io_error(&path))?;
            if field(CRC_AT..HEADER_BYTES) != crc(&header, &body).to_le_bytes().as_slice() {
                // A torn tail, unless an intact step follows (below).
                damaged.get_or_insert(offset);
                offset = end;
                continue;
            }
            if let Some(at) = damaged {
                return Err(DiskStorageError::DamagedLog {
                    path,
                    offset: at,
                    reason: "a step record fails its checksum, and intact steps follow it".into(),
                });
            }
            let mut step = [0u8; 8];
            step.copy_from_slice(field(8..16));
            let step = u64::from_le_bytes(step);
            if step != expected {
                return Err(DiskStorageError::DamagedLog {
                    path,
                    offset,
                    reason: format!(
                        "step {step} follows step {}: a step record the store needs is missing or damaged",
                        expected.wrapping_sub(1)
                    ),
                });
            }
            expected = step.saturating_add(1);
            steps.push(LoggedStep {
                step,
                body,
                after: Position {
                    segment: id,
                    offset: end,
                    next_step: expected,
                },
            });
            offset = end;
        }
    }
    Ok(steps)
}

/// What is wrong with a record.
#[derive(Debug)]
pub(super) enum Damage {
    /// Its header or checksum: it is not the record the index names.
    Record(String),
    /// It is, but its batch does not decode.
    Batch(codec::CodecError),
}

/// Checks that `record` (a header and its body, exactly) is the record of
/// the batch stored under `key`, intact, and decodes the batch.
pub(super) fn check(record: &[u8], key: BatchKey) -> Result<Batch, Damage> {
    let (seq, digest) = batch_from_key(key);
    if record.len() < HEADER_BYTES {
        return Err(Damage::Record("the record is cut short".into()));
    }
    let (header, body) = record.split_at(HEADER_BYTES);
    if header.get(..4) != Some(MAGIC.as_slice()) {
        return Err(Damage::Record("no record starts here".into()));
    }
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut expected = [0u8; HEADER_BYTES];
    write_header_fields(&mut expected, MAGIC, len, seq, &digest);
    if header.get(..CRC_AT) != expected.get(..CRC_AT) {
        return Err(Damage::Record(format!(
            "the record there is not batch {} {digest} of length {len}",
            seq.0
        )));
    }
    if header.get(CRC_AT..) != Some(crc(header, body).to_le_bytes().as_slice()) {
        return Err(Damage::Record(
            "its checksum does not match its bytes".into(),
        ));
    }
    codec::decode(body).map_err(Damage::Batch)
}

/// A record of `body` as the batch `(seq, digest)`, as [`BatchLog::stage`]
/// writes it (for the fuzzer).
pub(super) fn record(seq: SeqNum, digest: &Digest, body: &[u8]) -> Vec<u8> {
    let mut record = vec![0u8; HEADER_BYTES];
    record.extend_from_slice(body);
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    write_header(&mut record, MAGIC, len, seq, digest);
    record
}

fn write_header(record: &mut [u8], magic: [u8; 4], len: u32, seq: SeqNum, digest: &Digest) {
    let (header, body) = record.split_at_mut(HEADER_BYTES);
    write_header_fields(header, magic, len, seq, digest);
    let sum = crc(header, body);
    if let Some(slot) = header.get_mut(CRC_AT..) {
        slot.copy_from_slice(&sum.to_le_bytes());
    }
}

fn write_header_fields(header: &mut [u8], magic: [u8; 4], len: u32, seq: SeqNum, digest: &Digest) {
    let (len, seq) = (len.to_le_bytes(), seq.0.to_le_bytes());
    let fields = magic.iter().chain(&len).chain(&seq).chain(&digest.0);
    for (slot, byte) in header.iter_mut().zip(fields) {
        *slot = *byte;
    }
}

/// CRC-32 of the header's fields (all but the CRC itself) and the body.
fn crc(header: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header.get(..CRC_AT).unwrap_or_default());
    hasher.update(body);
    hasher.finalize()
}

fn missing(dir: &Path, segment: u64) -> DiskStorageError {
    DiskStorageError::DamagedLog {
        path: segment_path(dir, segment),
        offset: 0,
        reason: "the segment is missing, but the index refers to it".into(),
    }
}

fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
