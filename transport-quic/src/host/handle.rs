//! The handle of a running [`Host`](super::Host): proposals, reads, membership, status.

use super::forward::MemberRequest;
use super::join::JoinError;
use super::StateMachine;
use crate::transport::TransportStats;
use bytes::Bytes;
use coracle::{Index, NodeId, Role, Term};
use smol::channel::{self, Receiver, Sender};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    Join {
        members: Vec<SocketAddr>,
        limit: Duration,
        done: Done<Result<NodeId, JoinError>>,
    },
    Member {
        request: MemberRequest,
        done: Done<Result<(), MembershipError>>,
    },
    SetPriority {
        id: NodeId,
        priority: u8,
        done: Done<Result<Index, MembershipError>>,
    },
    Snapshot {
        done: Done<Result<Index, SnapshotRequestError>>,
    },
}

/// Why an operation was not carried out because the node is not running.
#[derive(Clone, Debug)]
pub(crate) enum Gone {
    ShuttingDown,
    /// Shutting down after handing leadership to `leader` (at `address`): proposals and
    /// membership changes go there.
    HandedOver {
        leader: NodeId,
        address: Option<String>,
    },
    Stopped(String),
}

impl Gone {
    pub(crate) fn propose_error(&self) -> ProposeError {
        match self {
            Gone::ShuttingDown => ProposeError::ShuttingDown,
            Gone::HandedOver { leader, address } => ProposeError::NotLeader {
                leader: Some(*leader),
                address: address.clone(),
            },
            Gone::Stopped(m) => ProposeError::Stopped(m.clone()),
        }
    }

    pub(crate) fn read_error(&self) -> ReadError {
        match self {
            Gone::ShuttingDown | Gone::HandedOver { .. } => ReadError::ShuttingDown,
            Gone::Stopped(m) => ReadError::Stopped(m.clone()),
        }
    }

    pub(crate) fn membership_error(&self) -> MembershipError {
        match self {
            Gone::ShuttingDown => MembershipError::ShuttingDown,
            Gone::HandedOver { leader, address } => MembershipError::NotLeader {
                leader: Some(*leader),
                address: address.clone(),
            },
            Gone::Stopped(m) => MembershipError::Stopped(m.clone()),
        }
    }

    pub(crate) fn join_error(&self) -> JoinError {
        match self {
            Gone::ShuttingDown | Gone::HandedOver { .. } => {
                JoinError::Stopped("the node is shutting down".into())
            }
            Gone::Stopped(m) => JoinError::Stopped(m.clone()),
        }
    }

    pub(crate) fn snapshot_error(&self) -> SnapshotRequestError {
        match self {
            Gone::ShuttingDown | Gone::HandedOver { .. } => SnapshotRequestError::ShuttingDown,
            Gone::Stopped(m) => SnapshotRequestError::Stopped(m.clone()),
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
            Op::Join { done, .. } => done(Err(why.join_error())),
            Op::Member { done, .. } => done(Err(why.membership_error())),
            Op::SetPriority { done, .. } => done(Err(why.membership_error())),
            Op::Snapshot { done } => done(Err(why.snapshot_error())),
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
    /// snapshot compacts it, a leadership transfer that has lasted two election timeouts:
    /// shorter ones hold the proposal and send it on to the new leader): retry soon.
    /// Nothing was appended.
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

/// Why [`Handle::snapshot`] or [`Handle::open_snapshot`] gave no snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotRequestError {
    /// Nothing is applied yet: there is no state to snapshot.
    Empty,
    /// The snapshot could not be taken (the node logged why) or was replaced before it
    /// was kept: retry.
    Failed(String),
    /// The kept snapshot cannot be read.
    Unreadable(String),
    /// The node is shutting down.
    ShuttingDown,
    /// The node stopped on an error.
    Stopped(String),
}

impl fmt::Display for SnapshotRequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotRequestError::Empty => {
                f.write_str("nothing to snapshot: no entry was applied yet")
            }
            SnapshotRequestError::Failed(m) => write!(f, "no snapshot taken: {m}"),
            SnapshotRequestError::Unreadable(m) => write!(f, "cannot read the snapshot: {m}"),
            SnapshotRequestError::ShuttingDown => f.write_str("the node is shutting down"),
            SnapshotRequestError::Stopped(m) => write!(f, "the node stopped: {m}"),
        }
    }
}

impl std::error::Error for SnapshotRequestError {}

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
    /// On a leader: how many bytes of log records it lacks (those of the entries after its
    /// match, as the leader's log holds them; from a running count, no scan).
    pub lag_bytes: Option<u64>,
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
    /// The node's data directory (where its kept snapshot is).
    pub(crate) dir: Arc<PathBuf>,
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
            dir: self.dir.clone(),
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
        self.ask_within(op, gone, timed_out, self.timeout).await
    }

    /// [`ask`](Self::ask), waiting at most `limit`.
    async fn ask_within<T: Send + 'static>(
        &self,
        op: impl FnOnce(Done<T>) -> Op<S>,
        gone: T,
        timed_out: T,
        limit: Duration,
    ) -> T {
        let (tx, rx) = channel::bounded(1);
        let done: Done<T> = Box::new(move |t| {
            let _ = tx.try_send(t);
        });
        let mut batch = self.batch();
        batch.ops.push(op(done));
        batch.submit().await;
        smol::future::or(async { rx.recv().await.unwrap_or(gone) }, async {
            self.runtime.sleep(limit).await;
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

    /// Joins a running cluster: asks it, through any of the members at `members` (following
    /// the leader they name), to add this node as a learner at its own address (its
    /// `[[peers]]` entry, else its listen address); its id is its certificate's. Safe to
    /// retry: a node already a member at that address is answered at once. With
    /// `[membership] auto_promote` (the default) the node then asks to be made a voter
    /// once caught up. Gives up after the handle's timeout with what went wrong at each
    /// address. Returns the node that added it (the leader), or this node's own id when it
    /// is a member already (a restart).
    pub async fn join(&self, members: &[SocketAddr]) -> Result<NodeId, JoinError> {
        let members = members.to_vec();
        let limit = self.timeout;
        // The runtime gives up after the timeout by itself; this wait only guards against
        // a loop that no longer answers.
        self.ask_within(
            |done| Op::Join {
                members,
                limit,
                done,
            },
            Err(JoinError::Stopped("the node is shutting down".into())),
            Err(JoinError::Timeout("the node did not answer".into())),
            self.timeout + Duration::from_secs(5),
        )
        .await
    }

    /// Leaves the cluster on purpose: a leader first hands leadership to another voter,
    /// then the leader removes this node. Returns once the removal is applied on the
    /// leader (or this node is no member); then shut the node down
    /// ([`shutdown`](Self::shutdown)). Gives up after the handle's timeout.
    pub async fn leave(&self) -> Result<(), MembershipError> {
        let end = std::time::Instant::now() + self.timeout;
        let mut last = MembershipError::Timeout;
        while std::time::Instant::now() < end {
            let Some(status) = self.status().await else {
                return Err(MembershipError::ShuttingDown);
            };
            if !status.members.iter().any(|m| m.id == self.id) {
                return Ok(());
            }
            if status.role == Role::Leader {
                // Hand over to the voter most up to date, then ask the new leader.
                let to = status
                    .members
                    .iter()
                    .filter(|m| m.id != self.id && m.voter)
                    .max_by_key(|m| (m.connected, m.match_index))
                    .map(|m| m.id);
                match to {
                    Some(to) => {
                        if let Err(e) = self.transfer_leadership(to).await {
                            last = e;
                        }
                    }
                    None => {
                        return Err(MembershipError::Refused(
                            "this node is the only voter: it cannot leave".into(),
                        ))
                    }
                }
                self.runtime.sleep(Duration::from_millis(50)).await;
                continue;
            }
            let asked = self
                .ask(
                    |done| Op::Member {
                        request: MemberRequest::Leave,
                        done,
                    },
                    Err(MembershipError::ShuttingDown),
                    Err(MembershipError::Timeout),
                )
                .await;
            match asked {
                Ok(()) => return Ok(()),
                Err(e @ (MembershipError::Refused(_) | MembershipError::ShuttingDown)) => {
                    return Err(e)
                }
                Err(e) => last = e,
            }
            self.runtime.sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    /// Sets the election priority of member `id` (0 to 255, see `Config::priority`) on
    /// every node: the leader replicates it through the log (and snapshots), so every
    /// node agrees; a caught-up voter of higher priority than the leader is then handed
    /// leadership. Lasts until that node restarts, when it announces its node.toml value
    /// again. Returns the index of the entry once applied on the leader.
    pub async fn set_priority(&self, id: NodeId, priority: u8) -> Result<Index, MembershipError> {
        self.ask(
            |done| Op::SetPriority { id, priority, done },
            Err(MembershipError::ShuttingDown),
            Err(MembershipError::Timeout),
        )
        .await
    }

    /// Changes several members at once through joint consensus, on the leader: each node
    /// of `add` (id and address) not a member yet is added as a learner and waited for
    /// until it holds the leader's commit index; then one joint change makes every node of
    /// `add` a voter and removes every node of `remove` (C_old,new, then C_new). Nodes of
    /// `add` already members are made voters. Retries while another change is in
    /// progress; gives up after the handle's timeout. Returns the index of the joint entry.
    pub async fn change_members(
        &self,
        add: &[(NodeId, SocketAddr)],
        remove: &[NodeId],
    ) -> Result<Index, MembershipError> {
        if let Some(id) = add.iter().map(|a| a.0).find(|id| remove.contains(id)) {
            return Err(MembershipError::Refused(format!(
                "node {id} is both added and removed"
            )));
        }
        let end = std::time::Instant::now() + self.timeout;
        let mut last = MembershipError::Timeout;
        while std::time::Instant::now() < end {
            let Some(status) = self.status().await else {
                return Err(MembershipError::ShuttingDown);
            };
            if status.role != Role::Leader {
                let address = status
                    .leader
                    .and_then(|l| status.members.iter().find(|m| m.id == l))
                    .and_then(|m| m.address.clone());
                return Err(MembershipError::NotLeader {
                    leader: status.leader,
                    address,
                });
            }
            let member = |id: NodeId| status.members.iter().find(|m| m.id == id);
            let result = match add.iter().find(|(id, _)| member(*id).is_none()) {
                // A new node first: as a learner (one at a time).
                Some(&(id, addr)) => self.add_learner(id, addr).await,
                None => {
                    let behind = add.iter().any(|(id, _)| {
                        member(*id)
                            .is_some_and(|m| !m.voter && m.match_index.unwrap_or(0) < status.commit)
                    });
                    if behind {
                        self.runtime.sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    let voters: Vec<NodeId> = status
                        .members
                        .iter()
                        .filter(|m| m.voter || add.iter().any(|a| a.0 == m.id))
                        .map(|m| m.id)
                        .filter(|id| !remove.contains(id))
                        .collect();
                    let learners: Vec<NodeId> = status
                        .members
                        .iter()
                        .filter(|m| !voters.contains(&m.id) && !remove.contains(&m.id))
                        .map(|m| m.id)
                        .collect();
                    match self.set_members(&voters, &learners).await {
                        Ok(index) => return Ok(index),
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Ok(_) => {}
                Err(e @ MembershipError::Retry(_)) | Err(e @ MembershipError::Timeout) => {
                    last = e;
                    self.runtime.sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Hands leadership to voter `id` (TimeoutNow once it is caught up). Returns once the
    /// transfer has begun. Proposals made meanwhile are held, then forwarded to the new
    /// leader (or answered [`ProposeError::NotLeader`] with it, when this node does not
    /// forward), or proposed here if the transfer is abandoned.
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

    /// Makes sure the node keeps a snapshot of its state machine with every entry applied
    /// when it is asked (on a leader after a linearizable [`read`](Self::read): every
    /// write acknowledged before): keeps the one it has if it is that recent, else takes
    /// one now, the usual way (the state machine's view written by a thread of its own
    /// while the node goes on), and returns once it is the node's durable, kept snapshot.
    /// Returns its index; read it with [`open_snapshot`](Self::open_snapshot) (a later
    /// snapshot may have replaced it by then, never an older one). Waits as long as
    /// taking the snapshot takes (no timeout: a large state takes long), until the node
    /// stops.
    pub async fn snapshot(&self) -> Result<Index, SnapshotRequestError> {
        let (tx, rx) = channel::bounded(1);
        let done: Done<Result<Index, SnapshotRequestError>> = Box::new(move |r| {
            let _ = tx.try_send(r);
        });
        let mut batch = self.batch();
        batch.ops.push(Op::Snapshot { done });
        batch.submit().await;
        rx.recv()
            .await
            .unwrap_or(Err(SnapshotRequestError::ShuttingDown))
    }

    /// The node's kept snapshot, open for reading: its index, term, the host's part and
    /// a reader of the state machine's bytes, from the file (nothing is read into memory
    /// here). `None` when the node keeps no snapshot. Blocking file I/O: call it on a
    /// thread of yours (`smol::unblock`), not on an async task.
    pub fn open_snapshot(&self) -> Result<Option<super::KeptSnapshot>, SnapshotRequestError> {
        super::KeptSnapshot::open(&self.dir)
    }

    /// Fault injection: drops every Raft message between this node and each of `peers`
    /// (an empty list heals). Client connections are not affected.
    pub async fn isolate(&self, peers: Vec<NodeId>) {
        self.ask(|done| Op::Isolate { peers, done }, (), ()).await
    }

    /// Asks the node to stop (a leader hands leadership over first, and what it holds or
    /// is asked meanwhile goes to the new leader; then it makes the log durable and
    /// closes its connections); see
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
