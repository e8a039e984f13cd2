//! Stray datagrams: UDP datagrams that reach a node's port but are no QUIC packet for it
//! (garbage, another QUIC version, a packet for a connection this node never had). quinn
//! drops them without a trace; this module counts them in
//! [`TransportStats::stray_datagrams`] and logs a few (the 1st, 10th, 100th...).
//!
//! The node's endpoint gets the UDP socket through [`counting_socket`], a thin wrapper that
//! looks at every received datagram's header before quinn does, with quinn's own header
//! parser, and passes everything on unchanged. To tell a short-header packet for one of
//! the node's connections from garbage, the node gives out keyed connection IDs
//! (quinn's `HashedConnectionIdGenerator`, 8 bytes of which 5 are a keyed hash) and checks
//! the key: a random datagram passes for one of ours once in 2^40. quinn then also drops
//! such packets itself instead of answering them with a stateless reset.
//!
//! The key is derived from the node's private key ([`crate::tls::EndpointKeys`]), so it is
//! the same after a restart: a packet a peer still sends on a connection to the node's
//! previous run is no stray; quinn answers it with a stateless reset (the reset key is
//! derived alike), and the peer drops that connection and redials at once.
//!
//! Not counted: Initial and 0-RTT packets of a version we speak with a connection ID the
//! client chose, whose fate only decryption decides (quinn drops undecryptable ones);
//! random garbage is such a packet once in 2^32.

use crate::transport::TransportStats;
use coracle::NodeId;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_proto::{
    ConnectionId, ConnectionIdGenerator, FixedLengthConnectionIdParser,
    HashedConnectionIdGenerator, PacketDecodeError, PartialDecode,
};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tracing::{debug, warn};

/// The smallest datagram that may carry a client's Initial packet (RFC 9000 14.1).
const MIN_INITIAL_SIZE: usize = 1200;

/// Why `datagram` is no QUIC packet for an endpoint whose connection IDs `cids` validates,
/// or `None` if it may be one.
pub fn stray(datagram: &[u8], cids: &dyn ConnectionIdGenerator) -> Option<&'static str> {
    let Some(&first) = datagram.first() else {
        return Some("an empty datagram");
    };
    let ours = |cid: &ConnectionId| cids.validate(cid).is_ok();
    if first & 0x80 == 0 {
        // A short header: one of our connection IDs follows the first byte.
        let Some(cid) = datagram.get(1..1 + cids.cid_len()) else {
            return Some("not a QUIC packet");
        };
        return (!ours(&ConnectionId::new(cid))).then_some("no connection of this node");
    }
    let decoded = PartialDecode::new(
        bytes::BytesMut::from(datagram),
        &FixedLengthConnectionIdParser::new(cids.cid_len()),
        quinn_proto::DEFAULT_SUPPORTED_VERSIONS,
        true,
    );
    let packet = match decoded {
        Ok((packet, _)) => packet,
        Err(PacketDecodeError::UnsupportedVersion { .. }) => {
            return Some("a QUIC version this node does not speak")
        }
        Err(_) => return Some("not a QUIC packet"),
    };
    let version = datagram
        .get(1..5)
        .map_or(0, |v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
    // QUIC v1 long packet types: 0 Initial, 1 0-RTT, 2 Handshake, 3 Retry.
    let kind = (first >> 4) & 0b11;
    match (version, kind) {
        (0, _) | (_, 2) | (_, 3) => {
            (!ours(packet.dst_cid())).then_some("no connection of this node")
        }
        // An Initial to this node as a client carries our ID; as a server, the client's,
        // in a datagram a client must pad to 1200 bytes.
        (_, 0) if !ours(packet.dst_cid()) && datagram.len() < MIN_INITIAL_SIZE => {
            Some("an Initial packet in a datagram shorter than 1200 bytes")
        }
        _ => None,
    }
}

/// The endpoint settings of a node ([`crate::tls::node_endpoint_config`] with connection
/// IDs keyed by `keys`) and its UDP socket wrapped so that stray datagrams are counted in
/// `stats`.
pub fn counting_socket(
    node: NodeId,
    socket: Arc<dyn AsyncUdpSocket>,
    stats: Arc<TransportStats>,
    keys: &crate::tls::EndpointKeys,
) -> (quinn::EndpointConfig, Arc<dyn AsyncUdpSocket>) {
    // The same after a restart: packets of the previous run's connections are known for
    // this node's, and answered with a stateless reset.
    let key = keys.connection_ids;
    let mut config = crate::tls::node_endpoint_config(keys);
    config.cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(key)));
    let socket = CountingSocket {
        inner: socket,
        cids: HashedConnectionIdGenerator::from_key(key),
        stats,
        node,
    };
    (config, Arc::new(socket))
}

/// A UDP socket that counts the stray datagrams it receives.
struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    cids: HashedConnectionIdGenerator,
    stats: Arc<TransportStats>,
    node: NodeId,
}

impl std::fmt::Debug for CountingSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl CountingSocket {
    fn count(&self, from: SocketAddr, why: &'static str) {
        let n = TransportStats::inc(&self.stats.stray_datagrams);
        // 1, 10, 100...: a flood cannot flood the log.
        if n.checked_ilog10().is_some_and(|e| 10u64.pow(e) == n) {
            warn!(node = self.node, %from, why, total = n, "stray datagram dropped (not QUIC for this node)");
        } else {
            debug!(node = self.node, %from, why, total = n, "stray datagram dropped");
        }
    }
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let received = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        for (buf, meta) in bufs.iter().zip(meta.iter()).take(received) {
            let data = &buf[..meta.len.min(buf.len())];
            // Several datagrams of `stride` bytes each when the kernel coalesced them.
            let datagrams: Box<dyn Iterator<Item = &[u8]>> = if data.is_empty() {
                Box::new(std::iter::once(data))
            } else {
                Box::new(data.chunks(meta.stride.max(1)))
            };
            for datagram in datagrams {
                if let Some(why) = stray(datagram, &self.cids) {
                    self.count(meta.addr, why);
                }
            }
        }
        Poll::Ready(Ok(received))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cids() -> HashedConnectionIdGenerator {
        HashedConnectionIdGenerator::from_key(7)
    }

    /// A long-header packet: first byte, version, destination and source IDs, then `rest`.
    fn long(first: u8, version: u32, dcid: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut p = vec![first];
        p.extend_from_slice(&version.to_be_bytes());
        p.push(dcid.len() as u8);
        p.extend_from_slice(dcid);
        p.push(4);
        p.extend_from_slice(&[9, 9, 9, 9]);
        p.extend_from_slice(rest);
        p
    }

    #[test]
    fn garbage_is_stray_and_packets_for_our_connections_are_not() {
        let mut gen = cids();
        let ours = gen.generate_cid();
        let theirs = [0x55u8; 8];
        // Short headers: ours or not.
        let mut short = vec![0x41];
        short.extend_from_slice(&ours);
        short.extend_from_slice(&[0; 30]);
        assert_eq!(stray(&short, &cids()), None);
        let mut foreign = vec![0x41];
        foreign.extend_from_slice(&theirs);
        foreign.extend_from_slice(&[0; 30]);
        assert!(stray(&foreign, &cids()).is_some());
        // Handshake packets (type 2): ours or not (length 2 bytes of payload follows).
        let handshake = |dcid: &[u8]| long(0xe0, 1, dcid, &[0x02, 0xaa, 0xbb]);
        assert_eq!(stray(&handshake(&ours), &cids()), None);
        assert!(stray(&handshake(&theirs), &cids()).is_some());
        // A client's Initial (type 0) with its own ID: judged by quinn when padded, stray
        // when short. Token length 0, then a payload length.
        let mut padded = vec![0; MIN_INITIAL_SIZE];
        let len = (MIN_INITIAL_SIZE - 2) as u16 | 0x4000; // a 2-byte varint
        padded[0..2].copy_from_slice(&len.to_be_bytes());
        let initial = long(0xc0, 1, &theirs, &[&[0u8][..], &padded].concat());
        assert_eq!(stray(&initial, &cids()), None);
        let short_initial = long(0xc0, 1, &theirs, &[0x00, 0x02, 0xaa, 0xbb]);
        assert!(stray(&short_initial, &cids()).is_some());
        // Another QUIC version, and nothing at all.
        assert!(stray(&long(0xc0, 0x0a0a_0a0a, &theirs, &[0; 1300]), &cids()).is_some());
        assert!(stray(&[], &cids()).is_some());
        assert!(stray(&[0x41, 1, 2], &cids()).is_some());
    }

    proptest::proptest! {
        /// Random bytes are stray (but for a chance of 2^-32 per datagram: a long header of
        /// version 1 announcing a padded Initial, which only decryption judges).
        #[test]
        fn random_datagrams_are_stray(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1500)) {
            proptest::prop_assert!(stray(&bytes, &cids()).is_some());
        }
    }
}
