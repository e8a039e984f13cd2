//! The wire format every binding speaks (feature `serde`): postcard frames of an
//! [`Envelope`], checked for protocol version and cluster before the message is read.
//!
//! Layout: `version: u8`, `cluster: varint u64`, `from: varint u64`, `to: varint u64`, then
//! the [`Message`] (postcard: a variant index, then the fields in order; entries as a length
//! and `index, term, kind, data`). Variants are only ever appended, so an older node reads
//! every message it knows.
//!
//! Decoding never allocates: entries are borrowed from the input and collected into a
//! `heapless::Vec` of capacity `E` inside [`Decoded`]. Every error is a [`WireError`], never
//! a panic.
//!
//! ```
//! use coracle::wire::{self, Envelope};
//! use coracle::{Message, RequestVote};
//! let message = Message::RequestVote(RequestVote { term: 3, last_log_index: 7, last_log_term: 2, pre_vote: true , leadership_transfer: false});
//! let mut buf = [0u8; wire::REQUEST_VOTE_MAX];
//! let bytes = wire::encode(&Envelope::new(42, 1, 2, message), &mut buf).unwrap();
//! let decoded = wire::decode::<0>(bytes, 42).unwrap();
//! assert_eq!((decoded.from, decoded.to), (1, 2));
//! assert_eq!(decoded.message(), message);
//! assert!(matches!(
//!     wire::decode::<0>(bytes, 43),
//!     Err(wire::WireError::WrongCluster { expected: 43, found: 42 })
//! ));
//! ```

use crate::message::{
    AppendEntries, AppendEntriesResponse, Entries, InstallSnapshot, InstallSnapshotResponse,
    Message, ReadIndex, ReadIndexResponse, RequestVote, RequestVoteResponse, TimeoutNow,
};
use crate::types::{Entry, Index, NodeId, Term};
use core::fmt;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. Version 2: InstallSnapshot carries `done` on
/// its last chunk instead of the snapshot's size (snapshots are streamed).
pub const PROTOCOL_VERSION: u8 = 2;

/// Largest encoding of a varint `u64`.
const VARINT_U64: usize = 10;
/// Largest encoding of a length prefix (`usize` as varint, bounded to `u32` on the wire).
const VARINT_LEN: usize = 5;

/// Largest encoded envelope header: version, cluster, sender, receiver.
pub const HEADER_MAX: usize = 1 + 3 * VARINT_U64;
/// Largest encoded RequestVote, header included.
pub const REQUEST_VOTE_MAX: usize = HEADER_MAX + 1 + 3 * VARINT_U64 + 2;
/// Largest encoded RequestVoteResponse, header included.
pub const REQUEST_VOTE_RESPONSE_MAX: usize = HEADER_MAX + 1 + VARINT_U64 + 2;
/// Largest encoded AppendEntriesResponse, header included.
pub const APPEND_ENTRIES_RESPONSE_MAX: usize = HEADER_MAX + 1 + VARINT_U64 + 1 + 4 * VARINT_U64;
/// Largest encoded TimeoutNow, header included.
pub const TIMEOUT_NOW_MAX: usize = HEADER_MAX + 1 + VARINT_U64;
/// Largest encoded ReadIndex, header included.
pub const READ_INDEX_MAX: usize = HEADER_MAX + 1 + 2 * VARINT_U64;
/// Largest encoded ReadIndexResponse, header included.
pub const READ_INDEX_RESPONSE_MAX: usize = HEADER_MAX + 1 + 3 * VARINT_U64 + 1;
/// Largest encoded InstallSnapshotResponse, header included.
pub const INSTALL_SNAPSHOT_RESPONSE_MAX: usize = HEADER_MAX + 1 + 3 * VARINT_U64 + 1;

/// Largest encoded InstallSnapshot carrying `config_bytes` of configuration and
/// `data_bytes` of snapshot, header included.
pub const fn install_snapshot_max(config_bytes: usize, data_bytes: usize) -> usize {
    HEADER_MAX + 1 + 4 * VARINT_U64 + 1 + 2 * VARINT_LEN + config_bytes + data_bytes
}

/// Largest encoded AppendEntries without entries (a heartbeat), header included.
pub const APPEND_ENTRIES_FIXED_MAX: usize = HEADER_MAX + 1 + 5 * VARINT_U64 + VARINT_LEN;

/// Largest encoded AppendEntries carrying `entries` entries with `data_bytes` bytes of data
/// in all, header included. A binding sizes its buffers with it and sets
/// [`Config::max_bytes_per_message`](crate::Config::max_bytes_per_message) so batches fit:
/// each entry counts `data.len() + Entry::OVERHEAD` there, the same bound as here.
pub const fn append_entries_max(entries: usize, data_bytes: usize) -> usize {
    APPEND_ENTRIES_FIXED_MAX + entries * Entry::OVERHEAD + data_bytes
}

/// Who sent a message to whom, in which cluster, with which protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
struct Header {
    version: u8,
    cluster: u64,
    from: NodeId,
    to: NodeId,
}

/// A message with its addressing, ready to encode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The cluster both nodes belong to.
    pub cluster: u64,
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The message.
    pub message: Message<'a>,
}

impl<'a> Envelope<'a> {
    /// An envelope of this protocol version.
    pub fn new(cluster: u64, from: NodeId, to: NodeId, message: Message<'a>) -> Self {
        Envelope {
            cluster,
            from,
            to,
            message,
        }
    }
}

/// Why bytes could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WireError {
    /// The frame speaks another protocol version.
    WrongVersion {
        /// The version it carries.
        found: u8,
    },
    /// The frame belongs to another cluster.
    WrongCluster {
        /// Ours.
        expected: u64,
        /// Theirs.
        found: u64,
    },
    /// The bytes end before the frame does.
    Truncated,
    /// The bytes are not a frame (bad variant, bad varint, more entries than fit).
    Malformed,
    /// Bytes remain after the frame.
    TrailingBytes,
    /// The output buffer is too small for the frame.
    BufferTooSmall,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::WrongVersion { found } => {
                write!(f, "protocol version {found}, expected {PROTOCOL_VERSION}")
            }
            WireError::WrongCluster { expected, found } => {
                write!(f, "cluster {found}, expected {expected}")
            }
            WireError::Truncated => f.write_str("frame is truncated"),
            WireError::Malformed => f.write_str("frame is malformed"),
            WireError::TrailingBytes => f.write_str("bytes after the end of the frame"),
            WireError::BufferTooSmall => f.write_str("buffer too small for the frame"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WireError {}

fn decode_error(e: postcard::Error) -> WireError {
    match e {
        postcard::Error::DeserializeUnexpectedEnd => WireError::Truncated,
        _ => WireError::Malformed,
    }
}

/// Encodes `envelope` into `buf`, returning the used part.
pub fn encode<'b>(envelope: &Envelope<'_>, buf: &'b mut [u8]) -> Result<&'b mut [u8], WireError> {
    let header = Header {
        version: PROTOCOL_VERSION,
        cluster: envelope.cluster,
        from: envelope.from,
        to: envelope.to,
    };
    let n = postcard::to_slice(&header, buf)
        .map_err(|_| WireError::BufferTooSmall)?
        .len();
    let m = postcard::to_slice(&envelope.message, &mut buf[n..])
        .map_err(|_| WireError::BufferTooSmall)?
        .len();
    Ok(&mut buf[..n + m])
}

/// The exact encoded size of `envelope`.
pub fn encoded_len(envelope: &Envelope<'_>) -> usize {
    let header = Header {
        version: PROTOCOL_VERSION,
        cluster: envelope.cluster,
        from: envelope.from,
        to: envelope.to,
    };
    let size = |v: &dyn erased::Sized| v.size();
    size(&header) + size(&envelope.message)
}

mod erased {
    /// Object-safe "how long is your postcard encoding".
    pub trait Sized {
        fn size(&self) -> usize;
    }
    impl<T: serde::Serialize> Sized for T {
        fn size(&self) -> usize {
            postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default())
                .unwrap_or(usize::MAX)
        }
    }
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct WireAppend<'a, const E: usize> {
    term: Term,
    prev_log_index: Index,
    prev_log_term: Term,
    leader_commit: Index,
    round: u64,
    #[serde(borrow)]
    entries: heapless::Vec<Entry<'a>, E>,
}

/// Same variants, same order as [`Message`].
#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
enum WireMessage<'a, const E: usize> {
    RequestVote(RequestVote),
    RequestVoteResponse(RequestVoteResponse),
    AppendEntries(#[serde(borrow)] WireAppend<'a, E>),
    AppendEntriesResponse(AppendEntriesResponse),
    TimeoutNow(TimeoutNow),
    ReadIndex(ReadIndex),
    ReadIndexResponse(ReadIndexResponse),
    InstallSnapshot(#[serde(borrow)] InstallSnapshot<'a>),
    InstallSnapshotResponse(InstallSnapshotResponse),
}

/// A decoded frame: its addressing and its message, whose entries (at most `E`) borrow
/// from the input bytes. [`Decoded::message`] borrows this value (the entries live in it),
/// so keep the `Decoded` alive while the message is in use:
/// `let d = wire::decode::<E>(bytes, cluster)?; node.step(d.from, d.message());`.
pub struct Decoded<'a, const E: usize> {
    /// The cluster it belongs to (already checked).
    pub cluster: u64,
    /// The sender, as the frame claims: a binding checks it against what it authenticated.
    pub from: NodeId,
    /// The receiver the sender meant.
    pub to: NodeId,
    message: WireMessage<'a, E>,
}

impl<const E: usize> Decoded<'_, E> {
    /// The message, to hand to [`Node::step`](crate::Node::step).
    pub fn message(&self) -> Message<'_> {
        match &self.message {
            WireMessage::RequestVote(m) => Message::RequestVote(*m),
            WireMessage::RequestVoteResponse(m) => Message::RequestVoteResponse(*m),
            WireMessage::AppendEntriesResponse(m) => Message::AppendEntriesResponse(*m),
            WireMessage::TimeoutNow(m) => Message::TimeoutNow(*m),
            WireMessage::ReadIndex(m) => Message::ReadIndex(*m),
            WireMessage::ReadIndexResponse(m) => Message::ReadIndexResponse(*m),
            WireMessage::InstallSnapshot(m) => Message::InstallSnapshot(*m),
            WireMessage::InstallSnapshotResponse(m) => Message::InstallSnapshotResponse(*m),
            WireMessage::AppendEntries(a) => Message::AppendEntries(AppendEntries {
                term: a.term,
                prev_log_index: a.prev_log_index,
                prev_log_term: a.prev_log_term,
                leader_commit: a.leader_commit,
                round: a.round,
                entries: Entries::from_slice(&a.entries),
            }),
        }
    }
}

/// Decodes a frame of cluster `cluster` with at most `E` entries.
pub fn decode<const E: usize>(bytes: &[u8], cluster: u64) -> Result<Decoded<'_, E>, WireError> {
    let version = *bytes.first().ok_or(WireError::Truncated)?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::WrongVersion { found: version });
    }
    let (header, rest) = postcard::take_from_bytes::<Header>(bytes).map_err(decode_error)?;
    if header.cluster != cluster {
        return Err(WireError::WrongCluster {
            expected: cluster,
            found: header.cluster,
        });
    }
    let (message, rest) =
        postcard::take_from_bytes::<WireMessage<'_, E>>(rest).map_err(decode_error)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes);
    }
    Ok(Decoded {
        cluster: header.cluster,
        from: header.from,
        to: header.to,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;

    const MAX: u64 = u64::MAX;

    fn roundtrip(message: Message<'_>, bound: usize) {
        let env = Envelope::new(MAX, MAX, MAX, message);
        let mut buf = [0u8; 4096];
        let len = encode(&env, &mut buf).unwrap().len();
        assert_eq!(len, encoded_len(&env));
        assert!(
            len <= bound,
            "{} encodes to {len} > bound {bound}",
            message.kind()
        );
        let d = decode::<8>(&buf[..len], MAX).unwrap();
        assert_eq!(d.message(), message);
        assert_eq!((d.from, d.to), (MAX, MAX));
        // Every truncation is an error, never a panic; every too-small buffer too.
        for cut in 0..len {
            assert!(decode::<8>(&buf[..cut], MAX).is_err(), "cut at {cut}");
            let mut small = [0u8; 4096];
            assert_eq!(
                encode(&env, &mut small[..cut]).unwrap_err(),
                WireError::BufferTooSmall
            );
        }
    }

    #[test]
    fn every_message_kind_roundtrips_within_its_bound() {
        roundtrip(
            Message::RequestVote(RequestVote {
                term: MAX,
                last_log_index: MAX,
                last_log_term: MAX,
                pre_vote: true,
                leadership_transfer: false,
            }),
            REQUEST_VOTE_MAX,
        );
        roundtrip(
            Message::RequestVoteResponse(RequestVoteResponse {
                term: MAX,
                vote_granted: true,
                pre_vote: true,
            }),
            REQUEST_VOTE_RESPONSE_MAX,
        );
        roundtrip(
            Message::AppendEntriesResponse(AppendEntriesResponse {
                term: MAX,
                success: true,
                index: MAX,
                hint_term: MAX,
                hint_index: MAX,
                round: MAX,
            }),
            APPEND_ENTRIES_RESPONSE_MAX,
        );
        roundtrip(
            Message::TimeoutNow(TimeoutNow { term: MAX }),
            TIMEOUT_NOW_MAX,
        );
        roundtrip(
            Message::ReadIndex(ReadIndex { term: MAX, id: MAX }),
            READ_INDEX_MAX,
        );
        roundtrip(
            Message::ReadIndexResponse(ReadIndexResponse {
                term: MAX,
                id: MAX,
                index: MAX,
                success: true,
            }),
            READ_INDEX_RESPONSE_MAX,
        );
        roundtrip(
            Message::InstallSnapshotResponse(InstallSnapshotResponse {
                term: MAX,
                last_included_index: MAX,
                next_offset: MAX,
                done: true,
            }),
            INSTALL_SNAPSHOT_RESPONSE_MAX,
        );
        roundtrip(
            Message::InstallSnapshot(InstallSnapshot {
                term: MAX,
                last_included_index: MAX,
                last_included_term: MAX,
                offset: MAX,
                done: true,
                config: &[1; 27],
                data: &[2; 300],
            }),
            install_snapshot_max(27, 300),
        );
        let data = [7u8; 100];
        let entries: [Entry<'_>; 3] = core::array::from_fn(|i| Entry {
            index: MAX - 2 + i as u64,
            term: MAX,
            kind: EntryKind::Command,
            data: &data,
        });
        for n in 0..=3 {
            roundtrip(
                Message::AppendEntries(AppendEntries {
                    term: MAX,
                    prev_log_index: MAX,
                    prev_log_term: MAX,
                    leader_commit: MAX,
                    round: MAX,
                    entries: Entries::from_slice(&entries[..n]),
                }),
                append_entries_max(n, n * data.len()),
            );
        }
    }

    #[test]
    fn wrong_version_cluster_and_garbage_are_errors() {
        let m = Message::RequestVoteResponse(RequestVoteResponse {
            term: 1,
            vote_granted: false,
            pre_vote: false,
        });
        let mut buf = [0u8; 64];
        let len = encode(&Envelope::new(5, 1, 2, m), &mut buf).unwrap().len();
        assert_eq!(
            decode::<0>(&buf[..len], 6).err(),
            Some(WireError::WrongCluster {
                expected: 6,
                found: 5
            })
        );
        let mut v = buf;
        v[0] = PROTOCOL_VERSION + 1;
        assert_eq!(
            decode::<0>(&v[..len], 5).err(),
            Some(WireError::WrongVersion {
                found: PROTOCOL_VERSION + 1
            })
        );
        assert_eq!(
            decode::<0>(&buf[..len + 1], 5).err(),
            Some(WireError::TrailingBytes)
        );
        assert_eq!(decode::<0>(&[], 5).err(), Some(WireError::Truncated));
        // Unknown variant.
        let mut v = buf;
        v[4] = 200;
        assert!(decode::<0>(&v[..len], 5).is_err());
        // Garbage of every length from a fixed generator.
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..2000 {
            let bytes: [u8; 64] = core::array::from_fn(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            });
            let mut bytes = bytes;
            bytes[0] = PROTOCOL_VERSION;
            let _ = decode::<4>(&bytes[..len % 64], 5);
        }
    }

    #[test]
    fn more_entries_than_the_decoder_holds_is_malformed() {
        let entries = [Entry {
            index: 1,
            term: 1,
            kind: EntryKind::Noop,
            data: &[],
        }; 3];
        let entries = [
            entries[0],
            Entry {
                index: 2,
                ..entries[0]
            },
            Entry {
                index: 3,
                ..entries[0]
            },
        ];
        let m = Message::AppendEntries(AppendEntries {
            term: 1,
            prev_log_index: 0,
            prev_log_term: 0,
            leader_commit: 0,
            round: 0,
            entries: Entries::from_slice(&entries),
        });
        let mut buf = [0u8; 256];
        let len = encode(&Envelope::new(1, 1, 2, m), &mut buf).unwrap().len();
        assert_eq!(
            decode::<2>(&buf[..len], 1).err(),
            Some(WireError::Malformed)
        );
        assert!(decode::<3>(&buf[..len], 1).is_ok());
    }
}
