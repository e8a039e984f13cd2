//! Recovery after losing a quorum for good: `coracle node --force-new-cluster`.
//!
//! When a majority of a cluster's voters is gone for good (disks lost, machines gone), the
//! survivors can never commit again: Raft needs a majority. [`force_new_cluster`] restarts
//! one survivor as a **new cluster of one** from its own data: its `node.toml` names a new
//! `cluster_id`; the data directory is rewritten before the node starts
//! ([`FileLog::force_new_cluster`]: the new cluster id, a configuration of this node
//! alone appended in a new term, the whole log kept); the node then starts as usual, elects
//! itself and commits every entry it holds. Grow it again with learners
//! (`admin add-learner`, then `promote`).
//!
//! This gives up Raft's guarantees on purpose: writes the lost majority committed and the
//! survivor never received are lost, and writes never acknowledged may take effect. Recover
//! the survivor with the **longest log** (`admin status` or its `coracle_last_index`
//! before the loss; the `log recovered` line a node logs at start says `last`), and never
//! let a node of the old cluster rejoin the new one with its old data.
//!
//! ```no_run
//! use coracle_quic::config::NodeConfig;
//! use coracle_quic::recover::{force_new_cluster, ForceOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The survivor's node.toml with only its cluster_id changed.
//! let cfg = NodeConfig::load("recovered.toml".as_ref())?;
//! let done = force_new_cluster(&cfg, &ForceOptions::default())?;
//! eprintln!(
//!     "WARNING: forced cluster {} out of cluster {}: log through {} kept",
//!     done.new_cluster.cluster, done.new_cluster.old_cluster, done.new_cluster.kept_through
//! );
//! // Then start the node as always: Host::start(&cfg, state_machine).
//! # Ok(())
//! # }
//! ```
//!
//! # Safety checks
//!
//! Before anything is written, [`force_new_cluster`] refuses:
//! - a missing or empty data directory, another node's, or one that already belongs to the
//!   new `cluster_id` (it was not changed) ([`NewClusterError`]);
//! - a directory a running node holds, or a damaged one;
//! - when the old configuration may still have a quorum: it dials every other voter of the
//!   old configuration (the one the node would use: the newest in its log or snapshot,
//!   else `voters` and `[[peers]]` of its `node.toml`, so change only `cluster_id`) at
//!   its address in `[[peers]]`, as this node, with the old cluster id, and counts those
//!   that answer the node hello ([`hello::probe`]) within [`ForceOptions::probe_timeout`]. If those, this
//!   node and the voters whose address is unknown make a majority of the old configuration
//!   (of both halves while joint), the old cluster is alive or can be revived by starting
//!   this node normally: [`RecoverError::LiveQuorum`], unless
//!   [`ForceOptions::ignore_live_quorum`] (`--force-new-cluster` given twice).
//!
//! Opening the directory to read its configuration performs the repairs any start
//! performs (a torn last write cut, leftover temporary files removed, logged at WARN); the
//! Raft state (term, vote, entries, identity) is unchanged by a refusal.

use crate::certs::{node_server_name, Identity};
use crate::config::NodeConfig;
use crate::hello::{self, Greeting};
use crate::host::{node_credentials, CoreNode, NodeError};
use crate::storage::new_cluster::check_identity;
use crate::storage::{FileLog, FileLogError, Incarnations, NewCluster, NewClusterError};
use crate::tls::{self, TlsError};
use coracle::NodeId;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How [`force_new_cluster`] checks the old cluster.
#[derive(Clone, Debug)]
pub struct ForceOptions {
    /// How long a voter of the old configuration has to answer the probe (by default
    /// [`hello::HELLO_TIMEOUT`], 5 s: what a running node gives a peer's hello).
    pub probe_timeout: Duration,
    /// Go on even if a quorum of the old configuration may be alive (`--force-new-cluster`
    /// twice): two clusters with the same data then run side by side.
    pub ignore_live_quorum: bool,
}

impl Default for ForceOptions {
    fn default() -> Self {
        ForceOptions {
            probe_timeout: hello::HELLO_TIMEOUT,
            ignore_live_quorum: false,
        }
    }
}

/// What [`force_new_cluster`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// What was written ([`FileLog::force_new_cluster`]).
    pub new_cluster: NewCluster,
    /// The voters of the old configuration, this node included.
    pub old_voters: Vec<NodeId>,
    /// Those that answered the probe.
    pub answered: Vec<NodeId>,
    /// Those with no address in `[[peers]]`, not probed.
    pub unprobed: Vec<NodeId>,
}

/// Why [`force_new_cluster`] refused (nothing was changed) or failed.
#[derive(Debug)]
pub enum RecoverError {
    /// The data directory cannot be recovered, or its rewrite failed.
    Storage(NewClusterError),
    /// The node's certificates cannot be loaded, or are not this node's (the probe dials
    /// as this node).
    Certificates(NodeError),
    /// The probe's TLS configuration cannot be made.
    Tls(TlsError),
    /// The node's configuration or log cannot make a core node (to read the configuration).
    Core(String),
    /// The probe's socket cannot be opened.
    Io(std::io::Error),
    /// A quorum of the old configuration may be alive.
    LiveQuorum {
        /// The voters of the old configuration.
        voters: Vec<NodeId>,
        /// Those that answered.
        answered: Vec<NodeId>,
        /// Those that could not be asked (no address).
        unprobed: Vec<NodeId>,
    },
}

impl fmt::Display for RecoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoverError::Storage(e) => write!(f, "cannot force a new cluster: {e}"),
            RecoverError::Certificates(e) => write!(f, "cannot force a new cluster: {e}"),
            RecoverError::Tls(e) => write!(f, "cannot force a new cluster: {e}"),
            RecoverError::Core(e) => write!(f, "cannot force a new cluster: {e}"),
            RecoverError::Io(e) => write!(f, "cannot force a new cluster: probe socket: {e}"),
            RecoverError::LiveQuorum {
                voters,
                answered,
                unprobed,
            } => {
                write!(
                    f,
                    "refusing to force a new cluster: the old configuration (voters {voters:?}) \
                     may still have a quorum: {answered:?} answered"
                )?;
                if !unprobed.is_empty() {
                    write!(
                        f,
                        ", {unprobed:?} have no address in [[peers]] and could not be asked"
                    )?;
                }
                write!(
                    f,
                    ". Start this node normally (with its old node.toml) to rejoin it. Only if \
                     you are sure the old cluster must be abandoned, give --force-new-cluster \
                     twice (two clusters with the same data will then run side by side). \
                     Nothing was changed"
                )
            }
        }
    }
}

impl std::error::Error for RecoverError {}

impl From<NewClusterError> for RecoverError {
    fn from(e: NewClusterError) -> Self {
        RecoverError::Storage(e)
    }
}

impl From<FileLogError> for RecoverError {
    fn from(e: FileLogError) -> Self {
        RecoverError::Storage(NewClusterError::Storage(e))
    }
}

/// The voters of the configuration the node `cfg` would use on its next start (the newest
/// in its log or snapshot, else its `[[peers]]`), as `(new half, old half while joint)`,
/// this node included; and the directory's incarnation. The directory must belong to
/// `cluster`.
fn old_configuration(
    cfg: &NodeConfig,
    cluster: u64,
) -> Result<(Vec<NodeId>, Vec<NodeId>, u64), RecoverError> {
    let log = FileLog::open_with(&cfg.data_dir, cfg.log_options().member(cluster, cfg.id))?;
    log.check_complete()?;
    for w in log.recovery().warnings() {
        tracing::warn!(node = cfg.id, "recovery: {w}");
    }
    let memory = log.recover(cfg.memory_log_bytes())?;
    let mut raft = cfg.raft_config(0);
    raft.max_entry_bytes = raft.max_entry_bytes.saturating_add(1);
    let node = CoreNode::new(raft, memory, &cfg.voters())
        .map_err(|e| RecoverError::Core(e.to_string()))?;
    let voters = node.members().filter(|m| m.voter).map(|m| m.id).collect();
    let outgoing = node
        .members()
        .filter(|m| m.voter_outgoing)
        .map(|m| m.id)
        .collect();
    Ok((voters, outgoing, log.identity().incarnation))
}

/// Dials every voter of `peers` and returns those that answer the hello of `cluster`
/// within `timeout` (all at once).
async fn probe_all(
    cfg: &NodeConfig,
    greeting: Arc<Greeting>,
    peers: Vec<(NodeId, SocketAddr)>,
    timeout: Duration,
) -> Result<Vec<NodeId>, RecoverError> {
    let creds = node_credentials(cfg).map_err(RecoverError::Certificates)?;
    let client = tls::client_config(&creds, &cfg.quic()).map_err(RecoverError::Tls)?;
    let bind: SocketAddr = match cfg.listen {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = crate::transport::bind_udp(bind).map_err(RecoverError::Io)?;
    let endpoint = quinn::Endpoint::new(
        tls::endpoint_config(),
        None,
        socket,
        Arc::new(quinn::SmolRuntime),
    )
    .map_err(RecoverError::Io)?;
    let asks: Vec<_> = peers
        .into_iter()
        .map(|(id, addr)| {
            let (endpoint, client, greeting) = (endpoint.clone(), client.clone(), greeting.clone());
            smol::spawn(async move {
                let ask = async {
                    let conn = endpoint
                        .connect_with(client, addr, &node_server_name(id))
                        .ok()?
                        .await
                        .ok()?;
                    let answered = tls::peer_identity(&conn) == Some(Identity::Node(id))
                        && hello::probe(&greeting, id, &conn).await;
                    answered.then_some(id)
                };
                let late = async {
                    smol::Timer::after(timeout).await;
                    None
                };
                smol::future::or(ask, late).await
            })
        })
        .collect();
    let mut answered = Vec::new();
    for ask in asks {
        answered.extend(ask.await);
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"probe done");
    Ok(answered)
}

/// Restarts the node of `cfg` as a new cluster of one from its own data directory, as the
/// [module docs](self) say: checks, probes the old configuration's voters, then rewrites
/// the directory ([`FileLog::force_new_cluster`]). Call it before starting the node
/// ([`Host::start`](crate::host::Host::start)) with the same `cfg`; `cfg.cluster_id`
/// must be the new cluster's. Blocks (for at most about `options.probe_timeout`).
pub fn force_new_cluster(
    cfg: &NodeConfig,
    options: &ForceOptions,
) -> Result<Recovered, RecoverError> {
    let found = check_identity(&cfg.data_dir, cfg.cluster_id, cfg.id)?;
    let (voters, outgoing, incarnation) = old_configuration(cfg, found.cluster)?;
    let mut others = others_with(&voters, &outgoing);
    others.retain(|&id| id != cfg.id);
    let (known, unprobed): (Vec<NodeId>, Vec<NodeId>) = others
        .iter()
        .partition(|&&id| cfg.peers.iter().any(|p| p.id == id));
    let peers = known
        .iter()
        .filter_map(|&id| cfg.peers.iter().find(|p| p.id == id).map(|p| (id, p.addr)))
        .collect();
    // The probe reads nothing from the book and writes nothing to it.
    let book = Arc::new(Incarnations::open(&cfg.data_dir)?);
    let greeting = Arc::new(Greeting::new(found.cluster, cfg.id, incarnation, book));
    let answered = smol::block_on(probe_all(cfg, greeting, peers, options.probe_timeout))?;
    let quorum = may_have_quorum(&voters, &outgoing, cfg.id, &answered, &unprobed);
    if quorum && !options.ignore_live_quorum {
        return Err(RecoverError::LiveQuorum {
            voters: others_with(&voters, &outgoing),
            answered,
            unprobed,
        });
    }
    let new_cluster =
        FileLog::force_new_cluster(&cfg.data_dir, cfg.log_options(), cfg.cluster_id, cfg.id)?;
    Ok(Recovered {
        new_cluster,
        old_voters: others_with(&voters, &outgoing),
        answered,
        unprobed,
    })
}

/// May the old configuration (`voters`, and `outgoing` while joint) still have a quorum?
/// Counted as alive: this node `me` (started normally, it would rejoin them), the voters
/// that `answered` and those `unprobed` (they may be alive). While joint, a quorum needs a
/// majority of each half.
fn may_have_quorum(
    voters: &[NodeId],
    outgoing: &[NodeId],
    me: NodeId,
    answered: &[NodeId],
    unprobed: &[NodeId],
) -> bool {
    let alive = |id: &&NodeId| **id == me || answered.contains(id) || unprobed.contains(id);
    let majority = |half: &[NodeId]| half.iter().filter(alive).count() * 2 > half.len();
    majority(voters) && (outgoing.is_empty() || majority(outgoing))
}

/// The voters of both halves, sorted, once each.
fn others_with(voters: &[NodeId], outgoing: &[NodeId]) -> Vec<NodeId> {
    let mut all: Vec<NodeId> = voters.iter().chain(outgoing).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::may_have_quorum;

    #[test]
    fn a_quorum_counts_this_node_the_answers_and_the_voters_not_asked() {
        let five = [1, 2, 3, 4, 5];
        // Two survivors of five: no quorum, whoever answers of the lost.
        assert!(!may_have_quorum(&five, &[], 1, &[2], &[]));
        assert!(!may_have_quorum(&five, &[], 1, &[], &[]));
        // Three with this node: alive (restart it normally instead).
        assert!(may_have_quorum(&five, &[], 1, &[2, 3], &[]));
        // A voter that could not be asked counts as alive.
        assert!(may_have_quorum(&five, &[], 1, &[2], &[3]));
        // A learner (not a voter) recovered: only the voters count.
        assert!(!may_have_quorum(&[2, 3, 4], &[], 9, &[2], &[]));
        assert!(may_have_quorum(&[2, 3, 4], &[], 9, &[2, 3], &[]));
        // Joint: a majority of each half.
        assert!(!may_have_quorum(&[1, 2, 3], &[3, 4, 5], 1, &[2], &[]));
        assert!(may_have_quorum(&[1, 2, 3], &[3, 4, 5], 1, &[2, 3, 4], &[]));
        assert!(!may_have_quorum(&[1, 2, 3], &[1, 4, 5], 1, &[2, 3], &[]));
    }
}
