//! # Coracle: a sans-IO Raft that runs everywhere
//!
//! `coracle` is the Raft consensus state machine and nothing else: messages, ticks and
//! commands go in; messages to send, writes to make durable, entries to apply and role
//! changes come out. No clock, no randomness source, no I/O, no allocation after
//! construction, no panic on any input from the network. It is `#![no_std]` and runs on a
//! Cortex-M0 as on a server.
//!
//! Names follow the Raft paper (Ongaro and Ousterhout, 2014) and Ongaro's thesis: each rule
//! of Figure 2 lives in the module named after its part of the protocol ([`election`],
//! [`replication`], [`durability`]); reads without log writes are in [`read`], leadership
//! transfer in [`transfer`].
//!
//! ## A complete event loop
//!
//! Three nodes in memory, a leader elected, a command committed and applied everywhere:
//!
//! ```
//! use coracle::{ArrayLog, Config, EntryKind, Node, Output, OwnedMessage, Role};
//!
//! let members = [1, 2, 3];
//! let mut nodes: Vec<Node<ArrayLog<64, 32>>> = members
//!     .iter()
//!     .map(|&id| Node::new(Config::new(id, id), ArrayLog::new(), &members).unwrap())
//!     .collect();
//! let mut applied = vec![Vec::new(); 3];
//! let mut proposed = false;
//! for _ in 0..100 {
//!     for n in nodes.iter_mut() {
//!         n.tick();
//!     }
//!     // Drain every node; deliver messages at once (a real host encodes them with
//!     // postcard and sends them on a socket).
//!     let mut mail = Vec::new();
//!     for (i, n) in nodes.iter_mut().enumerate() {
//!         let id = n.id();
//!         while let Some(out) = n.poll_output() {
//!             match out {
//!                 // Memory is "durable" at once; a real host writes the batch to disk first.
//!                 Output::Persist(batch) => {
//!                     let token = batch.token;
//!                     n.persisted(token)
//!                 }
//!                 Output::Send { to, message } => mail.push((id, to, OwnedMessage::from(&message))),
//!                 Output::Apply(e) if e.kind == EntryKind::Command => applied[i].push(e.data.to_vec()),
//!                 Output::Apply(_) => {} // the no-op of a new leader
//!                 // Role changes, reads; an ArrayLog never misses, and no snapshot is taken.
//!                 _ => {}
//!             }
//!         }
//!     }
//!     for (from, to, message) in mail {
//!         nodes[to as usize - 1].step(from, message.as_message());
//!     }
//!     if let Some(leader) = nodes.iter_mut().find(|n| n.role() == Role::Leader) {
//!         if !proposed {
//!             leader.propose(b"x=1").unwrap();
//!             proposed = true;
//!         }
//!     }
//! }
//! assert!(applied.iter().all(|a| a == &[b"x=1".to_vec()]), "{applied:?}");
//! ```
//!
//! ## Features
//! - `std` (default): `std::error::Error` for the errors; implies `alloc`.
//! - `alloc`: [`VecLog`], [`CachedLog`] (a memory log bounded by a byte budget, for logs
//!   that live on disk), [`MemStore`] (a durable store in memory: tests, examples, and the
//!   model for a store of your own) and [`OwnedEntry`].
//! - `serde`: the wire format (module `wire`): postcard frames with version and cluster
//!   checks.
//! - `defmt`: `defmt::Format` for the public types, and logging through defmt.
//! - `log`: logging through the `log` crate.
//!
//! With no features the crate needs neither `std` nor `alloc`.

#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod log_macros;

mod config;
pub mod durability;
pub mod election;
pub mod membership;
mod message;
mod node;
mod progress;
pub mod read;
pub mod replication;
mod rng;
pub mod snapshot;
mod storage;
pub mod transfer;
mod types;
#[cfg(feature = "serde")]
pub mod wire;

pub use config::{Config, ConfigError};
pub use durability::{Batch, Persist, SnapshotChunkWrite, SnapshotWrite, SyncToken};
pub use membership::{Member, MembershipChange, MembershipError};
#[cfg(feature = "alloc")]
pub use message::OwnedMessage;
pub use message::{
    AppendEntries, AppendEntriesResponse, Entries, InstallSnapshot, InstallSnapshotResponse,
    Message, ReadIndex, ReadIndexResponse, RequestVote, RequestVoteResponse, TimeoutNow,
};
pub use node::{Counters, Node, Output, Proposal, ProposeError, StateChange};
pub use progress::{Progress, ProgressState};
pub use read::{ReadError, ReadMode};
pub use snapshot::SnapshotError;
pub use storage::{conformance, ArrayLog, LogStorage, SnapshotMeta, StorageError, MAX_MEMBERS};
#[cfg(feature = "alloc")]
pub use storage::{CachedLog, MemStore, OwnedEntry, VecLog};
pub use transfer::TransferError;
pub use types::{Entry, EntryKind, HardState, Index, NodeId, Role, Term};
