//! Opening: verify a received datagram and decrypt its payload in place.

use core::fmt;

use crate::auth::{ClusterKey, SenderKey};
use crate::drops::DropCounters;
use crate::frame::{Header, DEFAULT_MTU, HEADER_LEN, OVERHEAD, PROTOCOL_VERSION, TAG_LEN};
use crate::replay::{ReplayError, ReplayWindow};

/// Why [`Opener::open`] dropped a datagram. Every variant has its counter
/// in [`DropCounters`].
///
/// The checks run in the order of the variants below: the cheap ones on
/// the clear header first, the tag last. A datagram that fails several
/// checks is reported under the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpenError {
    /// Longer than the MTU.
    Oversized,
    /// Shorter than a header and a tag ([`OVERHEAD`] bytes).
    Truncated,
    /// Protocol version other than [`PROTOCOL_VERSION`].
    WrongVersion,
    /// Cluster id other than ours.
    WrongCluster,
    /// Addressed to another node.
    NotForUs,
    /// Sender not in the peer table.
    UnknownSender,
    /// Counter already accepted from this sender.
    Replayed,
    /// Counter too far below the highest accepted from this sender for the
    /// replay window to tell whether it was seen.
    TooOld,
    /// Tag does not verify: forged, corrupted, or sealed under another key.
    Forged,
}

impl OpenError {
    /// Every reason, in check order.
    pub const ALL: [Self; 9] = [
        Self::Oversized,
        Self::Truncated,
        Self::WrongVersion,
        Self::WrongCluster,
        Self::NotForUs,
        Self::UnknownSender,
        Self::Replayed,
        Self::TooOld,
        Self::Forged,
    ];
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Oversized => "datagram longer than the MTU",
            Self::Truncated => "datagram shorter than header and tag",
            Self::WrongVersion => "wrong protocol version",
            Self::WrongCluster => "wrong cluster id",
            Self::NotForUs => "datagram addressed to another node",
            Self::UnknownSender => "unknown sender",
            Self::Replayed => "replayed counter",
            Self::TooOld => "counter below the replay window",
            Self::Forged => "authentication tag mismatch",
        })
    }
}

impl core::error::Error for OpenError {}

impl From<ReplayError> for OpenError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Replayed => Self::Replayed,
            ReplayError::TooOld => Self::TooOld,
        }
    }
}

/// The peer table is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerTableFull;

impl fmt::Display for PeerTableFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("peer table full")
    }
}

impl core::error::Error for PeerTableFull {}

/// A datagram that passed every check.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// Its header, authenticated.
    pub header: Header,
    /// The decrypted payload, a slice of the buffer given to
    /// [`Opener::open`].
    pub payload: &'a [u8],
}

#[derive(Debug)]
struct Peer {
    id: u64,
    key: SenderKey,
    window: ReplayWindow,
}

/// Opens the datagrams addressed to this node: checks them, verifies the
/// tag, drops replays and decrypts the payload in place.
///
/// `PEERS` is the capacity of the peer table (one replay window and one
/// derived key per sender, about 70 bytes each); `MTU` is the largest
/// datagram accepted. Receive into a buffer of at least `MTU + 1` bytes so
/// that an oversized datagram is seen as such rather than cut short by the
/// socket (it would then fail as [`OpenError::Forged`]).
///
/// ```
/// use coracle_udp::{ClusterKey, Datagram, Opener, OpenError, Sealer, SendCounter};
///
/// let key = ClusterKey::from_bytes([42; 32]);
/// let mut counter = SendCounter::resume(None, 1024);
/// counter.persisted(counter.persist_due().expect("due"));
/// let mut alice = Sealer::new(&key, 7, 1, counter);
/// let mut bob: Opener<4> = Opener::new(&key, 7, 2);
/// bob.add_peer(1).expect("room");
///
/// let mut datagram: Datagram = Datagram::new();
/// alice.seal(2, b"vote for me", &mut datagram).expect("fits");
/// let mut copy = datagram.clone();
///
/// let opened = bob.open(&mut datagram).expect("authentic");
/// assert_eq!(opened.payload, b"vote for me");
/// assert_eq!(opened.header.sender, 1);
/// assert_eq!(bob.open(&mut copy), Err(OpenError::Replayed));
/// assert_eq!(bob.drops().replayed, 1);
/// ```
#[derive(Debug)]
pub struct Opener<const PEERS: usize, const MTU: usize = DEFAULT_MTU> {
    key: ClusterKey,
    cluster: u64,
    node: u64,
    peers: heapless::Vec<Peer, PEERS>,
    drops: DropCounters,
}

impl<const PEERS: usize, const MTU: usize> Opener<PEERS, MTU> {
    const MTU_HOLDS_A_DATAGRAM: () = assert!(MTU >= OVERHEAD, "MTU below header + tag");

    /// An opener for node `node` of cluster `cluster`, with an empty peer
    /// table.
    #[must_use]
    pub fn new(key: &ClusterKey, cluster: u64, node: u64) -> Self {
        let () = Self::MTU_HOLDS_A_DATAGRAM;
        Self {
            key: key.clone(),
            cluster,
            node,
            peers: heapless::Vec::new(),
            drops: DropCounters::new(),
        }
    }

    /// This node's id.
    #[must_use]
    pub const fn node(&self) -> u64 {
        self.node
    }

    /// The cluster id.
    #[must_use]
    pub const fn cluster(&self) -> u64 {
        self.cluster
    }

    /// Accepts datagrams from node `id` from now on, with an empty replay
    /// window. Adding a peer that is already there changes nothing (its
    /// window is kept).
    ///
    /// # Errors
    /// [`PeerTableFull`] if `PEERS` peers are already there.
    pub fn add_peer(&mut self, id: u64) -> Result<(), PeerTableFull> {
        if self.has_peer(id) {
            return Ok(());
        }
        self.peers
            .push(Peer {
                id,
                key: SenderKey::derive(&self.key, self.cluster, id),
                window: ReplayWindow::new(),
            })
            .map_err(|_| PeerTableFull)
    }

    /// Stops accepting datagrams from node `id`; `false` if it was not there.
    pub fn remove_peer(&mut self, id: u64) -> bool {
        match self.peers.iter().position(|p| p.id == id) {
            Some(at) => {
                self.peers.swap_remove(at);
                true
            }
            None => false,
        }
    }

    /// Whether node `id` is in the peer table.
    #[must_use]
    pub fn has_peer(&self, id: u64) -> bool {
        self.peers.iter().any(|p| p.id == id)
    }

    /// The ids in the peer table.
    pub fn peers(&self) -> impl Iterator<Item = u64> + '_ {
        self.peers.iter().map(|p| p.id)
    }

    /// The replay window of peer `id`.
    #[must_use]
    pub fn window(&self, id: u64) -> Option<&ReplayWindow> {
        self.peers.iter().find(|p| p.id == id).map(|p| &p.window)
    }

    /// The drop counters since creation or the last [`Self::take_drops`].
    #[must_use]
    pub const fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Returns the drop counters and resets them to zero.
    pub fn take_drops(&mut self) -> DropCounters {
        core::mem::take(&mut self.drops)
    }

    /// Checks `datagram`, verifies its tag and decrypts its payload in
    /// place. On success the replay window of the sender moves forward and
    /// the returned payload borrows from `datagram`. On failure the reason
    /// is counted in [`Self::drops`] and returned; `datagram` may then hold
    /// garbage. Never panics, whatever the bytes.
    ///
    /// # Errors
    /// One [`OpenError`] per reason to drop, see there.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<Opened<'a>, OpenError> {
        let result = self.check_and_open(datagram);
        if let Err(reason) = result {
            self.drops.record(reason);
        }
        result
    }

    fn check_and_open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<Opened<'a>, OpenError> {
        if datagram.len() > MTU {
            return Err(OpenError::Oversized);
        }
        let (head, rest) = datagram
            .split_first_chunk_mut::<HEADER_LEN>()
            .ok_or(OpenError::Truncated)?;
        let (body, tag) = rest
            .split_last_chunk_mut::<TAG_LEN>()
            .ok_or(OpenError::Truncated)?;
        let header = Header::decode(head);
        if header.version != PROTOCOL_VERSION {
            return Err(OpenError::WrongVersion);
        }
        if header.cluster != self.cluster {
            return Err(OpenError::WrongCluster);
        }
        if header.receiver != self.node {
            return Err(OpenError::NotForUs);
        }
        let peer = self
            .peers
            .iter_mut()
            .find(|p| p.id == header.sender)
            .ok_or(OpenError::UnknownSender)?;
        peer.window.check(header.counter)?;
        peer.key
            .open(head, header.counter, body, tag)
            .map_err(|_| OpenError::Forged)?;
        peer.window.accept(header.counter);
        Ok(Opened {
            header,
            payload: body,
        })
    }
}
