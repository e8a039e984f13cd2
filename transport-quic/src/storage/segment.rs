//! Segments: the files the log is cut into, so compaction can delete whole files.
//!
//! A segment is named after the index of its first entry, in 20 decimal digits
//! (`00000000000000000001.seg`), and starts with a header:
//!
//! ```text
//! +------------+-------------+----------------+---------------+-----------+
//! | "CORACLOG" | version u32 | base index u64 | prev term u64 | crc32 u32 |
//! +------------+-------------+----------------+---------------+-----------+
//! ```
//!
//! 32 bytes, little-endian; `prev term` is the term of entry `base - 1` (0 for base 1), so
//! the first segment left after compaction still knows the term at the compaction point.
//! In version 3 (what this build writes) two **durability marks** of 32 bytes follow
//! (below), so records start at byte 96; in version 2 (still read) the marks are 24 bytes,
//! without `allocated`, and records start at byte 80; in version 1 (still read) there are no
//! marks and records start at byte 32. Records ([`record`](super::record)) follow back to
//! back; the entries of a segment are contiguous from `base`, and each segment starts where
//! the previous one ends.
//!
//! A segment is created under a temporary name, its header fsynced, then renamed into place
//! and the directory fsynced: a file with a segment name always has a whole header.
//!
//! # Durability marks
//!
//! ```text
//! +-----------------+-----------+-----------------+-------------+-----------+
//! | durable u64     | seq u64   | allocated u64   | flags u32   | crc32 u32 |
//! +-----------------+-----------+-----------------+-------------+-----------+
//! ```
//!
//! A mark says "every entry up to `durable` was durable in this log" (flag bit 0,
//! **sealed**: "and a later segment exists"), and "this file is at least `allocated` bytes
//! long" (0: no such claim). Records can only say what they hold: a file cut short, or a
//! last segment deleted, would otherwise look like a log that is simply shorter, and
//! recovery could not tell how many entries (acknowledged ones among them) were lost. With
//! the mark it can: records ending before the mark's index, a last segment shorter than
//! its allocated size, or a sealed last segment, are entries the node once made durable
//! and may have lost.
//!
//! The mark is written in the two slots in turn (the one of the new `seq`, `seq % 2`), so
//! a torn write of one leaves the other, and the valid slot of the higher `seq` is the
//! mark.
//!
//! - **A preallocated segment** (below) is created with `allocated` set to the size of its
//!   file, and no step shortens the file before a mark, durable, has set `allocated` back
//!   to 0. A file cut short is then shorter than its mark says, whatever its records are,
//!   so a flush whose records all lie inside the allocated size writes no mark: its
//!   `fdatasync` writes only the records' pages (a second page, the header's, cost each
//!   flush about a quarter more time and 40 % more CPU on this project's VM).
//! - **A flush that grows the file** (a segment that is not preallocated, or records past
//!   the allocated size) writes, in the same `fdatasync` as its records, the index the
//!   *previous* flush made durable ([`FlushJob::run`](super::FlushJob::run)): whatever a
//!   crash keeps of that write, the mark never claims more than is durable.
//! - **A roll-over** trims the old segment to its records (its mark dropping `allocated`
//!   first), creates the next segment, and only then seals the old one: a crash at any step
//!   leaves a last segment that is neither sealed nor shorter than its mark.
//! - **A truncation** lowers and unseals the marks, and drops `allocated`, durably, before
//!   it cuts anything.
//! - **Creating a segment** writes slot 0 (`durable = base - 1`) and clears slot 1 (a
//!   recycled spare holds an old mark there).
//!
//! What this does not catch: a disk that keeps a preallocated file's size but loses the
//! content of its last flushes (zeros, or the old records of a recycled spare, where records
//! were). Such a disk most often loses the mark written with them as well, so a mark per
//! flush would not catch it either.
//!
//! # Preallocation
//!
//! A segment may be preallocated: made from a spare whose header is written over its first
//! bytes. Records then overwrite what the spare holds instead of growing the file, so the
//! `fdatasync` of a group has no file size to update (on ext4 on this project's VM: about
//! 250 µs instead of 370 µs with three logs flushing at once; `fallocate` does not help,
//! its unwritten extents need a metadata update on first write too). A spare is either
//! - a **recycled** segment: one that compaction dropped, renamed instead of deleted. Its
//!   old records stay after the new ones until overwritten; every one of them has an index
//!   below the new segment's base (compaction only drops entries below every index the
//!   log can ever hold again), which is how recovery tells them from the log; or
//! - a file of **zeros** written and fsynced ahead of time on another thread, when no
//!   compacted segment is at hand.
//!
//! What follows the last record, zeros or old records, is the end of the log (see
//! [`recovery`](super::recovery)); a segment that stops being the last is first trimmed
//! to its records, so only the last segment ever has such a tail.

use super::dir::{self, TMP_SUFFIX};
use super::error::{io_err, FileLogError};
use super::record::le_u64;
use coracle::{Index, Term};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Version of the on-disk format of the hard state (and of segments before marks).
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Version of the segments whose marks do not say an allocated size (still read, and
/// written to with marks of their own version).
pub(crate) const MARKS_VERSION: u32 = 2;
/// Version of the segments this build writes (marks with the allocated size).
pub(crate) const SEGMENT_VERSION: u32 = 3;
/// Bytes of the fixed header, in every version.
pub(crate) const FIXED: usize = 32;
/// Bytes of one durability mark slot (version 3).
pub(crate) const MARK: usize = 32;
/// Bytes of one durability mark slot in version 2 (no allocated size).
const MARK_V2: usize = 24;
/// Bytes before the first record of a segment this build writes: the fixed header and
/// the two mark slots.
pub(crate) const HEADER: usize = FIXED + 2 * MARK;
const MAGIC: &[u8; 8] = b"CORACLOG";
const EXTENSION: &str = ".seg";
/// Flag of a mark: a later segment exists.
const SEALED: u32 = 1;

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Index of its first entry.
    pub base: Index,
    /// Term of entry `base - 1`.
    pub prev_term: Term,
    pub path: PathBuf,
    /// Bytes written to the file (header included); for the active segment the buffered
    /// records follow at this offset.
    pub len: u64,
    /// The file goes on past `len` with preallocated zeros.
    pub preallocated: bool,
    /// Its format version (the marks written to it are of that version).
    pub version: u32,
    /// The durability mark last written (`None`: a version 1 segment, which has none).
    pub mark: Option<Mark>,
}

impl Segment {
    /// Offset of the first record.
    pub fn records_start(&self) -> u64 {
        records_start(self.version) as u64
    }

    /// The size the mark says the file has at least (0: none).
    pub fn allocated(&self) -> u64 {
        self.mark.map_or(0, |m| m.allocated)
    }
}

/// Offset of the first record in a segment of format `version`.
fn records_start(version: u32) -> usize {
    match version {
        FORMAT_VERSION => FIXED,
        MARKS_VERSION => FIXED + 2 * MARK_V2,
        _ => HEADER,
    }
}

/// A durability mark (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Every entry up to this index was durable.
    pub durable: Index,
    /// A later segment exists.
    pub sealed: bool,
    /// Which write of the mark this is (its slot is `seq % 2`).
    pub seq: u64,
    /// The file is at least this long (0: no claim; always 0 in version 2).
    pub allocated: u64,
}

impl Mark {
    /// The mark in the slot layout of a segment of format `version` (2 or 3), and the
    /// slot's length.
    fn encode(&self, version: u32) -> ([u8; MARK], usize) {
        let mut b = [0u8; MARK];
        b[..8].copy_from_slice(&self.durable.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        let flags_at = if version == MARKS_VERSION {
            debug_assert_eq!(self.allocated, 0, "a version 2 mark has no allocated size");
            16
        } else {
            b[16..24].copy_from_slice(&self.allocated.to_le_bytes());
            24
        };
        let flags = if self.sealed { SEALED } else { 0 };
        b[flags_at..flags_at + 4].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32fast::hash(&b[..flags_at + 4]);
        b[flags_at + 4..flags_at + 8].copy_from_slice(&crc.to_le_bytes());
        (b, flags_at + 8)
    }

    fn decode(b: &[u8], version: u32) -> Option<Mark> {
        let (flags_at, allocated) = if version == MARKS_VERSION {
            (16, 0)
        } else {
            (24, le_u64(b.get(16..24)?))
        };
        let b = b.get(..flags_at + 8)?;
        if crc32fast::hash(&b[..flags_at + 4]).to_le_bytes() != b[flags_at + 4..] {
            return None;
        }
        let flags = u32::from_le_bytes([
            b[flags_at],
            b[flags_at + 1],
            b[flags_at + 2],
            b[flags_at + 3],
        ]);
        if flags & !SEALED != 0 {
            return None;
        }
        Some(Mark {
            durable: le_u64(&b[..8]),
            seq: le_u64(&b[8..16]),
            sealed: flags & SEALED != 0,
            allocated,
        })
    }
}

/// Writes the next mark of `segment` (through its handle `file`, not synced: the caller
/// syncs before anything relies on it) and remembers it. `allocated` is the size the file
/// is at least (0 before anything shortens it; ignored in version 2, which has none).
pub(crate) fn write_mark(
    file: &File,
    segment: &mut Segment,
    durable: Index,
    sealed: bool,
    allocated: u64,
) -> Result<(), FileLogError> {
    let Some(last) = segment.mark else {
        return Ok(()); // version 1: no marks
    };
    let mark = Mark {
        durable,
        sealed,
        seq: last.seq + 1,
        allocated: if segment.version == MARKS_VERSION {
            0
        } else {
            allocated
        },
    };
    let (bytes, len) = mark.encode(segment.version);
    let at = (FIXED + len * (mark.seq % 2) as usize) as u64;
    file.write_all_at(&bytes[..len], at)
        .map_err(io_err(&segment.path, "write durability mark"))?;
    segment.mark = Some(mark);
    Ok(())
}

/// A file, durable, ready to become the next segment.
#[derive(Debug)]
pub(crate) struct Spare {
    pub path: PathBuf,
    pub file: File,
    /// A compacted segment (old records), not zeros.
    pub recycled: bool,
}

/// A temporary name for a spare in `dir` (removed on open if never used).
fn spare_path(dir: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(
        "spare-{}-{n}{EXTENSION}{TMP_SUFFIX}",
        std::process::id()
    ))
}

/// Writes a spare of `bytes` zeros in `dir` under a temporary name (removed on open if
/// never used), with an `fdatasync` per [`dir::FLUSH_CHUNK`] so it never holds the disk
/// for long. Returns `None`, leaving no file, if `cancel` is set meanwhile.
pub(crate) fn prepare_spare(
    dir: &Path,
    bytes: u64,
    cancel: &AtomicBool,
) -> Result<Option<Spare>, FileLogError> {
    let path = spare_path(dir);
    let result = write_zeros(&path, bytes, cancel);
    if !matches!(result, Ok(Some(_))) {
        let _ = fs::remove_file(&path);
    }
    result
}

fn write_zeros(
    path: &Path,
    bytes: u64,
    cancel: &AtomicBool,
) -> Result<Option<Spare>, FileLogError> {
    let zeros = vec![0u8; dir::FLUSH_CHUNK.min(bytes as usize)];
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path, "create spare segment"))?;
    let mut written = 0;
    while written < bytes {
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let n = (bytes - written).min(zeros.len() as u64) as usize;
        dir::write_in_flushes(&mut file, &zeros[..n], path)?;
        written += n as u64;
    }
    file.sync_all()
        .map_err(io_err(path, "sync spare segment"))?;
    Ok(Some(Spare {
        path: path.to_path_buf(),
        file,
        recycled: false,
    }))
}

/// Makes the compacted segment at `path` a spare: renames it to a temporary name (so it
/// is no longer part of the log, exactly as if deleted; the caller fsyncs the directory).
/// On an error nothing changed.
pub(crate) fn recycle(dir: &Path, path: &Path) -> Result<Spare, FileLogError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path, "open compacted segment to recycle it"))?;
    let spare = spare_path(dir);
    fs::rename(path, &spare).map_err(io_err(path, "rename compacted segment to a spare"))?;
    Ok(Spare {
        path: spare,
        file,
        recycled: true,
    })
}

/// The file name of the segment starting at `base`.
pub(crate) fn name(base: Index) -> String {
    format!("{base:020}{EXTENSION}")
}

/// The base index of a segment file name, if it is one.
pub(crate) fn parse_name(name: &str) -> Option<Index> {
    let digits = name.strip_suffix(EXTENSION)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The first mark of a new segment starting at `base`, in a file of `allocated` bytes (0:
/// not preallocated).
fn first_mark(base: Index, allocated: u64) -> Mark {
    Mark {
        durable: base.saturating_sub(1),
        sealed: false,
        seq: 0,
        allocated,
    }
}

/// The header of a new segment, with its first mark in slot 0 and slot 1 cleared.
fn encode_header(base: Index, prev_term: Term, allocated: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&base.to_le_bytes());
    h[20..28].copy_from_slice(&prev_term.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..FIXED].copy_from_slice(&crc.to_le_bytes());
    let (mark, len) = first_mark(base, allocated).encode(SEGMENT_VERSION);
    h[FIXED..FIXED + len].copy_from_slice(&mark[..len]);
    h
}

/// What a segment's header says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub base: Index,
    pub prev_term: Term,
    /// Its format version.
    pub version: u32,
    /// Offset of the first record.
    pub records_start: usize,
    /// The mark (the valid slot of the higher `seq`); `None` in version 1.
    pub mark: Option<Mark>,
}

/// Checks the header at the start of `bytes` (the content of `path`).
pub(crate) fn decode_header(bytes: &[u8], path: &Path) -> Result<Header, FileLogError> {
    let corrupt = |offset, reason| FileLogError::corrupt(path, offset, reason);
    let Some(h) = bytes.get(..FIXED) else {
        return Err(corrupt(0, "segment header is incomplete"));
    };
    if crc32fast::hash(&h[..28]).to_le_bytes() != h[28..] {
        return Err(corrupt(28, "segment header checksum mismatch"));
    }
    if &h[..8] != MAGIC {
        return Err(corrupt(0, "not a segment file"));
    }
    let (base, prev_term) = (le_u64(&h[12..20]), le_u64(&h[20..28]));
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    match version {
        FORMAT_VERSION => Ok(Header {
            base,
            prev_term,
            version,
            records_start: FIXED,
            mark: None,
        }),
        MARKS_VERSION | SEGMENT_VERSION => {
            let records_start = records_start(version);
            let Some(slots) = bytes.get(FIXED..records_start) else {
                return Err(corrupt(FIXED as u64, "segment header is incomplete"));
            };
            let slot = slots.len() / 2;
            let mark = [&slots[..slot], &slots[slot..]]
                .into_iter()
                .filter_map(|b| Mark::decode(b, version))
                .max_by_key(|m| m.seq)
                .ok_or_else(|| {
                    corrupt(
                        FIXED as u64,
                        "both durability marks of the segment are damaged",
                    )
                })?;
            Ok(Header {
                base,
                prev_term,
                version,
                records_start,
                mark: Some(mark),
            })
        }
        _ => Err(corrupt(8, "unknown segment format version")),
    }
}

/// Creates the segment starting at `base` durably (see the module docs), from `spare` if
/// one is given (its header written over its first bytes), and returns it with a handle
/// open for writing.
pub(crate) fn create(
    dir: &Path,
    base: Index,
    prev_term: Term,
    spare: Option<Spare>,
) -> Result<(Segment, File), FileLogError> {
    let preallocated = spare.is_some();
    let (tmp, file, allocated) = match spare {
        Some(Spare { path, file, .. }) => {
            let len = file
                .metadata()
                .map_err(io_err(&path, "read the size of a spare segment"))?
                .len();
            (path, file, len)
        }
        None => {
            let tmp = dir.join(format!("{}{TMP_SUFFIX}", name(base)));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_err(&tmp, "create segment"))?;
            (tmp, file, 0)
        }
    };
    file.write_all_at(&encode_header(base, prev_term, allocated), 0)
        .map_err(io_err(&tmp, "write segment header"))?;
    file.sync_all()
        .map_err(io_err(&tmp, "sync segment header"))?;
    let path = dir.join(name(base));
    fs::rename(&tmp, &path).map_err(io_err(&path, "rename segment into place"))?;
    dir::sync_dir(dir)?;
    let segment = Segment {
        base,
        prev_term,
        path,
        len: HEADER as u64,
        preallocated,
        version: SEGMENT_VERSION,
        mark: Some(first_mark(base, allocated)),
    };
    Ok((segment, file))
}

/// Opens an existing segment for writing (after recovery or a truncation).
pub(crate) fn open_for_write(segment: &Segment) -> Result<File, FileLogError> {
    OpenOptions::new()
        .write(true)
        .open(&segment.path)
        .map_err(io_err(&segment.path, "open segment for writing"))
}

/// Test only: the bytes of a version 3 segment file as the previous release (version 2)
/// would have written them: the same marks without their allocated size, records at
/// byte 80.
#[cfg(test)]
pub(crate) fn as_version_2(bytes: &[u8]) -> Vec<u8> {
    let mut h = [0u8; HEADER];
    h.copy_from_slice(&bytes[..HEADER]);
    h[8..12].copy_from_slice(&MARKS_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    let mut out = h[..FIXED].to_vec();
    out[28..FIXED].copy_from_slice(&crc.to_le_bytes());
    for slot in [&h[FIXED..FIXED + MARK], &h[FIXED + MARK..]] {
        match Mark::decode(slot, SEGMENT_VERSION) {
            Some(m) => {
                let (b, len) = Mark { allocated: 0, ..m }.encode(MARKS_VERSION);
                out.extend_from_slice(&b[..len]);
            }
            None => out.extend_from_slice(&[0; MARK_V2]),
        }
    }
    out.extend_from_slice(&bytes[HEADER..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_strangers_are_ignored() {
        assert_eq!(name(1), "00000000000000000001.seg");
        assert_eq!(parse_name(&name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_name("00000000000000000001.seg.tmp"), None);
        assert_eq!(parse_name("1.seg"), None);
        assert_eq!(parse_name("0000000000000000000x.seg"), None);
        assert_eq!(
            parse_name("99999999999999999999.seg"),
            None,
            "overflows u64"
        );
    }

    #[test]
    fn header_roundtrips_and_flips_are_caught() {
        let h = encode_header(5, 3, 4096);
        let p = Path::new("x.seg");
        let want = Header {
            base: 5,
            prev_term: 3,
            version: SEGMENT_VERSION,
            records_start: HEADER,
            mark: Some(first_mark(5, 4096)),
        };
        assert_eq!(decode_header(&h, p).unwrap(), want);
        for i in 0..FIXED + MARK {
            let mut bad = h;
            bad[i] ^= 0x80;
            assert!(decode_header(&bad, p).is_err(), "flip at {i}");
        }
        assert!(decode_header(&h[..HEADER - 1], p).is_err());
        // Version 1: no marks, records right after the fixed header.
        let v1 = with_version(&h, FORMAT_VERSION);
        let old = decode_header(&v1[..FIXED], p).unwrap();
        assert_eq!((old.base, old.records_start, old.mark), (5, FIXED, None));
        // Version 2: marks of 24 bytes, without an allocated size.
        let mut v2 = with_version(&h, MARKS_VERSION);
        let (m, len) = first_mark(5, 0).encode(MARKS_VERSION);
        assert_eq!(len, MARK_V2);
        v2[FIXED..FIXED + 2 * MARK_V2].fill(0);
        v2[FIXED..FIXED + len].copy_from_slice(&m[..len]);
        let old = decode_header(&v2[..FIXED + 2 * MARK_V2], p).unwrap();
        assert_eq!(
            (old.records_start, old.mark),
            (FIXED + 2 * MARK_V2, Some(first_mark(5, 0)))
        );
        assert!(decode_header(&v2[..FIXED + 2 * MARK_V2 - 1], p).is_err());
        assert!(
            decode_header(&with_version(&h, 4), p).is_err(),
            "unknown version"
        );
    }

    /// `h` with its version set to `version` (and its checksum fixed).
    fn with_version(h: &[u8; HEADER], version: u32) -> [u8; HEADER] {
        let mut h = *h;
        h[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32fast::hash(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    #[test]
    fn the_mark_of_the_higher_seq_wins_and_a_torn_one_leaves_the_other() {
        for version in [MARKS_VERSION, SEGMENT_VERSION] {
            let slot = if version == MARKS_VERSION {
                MARK_V2
            } else {
                MARK
            };
            let mut h = with_version(&encode_header(1, 0, 0), version);
            let put = |h: &mut [u8; HEADER], m: Mark| {
                let (b, len) = m.encode(version);
                assert_eq!(len, slot);
                let at = FIXED + slot * (m.seq % 2) as usize;
                h[at..at + slot].copy_from_slice(&b[..len]);
            };
            let p = Path::new("x.seg");
            let allocated = if version == MARKS_VERSION { 0 } else { 8192 };
            let m1 = Mark {
                durable: 10,
                sealed: false,
                seq: 1,
                allocated,
            };
            put(&mut h, m1);
            assert_eq!(decode_header(&h, p).unwrap().mark, Some(m1));
            // A lower mark with a higher seq (a truncation) wins over a higher durable index.
            let m2 = Mark {
                durable: 3,
                sealed: true,
                seq: 2,
                allocated: 0,
            };
            put(&mut h, m2);
            assert_eq!(decode_header(&h, p).unwrap().mark, Some(m2));
            for i in FIXED..FIXED + slot {
                let mut torn = h;
                torn[i] ^= 0x10;
                assert_eq!(
                    decode_header(&torn, p).unwrap().mark,
                    Some(m1),
                    "version {version}: flip at {i}"
                );
            }
        }
    }
}
