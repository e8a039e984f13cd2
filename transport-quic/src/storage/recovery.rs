//! Recovery on open: read every segment back, check every record, cut a torn tail, refuse
//! damage anywhere else.
//!
//! Only the end of the last segment can legitimately be damaged: records reach the file only
//! in [`FileLog::sync`](super::FileLog::sync) (or a roll-over, which syncs the old segment
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
//!   [`RecoveryReport::tail_cut`](super::RecoveryReport::tail_cut);
//! - in any other segment: **corruption**.
//!
//! Corruption is an error naming the file and the offset ([`FileLogError::Corrupt`]); the
//! log refuses to open rather than drop records that were durable. So is a record whose
//! checksum is right but whose content is not what this crate writes (unknown type, an
//! index out of sequence), a bad segment header, or segments that do not follow each other.

use super::error::{io_err, FileLogError};
use super::record;
use super::segment::{self, Segment};
use coracle::OwnedEntry;
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
}

/// What the segments held.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// The segments, in order; their entries follow each other.
    pub segments: Vec<Segment>,
    /// Every entry of every segment, from `segments[0].base`.
    pub entries: Vec<OwnedEntry>,
    /// Offset of each entry's record in its segment.
    pub offsets: Vec<u64>,
    pub tail_cut: Option<TailCut>,
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
pub(crate) fn replay(dir: &Path, max_payload: usize) -> Result<Replayed, FileLogError> {
    let files = list(dir)?;
    let mut out = Replayed::default();
    for (i, (base, path)) in files.iter().enumerate() {
        let last_segment = i + 1 == files.len();
        let bytes = fs::read(path).map_err(io_err(path, "read segment"))?;
        let (header_base, prev_term) = segment::decode_header(&bytes, path)?;
        if header_base != *base {
            return Err(FileLogError::corrupt(
                path,
                12,
                format!(
                    "segment header says it starts at index {header_base}, its name says {base}"
                ),
            ));
        }
        if let Some(prev) = out.segments.last() {
            let next = out.segments[0].base + out.entries.len() as u64;
            if *base != next {
                return Err(FileLogError::corrupt(
                    path,
                    0,
                    format!(
                        "segment starts at index {base} but the one before ({}) ends at index {}",
                        prev.path.display(),
                        next - 1
                    ),
                ));
            }
            let last_term = out.entries.last().map_or(prev.prev_term, |e| e.term);
            if prev_term != last_term {
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
        let mut at = segment::HEADER;
        let mut next_index = *base;
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
                        Rest::Corrupt(valid) => {
                            return Err(FileLogError::corrupt(
                                path,
                                at as u64,
                                format!("a record of an earlier segment, but a valid record follows at offset {valid}"),
                            ))
                        }
                        Rest::Zeros | Rest::Recycled | Rest::Torn => break at,
                    }
                }
                Ok((payload, next)) => {
                    let entry = record::decode_entry(payload)
                        .map_err(|reason| FileLogError::corrupt(path, at as u64, reason))?;
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
                    out.entries.push(entry);
                    out.offsets.push(at as u64);
                    next_index += 1;
                    at = next;
                }
                Err(reason) if !last_segment => {
                    return Err(FileLogError::corrupt(
                        path,
                        at as u64,
                        format!("{reason}, in a segment that is not the last one"),
                    ));
                }
                Err(reason) => match rest_of_last_segment(&bytes, at, *base, max_payload) {
                    Rest::Zeros | Rest::Recycled => break at,
                    Rest::Corrupt(valid) => {
                        return Err(FileLogError::corrupt(
                            path,
                            at as u64,
                            format!("{reason}, but a valid record follows at offset {valid}"),
                        ));
                    }
                    Rest::Torn => {
                        cut(path, at as u64)?;
                        out.tail_cut = Some(TailCut {
                            file: path.clone(),
                            offset: at as u64,
                            bytes: (bytes.len() - at) as u64,
                            reason,
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
            preallocated: end < bytes.len() && out.tail_cut.is_none(),
        });
    }
    Ok(out)
}

/// What the last segment holds from the first offset that does not continue the log.
#[derive(Debug, PartialEq, Eq)]
enum Rest {
    /// Only zeros: a preallocated segment's space.
    Zeros,
    /// Valid records of an earlier segment (and maybe torn bytes before them): a recycled
    /// segment's space.
    Recycled,
    /// A valid record of this segment at this offset: damage in the middle.
    Corrupt(usize),
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
        if record::index_of(payload).is_none_or(|i| i >= base) {
            return Rest::Corrupt(valid);
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
fn cut(path: &Path, offset: u64) -> Result<(), FileLogError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path, "open segment to cut its torn tail"))?;
    file.set_len(offset)
        .map_err(io_err(path, "cut torn tail"))?;
    file.sync_all()
        .map_err(io_err(path, "sync after cutting torn tail"))
}
