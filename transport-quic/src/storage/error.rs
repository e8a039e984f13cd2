//! What can go wrong with the files of a [`FileLog`](super::FileLog), in detail.
//!
//! The node only learns that a write failed
//! ([`Node::persist_failed`](coracle::Node::persist_failed)); the detailed cause is kept
//! and readable with [`FileLog::last_error`](super::FileLog::last_error).

use super::identity::DirIdentity;
use coracle::{Index, NodeId, Term};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// An error of the durable log, naming the file (and offset) it concerns.
#[derive(Debug)]
#[non_exhaustive]
pub enum FileLogError {
    /// An operation on a file or directory failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (`"create segment"`, `"sync"`, …).
        op: &'static str,
        /// The operating system's error (`No space left on device`, `Permission denied`, …).
        source: io::Error,
    },
    /// A file holds bytes this crate cannot have written: a checksum, a header or the order
    /// of entries is wrong somewhere other than a torn tail. The log refuses to open rather
    /// than drop data silently; move the file away or restore it from a replica.
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damage in the file.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// The directory's durable state is incomplete or inconsistent (files missing, entries
    /// once durable gone, another node's directory): the log refuses to open, because a
    /// node that forgot its vote or entries it acknowledged can break Raft's guarantees.
    /// The message says what is missing and how to repair it.
    Damaged {
        /// The data directory.
        dir: PathBuf,
        /// What is wrong.
        damage: Damage,
    },
    /// Another [`FileLog`](super::FileLog) (in this or another process) has the directory
    /// open.
    Locked(PathBuf),
    /// Appending would take the segments past the configured quota
    /// ([`Options::max_log_bytes`](super::Options::max_log_bytes)): compact the log (after a
    /// snapshot) to make room.
    QuotaExceeded {
        /// The data directory.
        dir: PathBuf,
        /// The quota in bytes.
        limit: u64,
        /// The part of it only the protocol's own entries may use (see
        /// [`Options::max_log_bytes`](super::Options::max_log_bytes)); 0 for those entries.
        reserved: u64,
        /// Bytes the segments would need.
        needed: u64,
    },
    /// The quota ([`Options::max_log_bytes`](super::Options::max_log_bytes)) is smaller
    /// than [`Options::min_log_bytes`](super::Options::min_log_bytes): compaction could
    /// never bring the log under it, and the log would stay full.
    QuotaTooSmall {
        /// The quota in bytes.
        limit: u64,
        /// The smallest quota that works with these segments and entries.
        least: u64,
        /// The segment size.
        segment_bytes: u64,
        /// The largest entry's data.
        max_entry_bytes: usize,
        /// The largest segment size that works with this quota, if any does.
        largest_segment_bytes: Option<u64>,
    },
    /// An entry's data is larger than [`Options::max_entry_bytes`](super::Options::max_entry_bytes).
    EntryTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A snapshot older than the one already saved.
    StaleSnapshot {
        /// Index of the snapshot offered.
        index: Index,
        /// Index of the snapshot on disk.
        saved: Index,
    },
    /// The snapshot file is of a format version this build does not read. Version 1 (no
    /// membership configuration) cannot be migrated safely: if the log still holds every
    /// entry from index 1, delete the file; otherwise rebuild this node's data directory
    /// from a replica (remove it and let the node catch up through InstallSnapshot).
    SnapshotVersion {
        /// The snapshot file.
        file: PathBuf,
        /// The version found.
        version: u32,
    },
    /// The data directory was written by a newer build: its format
    /// ([`format`](super::format)) is above the newest this build reads. Nothing in it was
    /// read, removed or written (besides taking its lock); run a newer coracle.
    FormatTooNew {
        /// The data directory.
        dir: PathBuf,
        /// The format its `format` file names.
        found: u32,
        /// The newest format this build reads ([`format::CURRENT`](super::format::CURRENT)).
        supported: u32,
    },
    /// The data directory was written by a release whose format this build no longer reads
    /// (refused before anything in it changed).
    FormatTooOld {
        /// The data directory.
        dir: PathBuf,
        /// Its format ([`format::UNMARKED`](super::format::UNMARKED) without a `format` file).
        found: u32,
        /// The oldest format this build reads ([`format::OLDEST`](super::format::OLDEST)).
        oldest: u32,
    },
    /// A snapshot does not fit its metadata (its length differs from the size announced,
    /// it is older than the one kept, or no snapshot is being received).
    BadSnapshot(String),
    /// A batch's entry does not follow the log (a bug of the host or the node): writing it
    /// would make the log unreadable, so the log fails instead.
    OutOfOrder {
        /// The entry's index.
        index: Index,
        /// The log's last index.
        last: Index,
    },
    /// An earlier write or sync failed, so what is on disk is unknown (after a failed fsync
    /// the kernel may have dropped the dirty pages): the log takes no more writes. Reopen it
    /// to recover from what is really on disk.
    Failed,
    /// A directory to seed with a snapshot ([`FileLog::seed`](super::FileLog::seed)) is
    /// not empty: it may hold another node's data, which seeding would destroy.
    NotEmpty(PathBuf),
}

impl FileLogError {
    /// The [`io::ErrorKind`] closest to this error (for [`FileLog::flush`](super::FileLog::flush),
    /// which answers with an [`io::Error`]).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            FileLogError::Io { source, .. } => source.kind(),
            FileLogError::Corrupt { .. } | FileLogError::Damaged { .. } => {
                io::ErrorKind::InvalidData
            }
            FileLogError::Locked(_) => io::ErrorKind::ResourceBusy,
            FileLogError::NotEmpty(_) => io::ErrorKind::AlreadyExists,
            FileLogError::QuotaExceeded { .. } => io::ErrorKind::QuotaExceeded,
            FileLogError::EntryTooLarge { .. }
            | FileLogError::StaleSnapshot { .. }
            | FileLogError::QuotaTooSmall { .. } => io::ErrorKind::InvalidInput,
            FileLogError::SnapshotVersion { .. }
            | FileLogError::FormatTooNew { .. }
            | FileLogError::FormatTooOld { .. } => io::ErrorKind::InvalidData,
            FileLogError::BadSnapshot(_) | FileLogError::OutOfOrder { .. } => {
                io::ErrorKind::InvalidInput
            }
            FileLogError::Failed => io::ErrorKind::Other,
        }
    }

    pub(crate) fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> Self {
        FileLogError::Corrupt {
            file: file.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}

/// What is missing or inconsistent in a data directory ([`FileLogError::Damaged`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Damage {
    /// The hard state (term and vote) is gone from a directory that had one (it has an
    /// identity, entries or a snapshot): the node could vote twice in a term.
    MissingHardState {
        /// Entries or a snapshot of this term are on disk (0 if none).
        newest_term: Term,
    },
    /// Every segment is gone from a directory that had some (it has an identity).
    NoSegments {
        /// The snapshot's index, if one is there (entries after it are lost).
        snapshot: Option<Index>,
    },
    /// Entries the log once made durable are gone: the last segment's records end before
    /// its durability mark (a file cut short, a disk that lost writes).
    LostEntries {
        /// The segment.
        file: PathBuf,
        /// The first entry lost.
        from: Index,
        /// The last entry known lost (later ones may be lost too).
        to: Index,
    },
    /// The last segment is shorter than the size it was preallocated at (its durability
    /// mark says): the file was cut short, and entries after what it holds may be lost.
    CutShort {
        /// The segment.
        file: PathBuf,
        /// Its size now.
        len: u64,
        /// The size it had at least.
        allocated: u64,
        /// The first entry that may be lost.
        from: Index,
    },
    /// Segments after the last one are gone: it is sealed (a later segment existed).
    MissingSegments {
        /// The last segment left.
        file: PathBuf,
        /// The first entry lost.
        from: Index,
    },
    /// The directory belongs to another node or cluster.
    WrongIdentity {
        /// What its identity file says.
        found: DirIdentity,
        /// The cluster this node is configured for.
        cluster: u64,
        /// This node's id.
        node: NodeId,
    },
    /// The hard state's term is older than an entry's: it is an older copy.
    StaleHardState {
        /// Its term.
        term: Term,
        /// The newest entry's term.
        log_term: Term,
        /// The newest entry's index.
        index: Index,
    },
    /// Entries between the snapshot (or index 0) and the start of the log are in neither:
    /// the state machine cannot be rebuilt.
    Gap {
        /// The first entry missing.
        from: Index,
        /// The last entry missing.
        to: Index,
    },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::MissingHardState { newest_term } => {
                f.write_str("the hard state file (term and vote) is missing")?;
                if *newest_term > 0 {
                    write!(f, ", although the log holds entries of term {newest_term}")?;
                }
                f.write_str(": the node would start at term 0 with no vote and could vote twice in a term")
            }
            Damage::NoSegments { snapshot: Some(i) } => write!(
                f,
                "every log segment is missing (only the snapshot at index {i} is left): the entries after it are lost"
            ),
            Damage::NoSegments { snapshot: None } => {
                f.write_str("every log segment is missing: the node's log is lost")
            }
            Damage::LostEntries { file, from, to } => write!(
                f,
                "{} ends at entry {}, but entries up to {to} were durable in it: entries {from}..={to} ({} entries, maybe more after them) are lost, acknowledged ones among them (the file was cut short or the disk lost writes)",
                file.display(),
                from - 1,
                to - from + 1
            ),
            Damage::CutShort {
                file,
                len,
                allocated,
                from,
            } => write!(
                f,
                "{} is {len} bytes, but it was preallocated at {allocated}: the file was cut short, and entries from {from} on may be lost, acknowledged ones among them",
                file.display()
            ),
            Damage::MissingSegments { file, from } => write!(
                f,
                "{} is the last segment, but it is sealed (a later segment existed): the segments after it, with the entries from {from} on, are missing",
                file.display()
            ),
            Damage::WrongIdentity { found, cluster, node } => write!(
                f,
                "it belongs to node {} of cluster {} (identity file), but this node is node {node} of cluster {cluster}",
                found.node, found.cluster
            ),
            Damage::StaleHardState { term, log_term, index } => write!(
                f,
                "the hard state says term {term}, but entry {index} of the log has term {log_term}: the hard state file is an older copy, and the node could vote again in a term it already voted in"
            ),
            Damage::Gap { from, to } => write!(
                f,
                "entries {from}..={to} ({} entries) are neither in the snapshot nor in the log, so the state machine cannot be rebuilt",
                to - from + 1
            ),
        }
    }
}

/// What to do about damage: said once, in every message that refuses a data directory.
pub(crate) const REPAIR: &str =
    "Keep this directory for inspection (move it away), start the node \
     with an empty data directory and let it rejoin as a new member: on the cluster, remove it \
     (`coracle admin remove ID`), add it back as a learner (`coracle admin add-learner ID ADDR`) \
     and promote it once it has caught up (`coracle admin promote ID`); see \
     \"Replacing a node that lost its disk\" in the README";

/// `map_err(io_err(path, "what"))`: wraps an [`io::Error`] with the path and the operation.
pub(crate) fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> FileLogError {
    let path = path.to_path_buf();
    move |source| FileLogError::Io { path, op, source }
}

impl fmt::Display for FileLogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileLogError::Io { path, op, source } => {
                write!(f, "{op} {}: {source}", path.display())?;
                match source.kind() {
                    io::ErrorKind::StorageFull => f.write_str(" (the disk is full)"),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                        f.write_str(" (is the data directory read-only?)")
                    }
                    _ => Ok(()),
                }
            }
            FileLogError::Corrupt {
                file,
                offset,
                reason,
            } => write!(
                f,
                "corrupt log file {} at offset {offset}: {reason}; refusing to open rather than lose data. \
                 Restore the file if you have a copy; otherwise: {REPAIR}",
                file.display()
            ),
            FileLogError::Damaged {
                dir,
                damage: damage @ Damage::WrongIdentity { .. },
            } => write!(
                f,
                "data directory {} is not this node's: {damage}. Point data_dir at this node's own directory \
                 (an empty directory makes a new node, which must join as a new member: {REPAIR})",
                dir.display()
            ),
            FileLogError::Damaged { dir, damage } => write!(
                f,
                "data directory {} is incomplete: {damage}. A node that forgot its vote or entries it \
                 acknowledged can break Raft's guarantees, so it refuses to start. {REPAIR}",
                dir.display()
            ),
            FileLogError::Locked(path) => write!(
                f,
                "data directory {} is in use: {} is locked by another open log",
                path.parent().unwrap_or(path).display(),
                path.display()
            ),
            FileLogError::QuotaExceeded {
                dir,
                limit,
                reserved,
                needed,
            } => write!(
                f,
                "log in {} is full: {needed} bytes needed, quota is {limit} bytes \
                 ({reserved} of them kept for leader no-ops and configuration changes; \
                 compact after a snapshot)",
                dir.display()
            ),
            FileLogError::QuotaTooSmall {
                limit,
                least,
                segment_bytes,
                max_entry_bytes,
                largest_segment_bytes,
            } => {
                write!(
                    f,
                    "a log quota of {limit} bytes is too small for segments of {segment_bytes} \
                     bytes and entries of up to {max_entry_bytes} bytes: compaction deletes \
                     whole segments and never the one being written, so the log could stay \
                     full for good; the quota must be at least {least} bytes"
                )?;
                match largest_segment_bytes {
                    Some(s) => write!(f, " (or segments at most {s} bytes)"),
                    None => Ok(()),
                }
            }
            FileLogError::EntryTooLarge { len, max } => {
                write!(f, "entry of {len} bytes is larger than the limit of {max} bytes")
            }
            FileLogError::NotEmpty(dir) => write!(
                f,
                "data directory {} is not empty: a restore seeds only a new node's directory \
                 (nothing in it was changed; give an empty or missing directory)",
                dir.display()
            ),
            FileLogError::StaleSnapshot { index, saved } => write!(
                f,
                "snapshot at index {index} is older than the saved one at index {saved}"
            ),
            FileLogError::SnapshotVersion { file, version } => write!(
                f,
                "snapshot file {} has format version {version}, this build reads only version {}; \
                 a version 1 snapshot has no membership configuration and cannot be migrated: \
                 delete it if the log still starts at index 1, otherwise rebuild this node's \
                 data directory from a replica",
                file.display(),
                super::snapshot::VERSION
            ),
            FileLogError::FormatTooNew {
                dir,
                found,
                supported,
            } => write!(
                f,
                "data directory format {found} is newer than this binary supports ({supported}); \
                 upgrade coracle (data directory {}, left unchanged)",
                dir.display()
            ),
            FileLogError::FormatTooOld { dir, found, oldest } => write!(
                f,
                "data directory format {found} was written by an earlier release, and this \
                 binary reads formats {oldest} to {current} only (the log's command entries \
                 changed): start this node on a new, empty data directory and let the \
                 cluster catch it up, or upgrade every node of the cluster together onto new \
                 directories (data directory {})",
                dir.display(),
                current = super::format::CURRENT
            ),
            FileLogError::BadSnapshot(m) => write!(f, "bad snapshot: {m}"),
            FileLogError::OutOfOrder { index, last } => write!(
                f,
                "a batch's entry {index} does not follow the log, which ends at {last}; nothing of it was written"
            ),
            FileLogError::Failed => f.write_str(
                "an earlier write to the log failed; the log takes no more writes until it is reopened",
            ),
        }
    }
}

impl std::error::Error for FileLogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FileLogError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<FileLogError> for io::Error {
    fn from(e: FileLogError) -> Self {
        io::Error::new(e.kind(), e)
    }
}
