//! Recovery after losing a quorum for good: a survivor's data directory made the directory
//! of a **new cluster of one** (etcd's `--force-new-cluster`, its
//! `restartAsStandaloneNode`), as one operation on the durable state before the node
//! starts ([`FileLog::force_new_cluster`]).
//!
//! What it does, in this order (each step durable before the next):
//!
//! 1. checks the directory: it exists and was initialised (an `identity`), it is this
//!    node's, its cluster is not the new one, and it opens whole
//!    ([`FileLog::check_complete`]);
//! 2. writes a new identity: the new cluster id and a new incarnation (the cluster id is in
//!    every hello, so the nodes of the old cluster and this one refuse each other from now
//!    on), and forgets the incarnations of the old members (file `incarnations`), so
//!    nodes added to the new cluster under an old member's id are taken;
//! 3. appends, after the last entry, a configuration entry whose only member is this
//!    node, a voter ([`coracle::membership::sole_voter`]), in a new term (one above the
//!    hard state's and the last entry's), with the hard state in that term and no vote.
//!
//! On its next start the node is the only voter of the configuration in use: it elects
//! itself, and the no-op of its first term commits **every entry of its log**, the
//! configuration entry included. Entries past the commit index the node knew are kept, not
//! cut (etcd cuts them): the node's own commit index is not durable, and a write the old
//! leader acknowledged once a majority held it may be one this node holds without having
//! learned that it committed. Keeping them keeps every acknowledged write the survivor
//! holds; the price is that writes never acknowledged (their clients saw a timeout or
//! `OutcomeUnknown`) may take effect too, as any uncommitted entry may under a new leader.
//!
//! A refusal (step 1) changes nothing. A crash during step 2 or 3 leaves a directory of
//! the new cluster id with the old configuration, which no node of either cluster talks to:
//! run the recovery again with yet another new cluster id.

use super::error::{io_err, FileLogError};
use super::{dir, identity, incarnations, DirIdentity, FileLog, Options};
use coracle::{Batch, Entries, Entry, EntryKind, HardState, Index, NodeId, SyncToken, Term};
use std::fmt;
use std::path::{Path, PathBuf};

/// What [`FileLog::force_new_cluster`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewCluster {
    /// The cluster the directory belonged to.
    pub old_cluster: u64,
    /// The cluster it belongs to now.
    pub cluster: u64,
    /// The last index of the log before the recovery: every entry through it is kept, and
    /// committed once the node has elected itself.
    pub kept_through: Index,
    /// Index of the configuration entry appended (`kept_through + 1`).
    pub index: Index,
    /// Its term, the node's term from now on.
    pub term: Term,
}

/// Why [`FileLog::force_new_cluster`] refused (nothing was changed) or failed.
#[derive(Debug)]
pub enum NewClusterError {
    /// There is no data directory: there is nothing to recover from.
    NoDirectory(PathBuf),
    /// The directory was never a node's (empty, or no identity file).
    NotInitialised(PathBuf),
    /// The directory is another node's.
    OtherNode {
        /// The directory.
        dir: PathBuf,
        /// Whose it is.
        found: DirIdentity,
        /// The node being recovered.
        node: NodeId,
    },
    /// The new cluster id is the directory's own: a recovery starts a new cluster, whose id
    /// must differ so that the old cluster's nodes never talk to it.
    SameCluster(u64),
    /// The directory cannot be opened (damaged, locked by a running node) or written.
    Storage(FileLogError),
}

impl fmt::Display for NewClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NewClusterError::NoDirectory(d) => write!(
                f,
                "data directory {} does not exist: there is nothing to recover a cluster from \
                 (point data_dir at the survivor's directory)",
                d.display()
            ),
            NewClusterError::NotInitialised(d) => write!(
                f,
                "data directory {} holds no node's state (empty, or no identity file): there is \
                 nothing to recover a cluster from (point data_dir at the survivor's directory)",
                d.display()
            ),
            NewClusterError::OtherNode { dir, found, node } => write!(
                f,
                "data directory {} belongs to node {} of cluster {}, not to node {node}",
                dir.display(),
                found.node,
                found.cluster
            ),
            NewClusterError::SameCluster(id) => write!(
                f,
                "the data directory already belongs to cluster {id}, the cluster_id of this \
                 node.toml: --force-new-cluster starts a NEW cluster, give it a new cluster_id \
                 (so the old cluster's nodes never talk to it). If this directory was already \
                 recovered into cluster {id}, start the node without --force-new-cluster; if \
                 that recovery was interrupted (the node does not lead alone), run it again \
                 with yet another cluster_id"
            ),
            NewClusterError::Storage(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for NewClusterError {}

impl From<FileLogError> for NewClusterError {
    fn from(e: FileLogError) -> Self {
        NewClusterError::Storage(e)
    }
}

/// The checks of step 1 that need no open: returns the directory's identity.
pub(crate) fn check_identity(
    dir: &Path,
    cluster: u64,
    node: NodeId,
) -> Result<DirIdentity, NewClusterError> {
    if !dir.is_dir() {
        return Err(NewClusterError::NoDirectory(dir.to_path_buf()));
    }
    let found =
        identity::read(dir)?.ok_or_else(|| NewClusterError::NotInitialised(dir.to_path_buf()))?;
    if found.node != node {
        return Err(NewClusterError::OtherNode {
            dir: dir.to_path_buf(),
            found,
            node,
        });
    }
    if found.cluster == cluster {
        return Err(NewClusterError::SameCluster(cluster));
    }
    Ok(found)
}

impl FileLog {
    /// Makes the data directory `dir` of node `node` the directory of a new cluster
    /// `cluster` whose only member is `node`, a voter, keeping its whole log
    /// ([module docs](self): what it does, what is kept, the refusals). `options` are
    /// the log's settings (its [`Options::member`] is ignored). The directory must not be
    /// open (a running node holds its lock: [`FileLogError::Locked`]).
    ///
    /// Only for a cluster whose majority is lost for good: a recovered node that meets a
    /// quorum of its old cluster again would be a second cluster with the same data. The
    /// host's [`recover`](crate::recover) checks first that the old voters do not answer.
    pub fn force_new_cluster(
        dir: &Path,
        options: Options,
        cluster: u64,
        node: NodeId,
    ) -> Result<NewCluster, NewClusterError> {
        let found = check_identity(dir, cluster, node)?;
        let mut log = FileLog::open_with(dir, options.clone().member(found.cluster, node))?;
        log.check_complete()?;
        let last = log.last_index();
        let last_term = log
            .term(last)
            .or(log.snapshot_point().map(|(_, t)| t))
            .unwrap_or(0);
        let term = log.hard_state().current_term.max(last_term) + 1;
        // Step 2: from here on, no node of the old cluster talks to this one.
        identity::write(dir, &DirIdentity::new(cluster, node))?;
        let book = dir.join(incarnations::FILE);
        if book.exists() {
            std::fs::remove_file(&book).map_err(io_err(&book, "remove"))?;
            dir::sync_dir(dir)?;
        }
        // Step 3: the configuration of one, in a term of its own.
        let config = coracle::membership::sole_voter(node);
        let entry = [Entry {
            index: last + 1,
            term,
            kind: EntryKind::Membership,
            data: &config,
        }];
        log.persist(&Batch {
            token: SyncToken(0),
            hard_state: Some(HardState {
                current_term: term,
                voted_for: None,
            }),
            snapshot_chunk: None,
            snapshot: None,
            reset: None,
            truncate_from: None,
            entries: Entries::from_slice(&entry),
            compact_through: None,
        });
        log.flush().map_err(|source| {
            log.last_error.take().unwrap_or(FileLogError::Io {
                path: dir.to_path_buf(),
                op: "write the configuration entry",
                source,
            })
        })?;
        drop(log);
        // Opened as the node will open it.
        let log = FileLog::open_with(dir, options.member(cluster, node))?;
        log.check_complete()?;
        debug_assert_eq!(log.last_index(), last + 1);
        debug_assert_eq!(log.hard_state().current_term, term);
        Ok(NewCluster {
            old_cluster: found.cluster,
            cluster,
            kept_through: last,
            index: last + 1,
            term,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("coracle-newc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A directory of node 1 of cluster 7: term 3, entries 1..=5 (a configuration of three
    /// voters at 1), the last two never known to be committed.
    fn survivor(d: &Path) {
        let mut log = FileLog::open_with(d, Options::new().member(7, 1)).unwrap();
        let three: Vec<u8> = [1u64, 2, 3]
            .into_iter()
            .flat_map(coracle::membership::sole_voter)
            .collect();
        let entries: Vec<Entry<'_>> = (1..=5)
            .map(|i| Entry {
                index: i,
                term: if i < 4 { 2 } else { 3 },
                kind: if i == 1 {
                    EntryKind::Membership
                } else {
                    EntryKind::Command
                },
                data: if i == 1 { &three } else { b"Cwrite" },
            })
            .collect();
        log.persist(&Batch {
            token: SyncToken(0),
            hard_state: Some(HardState {
                current_term: 3,
                voted_for: Some(2),
            }),
            snapshot_chunk: None,
            snapshot: None,
            reset: None,
            truncate_from: None,
            entries: Entries::from_slice(&entries),
            compact_through: None,
        });
        log.flush().unwrap();
        std::fs::write(d.join(incarnations::FILE), b"stand-in").unwrap();
    }

    /// Every file of `d` with its bytes.
    fn files(d: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
            .collect()
    }

    #[test]
    fn the_survivor_becomes_the_sole_voter_of_a_new_cluster_with_its_whole_log() {
        let d = dir("ok");
        survivor(&d);
        let old = FileLog::open_with(&d, Options::new()).unwrap().identity();
        let done = FileLog::force_new_cluster(&d, Options::new().member(7, 1), 8, 1).unwrap();
        assert_eq!(
            done,
            NewCluster {
                old_cluster: 7,
                cluster: 8,
                kept_through: 5,
                index: 6,
                term: 4
            }
        );
        assert!(
            !d.join(incarnations::FILE).exists(),
            "old incarnations kept"
        );
        // The old cluster's id no longer opens it; the new one does.
        assert!(FileLog::open_with(&d, Options::new().member(7, 1)).is_err());
        let log = FileLog::open_with(&d, Options::new().member(8, 1)).unwrap();
        assert_ne!(log.identity().incarnation, old.incarnation);
        assert_eq!(
            log.hard_state(),
            HardState {
                current_term: 4,
                voted_for: None
            }
        );
        let entries = log.reader().entries(1, 6, usize::MAX).unwrap();
        assert_eq!(entries.len(), 6, "every entry kept");
        let last = entries[5].as_entry();
        assert_eq!(
            (last.index, last.term, last.kind),
            (6, 4, EntryKind::Membership)
        );
        let members: Vec<_> = coracle::membership::decode(last.data).unwrap().collect();
        assert_eq!(members.len(), 1);
        assert_eq!((members[0].id, members[0].voter), (1, true));
        drop(log);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn every_refusal_leaves_the_directory_as_it_was() {
        let d = dir("refused");
        survivor(&d);
        let before = files(&d);
        let same = FileLog::force_new_cluster(&d, Options::new(), 7, 1).unwrap_err();
        assert!(matches!(same, NewClusterError::SameCluster(7)), "{same}");
        assert!(same.to_string().contains("new cluster_id"), "{same}");
        let other = FileLog::force_new_cluster(&d, Options::new(), 8, 2).unwrap_err();
        assert!(
            matches!(other, NewClusterError::OtherNode { .. }),
            "{other}"
        );
        let open = FileLog::open_with(&d, Options::new()).unwrap();
        let locked = FileLog::force_new_cluster(&d, Options::new(), 8, 1).unwrap_err();
        assert!(
            matches!(locked, NewClusterError::Storage(FileLogError::Locked(_))),
            "{locked}"
        );
        drop(open);
        assert_eq!(files(&d), before);
        let _ = std::fs::remove_dir_all(&d);

        let missing = FileLog::force_new_cluster(&d, Options::new(), 8, 1).unwrap_err();
        assert!(
            matches!(missing, NewClusterError::NoDirectory(_)),
            "{missing}"
        );
        assert!(!d.exists(), "a missing directory was created");
        std::fs::create_dir_all(&d).unwrap();
        let empty = FileLog::force_new_cluster(&d, Options::new(), 8, 1).unwrap_err();
        assert!(
            matches!(empty, NewClusterError::NotInitialised(_)),
            "{empty}"
        );
        assert!(files(&d).is_empty(), "an empty directory was written to");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_interrupted_recovery_is_run_again_with_another_cluster_id() {
        let d = dir("interrupted");
        survivor(&d);
        // A crash after step 2: the new cluster id, the old configuration.
        identity::write(&d, &DirIdentity::new(8, 1)).unwrap();
        let again = FileLog::force_new_cluster(&d, Options::new(), 8, 1).unwrap_err();
        assert!(matches!(again, NewClusterError::SameCluster(8)), "{again}");
        assert!(again.to_string().contains("yet another"), "{again}");
        let done = FileLog::force_new_cluster(&d, Options::new(), 9, 1).unwrap();
        assert_eq!((done.old_cluster, done.cluster, done.index), (8, 9, 6));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_directory_is_refused_unchanged() {
        let d = dir("damaged");
        survivor(&d);
        std::fs::remove_file(d.join(super::super::hard_state::FILE)).unwrap();
        let before = files(&d);
        let e = FileLog::force_new_cluster(&d, Options::new(), 8, 1).unwrap_err();
        assert!(
            matches!(e, NewClusterError::Storage(FileLogError::Damaged { .. })),
            "{e}"
        );
        assert_eq!(files(&d), before);
        let _ = std::fs::remove_dir_all(&d);
    }
}
