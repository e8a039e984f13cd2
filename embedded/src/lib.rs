//! Coracle on boards (issue 7): the parts of the firmware that do not touch
//! hardware, so they are tested on the host, and the host side of the QEMU
//! cluster.
//!
//! - [`compaction`]: when a board snapshots its table and compacts its log;
//! - [`counters`]: the replicated state machine, a table of counters in
//!   `heapless` storage;
//! - [`board`]: a board's node id, address and peers, read from its MAC, so
//!   one image serves every board;
//! - [`journal`]: a board's durable store on any `embedded-storage`
//!   NorFlash ([`journal::FlashJournal`]: the node's writes as a journal,
//!   replayed into its memory log at boot, compacted in steps between turns
//!   of the loop), and the UDP link's send-counter mark
//!   ([`journal::MarkStore`]);
//! - `app` (feature `firmware`): the application every firmware runs (the
//!   table, the journal, the periodic proposals, compaction and the
//!   journal's maintenance, the log lines), generic over its flash and its
//!   board's hooks;
//! - `hub` (feature `std`): the Ethernet hub between QEMU boards.
//!
//! The QEMU firmware is `embedded/qemu/` (its own workspace: it builds for
//! `thumbv7m-none-eabi`); `cargo xtask qemu-cluster` runs a cluster of it.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "firmware")]
pub mod app;
pub mod board;
pub mod compaction;
pub mod counters;
#[cfg(feature = "std")]
pub mod hub;
pub mod journal;
