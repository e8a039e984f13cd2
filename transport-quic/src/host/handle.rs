//! The handle of a running [`Host`](super::Host): proposals, reads, membership, status.

use super::StateMachine;
use crate::transport::TransportStats;
use bytes::Bytes;
use coracle::{Index, NodeId, Role, Term};
use smol::channel::{self, Receiver, Sender};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long the async methods of a [`Handle`] wait for an answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to call with an operation's result (on the node's event loop: keep it short).
pub(crate) type Done<T> = Box<dyn FnOnce(T) + Send>;

/// A read to run against the state machine once it is safe (or why it cannot be).
pub(crate) type ReadFn<S> = Box<dyn FnOnce(Result<&S, ReadError>) + Send>;

/// A status to hand over, with the state machine as it is.
pub(crate) type StatusFn<S> = Box<dyn FnOnce(Status, &S) + Send>;

/// A membership change as the handle asks for it.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    AddLearner {
        id: NodeId,
        addr: SocketAddr,
    },
    Promote(NodeId),
    Demote(NodeId),
    Remove(NodeId),
    Joint {
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
    },
}

/// One operation for the node's event loop.
pub(crate) enum Op<S: StateMachine> {
    Propose {
        command: Bytes,
        done: Done<Result<S::Response, ProposeError>>,
    },
    Read {
        mode: ReadMode,
        run: ReadFn<S>,
    },
    Change {
        change: Change,
        done: Done<Result<Index, MembershipError>>,
    },
    Transfer {
        to: NodeId,
        done: Done<Result<(), MembershipError>>,
    },
    Status {
        run: StatusFn<S>,
    },
    Isolate {
        peers: Vec<NodeId>,
        done: Done<()>,
    },
    Watch {
        to: Sender<Status>,
    },
}

/// Why an operation was not carried out because the node is not running.
#[derive(Clone, Debug)]
pub(crate) enum Gone {
    ShuttingDown,
    Stopped(String),
}

impl Gone {
    pub(crate) fn propose_error(&self) -> ProposeError {
        match self {
            Gone::ShuttingDown => ProposeError::ShuttingDown,
            Gone::Stopped(m) => ProposeError::Stopped(m.clone()),
        }
    }

    pub(crate) fn read_error(&self) -> ReadError {
        match self {
            Gone::ShuttingDown => ReadError::ShuttingDown,
            Gone::Stopped(m) => ReadError::Stopped(m.clone()),
        }
    }

    pub(crate) fn membership_error(&self) -> MembershipError {
        match self {
            Gone::ShuttingDown => MembershipError::ShuttingDown,
            Gone::Stopped(m) => MembershipError::Stopped(m.clone()),
        }
    }
}

impl<S: StateMachine> Op<S> {
    /// Answers the operation with the reason the node cannot carry it out.
    pub(crate) fn fail(self, why: &Gone) {
        match self {
            Op::Propose { done, .. } => done(Err(why.propose_error())),
            Op::Read { run, .. } => run(Err(why.read_error())),
            Op::Change { done, .. } => done(Err(why.membership_error())),
            Op::Transfer { done, .. } => done(Err(why.membership_error())),
            Op::Status { .. } | Op::Watch { .. } => {}
            Op::Isolate { done, .. } => done(()),
        }
    }
}

/// A request for the node's event loop.
pub(crate) enum Call<S: StateMachine> {
    Ops(Vec<Op<S>>),
    Shutdown,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// Linearizable: the leader confirms with a heartbeat round that it still leads
    /// (ReadIndex, thesis 6.4), and the read runs once the state machine has applied
    /// everything committed when it was asked. The default.
    #[default]
    ReadIndex,
    /// Linearizable while the leader's lease holds (no round; relies on bounded clock
    /// drift between the nodes).
    Lease,
    /// Runs at once against what this node has applied: may be stale, served by any node.
    Stale,
}

/// Why a proposal was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// This node does not lead: propose to `leader` (reachable at `address`), if one is
    /// known. Nothing was appended.
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
        /// Where it listens, if known.
        address: Option<String>,
    },
    /// The leader cannot take it now (too many entries uncommitted, the log full while a
    /// snapshot compacts it, leadership being handed over): retry soon. Nothing was
    /// appended.
    Busy(String),
    /// The command is larger than `raft.max_entry_bytes`. Nothing was appended.
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The command was appended, but leadership changed (or a snapshot replaced the state
    /// machine) before this node saw it applied: it may or may not be applied. Retry if
    /// your commands are idempotent or deduplicated (client sessions).
    OutcomeUnknown(String),
    /// No answer within the handle's timeout: it may or may not be applied.
    Timeout,
    /// The node is shutting down.
    ShuttingDown,
    /// The node stopped on an error.
    Stopped(String),
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader {
                leader: Some(l),
                address,
            } => write!(
                f,
                "not the leader; node {l} is (at {})",
                address.as_deref().unwrap_or("an unknown address")
            ),
            ProposeError::NotLeader { leader: None, .. } => {
                f.write_str("not the leader; no leader known")
            }
            ProposeError::Busy(m) | ProposeError::OutcomeUnknown(m) => f.write_str(m),
            ProposeError::TooLarge { len, max } => {
                write!(f, "command of {len} bytes exceeds the limit of {max}")
            }
            ProposeError::Timeout => f.write_str("no answer in time; the outcome is unknown"),
            ProposeError::ShuttingDown => f.write_str("the node is shutting down"),
            ProposeError::Stopped(m) => write!(f, "the node stopped: {m}"),
        }
    }
}

impl std::error::Error for ProposeError {}

/// Why a read was not served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// No leader is known to confirm the read: retry once one is elected.
    NoLeader,
    /// Too many reads are pending: retry soon.
    Busy,
    /// The leader could not confirm it still leads (leadership changed): retry.
    NotConfirmed,
    /// No answer within the handle's timeout.
    Timeout,
    /// The node is shutting down.
    ShuttingDown,
    /// The node stopped on an error.
    Stopped(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NoLeader => f.write_str("no leader known to serve the read"),
            ReadError::Busy => f.write_str("too many pending reads; retry later"),
            ReadError::NotConfirmed => f.write_str("read not confirmed; retry"),
            ReadError::Timeout => f.write_str("no answer in time"),
            ReadError::ShuttingDown => f.write_str("the node is shutting down"),
            ReadError::Stopped(m) => write!(f, "the node stopped: {m}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Why a membership change or a leadership transfer was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipError {
    /// Only the leader changes the membership: ask `leader` (at `address`).
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
        /// Where it listens, if known.
        address: Option<String>,
    },
    /// Not now (a change is in progress, the leader has not committed an entry of its
    /// term yet, leadership is being handed over): retry soon.
    Retry(String),
    /// The change is not valid (unknown node, last voter, a learner behind...).
    Refused(String),
    /// No answer within the handle's timeout.
    Timeout,
    /// The node is shutting down.
    ShuttingDown,
    /// The node stopped on an error.
    Stopped(String),
}

impl fmt::Display for MembershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembershipError::NotLeader {
                leader: Some(l),
                address,
            } => write!(
                f,
                "not the leader; node {l} is (at {})",
                address.as_deref().unwrap_or("an unknown address")
            ),
            MembershipError::NotLeader { leader: None, .. } => {
                f.write_str("not the leader; no leader known")
            }
            MembershipError::Retry(m) | MembershipError::Refused(m) => f.write_str(m),
            MembershipError::Timeout => f.write_str("no answer in time"),
            MembershipError::ShuttingDown => f.write_str("the node is shutting down"),
            MembershipError::Stopped(m) => write!(f, "the node stopped: {m}"),
        }
    }
}

impl std::error::Error for MembershipError {}

/// A member as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its id.
    pub id: NodeId,
    /// It votes.
    pub voter: bool,
    /// Where it listens, if known.
    pub address: Option<String>,
    /// Connected to this node now (always true for this node itself).
    pub connected: bool,
    /// On a leader: the highest index known to be replicated on it.
    pub match_index: Option<Index>,
    /// On a leader: how many entries it lacks (the leader's last index minus its match).
    pub lag: Option<u64>,
}

/// The snapshots of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// The index of the last snapshot saved or restored.
    pub last: Index,
    /// The index of the snapshot being written now, if one is.
    pub writing: Option<Index>,
}

/// The transport's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportCounters {
    /// Connections refused at the handshake.
    pub refused_connections: u64,
    /// Handshakes the other side gave up.
    pub handshakes_abandoned: u64,
    /// UDP datagrams that were no QUIC packet for this node.
    pub stray_datagrams: u64,
    /// Malformed frames and datagrams received.
    pub malformed_frames: u64,
    /// Frames dropped because a peer was unreachable or slow.
    pub dropped_frames: u64,
}

/// A node's view of itself and the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its cluster's id.
    pub cluster: u64,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its commit index.
    pub commit: Index,
    /// The index of the last entry its state machine applied.
    pub applied: Index,
    /// Its last log index.
    pub last_index: Index,
    /// The members of the configuration in use, this node included.
    pub members: Vec<MemberStatus>,
    /// Its snapshots.
    pub snapshot: SnapshotStatus,
    /// Its transport's counters.
    pub transport: TransportCounters,
}

/// A cloneable, `Send` handle on a running [`Host`](super::Host): every method may be
/// called from any thread or task, on any async runtime. The async methods wait at most
/// the handle's timeout ([`with_timeout`](Self::with_timeout); 10 s by default).
pub struct Handle<S: StateMachine> {
    pub(crate) id: NodeId,
    pub(crate) calls: Sender<Call<S>>,
    pub(crate) timeout: Duration,
    pub(crate) stats: Arc<OnceLock<Arc<TransportStats>>>,
    /// The largest command accepted (`raft.max_entry_bytes`).
    pub(crate) max_command: usize,
    /// What the handle's timeouts run on (the node's runtime).
    pub(crate) runtime: crate::rt::Runtime,
}

impl<S: StateMachine> Clone for Handle<S> {
    fn clone(&self) -> Self {
        Handle {
            id: self.id,
            calls: self.calls.clone(),
            timeout: self.timeout,
            stats: self.stats.clone(),
            max_command: self.max_command,
            runtime: self.runtime.clone(),
        }
    }
}

impl<S: StateMachine> fmt::Debug for Handle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("id", &self.id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine> Handle<S> {
    /// The id of the node this handle is on.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The same handle with the async methods waiting at most `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A batch of operations to hand to the node at once (no task or channel per
    /// operation: what a service that reads many requests together uses).
    pub fn batch(&self) -> Batch<S> {
        Batch {
            handle: self.clone(),
            ops: Vec::new(),
        }
    }

    /// The runtime the node runs on (to run a task beside it, as a
    /// [`ServeClient`](crate::host::ServeClient) does for each connection).
    pub fn runtime(&self) -> &crate::rt::Runtime {
        &self.runtime
    }

    /// Hands the operation `op` makes to the node and waits for its answer: `gone` if the
    /// node drops it unanswered, `timed_out` after the handle's timeout.
    async fn ask<T: Send + 'static>(
        &self,
        op: impl FnOnce(Done<T>) -> Op<S>,
        gone: T,
        timed_out: T,
    ) -> T {
        let (tx, rx) = channel::bounded(1);
        let done: Done<T> = Box::new(move |t| {
            let _ = tx.try_send(t);
        });
        let mut batch = self.batch();
        batch.ops.push(op(done));
        batch.submit().await;
        smol::future::or(async { rx.recv().await.unwrap_or(gone) }, async {
            self.runtime.sleep(self.timeout).await;
            timed_out
        })
        .await
    }

    /// Proposes `command`; returns the state machine's response once the entry is
    /// committed and applied on this node (the leader). On a follower:
    /// [`ProposeError::NotLeader`] with the leader it knows.
    pub async fn propose(&self, command: impl Into<Bytes>) -> Result<S::Response, ProposeError> {
        let command = command.into();
        if command.len() > self.max_command {
            return Err(ProposeError::TooLarge {
                len: command.len(),
                max: self.max_command,
            });
        }
        self.ask(
            |done| Op::Propose { command, done },
            Err(ProposeError::ShuttingDown),
            Err(ProposeError::Timeout),
        )
        .await
    }

    /// Runs `f` against the state machine once a read in `mode` is safe, and returns what
    /// it returns. With [`ReadMode::ReadIndex`] and [`ReadMode::Lease`] it sees every write
    /// acknowledged before the read was asked (on a follower too: the leader confirms).
    /// `f` runs on the node's event loop: keep it short (copy out what you need).
    pub async fn read<R: Send + 'static>(
        &self,
        mode: ReadMode,
        f: impl FnOnce(&S) -> R + Send + 'static,
    ) -> Result<R, ReadError> {
        self.ask(
            |done| Op::Read {
                mode,
                run: Box::new(move |s| done(s.map(f))),
            },
            Err(ReadError::ShuttingDown),
            Err(ReadError::Timeout),
        )
        .await
    }

    async fn change(&self, change: Change) -> Result<Index, MembershipError> {
        self.ask(
            |done| Op::Change { change, done },
            Err(MembershipError::ShuttingDown),
            Err(MembershipError::Timeout),
        )
        .await
    }

    /// Adds node `id`, listening at `addr`, as a learner (it receives the log, does not
    /// vote); the address is replicated, so every node reaches it. Returns the index of
    /// the configuration entry once it is applied.
    pub async fn add_learner(
        &self,
        id: NodeId,
        addr: SocketAddr,
    ) -> Result<Index, MembershipError> {
        self.change(Change::AddLearner { id, addr }).await
    }

    /// Makes learner `id` a voter (once it holds every committed entry).
    pub async fn promote(&self, id: NodeId) -> Result<Index, MembershipError> {
        self.change(Change::Promote(id)).await
    }

    /// Makes voter `id` a learner.
    pub async fn demote(&self, id: NodeId) -> Result<Index, MembershipError> {
        self.change(Change::Demote(id)).await
    }

    /// Removes node `id` (a leader that removes itself steps down once it commits).
    pub async fn remove(&self, id: NodeId) -> Result<Index, MembershipError> {
        self.change(Change::Remove(id)).await
    }

    /// Changes to an arbitrary configuration through joint consensus (several members
    /// added, removed, promoted or demoted at once): C_old,new first, C_new once that
    /// commits. Every member must be known already (add new nodes with
    /// [`add_learner`](Self::add_learner) first). Returns the index of the joint entry.
    pub async fn set_members(
        &self,
        voters: &[NodeId],
        learners: &[NodeId],
    ) -> Result<Index, MembershipError> {
        self.change(Change::Joint {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
        })
        .await
    }

    /// Hands leadership to voter `id` (TimeoutNow once it is caught up). Returns once the
    /// transfer has begun.
    pub async fn transfer_leadership(&self, id: NodeId) -> Result<(), MembershipError> {
        self.ask(
            |done| Op::Transfer { to: id, done },
            Err(MembershipError::ShuttingDown),
            Err(MembershipError::Timeout),
        )
        .await
    }

    /// The node's status now; `None` once it stopped.
    pub async fn status(&self) -> Option<Status> {
        self.ask(
            |done| Op::Status {
                run: Box::new(move |status, _| done(Some(status))),
            },
            None,
            None,
        )
        .await
    }

    /// The node's status whenever it changes (role, term, leader at once; commit, applied,
    /// members' progress and snapshots at most every 50 ms). The receiver holds the
    /// newest status only; it ends when the node stops.
    pub fn watch(&self) -> Receiver<Status> {
        let (to, rx) = channel::bounded(1);
        let _ = self.calls.try_send(Call::Ops(vec![Op::Watch { to }]));
        rx
    }

    /// Fault injection: drops every Raft message between this node and each of `peers`
    /// (an empty list heals). Client connections are not affected.
    pub async fn isolate(&self, peers: Vec<NodeId>) {
        self.ask(|done| Op::Isolate { peers, done }, (), ()).await
    }

    /// Asks the node to stop (a leader hands leadership over first; then it makes the log
    /// durable and closes its connections); see
    /// [`Host::shutdown`](super::Host::shutdown) to wait for it.
    pub fn shutdown(&self) {
        let _ = self.calls.try_send(Call::Shutdown);
    }

    /// The transport's counters (shared with the node), once it is started.
    pub fn transport_stats(&self) -> Option<Arc<TransportStats>> {
        self.stats.get().cloned()
    }
}

/// Operations handed to the node together ([`Handle::batch`]). Each is answered by
/// calling its closure on the node's event loop: keep them short (send to a channel).
pub struct Batch<S: StateMachine> {
    handle: Handle<S>,
    ops: Vec<Op<S>>,
}

impl<S: StateMachine> fmt::Debug for Batch<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("ops", &self.ops.len())
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine> Batch<S> {
    /// Proposes `command`; `done` gets the response once applied, or why not.
    pub fn propose(
        &mut self,
        command: Bytes,
        done: impl FnOnce(Result<S::Response, ProposeError>) + Send + 'static,
    ) {
        if command.len() > self.handle.max_command {
            return done(Err(ProposeError::TooLarge {
                len: command.len(),
                max: self.handle.max_command,
            }));
        }
        self.ops.push(Op::Propose {
            command,
            done: Box::new(done),
        });
    }

    /// Runs `run` against the state machine once a read in `mode` is safe (or with why
    /// it cannot be).
    pub fn read(
        &mut self,
        mode: ReadMode,
        run: impl FnOnce(Result<&S, ReadError>) + Send + 'static,
    ) {
        self.ops.push(Op::Read {
            mode,
            run: Box::new(run),
        });
    }

    /// Calls `run` with the node's status and its state machine.
    pub fn status(&mut self, run: impl FnOnce(Status, &S) + Send + 'static) {
        self.ops.push(Op::Status { run: Box::new(run) });
    }

    /// Operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Hands the operations to the node, waiting while its queue is full. If the node
    /// is gone, each is answered with [`ProposeError::ShuttingDown`] (or the like).
    pub async fn submit(self) {
        if self.ops.is_empty() {
            return;
        }
        if let Err(channel::SendError(Call::Ops(ops))) =
            self.handle.calls.send(Call::Ops(self.ops)).await
        {
            for op in ops {
                op.fail(&Gone::ShuttingDown);
            }
        }
    }
}
