//! The codec: core messages encoded with postcard ([`coracle::wire`]) straight
//! into a sealed datagram, and opened datagrams decoded without allocation.
//!
//! # Sizes
//!
//! A datagram of `MTU` bytes carries [`max_payload`]`(MTU)` bytes of payload
//! (the security layer takes [`OVERHEAD`] = 49). The payload is one
//! [`coracle::wire`] envelope. Every message kind but AppendEntries has a
//! fixed maximum encoded size far below any usable MTU (the largest is
//! [`wire::APPEND_ENTRIES_FIXED_MAX`], an AppendEntries without entries);
//! [`SMALLEST_MTU`] is the least MTU that carries all of them.
//!
//! An AppendEntries with entries is at most
//! [`wire::append_entries_max`]`(n, data)`: the fixed part plus
//! [`Entry::OVERHEAD`] per entry plus the data. The core batches entries by
//! exactly that bound, so with the fields [`mtu_config`] sets
//!
//! - `max_bytes_per_message` = [`max_bytes_per_message`]`(MTU)` =
//!   `max_payload(MTU) - APPEND_ENTRIES_FIXED_MAX` (1064 for 1200),
//! - `max_entry_bytes` = [`max_entry_bytes`]`(MTU)` = that minus
//!   `Entry::OVERHEAD` (1038 for 1200),
//! - `max_entries_per_message` at most [`max_entries_per_message`]`(MTU)`
//!   (40 for 1200) and at most the decoder's capacity `E`,
//!
//! every AppendEntries the core builds fits one datagram: the core refuses a
//! larger command at proposal time ([`coracle::ProposeError::TooLarge`]),
//! nothing is ever truncated.
//!
//! An InstallSnapshot carries a chunk of the kept snapshot and its
//! configuration (at most [`MAX_CONFIG_BYTES`]); [`mtu_config`] sets
//! `max_snapshot_chunk_bytes` to [`max_snapshot_chunk_bytes`]`(MTU)` (780
//! for 1200), so every chunk fits a datagram whatever the configuration. Should a message still not fit (a node run
//! with another configuration), [`Link::encode_seal`] returns
//! [`SendError::TooLarge`] and counts it; the message is not sent and the
//! core retries it like any lost datagram.
//!
//! # Receiving
//!
//! [`Link::open_decode`] opens the datagram (every drop counted by the
//! [`Opener`]), decodes the envelope with at most `E` entries borrowed from
//! the buffer, and checks that its `cluster`, `from` and `to` agree with the
//! *authenticated* header: the node id of a peer is the authenticated sender,
//! never what the payload claims. Disagreements and undecodable payloads are
//! counted in [`CodecCounters`].

use core::fmt;

use coracle::wire::{self, Decoded, Envelope, WireError};
use coracle::{Config, Entry, Message, NodeId};

use crate::drops::DropCounters;
use crate::frame::{max_payload, Datagram, Header, DEFAULT_MTU, HEADER_LEN, OVERHEAD, TAG_LEN};
use crate::open::{OpenError, Opener, PeerTableFull};
use crate::seal::{SealError, Sealer};

/// The entries an AppendEntries of the default MTU may carry: the decoder
/// capacity to use with [`DEFAULT_MTU`] ([`max_entries_per_message`]`(1200)`).
pub const DEFAULT_ENTRIES: usize = max_entries_per_message(DEFAULT_MTU);

/// The largest configuration a snapshot carries: [`coracle::MAX_MEMBERS`]
/// members of 9 bytes each (id and flags), 288 bytes.
pub const MAX_CONFIG_BYTES: usize = coracle::MAX_MEMBERS * 9;

/// The least MTU whose datagrams carry every message kind: an AppendEntries
/// with one empty entry, and an InstallSnapshot of one byte with the largest
/// configuration: 421 bytes.
pub const SMALLEST_MTU: usize = OVERHEAD + wire::install_snapshot_max(MAX_CONFIG_BYTES, 1);

/// Bytes of entries (each counted as `data.len() + Entry::OVERHEAD`) one
/// AppendEntries may carry in a datagram of `mtu` bytes.
///
/// ```
/// assert_eq!(coracle_udp::codec::max_bytes_per_message(1200), 1064);
/// ```
#[must_use]
pub const fn max_bytes_per_message(mtu: usize) -> usize {
    max_payload(mtu).saturating_sub(wire::APPEND_ENTRIES_FIXED_MAX)
}

/// The largest command a datagram of `mtu` bytes carries in one entry.
///
/// ```
/// assert_eq!(coracle_udp::codec::max_entry_bytes(1200), 1038);
/// ```
#[must_use]
pub const fn max_entry_bytes(mtu: usize) -> usize {
    max_bytes_per_message(mtu).saturating_sub(Entry::OVERHEAD)
}

/// The most entries one AppendEntries carries in a datagram of `mtu` bytes
/// (all of them empty).
///
/// ```
/// assert_eq!(coracle_udp::codec::max_entries_per_message(1200), 40);
/// ```
#[must_use]
pub const fn max_entries_per_message(mtu: usize) -> usize {
    max_bytes_per_message(mtu) / Entry::OVERHEAD
}

/// Bytes of snapshot one InstallSnapshot carries in a datagram of `mtu`
/// bytes, whatever its configuration (up to [`MAX_CONFIG_BYTES`]).
///
/// ```
/// assert_eq!(coracle_udp::codec::max_snapshot_chunk_bytes(1200), 780);
/// ```
#[must_use]
pub const fn max_snapshot_chunk_bytes(mtu: usize) -> usize {
    max_payload(mtu).saturating_sub(wire::install_snapshot_max(MAX_CONFIG_BYTES, 0))
}

/// `config` with its batching limits set so every message the core builds
/// fits a datagram of `MTU` bytes and decodes with a capacity of `E`
/// entries (see the [module documentation](self)). Other fields are kept;
/// `max_entries_per_message` and `max_snapshot_chunk_bytes` are only ever
/// lowered. Below [`SMALLEST_MTU`] no snapshot chunk fits: the chunk size is
/// then 0, which `Node::new` refuses.
///
/// ```
/// use coracle::Config;
/// use coracle_udp::codec::{mtu_config, DEFAULT_ENTRIES};
/// let config = mtu_config::<1200, DEFAULT_ENTRIES>(Config::new(1, 1));
/// assert_eq!(config.max_bytes_per_message, 1064);
/// assert_eq!(config.max_entry_bytes, 1038);
/// assert_eq!(config.max_entries_per_message, 40);
/// assert_eq!(config.max_snapshot_chunk_bytes, 780);
/// ```
#[must_use]
pub const fn mtu_config<const MTU: usize, const E: usize>(mut config: Config) -> Config {
    config.max_bytes_per_message = max_bytes_per_message(MTU);
    config.max_entry_bytes = max_entry_bytes(MTU);
    let mut entries = config.max_entries_per_message;
    if entries > max_entries_per_message(MTU) {
        entries = max_entries_per_message(MTU);
    }
    if entries > E {
        entries = E;
    }
    config.max_entries_per_message = entries;
    if config.max_snapshot_chunk_bytes > max_snapshot_chunk_bytes(MTU) {
        config.max_snapshot_chunk_bytes = max_snapshot_chunk_bytes(MTU);
    }
    config
}

/// Why a message was not sent. Counted in [`CodecCounters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SendError {
    /// The encoded message does not fit the MTU (the node's configuration
    /// is not [`mtu_config`]'s). Nothing was truncated or sent.
    TooLarge,
    /// The security layer made no datagram (see [`SealError`]).
    Seal(SealError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => f.write_str("message does not fit the MTU"),
            Self::Seal(e) => write!(f, "seal: {e}"),
        }
    }
}

impl core::error::Error for SendError {}

/// Why a received datagram did not reach the core. Every variant is counted:
/// [`RecvError::Open`] in [`Link::drops`], the others in [`Link::counters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// The security layer dropped it (forged, replayed, truncated, ...).
    Open(OpenError),
    /// Authentic, but the payload is not a message this build reads (or has
    /// more entries than the decoder's capacity).
    Decode(WireError),
    /// Authentic and decodable, but the envelope's cluster, sender or
    /// receiver disagrees with the authenticated header.
    Mismatch,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(e) => write!(f, "dropped: {e}"),
            Self::Decode(e) => write!(f, "undecodable payload: {e}"),
            Self::Mismatch => f.write_str("envelope disagrees with the authenticated header"),
        }
    }
}

impl core::error::Error for RecvError {}

/// Counters of the codec, on top of the security layer's [`DropCounters`].
/// Counters saturate instead of wrapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CodecCounters {
    /// Datagrams sealed.
    pub sent: u64,
    /// Datagrams opened and decoded.
    pub received: u64,
    /// Messages that did not fit the MTU ([`SendError::TooLarge`]).
    pub too_large: u64,
    /// Messages the security layer did not seal ([`SendError::Seal`]).
    pub seal_failed: u64,
    /// Authentic payloads that did not decode ([`RecvError::Decode`]).
    pub undecodable: u64,
    /// Envelopes disagreeing with their authenticated header
    /// ([`RecvError::Mismatch`]).
    pub mismatched: u64,
}

fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

/// A message opened and decoded from a datagram.
pub struct Received<'a, const E: usize> {
    /// The authenticated header: `header.sender` is the peer's node id.
    pub header: Header,
    decoded: Decoded<'a, E>,
}

impl<const E: usize> Received<'_, E> {
    /// The authenticated sender.
    #[must_use]
    pub const fn from(&self) -> NodeId {
        self.header.sender
    }

    /// The message, to hand to [`coracle::Node::step`] with [`Self::from`].
    #[must_use]
    pub fn message(&self) -> Message<'_> {
        self.decoded.message()
    }
}

impl<const E: usize> fmt::Debug for Received<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("header", &self.header)
            .field("message", &self.message())
            .finish()
    }
}

/// One node's end of the datagram link: a [`Sealer`] and an [`Opener`] with
/// the codec between them and the core.
///
/// `PEERS` is the capacity of the peer table, `MTU` the largest datagram.
///
/// ```
/// use coracle::{Message, RequestVote};
/// use coracle_udp::codec::Link;
/// use coracle_udp::{ClusterKey, Datagram, SendCounter};
///
/// let key = ClusterKey::from_bytes([7; 32]);
/// let ready = || {
///     let mut c = SendCounter::resume(None, 1024);
///     c.persisted(c.persist_due().expect("due"));
///     c
/// };
/// let mut one: Link<4> = Link::new(&key, 9, 1, ready());
/// let mut two: Link<4> = Link::new(&key, 9, 2, ready());
/// two.add_peer(1).expect("room");
///
/// let vote = Message::RequestVote(RequestVote {
///     term: 2, last_log_index: 0, last_log_term: 0, pre_vote: false, leadership_transfer: false,
/// });
/// let mut datagram: Datagram = Datagram::new();
/// one.encode_seal(2, &vote, &mut datagram).expect("fits");
/// let received = two.open_decode::<0>(&mut datagram).expect("authentic");
/// assert_eq!(received.from(), 1);
/// assert_eq!(received.message(), vote);
/// ```
#[derive(Debug)]
pub struct Link<const PEERS: usize, const MTU: usize = DEFAULT_MTU> {
    sealer: Sealer,
    opener: Opener<PEERS, MTU>,
    counters: CodecCounters,
}

impl<const PEERS: usize, const MTU: usize> Link<PEERS, MTU> {
    /// Node `node` of cluster `cluster`, sealing with counters from
    /// `counter`, with an empty peer table.
    #[must_use]
    pub fn new(
        key: &crate::ClusterKey,
        cluster: u64,
        node: NodeId,
        counter: crate::SendCounter,
    ) -> Self {
        Self {
            sealer: Sealer::new(key, cluster, node, counter),
            opener: Opener::new(key, cluster, node),
            counters: CodecCounters::default(),
        }
    }

    /// Accepts datagrams from node `peer` (see [`Opener::add_peer`]).
    ///
    /// # Errors
    /// [`PeerTableFull`] if `PEERS` peers are there already.
    pub fn add_peer(&mut self, peer: NodeId) -> Result<(), PeerTableFull> {
        self.opener.add_peer(peer)
    }

    /// This node's id.
    #[must_use]
    pub const fn node(&self) -> NodeId {
        self.sealer.node()
    }

    /// The cluster id.
    #[must_use]
    pub const fn cluster(&self) -> u64 {
        self.sealer.cluster()
    }

    /// The sealer, for its send counter.
    pub fn sealer_mut(&mut self) -> &mut Sealer {
        &mut self.sealer
    }

    /// The opener, for its peer table.
    pub fn opener_mut(&mut self) -> &mut Opener<PEERS, MTU> {
        &mut self.opener
    }

    /// Datagrams dropped by the security layer, per reason.
    #[must_use]
    pub const fn drops(&self) -> &DropCounters {
        self.opener.drops()
    }

    /// The codec's counters.
    #[must_use]
    pub const fn counters(&self) -> &CodecCounters {
        &self.counters
    }

    /// Encodes `message` for node `to` straight into `out` (after the header
    /// room) and seals it there: `out` is then the datagram to send.
    ///
    /// # Errors
    /// [`SendError::TooLarge`] if the message does not fit the MTU,
    /// [`SendError::Seal`] if the security layer refused; `out` is then
    /// empty and the error counted.
    pub fn encode_seal(
        &mut self,
        to: NodeId,
        message: &Message<'_>,
        out: &mut Datagram<MTU>,
    ) -> Result<Header, SendError> {
        let result = self.try_encode_seal(to, message, out);
        match result {
            Ok(_) => bump(&mut self.counters.sent),
            Err(SendError::TooLarge) => {
                out.clear();
                bump(&mut self.counters.too_large);
            }
            Err(SendError::Seal(_)) => {
                out.clear();
                bump(&mut self.counters.seal_failed);
            }
        }
        result
    }

    fn try_encode_seal(
        &mut self,
        to: NodeId,
        message: &Message<'_>,
        out: &mut Datagram<MTU>,
    ) -> Result<Header, SendError> {
        let room = MTU.checked_sub(TAG_LEN).ok_or(SendError::TooLarge)?;
        out.clear();
        out.resize(room, 0).map_err(|_| SendError::TooLarge)?;
        let envelope = Envelope::new(self.sealer.cluster(), self.sealer.node(), to, *message);
        let space = out.get_mut(HEADER_LEN..).ok_or(SendError::TooLarge)?;
        let written = wire::encode(&envelope, space)
            .map_err(|_| SendError::TooLarge)?
            .len();
        out.truncate(HEADER_LEN + written);
        self.sealer.seal_in_place(to, out).map_err(|e| match e {
            SealError::PayloadTooLarge { .. } | SealError::NoHeaderRoom => SendError::TooLarge,
            other @ SealError::Counter(_) => SendError::Seal(other),
        })
    }

    /// Opens `datagram` in place, decodes its message with at most `E`
    /// entries (borrowed from `datagram`) and checks the envelope against the
    /// authenticated header. Never panics, whatever the bytes.
    ///
    /// # Errors
    /// A [`RecvError`], counted.
    pub fn open_decode<'a, const E: usize>(
        &mut self,
        datagram: &'a mut [u8],
    ) -> Result<Received<'a, E>, RecvError> {
        let opened = self.opener.open(datagram).map_err(RecvError::Open)?;
        let header = opened.header;
        let decoded = match wire::decode::<E>(opened.payload, header.cluster) {
            Ok(decoded) => decoded,
            Err(e) => {
                bump(&mut self.counters.undecodable);
                return Err(RecvError::Decode(e));
            }
        };
        if decoded.from != header.sender
            || decoded.to != header.receiver
            || decoded.cluster != header.cluster
        {
            bump(&mut self.counters.mismatched);
            return Err(RecvError::Mismatch);
        }
        bump(&mut self.counters.received);
        Ok(Received { header, decoded })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_for_the_default_mtu() {
        assert_eq!(wire::APPEND_ENTRIES_FIXED_MAX, 87);
        assert_eq!(max_bytes_per_message(DEFAULT_MTU), 1151 - 87);
        assert_eq!(max_entry_bytes(DEFAULT_MTU), 1151 - 87 - 26);
        assert_eq!(DEFAULT_ENTRIES, 40);
        assert_eq!(SMALLEST_MTU, 421);
        assert_eq!(max_snapshot_chunk_bytes(DEFAULT_MTU), 1151 - 371);
        assert_eq!(max_snapshot_chunk_bytes(SMALLEST_MTU), 1);
        assert_eq!(max_snapshot_chunk_bytes(SMALLEST_MTU - 1), 0);
        // A chunk of the bound with the largest configuration fits exactly.
        assert_eq!(
            wire::install_snapshot_max(MAX_CONFIG_BYTES, max_snapshot_chunk_bytes(DEFAULT_MTU)),
            max_payload(DEFAULT_MTU)
        );
        // A full batch of the bound fits the payload exactly.
        assert!(
            wire::append_entries_max(1, max_entry_bytes(DEFAULT_MTU)) <= max_payload(DEFAULT_MTU)
        );
        assert!(wire::append_entries_max(DEFAULT_ENTRIES, 0) <= max_payload(DEFAULT_MTU));
        // Tiny MTUs saturate instead of underflowing.
        assert_eq!(max_entry_bytes(60), 0);
        assert_eq!(max_entries_per_message(0), 0);
    }

    #[test]
    fn every_fixed_kind_fits_the_smallest_mtu() {
        for bound in [
            wire::REQUEST_VOTE_MAX,
            wire::REQUEST_VOTE_RESPONSE_MAX,
            wire::APPEND_ENTRIES_RESPONSE_MAX,
            wire::TIMEOUT_NOW_MAX,
            wire::READ_INDEX_MAX,
            wire::READ_INDEX_RESPONSE_MAX,
            wire::INSTALL_SNAPSHOT_RESPONSE_MAX,
            wire::APPEND_ENTRIES_FIXED_MAX + Entry::OVERHEAD,
            wire::install_snapshot_max(MAX_CONFIG_BYTES, 1),
        ] {
            assert!(bound <= max_payload(SMALLEST_MTU));
        }
    }
}
