//! The KV protocol between clients and nodes, and the commands the log carries.
//!
//! A client opens a bidirectional QUIC stream and sends requests on it, each as one frame
//! (a 4-byte little-endian length, then a postcard [`RequestFrame`]: an id of the client's
//! choosing and the [`Request`]), without waiting for the answers. The node answers each on
//! the same stream with a [`ResponseFrame`] carrying the request's id, in the order the
//! answers are ready (a read may overtake a write). So one stream carries many requests
//! in flight, and answers that are ready together leave together. A stream may carry a
//! single request too. Enum variants are only ever appended (postcard encodes the variant
//! index).
//!
//! A frame whose length exceeds [`MAX_CLIENT_FRAME`] stops the stream. A frame that does
//! not decode is answered with [`ErrorKind::BadRequest`] under its id (id 0 when even the
//! id is unreadable), and the stream goes on.

use coracle::{Index, NodeId, Term};
use serde::{Deserialize, Serialize};

/// A change to the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Set `key` to `value`. Answered with [`WriteOutcome::Done`], whose `previous` is the
    /// value `key` had when `return_previous` is set, and always `None` otherwise.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Return the value `key` had (as etcd's `prev_kv`). Off, the state machine neither
        /// copies it nor keeps it in the session's outcome table until the client
        /// acknowledges the write, and the answer does not carry it: the cheap put.
        return_previous: bool,
    },
    /// Remove `key`. Answered with [`WriteOutcome::Done`], whose `previous` is the value
    /// `key` had when `return_previous` is set, and always `None` otherwise.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Return the value removed (as etcd's `prev_kv`); see [`WriteOp::Put`].
        return_previous: bool,
    },
    /// Set `key` to `new` (remove it if `None`) only if its value is `expected` (absent if
    /// `None`).
    Cas {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value it must have now.
        #[serde(with = "serde_bytes")]
        expected: Option<Vec<u8>>,
        /// The value it gets.
        #[serde(with = "serde_bytes")]
        new: Option<Vec<u8>>,
    },
}

/// What a write did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// A put or delete was applied.
    Done {
        /// The value the key had before, if the write asked for it (`return_previous`);
        /// `None` when the key was absent or the write did not ask.
        #[serde(with = "serde_bytes")]
        previous: Option<Vec<u8>>,
    },
    /// A compare-and-set.
    Cas {
        /// The value matched and was replaced.
        swapped: bool,
        /// The value the key had when the CAS was applied.
        #[serde(with = "serde_bytes")]
        current: Option<Vec<u8>>,
    },
    /// The request's sequence number is below what the client already acknowledged: a
    /// late duplicate, not applied.
    Stale,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Consistency {
    /// Linearizable through ReadIndex (a heartbeat round confirms the leader). The default.
    #[default]
    Linearizable,
    /// Linearizable while the leader's lease holds (relies on bounded clock drift).
    Lease,
    /// Whatever the node that answers has applied: may be stale, served by any node.
    Stale,
}

/// A read of the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadOp {
    /// The value of `key`.
    Get {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Keys starting with `prefix`, in order, at most `limit`.
    List {
        /// The prefix (empty: every key).
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
        /// The most pairs returned.
        limit: u32,
    },
}

/// Membership and leadership operations (admin certificates only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOp {
    /// Add node `id`, reachable at `addr`, as a learner.
    AddLearner {
        /// Its id.
        id: NodeId,
        /// Its address (`host:port`).
        addr: String,
    },
    /// Make learner `id` a voter.
    Promote {
        /// Its id.
        id: NodeId,
    },
    /// Remove node `id` from the cluster.
    Remove {
        /// Its id.
        id: NodeId,
    },
    /// Hand leadership to node `id`.
    Transfer {
        /// Its id.
        id: NodeId,
    },
    /// Fault injection, answered by the node it is sent to (never redirected): drop every
    /// Raft message between that node and each of `peers`, and stop dropping for the
    /// others; an empty list heals it. Client connections are not affected, so the node
    /// stays observable and can be healed. Used by `coracle demo` to split the cluster on
    /// loopback.
    Isolate {
        /// The peers it may not talk to from now on.
        peers: Vec<NodeId>,
    },
    /// The backup of the builds before streamed backups (the whole state in one answer,
    /// at most 16 MiB): answered with an error that says to use [`AdminOp::BackupStream`]
    /// (a newer `coracle`).
    Backup,
    /// The node it is sent to leaves the cluster (never redirected): a leader hands
    /// leadership over first, then the leader removes it; answered [`Response::Done`] once
    /// removed, after which the node shuts down.
    Leave,
    /// Several members at once through joint consensus: each node of `add` (id, address)
    /// is added as a learner if new and waited for until caught up, then one joint change
    /// makes them voters and removes `remove`.
    Change {
        /// Nodes to make voters: id and address (`ip:port`).
        add: Vec<(NodeId, String)>,
        /// Nodes to remove.
        remove: Vec<NodeId>,
    },
    /// Set the election priority of member `id` on every node (replicated).
    Priority {
        /// The member.
        id: NodeId,
        /// Its priority (0 to 255).
        priority: u8,
    },
    /// A consistent copy of the state ([`crate::backup`]), taken by the node it is sent to
    /// after a linearizable read (it holds every write acknowledged before it was asked)
    /// and streamed from its snapshot file: answered with [`Response::BackupBegin`], then
    /// [`Response::BackupChunk`]s holding the state in order, then [`Response::BackupEnd`]
    /// (or a [`Response::Error`] at any point, which ends it). Send it on a stream of its
    /// own: its answers are many and large.
    BackupStream,
}

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A write, deduplicated by `(client, seq)`: a retry with the same pair is applied once.
    Write {
        /// The client's session id (random, chosen by the client).
        client: u64,
        /// The request's sequence number in the session (from 1).
        seq: u64,
        /// Every sequence number below this has been answered: the state machine may forget
        /// their outcomes.
        ack_below: u64,
        /// The write.
        op: WriteOp,
    },
    /// A read.
    Read {
        /// The read.
        op: ReadOp,
        /// How fresh it must be.
        consistency: Consistency,
    },
    /// The node's view of the cluster.
    Status,
    /// A membership or leadership operation.
    Admin(AdminOp),
}

/// A member as reported by [`NodeStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its id.
    pub id: NodeId,
    /// Votes.
    pub voter: bool,
    /// Its address, if known.
    pub addr: Option<String>,
    /// Connected to the answering node right now.
    pub connected: bool,
    /// Replication progress seen by the leader: highest index known to match.
    pub match_index: Option<Index>,
}

/// A node's view of itself and the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The answering node.
    pub id: NodeId,
    /// `Follower`, `PreCandidate`, `Candidate` or `Leader`.
    pub role: String,
    /// Its current term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its commit index.
    pub commit: Index,
    /// Its applied index.
    pub applied: Index,
    /// Its last log index.
    pub last_index: Index,
    /// The members of the configuration in use.
    pub members: Vec<MemberStatus>,
    /// Keys in the store.
    pub keys: u64,
    /// Transport counters: connections refused at the handshake.
    pub refused_connections: u64,
    /// Transport counters: malformed frames and datagrams received.
    pub malformed_frames: u64,
    /// Transport counters: frames dropped because a peer was unreachable or slow.
    pub dropped_frames: u64,
    /// Transport counters: handshakes the other side gave up (timed out, closed, or
    /// refused this node's certificate).
    pub handshakes_abandoned: u64,
    /// Transport counters: UDP datagrams that were no QUIC packet for this node.
    pub stray_datagrams: u64,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Try again (no leader yet, leadership changed, too busy); a write retried with the
    /// same sequence number is applied at most once.
    Retry,
    /// The certificate does not allow the operation.
    Forbidden,
    /// The request is not valid.
    BadRequest,
    /// The node refused or failed the operation.
    Failed,
}

/// A node's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A write committed and applied.
    Written {
        /// What it did.
        outcome: WriteOutcome,
        /// Its log index.
        index: Index,
    },
    /// The value of a key.
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// Key-value pairs of a listing.
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
    /// The node's status.
    Status(NodeStatus),
    /// An admin operation was accepted.
    Done,
    /// This node is not the leader: ask `leader` at `addr`.
    Redirect {
        /// The leader known, if any.
        leader: Option<NodeId>,
        /// Its address, if known.
        addr: Option<String>,
    },
    /// The request failed.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// A human-readable explanation.
        message: String,
    },
    /// Retired: the whole backup in one answer, as the builds before streamed backups
    /// answered [`AdminOp::Backup`]. Never sent now; the variant keeps its place (postcard
    /// encodes the variant index).
    Backup(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The first answer to [`AdminOp::BackupStream`]: what the backup holds, and the
    /// length of its state, which the [`Response::BackupChunk`]s that follow carry.
    BackupBegin(crate::backup::BackupHeader),
    /// The next bytes of a backup's state.
    BackupChunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The end of a backup: every byte of its state was sent.
    BackupEnd {
        /// The CRC-32 of the state's bytes, as the node read them from its snapshot (whose
        /// own checksum it checked).
        state_crc: u32,
    },
}

/// A command of the KV state machine, as the log carries it. [`Command::Write`] is encoded
/// exactly as [`Request::Write`] (the same variant index and fields), so a node proposes
/// the bytes of a client's write as it received them ([`decode_request_command`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A client's write.
    Write {
        /// Session id.
        client: u64,
        /// Sequence number.
        seq: u64,
        /// Acknowledged below.
        ack_below: u64,
        /// The write.
        op: WriteOp,
    },
}

/// Largest frame accepted on a client stream.
pub const MAX_CLIENT_FRAME: usize = 16 << 20;

/// A request as a client stream carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the client (not 0), unique among its requests in flight on the stream.
    pub id: u64,
    /// The request.
    pub request: Request,
}

/// An answer as a client stream carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The id of the request answered (0: a frame whose id could not be read).
    pub id: u64,
    /// The answer.
    pub response: Response,
}

/// Appends `value` to `buf` as a client stream frame: a 4-byte little-endian length, then
/// the postcard bytes.
pub fn append_frame<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> Result<(), postcard::Error> {
    let bytes = postcard::to_allocvec(value)?;
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(&bytes);
    Ok(())
}

/// [`decode_request`], and for a [`Request::Write`] where its [`Command`] bytes are in
/// `body` (the request without the frame's id and without bytes after it): a node
/// proposes those bytes as received, never re-encoding the write.
///
/// ```
/// use coracle_quic::protocol::*;
/// let op = WriteOp::Delete { key: b"k".to_vec(), return_previous: false };
/// let request = Request::Write { client: 1, seq: 2, ack_below: 2, op: op.clone() };
/// let mut body = postcard::to_allocvec(&RequestFrame { id: 300, request }).unwrap();
/// body.push(0xff); // bytes after the request are not part of the command
/// let (frame, command) = decode_request_command(&body).unwrap();
/// assert_eq!(frame.id, 300);
/// let command = &body[command.unwrap()];
/// let expected = Command::Write { client: 1, seq: 2, ack_below: 2, op };
/// assert_eq!(command, &postcard::to_allocvec(&expected).unwrap()[..]);
/// ```
#[allow(clippy::type_complexity)]
pub fn decode_request_command(
    body: &[u8],
) -> Result<(RequestFrame, Option<std::ops::Range<usize>>), (u64, postcard::Error)> {
    let (id, rest) = postcard::take_from_bytes::<u64>(body).map_err(|e| (0, e))?;
    let (request, tail) = postcard::take_from_bytes::<Request>(rest).map_err(|e| (id, e))?;
    let command = matches!(request, Request::Write { .. })
        .then(|| body.len() - rest.len()..body.len() - tail.len());
    Ok((RequestFrame { id, request }, command))
}

/// Decodes the body of a request frame. When the request does not decode but its id does,
/// the error comes with the id, so the answer can name it.
pub fn decode_request(body: &[u8]) -> Result<RequestFrame, (u64, postcard::Error)> {
    postcard::from_bytes::<RequestFrame>(body).map_err(|e| {
        let id = postcard::take_from_bytes::<u64>(body).map_or(0, |(id, _)| id);
        (id, e)
    })
}
