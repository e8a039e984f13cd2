//! # coracle-quic: the server binding of Coracle
//!
//! Raft over QUIC for your own service: implement [`host::StateMachine`], start a
//! [`host::Host`] with a node's configuration, and propose and read through its
//! [`host::Handle`]. A replicated counter on a one-node cluster on 127.0.0.1, complete:
//!
//! ```
//! use coracle_quic::certs::{Ca, Identity};
//! use coracle_quic::config::NodeConfig;
//! use coracle_quic::host::*;
//! use std::io::Read;
//!
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl StateMachine for Counter {
//!     type Response = u64;
//!     type Snapshot = Vec<u8>; // a copy of the state, written out by a thread
//!     fn apply(&mut self, _index: u64, command: &[u8]) -> Result<u64, ApplyError> {
//!         let add: [u8; 8] = command.try_into().unwrap_or_default();
//!         self.0 += u64::from_le_bytes(add);
//!         Ok(self.0)
//!     }
//!     fn snapshot(&mut self, _applied: u64) -> Result<Vec<u8>, SnapshotError> {
//!         Ok(self.0.to_le_bytes().to_vec())
//!     }
//!     fn restore(&mut self, _index: u64, from: &mut dyn Read) -> Result<(), RestoreError> {
//!         let mut bytes = [0; 8];
//!         from.read_exact(&mut bytes).map_err(RestoreError::Io)?;
//!         self.0 = u64::from_le_bytes(bytes);
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("coracle-doc-{}", std::process::id()));
//! // Certificates (what `coracle certs` writes) and a configuration (`node.toml`).
//! let ca = Ca::generate("doc", 1)?;
//! ca.write(&dir)?;
//! ca.issue(&Identity::Node(1), 1)?.write(&dir, "node-1")?;
//! let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
//! let text = format!("id = 1\ncluster_id = 7\nlisten = \"127.0.0.1:{port}\"\n\
//!     data_dir = \"data\"\n[[peers]]\nid = 1\naddr = \"127.0.0.1:{port}\"\n\
//!     [tls]\nca = \"ca.pem\"\ncert = \"node-1.pem\"\nkey = \"node-1.key\"\n");
//! let node = Host::start(&NodeConfig::parse(&text, &dir)?, Counter::default())?;
//! let counter = node.handle(); // cloneable, Send: give it to any task or thread
//! smol::block_on(async {
//!     // A one-node cluster elects itself: retry until it leads.
//!     let mut total = counter.propose(5u64.to_le_bytes().to_vec()).await;
//!     while total.is_err() {
//!         smol::Timer::after(std::time::Duration::from_millis(50)).await;
//!         total = counter.propose(5u64.to_le_bytes().to_vec()).await;
//!     }
//!     assert_eq!(total?, 5);
//!     assert_eq!(counter.propose(2u64.to_le_bytes().to_vec()).await?, 7);
//!     assert_eq!(counter.read(ReadMode::ReadIndex, |c: &Counter| c.0).await?, 7);
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! node.shutdown()?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! ## Runtimes
//!
//! The example runs on smol, the default: [`host::Host::start`], [`server::RunningNode::start`]
//! and [`client::Client::new`] use it. With the `tokio` feature, the same node runs on a
//! tokio runtime of yours: pass `rt::Runtime::Tokio` (a handle on a runtime with I/O and
//! time enabled; `rt::Runtime::tokio_current` from inside one) to
//! [`host::Host::start_on`], [`server::RunningNode::start_on`] or
//! [`client::Client::new_on`]. quinn then uses its tokio runtime, and the node loop, the
//! transport, forwarding, the metrics endpoint, the KV service and the client spawn their
//! tasks and set their timers on tokio, through the one seam of [`rt`]; nothing is
//! written twice. The choice is an argument, not a global, so one program may run nodes
//! on both. On tokio, stop a node from a task with [`host::Host::stop`]`.await`:
//! [`host::Host::shutdown`], `join` and dropping a running `Host` block the thread until
//! the node has stopped. The `coracle` command runs on smol.
//!
//! The modules:
//!
//! - [`host`]: the node runtime as a host for any state machine: the core with a memory
//!   log bounded by configuration, the store, the transport and a timer in one loop; a
//!   [`host::Handle`] to propose, read, change the membership and watch the status;
//! - [`certs`]: the cluster CA, node certificates that carry the node id, client
//!   certificates with a `client` or `admin` role (rcgen);
//! - [`tls`]: mutual TLS 1.3 for QUIC with our own ALPN, client certificates verified
//!   against the cluster CA;
//! - [`rt`]: the runtime a node or client runs on (smol, or tokio with the `tokio`
//!   feature), the seam every task and timer goes through;
//! - [`transport`]: Raft messages between nodes over quinn on smol or tokio: one connection per pair
//!   of nodes, the sender's id taken from its certificate, datagrams for small messages and
//!   streams for entries and snapshots, malformed frames counted and their stream closed;
//!   [`stray`] counts the datagrams to a node's port that are no QUIC packet for it;
//! - [`hello`]: what two nodes say first on a new connection: the incarnation of their data
//!   directories, so a node that lost its disk is refused as the voter it was;
//! - [`storage`]: [`storage::FileLog`], the durable store on disk (segmented, checksummed
//!   log; hard state; streamed snapshots) that performs the core's `Persist` batches off the
//!   loop with group commit (one fsync for many batches) and reads entries back;
//! - [`kv`]: the reference state machine, a key-value store with exactly-once writes, and
//!   [`server`]: the KV service on a [`host::Host`] (the protocol of [`protocol`]), built
//!   on the public handle alone;
//! - [`client`]: the KV client library (follows the leader, exactly-once writes,
//!   linearizable reads);
//! - [`metrics`]: the node's figures in Prometheus form over HTTP (`[metrics] listen`);
//! - [`stall`]: the watchdog that makes a node whose disk hangs step down;
//! - [`recover`]: recovery after losing a quorum for good (`--force-new-cluster`): a
//!   survivor restarted as a new cluster of one from its own data; [`backup`]: backups of
//!   the KV store and restores into a new cluster;
//! - [`config`]: the node's configuration file (`node.toml`);
//! - [`loopback`]: a CA, certificates and configurations for a cluster on 127.0.0.1, to
//!   try a state machine (the lease example, `examples/lease.rs`) or test it.
//!
//! The `coracle` command (`src/main.rs`) ties them together: `coracle certs`, `coracle
//! node`, `coracle kv`, `coracle admin`.

#![warn(missing_docs)]

pub mod backup;
pub mod certs;
pub mod client;
pub mod config;
pub mod hello;
pub mod host;
pub mod kv;
pub mod loopback;
pub mod metrics;
pub mod protocol;
pub mod recover;
pub mod rt;
pub mod server;
pub mod stall;
pub mod storage;
pub mod stray;
pub mod tls;
pub mod transport;

/// 64 random bits for an id or a key drawn once (a client session, a data directory's
/// incarnation): the standard library's hasher keys come from the
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
