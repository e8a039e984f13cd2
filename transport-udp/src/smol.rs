//! The smol / async-io driver (feature `smol`): a node task that owns the
//! core, the socket and a timer, and a [`NodeHandle`] through which other
//! tasks (or threads) propose, read and ask for the node's status.
//!
//! The task is the shared [`event_loop::run`] over [`SmolDatagrams`] (an
//! `async_io::Async<std::net::UdpSocket>` with an address book) and
//! [`SmolClock`] (`async_io::Timer`). It runs on any executor; spawn it with
//! `smol::spawn`, and drop it to kill the node.
//!
//! ```no_run
//! use std::time::Duration;
//! use coracle::{Config, Node, Batch, Persist, VecLog};
//! use coracle_udp::codec::{mtu_config, Link, DEFAULT_ENTRIES};
//! use coracle_udp::node::{Application, Completion, UdpNode};
//! use coracle_udp::smol::{node_task, SmolDatagrams};
//! use coracle_udp::{ClusterKey, SendCounter};
//!
//! struct Kv; // the state machine
//! impl Application for Kv {
//!     fn persist(&mut self, _batch: &Batch<'_>) -> Completion {
//!         Completion::Now // memory only; a durable host writes and flushes the batch
//!     }
//!     fn output(&mut self, _output: coracle::Output<'_>) { /* apply entries */ }
//!     fn persist_counter(&mut self, _mark: u64) -> bool { true /* write it to a file */ }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! let key = ClusterKey::from_bytes([7; 32]);
//! let config = mtu_config::<1200, DEFAULT_ENTRIES>(Config::new(1, 1));
//! let node = Node::new(config, VecLog::new(), &[1, 2, 3]).expect("valid config");
//! let link = Link::new(&key, 42, 1, SendCounter::resume(None, 4096));
//! let udp: UdpNode<VecLog> = UdpNode::new(node, link).expect("room for the peers");
//! let mut net = SmolDatagrams::bind("127.0.0.1:7001".parse().expect("address"))?;
//! net.set_peer(2, "127.0.0.1:7002".parse().expect("address"));
//! net.set_peer(3, "127.0.0.1:7003".parse().expect("address"));
//! let (handle, task) = node_task(udp, Kv, net, Duration::from_millis(10));
//! let task = smol::spawn(task);
//! smol::block_on(async {
//!     match handle.propose(b"x=1".to_vec()).await {
//!         Ok(p) => println!("committed at {}", p.index),
//!         Err(e) => println!("not committed: {e}"),
//!     }
//! });
//! drop(task);
//! # Ok(())
//! # }
//! ```

use core::fmt;
use core::future::Future;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use std::vec::Vec;

use async_io::{Async, Timer};
use coracle::{
    Batch, Counters, Entry, Index, LogStorage, NodeId, Output, Proposal, ProposeError, ReadError,
    ReadMode, Role, SnapshotError, SnapshotMeta, SyncToken, Term,
};

use crate::codec::CodecCounters;
use crate::drops::DropCounters;
use crate::event_loop::{self, Clock, Control, Datagrams};
use crate::node::{Application, Completion, NodeCounters, UdpNode};

/// A UDP socket registered with async-io, and the addresses of the peers.
#[derive(Debug)]
pub struct SmolDatagrams {
    socket: Async<UdpSocket>,
    peers: Vec<(NodeId, SocketAddr)>,
}

impl SmolDatagrams {
    /// Wraps a socket; no peer addresses yet.
    #[must_use]
    pub fn new(socket: Async<UdpSocket>) -> Self {
        Self {
            socket,
            peers: Vec::new(),
        }
    }

    /// Binds a socket to `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// The socket's.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Async::<UdpSocket>::bind(addr).map(Self::new)
    }

    /// The address the socket is bound to.
    ///
    /// # Errors
    /// The socket's.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.get_ref().local_addr()
    }

    /// Sets (or replaces) the address of node `peer`.
    pub fn set_peer(&mut self, peer: NodeId, addr: SocketAddr) {
        match self.peers.iter_mut().find(|(id, _)| *id == peer) {
            Some(entry) => entry.1 = addr,
            None => self.peers.push((peer, addr)),
        }
    }

    /// The address of node `peer`.
    #[must_use]
    pub fn peer(&self, peer: NodeId) -> Option<SocketAddr> {
        self.peers
            .iter()
            .find(|(id, _)| *id == peer)
            .map(|&(_, addr)| addr)
    }
}

impl Datagrams for SmolDatagrams {
    type Error = io::Error;

    async fn send(&mut self, to: NodeId, datagram: &[u8]) -> io::Result<()> {
        let addr = self
            .peer(to)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address for this peer"))?;
        self.socket.send_to(datagram, addr).await.map(|_| ())
    }

    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv_from(buf).await.map(|(len, _)| len)
    }
}

/// Ticks of a fixed [`Duration`] since the clock was made, with
/// `async_io::Timer` to sleep.
#[derive(Clone, Copy, Debug)]
pub struct SmolClock {
    start: Instant,
    tick: Duration,
}

impl SmolClock {
    /// A clock starting now, with ticks of `tick` (at least 1 µs).
    #[must_use]
    pub fn new(tick: Duration) -> Self {
        Self {
            start: Instant::now(),
            tick: tick.max(Duration::from_micros(1)),
        }
    }

    /// The instant of tick `tick`, if it is representable.
    #[must_use]
    pub fn instant_of(&self, tick: u64) -> Option<Instant> {
        let nanos = u64::try_from(self.tick.as_nanos())
            .ok()?
            .checked_mul(tick)?;
        self.start.checked_add(Duration::from_nanos(nanos))
    }
}

impl Clock for SmolClock {
    fn now(&self) -> u64 {
        let elapsed = self.start.elapsed().as_nanos() / self.tick.as_nanos();
        u64::try_from(elapsed).unwrap_or(u64::MAX)
    }

    async fn sleep_until(&mut self, tick: u64) {
        match self.instant_of(tick) {
            Some(at) => {
                Timer::at(at).await;
            }
            None => {
                Timer::never().await;
            }
        }
    }
}

/// Why a request through a [`NodeHandle`] did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The node refused the proposal (not the leader, too large, busy...).
    Propose(ProposeError),
    /// The node refused the read.
    Read(ReadError),
    /// The proposal was appended but another entry committed at its index
    /// (a new leader overwrote it): it will never commit.
    Lost {
        /// The term of the entry that committed there.
        committed_term: Term,
    },
    /// The read could not be confirmed (leadership changed): retry.
    ReadFailed,
    /// The node refused the snapshot.
    Snapshot(SnapshotError),
    /// The node task is gone.
    Stopped,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Propose(e) => write!(f, "proposal refused: {e}"),
            Self::Read(e) => write!(f, "read refused: {e}"),
            Self::Lost { committed_term } => write!(
                f,
                "proposal lost: an entry of term {committed_term} committed at its index"
            ),
            Self::ReadFailed => f.write_str("read not confirmed; retry"),
            Self::Snapshot(e) => write!(f, "snapshot refused: {e}"),
            Self::Stopped => f.write_str("node task stopped"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A snapshot of a node's state and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The node's id.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its commit index.
    pub commit_index: Index,
    /// The last index it handed out to apply.
    pub applied_index: Index,
    /// The last index of its log.
    pub last_index: Index,
    /// Datagrams the security layer dropped, per reason.
    pub drops: DropCounters,
    /// The codec's counters.
    pub codec: CodecCounters,
    /// The driver's counters.
    pub driver: NodeCounters,
    /// The core's counters.
    pub core: Counters,
}

type Reply<T> = async_channel::Sender<Result<T, ClientError>>;

/// A request for the node task.
#[derive(Debug)]
pub struct Command(Request);

#[derive(Debug)]
enum Request {
    Propose(Vec<u8>, Reply<Proposal>),
    Read(ReadMode, Reply<Index>),
    Status(Reply<Status>),
    Campaign,
    SnapshotTaken(Index, Reply<SnapshotMeta>),
    Persisted(SyncToken),
    PersistFailed,
}

/// Talks to a node task from any task or thread. Cloneable; the task stops
/// when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    commands: async_channel::Sender<Command>,
}

impl NodeHandle {
    async fn ask<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, ClientError> {
        let (tx, rx) = async_channel::bounded(1);
        self.commands
            .send(Command(request(tx)))
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.recv().await.map_err(|_| ClientError::Stopped)?
    }

    /// Proposes `command` and waits until it is committed and applied on
    /// this node (which must be the leader).
    ///
    /// # Errors
    /// [`ClientError::Propose`] at once if the node refuses it,
    /// [`ClientError::Lost`] if another entry commits at its index. If the
    /// node loses leadership and no entry commits at that index for a
    /// while, this waits: bound it with a timeout.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Proposal, ClientError> {
        self.ask(|tx| Request::Propose(command, tx)).await
    }

    /// A linearizable read: waits until the node's state machine may serve
    /// it, and returns the read index (the state machine has applied through
    /// it).
    ///
    /// # Errors
    /// [`ClientError::Read`] if the node refuses it, [`ClientError::ReadFailed`]
    /// if leadership changed.
    pub async fn read(&self, mode: ReadMode) -> Result<Index, ClientError> {
        self.ask(|tx| Request::Read(mode, tx)).await
    }

    /// The node's state and counters.
    ///
    /// # Errors
    /// [`ClientError::Stopped`] if the task is gone.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.ask(Request::Status).await
    }

    /// Asks the node to start an election now.
    ///
    /// # Errors
    /// [`ClientError::Stopped`] if the task is gone.
    pub async fn campaign(&self) -> Result<(), ClientError> {
        self.tell(Request::Campaign).await
    }

    /// The host's snapshot store holds its state machine at applied `index`:
    /// the node keeps it as its snapshot and compacts its log behind it
    /// ([`coracle::Node::snapshot_taken`]). Returns the snapshot's metadata.
    ///
    /// # Errors
    /// [`ClientError::Snapshot`] if the node refuses it.
    pub async fn snapshot_taken(&self, index: Index) -> Result<SnapshotMeta, ClientError> {
        self.ask(|tx| Request::SnapshotTaken(index, tx)).await
    }

    /// The batches through `token`, which the [`Application`] took with
    /// [`Completion::Later`], are durable now (from the thread or task that
    /// flushed them).
    ///
    /// # Errors
    /// [`ClientError::Stopped`] if the task is gone.
    pub async fn persisted(&self, token: SyncToken) -> Result<(), ClientError> {
        self.tell(Request::Persisted(token)).await
    }

    /// A batch the [`Application`] took with [`Completion::Later`] could not
    /// be made durable: the node acknowledges nothing from now on.
    ///
    /// # Errors
    /// [`ClientError::Stopped`] if the task is gone.
    pub async fn persist_failed(&self) -> Result<(), ClientError> {
        self.tell(Request::PersistFailed).await
    }

    async fn tell(&self, request: Request) -> Result<(), ClientError> {
        self.commands
            .send(Command(request))
            .await
            .map_err(|_| ClientError::Stopped)
    }
}

/// The task's [`Control`]: the host's [`Application`], the command queue,
/// and the requests waiting for an output.
struct Driven<A> {
    app: A,
    commands: async_channel::Receiver<Command>,
    proposals: Vec<(Proposal, Reply<Proposal>)>,
    reads: Vec<(u64, Reply<Index>)>,
    next_read: u64,
}

impl<A: Application> Application for Driven<A> {
    fn persist(&mut self, batch: &Batch<'_>) -> Completion {
        self.app.persist(batch)
    }

    fn fetch(&mut self, from: Index, to: Index, hand_in: &mut dyn FnMut(Entry<'_>)) -> Completion {
        self.app.fetch(from, to, hand_in)
    }

    fn snapshot_chunk(
        &mut self,
        index: Index,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<(usize, bool)> {
        self.app.snapshot_chunk(index, offset, buf)
    }

    fn output(&mut self, output: Output<'_>) {
        match &output {
            Output::Apply(entry) => self.proposals.retain(|(proposal, reply)| {
                if proposal.index != entry.index {
                    return true;
                }
                let result = if proposal.term == entry.term {
                    Ok(*proposal)
                } else {
                    Err(ClientError::Lost {
                        committed_term: entry.term,
                    })
                };
                let _ = reply.try_send(result);
                false
            }),
            Output::ReadReady { id, index } => self.answer_read(*id, Ok(*index)),
            Output::ReadFailed { id } => self.answer_read(*id, Err(ClientError::ReadFailed)),
            _ => {}
        }
        self.app.output(output);
    }

    fn persist_counter(&mut self, mark: u64) -> bool {
        self.app.persist_counter(mark)
    }
}

impl<A> Driven<A> {
    fn answer_read(&mut self, id: u64, result: Result<Index, ClientError>) {
        if let Some(at) = self.reads.iter().position(|(read, _)| *read == id) {
            let (_, reply) = self.reads.swap_remove(at);
            let _ = reply.try_send(result);
        }
    }
}

impl<A, S, const N: usize, const MTU: usize, const E: usize> Control<UdpNode<S, N, MTU, E>>
    for Driven<A>
where
    A: Application,
    S: LogStorage,
{
    type Command = Command;

    async fn next_command(&mut self) -> Option<Command> {
        self.commands.recv().await.ok()
    }

    fn command(&mut self, udp: &mut UdpNode<S, N, MTU, E>, Command(request): Command) {
        match request {
            Request::Propose(command, reply) => match udp.node_mut().propose(&command) {
                Ok(proposal) => self.proposals.push((proposal, reply)),
                Err(e) => {
                    let _ = reply.try_send(Err(ClientError::Propose(e)));
                }
            },
            Request::Read(mode, reply) => {
                let id = self.next_read;
                self.next_read = self.next_read.wrapping_add(1);
                match udp.node_mut().read(id, mode) {
                    Ok(()) => self.reads.push((id, reply)),
                    Err(e) => {
                        let _ = reply.try_send(Err(ClientError::Read(e)));
                    }
                }
            }
            Request::Status(reply) => {
                let node = udp.node();
                let status = Status {
                    id: node.id(),
                    role: node.role(),
                    term: node.term(),
                    leader: node.leader(),
                    commit_index: node.commit_index(),
                    applied_index: node.applied_index(),
                    last_index: node.last_index(),
                    drops: *udp.link().drops(),
                    codec: *udp.link().counters(),
                    driver: *udp.counters(),
                    core: *node.counters(),
                };
                let _ = reply.try_send(Ok(status));
            }
            Request::Campaign => udp.node_mut().campaign(),
            Request::SnapshotTaken(index, reply) => {
                let result = udp.node_mut().snapshot_taken(index);
                let _ = reply.try_send(result.map_err(ClientError::Snapshot));
            }
            Request::Persisted(token) => udp.persisted(token),
            Request::PersistFailed => udp.persist_failed(),
        }
    }
}

/// Capacity of a node task's command queue: senders wait beyond it.
pub const COMMAND_QUEUE: usize = 256;

/// A node task over `net` with ticks of `tick`, and its handle.
///
/// The task runs [`event_loop::run`] until every handle is dropped, then
/// returns the node and the application; dropping the task instead kills
/// the node (what a crash looks like to its peers). Proposals and reads
/// still pending then are answered with [`ClientError::Stopped`].
pub fn node_task<S, A, D, const N: usize, const MTU: usize, const E: usize>(
    mut udp: UdpNode<S, N, MTU, E>,
    app: A,
    mut net: D,
    tick: Duration,
) -> (NodeHandle, impl Future<Output = (UdpNode<S, N, MTU, E>, A)>)
where
    S: LogStorage,
    A: Application,
    D: Datagrams,
{
    let (tx, rx) = async_channel::bounded(COMMAND_QUEUE);
    let task = async move {
        let mut control = Driven {
            app,
            commands: rx,
            proposals: Vec::new(),
            reads: Vec::new(),
            next_read: 0,
        };
        let mut clock = SmolClock::new(tick);
        event_loop::run(&mut udp, &mut control, &mut net, &mut clock).await;
        (udp, control.app)
    };
    (NodeHandle { commands: tx }, task)
}
