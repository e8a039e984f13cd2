//! Safety oracles: the properties of Raft (Figure 3 of the paper) and of a correct host,
//! checked incrementally after every step of a simulation.
//!
//! The simulator reports what it observes ("node 2 is leader of term 5", "node 3 appended
//! entry 7 of term 5", "node 1's commit index is 9", "node 4 applied entry 6") and
//! [`Oracles`] records a [`Violation`] the moment a property breaks:
//!
//! - **Election Safety**: at most one leader per term.
//! - **Leader Append-Only**: a leader never truncates or overwrites its log during its term.
//! - **Log Matching**: two logs with an entry of the same index and term hold the same
//!   entries up to it (checked with the chain hashes of [`EntryId`]).
//! - **Leader Completeness**: a leader of term `T` holds every entry committed in a term
//!   below `T`.
//! - **State Machine Safety**: no two nodes commit or apply different entries at an index.
//! - the commit index of a node never decreases within one incarnation, and never falls
//!   below its applied index;
//! - each entry is applied once and in order (per state-machine incarnation), and only once
//!   it is committed;
//! - **Durability**: the committed prefix, which includes every entry whose result was
//!   acknowledged to a client, stays on the durable storage of a majority whatever crashes.
//!
//! - **Snapshots**: a snapshot installed from a leader ends with the committed entry at its
//!   index; the state machine restored from a snapshot, and after every applied entry, is
//!   the same on every node at the same index (compared by digest, so State Machine Safety
//!   holds across compacted logs);
//! - **Storage contract**: the batches a node hands out, performed in order, make its
//!   host's store hold what its memory log holds; what it reports durable is on the
//!   durable store; once its host reported a failed write it says so and acknowledges
//!   nothing more (no vote, no answer to an append or a snapshot chunk, no batch). The
//!   simulator checks these and reports [`Violation::Storage`].
//! - **Membership**: a leader, candidate or pre-candidate is a voter of the configuration
//!   it uses (or of the old half while joint; a leader whose own removal is not committed
//!   yet still leads); a leader commits an index only once a quorum of the configuration
//!   it uses (both halves while joint) holds it durably; Durability counts that quorum.
//!
//! Logs may be compacted: where an index is compacted away, the chain hash at the
//! compaction point stands for the whole prefix through it.
//!
//! Every check costs O(1) or O(log n) per observation, so they can run after every event.
//!
//! ```
//! use coracle_tests::oracle::{Oracles, Violation};
//! use coracle_tests::sim::LogImage;
//!
//! let mut oracles = Oracles::new(&[1, 2, 3]);
//! let log = LogImage::new();
//! oracles.became_leader(1, 4, &log);
//! oracles.became_leader(2, 4, &log); // a second leader in term 4
//! assert!(matches!(oracles.violations()[0], Violation::ElectionSafety { term: 4, .. }));
//! ```

use coracle::{Index, NodeId, Term};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Identifies an entry and, through its chain hash, every entry before it in its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryId {
    /// The entry's term.
    pub term: Term,
    /// Hash of the entry chained with the hashes of all entries before it.
    pub chain: u64,
}

/// A read-only view of a log, as the oracles need it.
pub trait LogView {
    /// Index of the last entry.
    fn last_index(&self) -> Index;
    /// The id of the entry at `index` (`index` 0 is the empty prefix); `None` if the log
    /// does not hold it.
    fn entry_id(&self, index: Index) -> Option<EntryId>;
    /// The last index compacted away (its id is still known); 0 if none.
    fn compacted_index(&self) -> Index {
        0
    }
}

/// A broken property, with what is needed to understand it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two nodes were leaders in the same term.
    ElectionSafety {
        /// The term.
        term: Term,
        /// The leader seen first.
        first: NodeId,
        /// The other leader.
        second: NodeId,
    },
    /// A leader removed entries from its log during its term.
    LeaderAppendOnly {
        /// The leader.
        node: NodeId,
        /// Its term.
        term: Term,
        /// Its last index before the step.
        last_before: Index,
        /// Its last index after the step.
        last_after: Index,
    },
    /// Two logs hold entries of the same index and term with different prefixes.
    LogMatching {
        /// The index.
        index: Index,
        /// The term.
        term: Term,
        /// The node that first held the entry.
        first: NodeId,
        /// The node whose entry differs.
        second: NodeId,
    },
    /// A leader lacks an entry committed in an earlier term.
    LeaderCompleteness {
        /// The leader.
        leader: NodeId,
        /// Its term.
        term: Term,
        /// The first committed index it does not hold.
        index: Index,
    },
    /// A node committed or applied an entry other than the one committed at that index.
    StateMachineSafety {
        /// The node.
        node: NodeId,
        /// The index.
        index: Index,
        /// Term of the entry committed first at the index.
        committed_term: Term,
        /// Term of the node's entry (0 if it has none).
        node_term: Term,
        /// "commit" or "apply".
        what: &'static str,
    },
    /// A node's commit index went down within one incarnation.
    CommitDecreased {
        /// The node.
        node: NodeId,
        /// The earlier commit index.
        from: Index,
        /// The later, smaller one.
        to: Index,
    },
    /// A node's commit index is beyond its log.
    CommitBeyondLog {
        /// The node.
        node: NodeId,
        /// Its commit index.
        commit: Index,
        /// Its last index.
        last: Index,
    },
    /// A node applied an entry twice, or skipped one.
    AppliedOutOfOrder {
        /// The node.
        node: NodeId,
        /// The index expected next.
        expected: Index,
        /// The index applied.
        got: Index,
    },
    /// A node applied an entry that was not durable on its own storage.
    AppliedNotDurable {
        /// The node.
        node: NodeId,
        /// The index.
        index: Index,
    },
    /// The committed prefix is no longer durable on a majority: acknowledged writes can
    /// be lost.
    Durability {
        /// The last committed index.
        committed: Index,
        /// The highest index whose result was acknowledged to a client.
        acknowledged: Index,
        /// Nodes whose durable log holds the committed prefix.
        holders: usize,
        /// Nodes needed (a majority).
        needed: usize,
    },
    /// A node could not be restarted from its durable state.
    RestartFailed {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// A node led or campaigned while not a voter of the configuration it uses.
    NotAVoter {
        /// The node.
        node: NodeId,
        /// Its term.
        term: Term,
        /// "leader", "candidate" or "pre-candidate".
        role: &'static str,
    },
    /// A leader committed an index that no quorum of its configuration holds durably.
    CommitWithoutQuorum {
        /// The leader.
        node: NodeId,
        /// Its term.
        term: Term,
        /// The index committed.
        index: Index,
        /// The voters (new half while joint) that hold it.
        holders: Vec<NodeId>,
        /// The voters of the configuration (then the old half while joint).
        voters: Vec<NodeId>,
    },
    /// A node's state machine differs from another's at the same applied index.
    StateDiverged {
        /// The node.
        node: NodeId,
        /// The applied index.
        index: Index,
        /// "apply" or "restore".
        what: &'static str,
    },
    /// A node broke the storage contract: its batches do not rebuild its memory log on the
    /// store, it reported durable what the store does not hold, or it acknowledged after
    /// its storage failed.
    Storage {
        /// The node.
        node: NodeId,
        /// What went wrong.
        what: String,
    },
    /// After every fault healed, the cluster did not make progress in time.
    Liveness {
        /// What did not happen.
        what: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::ElectionSafety {
                term,
                first,
                second,
            } => write!(
                f,
                "Election Safety: nodes {first} and {second} were both leaders of term {term}"
            ),
            Violation::LeaderAppendOnly {
                node,
                term,
                last_before,
                last_after,
            } => write!(
                f,
                "Leader Append-Only: leader {node} of term {term} rewrote its log \
                 (last index {last_before} -> {last_after})"
            ),
            Violation::LogMatching {
                index,
                term,
                first,
                second,
            } => write!(
                f,
                "Log Matching: nodes {first} and {second} hold entry {index} of term {term} \
                 with different prefixes"
            ),
            Violation::LeaderCompleteness {
                leader,
                term,
                index,
            } => write!(
                f,
                "Leader Completeness: leader {leader} of term {term} lacks committed entry {index}"
            ),
            Violation::StateMachineSafety {
                node,
                index,
                committed_term,
                node_term,
                what,
            } => write!(
                f,
                "State Machine Safety: node {node} {what}s an entry of term {node_term} at \
                 index {index}, where an entry of term {committed_term} was committed"
            ),
            Violation::CommitDecreased { node, from, to } => {
                write!(
                    f,
                    "commit index of node {node} went down from {from} to {to}"
                )
            }
            Violation::CommitBeyondLog { node, commit, last } => write!(
                f,
                "commit index {commit} of node {node} is beyond its last index {last}"
            ),
            Violation::AppliedOutOfOrder {
                node,
                expected,
                got,
            } => {
                let how = if got < expected {
                    "again"
                } else {
                    "out of order"
                };
                write!(
                    f,
                    "node {node} applied entry {got} {how} (expected {expected})"
                )
            }
            Violation::AppliedNotDurable { node, index } => write!(
                f,
                "node {node} applied entry {index} before it was durable on its storage"
            ),
            Violation::Durability {
                committed,
                acknowledged,
                holders,
                needed,
            } => write!(
                f,
                "Durability: the committed prefix through {committed} (acknowledged through \
                 {acknowledged}) is durable on {holders} nodes, fewer than a majority of {needed}"
            ),
            Violation::RestartFailed { node, reason } => {
                write!(f, "node {node} could not restart: {reason}")
            }
            Violation::NotAVoter { node, term, role } => write!(
                f,
                "node {node} is {role} in term {term} but no voter of its configuration"
            ),
            Violation::CommitWithoutQuorum {
                node,
                term,
                index,
                holders,
                voters,
            } => write!(
                f,
                "leader {node} of term {term} committed {index}, held durably only by \
                 {holders:?} of voters {voters:?}"
            ),
            Violation::StateDiverged { node, index, what } => write!(
                f,
                "State Machine Safety: the state machine of node {node} after {what} at \
                 index {index} differs from another node's at that index"
            ),
            Violation::Storage { node, what } => {
                write!(f, "storage contract of node {node}: {what}")
            }
            Violation::Liveness { what } => write!(f, "Liveness: {what}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Committed {
    id: EntryId,
    /// A term in which the entry was known committed (its leader's term, or later).
    /// Non-decreasing along the log.
    in_term: Term,
}

#[derive(Clone, Copy, Debug, Default)]
struct NodeTrack {
    commit: Index,
    applied: Index,
}

/// The safety oracles of one cluster. See the [module documentation](self).
#[derive(Debug)]
pub struct Oracles {
    members: usize,
    leaders: HashMap<Term, NodeId>,
    entries: HashMap<(Index, Term), (u64, NodeId)>,
    committed: Vec<Committed>,
    nodes: BTreeMap<NodeId, NodeTrack>,
    acknowledged: Index,
    /// State machine digests by applied index.
    states: HashMap<Index, u64>,
    /// The configuration (voters, old voters while joint) of the leader that committed the
    /// newest index, and that index. A deposed leader that still commits an older index
    /// (with a configuration of its own that will never commit) does not replace it.
    quorum: (Vec<NodeId>, Vec<NodeId>),
    quorum_index: Index,
    violations: Vec<Violation>,
}

impl Oracles {
    /// Oracles for a cluster of these voting members.
    pub fn new(members: &[NodeId]) -> Self {
        Oracles {
            members: members.len(),
            leaders: HashMap::new(),
            entries: HashMap::new(),
            committed: Vec::new(),
            nodes: members.iter().map(|&m| (m, NodeTrack::default())).collect(),
            acknowledged: 0,
            states: HashMap::new(),
            quorum: (members.to_vec(), Vec::new()),
            quorum_index: 0,
            violations: Vec::new(),
        }
    }

    /// Every violation found so far, oldest first.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Records a violation found outside the oracles (liveness, restart failures).
    pub fn report(&mut self, violation: Violation) {
        self.violations.push(violation);
    }

    /// The last committed index seen on any node.
    pub fn committed_index(&self) -> Index {
        self.committed.len() as Index
    }

    /// The committed entry at `index`, if known.
    pub fn committed_entry(&self, index: Index) -> Option<EntryId> {
        let i = usize::try_from(index).ok()?.checked_sub(1)?;
        self.committed.get(i).map(|c| c.id)
    }

    /// The number of distinct leaders seen (one per term).
    pub fn elections(&self) -> usize {
        self.leaders.len()
    }

    /// `node` became leader of `term`, with log `log`: Election Safety and Leader
    /// Completeness.
    pub fn became_leader(&mut self, node: NodeId, term: Term, log: &dyn LogView) {
        match self.leaders.get(&term) {
            Some(&first) if first != node => self.violations.push(Violation::ElectionSafety {
                term,
                first,
                second: node,
            }),
            Some(_) => {}
            None => {
                self.leaders.insert(term, node);
            }
        }
        self.check_complete(node, term, log);
    }

    /// Leader Completeness for `leader` of `term` against what is committed now; call it
    /// for every current leader when the committed prefix grows.
    pub fn check_complete(&mut self, leader: NodeId, term: Term, log: &dyn LogView) {
        let p = self.committed.partition_point(|c| c.in_term < term);
        if p == 0 || self.holds(log, p as Index) {
            return;
        }
        let index = self.first_mismatch(log, p as Index);
        self.violations.push(Violation::LeaderCompleteness {
            leader,
            term,
            index,
        });
    }

    /// `node` appended entry `index` with id `id`: Log Matching.
    pub fn appended(&mut self, node: NodeId, index: Index, id: EntryId) {
        match self.entries.get(&(index, id.term)) {
            Some(&(chain, first)) if chain != id.chain => {
                self.violations.push(Violation::LogMatching {
                    index,
                    term: id.term,
                    first,
                    second: node,
                })
            }
            Some(_) => {}
            None => {
                self.entries.insert((index, id.term), (id.chain, node));
            }
        }
    }

    /// `node` was leader of `term` before and after a step: Leader Append-Only.
    pub fn leader_stepped(
        &mut self,
        node: NodeId,
        term: Term,
        last_before: Index,
        last_after: Index,
        truncated: bool,
    ) {
        if truncated || last_after < last_before {
            self.violations.push(Violation::LeaderAppendOnly {
                node,
                term,
                last_before,
                last_after,
            });
        }
    }

    /// `node`, in `term`, has commit index `commit` and log `log`: the commit index never
    /// decreases, and the committed prefix is the same on every node. Returns true if the
    /// known committed prefix grew (then call [`Oracles::check_complete`] for every
    /// current leader).
    pub fn commit(&mut self, node: NodeId, term: Term, commit: Index, log: &dyn LogView) -> bool {
        let track = self.nodes.entry(node).or_default();
        if commit < track.commit {
            let from = track.commit;
            track.commit = commit;
            self.violations.push(Violation::CommitDecreased {
                node,
                from,
                to: commit,
            });
            return false;
        }
        if commit == track.commit {
            return false;
        }
        track.commit = commit;
        let known = self.committed.len() as Index;
        let upto = commit.min(known);
        if upto > 0 && !self.holds(log, upto) {
            let index = self.first_mismatch(log, upto);
            let node_term = log.entry_id(index).map_or(0, |id| id.term);
            self.violations.push(Violation::StateMachineSafety {
                node,
                index,
                committed_term: self.committed[index as usize - 1].id.term,
                node_term,
                what: "commit",
            });
            return false;
        }
        if commit <= known {
            return false;
        }
        let floor = self.committed.last().map_or(0, |c| c.in_term);
        for index in known + 1..=commit {
            match log.entry_id(index) {
                Some(id) => self.committed.push(Committed {
                    id,
                    in_term: term.max(floor),
                }),
                None => {
                    self.violations.push(Violation::CommitBeyondLog {
                        node,
                        commit,
                        last: log.last_index(),
                    });
                    break;
                }
            }
        }
        true
    }

    /// `node` (re)started with commit index `commit` (the applied index its host passed)
    /// and a state machine that has applied through `applied`.
    pub fn restarted(&mut self, node: NodeId, commit: Index, applied: Index) {
        self.nodes.insert(node, NodeTrack { commit, applied });
    }

    /// `node` applied the entry at `index` with id `id`: once, in order, and only what is
    /// committed.
    pub fn applied(&mut self, node: NodeId, index: Index, id: EntryId) {
        let track = self.nodes.entry(node).or_default();
        let expected = track.applied + 1;
        track.applied = track.applied.max(index);
        if index != expected {
            self.violations.push(Violation::AppliedOutOfOrder {
                node,
                expected,
                got: index,
            });
        }
        match self.committed_entry(index) {
            Some(c) if c == id => {}
            c => self.violations.push(Violation::StateMachineSafety {
                node,
                index,
                committed_term: c.map_or(0, |c| c.term),
                node_term: id.term,
                what: "apply",
            }),
        }
    }

    /// The result of the entry at `index` was acknowledged to a client.
    pub fn acknowledged(&mut self, index: Index) {
        self.acknowledged = self.acknowledged.max(index);
    }

    /// Durability: the committed prefix must be on the durable storage of a majority.
    /// `durable` yields the durable image of every member, crashed ones included.
    pub fn check_durable<'a>(&mut self, durable: impl Iterator<Item = &'a dyn LogView>) {
        let Some(last) = self.committed.last() else {
            return;
        };
        let index = self.committed.len() as Index;
        let holders = durable
            .filter(|log| log.entry_id(index) == Some(last.id))
            .count();
        let needed = self.members / 2 + 1;
        if holders < needed {
            self.violations.push(Violation::Durability {
                committed: index,
                acknowledged: self.acknowledged,
                holders,
                needed,
            });
        }
    }

    /// Whether `log` holds the committed prefix through `index` (known committed): by the
    /// chain hash at `index`, or at the compaction point if `index` is compacted away (a
    /// compaction point beyond what is known committed is not judged).
    pub fn holds(&self, log: &dyn LogView, index: Index) -> bool {
        let at = index.max(log.compacted_index());
        match self.committed_entry(at) {
            Some(id) => log.entry_id(at) == Some(id),
            None => at > index,
        }
    }

    /// `node` restored its state machine from a snapshot through `index`, whose last entry
    /// has id `id` (if its log still knows it), to a store with digest `digest`.
    pub fn restored(&mut self, node: NodeId, index: Index, id: Option<EntryId>, digest: u64) {
        let track = self.nodes.entry(node).or_default();
        if index <= track.applied {
            let expected = track.applied + 1;
            self.violations.push(Violation::AppliedOutOfOrder {
                node,
                expected,
                got: index,
            });
        }
        track.applied = track.applied.max(index);
        if let (Some(id), Some(c)) = (id, self.committed_entry(index)) {
            if id != c {
                self.violations.push(Violation::StateMachineSafety {
                    node,
                    index,
                    committed_term: c.term,
                    node_term: id.term,
                    what: "restore",
                });
            }
        }
        self.state(node, index, digest, "restore");
    }

    /// `node` installed a snapshot from a leader ending at `index` with id `id`: it must be
    /// the committed entry.
    pub fn installed(&mut self, node: NodeId, index: Index, id: EntryId) {
        match self.committed_entry(index) {
            Some(c) if c == id => {}
            c => self.violations.push(Violation::StateMachineSafety {
                node,
                index,
                committed_term: c.map_or(0, |c| c.term),
                node_term: id.term,
                what: "install",
            }),
        }
    }

    /// `node`'s state machine has digest `digest` after applying (or restoring) through
    /// `index`: the same on every node.
    pub fn state(&mut self, node: NodeId, index: Index, digest: u64, what: &'static str) {
        match self.states.get(&index) {
            Some(&d) if d != digest => {
                self.violations
                    .push(Violation::StateDiverged { node, index, what })
            }
            Some(_) => {}
            None => {
                self.states.insert(index, digest);
            }
        }
    }

    /// `node`, in `term`, is a leader ("leader"), candidate or pre-candidate that is not a
    /// voter of the configuration it uses (the caller decides; a node whose removal is not
    /// committed yet is fine).
    pub fn not_a_voter(&mut self, node: NodeId, term: Term, role: &'static str) {
        self.violations
            .push(Violation::NotAVoter { node, term, role });
    }

    /// Leader `node` of `term` advanced its commit index to `index` using the configuration
    /// with `voters` (and `outgoing`, the old voters, while joint): a majority of each
    /// must hold the prefix through `index` on durable storage. `durable` yields the durable
    /// image of every node, by id. The configuration is kept for the Durability check if
    /// `index` is the newest committed by a leader so far.
    pub fn leader_committed<'a>(
        &mut self,
        node: NodeId,
        term: Term,
        index: Index,
        voters: &[NodeId],
        outgoing: &[NodeId],
        durable: impl Iterator<Item = (NodeId, &'a dyn LogView)>,
    ) {
        let holders: Vec<NodeId> = durable
            .filter(|&(_, log)| self.holds(log, index))
            .map(|(id, _)| id)
            .collect();
        for half in [voters, outgoing] {
            if half.is_empty() {
                continue;
            }
            let count = half.iter().filter(|v| holders.contains(v)).count();
            if count < half.len() / 2 + 1 {
                self.violations.push(Violation::CommitWithoutQuorum {
                    node,
                    term,
                    index,
                    holders: holders.into_iter().filter(|h| half.contains(h)).collect(),
                    voters: half.to_vec(),
                });
                return;
            }
        }
        if index >= self.quorum_index {
            self.quorum = (voters.to_vec(), outgoing.to_vec());
            self.quorum_index = index;
        }
    }

    /// Durability with membership: the committed prefix must be on the durable storage of
    /// a majority of the configuration that last committed (of each half while joint).
    /// `durable` yields the durable image of every node, crashed ones included, by id.
    pub fn check_durable_by<'a>(
        &mut self,
        durable: impl Iterator<Item = (NodeId, &'a dyn LogView)>,
    ) {
        let Some(last) = self.committed.last() else {
            return;
        };
        let last = last.id;
        let index = self.committed.len() as Index;
        let holders: Vec<NodeId> = durable
            .filter(|(_, log)| log.entry_id(index) == Some(last) || self.holds(*log, index))
            .map(|(id, _)| id)
            .collect();
        let (voters, outgoing) = (self.quorum.0.clone(), self.quorum.1.clone());
        for half in [&voters, &outgoing] {
            if half.is_empty() {
                continue;
            }
            let count = half.iter().filter(|v| holders.contains(v)).count();
            let needed = half.len() / 2 + 1;
            if count < needed {
                self.violations.push(Violation::Durability {
                    committed: index,
                    acknowledged: self.acknowledged,
                    holders: count,
                    needed,
                });
                return;
            }
        }
    }

    /// The first index `<= upto` where `log` departs from the committed prefix (chain
    /// hashes make "same prefix through i" monotone in i, so a binary search works).
    fn first_mismatch(&self, log: &dyn LogView, upto: Index) -> Index {
        // prefix through lo matches; through hi does not
        let (mut lo, mut hi) = (log.compacted_index().min(upto.saturating_sub(1)), upto);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if log.entry_id(mid) == Some(self.committed[mid as usize - 1].id) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }
}
