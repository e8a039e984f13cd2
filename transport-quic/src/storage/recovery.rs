//! Recovery on open: read every segment back, check every record, cut a torn tail, refuse
//! damage anywhere else.
//!
//! Only the end of the last segment can legitimately be damaged: records reach the file only
//! in a flush ([`FlushJob::run`](super::FlushJob::run); or a roll-over, which syncs the old segment
//! before it creates the next one), so a crash can tear only the last write of the last
//! segment. Recovery therefore decides as follows, for the first record that fails its
//! checks (incomplete, bad header checksum, implausible length, bad payload checksum):
//!
//! - in the last segment, with only zeros after it: the **end** of a preallocated segment
//!   ([`segment`]); nothing is cut or reported (a record always has
//!   non-zero bytes, so no record, whole or torn, is lost this way);
//! - in the last segment, followed by a valid record of this segment (an index from its
//!   base on; every later byte offset up to the last non-zero byte is tried, which the
//!   header checksum makes cheap): **corruption in the middle**;
//! - in the last segment, followed by valid records of an earlier segment only (indices
//!   below its base), or being one: the **end** of a recycled segment, whose old records
//!   follow the new ones until overwritten. Nothing is cut or reported: what is there,
//!   old records or the torn bytes of a write that did not complete, is overwritten by
//!   the next write;
//! - in the last segment, with no valid record after it: a **torn tail**. The file is cut
//!   there (truncated and fsynced) and the cut is reported in
//!   [`RecoveryReport::tail_cut`](super::RecoveryReport::tail_cut), with the entries it
//!   dropped: those of the write the crash interrupted, never durable, so never
//!   acknowledged;
//! - in any other segment: **corruption**.
//!
//! Corruption is an error naming the file, the offset and the entries concerned
//! ([`FileLogError::Corrupt`]); the log refuses to open rather than drop records that were
//! durable. So is a record whose checksum is right but whose content is not what this
//! crate writes (unknown type, an index out of sequence), a bad segment header, or
//! segments that do not follow each other (the entries missing between them are named).
//!
//! A cut short (or deleted) last segment leaves records that look whole: its durability
//! mark ([`segment`]) tells that entries once durable are gone, and
//! [`FileLog::open`](super::FileLog::open) refuses the directory
//! ([`Damage::LostEntries`](super::Damage::LostEntries),
//! [`Damage::MissingSegments`](super::Damage::MissingSegments)) before anything is cut.
//!
//! Segments older than one that starts right after the snapshot (its first index and
//! previous term are the snapshot's) but that do not lead up to it are **superseded**: a
//! crash interrupted the discarding of a log that the snapshot replaced (see
//! `discard_all`). They are removed and reported, not taken for damage.

use super::error::{io_err, FileLogError};
use super::positions::Positions;
use super::record;
use super::segment::{self, Segment};
use coracle::{Index, Term};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

/// A torn tail that recovery cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailCut {
    /// The segment it was in.
    pub file: PathBuf,
    /// Where the segment now ends (the offset of the first bad record).
    pub offset: u64,
    /// How many bytes were dropped.
    pub bytes: u64,
    /// What was wrong with the first dropped record.
    pub reason: &'static str,
    /// The first entry dropped (the one after the last whole record): it and any later
    /// entries of the same write.
    pub from: Index,
    /// The durability mark of the segment (`None` for a version 1 segment): every entry up
    /// to it is still there, so the entries dropped were never durable.
    pub durable: Option<Index>,
}

impl fmt::Display for TailCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cut a torn tail off {} at offset {} ({} bytes, {}): entry {} and any later entries of the same write are dropped",
            self.file.display(),
            self.offset,
            self.bytes,
            self.reason,
            self.from
        )?;
        match self.durable {
            Some(d) => write!(
                f,
                "; every entry up to {d} was durable and is still there: the dropped ones are those of the last write, which a crash interrupted, so they were never acknowledged (unless the disk lost a write that had completed)"
            ),
            None => f.write_str(
                "; this segment (format version 1) has no durability mark: if this was not a crash during a write, acknowledged entries may be lost",
            ),
        }
    }
}

/// Segments left by an interrupted discard of the log for a snapshot (see the module
/// docs), removed on open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superseded {
    /// The files.
    pub files: Vec<PathBuf>,
    /// The entries they held, if any.
    pub entries: Option<(Index, Index)>,
    /// The snapshot's index that replaces them.
    pub snapshot: Index,
}

impl fmt::Display for Superseded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "removed {} segment(s) left by a discard of the log for the snapshot at index {} that a crash interrupted", self.files.len(), self.snapshot)?;
        if let Some((a, b)) = self.entries {
            write!(
                f,
                ": entries {a}..={b} ({} entries), those up to {} are in the snapshot, the later ones conflicted with it (never committed)",
                b + 1 - a,
                self.snapshot
            )?;
        }
        Ok(())
    }
}

/// What the segments held.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// The segments, in order; their entries follow each other.
    pub segments: Vec<Segment>,
    /// Where every entry of every segment is, from `segments[0].base` (no data: a log
    /// larger than memory is replayed in the memory of one segment).
    pub positions: Positions,
    /// A torn tail of the last segment, not cut yet ([`cut`]).
    pub tail: Option<TailCut>,
    /// Segments a snapshot supersedes, not removed yet.
    pub superseded: Option<Superseded>,
}

impl Replayed {
    /// The index after the last entry read.
    fn next_index(&self) -> Index {
        self.segments
            .first()
            .map_or(1, |s| s.base + self.positions.len() as u64)
    }
}

/// Lists the segment files of `dir` by base index.
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, FileLogError> {
    let mut found = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err(dir, "list directory"))? {
        let item = item.map_err(io_err(dir, "list directory"))?;
        if let Some(base) = item.file_name().to_str().and_then(segment::parse_name) {
            found.push((base, item.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Reads back every segment of `dir`; records larger than `max_payload` are damage.
/// `snapshot` (index and term of the kept snapshot) tells superseded segments (see the
/// module docs). Changes nothing on disk.
pub(crate) fn replay(
    dir: &Path,
    max_payload: usize,
    snapshot: Option<(Index, Term)>,
) -> Result<Replayed, FileLogError> {
    let files = list(dir)?;
    let mut out = Replayed::default();
    for (i, (base, path)) in files.iter().enumerate() {
        let last_segment = i + 1 == files.len();
        let bytes = fs::read(path).map_err(io_err(path, "read segment"))?;
        let header = segment::decode_header(&bytes, path)?;
        let prev_term = header.prev_term;
        if header.base != *base {
            return Err(FileLogError::corrupt(
                path,
                12,
                format!(
                    "segment header says it starts at index {}, its name says {base}",
                    header.base
                ),
            ));
        }
        if header.base == 0 {
            // Entries start at 1; everything after relies on `base - 1` being an index.
            return Err(FileLogError::corrupt(
                path,
                12,
                "segment header says it starts at index 0; entries start at 1",
            ));
        }
        if let Some(prev) = out.segments.last() {
            let next = out.next_index();
            let last_term = out.positions.term(next - 1).unwrap_or(prev.prev_term);
            if (*base != next || prev_term != last_term)
                && snapshot.is_some_and(|(si, st)| si + 1 == *base && st == prev_term)
            {
                out.superseded = Some(Superseded {
                    files: out.segments.iter().map(|s| s.path.clone()).collect(),
                    entries: (out.positions.len() > 0).then(|| (out.segments[0].base, next - 1)),
                    snapshot: base - 1,
                });
                out.segments.clear();
                out.positions = Positions::default();
            } else if *base > next {
                return Err(FileLogError::corrupt(
                    path,
                    0,
                    format!(
                        "segment starts at index {base} but the one before ({}) ends at index {}: \
                         entries {next}..={} ({} entries) are missing (a segment was deleted)",
                        prev.path.display(),
                        next - 1,
                        base - 1,
                        base - next
                    ),
                ));
            } else if *base < next {
                return Err(FileLogError::corrupt(
                    path,
                    0,
                    format!(
                        "segment starts at index {base} but the one before ({}) ends at index {}: \
                         entries {base}..={} are in both",
                        prev.path.display(),
                        next - 1,
                        next - 1
                    ),
                ));
            } else if prev_term != last_term {
                return Err(FileLogError::corrupt(
                    path,
                    20,
                    format!(
                        "segment header says entry {} has term {prev_term}, the segment before says {last_term}",
                        base - 1
                    ),
                ));
            }
        }
        if out.segments.is_empty() {
            out.positions = Positions::empty_after(base - 1, prev_term);
        }
        let start = header.records_start;
        let mut at = start;
        let mut next_index = *base;
        // The entries after the last whole one, as far as the next segment's start.
        let damaged = |from: Index| match files.get(i + 1) {
            Some((next_base, _)) if *next_base > from => {
                format!("entries {from}..={} are unreadable", next_base - 1)
            }
            _ => format!("entries from {from} on are unreadable"),
        };
        let end = loop {
            if at == bytes.len() {
                break at;
            }
            match record::read_frame(&bytes, at, max_payload) {
                Ok((payload, _))
                    if last_segment && record::index_of(payload).is_some_and(|i| i < *base) =>
                {
                    // A record of the segment this one was recycled from.
                    match rest_of_last_segment(&bytes, at, *base, max_payload) {
                        Rest::Corrupt(valid, index) => {
                            return Err(FileLogError::corrupt(
                                path,
                                at as u64,
                                format!(
                                    "a record of an earlier segment, but a valid record follows at offset {valid}: {}",
                                    damaged_before(next_index, index)
                                ),
                            ))
                        }
                        Rest::Zeros | Rest::Recycled | Rest::Torn => break at,
                    }
                }
                Ok((payload, next)) => {
                    let entry = record::decode_head(payload).map_err(|reason| {
                        FileLogError::corrupt(
                            path,
                            at as u64,
                            format!("{reason} (entry {next_index}); {}", damaged(next_index)),
                        )
                    })?;
                    if entry.index != next_index {
                        return Err(FileLogError::corrupt(
                            path,
                            at as u64,
                            format!(
                                "entry has index {} where {next_index} was expected",
                                entry.index
                            ),
                        ));
                    }
                    out.positions
                        .push(entry.term, entry.kind, at as u64, (next - at) as u64);
                    next_index += 1;
                    at = next;
                }
                Err(reason) if !last_segment => {
                    return Err(FileLogError::corrupt(
                        path,
                        at as u64,
                        format!(
                            "{reason}, in a segment that is not the last one: {}",
                            damaged(next_index)
                        ),
                    ));
                }
                Err(reason) => match rest_of_last_segment(&bytes, at, *base, max_payload) {
                    Rest::Zeros | Rest::Recycled => break at,
                    Rest::Corrupt(valid, index) => {
                        return Err(FileLogError::corrupt(
                            path,
                            at as u64,
                            format!(
                                "{reason}, but a valid record follows at offset {valid}: {}",
                                damaged_before(next_index, index)
                            ),
                        ));
                    }
                    Rest::Torn => {
                        out.tail = Some(TailCut {
                            file: path.clone(),
                            offset: at as u64,
                            bytes: (bytes.len() - at) as u64,
                            reason,
                            from: next_index,
                            durable: header.mark.map(|m| m.durable),
                        });
                        break at;
                    }
                },
            }
        };
        out.segments.push(Segment {
            base: *base,
            prev_term,
            path: path.clone(),
            len: end as u64,
            preallocated: end < bytes.len() && out.tail.is_none(),
            version: header.version,
            mark: header.mark,
        });
    }
    Ok(out)
}

/// Which entries lie between the last whole one (`next - 1`) and a valid record of entry
/// `index` found after damage.
fn damaged_before(next: Index, index: Option<Index>) -> String {
    match index {
        Some(i) if i > next => format!(
            "entries {next}..={} ({} entries) are damaged",
            i - 1,
            i - next
        ),
        Some(i) => format!("entry {next} is damaged (entry {i} follows)"),
        None => format!("entries from {next} on are damaged"),
    }
}

/// What the last segment holds from the first offset that does not continue the log.
#[derive(Debug, PartialEq, Eq)]
enum Rest {
    /// Only zeros: a preallocated segment's space.
    Zeros,
    /// Valid records of an earlier segment (and maybe torn bytes before them): a recycled
    /// segment's space.
    Recycled,
    /// A valid record of this segment at this offset (of this entry): damage in the
    /// middle.
    Corrupt(usize, Option<Index>),
    /// Nothing valid: a torn tail.
    Torn,
}

/// Looks at what follows `at` in the last segment `bytes`, whose first entry is `base`.
fn rest_of_last_segment(bytes: &[u8], at: usize, base: u64, max_payload: usize) -> Rest {
    let Some(last) = bytes[at..].iter().rposition(|&b| b != 0) else {
        return Rest::Zeros;
    };
    // A valid record has a non-zero byte in its header (the checksum of eight zero bytes
    // is not zero), so none starts after `at + last`.
    let end = at + last + 1;
    let mut from = at;
    let mut recycled = false;
    while let Some(valid) = record::find_valid_frame(bytes, from..end, max_payload) {
        let Ok((payload, next)) = record::read_frame(bytes, valid, max_payload) else {
            break;
        };
        let index = record::index_of(payload);
        if index.is_none_or(|i| i >= base) {
            return Rest::Corrupt(valid, index);
        }
        // Old records lie back to back: the next one starts where this one ends.
        recycled = true;
        from = next;
    }
    if recycled {
        Rest::Recycled
    } else {
        Rest::Torn
    }
}

/// Cuts a torn tail off durably.
pub(crate) fn cut(tail: &TailCut) -> Result<(), FileLogError> {
    let path = &tail.file;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path, "open segment to cut its torn tail"))?;
    file.set_len(tail.offset)
        .map_err(io_err(path, "cut torn tail"))?;
    file.sync_all()
        .map_err(io_err(path, "sync after cutting torn tail"))
}

/// A temporary file a crash left behind (never renamed into place, so never part of the
/// durable state), removed on open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    /// The file.
    pub path: PathBuf,
    /// What it was, and what removing it drops.
    pub what: String,
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "removed leftover temporary file {}: {}",
            self.path.display(),
            self.what
        )
    }
}

/// What the temporary file at `path` was (read before it is removed).
pub(crate) fn describe_leftover(path: &Path) -> String {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let stem = name.strip_suffix(super::dir::TMP_SUFFIX).unwrap_or(name);
    let head = |n: usize| -> Option<Vec<u8>> {
        use std::io::Read;
        let mut buf = vec![0u8; n];
        let mut file = fs::File::open(path).ok()?;
        file.read_exact(&mut buf).ok()?;
        Some(buf)
    };
    let snapshot_index = || head(20).map(|h| record::le_u64(&h[12..20]));
    if stem == super::hard_state::FILE {
        return match fs::read(path).ok().and_then(|b| super::hard_state::decode(&b).ok()) {
            Some(hs) => format!(
                "a hard state (term {}, vote {:?}) a crash interrupted before it was durable; no vote or message depended on it, no entry is dropped",
                hs.current_term, hs.voted_for
            ),
            None => "an incomplete hard state a crash interrupted before it was durable; no vote or message depended on it, no entry is dropped".into(),
        };
    }
    if stem.starts_with(super::snapshot::SAVING_PREFIX) {
        return match snapshot_index() {
            Some(i) => format!("a snapshot at index {i} being saved, never the kept one; the log still holds its entries, no entry is dropped"),
            None => "a snapshot being saved, never the kept one; no entry is dropped".into(),
        };
    }
    if stem == super::snapshot::INCOMING.trim_end_matches(super::dir::TMP_SUFFIX) {
        return match snapshot_index() {
            Some(i) => format!("part of a snapshot at index {i} being received from a leader, never installed (the leader sends it again); no entry is dropped"),
            None => "part of a snapshot being received from a leader, never installed; no entry is dropped".into(),
        };
    }
    if let Some(base) = segment::parse_name(stem) {
        return format!(
            "a segment for the entries from {base} on, being created: it held no entry yet"
        );
    }
    if stem.starts_with("spare-") {
        return "a spare segment prepared ahead of time: no entry of the log".into();
    }
    if stem == super::identity::FILE
        || stem == super::incarnations::FILE
        || stem == super::format::FILE
    {
        return format!("a new {stem} file a crash interrupted; the previous one (if any) stands, no entry is dropped");
    }
    "a temporary file of an interrupted write; no entry of the log".into()
}
