//! # coracle-quic: the server binding of Coracle
//!
//! Everything a Coracle node needs on a Linux server:
//!
//! - [`certs`]: the cluster CA, node certificates that carry the node id, client
//!   certificates with a `client` or `admin` role (rcgen);
//! - [`tls`]: mutual TLS 1.3 for QUIC with our own ALPN, client certificates verified
//!   against the cluster CA;
//! - [`transport`]: Raft messages between nodes over quinn on smol: one connection per pair
//!   of nodes, the sender's id taken from its certificate, datagrams for small messages and
//!   streams for entries and snapshots, malformed frames counted and their stream closed;
//!   [`stray`] counts the datagrams to a node's port that are no QUIC packet for it;
//! - [`hello`]: what two nodes say first on a new connection: the incarnation of their data
//!   directories, so a node that lost its disk is refused as the voter it was;
//! - [`storage`]: [`storage::FileLog`], the durable store on disk (segmented, checksummed
//!   log; hard state; streamed snapshots) that performs the core's `Persist` batches off the
//!   loop with group commit (one fsync for many batches) and reads entries back;
//! - [`server`]: the node runtime (the core with a memory log bounded by configuration,
//!   the store, the transport and a timer in one loop), serving the replicated KV store of
//!   [`kv`] over the protocol of [`protocol`];
//! - [`client`]: the client library (follows the leader, exactly-once writes,
//!   linearizable reads);
//! - [`metrics`]: the node's figures in Prometheus form over HTTP (`[metrics] listen`);
//! - [`stall`]: the watchdog that makes a node whose disk hangs step down;
//! - [`config`]: the node's configuration file (`node.toml`).
//!
//! The `coracle` command (`src/main.rs`) ties them together: `coracle certs`, `coracle
//! node`, `coracle kv`, `coracle admin`.

#![warn(missing_docs)]

pub mod certs;
pub mod client;
pub mod config;
pub mod hello;
pub mod kv;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod stall;
pub mod storage;
pub mod stray;
pub mod tls;
pub mod transport;

/// 64 random bits for an id or a key drawn once (a client session, a data directory's
/// incarnation, the connection-ID key): the standard library's hasher keys come from the
/// operating system's random source, mixed here with the time and the process id (no
/// dependency for a few numbers).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}
