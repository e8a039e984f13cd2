//! The vocabulary of the protocol: identifiers, terms, indexes, entries and roles.

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// Identifies a node of the cluster. Chosen by the host; `0` is allowed but discouraged.
pub type NodeId = u64;

/// A Raft term (§5.1): a logical clock that only grows. Term 0 is "before any election".
pub type Term = u64;

/// The position of an entry in the replicated log. The first entry has index 1; index 0 means
/// "before the first entry".
pub type Index = u64;

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EntryKind {
    /// A command for the host's state machine (its bytes are opaque to the core).
    #[default]
    Command,
    /// The no-op a leader appends at the start of its term (§8, thesis 6.4): committing it
    /// commits everything before it. Hosts apply it as nothing.
    Noop,
    /// A configuration of the cluster (see [`membership`](crate::membership)). Hosts apply
    /// it as nothing; the node uses it from the moment it is appended.
    Membership,
}

/// One entry of the log, borrowed: the index and term it has in the log, its kind and its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Entry<'a> {
    /// Position in the log.
    pub index: Index,
    /// Term of the leader that created the entry.
    pub term: Term,
    /// What the entry carries.
    pub kind: EntryKind,
    /// The command bytes (empty for a no-op).
    #[cfg_attr(feature = "serde", serde(borrow))]
    pub data: &'a [u8],
}

impl Entry<'_> {
    /// An upper bound on the bytes this entry adds to an encoded message beyond its data
    /// (index, term, kind and the data length, as postcard varints).
    pub const OVERHEAD: usize = 10 + 10 + 1 + 5;

    /// Bytes this entry counts for when batching by size.
    pub fn encoded_len_bound(&self) -> usize {
        self.data.len() + Self::OVERHEAD
    }
}

/// The state every server keeps on stable storage before it answers an RPC (Figure 2):
/// the latest term it has seen and the candidate it voted for in that term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HardState {
    /// `currentTerm`: the latest term this server has seen.
    pub current_term: Term,
    /// `votedFor`: the candidate that received this server's vote in `current_term`.
    pub voted_for: Option<NodeId>,
}

/// The role a node plays (§5.1, plus the pre-vote phase of thesis 9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Role {
    /// Passive: answers leaders and candidates.
    Follower,
    /// Asks whether it could win an election, without raising its term (thesis 9.6).
    PreCandidate,
    /// Campaigns for leadership in a new term.
    Candidate,
    /// Handles proposals and replicates the log.
    Leader,
}

impl core::fmt::Display for Role {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}
