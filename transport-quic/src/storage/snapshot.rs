//! Snapshots of the host's state machine, saved atomically (temporary file, fsync, rename,
//! fsync of the directory). One snapshot is kept: saving replaces the previous one.
//!
//! ```text
//! +------------+-------------+-----------+----------+------------+-----------+------+
//! | "CORASNAP" | version u32 | index u64 | term u64 | length u64 | crc32 u32 | data |
//! +------------+-------------+-----------+----------+------------+-----------+------+
//! ```
//!
//! Little-endian; the CRC-32 covers the 36 header bytes before it and the data. The
//! snapshot's index and term are the log's compaction point on open.

use super::dir;
use super::error::{io_err, FileLogError};
use super::record::le_u64;
use super::segment::FORMAT_VERSION;
use coracle::{Index, Term};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Name of the snapshot file.
pub(crate) const FILE: &str = "snapshot";
const MAGIC: &[u8; 8] = b"CORASNAP";
const HEADER: usize = 40;

/// A snapshot of the state machine: everything through `index`, whose entry had `term`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Index of the last entry the snapshot covers.
    pub index: Index,
    /// Term of that entry.
    pub term: Term,
    /// The host's serialized state machine (opaque to the log).
    pub data: Vec<u8>,
}

fn header(index: Index, term: Term, len: u64) -> [u8; 36] {
    let mut h = [0u8; 36];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&index.to_le_bytes());
    h[20..28].copy_from_slice(&term.to_le_bytes());
    h[28..36].copy_from_slice(&len.to_le_bytes());
    h
}

/// Saves a snapshot durably, replacing the previous one.
pub(crate) fn write(dir: &Path, index: Index, term: Term, data: &[u8]) -> Result<(), FileLogError> {
    let h = header(index, term, data.len() as u64);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h);
    crc.update(data);
    let crc = crc.finalize().to_le_bytes();
    dir::write_atomically(dir, FILE, &[&h, &crc, data])
}

/// Reads the snapshot of `dir` after checking it whole. With `keep_data` false the data is
/// checked but not kept (what open needs: the index and term).
pub(crate) fn read(dir: &Path, keep_data: bool) -> Result<Option<Snapshot>, FileLogError> {
    let path = dir.join(FILE);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path, "open")(e)),
    };
    let corrupt = |offset, reason| FileLogError::corrupt(&path, offset, reason);
    let mut h = [0u8; HEADER];
    file.read_exact(&mut h).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(0, "snapshot header is incomplete"),
        _ => io_err(&path, "read")(e),
    })?;
    if &h[..8] != MAGIC {
        return Err(corrupt(0, "not a snapshot file"));
    }
    if h[8..12] != FORMAT_VERSION.to_le_bytes() {
        return Err(corrupt(8, "unknown snapshot format version"));
    }
    let (index, term, len) = (le_u64(&h[12..20]), le_u64(&h[20..28]), le_u64(&h[28..36]));
    let size = file.metadata().map_err(io_err(&path, "stat"))?.len();
    if size != HEADER as u64 + len {
        return Err(corrupt(28, "snapshot length does not match the file size"));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[..36]);
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut chunk).map_err(io_err(&path, "read"))?;
        if n == 0 {
            break;
        }
        crc.update(&chunk[..n]);
        if keep_data {
            data.extend_from_slice(&chunk[..n]);
        }
    }
    if crc.finalize().to_le_bytes() != h[36..40] {
        return Err(corrupt(36, "snapshot checksum mismatch"));
    }
    Ok(Some(Snapshot { index, term, data }))
}
