//! [`UdpNode`]: a core [`Node`] wired to a [`Link`], the part of a UDP host
//! that does not depend on the socket API, the executor or the clock.
//!
//! It follows the run loop of [`coracle::Node`] in the style of quinn-proto:
//! feed it a datagram ([`UdpNode::receive`]) or the time
//! ([`UdpNode::advance_to`]), then call [`UdpNode::poll_transmit`] until it
//! returns `None`, sending each datagram it leaves in the buffer. In between
//! it answers [`Output::Sync`] itself (the storage's [`Durable::sync`], then
//! [`Node::synced`]), persists the send counter through the
//! [`Application`] when due, and hands every other output (entries to apply,
//! reads, role changes) to the [`Application`].
//!
//! The std example (`examples/std_loop.rs`), the async drivers
//! ([`crate::event_loop::run`]) and a board's own loop all drive it the same
//! way. No allocation, no I/O.

use core::fmt;

use coracle::{ArrayLog, LogStorage, Node, NodeId, Output, StorageError};

use crate::codec::{Link, RecvError, DEFAULT_ENTRIES};
use crate::frame::{Datagram, DEFAULT_MTU};
use crate::open::PeerTableFull;

/// A log storage that can be made durable: the sync hook of
/// [`Output::Sync`].
///
/// The in-memory logs of the core ([`ArrayLog`], and `VecLog` with `std`)
/// implement it as a no-op; a file or flash log flushes here (once for many
/// writes: the core batches them).
pub trait Durable {
    /// Makes every write so far durable.
    ///
    /// # Errors
    /// The storage's error; the node is then not told the writes are
    /// durable (and so acknowledges nothing that depends on them).
    fn sync(&mut self) -> Result<(), StorageError>;
}

impl<const CAP: usize, const DATA: usize> Durable for ArrayLog<CAP, DATA> {
    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

#[cfg(feature = "std")]
impl Durable for coracle::VecLog {
    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// What a host does with the outputs that are not datagrams.
pub trait Application {
    /// An output other than [`Output::Send`] and [`Output::Sync`]:
    /// [`Output::Apply`] (apply the entry to the state machine, in order),
    /// [`Output::StateChanged`], [`Output::ReadReady`], [`Output::ReadFailed`]
    /// and kinds the core may add later (ignore those).
    fn output(&mut self, output: Output<'_>);

    /// Writes the send counter's high-water `mark` to durable storage (see
    /// [`crate::counter`]); returns `true` once it is durable. Until it does,
    /// the node may run out of counters and stop sending (counted as
    /// [`crate::codec::CodecCounters::seal_failed`]).
    ///
    /// A store that forgets the mark makes a rebooted node reuse counters:
    /// its peers drop those datagrams as replays, and the nonce repeats.
    fn persist_counter(&mut self, mark: u64) -> bool;
}

/// Counters of a [`UdpNode`] beyond those of its [`Link`] and [`Node`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeCounters {
    /// [`Durable::sync`] failures.
    pub sync_failures: u64,
    /// Send-counter marks the [`Application`] did not persist.
    pub counter_persist_failures: u64,
    /// Times a member did not fit the link's peer table.
    pub peer_table_full: u64,
    /// Datagrams the socket failed to send (reported by a driver).
    pub send_errors: u64,
    /// Socket receive errors (reported by a driver).
    pub recv_errors: u64,
}

/// A Raft node over authenticated datagrams.
///
/// `N` is the peer capacity of the node (and of the link's peer table),
/// `MTU` the largest datagram, `E` the most entries a received AppendEntries
/// may carry. Configure the node with
/// [`mtu_config::<MTU, E>`](crate::codec::mtu_config) so what it sends fits.
///
/// ```
/// use coracle::{ArrayLog, Config, Node, Output};
/// use coracle_udp::codec::{mtu_config, Link, DEFAULT_ENTRIES};
/// use coracle_udp::node::{Application, UdpNode};
/// use coracle_udp::{ClusterKey, Datagram, SendCounter};
///
/// struct App;
/// impl Application for App {
///     fn output(&mut self, _: Output<'_>) {}
///     fn persist_counter(&mut self, _mark: u64) -> bool { true } // a real host writes it
/// }
///
/// let key = ClusterKey::from_bytes([1; 32]);
/// let config = mtu_config::<1200, DEFAULT_ENTRIES>(Config::new(1, 1));
/// let node = Node::new(config, ArrayLog::<64, 1038>::new(), &[1, 2, 3]).expect("valid");
/// let link = Link::new(&key, 5, 1, SendCounter::resume(None, 1024));
/// let mut udp: UdpNode<_> = UdpNode::new(node, link).expect("room for the peers");
/// let mut out: Datagram = Datagram::new();
/// udp.advance_to(100); // past the election timeout: a pre-vote for each peer
/// let mut sent = 0;
/// while let Some(_to) = udp.poll_transmit(&mut App, &mut out) {
///     sent += 1; // socket.send_to(&out, address of _to)
/// }
/// assert_eq!(sent, 2);
/// ```
pub struct UdpNode<
    S: LogStorage,
    const N: usize = 6,
    const MTU: usize = DEFAULT_MTU,
    const E: usize = DEFAULT_ENTRIES,
> {
    node: Node<S, N>,
    link: Link<N, MTU>,
    counters: NodeCounters,
}

impl<S: LogStorage, const N: usize, const MTU: usize, const E: usize> fmt::Debug
    for UdpNode<S, N, MTU, E>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpNode")
            .field("id", &self.node.id())
            .field("role", &self.node.role())
            .field("term", &self.node.term())
            .field("link", &self.link)
            .field("counters", &self.counters)
            .finish()
    }
}

impl<S: LogStorage + Durable, const N: usize, const MTU: usize, const E: usize>
    UdpNode<S, N, MTU, E>
{
    /// Wires `node` to `link`, adding every peer of the node to the link's
    /// peer table.
    ///
    /// # Errors
    /// [`PeerTableFull`] if the link already holds other peers.
    pub fn new(node: Node<S, N>, link: Link<N, MTU>) -> Result<Self, PeerTableFull> {
        let mut this = Self {
            node,
            link,
            counters: NodeCounters::default(),
        };
        this.sync_peers()?;
        Ok(this)
    }

    /// Adds every member of the node's configuration to the link's peer
    /// table (members a membership change added included). Peers that left
    /// stay in the table: their datagrams still reach the core, which
    /// counts them as from an unknown sender.
    fn sync_peers(&mut self) -> Result<(), PeerTableFull> {
        let me = self.node.id();
        for member in self.node.members() {
            if member.id != me {
                self.link.add_peer(member.id)?;
            }
        }
        Ok(())
    }

    /// The core node.
    #[must_use]
    pub const fn node(&self) -> &Node<S, N> {
        &self.node
    }

    /// The core node, for proposals, reads and other commands.
    pub fn node_mut(&mut self) -> &mut Node<S, N> {
        &mut self.node
    }

    /// The link, for its counters.
    #[must_use]
    pub const fn link(&self) -> &Link<N, MTU> {
        &self.link
    }

    /// The link, for its peer table.
    pub fn link_mut(&mut self) -> &mut Link<N, MTU> {
        &mut self.link
    }

    /// This node's own counters.
    #[must_use]
    pub const fn counters(&self) -> &NodeCounters {
        &self.counters
    }

    /// The driver's socket failed to send a datagram.
    pub fn count_send_error(&mut self) {
        self.counters.send_errors = self.counters.send_errors.saturating_add(1);
    }

    /// The driver's socket failed to receive.
    pub fn count_recv_error(&mut self) {
        self.counters.recv_errors = self.counters.recv_errors.saturating_add(1);
    }

    /// Takes the node's storage and core back.
    pub fn into_node(self) -> Node<S, N> {
        self.node
    }

    /// Time is `now` ticks since the node started: advances the core's
    /// clock to it (never backwards).
    pub fn advance_to(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.node.now());
        if elapsed > 0 {
            self.node.advance(elapsed);
        }
    }

    /// A datagram arrived: opens it, decodes it and steps the core with it.
    /// Returns the authenticated sender.
    ///
    /// # Errors
    /// Why it was dropped (counted in the link).
    pub fn receive(&mut self, datagram: &mut [u8]) -> Result<NodeId, RecvError> {
        let received = self.link.open_decode::<E>(datagram)?;
        let from = received.from();
        self.node.step(from, received.message());
        Ok(from)
    }

    /// Drains the core's outputs until a datagram is ready: leaves it in
    /// `out` and returns its receiver, or returns `None` when nothing is
    /// left. Syncs the storage on [`Output::Sync`] and hands the other
    /// outputs to `app`. Messages that cannot be sent are counted and
    /// skipped (the core retries them as lost).
    pub fn poll_transmit<A: Application>(
        &mut self,
        app: &mut A,
        out: &mut Datagram<MTU>,
    ) -> Option<NodeId> {
        if self.sync_peers().is_err() {
            self.counters.peer_table_full = self.counters.peer_table_full.saturating_add(1);
        }
        loop {
            if let Some(mark) = self.link.sealer_mut().counter().persist_due() {
                if app.persist_counter(mark) {
                    self.link.sealer_mut().counter_mut().persisted(mark);
                } else {
                    self.counters.counter_persist_failures =
                        self.counters.counter_persist_failures.saturating_add(1);
                }
            }
            match self.node.poll_output()? {
                Output::Send { to, message } => {
                    if self.link.encode_seal(to, &message, out).is_ok() {
                        return Some(to);
                    }
                }
                Output::Sync(token) => match self.node.log_mut().sync() {
                    Ok(()) => self.node.synced(token),
                    Err(_) => {
                        self.counters.sync_failures = self.counters.sync_failures.saturating_add(1);
                    }
                },
                other => app.output(other),
            }
        }
    }
}
