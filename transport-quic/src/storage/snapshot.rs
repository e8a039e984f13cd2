//! Snapshots of the host's state machine. One snapshot is kept, in the file `snapshot`;
//! it is only ever replaced whole, by renaming a complete, fsynced temporary file over it.
//!
//! # Format (version 2)
//!
//! ```text
//! +------------+-------------+-----------+----------+----------+----------------+
//! | "CORASNAP" | version u32 | index u64 | term u64 | size u64 | config_len u32 |
//! +------------+-------------+-----------+----------+----------+----------------+
//! | config (config_len bytes) | data (size bytes) | crc32 u32 |
//! +---------------------------+-------------------+-----------+
//! ```
//!
//! Little-endian. The fixed header is 40 bytes; `config` is the membership configuration in
//! force at `index`, encoded as in a membership entry ([`SnapshotMeta::config`], empty for
//! the bootstrap members); `data` is the host's serialized state machine. The CRC-32 at the
//! end covers every byte before it, so a file is valid only whole; the file size must be
//! exactly `40 + config_len + size + 4`. The snapshot's index and term are the log's
//! compaction point on open.
//!
//! The checksum is a trailer (not in the header) so that a snapshot received in chunks can
//! be written front to back into its temporary file and sealed at the end.
//!
//! Version 1 (index, term and data, no configuration) is refused with
//! [`FileLogError::SnapshotVersion`]: a snapshot without its configuration cannot be
//! migrated safely (the configuration in force at its index may be compacted away), and no
//! released node ever wrote one (version 1 snapshots were only written through the library
//! API, never by `coracle node`).

use super::error::{io_err, FileLogError};
use super::record::le_u64;
use coracle::SnapshotMeta;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Name of the snapshot file.
pub(crate) const FILE: &str = "snapshot";
/// Name of the file a snapshot received from a leader is written to, chunk by chunk (a
/// temporary file: removed on open, never part of the durable state).
pub(crate) const INCOMING: &str = "snapshot.incoming.tmp";
const MAGIC: &[u8; 8] = b"CORASNAP";
/// Version of the snapshot file format.
pub const VERSION: u32 = 2;
/// Bytes of the fixed header.
const FIXED: usize = 40;
/// Bytes of the checksum trailer.
const TRAILER: u64 = 4;

/// A snapshot of the state machine: its metadata and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Index, term, size and configuration.
    pub meta: SnapshotMeta,
    /// The host's serialized state machine (opaque to the log).
    pub data: Vec<u8>,
}

/// The header of a snapshot described by `meta`: fixed part and configuration.
pub(crate) fn header(meta: &SnapshotMeta) -> Vec<u8> {
    let config = meta.config();
    let mut h = Vec::with_capacity(FIXED + config.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&meta.index.to_le_bytes());
    h.extend_from_slice(&meta.term.to_le_bytes());
    h.extend_from_slice(&meta.size.to_le_bytes());
    h.extend_from_slice(&(config.len() as u32).to_le_bytes());
    h.extend_from_slice(config);
    h
}

/// Name of the temporary file a snapshot of the host's state machine is written to before
/// it is renamed over [`FILE`].
pub(crate) const SAVING: &str = "snapshot.saving.tmp";

/// Saves a snapshot durably and atomically, replacing the previous one.
#[cfg(test)]
pub(crate) fn write(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<(), FileLogError> {
    let tmp = dir.join(SAVING);
    write_file(&tmp, meta, data)?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(io_err(&tmp, "rename into place"))?;
    super::dir::sync_dir(dir)
}

/// Writes the snapshot file of `meta` and `data` at `path` and fsyncs it.
pub(crate) fn write_file(
    path: &Path,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(), FileLogError> {
    let h = header(meta);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h);
    crc.update(data);
    let crc = crc.finalize().to_le_bytes();
    let mut file = File::create(path).map_err(io_err(path, "create"))?;
    file.write_all(&h).map_err(io_err(path, "write"))?;
    super::dir::write_in_flushes(&mut file, data, path)?;
    file.write_all(&crc).map_err(io_err(path, "write"))?;
    file.sync_all().map_err(io_err(path, "sync"))
}

/// A snapshot being received from a leader, in its temporary file.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub meta: SnapshotMeta,
    pub path: PathBuf,
    file: File,
    header_len: u64,
    /// Bytes of data received so far (from offset 0, contiguous).
    pub received: u64,
}

impl Incoming {
    /// Starts a new incoming snapshot (replacing any earlier one): creates the temporary
    /// file and writes the header.
    pub fn start(dir: &Path, meta: &SnapshotMeta) -> Result<Incoming, FileLogError> {
        let path = dir.join(INCOMING);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err(&path, "create incoming snapshot"))?;
        let h = header(meta);
        file.write_all(&h)
            .map_err(io_err(&path, "write incoming snapshot"))?;
        Ok(Incoming {
            meta: *meta,
            path,
            file,
            header_len: h.len() as u64,
            received: 0,
        })
    }

    /// Writes `data` at `offset` of the snapshot's data. `offset` may be at most what was
    /// received (a resent chunk overwrites, and what followed it is dropped).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), FileLogError> {
        if offset < self.received {
            self.file
                .set_len(self.header_len + offset)
                .map_err(io_err(&self.path, "truncate incoming snapshot"))?;
        }
        self.file
            .write_all_at(data, self.header_len + offset)
            .map_err(io_err(&self.path, "write incoming snapshot"))?;
        self.received = offset + data.len() as u64;
        Ok(())
    }

    /// Reads the data back, appends the checksum and fsyncs the file: it is then a complete
    /// snapshot file, ready to be renamed into place. Returns the data.
    pub fn seal(&mut self) -> Result<Vec<u8>, FileLogError> {
        let len = usize::try_from(self.meta.size).map_err(|_| {
            FileLogError::BadSnapshot(format!(
                "snapshot of {} bytes does not fit in memory",
                self.meta.size
            ))
        })?;
        let mut data = vec![0u8; len];
        self.file
            .read_exact_at(&mut data, self.header_len)
            .map_err(io_err(&self.path, "read incoming snapshot back"))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header(&self.meta));
        crc.update(&data);
        let end = self.header_len + self.meta.size;
        self.file
            .set_len(end)
            .map_err(io_err(&self.path, "truncate incoming snapshot"))?;
        self.file
            .write_all_at(&crc.finalize().to_le_bytes(), end)
            .map_err(io_err(&self.path, "write incoming snapshot"))?;
        self.file
            .sync_all()
            .map_err(io_err(&self.path, "sync incoming snapshot"))?;
        Ok(data)
    }
}

/// Reads the snapshot of `dir` after checking it whole.
pub(crate) fn read(dir: &Path) -> Result<Option<Snapshot>, FileLogError> {
    let path = dir.join(FILE);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path, "open")(e)),
    };
    let corrupt = |offset, reason: &str| FileLogError::corrupt(&path, offset, reason);
    let file_len = file.metadata().map_err(io_err(&path, "stat"))?.len();
    let mut h = [0u8; FIXED];
    file.read_exact(&mut h).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(0, "snapshot header is incomplete"),
        _ => io_err(&path, "read")(e),
    })?;
    if &h[..8] != MAGIC {
        return Err(corrupt(0, "not a snapshot file"));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&h[8..12]);
    let version = u32::from_le_bytes(v);
    if version != VERSION {
        return Err(FileLogError::SnapshotVersion {
            file: path,
            version,
        });
    }
    let (index, term, size) = (le_u64(&h[12..20]), le_u64(&h[20..28]), le_u64(&h[28..36]));
    let mut c = [0u8; 4];
    c.copy_from_slice(&h[36..40]);
    let config_len = u32::from_le_bytes(c) as u64;
    let expected = (FIXED as u64)
        .checked_add(config_len)
        .and_then(|n| n.checked_add(size))
        .and_then(|n| n.checked_add(TRAILER));
    if expected != Some(file_len) {
        return Err(corrupt(
            28,
            "snapshot size and configuration length do not match the file size",
        ));
    }
    let too_large = |_| corrupt(28, "snapshot is too large for this machine's memory");
    let mut config = vec![0u8; usize::try_from(config_len).map_err(too_large)?];
    let mut data = vec![0u8; usize::try_from(size).map_err(too_large)?];
    let mut trailer = [0u8; 4];
    file.read_exact(&mut config)
        .and_then(|()| file.read_exact(&mut data))
        .and_then(|()| file.read_exact(&mut trailer))
        .map_err(io_err(&path, "read"))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h);
    crc.update(&config);
    crc.update(&data);
    if crc.finalize().to_le_bytes() != trailer {
        return Err(corrupt(file_len - TRAILER, "snapshot checksum mismatch"));
    }
    let meta = SnapshotMeta::new(index, term, size, &config)
        .ok_or_else(|| corrupt(36, "snapshot configuration is too large"))?;
    Ok(Some(Snapshot { meta, data }))
}

/// Writes a version 1 snapshot file (for the tests of the refusal).
#[cfg(test)]
pub(crate) fn write_v1(dir: &Path, index: u64, term: u64, data: &[u8]) {
    let mut h = Vec::new();
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&index.to_le_bytes());
    h.extend_from_slice(&term.to_le_bytes());
    h.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h);
    crc.update(data);
    h.extend_from_slice(&crc.finalize().to_le_bytes());
    h.extend_from_slice(data);
    let _ = std::fs::write(dir.join(FILE), h);
}
