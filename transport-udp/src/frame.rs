//! The datagram frame: a fixed, authenticated header, the ciphertext of the
//! payload, and the AEAD tag.
//!
//! ```text
//! offset  size  field
//! ------  ----  -----------------------------------------------------------
//!      0     1  protocol version            (PROTOCOL_VERSION)
//!      1     8  cluster id, u64 big-endian
//!      9     8  sender node id, u64 big-endian
//!     17     8  receiver node id, u64 big-endian
//!     25     8  per-sender counter, u64 big-endian
//!     33     n  ciphertext of the payload (n = datagram length - 49)
//!   33+n    16  Poly1305 tag
//! ```
//!
//! The 33 header bytes are sent in clear and are the associated data of the
//! AEAD: a receiver can route and filter on them before spending a cipher
//! call, and any change to them makes the tag check fail. Every integer is
//! big-endian (network byte order). A datagram is therefore at least
//! [`OVERHEAD`] = 49 bytes long (an empty payload is allowed) and at most the
//! MTU, which leaves [`max_payload`]`(MTU)` bytes for the payload: 1151 bytes
//! with the default MTU of 1200.
//!
//! The cluster id is a `u64`: a random 64-bit id makes it negligible that two
//! clusters sharing a network (or, by mistake, a key) ever pick the same one,
//! and it costs 4 bytes more than a `u32` on every datagram.

/// The protocol version this crate writes and the only one it accepts.
///
/// Bump it on any change to the layout above or to the cryptography.
pub const PROTOCOL_VERSION: u8 = 1;

/// Length of the clear, authenticated header.
pub const HEADER_LEN: usize = 1 + 8 + 8 + 8 + 8;

/// Length of the Poly1305 authentication tag at the end of every datagram.
pub const TAG_LEN: usize = 16;

/// Bytes a datagram carries on top of its payload: header and tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// The default MTU: the largest datagram we send or accept, in bytes.
///
/// 1200 bytes is the floor QUIC assumes for any IPv4/IPv6 path, so such
/// datagrams are not fragmented on any sane network.
pub const DEFAULT_MTU: usize = 1200;

/// A datagram buffer of capacity `MTU`, owned by the caller.
pub type Datagram<const MTU: usize = DEFAULT_MTU> = heapless::Vec<u8, MTU>;

const VERSION_AT: usize = 0;
const CLUSTER_AT: usize = 1;
const SENDER_AT: usize = 9;
const RECEIVER_AT: usize = 17;
const COUNTER_AT: usize = 25;

/// The largest payload that fits a datagram of `mtu` bytes (0 if none does).
///
/// ```
/// assert_eq!(coracle_udp::max_payload(1200), 1151);
/// assert_eq!(coracle_udp::max_payload(10), 0);
/// ```
#[must_use]
pub const fn max_payload(mtu: usize) -> usize {
    mtu.saturating_sub(OVERHEAD)
}

/// The clear header of a datagram.
///
/// [`crate::Sealer::seal`] fills it in; [`crate::Opener::open`] returns it
/// only once the tag has been verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub version: u8,
    /// Cluster id: datagrams of other clusters are dropped.
    pub cluster: u64,
    /// Node id of the sender.
    pub sender: u64,
    /// Node id of the receiver: datagrams for other nodes are dropped.
    pub receiver: u64,
    /// Per-sender counter: never repeats for one sender, and so never
    /// repeats a nonce (see the crate documentation).
    pub counter: u64,
}

impl Header {
    /// The header's wire form.
    ///
    /// ```
    /// use coracle_udp::{Header, HEADER_LEN};
    /// let h = Header { version: 1, cluster: 2, sender: 3, receiver: 4, counter: 5 };
    /// let bytes: [u8; HEADER_LEN] = h.encode();
    /// assert_eq!(bytes[0], 1);
    /// assert_eq!(Header::decode(&bytes), h);
    /// ```
    #[must_use]
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        self.write_to(&mut out);
        out
    }

    /// Writes the header's wire form into `out`.
    pub fn write_to(&self, out: &mut [u8; HEADER_LEN]) {
        out[VERSION_AT] = self.version;
        out[CLUSTER_AT..SENDER_AT].copy_from_slice(&self.cluster.to_be_bytes());
        out[SENDER_AT..RECEIVER_AT].copy_from_slice(&self.sender.to_be_bytes());
        out[RECEIVER_AT..COUNTER_AT].copy_from_slice(&self.receiver.to_be_bytes());
        out[COUNTER_AT..HEADER_LEN].copy_from_slice(&self.counter.to_be_bytes());
    }

    /// Reads a header from its wire form. Every byte string of the right
    /// length is a header: whether it is acceptable is for the caller to say.
    #[must_use]
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Self {
        Self {
            version: bytes[VERSION_AT],
            cluster: be_u64(bytes, CLUSTER_AT),
            sender: be_u64(bytes, SENDER_AT),
            receiver: be_u64(bytes, RECEIVER_AT),
            counter: be_u64(bytes, COUNTER_AT),
        }
    }
}

fn be_u64(bytes: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_as_documented() {
        let h = Header {
            version: 0xAB,
            cluster: 0x0102_0304_0506_0708,
            sender: 0x1112_1314_1516_1718,
            receiver: 0x2122_2324_2526_2728,
            counter: 0x3132_3334_3536_3738,
        };
        let b = h.encode();
        assert_eq!(HEADER_LEN, 33);
        assert_eq!(OVERHEAD, 49);
        assert_eq!(b[0], 0xAB);
        assert_eq!(b[1..9], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b[9..17], [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
        assert_eq!(b[17..25], [0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28]);
        assert_eq!(b[25..33], [0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38]);
        assert_eq!(Header::decode(&b), h);
    }

    #[test]
    fn max_payload_saturates() {
        assert_eq!(max_payload(DEFAULT_MTU), 1151);
        assert_eq!(max_payload(OVERHEAD), 0);
        assert_eq!(max_payload(0), 0);
    }
}
