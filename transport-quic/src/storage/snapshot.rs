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
//! The checksum is a trailer (not in the header) so that a snapshot can be written front to
//! back into its temporary file and sealed at the end: the size is written into the header
//! then (a snapshot's size is not known before its last byte), and the checksum is computed
//! as the bytes go (or read back, for one received in chunks). Nothing here holds a
//! snapshot's bytes in memory: they are streamed in and out in pieces.
//!
//! Version 1 (index, term and data, no configuration) is refused with
//! [`FileLogError::SnapshotVersion`]: a snapshot without its configuration cannot be
//! migrated safely (the configuration in force at its index may be compacted away), and no
//! released node ever wrote one (version 1 snapshots were only written through the library
//! API, never by `coracle node`).

use super::error::{io_err, FileLogError};
use super::record::le_u64;
use coracle::{Index, SnapshotMeta, Term};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Name of the snapshot file.
pub(crate) const FILE: &str = "snapshot";
/// Name of the file a snapshot received from a leader is written to, chunk by chunk (a
/// temporary file: removed on open, never part of the durable state).
pub(crate) const INCOMING: &str = "snapshot.incoming.tmp";
/// Start of the names of the files the host's own snapshots are written to
/// (`snapshot.saving-<index>.tmp`), until one is made the kept snapshot.
pub(crate) const SAVING_PREFIX: &str = "snapshot.saving";
const MAGIC: &[u8; 8] = b"CORASNAP";
/// Version of the snapshot file format.
pub const VERSION: u32 = 2;
/// Bytes of the fixed header.
const FIXED: usize = 40;
/// Offset of the size in the header.
const SIZE_AT: u64 = 28;
/// Bytes of the checksum trailer.
const TRAILER: u64 = 4;
/// Bytes read or written at once when a snapshot is streamed.
pub(crate) const PIECE: usize = 256 << 10;

/// The kept snapshot: its metadata and the size of its data (the bytes stay in the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Index, term and configuration.
    pub meta: SnapshotMeta,
    /// Bytes of the host's serialized state machine.
    pub size: u64,
}

/// Name of the file the host's own snapshot at `index` is written to.
pub(crate) fn saving(index: Index) -> String {
    format!("{SAVING_PREFIX}-{index}{}", super::dir::TMP_SUFFIX)
}

/// The header of a snapshot described by `meta` with `size` bytes: fixed part and
/// configuration.
pub(crate) fn header(meta: &SnapshotMeta, size: u64) -> Vec<u8> {
    let config = meta.config();
    let mut h = Vec::with_capacity(FIXED + config.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&meta.index.to_le_bytes());
    h.extend_from_slice(&meta.term.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h.extend_from_slice(&(config.len() as u32).to_le_bytes());
    h.extend_from_slice(config);
    h
}

/// Saves a snapshot durably and atomically, replacing the previous one.
#[cfg(test)]
pub(crate) fn write(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<(), FileLogError> {
    let mut w = Writer::create(dir, meta)?;
    w.write_all(data)
        .map_err(io_err(&dir.join(FILE), "write"))?;
    let tmp = w.finish()?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(io_err(&tmp, "rename into place"))?;
    super::dir::sync_dir(dir)
}

/// The host's own snapshot being written, front to back, into its temporary file
/// (`snapshot.saving-<index>.tmp`); [`FileLog::finish_snapshot`](super::FileLog::finish_snapshot)
/// seals it. Writing is buffered and flushed to disk every 128 KiB (so its `fdatasync`
/// never has much to write: the log's own flushes share the disk).
#[derive(Debug)]
pub struct Writer {
    meta: SnapshotMeta,
    path: PathBuf,
    file: BufWriter<File>,
    header_len: u64,
    size: u64,
    crc: crc32fast::Hasher,
    unflushed: usize,
    finished: bool,
}

impl Writer {
    /// Creates the temporary file of the snapshot `meta` (replacing one of the same index).
    pub(crate) fn create(dir: &Path, meta: &SnapshotMeta) -> Result<Writer, FileLogError> {
        Self::create_named(dir, &saving(meta.index), meta)
    }

    /// The same, in the file `name` of `dir`.
    pub(crate) fn create_named(
        dir: &Path,
        name: &str,
        meta: &SnapshotMeta,
    ) -> Result<Writer, FileLogError> {
        let path = dir.join(name);
        let file = File::create(&path).map_err(io_err(&path, "create snapshot"))?;
        let mut file = BufWriter::with_capacity(PIECE, file);
        let h = header(meta, 0);
        file.write_all(&h)
            .map_err(io_err(&path, "write snapshot"))?;
        Ok(Writer {
            meta: *meta,
            path,
            file,
            header_len: h.len() as u64,
            size: 0,
            crc: crc32fast::Hasher::new(),
            unflushed: 0,
            finished: false,
        })
    }

    /// The metadata written into the file's header.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Bytes of data written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes the size into the header and the checksum after the data, and fsyncs the
    /// file: it is a complete snapshot file, which [`SnapshotWrite::Taken`](coracle::SnapshotWrite::Taken)
    /// renames into place. Returns its path.
    pub(crate) fn finish(mut self) -> Result<PathBuf, FileLogError> {
        let path = self.path.clone();
        self.file.flush().map_err(io_err(&path, "write snapshot"))?;
        let file = self.file.get_ref();
        let h = header(&self.meta, self.size);
        file.write_all_at(&h, 0)
            .map_err(io_err(&path, "write snapshot header"))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h);
        crc.combine(&self.crc);
        file.write_all_at(&crc.finalize().to_le_bytes(), self.header_len + self.size)
            .map_err(io_err(&path, "write snapshot"))?;
        file.sync_all().map_err(io_err(&path, "sync snapshot"))?;
        self.finished = true;
        Ok(path)
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.crc.update(&buf[..n]);
        self.size += n as u64;
        self.unflushed += n;
        if self.unflushed >= super::dir::FLUSH_CHUNK {
            self.file.flush()?;
            self.file.get_ref().sync_data()?;
            self.unflushed = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Writer {
    /// A snapshot given up (not finished) leaves no file behind.
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.path);
        }
    }
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
    /// file and writes the header (its size is written when it is sealed).
    pub fn start(dir: &Path, meta: &SnapshotMeta) -> Result<Incoming, FileLogError> {
        let path = dir.join(INCOMING);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err(&path, "create incoming snapshot"))?;
        let h = header(meta, 0);
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
        if offset > self.received {
            return Err(FileLogError::BadSnapshot(format!(
                "a chunk at offset {offset} of the snapshot at index {}, of which {} bytes were received",
                self.meta.index, self.received
            )));
        }
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

    /// Writes the size into the header, reads the data back (a piece at a time) to append
    /// the checksum, and fsyncs the file: it is then a complete snapshot file, ready to be
    /// renamed into place.
    pub fn seal(&mut self) -> Result<u64, FileLogError> {
        let size = self.received;
        let h = header(&self.meta, size);
        self.file
            .write_all_at(&h, 0)
            .map_err(io_err(&self.path, "write incoming snapshot"))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h);
        hash_range(
            &self.file,
            self.header_len..self.header_len + size,
            &mut crc,
        )
        .map_err(io_err(&self.path, "read incoming snapshot back"))?;
        let end = self.header_len + size;
        self.file
            .set_len(end)
            .map_err(io_err(&self.path, "truncate incoming snapshot"))?;
        self.file
            .write_all_at(&crc.finalize().to_le_bytes(), end)
            .map_err(io_err(&self.path, "write incoming snapshot"))?;
        self.file
            .sync_all()
            .map_err(io_err(&self.path, "sync incoming snapshot"))?;
        Ok(size)
    }
}

/// Hashes the bytes `range` of `file` into `crc`, a piece at a time.
fn hash_range(
    file: &File,
    range: std::ops::Range<u64>,
    crc: &mut crc32fast::Hasher,
) -> io::Result<()> {
    let mut piece = vec![0u8; PIECE.min(range.end.saturating_sub(range.start) as usize)];
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(PIECE as u64) as usize;
        file.read_exact_at(&mut piece[..n], at)?;
        crc.update(&piece[..n]);
        at += n as u64;
    }
    Ok(())
}

/// The header of a snapshot file: metadata, size, where the data starts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub meta: SnapshotMeta,
    pub size: u64,
    pub data_at: u64,
    /// The CRC-32 of the header's bytes (fixed part and configuration), from which the
    /// checksum of the data goes on.
    pub crc: u32,
}

/// Reads and checks the header of the snapshot file `file` at `path` (not its checksum).
pub(crate) fn read_header(file: &File, path: &Path) -> Result<Header, FileLogError> {
    let corrupt = |offset, reason: &str| FileLogError::corrupt(path, offset, reason);
    let file_len = file.metadata().map_err(io_err(path, "stat"))?.len();
    let mut h = [0u8; FIXED];
    file.read_exact_at(&mut h, 0).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(0, "snapshot header is incomplete"),
        _ => io_err(path, "read")(e),
    })?;
    if &h[..8] != MAGIC {
        return Err(corrupt(0, "not a snapshot file"));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&h[8..12]);
    let version = u32::from_le_bytes(v);
    if version != VERSION {
        return Err(FileLogError::SnapshotVersion {
            file: path.to_path_buf(),
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
            SIZE_AT,
            "snapshot size and configuration length do not match the file size",
        ));
    }
    let mut config = vec![0u8; config_len as usize];
    file.read_exact_at(&mut config, FIXED as u64)
        .map_err(io_err(path, "read"))?;
    let meta = SnapshotMeta::new(index, term, &config)
        .ok_or_else(|| corrupt(36, "snapshot configuration is too large"))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h);
    crc.update(&config);
    Ok(Header {
        meta,
        size,
        data_at: FIXED as u64 + config_len,
        crc: crc.finalize(),
    })
}

/// Reads the snapshot of `dir` (its metadata and size) after checking it whole, a piece
/// at a time.
pub(crate) fn read(dir: &Path) -> Result<Option<Snapshot>, FileLogError> {
    let path = dir.join(FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path, "open")(e)),
    };
    let header = read_header(&file, &path)?;
    let body = header.data_at + header.size;
    let mut crc = crc32fast::Hasher::new();
    hash_range(&file, 0..body, &mut crc).map_err(io_err(&path, "read"))?;
    let mut trailer = [0u8; 4];
    file.read_exact_at(&mut trailer, body)
        .map_err(io_err(&path, "read"))?;
    if crc.finalize().to_le_bytes() != trailer {
        return Err(FileLogError::corrupt(
            &path,
            body,
            "snapshot checksum mismatch",
        ));
    }
    Ok(Some(Snapshot {
        meta: header.meta,
        size: header.size,
    }))
}

/// The kept snapshot of a data directory, open for reading: chunks to send to a follower,
/// or the whole data streamed to restore a state machine ([`Read`]). Reads go to the file;
/// nothing is held in memory but the piece being read.
///
/// [`Read`] checks the file's checksum as it goes: the read that reaches the end of the
/// data fails with [`io::ErrorKind::InvalidData`] if the file is damaged, so whoever
/// streams a snapshot whole (a restore, a backup) learns it without a second pass. The
/// file stays readable while the node replaces its kept snapshot (a rename over it): an
/// open snapshot is the one it was.
#[derive(Debug)]
pub struct SnapshotFile {
    file: File,
    path: PathBuf,
    header: Header,
    /// Where [`Read`] reads next, in the data.
    at: u64,
    /// The checksum of the header and of the data read so far by [`Read`].
    crc: crc32fast::Hasher,
}

impl SnapshotFile {
    /// Opens the kept snapshot of `dir`, if it is the one at `index` (`None` otherwise: it
    /// was replaced by a newer one, or there is none).
    pub fn open(dir: &Path, index: Index) -> Result<Option<SnapshotFile>, FileLogError> {
        Ok(Self::open_kept(dir)?.filter(|f| f.header.meta.index == index))
    }

    /// Opens the kept snapshot of `dir`, whichever it is (`None`: there is none).
    pub fn open_kept(dir: &Path) -> Result<Option<SnapshotFile>, FileLogError> {
        let path = dir.join(FILE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "open")(e)),
        };
        let header = read_header(&file, &path)?;
        Ok(Some(SnapshotFile::from_parts(file, path, header)))
    }

    /// A snapshot file open already, whose header was read.
    pub(crate) fn from_parts(file: File, path: PathBuf, header: Header) -> SnapshotFile {
        SnapshotFile {
            file,
            path,
            crc: crc32fast::Hasher::new_with_initial(header.crc),
            header,
            at: 0,
        }
    }

    /// The snapshot's metadata.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.header.meta
    }

    /// Its index and term.
    pub fn point(&self) -> (Index, Term) {
        (self.header.meta.index, self.header.meta.term)
    }

    /// Bytes of its data.
    pub fn size(&self) -> u64 {
        self.header.size
    }

    /// Bytes of its data that [`Read`] has not read yet.
    pub fn remaining(&self) -> u64 {
        self.header.size - self.at
    }

    /// Up to `max_len` bytes at `offset` of the data, and whether they reach its end;
    /// `None` past the end (an empty snapshot has one empty chunk, at offset 0).
    pub fn chunk(
        &self,
        offset: u64,
        max_len: usize,
    ) -> Result<Option<(Vec<u8>, bool)>, FileLogError> {
        let size = self.header.size;
        if offset > size || (offset == size && offset > 0) {
            return Ok(None);
        }
        let n = (size - offset).min(max_len as u64) as usize;
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, self.header.data_at + offset)
            .map_err(io_err(&self.path, "read snapshot"))?;
        Ok(Some((buf, offset + n as u64 == size)))
    }
}

impl Read for SnapshotFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.header.size - self.at;
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let n = self
            .file
            .read_at(&mut buf[..n], self.header.data_at + self.at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends before its data", self.path.display()),
            ));
        }
        self.crc.update(&buf[..n]);
        self.at += n as u64;
        if self.at == self.header.size {
            let mut trailer = [0u8; TRAILER as usize];
            self.file
                .read_exact_at(&mut trailer, self.header.data_at + self.at)?;
            if self.crc.clone().finalize().to_le_bytes() != trailer {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is damaged: snapshot checksum mismatch",
                        self.path.display()
                    ),
                ));
            }
        }
        Ok(n)
    }
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
