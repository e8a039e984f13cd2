//! The node runtime: one smol task owns the core [`Node`](coracle::Node) with its memory
//! log (a [`CachedLog`] bounded by `storage.memory_log_bytes`), the [`FileLog`] (the
//! durable store), the [`StateMachine`] and a timer; the transport and the services
//! (through [`Handle`]s) are tasks on the same executor and talk to it through channels
//! (no thread switch on the way of a request, a message or an answer). The disk is used on
//! threads of the node only, so the event loop never waits for it: the fsync thread
//! performs the writes, the read thread reads entries and snapshot chunks back, and a
//! snapshot's file is written by a thread of its own.
//!
//! The loop (the core's six steps): wait for a message, a call from a handle, a finished
//! flush, entries read back or the next deadline; advance the clock by the ticks that
//! passed; feed what arrived (draining everything queued, so one loop iteration handles a
//! batch); drain the outputs: send messages, apply committed entries, answer reads; queue
//! each `Output::Persist` batch in the [`FileLog`] (memory only), hand `Output::Fetch` and
//! `Output::SendSnapshot` to the read thread. Then group commit: if no flush is running,
//! everything queued goes to the fsync thread as one [`FlushJob`] (one write and one
//! `fdatasync` of the records); when it reports back, the node gets the newest token with
//! `persisted`. Batches that arrive meanwhile wait for the next one, so one `fdatasync`
//! covers all that arrived while the previous one ran.

use super::entry::{self, HostBook, HostRecord, LoggedCommand};
use super::forward::{self, MemberRequest, ResponseCodec};
use super::handle::{
    Call, Change, Done, Gone, MemberStatus, MembershipError, Op, ProposeError, ReadError, ReadFn,
    ReadMode, SnapshotRequestError, SnapshotStatus, Status, TransportCounters, DEFAULT_TIMEOUT,
};
use super::handover::{Held, Release};
use super::join::{self, Duties, JoinError};
use super::{Handle, SnapshotSource, StateMachine};
use crate::certs::Identity;
use crate::config::{ConfigError, NodeConfig};
use crate::metrics::{Metrics, ProposalOutcome, ReadOutcome};
use crate::rt;
use crate::stall::{FlushGate, FlushHold, StallWatch};
use crate::storage::{
    FileLog, FileLogError, FlushDone, FlushJob, Incarnations, LogReader, SnapshotFile,
    SnapshotWriter,
};
use crate::tls::{Credentials, TlsError};
use crate::transport::{
    encode_frame, Class, Forwarded, Inbound, PeerFrame, StartError, Transport, TransportStats,
};
use coracle::wire::Envelope;
use coracle::{
    CachedLog, EntryKind, Index, InstallSnapshot, LogStorage, MembershipChange, Message, NodeId,
    Output, OwnedEntry, Role, SnapshotMeta, SyncToken, Term,
};
use prometheus_client::registry::Registry;
use smol::channel::{self, Receiver, Sender};
use smol::future::FutureExt;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Most other members a node knows (the core's peer capacity).
pub const PEERS: usize = 8;
/// AppendEntries in flight per follower at most.
pub const INFLIGHT: usize = 16;
/// Reads pending at once at most.
pub const READS: usize = 1024;

/// The core node as this binding runs it: its memory log is bounded by
/// `storage.memory_log_bytes`, the log itself is on disk ([`FileLog`]).
pub type CoreNode = coracle::Node<CachedLog, PEERS, INFLIGHT, READS>;

/// Bytes of entries one fetch reads back at most: each fetch replaces what the previous
/// one read (the memory log keeps one window), so reading more at once only holds more
/// memory while the node sends it; 8 MiB fill 8 AppendEntries of the default 1 MiB.
const MAX_FETCH_BYTES: usize = 8 << 20;

/// How often a status is published to watchers at most while only the indices move.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);
/// How long a node shutting down lets the answers it just gave leave before it closes its
/// connections (a generous margin for a busy machine: the answers are written by the
/// client sessions' tasks and sent by quinn's driver, each waiting for its turn).
const ANSWERS_LEAVE: Duration = Duration::from_millis(100);

/// The QUIC error code a node closes a client connection with when it serves no clients.
const ERR_NO_SERVICE: u32 = 0x53;

/// Why a node could not start or stopped.
#[derive(Debug)]
pub enum NodeError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// Certificates are missing or invalid.
    Tls(TlsError),
    /// The certificate is not this node's.
    WrongCertificate {
        /// The id in the configuration.
        id: NodeId,
        /// The identity in the certificate.
        found: String,
    },
    /// The data directory cannot be opened (locked, corrupt, unreadable).
    Storage(FileLogError),
    /// The data directory's durable state is incomplete, inconsistent or damaged
    /// ([`FileLogError::Damaged`], [`FileLogError::Corrupt`]): the message says what and
    /// how to repair, with this node's id and address in the commands.
    DurableState {
        /// This node's id.
        id: NodeId,
        /// Its address, as the other nodes reach it.
        addr: SocketAddr,
        /// What is wrong.
        source: FileLogError,
    },
    /// The core refused the configuration.
    Core(coracle::ConfigError),
    /// The listen address cannot be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A thread of the node (one that makes the log durable or reads it) cannot be started.
    Thread(std::io::Error),
    /// Making the log durable failed: the node stopped (restart it on healthy storage).
    Sync(std::io::Error),
    /// A snapshot of the state machine cannot be written or restored: the node stopped
    /// rather than run with a wrong state.
    Snapshot(String),
    /// The state machine failed to apply the entry at `index` (it returned an error or
    /// panicked): the node stopped without acknowledging anything after it. Its log is
    /// intact; a restart replays it into the state machine from the last snapshot.
    Apply {
        /// The entry's index.
        index: Index,
        /// What the state machine said (or the panic's message).
        message: String,
    },
    /// A command entry of the log is not in the host's format (written by an earlier
    /// build, or a newer one): the node stopped rather than misread it.
    Entry {
        /// The entry's index.
        index: Index,
        /// What is wrong with it.
        source: entry::EntryError,
    },
    /// The metrics endpoint cannot be bound (`[metrics] listen`).
    Metrics(crate::metrics::BindError),
    /// The node was shut down while its disk hung: the last flush did not return within
    /// `storage.stall_timeout_ms`, so the node stopped without it. Nothing it held back had
    /// been acknowledged (a node answers only once its writes are durable); a restart on a
    /// disk that answers recovers what reached it.
    DiskStalled {
        /// How long the shutdown waited for the flush.
        waited: Duration,
    },
    /// The node's event loop panicked (a bug).
    Panicked,
    /// The runtime cannot run the node, or the node cannot be waited for here
    /// ([`Host::start_on`], [`Host::join`]).
    Runtime(rt::RuntimeError),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Config(e) => write!(f, "{e}"),
            NodeError::Tls(e) => write!(f, "{e}"),
            NodeError::WrongCertificate { id, found } => write!(
                f,
                "the certificate is for {found}, but the configuration says node {id}"
            ),
            NodeError::Storage(e) => write!(f, "data directory: {e}"),
            NodeError::DurableState { id, addr, source } => {
                write!(f, "{source} (for this node, ID is {id} and ADDR is {addr})")
            }
            NodeError::Core(e) => write!(f, "raft configuration: {e}"),
            NodeError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            NodeError::Thread(e) => write!(f, "cannot start a thread of the node: {e}"),
            NodeError::Sync(e) => write!(f, "log sync failed, node stopped: {e}"),
            NodeError::Snapshot(m) => write!(f, "snapshot: {m}"),
            NodeError::Apply { index, message } => write!(
                f,
                "the state machine failed to apply entry {index}: {message}; node stopped"
            ),
            NodeError::Entry { index, source } => {
                write!(f, "entry {index} of the log: {source}; node stopped")
            }
            NodeError::Metrics(e) => write!(f, "{e}"),
            NodeError::DiskStalled { waited } => write!(
                f,
                "the disk did not finish the log's last flush within {} ms \
                 (storage.stall_timeout_ms): stopped without it; nothing that was not \
                 durable had been acknowledged",
                waited.as_millis()
            ),
            NodeError::Panicked => f.write_str("the node's event loop panicked"),
            NodeError::Runtime(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for NodeError {}

/// What serves the client connections of a node (certificates with a `client` or `admin`
/// role): called once per connection, on the node's executor, with a handle on the node.
pub type ServeClient<S> = Arc<dyn Fn(quinn::Connection, Identity, Handle<S>) + Send + Sync>;

/// A node running as a task on its runtime (smol, or tokio: [`Host::start_on`]), with its
/// transport, hosting the state machine `S`.
pub struct Host<S: StateMachine> {
    id: NodeId,
    task: Option<rt::Task<Result<(), NodeError>>>,
    handle: Handle<S>,
    local_addr: SocketAddr,
    transport: Arc<Transport>,
    /// The metrics endpoint's address, its registry and its task (dropped with the node).
    metrics: Option<(SocketAddr, Arc<Registry>, rt::Task<()>)>,
    /// Holds the fsync thread ([`Host::hold_flushes`]).
    flush_gate: FlushGate,
}

impl<S: StateMachine> fmt::Debug for Host<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine> Host<S> {
    /// Opens the data directory, loads the certificates, binds the address and starts the
    /// node with `state_machine` (empty: the node restores its snapshot into it and
    /// replays the log). Client connections are refused; see
    /// [`start_serving`](Self::start_serving). Errors name what is wrong (bad certificate,
    /// locked directory, address in use).
    ///
    /// The node runs on smol; [`start_on`](Self::start_on) runs it on tokio.
    pub fn start(cfg: &NodeConfig, state_machine: S) -> Result<Host<S>, NodeError> {
        Self::start_serving(cfg, state_machine, None)
    }

    /// [`start`](Self::start), with `clients` serving the connections of client
    /// certificates on the node's own address.
    pub fn start_serving(
        cfg: &NodeConfig,
        state_machine: S,
        clients: Option<ServeClient<S>>,
    ) -> Result<Host<S>, NodeError> {
        Self::start_on(rt::Runtime::Smol, cfg, state_machine, clients)
    }

    /// [`start_serving`](Self::start_serving) on `runtime`: the node loop, its transport,
    /// forwarding and metrics endpoint run there, and so do the client connections given
    /// to `clients`. On tokio (feature `tokio`), give
    /// [`Runtime::Tokio`](rt::Runtime) a handle on a runtime with I/O and time enabled;
    /// from inside one, [`Runtime::tokio_current`](rt::Runtime). The node's blocking work
    /// (fsync, disk reads, snapshots) runs on threads of its own on either runtime.
    ///
    /// ```no_run
    /// # #[cfg(feature = "tokio")]
    /// # async fn on_tokio<S: coracle_quic::host::StateMachine>(
    /// #     cfg: &coracle_quic::config::NodeConfig, sm: S,
    /// # ) -> Result<(), Box<dyn std::error::Error>> {
    /// use coracle_quic::{host::Host, rt::Runtime};
    /// let node = Host::start_on(Runtime::tokio_current(), cfg, sm, None)?;
    /// // ... node.handle() from any task ...
    /// node.stop().await?;
    /// # Ok(()) }
    /// ```
    pub fn start_on(
        runtime: rt::Runtime,
        cfg: &NodeConfig,
        state_machine: S,
        clients: Option<ServeClient<S>>,
    ) -> Result<Host<S>, NodeError> {
        runtime.check().map_err(NodeError::Runtime)?;
        let creds = node_credentials(cfg)?;
        // Bound first: a node whose metrics address is taken does not start at all.
        let endpoint = cfg
            .metrics
            .listen
            .map(crate::metrics::Endpoint::bind)
            .transpose()
            .map_err(NodeError::Metrics)?;
        let log = open_log(cfg)?;
        let incarnations =
            Arc::new(Incarnations::open(&cfg.data_dir).map_err(|e| durable_state(cfg, e))?);
        let greeting = crate::hello::Greeting::new(
            cfg.cluster_id,
            cfg.id,
            log.identity().incarnation,
            incarnations.clone(),
        );
        // A node joining a running cluster starts with no configuration: it never
        // campaigns, and learns its configuration from the leader that adds it.
        let voters = match cfg.join.is_empty() {
            true => cfg.voters(),
            false => Vec::new(),
        };
        let last_snapshot = log.snapshot_point().map_or(0, |(index, _)| index);
        let memory = log
            .recover(cfg.memory_log_bytes())
            .map_err(|e| durable_state(cfg, e))?;
        let mut raft = cfg.raft_config(0);
        // The kind byte the host puts before every command (`entry`).
        raft.max_entry_bytes = raft.max_entry_bytes.saturating_add(1);
        let max_command = cfg.raft.max_entry_bytes;
        // Boxed: the node's fixed-capacity tables make it large, and the event loop's future
        // is moved a few times before it lands on the executor.
        let node = Box::new(CoreNode::new(raft, memory, &voters).map_err(NodeError::Core)?);
        let (in_tx, in_rx) = channel::bounded(65_536);
        let (call_tx, call_rx) = channel::bounded(65_536);
        let handle = Handle {
            id: cfg.id,
            calls: call_tx,
            timeout: DEFAULT_TIMEOUT,
            stats: Arc::new(OnceLock::new()),
            max_command,
            dir: Arc::new(cfg.data_dir.clone()),
            runtime: runtime.clone(),
        };
        let on_client = {
            let handle = handle.clone();
            Arc::new(
                move |conn: quinn::Connection, identity: Identity| match &clients {
                    Some(serve) => serve(conn, identity, handle.clone()),
                    None => conn.close(ERR_NO_SERVICE.into(), b"this node serves no clients"),
                },
            )
        };
        let transport = Transport::start(
            cfg.id,
            cfg.cluster_id,
            cfg.listen,
            &creds,
            &cfg.quic(),
            cfg.transport_settings(),
            in_tx,
            on_client,
            greeting,
            runtime.clone(),
        )
        .map_err(|e| match e {
            StartError::Tls(e) => NodeError::Tls(e),
            StartError::Bind(source) => NodeError::Bind {
                addr: cfg.listen,
                source,
            },
        })?;
        let _ = handle.stats.set(transport.stats().clone());
        let (metrics, metrics_server) = match endpoint {
            Some(endpoint) => {
                let (metrics, registry) = Metrics::new(cfg.id, transport.stats().clone());
                let addr = endpoint.local_addr().map_err(|source| {
                    NodeError::Metrics(crate::metrics::BindError {
                        addr: cfg.metrics.listen.unwrap_or(cfg.listen),
                        source,
                    })
                })?;
                info!(node = cfg.id, %addr, "serving metrics at http://{addr}/metrics");
                let registry = Arc::new(registry);
                let task = endpoint.serve(registry.clone(), &runtime);
                (metrics, Some((addr, registry, task)))
            }
            None => (Metrics::disabled(), None),
        };
        let local_addr = transport.local_addr().map_err(|source| NodeError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let mut addrs = HashMap::new();
        for p in &cfg.peers {
            transport.set_address(p.id, p.addr);
            addrs.insert(p.id, p.addr.to_string());
        }
        // Where the others reach this node: its [[peers]] entry (`listen` may be 0.0.0.0).
        addrs.insert(cfg.id, cfg.advertised().unwrap_or(local_addr).to_string());
        // The members of the configuration in the log (node.toml's peers may name nodes
        // removed since, which are not dialed); none yet for a node that joins.
        let members: Vec<NodeId> = node.members().map(|m| m.id).collect();
        if !members.is_empty() {
            transport.keep_links(&members);
        }
        for &v in if members.is_empty() {
            &voters
        } else {
            &members
        } {
            transport.ensure_link(v);
        }
        let (written_tx, written_rx) = channel::bounded(1);
        let (fetched_tx, fetched_rx) = channel::bounded(1);
        let disk_reads = spawn_read_thread(
            cfg.id,
            cfg.cluster_id,
            log.reader(),
            transport.clone(),
            fetched_tx,
        )
        .map_err(NodeError::Thread)?;
        let relays = channel::bounded(1);
        let runtime = Runtime {
            id: cfg.id,
            cluster: cfg.cluster_id,
            forward: cfg.raft.forward,
            forwarded: None,
            transport: transport.clone(),
            sm: state_machine,
            applied: 0,
            writes: HashMap::new(),
            reads: HashMap::new(),
            next_read: 1,
            addrs,
            book: HostBook::default(),
            priorities_dirty: true,
            duties: Duties::new(
                cfg.priority,
                Duration::from_millis(cfg.raft.election_timeout_ms),
            ),
            membership_cfg: cfg.membership.clone(),
            tick: cfg.tick(),
            snapshots: Snapshots {
                every: cfg.storage.snapshot_entries,
                last: last_snapshot,
                failed: 0,
                wanted: false,
                stepping: false,
                writing: None,
                began: None,
                written: written_tx,
                waiters: Vec::new(),
            },
            log,
            disk_reads,
            fetch_bytes: (cfg.memory_log_bytes() / 4).min(MAX_FETCH_BYTES),
            want_sync: None,
            syncing: None,
            incarnations,
            entry: Vec::new(),
            handover_limit: Duration::from_millis(2 * cfg.raft.election_timeout_ms),
            held: Held::new(Duration::from_millis(2 * cfg.raft.election_timeout_ms)),
            transferring: false,
            relays: Some(relays.0),
            relays_done: relays.1,
            watch: Watchers::default(),
            metrics,
            stall: StallWatch::new(cfg.stall_timeout()),
        };
        info!(node = cfg.id, addr = %local_addr, data = %cfg.data_dir.display(), voters = ?voters, "node started");
        let (durable_tx, durable_rx) = channel::bounded(1);
        let flush_gate = FlushGate::default();
        let fsync = spawn_fsync_thread(cfg.id, durable_tx, flush_gate.clone())
            .map_err(NodeError::Thread)?;
        let run = Box::pin(runtime.run(
            node,
            Wakers {
                inbound: in_rx,
                calls: call_rx,
                durable: durable_rx,
                snapshots: written_rx,
                fetched: fetched_rx,
            },
            fsync,
        ));
        let task = transport.runtime().spawn(async move {
            std::panic::AssertUnwindSafe(run)
                .catch_unwind()
                .await
                .unwrap_or(Err(NodeError::Panicked))
        });
        Ok(Host {
            id: cfg.id,
            task: Some(task),
            handle,
            local_addr,
            transport,
            metrics: metrics_server,
            flush_gate,
        })
    }

    /// Where the metrics are served (`[metrics] listen`, with the port bound if it was 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, ..)| *addr)
    }

    /// The figures the metrics endpoint serves, as the same OpenMetrics text, for a host
    /// that exports them its own way (`None` without `[metrics]`).
    pub fn metrics_text(&self) -> Option<String> {
        self.metrics
            .as_ref()
            .map(|(_, registry, _)| crate::metrics::encode(registry))
    }

    /// Fault injection (tests, drills): the node's disk hangs. Its fsync thread runs no
    /// flush (the one running finishes) until the returned guard is dropped, so after
    /// `storage.stall_timeout_ms` the node steps down and stays out of elections; it comes
    /// back once the guard is dropped. Nothing is lost: the writes wait in memory. A
    /// shutdown meanwhile waits `storage.stall_timeout_ms` for the flush, then stops
    /// without it ([`NodeError::DiskStalled`]), as it would on a real disk that hangs.
    pub fn hold_flushes(&self) -> FlushHold {
        warn!(
            node = self.id,
            "fault injection: the log's flushes are held"
        );
        self.flush_gate.hold()
    }

    /// A handle on the node: propose, read, change the membership, watch.
    pub fn handle(&self) -> Handle<S> {
        self.handle.clone()
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The transport's counters.
    pub fn stats(&self) -> &TransportStats {
        self.transport.stats()
    }

    /// True once the node has stopped (after an error, or a shutdown).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the node: a leader first hands leadership to its most caught-up voter
    /// (waiting an election timeout at most), then the node makes the log durable, closes
    /// the connections and ends; this waits for it. On a disk that hangs it gives up the
    /// last flush after `storage.stall_timeout_ms` ([`NodeError::DiskStalled`]).
    pub fn shutdown(mut self) -> Result<(), NodeError> {
        self.handle.shutdown();
        self.join()
    }

    /// [`shutdown`](Self::shutdown) from async code: asks the node to stop and waits for it
    /// without blocking the thread (what a task on tokio must use: `shutdown`, `join` and
    /// dropping a running `Host` block the calling thread until the node has stopped).
    pub async fn stop(mut self) -> Result<(), NodeError> {
        self.handle.shutdown();
        self.stopped().await
    }

    /// Waits until the node stops by itself (an error) or is shut down. On the thread of
    /// a current-thread tokio runtime the node runs on, this would wait forever: it
    /// answers [`RuntimeError::WouldBlock`](rt::RuntimeError::WouldBlock) at once (await
    /// [`stop`](Self::stop) or [`stopped`](Self::stopped) there).
    pub fn join(&mut self) -> Result<(), NodeError> {
        match self.task.take() {
            Some(t) if t.would_deadlock() => {
                self.task = Some(t);
                Err(NodeError::Runtime(rt::RuntimeError::WouldBlock))
            }
            // A plain parker, not `smol::block_on`: the executor thread drives the I/O
            // reactor (a second driver would hand every event over with a thread switch).
            Some(t) => t
                .wait()
                .unwrap_or(Err(NodeError::Runtime(rt::RuntimeError::ShutDown))),
            None => Ok(()),
        }
    }

    /// Waits, from async code, until the node stops by itself (an error) or is shut down.
    pub async fn stopped(&mut self) -> Result<(), NodeError> {
        match self.task.take() {
            Some(mut t) => std::future::poll_fn(|cx| t.poll_outcome(cx))
                .await
                .unwrap_or(Err(NodeError::Runtime(rt::RuntimeError::ShutDown))),
            None => Ok(()),
        }
    }

    /// Asks the node to stop without waiting.
    pub fn request_shutdown(&self) {
        self.handle.shutdown();
    }
}

impl<S: StateMachine> Drop for Host<S> {
    /// Shuts the node down and waits for it, except on the thread of the current-thread
    /// tokio runtime it runs on, where the node stops in the background.
    fn drop(&mut self) {
        if self.task.is_some() {
            self.handle.shutdown();
            if let Err(NodeError::Runtime(rt::RuntimeError::WouldBlock)) = self.join() {
                warn!(
                    node = self.id,
                    "a running node dropped on its current-thread tokio runtime: it stops in the background (await Host::stop to wait)"
                );
                if let Some(t) = self.task.take() {
                    t.detach();
                }
            }
        }
    }
}

/// Who waits for an entry proposed here.
enum Pending<S: StateMachine> {
    /// A command's proposer.
    Command(Done<Result<S::Response, ProposeError>>),
    /// A membership change's.
    Membership(Done<Result<Index, MembershipError>>),
    /// Nobody (a record the host proposes by itself).
    Record,
}

impl<S: StateMachine> Pending<S> {
    /// The proposer learns that the outcome of its entry is unknown.
    fn unknown(self, why: &str) {
        match self {
            Pending::Command(done) => done(Err(ProposeError::OutcomeUnknown(why.into()))),
            Pending::Membership(done) => done(Err(MembershipError::Retry(why.into()))),
            Pending::Record => {}
        }
    }
}

/// What applying an entry gave its proposer.
enum Applied<R> {
    Response(R),
    Nothing,
}

/// What a watcher is sent a status for: role, term, leader, members (at once); commit,
/// applied, last snapshot (at most every [`WATCH_INTERVAL`]).
type Watched = ((Role, Term, Option<NodeId>, usize), (Index, Index, Index));

/// The watchers of a node's status ([`Handle::watch`]).
#[derive(Default)]
struct Watchers {
    to: Vec<Sender<Status>>,
    /// What was published last.
    sent: Option<Watched>,
    at: Option<Instant>,
}

struct Runtime<S: StateMachine> {
    id: NodeId,
    cluster: u64,
    /// Proposals made here while following go to the leader (`raft.forward`).
    forward: bool,
    /// The leader the proposals forwarded from here went to, and the channel whose closing
    /// answers those still in flight ([`ProposeError::OutcomeUnknown`]) once this node
    /// knows another leader or none: a leader that died or went silent would otherwise
    /// keep them waiting until its connection's idle timeout.
    forwarded: Option<(NodeId, Sender<()>, Receiver<()>)>,
    transport: Arc<Transport>,
    sm: S,
    /// The index of the last entry applied to the state machine (or restored into it).
    applied: Index,
    writes: HashMap<Index, (Term, Pending<S>)>,
    reads: HashMap<u64, ReadFn<S>>,
    next_read: u64,
    /// Where every member this node knows listens (the configuration's peers and the
    /// book).
    addrs: HashMap<NodeId, String>,
    /// The addresses and priorities learned from the log ([`HostRecord`]): replicated,
    /// kept in snapshots.
    book: HostBook,
    /// The priorities of `book` are to be handed to the core again (one changed, or the
    /// configuration did: the core knows a new member at priority 0).
    priorities_dirty: bool,
    /// What this node asks the leader about itself (promotion, its priority).
    duties: Duties,
    /// `[membership]` of node.toml.
    membership_cfg: crate::config::MembershipConfig,
    tick: Duration,
    snapshots: Snapshots,
    /// The durable store: batches are queued here and flushed by the fsync thread.
    log: FileLog,
    /// The read thread's queue (fetches and snapshot chunks).
    disk_reads: std::sync::mpsc::Sender<ReadJob>,
    /// Bytes of entries one fetch reads back at most (what the memory log keeps of them).
    fetch_bytes: usize,
    /// The newest `Output::Persist` token queued and not yet handed to the fsync thread.
    want_sync: Option<SyncToken>,
    /// The token of the flush the fsync thread is running.
    syncing: Option<SyncToken>,
    /// The incarnations of the members this node has talked to ([`crate::hello`]).
    incarnations: Arc<Incarnations>,
    /// A command entry being built (its kind byte, then the command).
    entry: Vec<u8>,
    /// How long a leader asked to stop waits for its hand-over at most: two election
    /// timeouts (the core abandons a transfer whose target did not campaign after one; a
    /// campaign under way may take a while on a loaded machine, and waiting for it lets
    /// this node send what it holds to the new leader).
    handover_limit: Duration,
    /// Proposals that came during a leadership transfer, answered when it ends.
    held: Held<(Pending<S>, bool)>,
    /// Each held proposal forwarded to the new leader holds a clone until it is answered:
    /// a node shutting down waits for them all ([`Runtime::await_relays`]) before it closes
    /// its connections.
    relays: Option<Sender<()>>,
    relays_done: Receiver<()>,
    /// A leadership transfer was under way when the current batch of inputs began. The
    /// step-down that ends it keeps the pending writes: their entries are all on the target
    /// (it got TimeoutNow only then), which commits them as the new leader, and this node
    /// answers them as it applies them (or as lost, if another entry takes their place).
    transferring: bool,
    watch: Watchers,
    /// The figures of `[metrics]` (recording nothing without it).
    metrics: Metrics,
    /// The watchdog on the running flush (a disk that hangs).
    stall: StallWatch,
}

/// When the host snapshots its state machine (`[storage]` of `node.toml`).
struct Snapshots {
    /// Snapshot after this many entries applied since the last one (0: only when full).
    every: u64,
    /// Index of the last snapshot saved or restored.
    last: Index,
    /// Index of the last snapshot that could not be saved (the next try waits until the
    /// next one is due, or the log is full again).
    failed: Index,
    /// The log is full: snapshot (and compact all it covers) as soon as possible.
    wanted: bool,
    /// The state machine wants turns of the loop to produce its snapshot
    /// ([`StateMachine::snapshot_step`]).
    stepping: bool,
    /// The snapshot whose file a thread is writing (one at a time).
    writing: Option<Index>,
    /// When the snapshot being built or sealed began.
    began: Option<Instant>,
    /// Where that thread reports.
    written: Sender<SnapshotWritten>,
    /// Callers of [`Handle::snapshot`]: each waits for a kept snapshot at this index or
    /// later (the index applied when it asked).
    waiters: Vec<(Index, Done<Result<Index, SnapshotRequestError>>)>,
}

/// The applied index at which node `id` snapshots next after a snapshot at `last`, every
/// `every` entries: on a grid of `every` entries shifted by a third of it per node (by id),
/// at least half of `every` after `last`. The nodes of a cluster then snapshot at
/// different times: all three at once oversubscribe the CPU and the disk, while a commit
/// needs only two of them (at 64 clients, p99.9 27-31 ms with the nodes together, 19-20 ms
/// staggered).
fn next_snapshot(last: Index, every: u64, id: NodeId) -> Index {
    let every = every.max(1);
    let phase = every / 3 * (id % 3);
    let earliest = last.saturating_add((every / 2).max(1));
    earliest.saturating_add((phase + every - earliest % every) % every)
}

/// Loads the node's certificates and checks that its certificate is node `cfg.id`'s.
pub(crate) fn node_credentials(cfg: &NodeConfig) -> Result<Credentials, NodeError> {
    let creds =
        Credentials::load(&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key).map_err(NodeError::Tls)?;
    match creds.identity().map_err(NodeError::Tls)? {
        Identity::Node(id) if id == cfg.id => Ok(creds),
        other => Err(NodeError::WrongCertificate {
            id: cfg.id,
            found: other.to_string(),
        }),
    }
}

/// Opens the node's log: refuses a data directory whose durable state is incomplete (the
/// log's own checks, and what rebuilding the state machine needs), and logs at WARN what
/// recovery dropped or repaired, with the entries concerned.
fn open_log(cfg: &NodeConfig) -> Result<FileLog, NodeError> {
    let log =
        FileLog::open_with(&cfg.data_dir, cfg.log_options()).map_err(|e| durable_state(cfg, e))?;
    log.check_complete().map_err(|e| durable_state(cfg, e))?;
    let r = log.recovery();
    if r.initialised {
        info!(node = cfg.id, data = %cfg.data_dir.display(), incarnation = %format_args!("{:016x}", log.identity().incarnation), "new data directory");
    } else if r.adopted {
        warn!(node = cfg.id, data = %cfg.data_dir.display(), "data directory from before identity files: adopted (identity written)");
    }
    for w in r.warnings() {
        warn!(node = cfg.id, "recovery: {w}");
    }
    let hs = log.hard_state();
    info!(
        node = cfg.id,
        term = hs.current_term,
        voted_for = ?hs.voted_for,
        first = log.first_index(),
        last = log.last_index(),
        snapshot = ?log.snapshot_point(),
        "log recovered"
    );
    Ok(log)
}

/// The error of a data directory that cannot be used, with this node's id and address for
/// the repair commands when it is damaged (where the peers reach it: `listen` may be
/// `0.0.0.0`).
fn durable_state(cfg: &NodeConfig, e: FileLogError) -> NodeError {
    match e {
        FileLogError::Damaged { .. } | FileLogError::Corrupt { .. } => NodeError::DurableState {
            id: cfg.id,
            addr: cfg.advertised().unwrap_or(cfg.listen),
            source: e,
        },
        e => NodeError::Storage(e),
    }
}

/// The members of a configuration entry's data (for each member, its id and a flag byte:
/// the core's encoding, see `coracle::membership`).
fn config_members(data: &[u8]) -> Vec<NodeId> {
    data.chunks_exact(9)
        .map(|r| {
            let mut id = [0u8; 8];
            id.copy_from_slice(&r[..8]);
            NodeId::from_le_bytes(id)
        })
        .collect()
}

/// What a snapshot thread reports: the index of the snapshot sealed in its file, or why
/// not.
/// What a snapshot thread reports: the index and size (bytes) of the snapshot sealed in its
/// file, or why not.
type SnapshotWritten = Result<(Index, u64), FileLogError>;

/// What the read thread reports for a fetch.
type Fetched = Result<Vec<OwnedEntry>, FileLogError>;

enum Wake<S: StateMachine> {
    In(Inbound),
    Call(Call<S>),
    Durable(Box<FlushDone>),
    Snapshot(SnapshotWritten),
    Fetched(Fetched),
    /// The timer fired (maybe before the node's deadline, which may have moved).
    Fired,
    /// A turn given to the transport while a snapshot is written out.
    Yielded,
    Closed,
}

/// The channels the event loop waits on.
struct Wakers<S: StateMachine> {
    inbound: Receiver<Inbound>,
    calls: Receiver<Call<S>>,
    durable: Receiver<FlushDone>,
    snapshots: Receiver<SnapshotWritten>,
    fetched: Receiver<Fetched>,
}

/// The node's fsync thread: runs each [`FlushJob`] it is given and reports what it did.
fn spawn_fsync_thread(
    id: NodeId,
    done: Sender<FlushDone>,
    gate: FlushGate,
) -> std::io::Result<std::sync::mpsc::Sender<FlushJob>> {
    let (tx, rx) = std::sync::mpsc::channel::<FlushJob>();
    std::thread::Builder::new()
        .name(format!("coracle-fsync-{id}"))
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                gate.pass();
                if done.send_blocking(job.run()).is_err() {
                    return;
                }
            }
        })?;
    Ok(tx)
}

/// A read for the read thread.
enum ReadJob {
    /// Entries `from..=to` for `Node::fetched`, at most `max_bytes` of them.
    Fetch {
        from: Index,
        to: Index,
        max_bytes: usize,
    },
    /// A chunk of the kept snapshot for `to`: `message` without its bytes.
    Chunk {
        to: NodeId,
        message: ChunkHeader,
        max_len: usize,
    },
}

/// An InstallSnapshot but for its bytes, owned (it crosses to the read thread).
struct ChunkHeader {
    term: Term,
    last_included_index: Index,
    last_included_term: Term,
    offset: u64,
    config: Vec<u8>,
}

impl ChunkHeader {
    fn of(m: &InstallSnapshot<'_>) -> ChunkHeader {
        ChunkHeader {
            term: m.term,
            last_included_index: m.last_included_index,
            last_included_term: m.last_included_term,
            offset: m.offset,
            config: m.config.to_vec(),
        }
    }
}

/// The node's read thread: reads entries back for the node (reported on `fetched`) and
/// chunks of the kept snapshot, which it sends to the follower itself, in the order asked
/// (a follower takes chunks in order). The file of the snapshot being sent stays open
/// between chunks.
fn spawn_read_thread(
    id: NodeId,
    cluster: u64,
    reader: LogReader,
    transport: Arc<Transport>,
    fetched: Sender<Fetched>,
) -> std::io::Result<std::sync::mpsc::Sender<ReadJob>> {
    let (tx, rx) = std::sync::mpsc::channel::<ReadJob>();
    std::thread::Builder::new()
        .name(format!("coracle-read-{id}"))
        .spawn(move || {
            let mut open: Option<SnapshotFile> = None;
            while let Ok(job) = rx.recv() {
                match job {
                    ReadJob::Fetch {
                        from,
                        to,
                        max_bytes,
                    } => {
                        if fetched
                            .send_blocking(reader.entries(from, to, max_bytes))
                            .is_err()
                        {
                            return;
                        }
                    }
                    ReadJob::Chunk {
                        to,
                        message,
                        max_len,
                    } => {
                        let index = message.last_included_index;
                        if open.as_ref().is_none_or(|f| f.point().0 != index) {
                            open = match reader.snapshot(index) {
                                Ok(f) => f,
                                Err(e) => {
                                    warn!(node = id, index, error = %e, "cannot read the snapshot to send");
                                    None
                                }
                            };
                        }
                        // The snapshot was replaced meanwhile: the node starts over with
                        // the new one.
                        let Some(file) = &open else { continue };
                        let (data, done) = match file.chunk(message.offset, max_len) {
                            Ok(Some(c)) => c,
                            Ok(None) => continue,
                            Err(e) => {
                                warn!(node = id, index, error = %e, "cannot read a snapshot chunk");
                                open = None;
                                continue;
                            }
                        };
                        let chunk = Message::InstallSnapshot(InstallSnapshot {
                            term: message.term,
                            last_included_index: index,
                            last_included_term: message.last_included_term,
                            offset: message.offset,
                            done,
                            config: &message.config,
                            data: &data,
                        });
                        let class = Class::of(&chunk);
                        match encode_frame(&Envelope::new(cluster, id, to, chunk)) {
                            Ok(frame) => transport.send(to, class, frame),
                            Err(e) => warn!(node = id, to, error = %e, "cannot encode"),
                        }
                    }
                }
            }
        })?;
    Ok(tx)
}

/// The metadata [`Node::snapshot_taken`](coracle::Node::snapshot_taken) gives a snapshot at
/// `index`, as the core builds it: the term there and the configuration in force there
/// (the newest membership entry at or before it, else the kept snapshot's). The snapshot's
/// file is written with it before the node is told; the store fixes the file should the
/// node say otherwise.
fn snapshot_meta_at(log: &CachedLog, index: Index) -> Option<SnapshotMeta> {
    let term = log.term(index)?;
    let first = log.first_index();
    let mut i = index;
    while i >= first && i > 0 {
        if let Some(e) = log.entry(i).filter(|e| e.kind == EntryKind::Membership) {
            return SnapshotMeta::new(index, term, e.data);
        }
        i -= 1;
    }
    let config = log
        .snapshot_meta()
        .map(|m| m.config().to_vec())
        .unwrap_or_default();
    SnapshotMeta::new(index, term, &config)
}

/// The thread that writes a snapshot's file: the host's part (`head`), then what the state
/// machine's view writes, then seals it. A view that fails gives the snapshot up (its file
/// goes).
fn spawn_snapshot_writer<V: SnapshotSource>(
    id: NodeId,
    mut writer: SnapshotWriter,
    head: Vec<u8>,
    mut view: V,
    done: Sender<SnapshotWritten>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("coracle-snapshot-{id}"))
        .spawn(move || {
            let index = writer.meta().index;
            let written = std::io::Write::write_all(&mut writer, &head)
                .and_then(|()| view.write_to(&mut writer));
            let result = match written {
                Ok(()) => {
                    let bytes = writer.size();
                    FileLog::finish_snapshot(writer).map(|()| (index, bytes))
                }
                Err(e) => Err(FileLogError::BadSnapshot(format!(
                    "cannot write the snapshot at index {index}: {e}"
                ))),
            };
            let _ = done.send_blocking(result);
        })?;
    Ok(())
}

/// The message of a panic caught around the state machine.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => format!("panicked: {s}"),
        (_, Some(s)) => format!("panicked: {s}"),
        _ => "panicked".into(),
    }
}

/// Decodes a peer's frame, once, and steps it (kept out of the async state: the decoded
/// entries live on the stack only here). A malformed frame is dropped (and counted) by the
/// transport.
fn step_frame(node: &mut CoreNode, transport: &Transport, frame: &PeerFrame) {
    if let Some(d) = transport.open(frame) {
        node.step(frame.from, d.message());
    }
}

impl<S: StateMachine> Runtime<S> {
    async fn run(
        mut self,
        mut node: Box<CoreNode>,
        wakers: Wakers<S>,
        fsync: std::sync::mpsc::Sender<FlushJob>,
    ) -> Result<(), NodeError> {
        let Wakers {
            inbound,
            calls,
            durable,
            snapshots,
            fetched,
        } = wakers;
        let start = Instant::now();
        let mut ticks: u64 = 0;
        let tick_nanos = (self.tick.as_nanos().max(1)).min(u64::MAX as u128) as u64;
        if let Err(e) = self.settle(&mut node, &fsync) {
            return Err(self.stop_on_error(e, &calls).await);
        }
        let mut shutdown = false;
        // A leader asked to stop hands leadership over first, until this instant at most.
        let mut handing_over: Option<Instant> = None;
        // One timer, re-armed only when the deadline comes sooner than the one it is set
        // for (or it fired): each arming wakes the reactor with a syscall, and a follower's
        // deadline moves later with every message from the leader. Firing early costs one
        // turn of the loop.
        let mut timer = self.transport.runtime().timer_never();
        let mut armed: Option<Instant> = None;
        while !shutdown {
            let wait = node.ticks_until_deadline().clamp(1, 1000);
            let building = self.snapshots.stepping;
            let mut deadline =
                start + Duration::from_nanos(tick_nanos.saturating_mul(ticks + wait));
            if let Some(stall) = self.stall.deadline(&node) {
                deadline = deadline.min(stall);
            }
            if let Some(held) = self.held.deadline() {
                deadline = deadline.min(held);
            }
            if armed.is_none_or(|a| deadline < a) {
                timer.set_at(deadline);
                armed = Some(deadline);
            }
            let wake = async {
                match inbound.recv().await {
                    Ok(m) => Wake::In(m),
                    Err(_) => Wake::Closed,
                }
            }
            .or(async {
                match calls.recv().await {
                    Ok(c) => Wake::Call(c),
                    Err(_) => Wake::Closed,
                }
            })
            .or(async {
                match durable.recv().await {
                    Ok(r) => Wake::Durable(Box::new(r)),
                    Err(_) => Wake::Closed,
                }
            })
            .or(async {
                match snapshots.recv().await {
                    Ok(r) => Wake::Snapshot(r),
                    Err(_) => Wake::Closed,
                }
            })
            .or(async {
                match fetched.recv().await {
                    Ok(r) => Wake::Fetched(r),
                    Err(_) => Wake::Closed,
                }
            })
            .or(async {
                (&mut timer).await;
                Wake::Fired
            })
            .or(async {
                if building {
                    // The next pairs of the snapshot, once the transport had its turn.
                    smol::future::yield_now().await;
                    Wake::Yielded
                } else {
                    std::future::pending().await
                }
            })
            .await;
            let now = (start.elapsed().as_nanos() / u128::from(tick_nanos)) as u64;
            if now > ticks {
                node.advance(now - ticks);
                ticks = now;
            }
            let mut batch = vec![wake];
            for _ in 0..1024 {
                match inbound.try_recv() {
                    Ok(m) => batch.push(Wake::In(m)),
                    Err(_) => break,
                }
            }
            for _ in 0..1024 {
                match calls.try_recv() {
                    Ok(c) => batch.push(Wake::Call(c)),
                    Err(_) => break,
                }
            }
            self.transferring = node.transferring_to().is_some();
            for wake in batch {
                match wake {
                    Wake::In(Inbound::Message(frame)) => {
                        step_frame(&mut node, &self.transport, &frame)
                    }
                    Wake::In(Inbound::Unreachable(peer)) => node.report_unreachable(peer),
                    Wake::In(Inbound::Forward(request)) => self.on_forwarded(&mut node, request),
                    Wake::Call(Call::Ops(ops)) => {
                        for op in ops {
                            self.on_op(&mut node, op);
                        }
                    }
                    Wake::Durable(done) => {
                        let token = self.syncing.take();
                        if let Some(took) = self.stall.ended(&mut node) {
                            self.metrics.flush_ended(took);
                        }
                        if let Err(e) = self.log.end_flush(*done) {
                            node.persist_failed();
                            error!(node = self.id, error = %e, "log sync failed; stopping");
                            return Err(self.stop_on_error(NodeError::Sync(e), &calls).await);
                        }
                        if let Some(token) = token {
                            node.persisted(token);
                        }
                        self.answer_snapshot_waiters();
                    }
                    Wake::Snapshot(result) => {
                        if let Err(e) = self.snapshot_written(&mut node, result) {
                            return Err(self.stop_on_error(e, &calls).await);
                        }
                    }
                    Wake::Fetched(Ok(entries)) => {
                        node.fetched(entries.iter().map(OwnedEntry::as_entry));
                    }
                    Wake::Fetched(Err(e)) => {
                        warn!(node = self.id, error = %e, "cannot read entries back from the log");
                        node.fetch_failed();
                    }
                    Wake::Call(Call::Shutdown) if handing_over.is_none() => {
                        match self.hand_over(&mut node) {
                            true => handing_over = Some(Instant::now() + self.handover_limit),
                            false => shutdown = true,
                        }
                    }
                    Wake::Call(Call::Shutdown) => {}
                    Wake::Closed => shutdown = true,
                    Wake::Fired => armed = None,
                    Wake::Yielded => {}
                }
            }
            self.stall.check(&mut node);
            self.run_duties(&mut node);
            self.release_held(&mut node, false);
            // One drain for everything that arrived together: the core computes its
            // outputs when they are polled, so draining once per batch rather than once
            // per input loses nothing, and the writes of the batch share one fsync.
            if let Err(e) = self.settle(&mut node, &fsync) {
                return Err(self.stop_on_error(e, &calls).await);
            }
            self.metrics.observe(&node, &self.log, false);
            if !self.watch.to.is_empty() {
                self.publish(&node);
            }
            if let Some(limit) = handing_over {
                // Handed over once this node follows the new leader (stepping down alone
                // is not enough: its vote may not have left yet, and the target may lose),
                // and the writes it proposed are answered (the new leader commits them).
                let handed_over = node.role() != Role::Leader
                    && node.leader().is_some_and(|leader| leader != self.id)
                    && !self
                        .writes
                        .values()
                        .any(|(_, p)| matches!(p, Pending::Command(_)));
                // The core gave up the transfer (an election timeout without the target
                // taking over; on a loaded machine its campaign may still be under way):
                // this node leads on, and tries again while time is left.
                let abandoned = node.role() == Role::Leader && node.transferring_to().is_none();
                let over = handed_over || Instant::now() >= limit;
                if !over && abandoned {
                    match self.hand_over(&mut node) {
                        true => {
                            if let Err(e) = self.settle(&mut node, &fsync) {
                                return Err(self.stop_on_error(e, &calls).await);
                            }
                        }
                        false => shutdown = true,
                    }
                }
                if over {
                    info!(node = self.id, handed_over, "leadership hand-over ended");
                    shutdown = true;
                }
            }
        }
        info!(node = self.id, "shutting down");
        // Once leadership is handed over, what comes from now on goes to the new leader.
        let why = match node.leader().filter(|&l| l != self.id) {
            Some(leader) if handing_over.is_some() => Gone::HandedOver {
                leader,
                address: self.addrs.get(&leader).cloned(),
            },
            _ => Gone::ShuttingDown,
        };
        let answered = Instant::now();
        let mut answers = self.release_held(&mut node, true);
        answers += self.writes.len() + self.reads.len();
        self.fail_pending(&Gone::ShuttingDown);
        let disk_stalled = self.last_flush(&durable, &fsync).await?;
        let answered = match self.await_relays().await {
            true => Instant::now(),
            false => answered,
        };
        if answers > 0 || handing_over.is_some() {
            // Closing a QUIC connection drops what its streams have not sent yet: the
            // answers just given (above all the redirects to the new leader, given as the
            // hand-over ended) leave first; requests that come meanwhile are answered
            // (proposals with the new leader).
            let until = answered + ANSWERS_LEAVE;
            let runtime = self.transport.runtime().clone();
            while let Ok(call) = calls
                .recv()
                .or(async {
                    runtime.timer_at(until).await;
                    Err(channel::RecvError)
                })
                .await
            {
                fail_call(call, &why);
            }
        }
        calls.close();
        while let Ok(call) = calls.try_recv() {
            fail_call(call, &why);
        }
        self.transport.close();
        self.transport.wait_idle(Duration::from_millis(500)).await;
        match disk_stalled {
            Some(waited) => {
                error!(
                    node = self.id,
                    waited_ms = waited.as_millis() as u64,
                    "shut down without the last flush: the disk hangs"
                );
                Err(NodeError::DiskStalled { waited })
            }
            None => Ok(()),
        }
    }

    /// At shutdown: waits for the flush running, then flushes what is still queued, on the
    /// fsync thread, for `storage.stall_timeout_ms` in all at most (a disk that hangs must
    /// not hang the shutdown with it). The time waited in vain, if the disk hung.
    async fn last_flush(
        &mut self,
        durable: &Receiver<FlushDone>,
        fsync: &std::sync::mpsc::Sender<FlushJob>,
    ) -> Result<Option<Duration>, NodeError> {
        let started = Instant::now();
        let until = started + self.stall.timeout();
        let mut running = self.syncing.take().is_some();
        loop {
            if running {
                let runtime = self.transport.runtime().clone();
                let done = async { durable.recv().await.ok() }
                    .or(async {
                        runtime.timer_at(until).await;
                        None
                    })
                    .await;
                let Some(done) = done else {
                    if durable.is_closed() {
                        return Err(NodeError::Sync(std::io::Error::other(
                            "the fsync thread is gone",
                        )));
                    }
                    return Ok(Some(started.elapsed()));
                };
                self.log.end_flush(done).map_err(NodeError::Sync)?;
            }
            let Some(job) = self.log.begin_flush().map_err(NodeError::Sync)? else {
                return Ok(None);
            };
            fsync
                .send(job)
                .map_err(|_| NodeError::Sync(std::io::Error::other("the fsync thread is gone")))?;
            running = true;
        }
    }

    /// Waits until every held proposal forwarded to the new leader is answered (an
    /// election timeout at most); true if there was any.
    async fn await_relays(&mut self) -> bool {
        drop(self.relays.take());
        if self.relays_done.sender_count() == 0 {
            return false;
        }
        let limit = self.handover_limit;
        let runtime = self.transport.runtime().clone();
        let _ = self
            .relays_done
            .recv()
            .or(async {
                runtime.sleep(limit).await;
                Ok(())
            })
            .await;
        true
    }

    /// The node stops on `e` (a failed fsync, a snapshot that cannot be restored, a state
    /// machine that failed): every pending proposal and read is answered with the error,
    /// so clients learn why (say, "the disk is full") rather than time out, and the
    /// answers get a moment to leave before the connections close.
    async fn stop_on_error(&mut self, e: NodeError, calls: &Receiver<Call<S>>) -> NodeError {
        error!(node = self.id, error = %e, "node stopped");
        let why = Gone::Stopped(e.to_string());
        calls.close();
        self.fail_pending(&why);
        while let Ok(call) = calls.try_recv() {
            if let Call::Ops(ops) = call {
                for op in ops {
                    op.fail(&why);
                }
            }
        }
        self.watch.to.clear();
        self.transport
            .runtime()
            .sleep(Duration::from_millis(200))
            .await;
        self.transport.close();
        self.transport.wait_idle(Duration::from_millis(300)).await;
        e
    }

    /// A leader asked to stop hands leadership to the most caught-up voter it is connected
    /// to (the core sends it TimeoutNow once it holds the whole log), so the cluster has a
    /// leader again within a round trip or two instead of an election timeout. False when
    /// there is nothing to hand over (not the leader, no other voter reachable).
    fn hand_over(&mut self, node: &mut CoreNode) -> bool {
        if node.role() != Role::Leader {
            return false;
        }
        let voters: Vec<NodeId> = node
            .members()
            .filter(|m| m.voter && m.id != self.id && self.transport.connected(m.id))
            .map(|m| m.id)
            .collect();
        let Some(target) = voters
            .into_iter()
            .max_by_key(|&id| node.progress(id).map_or(0, |p| p.match_index))
        else {
            return false;
        };
        match node.transfer_leadership(target) {
            Ok(()) => {
                info!(
                    node = self.id,
                    to = target,
                    "shutting down: leadership handed over first"
                );
                true
            }
            Err(e) => {
                warn!(node = self.id, to = target, error = %e, "cannot hand leadership over");
                false
            }
        }
    }

    /// Answers every pending proposal and read with `why`.
    fn fail_pending(&mut self, why: &Gone) {
        for (_, (_, pending)) in self.writes.drain() {
            match pending {
                Pending::Command(done) => done(Err(why.propose_error())),
                Pending::Membership(done) => done(Err(why.membership_error())),
                Pending::Record => {}
            }
        }
        for (_, run) in self.reads.drain() {
            run(Err(why.read_error()));
        }
        for (_, done) in self.snapshots.waiters.drain(..) {
            done(Err(why.snapshot_error()));
        }
    }

    /// Drains the node's outputs and starts making the writes durable (group commit): if
    /// no fsync is running, everything buffered is written and handed to the fsync thread;
    /// if nothing was left to write, every write is durable already and the node is told
    /// so at once (then drained again).
    ///
    /// The fsync starts before the entries committed meanwhile are applied (the core hands
    /// out messages first, then entries to apply; [`drain`](Self::drain) stops at the
    /// first of those for it): on a follower, whose answer waits for the fsync, applying
    /// a batch first would delay every answer by the time it takes.
    fn settle(
        &mut self,
        node: &mut CoreNode,
        fsync: &std::sync::mpsc::Sender<FlushJob>,
    ) -> Result<(), NodeError> {
        loop {
            let drained = self.drain(node)?;
            if self.syncing.is_none() {
                if let Some(token) = self.want_sync.take() {
                    let job = self.log.begin_flush().map_err(|e| {
                        node.persist_failed();
                        error!(node = self.id, error = %e, "log write failed; stopping");
                        NodeError::Sync(e)
                    })?;
                    match job {
                        Some(job) => {
                            fsync.send(job).map_err(|_| {
                                NodeError::Sync(std::io::Error::other("the fsync thread is gone"))
                            })?;
                            self.syncing = Some(token);
                            self.stall.began();
                            self.metrics.flush_began();
                        }
                        None => {
                            node.persisted(token);
                            continue;
                        }
                    }
                }
            }
            if drained {
                return Ok(());
            }
        }
    }

    /// Drains the node's outputs; queues the writes and remembers the newest token. Stops early
    /// (false) after the first entry applied while a sync is wanted and none runs, so the
    /// caller starts it before the rest are applied.
    fn drain(&mut self, node: &mut CoreNode) -> Result<bool, NodeError> {
        let mut membership = false;
        // The configuration applied last in this drain (index and members).
        let mut applied_config: Option<(Index, Vec<NodeId>)> = None;
        let mut drained = true;
        while let Some(out) = node.poll_output() {
            match out {
                Output::Persist(batch) => {
                    let writes = batch.batch();
                    self.log.persist(&writes);
                    self.metrics.batch_queued(writes.entries.len());
                    self.want_sync = Some(batch.token);
                }
                Output::Fetch { from, to } => {
                    let job = ReadJob::Fetch {
                        from,
                        to,
                        max_bytes: self.fetch_bytes,
                    };
                    if self.disk_reads.send(job).is_err() {
                        node.fetch_failed();
                    }
                }
                Output::SendSnapshot {
                    to,
                    message,
                    max_len,
                } => {
                    let _ = self.disk_reads.send(ReadJob::Chunk {
                        to,
                        message: ChunkHeader::of(&message),
                        max_len,
                    });
                }
                Output::Send { to, message } => {
                    let class = Class::of(&message);
                    match encode_frame(&Envelope::new(self.cluster, self.id, to, message)) {
                        Ok(frame) => self.transport.send(to, class, frame),
                        Err(e) => warn!(node = self.id, to, error = %e, "cannot encode"),
                    }
                }
                Output::Apply(entry) => {
                    let (index, term) = (entry.index, entry.term);
                    let applied = match entry.kind {
                        EntryKind::Command => {
                            let started = self.metrics.apply_started();
                            let applied = self.apply_command(index, entry.data)?;
                            self.metrics.applied(started);
                            applied
                        }
                        EntryKind::Membership => {
                            membership = true;
                            applied_config = Some((index, config_members(entry.data)));
                            Applied::Nothing
                        }
                        _ => Applied::Nothing,
                    };
                    self.applied = index;
                    self.answer_proposer(index, term, applied);
                    if self.want_sync.is_some() && self.syncing.is_none() {
                        drained = false;
                        break;
                    }
                }
                Output::ReadReady { id, .. } => {
                    if let Some(run) = self.reads.remove(&id) {
                        self.metrics.read(ReadOutcome::Served);
                        run(Ok(&self.sm));
                    }
                }
                Output::ReadFailed { id } => {
                    if let Some(run) = self.reads.remove(&id) {
                        self.metrics.read(ReadOutcome::Failed);
                        run(Err(ReadError::NotConfirmed));
                    }
                }
                Output::StateChanged(s) => {
                    info!(node = self.id, role = ?s.role, term = s.term, leader = ?s.leader, "state changed");
                    if self
                        .forwarded
                        .as_ref()
                        .is_some_and(|f| s.leader != Some(f.0))
                    {
                        self.forwarded = None; // answers the proposals forwarded to it
                    }
                    if s.role != Role::Leader && !self.transferring {
                        let mut lost = 0;
                        for (_, (_, pending)) in self.writes.drain() {
                            lost += matches!(pending, Pending::Command(_)) as usize;
                            pending.unknown("leadership changed; retry");
                        }
                        self.metrics.proposals(ProposalOutcome::Lost, lost);
                    }
                }
                Output::RestoreSnapshot { index, .. } => {
                    self.restore_snapshot(index)?;
                    self.metrics.snapshot_restored();
                    membership = true;
                    let config = node
                        .log()
                        .snapshot_meta()
                        .map(|m| config_members(m.config()))
                        .filter(|m| !m.is_empty());
                    if let Some(members) = config {
                        applied_config = Some((index, members));
                    }
                }
                Output::SnapshotNeeded => {
                    warn!(node = self.id, "the log is full: snapshot and compact");
                    self.snapshots.wanted = true;
                }
            }
        }
        if membership {
            let ids: Vec<NodeId> = node.members().map(|m| m.id).collect();
            self.transport.keep_links(&ids);
            for id in ids {
                self.transport.ensure_link(id);
            }
        }
        if membership || self.priorities_dirty {
            self.priorities_dirty = false;
            for (&id, &priority) in &self.book.priorities {
                node.set_priority(id, priority);
            }
        }
        self.incarnations.set_applied(node.applied_index());
        if let Some((index, members)) = applied_config {
            self.forget_removed(index, &members);
        }
        if drained {
            self.maybe_snapshot(node)?;
        }
        Ok(drained)
    }

    /// A configuration of `members` was applied at `index`: the members it lacks are
    /// forgotten by the hello ([`crate::hello`]), so one removed and added back with a new
    /// data directory is taken. (A file rewrite on this thread: configurations are rare.)
    fn forget_removed(&mut self, index: Index, members: &[NodeId]) {
        match self.incarnations.forget_absent(members, index) {
            Ok(gone) if !gone.is_empty() => info!(
                node = self.id,
                index,
                ?gone,
                "removed members forgotten: a new data directory of theirs will be taken"
            ),
            Ok(_) => {}
            Err(e) => warn!(node = self.id, error = %e, "cannot forget removed members"),
        }
    }

    /// Snapshots the state machine if it is due (every `snapshot_entries` applied entries,
    /// or the log is full): the state machine gives a point-in-time view
    /// ([`StateMachine::snapshot`]) that a thread of its own writes to the snapshot's file
    /// and seals, while the loop goes on (and gives the state machine a
    /// [`snapshot_step`](StateMachine::snapshot_step) per turn while it asks for them).
    /// [`snapshot_written`](Self::snapshot_written) takes it from there.
    ///
    /// Replacing the kept snapshot while a leader sends it to a follower is safe: the core
    /// restarts every transfer from offset 0 with the new snapshot, so a follower never gets
    /// chunks of two snapshots. (Waiting for transfers to end instead would stop
    /// compaction for as long as a follower that needs a snapshot stays down.)
    fn maybe_snapshot(&mut self, node: &mut CoreNode) -> Result<(), NodeError> {
        if self.snapshots.stepping {
            self.snapshots.stepping = self.sm.snapshot_step();
            return Ok(());
        }
        if !self.snapshots.wanted && self.log.check_room(EntryKind::Command, 0).is_err() {
            // The log is at its quota (a leader refuses commands now; a follower's log
            // follows the leader's): a snapshot compacts it.
            warn!(node = self.id, "the log is full: snapshot and compact");
            self.snapshots.wanted = true;
        }
        let s = &self.snapshots;
        let index = node.applied_index();
        let due = s.every > 0 && index >= next_snapshot(s.last.max(s.failed), s.every, self.id);
        let asked = s.waiters.iter().any(|&(at_least, _)| at_least > s.last);
        if s.writing.is_some() || (!due && !s.wanted && !asked) || index <= s.last {
            return Ok(());
        }
        if self.applied != index {
            warn!(
                node = self.id,
                index,
                state_machine = self.applied,
                "state machine behind; no snapshot"
            );
            return Ok(());
        }
        let Some(meta) = snapshot_meta_at(node.log(), index) else {
            warn!(
                node = self.id,
                index, "no snapshot metadata at the applied index"
            );
            self.fail_snapshot_waiters("no snapshot metadata at the applied index");
            return Ok(());
        };
        let writer = match self.log.snapshot_writer(&meta) {
            Ok(w) => w,
            Err(e) => return self.snapshot_failed(index, e),
        };
        let view = match self.sm.snapshot(index) {
            Ok(view) => view,
            Err(e) => return self.snapshot_failed(index, FileLogError::BadSnapshot(e.to_string())),
        };
        let head = entry::snapshot_head(&self.book);
        spawn_snapshot_writer(self.id, writer, head, view, self.snapshots.written.clone())
            .map_err(|e| NodeError::Snapshot(format!("cannot start the snapshot thread: {e}")))?;
        self.snapshots.writing = Some(index);
        self.snapshots.began = Some(Instant::now());
        self.snapshots.stepping = self.sm.snapshot_step();
        Ok(())
    }

    /// A snapshot's file is sealed (or failed): the node keeps it
    /// ([`Node::snapshot_taken`](coracle::Node::snapshot_taken)), which makes it the kept
    /// snapshot in the next batch and compacts the log behind it, keeping
    /// `snapshot_keep_entries`.
    fn snapshot_written(
        &mut self,
        node: &mut CoreNode,
        result: SnapshotWritten,
    ) -> Result<(), NodeError> {
        self.snapshots.writing = None;
        self.snapshots.stepping = false;
        let began = self.snapshots.began.take();
        let (index, bytes) = match result {
            Ok(saved) => saved,
            Err(e) => return self.snapshot_failed(node.applied_index(), e),
        };
        match node.snapshot_taken(index) {
            Ok(meta) => {
                info!(
                    node = self.id,
                    index,
                    term = meta.term,
                    bytes,
                    "snapshot saved"
                );
                if let Some(began) = began {
                    self.metrics.snapshot_saved(bytes, began.elapsed());
                }
                self.snapshots.last = self.snapshots.last.max(index);
                self.snapshots.wanted = false;
            }
            Err(e) => {
                info!(node = self.id, index, error = %e, "snapshot dropped");
                self.log.discard_snapshot(index);
                // Replaced by a newer one (installed from the leader): the waiters get it
                // once it is durable; the others are told.
                let newer = node.log().snapshot_meta().map_or(0, |m| m.index);
                self.fail_snapshot_waiters_above(newer, &format!("snapshot dropped: {e}"));
            }
        }
        Ok(())
    }

    /// A snapshot could not be saved: the node stops if the log is failed; otherwise it
    /// tries again when the next one is due (or the log reports itself full again). Nothing
    /// is compacted behind a snapshot that was not saved.
    fn snapshot_failed(&mut self, index: Index, e: FileLogError) -> Result<(), NodeError> {
        error!(node = self.id, index, error = %e, "cannot save a snapshot");
        self.snapshots.failed = index;
        self.snapshots.wanted = false;
        self.fail_snapshot_waiters(&e.to_string());
        if self.log.is_failed() {
            return Err(NodeError::Storage(e));
        }
        Ok(())
    }

    /// A caller of [`Handle::snapshot`]: answered at once if the kept snapshot holds every
    /// entry applied now, else once one does ([`maybe_snapshot`](Self::maybe_snapshot)
    /// takes it as soon as it can).
    fn snapshot_asked(&mut self, done: Done<Result<Index, SnapshotRequestError>>) {
        if self.applied == 0 {
            return done(Err(SnapshotRequestError::Empty));
        }
        self.snapshots.waiters.push((self.applied, done));
        self.answer_snapshot_waiters();
    }

    /// Answers the callers of [`Handle::snapshot`] that the kept (durable) snapshot
    /// satisfies.
    fn answer_snapshot_waiters(&mut self) {
        let kept = self.log.snapshot_point().map_or(0, |(index, _)| index);
        if self
            .snapshots
            .waiters
            .iter()
            .all(|&(at_least, _)| at_least > kept)
        {
            return;
        }
        let (ready, waiting) = std::mem::take(&mut self.snapshots.waiters)
            .into_iter()
            .partition(|&(at_least, _)| at_least <= kept);
        self.snapshots.waiters = waiting;
        for (_, done) in ready {
            done(Ok(kept));
        }
    }

    /// Tells every caller of [`Handle::snapshot`] still waiting that no snapshot came.
    fn fail_snapshot_waiters(&mut self, why: &str) {
        self.fail_snapshot_waiters_above(0, why);
    }

    /// The same, for those waiting for a snapshot later than `index`.
    fn fail_snapshot_waiters_above(&mut self, index: Index, why: &str) {
        let (failed, waiting) = std::mem::take(&mut self.snapshots.waiters)
            .into_iter()
            .partition(|&(at_least, _)| at_least > index);
        self.snapshots.waiters = waiting;
        for (_, done) in failed {
            done(Err(SnapshotRequestError::Failed(why.to_string())));
        }
    }

    /// Replaces the state machine with the snapshot the store keeps (installed from the
    /// leader, or found on disk at start), through `index`: read from its file a piece at
    /// a time (the host's part first, the addresses).
    fn restore_snapshot(&mut self, index: Index) -> Result<(), NodeError> {
        let mut file = SnapshotFile::open(self.log.dir(), index)
            .map_err(|e| NodeError::Snapshot(e.to_string()))?
            .ok_or_else(|| {
                NodeError::Snapshot(format!(
                    "restore to index {index} asked, but the snapshot kept is {:?}",
                    self.log.snapshot_point()
                ))
            })?;
        let book = entry::open_snapshot(&mut file)
            .map_err(|e| NodeError::Snapshot(format!("the snapshot at index {index}: {e}")))?;
        let restored = {
            let mut source = std::io::BufReader::with_capacity(256 << 10, &mut file);
            let sm = &mut self.sm;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sm.restore(index, &mut source)
            }))
        };
        match restored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(NodeError::Snapshot(format!(
                    "the state machine cannot restore the snapshot at index {index}: {e}"
                )))
            }
            Err(panic) => {
                return Err(NodeError::Snapshot(format!(
                    "the state machine {} restoring the snapshot at index {index}",
                    panic_message(panic.as_ref())
                )))
            }
        }
        for (id, addr) in &book.addresses {
            self.learn_address(*id, addr);
        }
        self.book = book;
        self.priorities_dirty = true;
        self.applied = index;
        self.snapshots.last = self.snapshots.last.max(index);
        // A snapshot being written of the state replaced is given up by the state machine
        // (its view fails) or sealed as it was: either way it is of an older index.
        self.snapshots.stepping = false;
        // Writes proposed here and covered by the snapshot: their outcome is in the state
        // machine (the KV store's session table, which a retry reads).
        let covered: Vec<Index> = self
            .writes
            .keys()
            .copied()
            .filter(|&i| i <= index)
            .collect();
        for i in covered {
            if let Some((_, pending)) = self.writes.remove(&i) {
                pending.unknown("the state machine was replaced by a snapshot; retry");
            }
        }
        info!(
            node = self.id,
            index, "state machine restored from a snapshot"
        );
        Ok(())
    }

    /// Node `id` listens at `addr` (a snapshot's or a record's): the transport dials it
    /// there.
    fn learn_address(&mut self, id: NodeId, addr: &str) {
        if let Ok(a) = addr.parse::<SocketAddr>() {
            self.transport.set_address(id, a);
        }
        self.addrs.insert(id, addr.to_owned());
    }

    /// Applies the command entry at `index`: the state machine's (an error or a panic
    /// stops the node), or the host's record.
    fn apply_command(
        &mut self,
        index: Index,
        data: &[u8],
    ) -> Result<Applied<S::Response>, NodeError> {
        let apply_error = |message: String| NodeError::Apply { index, message };
        match entry::split_entry(data).map_err(|source| NodeError::Entry { index, source })? {
            LoggedCommand::Command(command) => {
                let sm = &mut self.sm;
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    sm.apply(index, command)
                })) {
                    Ok(Ok(response)) => Ok(Applied::Response(response)),
                    Ok(Err(e)) => Err(apply_error(e.to_string())),
                    Err(panic) => Err(apply_error(panic_message(panic.as_ref()))),
                }
            }
            LoggedCommand::Host(HostRecord::Address { id, addr }) => {
                self.learn_address(id, &addr);
                self.book.addresses.insert(id, addr);
                Ok(Applied::Nothing)
            }
            LoggedCommand::Host(HostRecord::Priority { id, priority }) => {
                info!(
                    node = self.id,
                    member = id,
                    priority,
                    "election priority set"
                );
                self.book.priorities.insert(id, priority);
                self.priorities_dirty = true;
                Ok(Applied::Nothing)
            }
        }
    }

    /// Answers whoever proposed the entry applied at `index` (if it was proposed here, in
    /// `term`).
    fn answer_proposer(&mut self, index: Index, term: Term, applied: Applied<S::Response>) {
        let Some((pterm, pending)) = self.writes.remove(&index) else {
            return;
        };
        if matches!(pending, Pending::Command(_)) {
            let outcome = match pterm == term {
                true => ProposalOutcome::Committed,
                false => ProposalOutcome::Lost,
            };
            self.metrics.proposals(outcome, 1);
        }
        if pterm != term {
            pending.unknown("the write was lost to a new leader; retry");
            return;
        }
        match (pending, applied) {
            (Pending::Command(done), Applied::Response(r)) => done(Ok(r)),
            (Pending::Command(done), Applied::Nothing) => done(Err(ProposeError::OutcomeUnknown(
                "another entry took its place; retry".into(),
            ))),
            (Pending::Membership(done), _) => done(Ok(index)),
            (Pending::Record, _) => {}
        }
    }

    /// The leader this node knows of, as a proposal's error names it.
    fn leader_address(&self, leader: Option<NodeId>) -> (Option<NodeId>, Option<String>) {
        let leader = leader.filter(|&l| l != self.id);
        (leader, leader.and_then(|l| self.addrs.get(&l).cloned()))
    }

    fn on_op(&mut self, node: &mut CoreNode, op: Op<S>) {
        match op {
            Op::Propose { command, done } => {
                if let Some((leader, connection, codec)) = self.forward_to(node) {
                    let replaced = self.leader_replaced(leader);
                    let runtime = self.transport.runtime();
                    return forward::spawn::<S>(
                        leader, connection, command, codec, replaced, done, runtime,
                    );
                }
                entry::command_entry(&mut self.entry, &command);
                self.propose(node, Pending::Command(done), false);
            }
            Op::Read {
                mode: ReadMode::Stale,
                run,
            } => {
                self.metrics.read(ReadOutcome::Stale);
                run(Ok(&self.sm))
            }
            Op::Read { mode, run } => {
                let mode = match mode {
                    ReadMode::Lease => coracle::ReadMode::Lease,
                    _ => coracle::ReadMode::ReadIndex,
                };
                let id = self.next_read;
                self.next_read += 1;
                match node.read(id, mode) {
                    Ok(()) => {
                        self.reads.insert(id, run);
                    }
                    Err(e) => {
                        self.metrics.read(ReadOutcome::Refused);
                        run(Err(match e {
                            coracle::ReadError::NoLeader => ReadError::NoLeader,
                            coracle::ReadError::Busy => ReadError::Busy,
                        }))
                    }
                }
            }
            Op::Change { change, done } => self.change(node, change, done),
            Op::Transfer { to, done } => done(match node.transfer_leadership(to) {
                Ok(()) => Ok(()),
                Err(coracle::TransferError::NotLeader { leader }) => {
                    let (leader, address) = self.leader_address(leader);
                    Err(MembershipError::NotLeader { leader, address })
                }
                Err(e) => Err(MembershipError::Refused(e.to_string())),
            }),
            Op::Status { run } => run(self.status(node), &self.sm),
            Op::Snapshot { done } => self.snapshot_asked(done),
            Op::Isolate { peers, done } => {
                let ids: Vec<NodeId> = node.members().map(|m| m.id).chain(peers.clone()).collect();
                for id in ids.into_iter().filter(|&id| id != self.id) {
                    self.transport.set_isolated(id, peers.contains(&id));
                }
                warn!(
                    node = self.id,
                    ?peers,
                    "fault injection: isolated from these peers"
                );
                done(());
            }
            Op::Watch { to } => {
                let _ = to.force_send(self.status(node));
                self.watch.to.push(to);
            }
            Op::Join {
                members,
                limit,
                done,
            } => self.join(node, members, limit, done),
            Op::Member { request, done } => self.ask_leader(node, request, done),
            Op::SetPriority { id, priority, done } => self.set_priority(node, id, priority, done),
        }
    }

    /// Joins the cluster through `members` ([`join`]), unless this node is a member
    /// already (a restart: it joined before); turns on the promotion once caught up.
    fn join(
        &mut self,
        node: &CoreNode,
        members: Vec<SocketAddr>,
        limit: Duration,
        done: Done<Result<NodeId, JoinError>>,
    ) {
        if self.membership_cfg.auto_promote {
            self.duties.promote = Some(self.membership_cfg.caught_up_entries);
        }
        if node.members().any(|m| m.id == self.id) {
            info!(
                node = self.id,
                "a member already (joined before): not joining again"
            );
            return done(Ok(self.id));
        }
        let own = self.addrs.get(&self.id).cloned().unwrap_or_default();
        match own.parse::<SocketAddr>() {
            Ok(a) if crate::config::check_node_addr(a).is_ok() => {}
            _ => return done(Err(JoinError::NoOwnAddress(own))),
        }
        info!(node = self.id, ?members, addr = %own, "joining the cluster");
        let transport = self.transport.clone();
        let runtime = transport.runtime().clone();
        runtime
            .spawn_detached(async move { done(join::join(transport, own, members, limit).await) });
    }

    /// What this node asks the leader about itself, when due ([`Duties`]).
    fn run_duties(&mut self, node: &mut CoreNode) {
        // Every turn of the loop comes here: nothing to scan once the duties are done.
        if !self.duties.pending() {
            return;
        }
        let (learner, voter) = node
            .members()
            .find(|m| m.id == self.id)
            .map_or((false, false), |m| (m.learner, m.voter || m.voter_outgoing));
        let behind = node.commit_index().saturating_sub(self.applied);
        let replicated = self.book.priorities.get(&self.id).copied();
        let Some(request) = self.duties.due(learner, voter, behind, replicated) else {
            return;
        };
        info!(node = self.id, ?request, "asking the leader");
        let finished = self.duties.finished();
        let id = self.id;
        self.ask_leader(
            node,
            request.clone(),
            Box::new(move |result| {
                match result {
                    Ok(()) => info!(node = id, ?request, "done"),
                    Err(e) => info!(node = id, ?request, error = %e, "not done; will retry"),
                }
                finished();
            }),
        );
    }

    /// Asks the leader for `request` about this node (itself, if it leads).
    fn ask_leader(
        &mut self,
        node: &mut CoreNode,
        request: MemberRequest,
        done: Done<Result<(), MembershipError>>,
    ) {
        if node.role() == Role::Leader {
            return self.member_request(node, self.id, request, done);
        }
        let Some(leader) = node.leader().filter(|&l| l != self.id) else {
            return done(Err(MembershipError::Retry("no leader known; retry".into())));
        };
        let Some(conn) = self.transport.connection(leader) else {
            return done(Err(MembershipError::Retry(format!(
                "not connected to leader {leader}; retry"
            ))));
        };
        self.transport.runtime().spawn_detached(async move {
            done(forward::ask_member(leader, &conn, &request).await)
        });
    }

    /// Carries out what node `from` asks about itself (on the leader; others answer with
    /// the leader they know). Idempotent: what is done already is answered "done".
    fn member_request(
        &mut self,
        node: &mut CoreNode,
        from: NodeId,
        request: MemberRequest,
        done: Done<Result<(), MembershipError>>,
    ) {
        if node.role() != Role::Leader {
            let (leader, address) = self.leader_address(node.leader());
            return done(Err(MembershipError::NotLeader { leader, address }));
        }
        let member = node.members().find(|m| m.id == from);
        let then =
            |done: Done<Result<(), MembershipError>>| -> Done<Result<Index, MembershipError>> {
                Box::new(move |r| done(r.map(|_| ())))
            };
        let refused = |m: String| Err(MembershipError::Refused(m));
        match request {
            MemberRequest::Join(addr) => {
                let parsed = match addr.parse::<SocketAddr>() {
                    Ok(a) if crate::config::check_node_addr(a).is_ok() => a,
                    _ => {
                        return done(refused(format!(
                            "{addr:?} is no address the other nodes can dial"
                        )))
                    }
                };
                let known = self.addrs.get(&from).cloned();
                match member {
                    None => {
                        info!(node = self.id, joiner = from, addr = %parsed, "a node asks to join");
                        self.change(
                            node,
                            Change::AddLearner {
                                id: from,
                                addr: parsed,
                            },
                            then(done),
                        )
                    }
                    Some(_) if known.as_deref().and_then(|a| a.parse().ok()) == Some(parsed) => {
                        done(Ok(()))
                    }
                    Some(_) => done(refused(format!(
                        "node {from} is a member already, at {}; remove it first to move it",
                        known.as_deref().unwrap_or("an unknown address")
                    ))),
                }
            }
            MemberRequest::Promote => match member {
                None => done(refused(format!("node {from} is not a member"))),
                Some(m) if m.voter => done(Ok(())),
                Some(_) => self.change(node, Change::Promote(from), then(done)),
            },
            MemberRequest::Leave => match member {
                None => done(Ok(())),
                Some(_) => {
                    info!(node = self.id, member = from, "a node leaves");
                    self.change(node, Change::Remove(from), then(done))
                }
            },
            MemberRequest::Priority(p) => self.set_priority(node, from, p, then(done)),
        }
    }

    /// Proposes the election priority `priority` of member `id` (on the leader).
    fn set_priority(
        &mut self,
        node: &mut CoreNode,
        id: NodeId,
        priority: u8,
        done: Done<Result<Index, MembershipError>>,
    ) {
        if node.role() != Role::Leader {
            let (leader, address) = self.leader_address(node.leader());
            return done(Err(MembershipError::NotLeader { leader, address }));
        }
        if !node.members().any(|m| m.id == id) {
            return done(Err(MembershipError::Refused(format!(
                "node {id} is not a member"
            ))));
        }
        self.entry = entry::record_entry(&HostRecord::Priority { id, priority });
        self.propose(node, Pending::Membership(done), false);
    }

    /// Where a proposal made here goes instead, if this node forwards it: a follower that
    /// knows a leader it is connected to, with forwarding on and a state machine whose
    /// responses can be sent.
    fn forward_to(
        &self,
        node: &CoreNode,
    ) -> Option<(NodeId, quinn::Connection, ResponseCodec<S::Response>)> {
        if !self.forward || node.role() == Role::Leader {
            return None;
        }
        let codec = S::response_codec()?;
        let leader = node.leader().filter(|&l| l != self.id)?;
        Some((leader, self.transport.connection(leader)?, codec))
    }

    /// What closes when `leader` is no longer the leader this node knows (see
    /// [`Runtime::forwarded`]).
    fn leader_replaced(&mut self, leader: NodeId) -> Receiver<()> {
        match &self.forwarded {
            Some((to, _, replaced)) if *to == leader => replaced.clone(),
            _ => {
                let (tx, replaced) = channel::bounded(1);
                self.forwarded = Some((leader, tx, replaced.clone()));
                replaced
            }
        }
    }

    /// Proposes a command a follower forwarded, and answers it with the outcome (never
    /// forwarded again: a node that does not lead answers "not leader").
    fn on_forwarded(&mut self, node: &mut CoreNode, request: Forwarded) {
        let refused = |why: &str| {
            warn!(
                node = self.id,
                peer = request.from,
                "refused a forwarded request: {why}"
            );
            let _ = request.reply.try_send(forward::encode_refusal(why));
        };
        let command = match forward::decode_request(&request.body) {
            Ok(forward::Request::Propose(command)) => command,
            Ok(forward::Request::Member(member)) => {
                let reply = request.reply;
                return self.member_request(
                    node,
                    request.from,
                    member,
                    Box::new(move |result| {
                        let _ = reply.try_send(forward::encode_member_answer(result));
                    }),
                );
            }
            Err(why) => return refused(&why),
        };
        let Some(codec) = S::response_codec() else {
            return refused("this node's state machine has no response codec");
        };
        let reply = request.reply;
        entry::command_entry(&mut self.entry, &command);
        self.propose(
            node,
            Pending::Command(Box::new(move |result| {
                let _ = reply.try_send(forward::encode_answer(result, Some(codec)));
            })),
            true,
        );
    }

    /// Proposes the entry in `self.entry` (a command with its kind byte, or a record).
    /// `relayed`: forwarded here by another node (never forwarded again).
    fn propose(&mut self, node: &mut CoreNode, pending: Pending<S>, relayed: bool) {
        let command = matches!(pending, Pending::Command(_));
        let outcome = self.try_propose(node, pending, relayed);
        if let (true, Some(outcome)) = (command, outcome) {
            self.metrics.proposals(outcome, 1);
        }
    }

    /// Proposes the entry built in `self.entry`, holds it while a leadership transfer is
    /// under way, or answers `pending` why not; returns the outcome for the metrics (none
    /// for a proposal held: it is counted when released).
    fn try_propose(
        &mut self,
        node: &mut CoreNode,
        pending: Pending<S>,
        relayed: bool,
    ) -> Option<ProposalOutcome> {
        if node.role() == Role::Leader {
            if let Err(e) = self.log.check_room(EntryKind::Command, self.entry.len()) {
                // A snapshot compacts the log: room soon.
                if !self.snapshots.wanted {
                    warn!(node = self.id, error = %e, "the log is full: snapshot and compact");
                }
                self.snapshots.wanted = true;
                refuse(
                    pending,
                    ProposeError::Busy("the log is full; compacting; retry".into()),
                );
                return Some(ProposalOutcome::Busy);
            }
        }
        let error = match node.propose(&self.entry) {
            Ok(p) => {
                self.writes.insert(p.index, (p.term, pending));
                return Some(ProposalOutcome::Accepted);
            }
            // No leader to send it to yet (the vote that ends a transfer, an election):
            // held until one is known, as during a transfer.
            Err(e @ coracle::ProposeError::NotLeader { leader: None })
            | Err(e @ coracle::ProposeError::Transferring) => {
                let pending = match pending {
                    Pending::Command(_) => {
                        match self
                            .held
                            .hold(&self.entry, (pending, relayed), Instant::now())
                        {
                            Ok(()) => return None,
                            Err((pending, _)) => pending,
                        }
                    }
                    _ => pending,
                };
                return Some(match e {
                    coracle::ProposeError::Transferring => {
                        refuse(pending, ProposeError::Busy(e.to_string()));
                        ProposalOutcome::Busy
                    }
                    _ => {
                        refuse(
                            pending,
                            ProposeError::NotLeader {
                                leader: None,
                                address: None,
                            },
                        );
                        ProposalOutcome::NotLeader
                    }
                });
            }
            Err(coracle::ProposeError::NotLeader { leader }) => {
                let (leader, address) = self.leader_address(leader);
                ProposeError::NotLeader { leader, address }
            }
            Err(e @ coracle::ProposeError::Busy) => ProposeError::Busy(e.to_string()),
            Err(coracle::ProposeError::TooLarge { len, max }) => ProposeError::TooLarge {
                // Less the kind byte.
                len: len.saturating_sub(1),
                max: max.saturating_sub(1),
            },
            Err(coracle::ProposeError::Storage(coracle::StorageError::Full)) => {
                // The memory log asked for a snapshot (SnapshotNeeded): room soon.
                ProposeError::Busy("the log is full; compacting; retry".into())
            }
            Err(e) => ProposeError::Busy(e.to_string()),
        };
        let outcome = match error {
            ProposeError::NotLeader { .. } => ProposalOutcome::NotLeader,
            ProposeError::Busy(_) => ProposalOutcome::Busy,
            _ => ProposalOutcome::Rejected,
        };
        refuse(pending, error);
        Some(outcome)
    }

    /// Releases the proposals held during a leadership transfer once it ended
    /// ([`handover`](super::handover)): proposed if this node still leads, answered "not
    /// leader" with the new leader once this node follows one, refused when held too long
    /// or the node stops (`stopping`) with no leader known.
    /// Returns how many it answered.
    fn release_held(&mut self, node: &mut CoreNode, stopping: bool) -> usize {
        // Every turn of the loop comes here: nothing to decide with nothing held.
        if self.held.is_empty() {
            return 0;
        }
        let leader = node.leader().filter(|&l| l != self.id);
        let release = self.held.decide(
            Instant::now(),
            node.role() == Role::Leader,
            node.transferring_to().is_some(),
            leader,
            stopping,
        );
        if release == Release::Wait {
            return 0;
        }
        let held = self.held.take();
        let count = held.len();
        info!(
            node = self.id,
            count = held.len(),
            ?release,
            ?leader,
            "proposals held during the leadership transfer released"
        );
        for (entry, (pending, relayed)) in held {
            match release {
                Release::Propose => {
                    self.entry = entry;
                    self.propose(node, pending, relayed);
                }
                Release::Redirect => {
                    // Forwarded over the connection to the new leader when this node
                    // forwards (the client needs no new connection, no second round
                    // trip), else the proposer is told where to go.
                    let to = self.forward_to(node).filter(|_| !relayed);
                    match (pending, to) {
                        (Pending::Command(done), Some((leader, connection, codec))) => {
                            let command =
                                bytes::Bytes::copy_from_slice(entry.get(1..).unwrap_or(&[]));
                            let relay = self.relays.clone();
                            let done: Done<Result<S::Response, ProposeError>> =
                                Box::new(move |result| {
                                    done(result);
                                    drop(relay);
                                });
                            let replaced = self.leader_replaced(leader);
                            let runtime = self.transport.runtime();
                            forward::spawn::<S>(
                                leader, connection, command, codec, replaced, done, runtime,
                            );
                        }
                        (pending, _) => {
                            let (leader, address) = self.leader_address(leader);
                            self.metrics.proposals(ProposalOutcome::NotLeader, 1);
                            refuse(pending, ProposeError::NotLeader { leader, address });
                        }
                    }
                }
                Release::Refuse | Release::Wait => {
                    let (error, outcome) = match (stopping, node.role()) {
                        (true, _) => (ProposeError::ShuttingDown, ProposalOutcome::Busy),
                        (false, Role::Leader) => (
                            ProposeError::Busy("leadership transfer under way; retry".into()),
                            ProposalOutcome::Busy,
                        ),
                        (false, _) => (
                            ProposeError::NotLeader {
                                leader: None,
                                address: None,
                            },
                            ProposalOutcome::NotLeader,
                        ),
                    };
                    self.metrics.proposals(outcome, 1);
                    refuse(pending, error);
                }
            }
        }
        count
    }

    fn change(
        &mut self,
        node: &mut CoreNode,
        change: Change,
        done: Done<Result<Index, MembershipError>>,
    ) {
        let core = match &change {
            Change::AddLearner { id, .. } => MembershipChange::AddLearner(*id),
            Change::Promote(id) => MembershipChange::Promote(*id),
            Change::Demote(id) => MembershipChange::Demote(*id),
            Change::Remove(id) => MembershipChange::Remove(*id),
            Change::Joint { voters, learners } => MembershipChange::Joint { voters, learners },
        };
        match node.change_membership(core) {
            Ok(p) => {
                info!(
                    node = self.id,
                    index = p.index,
                    ?change,
                    "membership change proposed"
                );
                self.writes
                    .insert(p.index, (p.term, Pending::Membership(done)));
                // Only once the core took the change: a refused one leaves no address behind.
                if let Change::AddLearner { id, addr } = change {
                    let addr = addr.to_string();
                    self.learn_address(id, &addr);
                    self.entry = entry::record_entry(&HostRecord::Address { id, addr });
                    self.propose(node, Pending::Record, false);
                }
            }
            Err(coracle::MembershipError::NotLeader { leader }) => {
                let (leader, address) = self.leader_address(leader);
                done(Err(MembershipError::NotLeader { leader, address }));
            }
            Err(
                e @ (coracle::MembershipError::ChangeInProgress
                | coracle::MembershipError::TermNotCommitted
                | coracle::MembershipError::Transferring),
            ) => done(Err(MembershipError::Retry(e.to_string()))),
            Err(e) => done(Err(MembershipError::Refused(e.to_string()))),
        }
    }

    fn status(&self, node: &CoreNode) -> Status {
        let stats = self.transport.stats();
        let leader = node.role() == Role::Leader;
        let last = node.last_index();
        Status {
            id: self.id,
            cluster: self.cluster,
            role: node.role(),
            term: node.term(),
            leader: node.leader(),
            commit: node.commit_index(),
            applied: self.applied,
            last_index: last,
            members: node
                .members()
                .map(|m| {
                    let match_index = match leader {
                        true if m.id == self.id => Some(last),
                        true => node.progress(m.id).map(|p| p.match_index),
                        false => None,
                    };
                    MemberStatus {
                        id: m.id,
                        voter: m.voter,
                        address: self.addrs.get(&m.id).cloned(),
                        connected: m.id == self.id || self.transport.connected(m.id),
                        match_index,
                        lag: match_index.map(|i| last.saturating_sub(i)),
                        lag_bytes: match_index.map(|i| self.log.bytes_after(i)),
                    }
                })
                .collect(),
            snapshot: SnapshotStatus {
                last: self.snapshots.last,
                writing: self.snapshots.writing,
            },
            transport: TransportCounters {
                refused_connections: TransportStats::get(&stats.refused),
                handshakes_abandoned: TransportStats::get(&stats.handshakes_abandoned),
                stray_datagrams: TransportStats::get(&stats.stray_datagrams),
                malformed_frames: TransportStats::get(&stats.malformed),
                dropped_frames: TransportStats::get(&stats.dropped),
            },
        }
    }

    /// Sends the watchers the status if it changed: at once for role, term, leader or
    /// members, at most every [`WATCH_INTERVAL`] for the indices.
    fn publish(&mut self, node: &CoreNode) {
        let key: Watched = (
            (
                node.role(),
                node.term(),
                node.leader(),
                node.members().count(),
            ),
            (node.commit_index(), self.applied, self.snapshots.last),
        );
        let now = Instant::now();
        let due = match self.watch.sent {
            None => true,
            Some(sent) if sent.0 != key.0 => true,
            Some(sent) => {
                sent.1 != key.1 && self.watch.at.is_none_or(|at| now >= at + WATCH_INTERVAL)
            }
        };
        if !due {
            return;
        }
        let status = self.status(node);
        self.watch
            .to
            .retain(|to| to.force_send(status.clone()).is_ok());
        self.watch.sent = Some(key);
        self.watch.at = Some(now);
    }
}

/// Answers a proposal that was refused before it reached the log.
/// Answers every operation of `call` with the reason the node cannot carry it out.
fn fail_call<S: StateMachine>(call: Call<S>, why: &Gone) {
    if let Call::Ops(ops) = call {
        for op in ops {
            op.fail(why);
        }
    }
}

fn refuse<S: StateMachine>(pending: Pending<S>, error: ProposeError) {
    match pending {
        Pending::Command(done) => done(Err(error)),
        Pending::Membership(done) => done(Err(MembershipError::Retry(error.to_string()))),
        Pending::Record => {
            warn!(error = %error, "a record of the host was not proposed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{durable_state, next_snapshot};
    use crate::config::{NodeConfig, EXAMPLE};
    use crate::storage::{Damage, FileLogError};

    /// The repair a damaged directory's error spells out names the address the other
    /// nodes reach this node at (`coracle admin add-learner ID ADDR`), which is its
    /// `[[peers]]` entry, not `listen` when that is the unspecified address.
    #[test]
    fn the_repair_of_a_damaged_directory_names_the_address_the_peers_dial() {
        let text = EXAMPLE.replacen(
            "listen = \"127.0.0.1:7001\"",
            "listen = \"0.0.0.0:7001\"",
            1,
        );
        let cfg = NodeConfig::parse(&text, std::path::Path::new("/base")).unwrap();
        let damaged = FileLogError::Damaged {
            dir: cfg.data_dir.clone(),
            damage: Damage::NoSegments { snapshot: None },
        };
        let message = durable_state(&cfg, damaged).to_string();
        assert!(message.contains("ADDR is 127.0.0.1:7001"), "{message}");
    }

    #[test]
    fn nodes_snapshot_a_third_of_the_interval_apart() {
        for every in [1, 2, 3, 40, 300, 100_000] {
            for last in [0, 1, 7, 150, 299, 12_345, 1 << 40] {
                let mut phases = Vec::new();
                for id in 1..=3 {
                    let next = next_snapshot(last, every, id);
                    assert!(next > last, "every {every} last {last} id {id}");
                    assert!(next >= last + every / 2 && next < last + every / 2 + every + 1);
                    phases.push(next % every);
                }
                if every >= 3 {
                    phases.sort_unstable();
                    phases.dedup();
                    assert_eq!(phases.len(), 3, "every {every} last {last}");
                }
            }
        }
        assert_eq!(next_snapshot(0, 300, 3), 300);
        assert_eq!(next_snapshot(0, 300, 1), 400);
        assert_eq!(next_snapshot(0, 300, 2), 200);
    }
}
