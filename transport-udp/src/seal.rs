//! Sealing: header + payload into an authenticated, encrypted datagram.

use core::fmt;

use crate::auth::{ClusterKey, SenderKey};
use crate::counter::{CounterError, SendCounter};
use crate::frame::{Datagram, Header, HEADER_LEN, OVERHEAD, PROTOCOL_VERSION};

/// Why [`Sealer::seal`] made no datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SealError {
    /// The payload does not fit the buffer's MTU once the header and tag are
    /// added. No counter was used.
    PayloadTooLarge {
        /// Payload length in bytes.
        len: usize,
        /// The largest payload the MTU allows ([`crate::max_payload`]).
        max: usize,
    },
    /// [`Sealer::seal_in_place`] got a buffer shorter than the header it
    /// must reserve. No counter was used.
    NoHeaderRoom,
    /// The send counter gave no counter (see [`CounterError`]).
    Counter(CounterError),
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PayloadTooLarge { len, max } => {
                write!(f, "payload of {len} bytes exceeds the {max} the MTU allows")
            }
            Self::NoHeaderRoom => f.write_str("buffer has no room reserved for the header"),
            Self::Counter(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl core::error::Error for SealError {}

impl From<CounterError> for SealError {
    fn from(e: CounterError) -> Self {
        Self::Counter(e)
    }
}

/// Seals datagrams from this node: owns the node's [`SendCounter`] so no
/// counter, and so no nonce, is ever used twice.
///
/// ```
/// use coracle_udp::{ClusterKey, Datagram, Sealer, SendCounter};
///
/// let key = ClusterKey::from_bytes([42; 32]);
/// let mut counter = SendCounter::resume(None, 1024);
/// let mark = counter.persist_due().expect("a first mark is due");
/// counter.persisted(mark); // after writing `mark` to durable storage
/// let mut sealer = Sealer::new(&key, 0xC0FFEE, 1, counter);
///
/// let mut out: Datagram = Datagram::new();
/// let header = sealer.seal(2, b"hello", &mut out).expect("fits");
/// assert_eq!(header.counter, 0);
/// assert_eq!(out.len(), coracle_udp::OVERHEAD + 5);
/// ```
#[derive(Debug)]
pub struct Sealer {
    cluster: u64,
    node: u64,
    key: SenderKey,
    counter: SendCounter,
}

impl Sealer {
    /// A sealer for node `node` of cluster `cluster`, taking counters from
    /// `counter` (see [`SendCounter::resume`]).
    #[must_use]
    pub fn new(key: &ClusterKey, cluster: u64, node: u64, counter: SendCounter) -> Self {
        Self {
            cluster,
            node,
            key: SenderKey::derive(key, cluster, node),
            counter,
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

    /// The send counter, to read [`SendCounter::persist_due`].
    #[must_use]
    pub const fn counter(&self) -> &SendCounter {
        &self.counter
    }

    /// The send counter, to report [`SendCounter::persisted`].
    pub fn counter_mut(&mut self) -> &mut SendCounter {
        &mut self.counter
    }

    /// Seals `payload` for node `receiver` into `out` (cleared first), whose
    /// capacity is the MTU. Returns the header it used.
    ///
    /// # Errors
    /// [`SealError::PayloadTooLarge`] if the datagram would exceed the MTU,
    /// [`SealError::Counter`] if no counter is available; `out` is then
    /// empty.
    pub fn seal<const MTU: usize>(
        &mut self,
        receiver: u64,
        payload: &[u8],
        out: &mut Datagram<MTU>,
    ) -> Result<Header, SealError> {
        out.clear();
        if out.resize(HEADER_LEN, 0).is_err() || out.extend_from_slice(payload).is_err() {
            out.clear();
            return Err(SealError::PayloadTooLarge {
                len: payload.len(),
                max: crate::max_payload(MTU),
            });
        }
        self.seal_in_place(receiver, out)
            .inspect_err(|_| out.clear())
    }

    /// Seals in place a payload the caller already wrote into `buf` after
    /// [`HEADER_LEN`] reserved bytes: `buf` holds `[reserved][payload]` and
    /// becomes `[header][ciphertext][tag]`. This lets a codec serialize
    /// straight into the datagram buffer, with no copy:
    ///
    /// ```
    /// use coracle_udp::{ClusterKey, Datagram, Sealer, SendCounter, HEADER_LEN, TAG_LEN};
    /// # let mut counter = SendCounter::resume(None, 16);
    /// # counter.persisted(0);
    /// # let mut sealer = Sealer::new(&ClusterKey::from_bytes([1; 32]), 7, 1, counter);
    /// let mut buf: Datagram<1200> = Datagram::new();
    /// buf.resize(1200 - TAG_LEN, 0).expect("within capacity");
    /// let written = {
    ///     let space = &mut buf[HEADER_LEN..]; // e.g. postcard::to_slice(&msg, space)
    ///     space[..3].copy_from_slice(b"abc");
    ///     3
    /// };
    /// buf.truncate(HEADER_LEN + written);
    /// sealer.seal_in_place(2, &mut buf).expect("fits");
    /// ```
    ///
    /// # Errors
    /// [`SealError::NoHeaderRoom`] if `buf` is shorter than [`HEADER_LEN`],
    /// [`SealError::PayloadTooLarge`] if the tag would not fit,
    /// [`SealError::Counter`] if no counter is available; `buf` is then
    /// left as it was.
    pub fn seal_in_place<const MTU: usize>(
        &mut self,
        receiver: u64,
        buf: &mut Datagram<MTU>,
    ) -> Result<Header, SealError> {
        let Some(payload_len) = buf.len().checked_sub(HEADER_LEN) else {
            return Err(SealError::NoHeaderRoom);
        };
        if buf.len() + (OVERHEAD - HEADER_LEN) > MTU {
            return Err(SealError::PayloadTooLarge {
                len: payload_len,
                max: crate::max_payload(MTU),
            });
        }
        let counter = self.counter.next_counter()?;
        let header = Header {
            version: PROTOCOL_VERSION,
            cluster: self.cluster,
            sender: self.node,
            receiver,
            counter,
        };
        let Some((head, body)) = buf.split_first_chunk_mut::<HEADER_LEN>() else {
            return Err(SealError::NoHeaderRoom);
        };
        header.write_to(head);
        let Some(tag) = self.key.seal(head, counter, body) else {
            return Err(SealError::PayloadTooLarge {
                len: payload_len,
                max: crate::max_payload(MTU),
            });
        };
        if buf.extend_from_slice(&tag).is_err() {
            // Unreachable: the length was checked above.
            return Err(SealError::PayloadTooLarge {
                len: payload_len,
                max: crate::max_payload(MTU),
            });
        }
        Ok(header)
    }
}
