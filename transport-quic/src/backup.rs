//! Backups of a cluster's state and restores into a new cluster.
//!
//! `coracle admin snapshot save FILE` asks a node for a [`Backup`] ([`AdminOp::Backup`]):
//! the node first serves a linearizable read (ReadIndex: on a follower, the leader
//! confirms it), then copies its state machine as applied at that moment, so the backup
//! holds every write acknowledged before it was asked. `coracle node restore FILE`
//! seeds the data directory of a node of a **new** cluster from it
//! ([`restore_kv`]): the backup's state becomes the directory's kept snapshot, with the
//! new node's cluster id and the members of its `node.toml` (the snapshot's configuration
//! is left empty, which means the bootstrap members). A restore into the cluster id the
//! backup came from is refused: the cluster id is in every node's hello, so nodes of the
//! two clusters refuse each other even with certificates of the same CA.
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
//! is the taking node's term (at least that of the entry at `index`). The CRC-32 covers
//! every byte before it; the file must be exactly as long as its lengths say.
//!
//! A backup is answered in one client frame, so a state is at most
//! [`MAX_CLIENT_FRAME`](crate::protocol::MAX_CLIENT_FRAME) (16 MiB) less a few bytes.

use crate::config::NodeConfig;
use crate::kv::Kv;
#[cfg(doc)]
use crate::protocol::AdminOp;
use crate::storage::{FileLog, FileLogError};
use coracle::{Index, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"CORABKUP";
/// Version of the backup file format.
pub const VERSION: u32 = 1;
/// Bytes before the members.
const FIXED: usize = 40;
/// Largest member list accepted (a corrupted length is refused before it is allocated).
const MAX_MEMBERS_LEN: u32 = 1 << 20;

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

/// A consistent copy of a cluster's state ([module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// The cluster it was taken from.
    pub cluster: u64,
    /// Every entry through this index is applied in `state`.
    pub index: Index,
    /// The taking node's term.
    pub term: Term,
    /// The configuration in force.
    pub members: Vec<BackupMember>,
    /// The state machine's snapshot bytes.
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
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

impl Backup {
    /// The backup as its file holds it.
    pub fn encode(&self) -> Vec<u8> {
        // A list of ids, flags and strings always encodes.
        let members = postcard::to_allocvec(&self.members).unwrap_or_default();
        let mut b = Vec::with_capacity(FIXED + members.len() + 12 + self.state.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.cluster.to_le_bytes());
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&self.term.to_le_bytes());
        b.extend_from_slice(&(members.len() as u32).to_le_bytes());
        b.extend_from_slice(&members);
        b.extend_from_slice(&(self.state.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.state);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads a backup from the bytes of its file (`path` names it in errors): the checksum,
    /// every length and the members are checked.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Backup, BackupError> {
        let corrupt = |offset: usize, reason: &str| BackupError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason: reason.into(),
        };
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(corrupt(0, "not a coracle backup file"));
        }
        if bytes.len() < FIXED + 12 {
            return Err(corrupt(bytes.len(), "the file is truncated"));
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let body = bytes.len() - 4;
        if crc32fast::hash(&bytes[..body]) != u32_at(body) {
            return Err(corrupt(
                body,
                "checksum mismatch (the file is truncated or damaged)",
            ));
        }
        let version = u32_at(8);
        if version != VERSION {
            return Err(BackupError::Version {
                path: path.to_path_buf(),
                version,
            });
        }
        let (cluster, index, term) = (u64_at(12), u64_at(20), u64_at(28));
        let members_len = u32_at(36);
        if members_len > MAX_MEMBERS_LEN || FIXED + members_len as usize + 12 > bytes.len() {
            return Err(corrupt(36, "the members' length does not fit the file"));
        }
        let members_end = FIXED + members_len as usize;
        let members: Vec<BackupMember> = postcard::from_bytes(&bytes[FIXED..members_end])
            .map_err(|e| corrupt(FIXED, &format!("the members do not decode: {e}")))?;
        let state_len = u64_at(members_end);
        let state_at = members_end + 8;
        if (body - state_at) as u64 != state_len {
            return Err(corrupt(
                members_end,
                "the state's length does not fit the file",
            ));
        }
        if index == 0 {
            return Err(corrupt(20, "index 0: a backup holds at least one entry"));
        }
        Ok(Backup {
            cluster,
            index,
            term,
            members,
            state: bytes[state_at..body].to_vec(),
        })
    }

    /// Writes the backup to `path` durably and atomically: into `path.tmp`, fsynced, then
    /// renamed over `path` (a crash leaves the old file or the new one whole).
    pub fn save(&self, path: &Path) -> Result<(), BackupError> {
        let io = |op| {
            move |source| BackupError::Io {
                path: path.to_path_buf(),
                op,
                source,
            }
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&self.encode())?;
            file.sync_all()
        })();
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("write")(e));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("sync the directory of"))?;
        }
        Ok(())
    }

    /// Reads and checks the backup file at `path`.
    pub fn load(path: &Path) -> Result<Backup, BackupError> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|source| BackupError::Io {
                path: path.to_path_buf(),
                op: "read",
                source,
            })?;
        Backup::decode(&bytes, path)
    }

    /// Seeds the data directory of the node `cfg` (missing or empty) with this backup's
    /// state, as a node of the new cluster `cfg.cluster_id` whose members are those of
    /// `cfg`. Checks nothing of the state itself ([`restore_kv`] does, for the KV store).
    pub fn seed(&self, cfg: &NodeConfig) -> Result<(), BackupError> {
        if cfg.cluster_id == self.cluster {
            return Err(BackupError::SameCluster(self.cluster));
        }
        let meta = SnapshotMeta::new(self.index, self.term, &[])
            .ok_or_else(|| BackupError::BadState("no snapshot metadata".into()))?;
        // The host's part of a snapshot, with no addresses: the new members' are in cfg.
        let head = crate::host::snapshot_head(&Default::default());
        let mut data = head.as_slice().chain(self.state.as_slice());
        FileLog::seed(&cfg.data_dir, cfg.log_options(), &meta, &mut data)
            .map_err(BackupError::Storage)
    }
}

/// Restores the KV backup at `path` into the data directory of the node `cfg`: reads and
/// checks the file (checksum, format, and that its state is a KV store at its index), then
/// [`Backup::seed`]s the directory. On any error nothing was changed. Returns the backup.
pub fn restore_kv(path: &Path, cfg: &NodeConfig) -> Result<Backup, BackupError> {
    let backup = Backup::load(path)?;
    let kv = Kv::restore(&backup.state).map_err(|e| BackupError::BadState(e.to_string()))?;
    if kv.applied() != backup.index {
        return Err(BackupError::BadState(format!(
            "the backup at index {} holds a KV store at index {}",
            backup.index,
            kv.applied()
        )));
    }
    backup.seed(cfg)?;
    Ok(backup)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Backup {
        Backup {
            cluster: 7,
            index: 42,
            term: 3,
            members: vec![BackupMember {
                id: 1,
                voter: true,
                address: Some("127.0.0.1:7001".into()),
            }],
            state: b"state bytes".to_vec(),
        }
    }

    #[test]
    fn a_backup_reads_back_and_every_damage_is_refused() {
        let b = sample();
        let bytes = b.encode();
        let path = Path::new("b.bak");
        assert_eq!(Backup::decode(&bytes, path).unwrap(), b);
        for cut in 0..bytes.len() {
            assert!(Backup::decode(&bytes[..cut], path).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            let e = Backup::decode(&bad, path).unwrap_err();
            assert!(
                matches!(e, BackupError::Corrupt { .. }),
                "flip at {at}: {e}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Backup::decode(&longer, path).is_err());
    }
}
