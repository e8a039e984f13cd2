//! Raft messages between nodes over QUIC.
//!
//! - **One connection per pair of nodes.** The node with the lower id dials the one with the
//!   higher id (verifying the server name `node-<id>.coracle`), and redials at once when
//!   the connection drops, starting a new handshake at every backoff step while the
//!   earlier ones go on (a peer that is down is reached one step after it is back, not a
//!   QUIC retransmission later); the higher one accepts, and a new connection from a peer
//!   replaces its old one. A higher node also dials a lower one once, when it starts, so
//!   a peer holding a connection to its previous run takes the new one at once. Keep-alives hold idle connections open and an idle timeout
//!   detects dead peers, which are then reported unreachable to the core.
//! - **Restarted peers are seen at once.** A node's stateless-reset and connection-ID keys
//!   are derived from its private key ([`crate::tls::EndpointKeys`]), so they survive a restart:
//!   the restarted node answers a packet on a connection of its previous run with a
//!   stateless reset, and the peer drops that connection and redials within milliseconds
//!   instead of waiting out its idle timeout (`kill -9` included).
//! - **Who sent it comes from the certificate.** The TLS handshake verifies the peer's
//!   certificate against the cluster CA (both ways); the node id is read from it. Every
//!   frame's envelope must say `from` = that id and `to` = this node, or it is malformed.
//!   A peer without a certificate, or with one from another CA, fails the handshake: no
//!   byte of Raft is read from it, and the refusal is logged with its reason and counted
//!   ([`TransportStats::refused`]); a peer that gives up during the handshake (it went
//!   away, closed, or refused this node's certificate) is counted apart
//!   ([`TransportStats::handshakes_abandoned`]). A dial that fails the handshake is logged
//!   (WARN) on the dialling side too.
//! - **Per message kind.** Small messages (heartbeats, acknowledgements, reads) go as QUIC
//!   datagrams when they fit; AppendEntries with entries go on a long-lived
//!   unidirectional stream, and so do the messages of elections and leadership transfers
//!   (RequestVote, its answer, TimeoutNow: rare, and one lost costs the cluster an
//!   election timeout, where QUIC resends a lost stream packet within a round trip);
//!   InstallSnapshot chunks go on another stream with its own queue, so a snapshot never
//!   delays heartbeats or entries. Stream frames are a 4-byte
//!   little-endian length and the core's postcard envelope ([`coracle::wire`]).
//! - **Decoded once.** The transport splits streams into frames and hands them to the node
//!   undecoded ([`PeerFrame`]); the node decodes and checks each one once
//!   ([`Transport::open`]) and steps the message, whose entries borrow from the frame.
//! - **Bad input.** A malformed frame (bad length, bad version or cluster, undecodable,
//!   wrong sender or receiver) stops that stream with [`ERR_MALFORMED`], is logged and
//!   counted in [`TransportStats::malformed`], and nothing after it on that stream is
//!   stepped; the connection and the node go on. A malformed datagram is counted and
//!   dropped. A UDP datagram that is no QUIC packet for
//!   this node at all is dropped by quinn and counted in [`TransportStats::stray_datagrams`]
//!   ([`stray`](crate::stray)).
//! - **Back-pressure.** Each peer has a bounded send queue; when it is full (the peer is
//!   slow or gone) frames are dropped and counted, and Raft retransmits.

use crate::certs::{node_server_name, Identity};
use crate::rt::Runtime;
use crate::tls;
use bytes::{Bytes, BytesMut};
use coracle::wire;
use coracle::{Message, NodeId};
use smol::channel::{self, Receiver, Sender, TrySendError};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tracing::{debug, info, warn};

/// The most entries one decoded AppendEntries may carry.
pub const DECODE_ENTRIES: usize = 512;
/// Application error code of a stream stopped for a malformed frame.
pub const ERR_MALFORMED: u32 = 0x4d;
/// Application error code of a connection closed by a node that is shutting down.
pub const ERR_SHUTDOWN: u32 = 0x5d;
/// Application error code of a connection replaced by a newer one from the same peer.
pub const ERR_REPLACED: u32 = 0x52;
/// Application error code of a connection whose certificate carries no usable identity.
pub const ERR_IDENTITY: u32 = 0x49;

/// Something the transport hands to the node.
#[derive(Debug)]
pub enum Inbound {
    /// A frame from a peer, not decoded yet: the node decodes it once, with
    /// [`Transport::open`], and steps it.
    Message(PeerFrame),
    /// The connection to `peer` failed or closed.
    Unreachable(NodeId),
    /// A proposal a follower forwarded ([`crate::host`]'s forwarding), to answer.
    Forward(Forwarded),
}

/// A request a peer forwarded to this node on a stream of its own: the node answers it
/// with one frame on `reply` (dropping `reply` resets the stream: the peer's outcome is
/// unknown).
#[derive(Debug)]
pub struct Forwarded {
    /// The sender, from its certificate.
    pub from: NodeId,
    /// The request's body (the frame without its length).
    pub body: Bytes,
    /// Where the answer frame goes.
    pub reply: Sender<Bytes>,
}

/// A frame received from a peer: its envelope's bytes, not decoded (the node decodes each
/// frame once, in [`Transport::open`], which also checks it).
#[derive(Debug)]
pub struct PeerFrame {
    /// The sender, from its certificate.
    pub from: NodeId,
    /// The envelope.
    pub frame: Bytes,
    /// Where it came from, to close that stream should the frame be malformed.
    origin: Origin,
}

/// Where a frame came from.
#[derive(Debug)]
enum Origin {
    Datagram,
    Stream(Arc<StreamVerdict>),
}

/// What the node found of a stream's frames: set once it met a malformed one. The stream's
/// reader then stops the stream ([`ERR_MALFORMED`]) and delivers nothing more from it, and
/// the node skips the frames of it still queued, so nothing after a malformed frame is
/// stepped.
#[derive(Debug)]
struct StreamVerdict {
    malformed: AtomicBool,
    /// Wakes the reader (it may be waiting for the peer's next bytes).
    stop: Sender<()>,
}

/// Counters of the transport.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Connections this node refused at the handshake (no certificate, another CA, wrong
    /// ALPN, an unusable identity...) or at the [hello](crate::hello) (no version in
    /// common, another incarnation of a known member); each is logged with its reason, and
    /// counted by reason below (a refusal for versions is counted here only).
    pub refused: AtomicU64,
    /// Of `refused`: the TLS handshake failed on this side (no certificate, another CA,
    /// wrong ALPN).
    pub refused_tls: AtomicU64,
    /// Of `refused`: a valid certificate with no usable coracle identity (none, or this
    /// node's own id).
    pub refused_identity: AtomicU64,
    /// Of `refused`: a member that came back with another data directory ([`crate::hello`]).
    pub refused_incarnation: AtomicU64,
    /// Connections to a peer established after an earlier one to it ended or was replaced.
    pub reconnects: AtomicU64,
    /// Handshakes the other side gave up: it went silent (timed out), closed, or refused
    /// this node's certificate. Not refusals of this node's.
    pub handshakes_abandoned: AtomicU64,
    /// UDP datagrams to this node's port that are no QUIC packet for it (garbage, another
    /// QUIC version, a connection ID this node never gave out): quinn drops them.
    pub stray_datagrams: AtomicU64,
    /// Malformed frames and datagrams received.
    pub malformed: AtomicU64,
    /// Frames dropped on the send side (no connection, queue full, send error).
    pub dropped: AtomicU64,
    /// Messages sent as datagrams.
    pub datagrams_sent: AtomicU64,
    /// Messages sent on streams.
    pub stream_frames_sent: AtomicU64,
    /// Messages received, decoded and checked ([`Transport::open`]).
    pub received: AtomicU64,
    /// Connections established with other nodes (either direction).
    pub connections: AtomicU64,
    /// Handshakes this node started to reach other nodes (each dial of a peer that is down
    /// counts, every backoff step).
    pub dials: AtomicU64,
    /// Client connections accepted.
    pub client_connections: AtomicU64,
}

impl TransportStats {
    pub(crate) fn inc(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
    /// Counts a refused connection, in the total and under its reason.
    pub(crate) fn refuse(&self, reason: Refusal) {
        Self::inc(&self.refused);
        Self::inc(match reason {
            Refusal::Tls => &self.refused_tls,
            Refusal::Identity => &self.refused_identity,
            Refusal::Incarnation => &self.refused_incarnation,
        });
    }
    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Why a connection was refused ([`TransportStats::refuse`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Tls,
    Identity,
    Incarnation,
}

/// Settings of the transport.
#[derive(Clone, Debug)]
pub struct TransportSettings {
    /// First delay before redialing a peer.
    pub reconnect_min: Duration,
    /// Largest delay between redials.
    pub reconnect_max: Duration,
    /// Largest stream frame accepted, in bytes.
    pub max_frame: usize,
    /// Frames queued per peer before dropping.
    pub queue: usize,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            max_frame: 16 << 20,
            queue: 4096,
        }
    }
}

/// Which path a message takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Small: a datagram if it fits, else the log stream.
    Small,
    /// AppendEntries with entries, and the messages of elections and transfers: the log
    /// stream (reliable).
    Log,
    /// InstallSnapshot: the snapshot stream.
    Bulk,
}

impl Class {
    /// The path for `message`.
    pub fn of(message: &Message<'_>) -> Class {
        match message {
            Message::AppendEntries(a) if !a.entries.is_empty() => Class::Log,
            // Rare, and nothing resends them before an election timeout.
            Message::RequestVote(_) | Message::RequestVoteResponse(_) | Message::TimeoutNow(_) => {
                Class::Log
            }
            Message::InstallSnapshot(_) => Class::Bulk,
            _ => Class::Small,
        }
    }
}

/// Encodes `envelope` as a stream frame: 4-byte length, then the envelope.
pub fn encode_frame(envelope: &wire::Envelope<'_>) -> Result<Bytes, wire::WireError> {
    let len = wire::encoded_len(envelope);
    let mut buf = vec![0u8; 4 + len];
    let n = wire::encode(envelope, &mut buf[4..])?.len();
    buf.truncate(4 + n);
    buf[..4].copy_from_slice(&(n as u32).to_le_bytes());
    Ok(Bytes::from(buf))
}

/// Why a received frame was refused.
#[derive(Debug)]
pub enum FrameError {
    /// Not a frame of our cluster and version.
    Wire(wire::WireError),
    /// The envelope names another sender than the certificate.
    WrongSender {
        /// From the certificate.
        expected: NodeId,
        /// From the envelope.
        claimed: NodeId,
    },
    /// The envelope is for another node.
    WrongReceiver(NodeId),
    /// The length prefix exceeds the limit.
    TooLarge(usize),
    /// The stream ended inside a frame.
    Truncated,
    /// The peer reset the stream or the connection closed (not the peer's fault).
    Interrupted,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Wire(e) => write!(f, "{e}"),
            FrameError::WrongSender { expected, claimed } => write!(
                f,
                "envelope claims sender {claimed}, certificate says {expected}"
            ),
            FrameError::WrongReceiver(to) => write!(f, "frame addressed to node {to}"),
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the limit"),
            FrameError::Truncated => f.write_str("stream ended inside a frame"),
            FrameError::Interrupted => f.write_str("stream reset or connection lost"),
        }
    }
}

/// Decodes a received envelope and checks it: our version and cluster, decodable, from
/// `from` to `me`. The entries of the result borrow from `bytes`.
pub fn open_frame(
    bytes: &[u8],
    cluster: u64,
    from: NodeId,
    me: NodeId,
) -> Result<wire::Decoded<'_, DECODE_ENTRIES>, FrameError> {
    let d = wire::decode::<DECODE_ENTRIES>(bytes, cluster).map_err(FrameError::Wire)?;
    if d.from != from {
        return Err(FrameError::WrongSender {
            expected: from,
            claimed: d.from,
        });
    }
    if d.to != me {
        return Err(FrameError::WrongReceiver(d.to));
    }
    Ok(d)
}

/// Reads the length-prefixed frames of a stream: whatever the stream holds is taken in
/// one call (not two per frame), and each frame is handed out as a slice of that buffer,
/// without a copy.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl FrameReader {
    /// Reads the frames of `recv`.
    pub fn new(recv: quinn::RecvStream) -> FrameReader {
        FrameReader {
            recv,
            buf: BytesMut::new(),
        }
    }

    /// The next frame of at most `max` bytes; `Ok(None)` at a clean end of the stream.
    pub async fn next(&mut self, max: usize) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(frame) = self.buffered(max)? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => return Err(FrameError::Truncated),
                Err(_) => return Err(FrameError::Interrupted),
            }
        }
    }

    /// The next frame if the bytes already read hold all of it (never waits).
    pub fn buffered(&mut self, max: usize) -> Result<Option<Bytes>, FrameError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > max {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(4 + len).freeze();
        Ok(Some(frame.split_off(4)))
    }

    /// Asks the peer to stop sending on the stream (`code` says why).
    pub fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(code));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Link {
    peer: NodeId,
    conn: Mutex<Option<quinn::Connection>>,
    /// A connection to the peer was installed before (the next one is a reconnect).
    connected_before: std::sync::atomic::AtomicBool,
    /// A [`dialer`] runs for this link (at most one does).
    dialing: AtomicBool,
}

impl Link {
    fn current(&self) -> Option<quinn::Connection> {
        lock(&self.conn).clone()
    }
}

struct LinkHandle {
    link: Arc<Link>,
    main: Sender<(Class, Bytes)>,
    bulk: Sender<(Class, Bytes)>,
}

/// Why a transport could not start.
#[derive(Debug)]
pub enum StartError {
    /// rustls or quinn refused the TLS configuration.
    Tls(tls::TlsError),
    /// The address cannot be bound.
    Bind(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Tls(e) => write!(f, "{e}"),
            StartError::Bind(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Handles connections from clients (non-node certificates).
pub type ClientHandler = Arc<dyn Fn(quinn::Connection, Identity) + Send + Sync>;

/// The QUIC transport of one node. Cheap to share (`Arc`).
pub struct Transport {
    id: NodeId,
    cluster: u64,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    settings: TransportSettings,
    links: Mutex<HashMap<NodeId, LinkHandle>>,
    addrs: Mutex<HashMap<NodeId, SocketAddr>>,
    isolated: Mutex<HashSet<NodeId>>,
    /// Nodes the configuration no longer has ([`keep_links`](Self::keep_links)): never
    /// dialed. A connection one of them makes is still taken (a node added back, or joining
    /// with a removed node's id, comes in that way).
    removed: Mutex<HashSet<NodeId>>,
    stats: Arc<TransportStats>,
    inbound: Sender<Inbound>,
    closing: AtomicBool,
    /// The hello every node connection starts with ([`crate::hello`]).
    greeting: crate::hello::Greeting,
    /// What the endpoint and the transport's tasks run on.
    runtime: Runtime,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("id", &self.id)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds `listen` and starts accepting connections. Node connections start with
    /// `greeting`'s hello, then feed `inbound`; client connections go to `on_client`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        id: NodeId,
        cluster: u64,
        listen: SocketAddr,
        creds: &tls::Credentials,
        quic: &tls::QuicSettings,
        settings: TransportSettings,
        inbound: Sender<Inbound>,
        on_client: ClientHandler,
        mut greeting: crate::hello::Greeting,
        runtime: Runtime,
    ) -> Result<Arc<Transport>, StartError> {
        greeting.runtime = runtime.clone();
        let server = tls::server_config(creds, quic).map_err(StartError::Tls)?;
        let client_config = tls::client_config(creds, quic).map_err(StartError::Tls)?;
        let stats = Arc::new(TransportStats::default());
        let socket = runtime
            .wrap_udp_socket(bind_udp(listen).map_err(StartError::Bind)?)
            .map_err(StartError::Bind)?;
        let (config, socket) =
            crate::stray::counting_socket(id, socket, stats.clone(), &creds.endpoint_keys());
        let endpoint = runtime
            .endpoint(config, Some(server), socket)
            .map_err(StartError::Bind)?;
        let t = Arc::new(Transport {
            id,
            cluster,
            endpoint,
            client_config,
            settings,
            links: Mutex::new(HashMap::new()),
            addrs: Mutex::new(HashMap::new()),
            isolated: Mutex::new(HashSet::new()),
            removed: Mutex::new(HashSet::new()),
            stats,
            inbound,
            closing: AtomicBool::new(false),
            greeting,
            runtime,
        });
        t.runtime.spawn_detached(accept_loop(t.clone(), on_client));
        Ok(t)
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The runtime the endpoint and the transport's tasks run on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<TransportStats> {
        &self.stats
    }

    /// Where node `id` listens (to dial it).
    pub fn set_address(&self, id: NodeId, addr: SocketAddr) {
        if id != self.id {
            lock(&self.addrs).insert(id, addr);
        }
    }

    /// The address of node `id`, if known.
    pub fn address(&self, id: NodeId) -> Option<SocketAddr> {
        lock(&self.addrs).get(&id).copied()
    }

    /// The connection to `peer`, if one is up (and the peer is not isolated).
    pub fn connection(&self, peer: NodeId) -> Option<quinn::Connection> {
        if self.is_isolated(peer) {
            return None;
        }
        let conn = lock(&self.links).get(&peer)?.link.current()?;
        conn.close_reason().is_none().then_some(conn)
    }

    /// True while a connection to `peer` is up.
    pub fn connected(&self, peer: NodeId) -> bool {
        lock(&self.links)
            .get(&peer)
            .is_some_and(|h| h.link.current().is_some())
    }

    /// Fault injection (admin only): drop every frame to and from `peer` while isolated.
    pub fn set_isolated(&self, peer: NodeId, isolated: bool) {
        let mut set = lock(&self.isolated);
        if isolated {
            set.insert(peer);
        } else {
            set.remove(&peer);
        }
    }

    /// True while this node is to keep dialing `peer` (a link to it exists, it is a member,
    /// and this node is not shutting down).
    fn dials(&self, peer: NodeId) -> bool {
        !self.closing.load(Ordering::Relaxed)
            && lock(&self.links).contains_key(&peer)
            && !lock(&self.removed).contains(&peer)
    }

    /// The configuration is `members` now: the link to every other node is dropped and its
    /// dialing stopped, so a removed node is no longer called; a node dropped before and
    /// back in the configuration is dialed again. A connection up to a removed node is left
    /// to end by itself: it may still carry the answer to that node's last request (a node
    /// that leaves waits for the answer to its removal). Links to members are made as
    /// messages go to them ([`ensure_link`](Self::ensure_link)).
    pub fn keep_links(self: &Arc<Self>, members: &[NodeId]) {
        let mut dropped = Vec::new();
        let mut back = Vec::new();
        {
            let mut links = lock(&self.links);
            let mut removed = lock(&self.removed);
            removed.retain(|peer| {
                let member = members.contains(peer);
                if member {
                    back.extend(links.get(peer).map(|h| h.link.clone()));
                }
                !member
            });
            links.retain(|&peer, _| {
                let keep = members.contains(&peer);
                if !keep {
                    removed.insert(peer);
                    dropped.push(peer);
                }
                keep
            });
        }
        for peer in dropped {
            info!(
                node = self.id,
                peer, "no longer a member: not dialed any more"
            );
        }
        for link in back {
            // Its dialer ended while it was out of the configuration.
            self.spawn_dialing(link);
        }
    }

    fn is_isolated(&self, peer: NodeId) -> bool {
        lock(&self.isolated).contains(&peer)
    }

    /// Queues a frame ([`encode_frame`]) for `to`. Never blocks: a full queue drops it.
    pub fn send(self: &Arc<Self>, to: NodeId, class: Class, frame: Bytes) {
        if to == self.id || self.closing.load(Ordering::Relaxed) {
            return;
        }
        let Some((main, bulk)) = self.with_link(to, |h| (h.main.clone(), h.bulk.clone())) else {
            return;
        };
        let queue = if class == Class::Bulk { bulk } else { main };
        match queue.try_send((class, frame)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => {
                TransportStats::inc(&self.stats.dropped);
            }
        }
    }

    /// Makes sure a link (and, if this node dials, a dialer) exists for `peer`.
    pub fn ensure_link(self: &Arc<Self>, peer: NodeId) {
        if peer == self.id {
            return;
        }
        self.with_link(peer, |_| ());
    }

    /// Runs `f` on the link to `peer`, made if there is none; `None` once this node is
    /// shutting down, when no link is made any more (its tasks would hold the endpoint,
    /// and with it the node's address, after [`close`](Self::close)). `close` raises
    /// `closing` before it clears the links under the same lock, so a link made here
    /// before is cleared by it.
    fn with_link<R>(self: &Arc<Self>, peer: NodeId, f: impl FnOnce(&LinkHandle) -> R) -> Option<R> {
        let mut links = lock(&self.links);
        if self.closing.load(Ordering::Relaxed) {
            return None;
        }
        Some(f(links.entry(peer).or_insert_with(|| self.new_link(peer))))
    }

    fn new_link(self: &Arc<Self>, peer: NodeId) -> LinkHandle {
        let link = Arc::new(Link {
            peer,
            conn: Mutex::new(None),
            connected_before: std::sync::atomic::AtomicBool::new(false),
            dialing: AtomicBool::new(false),
        });
        let (main, main_rx) = channel::bounded(self.settings.queue);
        let (bulk, bulk_rx) = channel::bounded(64);
        self.runtime
            .spawn_detached(writer(self.clone(), link.clone(), main_rx));
        self.runtime
            .spawn_detached(writer(self.clone(), link.clone(), bulk_rx));
        self.spawn_dialing(link.clone());
        LinkHandle { link, main, bulk }
    }

    /// The lower node of a pair dials the higher one for as long as the link lasts; the
    /// higher one dials once ([`announce`]).
    fn spawn_dialing(self: &Arc<Self>, link: Arc<Link>) {
        if self.id < link.peer {
            if !link.dialing.swap(true, Ordering::AcqRel) {
                self.runtime.spawn_detached(dialer(self.clone(), link));
            }
        } else {
            self.runtime.spawn_detached(announce(self.clone(), link));
        }
    }

    /// Installs a connection to `peer` (replacing an older one) and starts reading it.
    fn install(self: &Arc<Self>, peer: NodeId, conn: quinn::Connection) {
        let Some(link) = self.with_link(peer, |h| h.link.clone()) else {
            conn.close(quinn::VarInt::from_u32(ERR_SHUTDOWN), b"shutdown");
            return;
        };
        let old = lock(&link.conn).replace(conn.clone());
        if let Some(old) = old {
            if old.stable_id() != conn.stable_id() {
                old.close(quinn::VarInt::from_u32(ERR_REPLACED), b"replaced");
            }
        }
        TransportStats::inc(&self.stats.connections);
        if link.connected_before.swap(true, Ordering::Relaxed) {
            TransportStats::inc(&self.stats.reconnects);
        }
        info!(node = self.id, peer, remote = %conn.remote_address(), "connected");
        self.runtime
            .spawn_detached(read_datagrams(self.clone(), peer, conn.clone()));
        self.runtime
            .spawn_detached(accept_streams(self.clone(), peer, conn.clone()));
        self.runtime
            .spawn_detached(accept_forwards(self.clone(), peer, conn.clone()));
        let t = self.clone();
        self.runtime
            .spawn(async move {
                let reason = conn.closed().await;
                let mut current = lock(&link.conn);
                if current
                    .as_ref()
                    .is_some_and(|c| c.stable_id() == conn.stable_id())
                {
                    *current = None;
                    drop(current);
                    info!(node = t.id, peer, %reason, "disconnected");
                    let _ = t.inbound.try_send(Inbound::Unreachable(peer));
                }
            })
            .detach();
    }

    /// Closes every connection and stops dialing.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        lock(&self.links).clear();
        self.endpoint
            .close(quinn::VarInt::from_u32(ERR_SHUTDOWN), b"shutdown");
    }

    /// Waits (up to `timeout`) until the connections are closed cleanly.
    pub async fn wait_idle(&self, timeout: Duration) {
        let idle = self.endpoint.wait_idle();
        smol::future::or(idle, self.runtime.sleep(timeout)).await;
    }

    async fn deliver(&self, from: NodeId, frame: Bytes, origin: Origin) {
        if self.is_isolated(from) {
            return;
        }
        let frame = PeerFrame {
            from,
            frame,
            origin,
        };
        let _ = self.inbound.send(Inbound::Message(frame)).await;
    }

    /// Decodes `frame` (once: the transport hands frames over undecoded) and checks it
    /// ([`open_frame`]). A malformed frame is counted in [`TransportStats::malformed`] and
    /// logged, and gives `None`; if it came on a stream, that stream is stopped with
    /// [`ERR_MALFORMED`] and its later frames give `None` too. The connection goes on.
    pub fn open<'f>(&self, frame: &'f PeerFrame) -> Option<wire::Decoded<'f, DECODE_ENTRIES>> {
        let peer = frame.from;
        if let Origin::Stream(verdict) = &frame.origin {
            if verdict.malformed.load(Ordering::Relaxed) {
                return None;
            }
        }
        match open_frame(&frame.frame, self.cluster, peer, self.id) {
            Ok(d) => {
                TransportStats::inc(&self.stats.received);
                Some(d)
            }
            Err(e) => {
                TransportStats::inc(&self.stats.malformed);
                match &frame.origin {
                    Origin::Datagram => {
                        warn!(node = self.id, peer, error = %e, "malformed datagram dropped");
                    }
                    Origin::Stream(verdict) => {
                        warn!(node = self.id, peer, error = %e, "malformed frame: stream closed");
                        verdict.malformed.store(true, Ordering::Relaxed);
                        let _ = verdict.stop.try_send(());
                    }
                }
                None
            }
        }
    }
}

/// How a handshake ended without a connection, from this side's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HandshakeFailure {
    /// This side refused the peer (its certificate, protocol or QUIC version).
    Refused,
    /// The peer refused this side (a TLS alert: it does not trust this certificate...).
    RefusedByPeer,
    /// The peer went away, closed or reset before the handshake completed.
    Abandoned,
    /// This side is shutting down.
    ShuttingDown,
}

impl HandshakeFailure {
    fn of(e: &quinn::ConnectionError) -> HandshakeFailure {
        use quinn::ConnectionError as E;
        match e {
            E::TransportError(_) | E::VersionMismatch | E::CidsExhausted => {
                HandshakeFailure::Refused
            }
            E::ConnectionClosed(close) if is_tls_alert(close.error_code) => {
                HandshakeFailure::RefusedByPeer
            }
            E::ConnectionClosed(_) | E::ApplicationClosed(_) | E::Reset | E::TimedOut => {
                HandshakeFailure::Abandoned
            }
            E::LocallyClosed => HandshakeFailure::ShuttingDown,
        }
    }
}

/// True for QUIC's `CRYPTO_ERROR` codes (0x100 + a TLS alert, RFC 9000 20.1).
fn is_tls_alert(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

async fn accept_loop(t: Arc<Transport>, on_client: ClientHandler) {
    while let Some(incoming) = t.endpoint.accept().await {
        let t = t.clone();
        let on_client = on_client.clone();
        let runtime = t.runtime.clone();
        runtime.spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    match HandshakeFailure::of(&e) {
                        HandshakeFailure::Refused => {
                            t.stats.refuse(Refusal::Tls);
                            warn!(node = t.id, %remote, reason = %e, "refused connection");
                        }
                        HandshakeFailure::RefusedByPeer => {
                            TransportStats::inc(&t.stats.handshakes_abandoned);
                            warn!(node = t.id, %remote, reason = %e, "handshake abandoned: the peer refused this node's certificate");
                        }
                        HandshakeFailure::Abandoned => {
                            TransportStats::inc(&t.stats.handshakes_abandoned);
                            debug!(node = t.id, %remote, reason = %e, "handshake abandoned by the peer");
                        }
                        HandshakeFailure::ShuttingDown => {}
                    }
                    return;
                }
            };
            match tls::peer_identity(&conn) {
                Some(Identity::Node(peer)) if peer != t.id => {
                    if crate::hello::exchange(&t.greeting, peer, &conn, false, &t.stats).await {
                        t.install(peer, conn)
                    }
                }
                Some(id @ Identity::Client { .. }) => {
                    TransportStats::inc(&t.stats.client_connections);
                    debug!(node = t.id, %remote, client = %id, "client connected");
                    on_client(conn, id)
                }
                other => {
                    t.stats.refuse(Refusal::Identity);
                    let reason = match other {
                        Some(Identity::Node(_)) => "its certificate names this node's own id",
                        _ => "its certificate carries no coracle identity",
                    };
                    warn!(node = t.id, %remote, reason, "refused connection");
                    conn.close(quinn::VarInt::from_u32(ERR_IDENTITY), b"identity");
                }
            }
        })
        .detach();
    }
}

/// Why [`Transport::dial_member`] reached no member at an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DialFailure {
    /// Nothing answered in time (or the dial could not start): another round may do.
    Unreachable(String),
    /// A node answered and refused this one (another CA, another cluster, a data directory
    /// of this node's id it knows otherwise): trying again will not change it.
    Refused(String),
}

impl Transport {
    /// Dials whichever node listens at `addr` (a node joining the cluster knows members by
    /// address only), runs the hello and keeps the connection as its link to that node.
    /// Returns the node's id (from its certificate), or why no member was reached there
    /// within `limit`.
    pub(crate) async fn dial_member(
        self: &Arc<Self>,
        addr: SocketAddr,
        limit: Duration,
    ) -> Result<(NodeId, quinn::Connection), DialFailure> {
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, tls::any_node())
            .map_err(|e| DialFailure::Unreachable(format!("cannot dial {addr}: {e}")))?;
        let timed_out = async {
            self.runtime().sleep(limit).await;
            Err(quinn::ConnectionError::TimedOut)
        };
        let conn = match smol::future::or(connecting, timed_out).await {
            Ok(conn) => conn,
            Err(e) => {
                return Err(match HandshakeFailure::of(&e) {
                    HandshakeFailure::Refused => DialFailure::Refused(format!(
                        "the node at {addr} was refused: its certificate is not signed by \
                         this node's CA (another cluster?) or it speaks another protocol ({e})"
                    )),
                    HandshakeFailure::RefusedByPeer => DialFailure::Refused(format!(
                        "the node at {addr} refused this node's certificate: it is not \
                         signed by the cluster's CA ({e})"
                    )),
                    _ => DialFailure::Unreachable(format!("no node answered at {addr} ({e})")),
                })
            }
        };
        let peer = match tls::peer_identity(&conn) {
            Some(Identity::Node(peer)) if peer != self.id => peer,
            Some(Identity::Node(_)) => {
                conn.close(quinn::VarInt::from_u32(ERR_IDENTITY), b"identity");
                return Err(DialFailure::Refused(format!("{addr} is this node itself")));
            }
            other => {
                conn.close(quinn::VarInt::from_u32(ERR_IDENTITY), b"identity");
                return Err(DialFailure::Refused(format!(
                    "{addr} is no node of the cluster ({other:?})"
                )));
            }
        };
        if !crate::hello::exchange(&self.greeting, peer, &conn, true, &self.stats).await {
            return Err(DialFailure::Refused(format!(
                "node {peer} at {addr} refused this node's hello: it knows node {} with \
                 another data directory (remove that node from the cluster first), or they \
                 have no protocol version in common (see both logs)",
                self.id
            )));
        }
        if self.address(peer).is_none() {
            self.set_address(peer, addr);
        }
        self.install(peer, conn.clone());
        Ok((peer, conn))
    }
}

async fn dialer(t: Arc<Transport>, link: Arc<Link>) {
    loop {
        if !t.dials(link.peer) {
            // Ends, unless the peer came back meanwhile and no other dialer took over.
            link.dialing.store(false, Ordering::Release);
            if !t.dials(link.peer) || link.dialing.swap(true, Ordering::AcqRel) {
                return;
            }
        }
        if let Some(conn) = link.current().filter(|c| c.close_reason().is_none()) {
            // Connected (perhaps by the peer): wait until that connection ends, then redial
            // at once (a closed one still installed is passed over, never waited on again).
            conn.closed().await;
            continue;
        }
        if let Some(conn) = connect(&t, &link).await {
            t.install(link.peer, conn);
        }
    }
}

/// The higher node of a pair dials the lower one too, once, when their link is made (at
/// its start, say), until they have a connection either way. The lower node may still hold
/// a connection to this node's previous run: it takes the new one in its place at once,
/// rather than learning of the restart from a stateless reset when it next gets a packet
/// through (a connection backed off by losses may not send one for a second or more), or
/// redialing on its backoff after a graceful stop. From then on only the lower node dials.
async fn announce(t: Arc<Transport>, link: Arc<Link>) {
    if let Some(conn) = connect(&t, &link).await {
        t.install(link.peer, conn);
    }
}

/// A handshake in flight.
type Attempt = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<quinn::Connection, quinn::ConnectionError>> + Send>,
>;

/// Dials `link`'s peer until a connection passes the hello (`None` if the link goes or
/// gets a connection otherwise meanwhile): a handshake at once, then another at every
/// backoff step (from `reconnect_min`, doubling up to `reconnect_max`) while the earlier
/// ones go on. A peer that is down answers nothing, and QUIC sends a handshake's first
/// packet again only after about a second (then 2 s...) until its idle timeout: waiting on
/// one attempt, a peer back after 100 ms was reached a second later or more. Here the
/// handshake begun after it came back reaches it, one backoff step later at most.
///
/// The first handshake that completes wins: the others are dropped before any hello, so
/// the peer installs one connection, never a second that would replace the first.
async fn connect(t: &Arc<Transport>, link: &Link) -> Option<quinn::Connection> {
    let peer = link.peer;
    let mut backoff = t.settings.reconnect_min;
    let mut failures = 0u32;
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut timer = t.runtime.timer_after(Duration::ZERO);
    loop {
        if !t.dials(peer) || link.current().is_some_and(|c| c.close_reason().is_none()) {
            return None;
        }
        let event = std::future::poll_fn(|cx| {
            for (i, a) in attempts.iter_mut().enumerate() {
                if let std::task::Poll::Ready(done) = a.as_mut().poll(cx) {
                    return std::task::Poll::Ready(Some((i, done)));
                }
            }
            std::future::Future::poll(std::pin::Pin::new(&mut timer), cx).map(|_| None)
        })
        .await;
        let Some((i, done)) = event else {
            if let Some(addr) = t.address(peer) {
                let name = node_server_name(peer);
                match t
                    .endpoint
                    .connect_with(t.client_config.clone(), addr, &name)
                {
                    Ok(connecting) => {
                        TransportStats::inc(&t.stats.dials);
                        attempts.push(Box::pin(connecting))
                    }
                    Err(e) => warn!(node = t.id, peer, %addr, error = %e, "cannot dial"),
                }
            }
            timer.set_after(backoff);
            backoff = (backoff * 2).min(t.settings.reconnect_max);
            continue;
        };
        drop(attempts.swap_remove(i));
        match done {
            Ok(conn) => {
                attempts.clear();
                if tls::peer_identity(&conn) != Some(Identity::Node(peer)) {
                    conn.close(quinn::VarInt::from_u32(ERR_IDENTITY), b"identity");
                    warn!(node = t.id, peer, "peer certificate is not node {peer}'s");
                } else if crate::hello::exchange(&t.greeting, peer, &conn, true, &t.stats).await {
                    return Some(conn);
                }
            }
            Err(e) => {
                failures += 1;
                let report = failures == 1 || failures.is_multiple_of(50);
                let addr = t.address(peer);
                match HandshakeFailure::of(&e) {
                    // The handshake ran and failed: a certificate or protocol problem that
                    // waiting will not fix, reported on this side too.
                    HandshakeFailure::Refused | HandshakeFailure::RefusedByPeer if report => {
                        warn!(node = t.id, peer, ?addr, error = %e, failures, "dial failed: TLS handshake with the peer failed");
                    }
                    _ if report => {
                        debug!(node = t.id, peer, ?addr, error = %e, failures, "dial failed");
                    }
                    _ => {}
                }
            }
        }
    }
}

async fn writer(t: Arc<Transport>, link: Arc<Link>, rx: Receiver<(Class, Bytes)>) {
    let mut stream: Option<(usize, quinn::SendStream)> = None;
    while let Ok((class, frame)) = rx.recv().await {
        let Some(conn) = link.current() else {
            TransportStats::inc(&t.stats.dropped);
            continue;
        };
        if t.is_isolated(link.peer) {
            continue;
        }
        if class == Class::Small
            && conn
                .max_datagram_size()
                .is_some_and(|max| frame.len() - 4 <= max)
        {
            match conn.send_datagram(frame.slice(4..)) {
                Ok(()) => {
                    TransportStats::inc(&t.stats.datagrams_sent);
                    continue;
                }
                Err(quinn::SendDatagramError::TooLarge) => {}
                Err(_) => {
                    TransportStats::inc(&t.stats.dropped);
                    continue;
                }
            }
        }
        if stream.as_ref().map(|(id, _)| *id) != Some(conn.stable_id()) {
            stream = match conn.open_uni().await {
                Ok(s) => Some((conn.stable_id(), s)),
                Err(_) => None,
            };
        }
        let sent = match stream.as_mut() {
            Some((_, s)) => s.write_all(&frame).await.is_ok(),
            None => false,
        };
        if sent {
            TransportStats::inc(&t.stats.stream_frames_sent);
        } else {
            stream = None;
            TransportStats::inc(&t.stats.dropped);
        }
    }
}

async fn read_datagrams(t: Arc<Transport>, peer: NodeId, conn: quinn::Connection) {
    while let Ok(d) = conn.read_datagram().await {
        t.deliver(peer, d, Origin::Datagram).await;
    }
}

async fn accept_streams(t: Arc<Transport>, peer: NodeId, conn: quinn::Connection) {
    while let Ok(recv) = conn.accept_uni().await {
        t.runtime.spawn_detached(read_stream(t.clone(), peer, recv));
    }
}

/// Takes the bidirectional streams a peer opens after the hello: one forwarded request
/// each ([`Forwarded`]), answered on the same stream.
async fn accept_forwards(t: Arc<Transport>, peer: NodeId, conn: quinn::Connection) {
    while let Ok((mut send, recv)) = conn.accept_bi().await {
        let t = t.clone();
        let runtime = t.runtime.clone();
        runtime.spawn(async move {
            let mut frames = FrameReader::new(recv);
            let body = match frames.next(t.settings.max_frame).await {
                Ok(Some(body)) => body,
                Ok(None) | Err(FrameError::Interrupted) => return,
                Err(e) => {
                    TransportStats::inc(&t.stats.malformed);
                    warn!(node = t.id, peer, error = %e, "malformed forwarded request: stream closed");
                    frames.stop(ERR_MALFORMED);
                    return;
                }
            };
            if t.is_isolated(peer) {
                return;
            }
            let (reply, answer) = channel::bounded(1);
            let request = Forwarded {
                from: peer,
                body,
                reply,
            };
            if t.inbound.send(Inbound::Forward(request)).await.is_err() {
                return;
            }
            match answer.recv().await {
                Ok(frame) => {
                    if send.write_all(&frame).await.is_ok() {
                        let _ = send.finish();
                    }
                }
                // Dropped unanswered (the node stopped): the peer's outcome is unknown.
                Err(_) => {
                    let _ = send.reset(quinn::VarInt::from_u32(ERR_SHUTDOWN));
                }
            }
        })
        .detach();
    }
}

async fn read_stream(t: Arc<Transport>, peer: NodeId, recv: quinn::RecvStream) {
    let mut frames = FrameReader::new(recv);
    let (stop, stopped) = channel::bounded(1);
    let verdict = Arc::new(StreamVerdict {
        malformed: AtomicBool::new(false),
        stop,
    });
    loop {
        // `None`: the node found a frame of this stream malformed.
        let next = smol::future::or(
            async { Some(frames.next(t.settings.max_frame).await) },
            async {
                let _ = stopped.recv().await;
                None
            },
        )
        .await;
        match next {
            Some(Ok(Some(frame))) if !verdict.malformed.load(Ordering::Relaxed) => {
                t.deliver(peer, frame, Origin::Stream(verdict.clone()))
                    .await
            }
            Some(Ok(None)) | Some(Err(FrameError::Interrupted)) => return,
            Some(Err(e)) => {
                TransportStats::inc(&t.stats.malformed);
                warn!(node = t.id, peer, error = %e, "malformed frame: stream closed");
                frames.stop(ERR_MALFORMED);
                return;
            }
            // Malformed (logged and counted by the node).
            Some(Ok(Some(_))) | None => {
                frames.stop(ERR_MALFORMED);
                return;
            }
        }
    }
}

/// Bytes asked for each UDP socket's receive and send buffers. Linux's default (208 KiB)
/// overflowed under `coracle bench`: 50-150 datagrams dropped per 10 s run at 64 clients,
/// each one a QUIC loss to detect and resend.
pub(crate) const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Binds a UDP socket at `addr` with receive and send buffers of [`SOCKET_BUFFER_BYTES`],
/// or as much as the kernel allows (`net.core.rmem_max` and `wmem_max` cap it; a smaller
/// buffer is not an error).
pub(crate) fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let s = socket2::SockRef::from(&socket);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's cap on a buffer size asked for with `setsockopt` (Linux).
    fn cap(name: &str) -> Option<usize> {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The one decode of a peer's frame: a good one opens, with its entries; every other
    /// sender, receiver, cluster and version, every truncation and garbage are errors,
    /// never a panic.
    #[test]
    fn frames_open_once_checked_and_garbage_is_an_error() {
        use coracle::{AppendEntries, Entries, Entry, EntryKind};
        let entries = [Entry {
            term: 1,
            index: 1,
            kind: EntryKind::Command,
            data: b"x",
        }; 3];
        let append = Message::AppendEntries(AppendEntries {
            term: 1,
            prev_log_index: 0,
            prev_log_term: 0,
            leader_commit: 0,
            round: 1,
            entries: Entries::from_slice(&entries),
        });
        let frame = encode_frame(&wire::Envelope::new(7, 1, 2, append)).unwrap();
        let body = &frame[4..];
        let d = open_frame(body, 7, 1, 2).unwrap();
        assert_eq!(d.message(), append);
        assert!(matches!(
            open_frame(body, 7, 3, 2),
            Err(FrameError::WrongSender {
                expected: 3,
                claimed: 1
            })
        ));
        assert!(matches!(
            open_frame(body, 7, 1, 3),
            Err(FrameError::WrongReceiver(2))
        ));
        assert!(matches!(
            open_frame(body, 8, 1, 2),
            Err(FrameError::Wire(wire::WireError::WrongCluster { .. }))
        ));
        let mut other_version = body.to_vec();
        other_version[0] ^= 0x40;
        assert!(open_frame(&other_version, 7, 1, 2).is_err());
        for cut in 0..body.len() {
            assert!(open_frame(&body[..cut], 7, 1, 2).is_err(), "cut at {cut}");
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_open_as_a_frame_of_a_wrong_sender(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            // Most garbage fails to decode; whatever decodes was checked.
            if let Ok(d) = open_frame(&bytes, 7, 1, 2) {
                proptest::prop_assert_eq!((d.from, d.to), (1, 2));
            }
        }
    }

    /// A lost vote or TimeoutNow costs an election timeout (a planned leader restart took
    /// 0.3-1.9 s instead of tens of ms when one was lost as a datagram): they go on the
    /// reliable stream; heartbeats and acknowledgements, which the next ones replace, as
    /// datagrams.
    #[test]
    fn election_and_transfer_messages_travel_reliably() {
        use coracle::{
            AppendEntries, AppendEntriesResponse, RequestVote, RequestVoteResponse, TimeoutNow,
        };
        let vote = RequestVote {
            term: 2,
            last_log_index: 1,
            last_log_term: 1,
            pre_vote: false,
            leadership_transfer: true,
        };
        assert_eq!(Class::of(&Message::RequestVote(vote)), Class::Log);
        let answer = RequestVoteResponse {
            term: 2,
            vote_granted: true,
            pre_vote: false,
        };
        assert_eq!(Class::of(&Message::RequestVoteResponse(answer)), Class::Log);
        let now = Message::TimeoutNow(TimeoutNow { term: 2 });
        assert_eq!(Class::of(&now), Class::Log);
        let heartbeat = AppendEntries {
            term: 2,
            prev_log_index: 1,
            prev_log_term: 1,
            entries: coracle::Entries::EMPTY,
            leader_commit: 1,
            round: 1,
        };
        assert_eq!(Class::of(&Message::AppendEntries(heartbeat)), Class::Small);
        let ack = AppendEntriesResponse {
            term: 2,
            success: true,
            index: 1,
            hint_term: 0,
            hint_index: 0,
            round: 1,
        };
        assert_eq!(
            Class::of(&Message::AppendEntriesResponse(ack)),
            Class::Small
        );
    }

    #[test]
    fn sockets_get_the_buffers_asked_for_up_to_the_kernel_cap() {
        let socket = bind_udp(([127, 0, 0, 1], 0).into()).unwrap();
        let s = socket2::SockRef::from(&socket);
        let (Some(rmem), Some(wmem)) = (cap("rmem_max"), cap("wmem_max")) else {
            return; // not Linux: nothing to compare with
        };
        // Linux reports twice the size set (bookkeeping included).
        assert!(s.recv_buffer_size().unwrap() >= SOCKET_BUFFER_BYTES.min(rmem));
        assert!(s.send_buffer_size().unwrap() >= SOCKET_BUFFER_BYTES.min(wmem));
    }
}
