//! The messages nodes exchange: the RPCs of Figure 2 and their responses.
//!
//! A heartbeat is an AppendEntries without entries. Pre-vote requests are RequestVote
//! messages with `pre_vote` set (thesis 9.6). Variants are only ever appended, never
//! reordered: postcard encodes the variant index.

use crate::storage::LogStorage;
use crate::types::{Entry, Index, Term};
use core::fmt;

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// RequestVote RPC (§5.2), invoked by candidates to gather votes, and by pre-candidates to ask
/// whether they could win (then `term` is the term they would campaign in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RequestVote {
    /// Candidate's term (for a pre-vote: the term it would campaign in).
    pub term: Term,
    /// Index of the candidate's last log entry (§5.4).
    pub last_log_index: Index,
    /// Term of the candidate's last log entry (§5.4).
    pub last_log_term: Term,
    /// A pre-vote: the receiver changes no state when it answers.
    pub pre_vote: bool,
    /// Sent on the leader's request (TimeoutNow, thesis 3.10): voters do not ignore it for
    /// having heard from that leader recently.
    pub leadership_transfer: bool,
}

/// The answer to a [`RequestVote`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RequestVoteResponse {
    /// `currentTerm` of the voter, for the candidate to update itself; for a granted pre-vote,
    /// the term of the request.
    pub term: Term,
    /// True means the candidate received the vote.
    pub vote_granted: bool,
    /// Answers a pre-vote.
    pub pre_vote: bool,
}

/// AppendEntries RPC (§5.3), invoked by the leader to replicate entries; also the heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AppendEntries<'a> {
    /// Leader's term.
    pub term: Term,
    /// Index of the log entry immediately preceding the new ones.
    pub prev_log_index: Index,
    /// Term of the `prev_log_index` entry.
    pub prev_log_term: Term,
    /// Leader's commit index.
    pub leader_commit: Index,
    /// The leader's heartbeat round when it sent this message; echoed in the answer so the
    /// leader knows which round a quorum has answered (ReadIndex, thesis 6.4).
    pub round: u64,
    /// Entries to store, empty for a heartbeat.
    pub entries: Entries<'a>,
}

/// The answer to an [`AppendEntries`].
///
/// On success `index` is the last index the follower now holds in agreement with the leader
/// (`prev_log_index` plus the entries it stored). On failure `index` echoes the rejected
/// `prev_log_index`, and the hint lets the leader skip a whole conflicting term at once
/// (§5.3, "the follower can include the term of the conflicting entry and the first index it
/// stores for that term"): `hint_term == 0` means the follower's log ends at `hint_index`;
/// otherwise the follower holds term `hint_term` at `prev_log_index`, and its first entry of
/// that term is at `hint_index`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AppendEntriesResponse {
    /// `currentTerm` of the follower, for the leader to update itself.
    pub term: Term,
    /// True if the follower contained an entry matching `prev_log_index` and `prev_log_term`.
    pub success: bool,
    /// On success the matched index, on failure the rejected `prev_log_index`.
    pub index: Index,
    /// Conflict hint: the term at `prev_log_index` in the follower's log, 0 if it has none.
    pub hint_term: Term,
    /// Conflict hint: first index of `hint_term`, or the follower's last index.
    pub hint_index: Index,
    /// The `round` of the AppendEntries this answers.
    pub round: u64,
}

/// TimeoutNow (thesis 3.10): the leader tells a caught-up follower to start an election at
/// once, to hand leadership over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TimeoutNow {
    /// Leader's term.
    pub term: Term,
}

/// A follower asks the leader for a read index on behalf of its host (thesis 6.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReadIndex {
    /// Follower's term.
    pub term: Term,
    /// The follower's id for the read, echoed in the answer.
    pub id: u64,
}

/// The leader's answer to a [`ReadIndex`]: once the follower has applied through `index`,
/// it may serve the read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReadIndexResponse {
    /// Leader's term.
    pub term: Term,
    /// The id of the request.
    pub id: u64,
    /// The leader's commit index, confirmed by a quorum after the request arrived.
    pub index: Index,
    /// False if the leader could not serve it (no longer leader, too many reads).
    pub success: bool,
}

/// InstallSnapshot RPC (§7), in chunks: the leader sends a follower that needs compacted
/// entries its snapshot, `data` being the bytes from `offset`, `done` on the last chunk.
/// Resumable: the follower answers with the offset it expects next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InstallSnapshot<'a> {
    /// Leader's term.
    pub term: Term,
    /// The snapshot replaces all entries up through and including this index.
    pub last_included_index: Index,
    /// Term of `last_included_index`.
    pub last_included_term: Term,
    /// Byte offset of `data` in the snapshot.
    pub offset: u64,
    /// `data` ends the snapshot.
    pub done: bool,
    /// The configuration in force at `last_included_index` (a membership entry's encoding).
    #[cfg_attr(feature = "serde", serde(borrow))]
    pub config: &'a [u8],
    /// The chunk.
    #[cfg_attr(feature = "serde", serde(borrow))]
    pub data: &'a [u8],
}

/// The answer to an [`InstallSnapshot`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InstallSnapshotResponse {
    /// Follower's term.
    pub term: Term,
    /// The snapshot this answers.
    pub last_included_index: Index,
    /// The next byte offset the follower expects (the snapshot's size once installed).
    pub next_offset: u64,
    /// The follower holds everything through `last_included_index` now.
    pub done: bool,
}

/// Every message of the protocol. New kinds are added at the end (hence non-exhaustive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Message<'a> {
    /// A vote or pre-vote request.
    RequestVote(RequestVote),
    /// A vote or pre-vote answer.
    RequestVoteResponse(RequestVoteResponse),
    /// Entries to append, or a heartbeat.
    AppendEntries(AppendEntries<'a>),
    /// An append answer.
    AppendEntriesResponse(AppendEntriesResponse),
    /// Start an election now (leadership transfer).
    TimeoutNow(TimeoutNow),
    /// A follower's request for a read index.
    ReadIndex(ReadIndex),
    /// The leader's answer with the read index.
    ReadIndexResponse(ReadIndexResponse),
    /// A chunk of the leader's snapshot.
    InstallSnapshot(InstallSnapshot<'a>),
    /// A snapshot chunk answer.
    InstallSnapshotResponse(InstallSnapshotResponse),
}

impl Message<'_> {
    /// The term the message carries.
    pub fn term(&self) -> Term {
        match self {
            Message::RequestVote(m) => m.term,
            Message::RequestVoteResponse(m) => m.term,
            Message::AppendEntries(m) => m.term,
            Message::AppendEntriesResponse(m) => m.term,
            Message::TimeoutNow(m) => m.term,
            Message::ReadIndex(m) => m.term,
            Message::ReadIndexResponse(m) => m.term,
            Message::InstallSnapshot(m) => m.term,
            Message::InstallSnapshotResponse(m) => m.term,
        }
    }

    /// The same message with the entries of an AppendEntries (and the bytes of an
    /// InstallSnapshot) left out.
    pub fn without_entries(&self) -> Message<'static> {
        match *self {
            Message::RequestVote(m) => Message::RequestVote(m),
            Message::RequestVoteResponse(m) => Message::RequestVoteResponse(m),
            Message::AppendEntries(m) => Message::AppendEntries(AppendEntries {
                entries: Entries::EMPTY,
                ..m
            }),
            Message::AppendEntriesResponse(m) => Message::AppendEntriesResponse(m),
            Message::TimeoutNow(m) => Message::TimeoutNow(m),
            Message::ReadIndex(m) => Message::ReadIndex(m),
            Message::ReadIndexResponse(m) => Message::ReadIndexResponse(m),
            Message::InstallSnapshot(m) => Message::InstallSnapshot(InstallSnapshot {
                config: &[],
                data: &[],
                ..m
            }),
            Message::InstallSnapshotResponse(m) => Message::InstallSnapshotResponse(m),
        }
    }

    /// A short name of the kind of message, for logs and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::RequestVote(m) if m.pre_vote => "PreVote",
            Message::RequestVote(_) => "RequestVote",
            Message::RequestVoteResponse(m) if m.pre_vote => "PreVoteResponse",
            Message::RequestVoteResponse(_) => "RequestVoteResponse",
            Message::AppendEntries(m) if m.entries.is_empty() => "Heartbeat",
            Message::AppendEntries(_) => "AppendEntries",
            Message::AppendEntriesResponse(_) => "AppendEntriesResponse",
            Message::TimeoutNow(_) => "TimeoutNow",
            Message::ReadIndex(_) => "ReadIndex",
            Message::ReadIndexResponse(_) => "ReadIndexResponse",
            Message::InstallSnapshot(_) => "InstallSnapshot",
            Message::InstallSnapshotResponse(_) => "InstallSnapshotResponse",
        }
    }
}

/// A run of consecutive entries inside an [`AppendEntries`]: either read straight from the
/// sender's log (what the node outputs, no copy) or a slice the host decoded from the wire.
#[derive(Clone, Copy)]
pub struct Entries<'a>(Repr<'a>);

#[derive(Clone, Copy)]
enum Repr<'a> {
    Slice(&'a [Entry<'a>]),
    #[cfg(feature = "alloc")]
    Owned(&'a [crate::storage::OwnedEntry]),
    Log {
        log: &'a dyn LogStorage,
        first: Index,
        len: usize,
    },
}

impl<'a> Entries<'a> {
    /// No entries (a heartbeat).
    pub const EMPTY: Entries<'static> = Entries(Repr::Slice(&[]));

    /// Entries decoded by the host.
    pub const fn from_slice(entries: &'a [Entry<'a>]) -> Self {
        Entries(Repr::Slice(entries))
    }

    /// `len` entries of `log` starting at `first`.
    pub(crate) fn from_log(log: &'a dyn LogStorage, first: Index, len: usize) -> Self {
        Entries(Repr::Log { log, first, len })
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        match self.0 {
            Repr::Slice(s) => s.len(),
            #[cfg(feature = "alloc")]
            Repr::Owned(s) => s.len(),
            Repr::Log { len, .. } => len,
        }
    }

    /// True for a heartbeat.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th entry (0-based). `None` past the end, or if the sender's log lost it.
    pub fn get(&self, i: usize) -> Option<Entry<'a>> {
        match self.0 {
            Repr::Slice(s) => s.get(i).copied(),
            #[cfg(feature = "alloc")]
            Repr::Owned(s) => s.get(i).map(|e| e.as_entry()),
            Repr::Log { log, first, len } => {
                if i < len {
                    log.entry(first + i as u64)
                } else {
                    None
                }
            }
        }
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = Entry<'a>> + '_ {
        (0..self.len()).map_while(|i| self.get(i))
    }
}

impl fmt::Debug for Entries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Default for Entries<'_> {
    fn default() -> Self {
        Entries::EMPTY
    }
}

impl PartialEq for Entries<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Entries<'_> {}

#[cfg(feature = "defmt")]
impl defmt::Format for Entries<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "[{} entries]", self.len())
    }
}

#[cfg(feature = "serde")]
impl Serialize for Entries<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for i in 0..self.len() {
            let entry = self
                .get(i)
                .ok_or_else(|| serde::ser::Error::custom("entry missing from the log"))?;
            seq.serialize_element(&entry)?;
        }
        seq.end()
    }
}

#[cfg(feature = "alloc")]
pub use owned::OwnedMessage;

#[cfg(feature = "alloc")]
mod owned {
    use super::*;
    use crate::storage::OwnedEntry;
    use alloc::vec::Vec;

    /// A message that owns its entries (with `alloc`): for hosts that queue messages in
    /// memory, such as a simulator, instead of encoding them.
    ///
    /// ```
    /// # use coracle::{Message, OwnedMessage, RequestVote};
    /// let m = Message::RequestVote(RequestVote { term: 2, last_log_index: 0, last_log_term: 0, pre_vote: false, leadership_transfer: false });
    /// let owned = OwnedMessage::from(&m);
    /// assert_eq!(owned.as_message(), m);
    /// ```
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct OwnedMessage {
        /// The message with its entries left out.
        header: Message<'static>,
        entries: Vec<OwnedEntry>,
        /// An InstallSnapshot's configuration and data.
        snapshot: (Vec<u8>, Vec<u8>),
    }

    impl OwnedMessage {
        /// Borrows it as a message to [`step`](crate::Node::step).
        pub fn as_message(&self) -> Message<'_> {
            match self.header {
                Message::AppendEntries(a) => Message::AppendEntries(AppendEntries {
                    entries: Entries(Repr::Owned(&self.entries)),
                    ..a
                }),
                Message::InstallSnapshot(m) => Message::InstallSnapshot(InstallSnapshot {
                    config: &self.snapshot.0,
                    data: &self.snapshot.1,
                    ..m
                }),
                other => other,
            }
        }

        /// The entries it carries (empty but for AppendEntries).
        pub fn entries(&self) -> &[OwnedEntry] {
            &self.entries
        }

        /// Mutable access to the entries, for tests that corrupt messages on purpose.
        pub fn entries_mut(&mut self) -> &mut Vec<OwnedEntry> {
            &mut self.entries
        }
    }

    impl From<&Message<'_>> for OwnedMessage {
        fn from(m: &Message<'_>) -> Self {
            let entries = match m {
                Message::AppendEntries(a) => a.entries.iter().map(OwnedEntry::from).collect(),
                _ => Vec::new(),
            };
            let snapshot = match m {
                Message::InstallSnapshot(i) => (i.config.to_vec(), i.data.to_vec()),
                _ => (Vec::new(), Vec::new()),
            };
            OwnedMessage {
                header: m.without_entries(),
                entries,
                snapshot,
            }
        }
    }
}
