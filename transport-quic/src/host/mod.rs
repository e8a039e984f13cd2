//! Your own replicated service over QUIC: the node runtime as a host for any state
//! machine.
//!
//! Implement [`StateMachine`] (apply a committed command, write a snapshot to a sink,
//! restore from a source), start a [`Host`] with a [`NodeConfig`] and your state machine,
//! and use its [`Handle`] (cloneable, `Send`) from any task or thread: propose commands
//! and get the state machine's response once applied, read with the consistency you ask
//! for, change the membership, transfer leadership, watch the node's status. The KV store
//! of [`crate::kv`] and the `coracle` command are built on this module alone
//! ([`crate::server`]).
//!
//! What the host guarantees the state machine:
//! - [`StateMachine::apply`] is called for every committed command, in log order, exactly
//!   once per replica (a retried proposal is a new command: deduplicate in the state
//!   machine, as the KV store's client sessions do);
//! - an error or a panic in `apply` stops the node ([`NodeError::Apply`]): nothing applied
//!   after it is acknowledged, pending proposals and reads are answered with
//!   [`ProposeError::Stopped`] / [`ReadError::Stopped`], and on the next start the node
//!   replays the log from its last snapshot into the state machine again;
//! - a snapshot is written while commands go on being applied: [`StateMachine::snapshot`]
//!   returns a point-in-time view ([`SnapshotSource`]) that a thread of its own writes to
//!   the snapshot's file; [`StateMachine::snapshot_step`] lets a state machine that keeps
//!   its view by copy-on-write (the KV store) produce it in bounded steps on the node's
//!   loop instead;
//! - [`StateMachine::restore`] reads a snapshot from its file a piece at a time, so a state
//!   larger than memory can be moved between nodes.
//!
//! # The log and snapshot formats of the host
//!
//! Every command entry starts with one byte that says whose it is: `C`, the state machine's
//! (the rest is the command as proposed); `H`, the host's own records (where a member
//! listens, so a member added later is reachable from every node and after restarts; a
//! member's election priority, so every node agrees on it). A snapshot file starts with
//! the host's part (the addresses of the members, then their priorities), then holds the
//! state machine's bytes as it wrote them.

mod entry;
pub mod forward;
mod handle;
mod handover;
mod join;
mod kept;
mod runtime;

pub(crate) use entry::snapshot_head;
pub use entry::{open_snapshot, split_entry, EntryError, HostBook, HostRecord, LoggedCommand};
pub use forward::{ResponseCodec, FORWARD_VERSION};
pub use handle::{
    Batch, Handle, MemberStatus, MembershipError, ProposeError, ReadError, ReadMode,
    SnapshotRequestError, SnapshotStatus, Status, TransportCounters,
};
pub use join::JoinError;
pub use kept::KeptSnapshot;
pub(crate) use runtime::node_credentials;
pub use runtime::{CoreNode, Host, NodeError, ServeClient, INFLIGHT, PEERS, READS};

#[cfg(doc)]
use crate::config::NodeConfig;
use coracle::Index;
use std::fmt;
use std::io;

/// A replicated state machine: what a [`Host`] applies the committed log to.
///
/// The host calls every method on the node's event loop (one thread), so a method that
/// takes long delays the node's messages: keep `apply` short, and do long work in the
/// [`SnapshotSource`] (on a thread of its own) or in bounded
/// [`snapshot_step`](Self::snapshot_step)s.
pub trait StateMachine: Send + 'static {
    /// What applying a command returns to its proposer.
    type Response: Send + 'static;
    /// A point-in-time view of the state that a thread writes to a snapshot's file.
    type Snapshot: SnapshotSource;

    /// Applies the committed command at log `index` (the bytes proposed, as proposed).
    /// Commands arrive in log order, each once. An error (or a panic) stops the node: use
    /// it for a state machine that can no longer go on (a failed disk, a broken
    /// invariant), never for a command that is merely invalid, which every replica must
    /// treat alike (answer it in the response instead).
    fn apply(&mut self, index: Index, command: &[u8]) -> Result<Self::Response, ApplyError>;

    /// Begins a snapshot of the state as it is now, with every entry through `applied`
    /// applied. The view returned is written by a thread while `apply` goes on, so it must
    /// not change when the state does (a copy, a copy-on-write view, a file checkpoint).
    fn snapshot(&mut self, applied: Index) -> Result<Self::Snapshot, SnapshotError>;

    /// Called once per turn of the node's loop while a snapshot is being written: a state
    /// machine whose view needs the live state (copy-on-write, as the KV store does) hands
    /// the next bounded piece to its view here. Returns `true` while it wants more turns.
    /// The default does nothing.
    fn snapshot_step(&mut self) -> bool {
        false
    }

    /// Replaces the whole state with the snapshot read from `source` (what a
    /// [`SnapshotSource`] wrote), taken with every entry through `index` applied: a
    /// snapshot installed from the leader, or the node's own at a start. An error stops
    /// the node rather than let it run with a wrong state.
    fn restore(&mut self, index: Index, source: &mut dyn io::Read) -> Result<(), RestoreError>;

    /// How this state machine's responses cross the network, so that a follower can
    /// forward a proposal to the leader and answer with the leader's response
    /// (`raft.forward`, on by default; see [`forward`] for the wire
    /// format and outcomes). The default, `None`, keeps responses local: a follower answers
    /// [`ProposeError::NotLeader`] and the caller redials the leader. An opt-in rather than
    /// a bound on [`Response`](Self::Response), so a state machine whose responses hold
    /// what cannot be sent (handles, channels) still works.
    fn response_codec() -> Option<ResponseCodec<Self::Response>> {
        None
    }
}

/// A point-in-time view of a state machine's state, written to a snapshot's file by a
/// thread of the host.
pub trait SnapshotSource: Send + 'static {
    /// Writes the whole view to `sink`, in as many writes as it likes (the sink streams
    /// them to the file: a view larger than memory works). An error gives the snapshot up
    /// (the node tries again later).
    fn write_to(&mut self, sink: &mut dyn io::Write) -> io::Result<()>;
}

/// A snapshot already in memory.
impl SnapshotSource for Vec<u8> {
    fn write_to(&mut self, sink: &mut dyn io::Write) -> io::Result<()> {
        sink.write_all(self)
    }
}

/// A snapshot read from anything readable (a file the state machine checkpointed, a
/// pipe): copied to the sink a piece at a time.
#[derive(Debug)]
pub struct ReadSource<R>(pub R);

impl<R: io::Read + Send + 'static> SnapshotSource for ReadSource<R> {
    fn write_to(&mut self, sink: &mut dyn io::Write) -> io::Result<()> {
        io::copy(&mut self.0, sink).map(|_| ())
    }
}

/// Why a state machine cannot apply a command: the node stops ([`NodeError::Apply`]).
#[derive(Debug)]
pub enum ApplyError {
    /// The state machine's own storage failed.
    Io(io::Error),
    /// Anything else that makes going on wrong (a broken invariant).
    Failed(String),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Io(e) => write!(f, "I/O error: {e}"),
            ApplyError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ApplyError {}

/// Why a snapshot cannot be begun: the node logs it and tries again when the next one is
/// due.
#[derive(Debug)]
pub enum SnapshotError {
    /// The state machine's own storage failed.
    Io(io::Error),
    /// Anything else.
    Failed(String),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io(e) => write!(f, "I/O error: {e}"),
            SnapshotError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// Why a snapshot cannot be restored: the node stops ([`NodeError::Snapshot`]).
#[derive(Debug)]
pub enum RestoreError {
    /// Reading the snapshot failed.
    Io(io::Error),
    /// The bytes are no snapshot of this state machine (another format, damaged).
    Invalid(String),
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreError::Io(e) => write!(f, "I/O error: {e}"),
            RestoreError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RestoreError {}
