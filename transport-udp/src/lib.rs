//! Coracle over authenticated UDP datagrams.
//!
//! This crate is Coracle's UDP binding. Its layers, from the wire up:
//!
//! - the security layer and the datagram frame ([`Sealer`], [`Opener`]):
//!   it seals an opaque payload into a datagram and opens it again, and it
//!   is what stands between the network and the Raft core: forged, replayed,
//!   truncated, oversized or misdirected datagrams are counted and dropped
//!   here, and none reaches the core;
//! - the codec ([`codec`]): core messages encoded with postcard straight
//!   into the datagram buffer and decoded in place, checked against the
//!   authenticated header, with the `Config` limits that make every
//!   AppendEntries fit the MTU ([`codec::mtu_config`]);
//! - the node pump ([`node::UdpNode`]): a core node wired to a link, driven
//!   by datagrams and time, sans-IO; the host's [`node::Application`] performs
//!   the node's durable writes (now or later), reads back entries and
//!   snapshot chunks, and applies what commits;
//! - the async node loop ([`event_loop::run`]), written once over small
//!   [`event_loop::Datagrams`] and [`event_loop::Clock`] traits, and its
//!   drivers: [`smol`] (feature `smol`, default: `async-io` sockets and
//!   timers, a [`smol::NodeHandle`] for other tasks) and `embassy`
//!   (feature `embassy`, no_std: embassy-net and embassy-time). The example
//!   `examples/std_loop.rs` is a blocking `std::net::UdpSocket` loop.
//!
//! Without default features it is `#![no_std]` and allocation-free: every
//! buffer is the caller's [`heapless::Vec`] ([`Datagram`]) or slice, every
//! table has a capacity fixed at compile time.
//!
//! # Features
//! - `std`: the core's `std` (its `VecLog`, `MemStore`, `std::error::Error`).
//! - `smol` (default, implies `std`): the async-io driver.
//! - `embassy`: the embassy-net driver (no_std).
//!
//! # Frame
//!
//! ```text
//! offset  size  field
//!      0     1  protocol version (PROTOCOL_VERSION = 1)
//!      1     8  cluster id          u64, big-endian
//!      9     8  sender node id      u64, big-endian
//!     17     8  receiver node id    u64, big-endian
//!     25     8  per-sender counter  u64, big-endian
//!     33     n  ciphertext of the payload
//!   33+n    16  Poly1305 tag
//! ```
//!
//! The 33-byte header is clear and is the AEAD's associated data; 49 bytes
//! of overhead in all, so the default 1200-byte MTU carries payloads of up to
//! 1151 bytes. See [`frame`] for the details and the choice of a 64-bit
//! cluster id.
//!
//! # Cryptography
//!
//! ChaCha20-Poly1305 (RFC 8439) under a per-sender sub-key
//! `HChaCha20(cluster key, sender || cluster)` with the nonce
//! `0^32 || counter`: exactly XChaCha20-Poly1305 with the 192-bit nonce
//! `sender || cluster || counter`. The nonce repeats for one key only if one
//! sender repeats a counter, which [`SendCounter`] rules out, across reboots
//! too. See [`auth`].
//!
//! # Replays and restarts
//!
//! [`Opener`] keeps a 64-counter sliding window per peer ([`replay`]), in a
//! table of `PEERS` entries fixed at compile time. [`Sealer`] takes its
//! counters from a [`SendCounter`], which the host persists as a high-water
//! mark every `K / 2` datagrams and which jumps `K` past the mark on boot
//! ([`counter`]).
//!
//! # Example
//!
//! ```
//! use coracle_udp::{ClusterKey, Datagram, Opener, OpenError, Sealer, SendCounter};
//!
//! let key = ClusterKey::from_bytes([0x5A; 32]);
//! let cluster = 0x00C0_FFEE;
//!
//! // Node 1 boots; its store holds no mark yet.
//! let mut counter = SendCounter::resume(None, 4096);
//! if let Some(mark) = counter.persist_due() {
//!     // write `mark` to flash or to a file, flush, then:
//!     counter.persisted(mark);
//! }
//! let mut node1 = Sealer::new(&key, cluster, 1, counter);
//!
//! // Node 2 accepts datagrams from up to 4 peers.
//! let mut node2: Opener<4> = Opener::new(&key, cluster, 2);
//! node2.add_peer(1).expect("room for a peer");
//!
//! let mut datagram: Datagram = Datagram::new();
//! node1.seal(2, b"append entries", &mut datagram).expect("fits the MTU");
//!
//! let mut tampered = datagram.clone();
//! tampered[40] ^= 1;
//! assert_eq!(node2.open(&mut tampered), Err(OpenError::Forged));
//!
//! let opened = node2.open(&mut datagram).expect("authentic");
//! assert_eq!(opened.payload, b"append entries");
//! assert_eq!(node2.drops().forged, 1);
//! ```
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub mod auth;
pub mod codec;
pub mod counter;
pub mod drops;
#[cfg(feature = "embassy")]
pub mod embassy;
pub mod event_loop;
pub mod frame;
pub mod node;
pub mod open;
pub mod replay;
pub mod seal;
#[cfg(feature = "smol")]
pub mod smol;

pub use auth::{ClusterKey, KEY_LEN};
pub use counter::{CounterError, SendCounter};
pub use drops::DropCounters;
pub use frame::{
    max_payload, Datagram, Header, DEFAULT_MTU, HEADER_LEN, OVERHEAD, PROTOCOL_VERSION, TAG_LEN,
};
pub use open::{OpenError, Opened, Opener, PeerTableFull};
pub use replay::{ReplayError, ReplayWindow, REPLAY_WINDOW};
pub use seal::{SealError, Sealer};
