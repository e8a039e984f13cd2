//! The data directory: its lock, directory fsyncs and atomic file replacement.

use super::error::{io_err, FileLogError};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;

/// Name of the lock file.
pub(crate) const LOCK_FILE: &str = "LOCK";
/// Suffix of a file being written before its atomic rename.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// Takes the exclusive lock of `dir` (creating the lock file), or says who holds it.
///
/// The lock is an advisory `flock`-style lock ([`File::try_lock`]) on `dir/LOCK`: the
/// kernel drops it when the process dies, so a crash never leaves a stale lock behind.
pub(crate) fn lock(dir: &Path) -> Result<File, FileLogError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path, "open lock file"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(FileLogError::Locked(path)),
        Err(TryLockError::Error(e)) => Err(io_err(&path, "lock")(e)),
    }
}

/// Bytes written between two `fdatasync`s when a large file is written in the background
/// (a snapshot, a spare segment). Flushed at once, tens of MiB hold the disk for tens of
/// milliseconds, and the log's own `fdatasync`s queue behind them: measured with 64
/// clients, p99.9 30-50 ms with one flush per file, 4-6 ms with one per 128 KiB.
pub(crate) const FLUSH_CHUNK: usize = 128 << 10;

/// Writes `bytes` to `file` with an `fdatasync` after each [`FLUSH_CHUNK`].
pub(crate) fn write_in_flushes(
    file: &mut File,
    bytes: &[u8],
    path: &Path,
) -> Result<(), FileLogError> {
    for chunk in bytes.chunks(FLUSH_CHUNK) {
        file.write_all(chunk).map_err(io_err(path, "write"))?;
        file.sync_data().map_err(io_err(path, "sync"))?;
    }
    Ok(())
}

/// Makes the directory entries of `dir` (files created, renamed or removed) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FileLogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "sync directory"))
}

/// Replaces `dir/name` atomically with `parts` concatenated: write `name.tmp`, fsync it,
/// rename it over `name`, fsync the directory. After a crash the file is either wholly old
/// or wholly new; a leftover `name.tmp` is removed on the next open.
pub(crate) fn write_atomically(
    dir: &Path,
    name: &str,
    parts: &[&[u8]],
) -> Result<(), FileLogError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let path = dir.join(name);
    let mut file = File::create(&tmp).map_err(io_err(&tmp, "create"))?;
    for part in parts {
        file.write_all(part).map_err(io_err(&tmp, "write"))?;
    }
    file.sync_all().map_err(io_err(&tmp, "sync"))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err(&path, "rename into place"))?;
    sync_dir(dir)
}

/// Reads the small file `dir/name` whole and decodes it (`decode` says at which offset
/// and why it is not valid); `None` if there is no such file.
pub(crate) fn read_decoded<T>(
    dir: &Path,
    name: &str,
    decode: impl FnOnce(&[u8]) -> Result<T, (u64, &'static str)>,
) -> Result<Option<T>, FileLogError> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|(offset, reason)| FileLogError::corrupt(&path, offset, reason)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path, "read")(e)),
    }
}

/// Removes the `*.tmp` files a crash left behind (never renamed into place, so never part
/// of the durable state), each described by `describe` before it goes.
pub(crate) fn remove_leftovers<T>(
    dir: &Path,
    describe: impl Fn(&Path) -> T,
) -> Result<Vec<T>, FileLogError> {
    let mut removed = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err(dir, "list directory"))? {
        let item = item.map_err(io_err(dir, "list directory"))?;
        let path = item.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(TMP_SUFFIX))
        {
            let described = describe(&path);
            fs::remove_file(&path).map_err(io_err(&path, "remove leftover temporary file"))?;
            removed.push(described);
        }
    }
    Ok(removed)
}
