//! What can go wrong with the files of a [`FileLog`](super::FileLog), in detail.
//!
//! The [`LogStorage`](coracle::LogStorage) trait can only say
//! [`StorageError::Unavailable`](coracle::StorageError::Unavailable) (or `Full`); the
//! detailed cause is kept and readable with [`FileLog::last_error`](super::FileLog::last_error).

use coracle::Index;
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
    /// A snapshot does not fit its metadata (its length differs from the size announced,
    /// it is older than the one kept, or no snapshot is being received).
    BadSnapshot(String),
    /// An earlier write or sync failed, so what is on disk is unknown (after a failed fsync
    /// the kernel may have dropped the dirty pages): the log takes no more writes. Reopen it
    /// to recover from what is really on disk.
    Failed,
}

impl FileLogError {
    /// The [`io::ErrorKind`] closest to this error (for [`FileLog::sync`](super::FileLog::sync),
    /// which answers with an [`io::Error`]).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            FileLogError::Io { source, .. } => source.kind(),
            FileLogError::Corrupt { .. } => io::ErrorKind::InvalidData,
            FileLogError::Locked(_) => io::ErrorKind::ResourceBusy,
            FileLogError::QuotaExceeded { .. } => io::ErrorKind::QuotaExceeded,
            FileLogError::EntryTooLarge { .. }
            | FileLogError::StaleSnapshot { .. }
            | FileLogError::QuotaTooSmall { .. } => io::ErrorKind::InvalidInput,
            FileLogError::SnapshotVersion { .. } => io::ErrorKind::InvalidData,
            FileLogError::BadSnapshot(_) => io::ErrorKind::InvalidInput,
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
                "corrupt log file {} at offset {offset}: {reason}; refusing to open rather than lose data",
                file.display()
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
            FileLogError::BadSnapshot(m) => write!(f, "bad snapshot: {m}"),
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
