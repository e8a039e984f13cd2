//! [`UdpNode`]: a core [`Node`] wired to a [`Link`], the part of a UDP host
//! that does not depend on the socket API, the executor or the clock.
//!
//! It follows the run loop of [`coracle::Node`] in the style of quinn-proto:
//! feed it a datagram ([`UdpNode::receive`]) or the time
//! ([`UdpNode::advance_to`]), then call [`UdpNode::poll_transmit`] until it
//! returns `None`, sending each datagram it leaves in the buffer. In between
//! it hands the host's [`Application`] what is the host's to do: the
//! [`Output::Persist`] batches for its durable store (done now, or later with
//! [`UdpNode::persisted`]), the entries [`Output::Fetch`] asks back, the
//! chunks of its kept snapshot [`Output::SendSnapshot`] sends, the send
//! counter's marks, and every other output (entries to apply, reads, role
//! changes, snapshots to restore).
//!
//! A host whose log lives in memory only (an [`ArrayLog`](coracle::ArrayLog)
//! and nothing durable) answers every batch with [`Completion::Now`]; the
//! memory log never misses, so it is never asked to fetch, and it sends
//! snapshots only if it takes some.
//!
//! The std example (`examples/std_loop.rs`), the async drivers
//! ([`crate::event_loop::run`]) and a board's own loop all drive it the same
//! way. No allocation, no I/O.

use core::fmt;

use coracle::{
    Batch, Entry, Index, InstallSnapshot, LogStorage, Message, Node, NodeId, Output, SyncToken,
};

use crate::codec::{Link, RecvError, DEFAULT_ENTRIES};
use crate::frame::{Datagram, DEFAULT_MTU};
use crate::open::PeerTableFull;

/// How a request of the node to the host's store went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Completion {
    /// Done: the batch is durable, or the entries were handed in.
    Now,
    /// The host finishes it later and says so: [`UdpNode::persisted`] (or
    /// [`UdpNode::persist_failed`]) for a batch, [`UdpNode::fetched`] (or
    /// [`UdpNode::fetch_failed`]) for a fetch. Until a batch is reported
    /// durable, nothing that depends on it leaves the node.
    Later,
    /// It failed. A failed batch stops the node acknowledging anything
    /// ([`Node::persist_failed`]); a failed fetch is asked again later.
    Failed,
}

/// What a host does with the outputs that are not datagrams.
pub trait Application {
    /// An [`Output::Persist`] batch: write it to the durable store, in the
    /// order of its fields (see [`coracle::Batch`]), and say when it is durable. A
    /// host with nothing durable (a memory log only) returns
    /// [`Completion::Now`]; a flash journal or a file writes and flushes
    /// (returning [`Completion::Now`]), or queues the flush and returns
    /// [`Completion::Later`].
    fn persist(&mut self, batch: &Batch<'_>) -> Completion;

    /// An [`Output::Fetch`]: the entries `from..=to` are not in the memory
    /// log. Read them back from the durable store and give them, in order,
    /// to `hand_in` (a prefix is fine), then return [`Completion::Now`]; or
    /// return [`Completion::Later`] and hand them to [`UdpNode::fetched`]
    /// later. The default fails: a memory log that never drops an entry
    /// ([`ArrayLog`](coracle::ArrayLog), `VecLog`) is never asked.
    fn fetch(&mut self, from: Index, to: Index, hand_in: &mut dyn FnMut(Entry<'_>)) -> Completion {
        let _ = (from, to, hand_in);
        Completion::Failed
    }

    /// An [`Output::SendSnapshot`]: read the bytes of the kept snapshot at
    /// `index` from `offset` into `buf` (as many as fit, fewer only at its
    /// end) and return how many, and whether they reach its end; `None` if
    /// the store does not hold that snapshot (nothing is sent; the node
    /// starts over with the snapshot it keeps). The default holds none: a
    /// host that never calls [`Node::snapshot_taken`] is never asked.
    fn snapshot_chunk(
        &mut self,
        index: Index,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<(usize, bool)> {
        let _ = (index, offset, buf);
        None
    }

    /// Every other output: [`Output::Apply`] (apply the entry to the state
    /// machine, in order), [`Output::RestoreSnapshot`] (restore the state
    /// machine from the kept snapshot), [`Output::StateChanged`],
    /// [`Output::ReadReady`], [`Output::ReadFailed`] and
    /// [`Output::SnapshotNeeded`].
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
    /// Batches the [`Application`] failed to make durable.
    pub persist_failures: u64,
    /// Fetches the [`Application`] could not serve.
    pub fetch_failures: u64,
    /// Snapshot chunks not sent because the [`Application`] had no bytes
    /// for them: past the snapshot's end (the node sends a window of chunks
    /// without knowing the size), or of a snapshot no longer kept.
    pub snapshot_chunks_unsent: u64,
    /// Send-counter marks the [`Application`] did not persist.
    pub counter_persist_failures: u64,
    /// Times a member did not fit the link's peer table.
    pub peer_table_full: u64,
    /// Datagrams the socket failed to send (reported by a driver).
    pub send_errors: u64,
    /// Socket receive errors (reported by a driver).
    pub recv_errors: u64,
}

fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

/// A Raft node over authenticated datagrams.
///
/// `N` is the peer capacity of the node (and of the link's peer table),
/// `MTU` the largest datagram, `E` the most entries a received AppendEntries
/// may carry. Configure the node with
/// [`mtu_config::<MTU, E>`](crate::codec::mtu_config) so what it sends fits.
///
/// ```
/// use coracle::{ArrayLog, Config, Node, Output, Batch, Persist};
/// use coracle_udp::codec::{mtu_config, Link, DEFAULT_ENTRIES};
/// use coracle_udp::node::{Application, Completion, UdpNode};
/// use coracle_udp::{ClusterKey, Datagram, SendCounter};
///
/// struct App;
/// impl Application for App {
///     fn persist(&mut self, _: &Batch<'_>) -> Completion { Completion::Now } // memory only
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

impl<S: LogStorage, const N: usize, const MTU: usize, const E: usize> UdpNode<S, N, MTU, E> {
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
        bump(&mut self.counters.send_errors);
    }

    /// The driver's socket failed to receive.
    pub fn count_recv_error(&mut self) {
        bump(&mut self.counters.recv_errors);
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

    /// The batches through `token`, which the [`Application`] took with
    /// [`Completion::Later`], are durable now ([`Node::persisted`]). Drain
    /// [`UdpNode::poll_transmit`] afterwards: what waited for them leaves.
    pub fn persisted(&mut self, token: SyncToken) {
        self.node.persisted(token);
    }

    /// A batch the [`Application`] took with [`Completion::Later`] could not
    /// be made durable: the node acknowledges nothing from now on
    /// ([`Node::persist_failed`]).
    pub fn persist_failed(&mut self) {
        bump(&mut self.counters.persist_failures);
        self.node.persist_failed();
    }

    /// The entries of a fetch the [`Application`] took with
    /// [`Completion::Later`], read back ([`Node::fetched`]).
    pub fn fetched<'e>(&mut self, entries: impl IntoIterator<Item = Entry<'e>>) {
        self.node.fetched(entries);
    }

    /// A fetch the [`Application`] took with [`Completion::Later`] failed
    /// ([`Node::fetch_failed`]).
    pub fn fetch_failed(&mut self) {
        bump(&mut self.counters.fetch_failures);
        self.node.fetch_failed();
    }

    /// Drains the core's outputs until a datagram is ready: leaves it in
    /// `out` and returns its receiver, or returns `None` when nothing is
    /// left. Hands the batches, fetches, snapshot chunks and other outputs
    /// to `app` (see [`Application`]). Messages that cannot be sent are
    /// counted and skipped (the core retries them as lost). A fetch that
    /// fails at once also ends the drain: the node would ask for it again
    /// straight away; it asks at the next call instead.
    pub fn poll_transmit<A: Application>(
        &mut self,
        app: &mut A,
        out: &mut Datagram<MTU>,
    ) -> Option<NodeId> {
        if self.sync_peers().is_err() {
            bump(&mut self.counters.peer_table_full);
        }
        loop {
            if let Some(mark) = self.link.sealer_mut().counter().persist_due() {
                if app.persist_counter(mark) {
                    self.link.sealer_mut().counter_mut().persisted(mark);
                } else {
                    bump(&mut self.counters.counter_persist_failures);
                }
            }
            match self.node.poll_output()? {
                Output::Send { to, message } => {
                    if self.link.encode_seal(to, &message, out).is_ok() {
                        return Some(to);
                    }
                }
                Output::SendSnapshot {
                    to,
                    message,
                    max_len,
                } => {
                    let mut chunk = [0u8; MTU];
                    let room = max_len.min(MTU);
                    let index = message.last_included_index;
                    match app.snapshot_chunk(index, message.offset, &mut chunk[..room]) {
                        Some((len, done)) => {
                            let message = Message::InstallSnapshot(InstallSnapshot {
                                data: &chunk[..len.min(room)],
                                done,
                                ..message
                            });
                            if self.link.encode_seal(to, &message, out).is_ok() {
                                return Some(to);
                            }
                        }
                        None => bump(&mut self.counters.snapshot_chunks_unsent),
                    }
                }
                Output::Persist(batch) => {
                    let token = batch.token;
                    match app.persist(&batch.batch()) {
                        Completion::Now => self.node.persisted(token),
                        Completion::Later => {}
                        Completion::Failed => self.persist_failed(),
                    }
                }
                Output::Fetch { from, to } => {
                    let node = &mut self.node;
                    let mut handed = 0usize;
                    let completion = app.fetch(from, to, &mut |entry| {
                        handed += 1;
                        node.fetched(core::iter::once(entry));
                    });
                    match completion {
                        Completion::Later => {}
                        Completion::Now if handed > 0 => {}
                        // The core asks again only at its next tick.
                        Completion::Now | Completion::Failed => self.fetch_failed(),
                    }
                }
                other => app.output(other),
            }
        }
    }
}
