//! # coracle-quic: the server binding of Coracle
//!
//! Meant to hold everything a Coracle node needs on a Linux server (issue 6): the QUIC
//! transport (quinn + rustls, mutual TLS, on smol), the reference KV service and the
//! `coracle` command. **Those are not built yet.** What this crate holds today is the
//! storage part: [`storage::FileLog`], a durable, segmented, checksummed log on disk that
//! implements [`coracle::LogStorage`], with group commit (one fsync for many entries),
//! crash-safe truncation, compaction by whole segments, an atomically replaced hard state
//! and atomic snapshots, recovery that cuts a torn tail and refuses any other damage, and a
//! lock on the data directory.
//!
//! The host's loop with a `FileLog`: feed the node, drain its outputs, and on
//! [`Output::Sync(token)`](coracle::Output::Sync) call
//! `node.log_mut().sync()` and then `node.synced(token)`.

#![warn(missing_docs)]

pub mod storage;
