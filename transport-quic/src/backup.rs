//! Backups of a cluster's state and restores into a new cluster.
//!
//! `coracle admin snapshot save FILE` asks a node for a backup ([`AdminOp::BackupStream`]):
//! the node first serves a linearizable read (ReadIndex: on a follower, the leader
//! confirms it), then makes sure it keeps a snapshot with every entry applied at that
//! moment ([`Handle::snapshot`](crate::host::Handle::snapshot): taken by the node's
//! snapshot thread while it goes on serving), so the backup holds every write acknowledged
//! before it was asked. The node streams that snapshot from its file, in chunks, and the
//! client writes them into the backup file as they come ([`BackupWriter`]): neither side
//! holds the state in memory, so a state of any size is backed up.
//!
//! `coracle node restore FILE` seeds the data directory of a node of a **new** cluster
//! from it ([`restore_kv`]), reading the file a piece at a time ([`BackupFile`]): the
//! backup's state becomes the directory's kept snapshot, with the new node's cluster id and
//! the members of its `node.toml` (the snapshot's configuration is left empty, which means
//! the bootstrap members). A restore into the cluster id the backup came from is refused:
//! the cluster id is in every node's hello, so nodes of the two clusters refuse each other
//! even with certificates of the same CA.
//!
//! # File format (version 1)
//!
//! ```text
//! +------------+-------------+-------------+-----------+----------+-----------------+
//! | "CORABKUP" | version u32 | cluster u64 | index u64 | term u64 | members_len u32 |
//! +------------+-------------+-------------+-----------+----------+-----------------+
//! | members (postcard, members_len bytes) | state_len u64 | state | crc32 u32 |
//! +---------------------------------------+---------------+-------+-----------+
//! ```
//!
//! Little-endian. `members` is the configuration in force when the backup was taken
//! (id, voter, address), `state` the state machine's snapshot bytes (for the KV store,
//! what [`Kv::snapshot`] writes), taken with every entry through `index` applied; `term`
//! is the term of the entry at `index`. The CRC-32 covers every byte before it; the file
//! must be exactly as long as its lengths say. Files of the builds that carried a backup in
//! one client frame (at most 16 MiB) have this format and restore as they did.

use crate::config::NodeConfig;
use crate::kv::Kv;
#[cfg(doc)]
use crate::protocol::AdminOp;
use crate::storage::{FileLog, FileLogError};
use coracle::{Index, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"CORABKUP";
/// Version of the backup file format.
pub const VERSION: u32 = 1;
/// Bytes before the members.
const FIXED: usize = 40;
/// Bytes of the checksum trailer.
const TRAILER: u64 = 4;
/// Largest member list accepted (a corrupted length is refused before it is allocated).
const MAX_MEMBERS_LEN: u32 = 1 << 20;
/// Bytes read or written at once.
const PIECE: usize = 256 << 10;

/// A member of the configuration a backup was taken in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMember {
    /// Its id.
    pub id: NodeId,
    /// It votes.
    pub voter: bool,
    /// Where it listened, if known.
    pub address: Option<String>,
}

/// What a backup says of itself: everything but the state's bytes ([module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The cluster it was taken from.
    pub cluster: u64,
    /// Every entry through this index is applied in the state.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The configuration in force.
    pub members: Vec<BackupMember>,
    /// Bytes of the state machine's snapshot.
    pub state_len: u64,
}

impl BackupHeader {
    /// The bytes of the file before the state.
    fn encode(&self) -> Vec<u8> {
        // A list of ids, flags and strings always encodes.
        let members = postcard::to_allocvec(&self.members).unwrap_or_default();
        let mut b = Vec::with_capacity(FIXED + members.len() + 8);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.cluster.to_le_bytes());
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&self.term.to_le_bytes());
        b.extend_from_slice(&(members.len() as u32).to_le_bytes());
        b.extend_from_slice(&members);
        b.extend_from_slice(&self.state_len.to_le_bytes());
        b
    }
}

/// Why a backup cannot be written, read or restored.
#[derive(Debug)]
pub enum BackupError {
    /// Reading or writing the backup file failed (a missing file, no permission).
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file is no backup, or is truncated or damaged.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// The file is of a backup format this build does not read.
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// The state written does not match what its header announced (a node that sent
    /// more or fewer bytes, or other bytes, than it said): the file was not kept.
    Incomplete(String),
    /// The backup's state is no snapshot of the state machine.
    BadState(String),
    /// The restore would give the new cluster the id of the backup's cluster.
    SameCluster(u64),
    /// Seeding the data directory failed (not empty, a disk error); nothing was left in it.
    Storage(FileLogError),
}

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupError::Io { path, op, source } => {
                write!(f, "cannot {op} backup file {}: {source}", path.display())
            }
            BackupError::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "backup file {} is damaged at byte {offset}: {reason} (nothing was restored)",
                path.display()
            ),
            BackupError::Version { path, version } => write!(
                f,
                "backup file {} has format version {version}, this build reads version {VERSION}",
                path.display()
            ),
            BackupError::Incomplete(m) => write!(f, "the backup was not saved: {m}"),
            BackupError::BadState(m) => write!(f, "the backup's state is unusable: {m}"),
            BackupError::SameCluster(id) => write!(
                f,
                "the backup was taken from cluster {id}, the cluster_id of this node.toml: a \
                 restore starts a new cluster, give it a new cluster_id (so its nodes never \
                 talk to the old cluster's)"
            ),
            BackupError::Storage(e) => write!(f, "cannot seed the data directory: {e}"),
        }
    }
}

impl std::error::Error for BackupError {}

fn io_error<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// A backup file being written, front to back: the header, then the state as it comes
/// ([`Write`]), then [`finish`](Self::finish) appends the checksum and makes the file
/// durable and visible at once. It is written into `FILE.tmp` and renamed over `FILE` only
/// when whole and fsynced, so a crash, an error or a drop before `finish` leaves the old
/// file (or none) and no temporary one.
///
/// ```
/// use coracle_quic::backup::{BackupFile, BackupHeader, BackupWriter};
/// use std::io::{Read, Write};
/// let path = std::env::temp_dir().join(format!("doc-{}.backup", std::process::id()));
/// let header = BackupHeader { cluster: 7, index: 3, term: 1, members: vec![], state_len: 5 };
/// let mut w = BackupWriter::create(&path, &header)?;
/// w.write_all(b"state")?;
/// w.finish()?;
/// let file = BackupFile::open(&path)?;
/// assert_eq!(file.header(), &header);
/// let mut state = Vec::new();
/// file.state()?.read_to_end(&mut state)?;
/// assert_eq!(state, b"state");
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct BackupWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: BufWriter<File>,
    crc: crc32fast::Hasher,
    state_len: u64,
    written: u64,
    state_crc: crc32fast::Hasher,
    finished: bool,
}

impl BackupWriter {
    /// Creates `path.tmp` and writes the header into it.
    pub fn create(path: &Path, header: &BackupHeader) -> Result<BackupWriter, BackupError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).map_err(io_error(path, "create"))?;
        let mut w = BackupWriter {
            path: path.to_path_buf(),
            tmp,
            file: BufWriter::with_capacity(PIECE, file),
            crc: crc32fast::Hasher::new(),
            state_len: header.state_len,
            written: 0,
            state_crc: crc32fast::Hasher::new(),
            finished: false,
        };
        let head = header.encode();
        w.crc.update(&head);
        w.file.write_all(&head).map_err(io_error(path, "write"))?;
        Ok(w)
    }

    /// Bytes of state written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The CRC-32 of the state written so far.
    pub fn state_crc(&self) -> u32 {
        self.state_crc.clone().finalize()
    }

    /// Appends the checksum, fsyncs the file, renames it over the backup's path and fsyncs
    /// the directory. Refused (and the file removed) unless exactly the header's
    /// `state_len` bytes were written.
    pub fn finish(mut self) -> Result<(), BackupError> {
        if self.written != self.state_len {
            return Err(BackupError::Incomplete(format!(
                "{} bytes of state written, the header says {}",
                self.written, self.state_len
            )));
        }
        let crc = self.crc.clone().finalize();
        let path = self.path.clone();
        let done = (|| {
            self.file.write_all(&crc.to_le_bytes())?;
            self.file.flush()?;
            self.file.get_ref().sync_all()?;
            std::fs::rename(&self.tmp, &self.path)
        })();
        done.map_err(io_error(&path, "write"))?;
        self.finished = true;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error(&path, "sync the directory of"))?;
        }
        Ok(())
    }
}

impl Write for BackupWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.state_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "more state than the {} bytes the header announced",
                    self.state_len
                ),
            ));
        }
        let n = self.file.write(buf)?;
        self.crc.update(&buf[..n]);
        self.state_crc.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for BackupWriter {
    /// A backup not finished leaves no file behind.
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A backup file open for reading: its header is read and checked against the file's
/// length when it is opened, its state is read a piece at a time ([`state`](Self::state)),
/// never whole.
#[derive(Debug)]
pub struct BackupFile {
    path: PathBuf,
    header: BackupHeader,
    /// The bytes before the state, as the file holds them (the checksum starts there).
    head: Vec<u8>,
}

impl BackupFile {
    /// Opens the backup file at `path` and reads its header. Anything wrong with it is
    /// told as the checksum tells it first: a file whose checksum does not match is
    /// [`BackupError::Corrupt`] (truncated or damaged), one that matches but is of
    /// another version [`BackupError::Version`].
    pub fn open(path: &Path) -> Result<BackupFile, BackupError> {
        let mut file = File::open(path).map_err(io_error(path, "read"))?;
        let len = file.metadata().map_err(io_error(path, "read"))?.len();
        match Self::parse(&mut file, path, len) {
            Ok((header, head)) => Ok(BackupFile {
                path: path.to_path_buf(),
                header,
                head,
            }),
            Err(e @ BackupError::Io { .. }) => Err(e),
            Err(e) => Err(whole_file_checksum(&mut file, path, len)?.map_or(e, |c| c)),
        }
    }

    fn parse(
        file: &mut File,
        path: &Path,
        len: u64,
    ) -> Result<(BackupHeader, Vec<u8>), BackupError> {
        let corrupt = |offset: u64, reason: &str| BackupError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        };
        let mut fixed = [0u8; FIXED];
        let got = read_up_to(file, &mut fixed).map_err(io_error(path, "read"))?;
        if got < MAGIC.len() || &fixed[..8] != MAGIC {
            return Err(corrupt(0, "not a coracle backup file"));
        }
        if got < FIXED || len < (FIXED + 8) as u64 + TRAILER {
            return Err(corrupt(len, "the file is truncated"));
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&fixed[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let version = u32_at(8);
        if version != VERSION {
            return Err(BackupError::Version {
                path: path.to_path_buf(),
                version,
            });
        }
        let (cluster, index, term) = (u64_at(12), u64_at(20), u64_at(28));
        let members_len = u32_at(36);
        if members_len > MAX_MEMBERS_LEN
            || (FIXED as u64 + u64::from(members_len) + 8 + TRAILER) > len
        {
            return Err(corrupt(36, "the members' length does not fit the file"));
        }
        let mut rest = vec![0u8; members_len as usize + 8];
        file.read_exact(&mut rest).map_err(io_error(path, "read"))?;
        let members: Vec<BackupMember> = postcard::from_bytes(&rest[..members_len as usize])
            .map_err(|e| corrupt(FIXED as u64, &format!("the members do not decode: {e}")))?;
        let mut l = [0u8; 8];
        l.copy_from_slice(&rest[members_len as usize..]);
        let state_len = u64::from_le_bytes(l);
        let state_at = FIXED as u64 + u64::from(members_len) + 8;
        if state_at
            .checked_add(state_len)
            .and_then(|n| n.checked_add(TRAILER))
            != Some(len)
        {
            return Err(corrupt(
                state_at - 8,
                "the state's length does not fit the file",
            ));
        }
        if index == 0 {
            return Err(corrupt(20, "index 0: a backup holds at least one entry"));
        }
        let mut head = fixed.to_vec();
        head.extend_from_slice(&rest);
        let header = BackupHeader {
            cluster,
            index,
            term,
            members,
            state_len,
        };
        Ok((header, head))
    }

    /// The header.
    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// The state, read from the file a piece at a time. The read that reaches its end
    /// checks the file's checksum and fails with [`io::ErrorKind::InvalidData`] if it does
    /// not match ([`BackupState::damaged`] then says so).
    pub fn state(&self) -> Result<BackupState, BackupError> {
        let mut file = File::open(&self.path).map_err(io_error(&self.path, "read"))?;
        file.seek(io::SeekFrom::Start(self.head.len() as u64))
            .map_err(io_error(&self.path, "read"))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.head);
        Ok(BackupState {
            path: self.path.clone(),
            file: BufReader::with_capacity(PIECE, file),
            left: self.header.state_len,
            crc,
            damaged: None,
            at: self.head.len() as u64,
        })
    }

    /// Checks the whole file against its checksum, a piece at a time.
    pub fn verify(&self) -> Result<(), BackupError> {
        let mut state = self.state()?;
        match io::copy(&mut state, &mut io::sink()) {
            Ok(_) => Ok(()),
            Err(e) => Err(state.error(e)),
        }
    }

    /// Seeds the data directory of the node `cfg` (missing or empty) with this backup's
    /// state, as a node of the new cluster `cfg.cluster_id` whose members are those of
    /// `cfg`, streaming the state from the file. Checks nothing of the state itself
    /// ([`restore_kv`] does, for the KV store), but its checksum: a file damaged meanwhile
    /// fails the seed, and the directory is left as it was.
    pub fn seed(&self, cfg: &NodeConfig) -> Result<(), BackupError> {
        if cfg.cluster_id == self.header.cluster {
            return Err(BackupError::SameCluster(self.header.cluster));
        }
        let meta = SnapshotMeta::new(self.header.index, self.header.term, &[])
            .ok_or_else(|| BackupError::BadState("no snapshot metadata".into()))?;
        // The host's part of a snapshot, with no addresses: the new members' are in cfg.
        let head = crate::host::snapshot_head(&Default::default());
        let mut state = self.state()?;
        let seeded = {
            let mut data = head.as_slice().chain(&mut state);
            FileLog::seed(&cfg.data_dir, cfg.log_options(), &meta, &mut data)
        };
        match seeded {
            Ok(()) => Ok(()),
            Err(_) if state.damaged == Some(true) => Err(state.corrupt()),
            Err(e) => Err(BackupError::Storage(e)),
        }
    }
}

/// Reads into `buf` until it is full or the file ends; the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `Some(Corrupt)` if the file of `len` bytes does not end with the checksum of what comes
/// before (or is too short to), `None` if it does.
fn whole_file_checksum(
    file: &mut File,
    path: &Path,
    len: u64,
) -> Result<Option<BackupError>, BackupError> {
    let mismatch = || {
        Some(BackupError::Corrupt {
            path: path.to_path_buf(),
            offset: len.saturating_sub(TRAILER),
            reason: "checksum mismatch (the file is truncated or damaged)".into(),
        })
    };
    if len < TRAILER {
        return Ok(mismatch());
    }
    file.seek(io::SeekFrom::Start(0))
        .map_err(io_error(path, "read"))?;
    let mut r = BufReader::with_capacity(PIECE, file).take(len - TRAILER);
    let mut crc = crc32fast::Hasher::new();
    let mut piece = vec![0u8; PIECE];
    loop {
        let n = r.read(&mut piece).map_err(io_error(path, "read"))?;
        if n == 0 {
            break;
        }
        crc.update(&piece[..n]);
    }
    let mut trailer = [0u8; TRAILER as usize];
    r.into_inner()
        .read_exact(&mut trailer)
        .map_err(io_error(path, "read"))?;
    Ok((crc.finalize().to_le_bytes() != trailer)
        .then(mismatch)
        .flatten())
}

/// The state of a [`BackupFile`], read a piece at a time, with the file's checksum checked
/// when its end is reached.
#[derive(Debug)]
pub struct BackupState {
    path: PathBuf,
    file: BufReader<File>,
    left: u64,
    crc: crc32fast::Hasher,
    /// Whether the checksum did not match, once the end was reached.
    damaged: Option<bool>,
    /// Offset in the file of the next byte.
    at: u64,
}

impl BackupState {
    /// `Some(true)` once the end was reached and the checksum did not match, `Some(false)`
    /// once it did, `None` before the end.
    pub fn damaged(&self) -> Option<bool> {
        self.damaged
    }

    /// The error of a damaged file.
    fn corrupt(&self) -> BackupError {
        BackupError::Corrupt {
            path: self.path.clone(),
            offset: self.at,
            reason: "checksum mismatch (the file is truncated or damaged)".into(),
        }
    }

    /// What an error of a read of the state means: a damaged file, or the error.
    fn error(&self, e: io::Error) -> BackupError {
        if self.damaged == Some(true) {
            self.corrupt()
        } else {
            io_error(&self.path, "read")(e)
        }
    }
}

impl Read for BackupState {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return match self.damaged {
                Some(true) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "backup checksum mismatch",
                )),
                _ => Ok(0),
            };
        }
        let want = (buf.len() as u64).min(self.left) as usize;
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backup file ends before its state",
            ));
        }
        self.crc.update(&buf[..n]);
        self.left -= n as u64;
        self.at += n as u64;
        if self.left == 0 {
            let mut trailer = [0u8; TRAILER as usize];
            self.file.read_exact(&mut trailer)?;
            let bad = self.crc.clone().finalize().to_le_bytes() != trailer;
            self.damaged = Some(bad);
            if bad {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is damaged: backup checksum mismatch",
                        self.path.display()
                    ),
                ));
            }
        }
        Ok(n)
    }
}

/// Restores the KV backup at `path` into the data directory of the node `cfg`: reads the
/// file a piece at a time and checks it (checksum, format, and that its state is a KV
/// store at its index), then [`BackupFile::seed`]s the directory (a second pass). On any
/// error nothing was changed. Returns the backup's header.
pub fn restore_kv(path: &Path, cfg: &NodeConfig) -> Result<BackupHeader, BackupError> {
    let file = BackupFile::open(path)?;
    let index = file.header().index;
    let mut state = file.state()?;
    let checked = Kv::check_snapshot(&mut state);
    // The checksum is told first: the state read to its end says whether the file is whole.
    if state.damaged.is_none() {
        if let Err(e) = io::copy(&mut state, &mut io::sink()) {
            return Err(state.error(e));
        }
    }
    if state.damaged == Some(true) {
        return Err(state.corrupt());
    }
    match checked {
        Ok(applied) if applied == index => {}
        Ok(applied) => {
            return Err(BackupError::BadState(format!(
                "the backup at index {index} holds a KV store at index {applied}"
            )))
        }
        Err(e) => return Err(BackupError::BadState(e.to_string())),
    }
    file.seed(cfg)?;
    Ok(file.header().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("coracle-backup-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sample() -> (BackupHeader, Vec<u8>) {
        let state = b"state bytes".to_vec();
        let header = BackupHeader {
            cluster: 7,
            index: 42,
            term: 3,
            members: vec![BackupMember {
                id: 1,
                voter: true,
                address: Some("127.0.0.1:7001".into()),
            }],
            state_len: state.len() as u64,
        };
        (header, state)
    }

    fn read_back(path: &Path) -> Result<(BackupHeader, Vec<u8>), BackupError> {
        let file = BackupFile::open(path)?;
        let mut state = file.state()?;
        let mut bytes = Vec::new();
        if let Err(e) = state.read_to_end(&mut bytes) {
            return Err(state.error(e));
        }
        Ok((file.header().clone(), bytes))
    }

    #[test]
    fn a_backup_reads_back_and_every_damage_is_refused() {
        let d = dir("damage");
        let path = d.join("b.bak");
        let (header, state) = sample();
        let mut w = BackupWriter::create(&path, &header).unwrap();
        w.write_all(&state).unwrap();
        w.finish().unwrap();
        assert!(!d.join("b.bak.tmp").exists());
        assert_eq!(read_back(&path).unwrap(), (header, state));
        let bytes = std::fs::read(&path).unwrap();
        let bad = d.join("bad.bak");
        for cut in 0..bytes.len() {
            std::fs::write(&bad, &bytes[..cut]).unwrap();
            let e = read_back(&bad).unwrap_err();
            assert!(
                matches!(e, BackupError::Corrupt { .. }),
                "cut at {cut}: {e}"
            );
        }
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x40;
            std::fs::write(&bad, &b).unwrap();
            let e = read_back(&bad).unwrap_err();
            assert!(
                matches!(e, BackupError::Corrupt { .. }),
                "flip at {at}: {e}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        std::fs::write(&bad, &longer).unwrap();
        assert!(read_back(&bad).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_newer_version_is_refused_as_such() {
        let d = dir("version");
        let path = d.join("b.bak");
        let (header, state) = sample();
        let mut bytes = header.encode();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&state);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let e = BackupFile::open(&path).unwrap_err();
        assert!(matches!(e, BackupError::Version { version: 2, .. }), "{e}");
        assert!(e.to_string().contains("reads version 1"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_writer_keeps_nothing_unless_the_state_is_whole() {
        let d = dir("writer");
        let path = d.join("b.bak");
        let (header, state) = sample();
        // Too short: refused, no file.
        let mut w = BackupWriter::create(&path, &header).unwrap();
        w.write_all(&state[..3]).unwrap();
        assert!(matches!(w.finish(), Err(BackupError::Incomplete(_))));
        // Too long: the write is refused.
        let mut w = BackupWriter::create(&path, &header).unwrap();
        assert!(w.write_all(&[state.clone(), vec![0]].concat()).is_err());
        drop(w);
        // Dropped midway (a connection lost): no file.
        let mut w = BackupWriter::create(&path, &header).unwrap();
        w.write_all(&state[..5]).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }
}
