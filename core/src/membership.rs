//! Membership changes (§6, thesis chapter 4): joint consensus (C_old,new then C_new),
//! single-server changes, and learners (members that receive the log but do not vote).
//!
//! A configuration lives in the log as an entry of kind [`EntryKind::Membership`]. A node
//! uses the newest configuration in its log as soon as the entry is appended, not when it
//! commits (thesis 4.1), and falls back to the previous one if the entry is truncated away.
//! While joint, elections and commitment need majorities of both the old and the new voters.
//!
//! Rules the leader enforces (thesis 4.1 and the fix for single-server changes in
//! "bug in single-server membership changes", raft-dev 2015): one change at a time; no
//! change before the leader has committed an entry of its own term; a single-server change
//! adds or removes at most one voter.
//!
//! The configuration entry's data: for each member, its id (u64, little-endian) and a flag
//! byte: bit 0 voter of the (new) configuration, bit 1 voter of the old configuration while
//! joint, bit 2 learner.

use crate::node::{Node, Peer};
use crate::storage::{LogStorage, StorageError};
use crate::types::{EntryKind, Index, NodeId, Role};
use core::fmt;

const VOTER: u8 = 1;
const VOTER_OUTGOING: u8 = 2;
const LEARNER: u8 = 4;
const RECORD: usize = 9;

/// This node's place in the configuration in use, and the members it was started with.
#[derive(Clone, Debug)]
pub(crate) struct Membership<const N: usize> {
    /// Voter of the configuration in use (of its new half while joint).
    pub voter: bool,
    /// Voter of the old half while joint.
    pub voter_outgoing: bool,
    pub learner: bool,
    /// Voter (of either half) of the configuration before the one in use
    /// ([`Node::may_campaign`]); false when the one in use is the snapshot's or the
    /// bootstrap members (both committed).
    pub voter_before: bool,
    /// Index of the configuration entry in use (0: the bootstrap members).
    pub index: Index,
    /// The other members given at construction, used while the log holds no
    /// configuration.
    pub bootstrap: heapless::Vec<NodeId, N>,
    /// This node is one of the members given at construction.
    pub bootstrap_voter: bool,
}

impl<const N: usize> Membership<N> {
    pub fn new(bootstrap: heapless::Vec<NodeId, N>, voter: bool) -> Self {
        Membership {
            voter,
            voter_outgoing: false,
            learner: false,
            voter_before: false,
            index: 0,
            bootstrap,
            bootstrap_voter: voter,
        }
    }
}

/// A change of membership, proposed on the leader with [`Node::change_membership`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange<'a> {
    /// Add a learner: it receives the log, never votes and never counts in a quorum.
    AddLearner(NodeId),
    /// Add a node that is not a member yet as a voter at once (single-server change). It
    /// counts in the quorum before it holds the log, so availability may suffer until it
    /// catches up: prefer [`MembershipChange::AddLearner`], then
    /// [`MembershipChange::Promote`] (thesis 4.2.1).
    AddVoter(NodeId),
    /// Promote a learner that holds every committed entry to voter (single-server change).
    Promote(NodeId),
    /// Turn a voter into a learner (single-server change).
    Demote(NodeId),
    /// Remove a voter or learner (single-server change). Removing the leader makes it step
    /// down once the change commits.
    Remove(NodeId),
    /// Joint consensus to an arbitrary new configuration: C_old,new now, C_new once that
    /// commits (automatically, or with [`MembershipChange::LeaveJoint`]).
    Joint {
        /// The voters of the new configuration.
        voters: &'a [NodeId],
        /// The learners of the new configuration.
        learners: &'a [NodeId],
    },
    /// Leave a committed joint configuration for its new half now.
    LeaveJoint,
}

/// Why a membership change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MembershipError {
    /// Only the leader changes the membership.
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// A configuration entry is not committed yet: one change at a time.
    ChangeInProgress,
    /// The leader has not committed an entry of its term yet.
    TermNotCommitted,
    /// The change would leave no voter.
    LastVoter,
    /// The node is not a member, or not the kind of member the change needs (only a
    /// learner is promoted, only a voter demoted).
    UnknownNode,
    /// The node is already a member of that kind.
    AlreadyMember,
    /// More members than the node's peer capacity.
    TooManyMembers,
    /// A learner is promoted only once it holds every committed entry.
    LearnerBehind,
    /// `LeaveJoint` outside a joint configuration, or `Joint` while joint.
    NotJoint,
    /// Duplicate ids, or an id both voter and learner.
    Invalid,
    /// Leadership is being transferred.
    Transferring,
    /// The log storage refused the entry.
    Storage(StorageError),
}

impl fmt::Display for MembershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembershipError::NotLeader { .. } => f.write_str("only the leader changes membership"),
            MembershipError::ChangeInProgress => f.write_str("a membership change is in progress"),
            MembershipError::TermNotCommitted => {
                f.write_str("the leader has not committed an entry of its term yet")
            }
            MembershipError::LastVoter => f.write_str("the change would leave no voter"),
            MembershipError::UnknownNode => {
                f.write_str("no such member, or not the kind of member the change needs")
            }
            MembershipError::AlreadyMember => f.write_str("already a member of that kind"),
            MembershipError::TooManyMembers => f.write_str("more members than the peer capacity"),
            MembershipError::LearnerBehind => f.write_str("the learner has not caught up"),
            MembershipError::NotJoint => f.write_str("not valid in the current configuration"),
            MembershipError::Invalid => f.write_str("duplicate or conflicting member ids"),
            MembershipError::Transferring => f.write_str("leadership transfer under way"),
            MembershipError::Storage(e) => write!(f, "log storage: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for MembershipError {}

/// A member as the membership view reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Voter of the current (new) configuration.
    pub voter: bool,
    /// Voter of the old configuration (joint consensus only).
    pub voter_outgoing: bool,
    /// Learner.
    pub learner: bool,
}

/// The members encoded in a configuration entry, validated.
fn records(data: &[u8]) -> Option<impl Iterator<Item = Member> + Clone + '_> {
    if data.is_empty() || !data.len().is_multiple_of(RECORD) {
        return None;
    }
    let iter = data.chunks_exact(RECORD).map(|r| {
        let mut id = [0u8; 8];
        id.copy_from_slice(&r[..8]);
        let flags = r[8];
        Member {
            id: u64::from_le_bytes(id),
            voter: flags & VOTER != 0,
            voter_outgoing: flags & VOTER_OUTGOING != 0,
            learner: flags & LEARNER != 0,
        }
    });
    let valid = data.chunks_exact(RECORD).enumerate().all(|(i, r)| {
        let flags = r[8];
        let dup = data[..i * RECORD]
            .chunks_exact(RECORD)
            .any(|o| o[..8] == r[..8]);
        flags != 0
            && flags & !(VOTER | VOTER_OUTGOING | LEARNER) == 0
            && !(flags & VOTER != 0 && flags & LEARNER != 0)
            && !dup
    }) && data.chunks_exact(RECORD).any(|r| r[8] & VOTER != 0);
    valid.then_some(iter)
}

/// Is `data` a valid encoded configuration?
pub(crate) fn records_valid(data: &[u8]) -> bool {
    records(data).is_some()
}

/// The members of a configuration, as a membership entry (or a snapshot's metadata)
/// encodes it; `None` if `data` is no valid configuration. For hosts that read
/// configurations out of their own store (`SnapshotMeta::config`, an entry of kind
/// [`EntryKind::Membership`]) without decoding the core's format themselves.
///
/// ```
/// # use coracle::membership::decode;
/// assert!(decode(b"not a configuration").is_none());
/// ```
pub fn decode(data: &[u8]) -> Option<impl Iterator<Item = Member> + Clone + '_> {
    records(data)
}

/// The data of a configuration entry whose only member is `id`, a voter: what a host
/// appends to a survivor's log to restart it as a new cluster of one after a majority of
/// its cluster is lost for good (etcd's `--force-new-cluster`). Only the host may decide
/// to do this (the core never does: it breaks the old cluster's quorum on purpose).
///
/// ```
/// # use coracle::membership::{decode, sole_voter};
/// let only: Vec<_> = decode(&sole_voter(3)).unwrap().collect();
/// assert_eq!((only.len(), only[0].id, only[0].voter), (1, 3, true));
/// ```
pub fn sole_voter(id: NodeId) -> [u8; RECORD] {
    let mut data = [0u8; RECORD];
    data[..8].copy_from_slice(&id.to_le_bytes());
    data[8] = VOTER;
    data
}

/// Encodes members into `buf`; `None` if it does not fit.
fn encode(members: impl Iterator<Item = Member>, buf: &mut [u8]) -> Option<usize> {
    let mut n = 0;
    for m in members {
        let rec = buf.get_mut(n..n + RECORD)?;
        rec[..8].copy_from_slice(&m.id.to_le_bytes());
        rec[8] = (m.voter as u8 * VOTER)
            | (m.voter_outgoing as u8 * VOTER_OUTGOING)
            | (m.learner as u8 * LEARNER);
        n += RECORD;
    }
    Some(n)
}

/// The largest configuration entry a node with peer capacity `N` writes.
const fn max_config_bytes(n: usize) -> usize {
    (n + 1) * RECORD
}

impl<S: LogStorage, const N: usize, const I: usize, const R: usize> Node<S, N, I, R> {
    /// Every member of the configuration in use, this node included.
    pub fn members(&self) -> impl Iterator<Item = Member> + '_ {
        let me = Member {
            id: self.cfg.id,
            voter: self.membership.voter,
            voter_outgoing: self.membership.voter_outgoing,
            learner: self.membership.learner,
        };
        let is_member = me.voter || me.voter_outgoing || me.learner;
        is_member.then_some(me).into_iter().chain(
            self.peers
                .iter()
                .filter(|p| p.voter || p.voter_outgoing || p.learner)
                .map(|p| Member {
                    id: p.id,
                    voter: p.voter,
                    voter_outgoing: p.voter_outgoing,
                    learner: p.learner,
                }),
        )
    }

    /// True while the configuration in use is joint (C_old,new).
    pub fn is_joint(&self) -> bool {
        self.membership.voter_outgoing || self.peers.iter().any(|p| p.voter_outgoing)
    }

    /// Proposes a membership change. It takes effect on each node as soon as the node
    /// appends the entry; it is done when that entry commits (and, for a joint change, when
    /// the entry leaving the joint configuration commits).
    pub fn change_membership(
        &mut self,
        change: MembershipChange<'_>,
    ) -> Result<crate::Proposal, MembershipError> {
        self.outbox.wake();
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(MembershipError::Transferring);
        }
        if self.membership.index > self.commit_index {
            return Err(MembershipError::ChangeInProgress);
        }
        if self.log.term(self.commit_index) != Some(self.current_term) {
            return Err(MembershipError::TermNotCommitted);
        }
        let joint = self.is_joint();
        if joint != matches!(change, MembershipChange::LeaveJoint) {
            return Err(MembershipError::NotJoint);
        }
        // The new member list, built in a fixed buffer.
        let mut list: heapless::Vec<Member, 33> = heapless::Vec::new();
        for m in self.members() {
            list.push(m).map_err(|_| MembershipError::TooManyMembers)?;
        }
        let find = |list: &heapless::Vec<Member, 33>, id| list.iter().position(|m| m.id == id);
        match change {
            MembershipChange::AddLearner(id) => {
                if find(&list, id).is_some() {
                    return Err(MembershipError::AlreadyMember);
                }
                list.push(Member {
                    id,
                    voter: false,
                    voter_outgoing: false,
                    learner: true,
                })
                .map_err(|_| MembershipError::TooManyMembers)?;
            }
            MembershipChange::AddVoter(id) => {
                if find(&list, id).is_some() {
                    return Err(MembershipError::AlreadyMember);
                }
                list.push(Member {
                    id,
                    voter: true,
                    voter_outgoing: false,
                    learner: false,
                })
                .map_err(|_| MembershipError::TooManyMembers)?;
            }
            MembershipChange::Promote(id) => match find(&list, id) {
                Some(i) if list[i].voter => return Err(MembershipError::AlreadyMember),
                Some(i) if !list[i].learner => return Err(MembershipError::UnknownNode),
                Some(i) => {
                    let caught_up = id == self.cfg.id
                        || self.peer_index(id).is_some_and(|p| {
                            self.peers[p].replication.match_index >= self.commit_index
                        });
                    if !caught_up {
                        return Err(MembershipError::LearnerBehind);
                    }
                    list[i].voter = true;
                    list[i].learner = false;
                }
                None => return Err(MembershipError::UnknownNode),
            },
            MembershipChange::Demote(id) => match find(&list, id) {
                Some(i) if list[i].voter => {
                    list[i].voter = false;
                    list[i].learner = true;
                }
                _ => return Err(MembershipError::UnknownNode),
            },
            MembershipChange::Remove(id) => match find(&list, id) {
                Some(i) if list[i].voter && list.iter().filter(|m| m.voter).count() == 1 => {
                    return Err(MembershipError::LastVoter)
                }
                Some(i) => {
                    list.remove(i);
                }
                None => return Err(MembershipError::UnknownNode),
            },
            MembershipChange::Joint { voters, learners } => {
                let all = || voters.iter().chain(learners.iter());
                let distinct = all()
                    .enumerate()
                    .all(|(i, id)| !all().take(i).any(|o| o == id));
                if !distinct {
                    return Err(MembershipError::Invalid);
                }
                if voters.is_empty() {
                    return Err(MembershipError::LastVoter);
                }
                for m in list.iter_mut() {
                    m.voter_outgoing = m.voter;
                    m.voter = voters.contains(&m.id);
                    m.learner = learners.contains(&m.id);
                }
                for &id in all() {
                    if find(&list, id).is_none() {
                        let voter = voters.contains(&id);
                        list.push(Member {
                            id,
                            voter,
                            voter_outgoing: false,
                            learner: !voter,
                        })
                        .map_err(|_| MembershipError::TooManyMembers)?;
                    }
                }
                list.retain(|m| m.voter || m.voter_outgoing || m.learner);
            }
            MembershipChange::LeaveJoint => {
                for m in list.iter_mut() {
                    m.voter_outgoing = false;
                }
                list.retain(|m| m.voter || m.learner);
            }
        }
        if !list.iter().any(|m| m.voter) {
            return Err(MembershipError::LastVoter);
        }
        if list.iter().filter(|m| m.id != self.cfg.id).count() > N {
            return Err(MembershipError::TooManyMembers);
        }
        self.append_config(&list)
    }

    fn append_config(&mut self, list: &[Member]) -> Result<crate::Proposal, MembershipError> {
        let mut buf = [0u8; max_config_bytes(32)];
        let len = encode(list.iter().copied(), &mut buf).ok_or(MembershipError::TooManyMembers)?;
        let index = self
            .append_as_leader(EntryKind::Membership, &buf[..len])
            .map_err(MembershipError::Storage)?;
        self.use_config(index, &buf[..len]);
        Ok(crate::Proposal {
            index,
            term: self.current_term,
        })
    }

    /// Switches to the configuration in the entry at `index` (already validated or not:
    /// an invalid entry is counted and ignored).
    pub(crate) fn use_config(&mut self, index: Index, data: &[u8]) {
        let Some(members) = records(data) else {
            self.counters.invalid += 1;
            return;
        };
        let count = members.clone().filter(|m| m.id != self.cfg.id).count();
        if count > N {
            self.counters.invalid += 1;
            return;
        }
        self.membership.index = index;
        self.membership.voter_before = self.can_vote();
        self.membership.voter = false;
        self.membership.voter_outgoing = false;
        self.membership.learner = false;
        for p in self.peers.iter_mut() {
            p.voter = false;
            p.voter_outgoing = false;
            p.learner = false;
        }
        let next = self.log.last_index() + 1;
        let now = self.timers.now;
        for m in members {
            if m.id == self.cfg.id {
                self.membership.voter = m.voter;
                self.membership.voter_outgoing = m.voter_outgoing;
                self.membership.learner = m.learner;
                continue;
            }
            let i = match self.peer_index(m.id) {
                Some(i) => i,
                None => {
                    let mut peer = Peer::new(m.id, false);
                    peer.replication = crate::progress::Replication::new(next, now);
                    // Capacity was checked above.
                    let _ = self.peers.push(peer);
                    self.peers.len() - 1
                }
            };
            let p = &mut self.peers[i];
            p.voter = m.voter;
            p.voter_outgoing = m.voter_outgoing;
            p.learner = m.learner;
        }
        // The leader that removed this node (or whose removal this is) stays reachable so
        // the change can commit; it counts in nothing.
        self.prune_non_members(self.leader);
        if self.role == Role::Leader {
            self.advance_commit_index();
        }
    }

    /// After the log lost entries from `from` on: if the configuration came from one of
    /// them, go back to the newest configuration still in the log (or the bootstrap one).
    pub(crate) fn config_truncated(&mut self, from: Index) {
        if self.membership.index >= from {
            self.load_config_from_log();
        }
    }

    /// The newest configuration entry in the log, or the bootstrap members.
    pub(crate) fn load_config_from_log(&mut self) {
        let mut latest = [0u8; max_config_bytes(32)];
        let Some((index, len)) = self.config_entry_through(self.log.last_index(), &mut latest)
        else {
            self.use_snapshot_or_bootstrap_config();
            return;
        };
        // The configuration before it first, for `self_voter_before`.
        let mut before = [0u8; max_config_bytes(32)];
        match self.config_entry_through(index - 1, &mut before) {
            Some((i, n)) => self.use_config(i, &before[..n]),
            None => self.use_snapshot_or_bootstrap_config(),
        }
        self.use_config(index, &latest[..len]);
    }

    /// The newest configuration entry of the log at or before `through`, copied into
    /// `buf`: its index and length.
    fn config_entry_through(&self, through: Index, buf: &mut [u8]) -> Option<(Index, usize)> {
        let first = self.log.first_index();
        let mut i = through;
        while i >= first && i > 0 {
            if let Some(e) = self.log.entry(i) {
                if e.kind == EntryKind::Membership {
                    if let Some(dst) = buf.get_mut(..e.data.len()) {
                        dst.copy_from_slice(e.data);
                        return Some((i, e.data.len()));
                    }
                }
            }
            i -= 1;
        }
        None
    }

    /// The configuration of the kept snapshot, or else the bootstrap members (both committed).
    fn use_snapshot_or_bootstrap_config(&mut self) {
        match self.log.snapshot_meta() {
            Some(meta) if !meta.config().is_empty() => self.use_config(meta.index, meta.config()),
            _ => self.restore_bootstrap_members(),
        }
        self.membership.voter_before = false;
    }

    /// On the leader, after the commit index moved: leave a committed joint configuration
    /// automatically, and step down once a configuration without this node commits.
    pub(crate) fn on_config_committed(&mut self) {
        if self.role != Role::Leader
            || self.membership.index > self.commit_index
            || self.membership.index == 0
        {
            return;
        }
        if self.is_joint() && self.cfg.auto_leave_joint {
            let _ = self.change_membership(MembershipChange::LeaveJoint);
        } else if !self.membership.voter && !self.membership.voter_outgoing {
            // Removed (or demoted): hand over by stepping down; the others elect a leader.
            self.become_follower(self.current_term, None);
        }
    }

    /// Forgets peers that are in no configuration, except the leader `keep`.
    pub(crate) fn prune_non_members(&mut self, keep: Option<NodeId>) {
        self.peers
            .retain(|p| p.voter || p.voter_outgoing || p.learner || Some(p.id) == keep);
    }
}
