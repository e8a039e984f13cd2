//! The data directory's **format version**: which layout of files the directory holds, so a
//! binary never misreads a directory written by a newer one.
//!
//! ```text
//! +------------+-------------+-----------+
//! | "CORAFRMT" | version u32 | crc32 u32 |
//! +------------+-------------+-----------+
//! ```
//!
//! 16 bytes in the file `format`, little-endian; the CRC-32 covers the 12 bytes before it.
//!
//! - Format 1 is the directory of the releases before this file existed: it has no `format`
//!   file, and its command entries and snapshots are in the format before the host's
//!   (`host::entry`). This build cannot read it: open refuses it before it changes anything
//!   ([`FileLogError::FormatTooOld`]), saying to start the node on a new data directory.
//! - Format 2: segments of version 2 or older (durability marks without an allocated size,
//!   [`segment`](super::segment)). This build reads them and keeps writing version 2 marks
//!   into them; the segments it creates are of version 3, which a format 2 build cannot read.
//! - Format 3 ([`CURRENT`]) is this build's: a new directory gets the file before its
//!   identity. A directory of a format between [`OLDEST`] and [`CURRENT`] (format 2) is
//!   upgraded in place once [`FileLog::open_with`] has found it consistent: the file is
//!   written atomically (written to `format.tmp`, fsynced, renamed, the directory fsynced),
//!   so a crash leaves the old format or the new one, never a half-written marker.
//! - A format above [`CURRENT`] comes from a newer build: open refuses it before it reads,
//!   removes or writes anything in the directory besides taking its lock
//!   ([`FileLogError::FormatTooNew`]), whose message says to upgrade coracle.
//!
//! A `format` file that is not one (wrong length, checksum, magic, a version 0) is refused
//! as [`FileLogError::Corrupt`], naming the file and the offset.
//!
//! [`FileLog::open_with`]: super::FileLog::open_with

use super::dir;
use super::error::FileLogError;
use std::path::Path;

/// Name of the format file.
pub(crate) const FILE: &str = "format";
/// The data directory format this build writes.
pub const CURRENT: u32 = 3;
/// The oldest data directory format this build reads (and upgrades to [`CURRENT`]).
pub const OLDEST: u32 = 2;
/// The format of a directory without a `format` file: the releases before it existed.
pub const UNMARKED: u32 = 1;
const MAGIC: &[u8; 8] = b"CORAFRMT";
const LEN: usize = 16;

fn encode(version: u32) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&b[..12]);
    b[12..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Result<u32, (u64, &'static str)> {
    if b.len() != LEN {
        return Err((0, "format file has the wrong length"));
    }
    if crc32fast::hash(&b[..12]).to_le_bytes() != b[12..] {
        return Err((12, "format file checksum mismatch"));
    }
    if &b[..8] != MAGIC {
        return Err((0, "not a format file"));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[8..12]);
    match u32::from_le_bytes(v) {
        0 => Err((8, "format version 0 was never written by coracle")),
        version => Ok(version),
    }
}

/// The format of `dir`: [`UNMARKED`] if it has no `format` file (a new directory too); an
/// error if the file is not one, or names a format newer than [`CURRENT`].
pub(crate) fn read(dir: &Path) -> Result<u32, FileLogError> {
    match dir::read_decoded(dir, FILE, decode)? {
        None => Ok(UNMARKED),
        Some(found) if found > CURRENT => Err(FileLogError::FormatTooNew {
            dir: dir.to_path_buf(),
            found,
            supported: CURRENT,
        }),
        Some(found) => Ok(found),
    }
}

/// Marks `dir` as of format [`CURRENT`], durably and atomically.
pub(crate) fn write_current(dir: &Path) -> Result<(), FileLogError> {
    dir::write_atomically(dir, FILE, &[&encode(CURRENT)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_catches_every_flip_and_every_length() {
        let b = encode(CURRENT);
        assert_eq!(decode(&b), Ok(CURRENT));
        for i in 0..LEN {
            for bit in 0..8 {
                let mut bad = b;
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "flip of bit {bit} at {i}");
            }
        }
        for len in 0..LEN + 4 {
            if len != LEN {
                let mut v = b.to_vec();
                v.resize(len, 0);
                assert!(decode(&v).is_err(), "length {len}");
            }
        }
        assert!(decode(&encode(0)).is_err(), "version 0");
        assert_eq!(decode(&encode(u32::MAX)), Ok(u32::MAX));
    }
}
