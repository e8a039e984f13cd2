//! The node runtime: one smol task owns the core [`Node`](coracle::Node) with its memory
//! log (a [`CachedLog`] bounded by `storage.memory_log_bytes`), the [`FileLog`] (the
//! durable store), the [`Kv`] state machine and a timer; the transport and the client
//! sessions are tasks on the same executor thread and talk to it through channels (no
//! thread switch on the way of a request, a message or an answer). The disk is used on
//! threads of the node only, so the event loop never waits for it: the fsync thread
//! performs the writes, the read thread reads entries and snapshot chunks back, and a
//! snapshot's file is written by a thread of its own.
//!
//! The loop (the core's six steps): wait for a message, a client request, a finished
//! flush, entries read back or the next deadline; advance the clock by the ticks that
//! passed; feed what arrived (draining everything queued, so one loop iteration handles a
//! batch); drain the outputs: send messages, apply committed entries, answer reads; queue
//! each `Output::Persist` batch in the [`FileLog`] (memory only), hand `Output::Fetch` and
//! `Output::SendSnapshot` to the read thread. Then group commit: if no flush is running,
//! everything queued goes to the fsync thread as one [`FlushJob`] (one write and one
//! `fdatasync` of the records); when it reports back, the node gets the newest token with
//! `persisted`. Batches that arrive meanwhile wait for the next one, so one `fdatasync`
//! covers all that arrived while the previous one ran.
//!
//! ```no_run
//! use coracle_quic::{config::NodeConfig, server::RunningNode};
//! let cfg = NodeConfig::load("node.toml".as_ref())?;
//! let node = RunningNode::start(&cfg)?;
//! println!("listening on {}", node.local_addr());
//! node.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::certs::Identity;
use crate::config::{ConfigError, NodeConfig};
use crate::kv::{Applied, Kv};
use crate::protocol::{
    append_frame, decode_request, AdminOp, Command, Consistency, ErrorKind, MemberStatus,
    NodeStatus, ReadOp, Request, RequestFrame, Response, ResponseFrame, MAX_CLIENT_FRAME,
};
use crate::storage::{
    FileLog, FileLogError, FlushDone, FlushJob, Incarnations, LogReader, SnapshotFile,
    SnapshotWriter,
};
use crate::tls::{Credentials, TlsError};
use crate::transport::{
    encode_frame, Class, FrameError, FrameReader, Inbound, PeerFrame, StartError, Transport,
    TransportStats, ERR_MALFORMED,
};
use coracle::wire::Envelope;
use coracle::{
    CachedLog, EntryKind, Index, InstallSnapshot, LogStorage, MembershipChange, Message, NodeId,
    Output, OwnedEntry, ProposeError, ReadMode, Role, SnapshotMeta, SyncToken, Term,
};
use smol::channel::{self, Receiver, Sender};
use smol::future::FutureExt;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
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

/// Key-value pairs of a snapshot written out per turn of a node's event loop (about 60 µs
/// of CPU at 256-byte values; at 64 clients, p99.9 15-17 ms against 17-21 ms with 2 048).
pub const SNAPSHOT_PAIRS_PER_STEP: usize = 256;

/// Bytes of a snapshot written out per turn at most (large values: fewer pairs a step), and
/// the size of each piece handed to the thread that writes the file.
pub const SNAPSHOT_BYTES_PER_STEP: usize = 1 << 20;

/// Bytes of entries one fetch reads back at most: each fetch replaces what the previous
/// one read (the memory log keeps one window), so reading more at once only holds more
/// memory while the node sends it; 8 MiB fill 8 AppendEntries of the default 1 MiB.
const MAX_FETCH_BYTES: usize = 8 << 20;

/// Pieces of a snapshot queued for its writing thread at most: what a snapshot holds in
/// memory beyond the state machine is about this many steps.
const SNAPSHOT_PIECES_QUEUED: usize = 4;

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
    /// The node's event loop panicked (a bug).
    Panicked,
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
            NodeError::Panicked => f.write_str("the node's event loop panicked"),
        }
    }
}

impl std::error::Error for NodeError {}

/// A request for the node's event loop.
enum Call {
    /// The requests read together from one client stream.
    Client {
        requests: Vec<(Request, Reply)>,
        identity: Arc<Identity>,
    },
    Shutdown,
}

/// Requests of one client stream in flight at most. The next request is read only once an
/// answer has been written out, so a client that pipelines without reading its answers
/// meets QUIC flow control instead of growing the node's queues.
pub const REQUESTS_IN_FLIGHT: usize = 1024;

/// One of a stream's [`REQUESTS_IN_FLIGHT`], held until the request's answer is written.
type Permit = Option<Arc<smol::lock::SemaphoreGuardArc>>;

/// An answer on its way to the stream's writer, with the request's permit.
type Answer = (ResponseFrame, Permit);

/// Where the answer to one client request goes: its id, and the answer queue of the stream
/// it came on.
#[derive(Clone)]
struct Reply {
    id: u64,
    to: Sender<Answer>,
    permit: Permit,
}

impl Reply {
    /// A reply nobody waits for (an operation the node starts by itself).
    fn nobody() -> Reply {
        Reply {
            id: 0,
            to: channel::bounded(1).0,
            permit: None,
        }
    }

    fn send(&self, response: Response) {
        let frame = ResponseFrame {
            id: self.id,
            response,
        };
        let _ = self.to.try_send((frame, self.permit.clone()));
    }
}

/// A node running as a task on the smol executor, with its transport.
pub struct RunningNode {
    id: NodeId,
    task: Option<smol::Task<Result<(), NodeError>>>,
    calls: Sender<Call>,
    local_addr: SocketAddr,
    transport: Arc<Transport>,
}

impl fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningNode")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl RunningNode {
    /// Opens the data directory, loads the certificates, binds the address and starts the
    /// node. Errors name what is wrong (bad certificate, locked directory, address in use).
    pub fn start(cfg: &NodeConfig) -> Result<RunningNode, NodeError> {
        let creds =
            Credentials::load(&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key).map_err(NodeError::Tls)?;
        match creds.identity().map_err(NodeError::Tls)? {
            Identity::Node(id) if id == cfg.id => {}
            other => {
                return Err(NodeError::WrongCertificate {
                    id: cfg.id,
                    found: other.to_string(),
                })
            }
        }
        let log = open_log(cfg)?;
        let incarnations =
            Arc::new(Incarnations::open(&cfg.data_dir).map_err(|e| durable_state(cfg, e))?);
        let greeting = crate::hello::Greeting::new(
            cfg.cluster_id,
            cfg.id,
            log.identity().incarnation,
            incarnations.clone(),
        );
        let voters = cfg.voters();
        let last_snapshot = log.snapshot_point().map_or(0, |(index, _)| index);
        let memory = log
            .recover(cfg.memory_log_bytes())
            .map_err(|e| durable_state(cfg, e))?;
        // Boxed: the node's fixed-capacity tables make it large, and the event loop's future
        // is moved a few times before it lands on the executor.
        let node =
            Box::new(CoreNode::new(cfg.raft_config(0), memory, &voters).map_err(NodeError::Core)?);
        let (in_tx, in_rx) = channel::bounded(65_536);
        let (call_tx, call_rx) = channel::bounded(65_536);
        let stats_slot: Arc<std::sync::OnceLock<Arc<TransportStats>>> = Arc::default();
        let on_client = {
            let calls = call_tx.clone();
            let stats_slot = stats_slot.clone();
            Arc::new(move |conn: quinn::Connection, identity: Identity| {
                let stats = stats_slot.get().cloned().unwrap_or_default();
                smol::spawn(serve_client(conn, identity, calls.clone(), stats)).detach();
            })
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
        )
        .map_err(|e| match e {
            StartError::Tls(e) => NodeError::Tls(e),
            StartError::Bind(source) => NodeError::Bind {
                addr: cfg.listen,
                source,
            },
        })?;
        let _ = stats_slot.set(transport.stats().clone());
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
        for &v in &voters {
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
        let host = Host {
            id: cfg.id,
            cluster: cfg.cluster_id,
            transport: transport.clone(),
            kv: Kv::new(),
            writes: HashMap::new(),
            reads: HashMap::new(),
            next_read: 1,
            addrs,
            tick: cfg.tick(),
            snapshots: Snapshots {
                every: cfg.storage.snapshot_entries,
                last: last_snapshot,
                failed: 0,
                wanted: false,
                building: None,
                writing: false,
                written: written_tx,
            },
            log,
            disk_reads,
            fetch_bytes: (cfg.memory_log_bytes() / 4).min(MAX_FETCH_BYTES),
            want_sync: None,
            syncing: None,
            incarnations,
        };
        info!(node = cfg.id, addr = %local_addr, data = %cfg.data_dir.display(), voters = ?voters, "node started");
        let (durable_tx, durable_rx) = channel::bounded(1);
        let fsync = spawn_fsync_thread(cfg.id, durable_tx).map_err(NodeError::Thread)?;
        let run = Box::pin(host.run(
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
        let task = smol::spawn(async move {
            std::panic::AssertUnwindSafe(run)
                .catch_unwind()
                .await
                .unwrap_or(Err(NodeError::Panicked))
        });
        Ok(RunningNode {
            id: cfg.id,
            task: Some(task),
            calls: call_tx,
            local_addr,
            transport,
        })
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

    /// Stops the node: makes the log durable, closes the connections, waits for the end.
    pub fn shutdown(mut self) -> Result<(), NodeError> {
        let _ = self.calls.try_send(Call::Shutdown);
        self.join()
    }

    /// Waits until the node stops by itself (an error) or is shut down.
    pub fn join(&mut self) -> Result<(), NodeError> {
        match self.task.take() {
            // A plain parker, not `smol::block_on`: the executor thread drives the I/O
            // reactor (a second driver would hand every event over with a thread switch).
            Some(t) => smol::future::block_on(t),
            None => Ok(()),
        }
    }

    /// Asks the node to stop without waiting.
    pub fn request_shutdown(&self) {
        let _ = self.calls.try_send(Call::Shutdown);
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        if self.task.is_some() {
            let _ = self.calls.try_send(Call::Shutdown);
            let _ = self.join();
        }
    }
}

enum PendingWrite {
    Client(Reply),
    Admin(Reply),
}

struct Host {
    id: NodeId,
    cluster: u64,
    transport: Arc<Transport>,
    kv: Kv,
    writes: HashMap<Index, (Term, PendingWrite)>,
    reads: HashMap<u64, (ReadOp, Reply)>,
    next_read: u64,
    addrs: HashMap<NodeId, String>,
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
    /// The snapshot the state machine is writing out.
    building: Option<Building>,
    /// A snapshot's file is being sealed on its own thread (one at a time).
    writing: bool,
    /// Where that thread reports.
    written: Sender<SnapshotWritten>,
}

/// A snapshot being written out: the state machine's steps go to a thread that writes them
/// to the snapshot's file.
struct Building {
    meta: SnapshotMeta,
    /// The writing thread's queue.
    pieces: std::sync::mpsc::SyncSender<Piece>,
    /// Bytes written out by the state machine and not yet queued.
    step: Vec<u8>,
    /// The state machine wrote out all of it.
    ended: bool,
}

/// What the thread that writes a snapshot's file is given.
enum Piece {
    Bytes(Vec<u8>),
    /// All is written: seal the file.
    End,
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
type SnapshotWritten = Result<Index, FileLogError>;

/// What the read thread reports for a fetch.
type Fetched = Result<Vec<OwnedEntry>, FileLogError>;

enum Wake {
    In(Inbound),
    Call(Call),
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
struct Wakers {
    inbound: Receiver<Inbound>,
    calls: Receiver<Call>,
    durable: Receiver<FlushDone>,
    snapshots: Receiver<SnapshotWritten>,
    fetched: Receiver<Fetched>,
}

/// The node's fsync thread: runs each [`FlushJob`] it is given and reports what it did.
fn spawn_fsync_thread(
    id: NodeId,
    done: Sender<FlushDone>,
) -> std::io::Result<std::sync::mpsc::Sender<FlushJob>> {
    let (tx, rx) = std::sync::mpsc::channel::<FlushJob>();
    std::thread::Builder::new()
        .name(format!("coracle-fsync-{id}"))
        .spawn(move || {
            while let Ok(job) = rx.recv() {
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

/// The thread that writes a snapshot's file: the pieces in order, then seals it. A host
/// that drops its queue before [`Piece::End`] gives the snapshot up (its file goes).
fn spawn_snapshot_writer(
    id: NodeId,
    mut writer: SnapshotWriter,
    done: Sender<SnapshotWritten>,
) -> std::io::Result<std::sync::mpsc::SyncSender<Piece>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(SNAPSHOT_PIECES_QUEUED);
    std::thread::Builder::new()
        .name(format!("coracle-snapshot-{id}"))
        .spawn(move || {
            let index = writer.meta().index;
            while let Ok(piece) = rx.recv() {
                match piece {
                    Piece::Bytes(b) => {
                        if let Err(e) = std::io::Write::write_all(&mut writer, &b) {
                            let _ = done.send_blocking(Err(FileLogError::BadSnapshot(format!(
                                "cannot write the snapshot at index {index}: {e}"
                            ))));
                            return;
                        }
                    }
                    Piece::End => {
                        let _ =
                            done.send_blocking(FileLog::finish_snapshot(writer).map(|()| index));
                        return;
                    }
                }
            }
        })?;
    Ok(tx)
}

fn retry(message: impl Into<String>) -> Response {
    Response::Error {
        kind: ErrorKind::Retry,
        message: message.into(),
    }
}

fn failed(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
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

/// A leader asked to stop hands leadership over first, so a planned restart costs its
/// clients a round of TimeoutNow and a vote rather than an election timeout: to the voter
/// it is connected to that is active and holds the most of the log (`matchIndex`; ties to
/// the lowest id), waiting at most two election timeouts (the core gives the transfer up
/// after one). Returns until when to wait, or `None` if there is nothing to wait for (this
/// node does not lead, or no other voter is `connected`: the last node of a cluster being
/// stopped exits at once).
fn hand_over(
    node: &mut CoreNode,
    tick: Duration,
    connected: impl Fn(NodeId) -> bool,
) -> Option<Instant> {
    if node.role() != Role::Leader {
        return None;
    }
    let me = node.id();
    let target = node
        .members()
        .filter(|m| m.voter && m.id != me && connected(m.id))
        .filter_map(|m| node.progress(m.id).map(|p| (m.id, p)))
        .max_by_key(|&(id, p)| (p.recent_active, p.match_index, std::cmp::Reverse(id)))?
        .0;
    node.transfer_leadership(target).ok()?;
    info!(node = me, target, "handing leadership over before stopping");
    Some(Instant::now() + tick * node.config().election_ticks.saturating_mul(2))
}

/// True once a leader stopping with [`hand_over`] may go: it hears from the new leader,
/// the transfer was given up, or `deadline` passed.
fn handed_over(node: &CoreNode, deadline: Instant) -> bool {
    let new_leader = node.leader().is_some_and(|l| l != node.id());
    let given_up = node.role() == Role::Leader && node.transferring_to().is_none();
    new_leader || given_up || Instant::now() >= deadline
}

impl Host {
    async fn run(
        mut self,
        mut node: Box<CoreNode>,
        wakers: Wakers,
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
            return Err(self.stop_on_error(e).await);
        }
        let mut shutdown = false;
        // Set while a leader asked to stop hands leadership over: until when it waits.
        let mut handover: Option<Instant> = None;
        // One timer, re-armed only when the deadline comes sooner than the one it is set
        // for (or it fired): each arming wakes the reactor with a syscall, and a follower's
        // deadline moves later with every message from the leader. Firing early costs one
        // turn of the loop.
        let mut timer = smol::Timer::never();
        let mut armed: Option<Instant> = None;
        while !shutdown {
            let wait = node.ticks_until_deadline().clamp(1, 1000);
            let building = self.snapshots.building.is_some();
            let deadline = start + Duration::from_nanos(tick_nanos.saturating_mul(ticks + wait));
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
            for wake in batch {
                match wake {
                    Wake::In(Inbound::Message(frame)) => {
                        step_frame(&mut node, &self.transport, &frame)
                    }
                    Wake::In(Inbound::Unreachable(peer)) => node.report_unreachable(peer),
                    Wake::Call(Call::Client { requests, identity }) => {
                        for (request, reply) in requests {
                            self.on_request(&mut node, request, &identity, reply);
                        }
                    }
                    Wake::Durable(done) => {
                        let token = self.syncing.take();
                        if let Err(e) = self.log.end_flush(*done) {
                            node.persist_failed();
                            error!(node = self.id, error = %e, "log sync failed; stopping");
                            return Err(self.stop_on_error(NodeError::Sync(e)).await);
                        }
                        if let Some(token) = token {
                            node.persisted(token);
                        }
                    }
                    Wake::Snapshot(result) => {
                        if let Err(e) = self.snapshot_written(&mut node, result) {
                            return Err(self.stop_on_error(e).await);
                        }
                    }
                    Wake::Fetched(Ok(entries)) => {
                        node.fetched(entries.iter().map(OwnedEntry::as_entry));
                    }
                    Wake::Fetched(Err(e)) => {
                        warn!(node = self.id, error = %e, "cannot read entries back from the log");
                        node.fetch_failed();
                    }
                    Wake::Call(Call::Shutdown) if handover.is_none() => {
                        let transport = &self.transport;
                        handover = hand_over(&mut node, self.tick, |id| transport.connected(id));
                        shutdown = handover.is_none();
                    }
                    Wake::Call(Call::Shutdown) => {}
                    Wake::Closed => shutdown = true,
                    Wake::Fired => armed = None,
                    Wake::Yielded => {}
                }
            }
            // One drain for everything that arrived together: the core computes its
            // outputs when they are polled, so draining once per batch rather than once
            // per input loses nothing, and the writes of the batch share one fsync.
            if let Err(e) = self.settle(&mut node, &fsync) {
                return Err(self.stop_on_error(e).await);
            }
            shutdown |= handover.is_some_and(|deadline| handed_over(&node, deadline));
        }
        info!(node = self.id, "shutting down");
        if self.syncing.take().is_some() {
            if let Ok(done) = durable.recv().await {
                self.log.end_flush(done).map_err(NodeError::Sync)?;
            }
        }
        self.log.flush().map_err(NodeError::Sync)?;
        self.transport.close();
        self.transport.wait_idle(Duration::from_millis(500)).await;
        Ok(())
    }

    /// The node stops on `e` (a failed fsync, a snapshot that cannot be restored): every
    /// pending request is answered with the error, so clients learn why (say, "the disk is
    /// full") rather than time out, and the answers get a moment to leave before the
    /// connections close.
    async fn stop_on_error(&mut self, e: NodeError) -> NodeError {
        let message = e.to_string();
        let pending = self.writes.drain().map(|(_, (_, w))| match w {
            PendingWrite::Client(r) | PendingWrite::Admin(r) => r,
        });
        let reads = self.reads.drain().map(|(_, (_, r))| r);
        for reply in pending.chain(reads) {
            reply.send(failed(ErrorKind::Failed, message.clone()));
        }
        smol::Timer::after(Duration::from_millis(200)).await;
        self.transport.close();
        self.transport.wait_idle(Duration::from_millis(300)).await;
        e
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
                    self.log.persist(&batch.batch());
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
                        EntryKind::Command => self.kv.apply(index, entry.data),
                        EntryKind::Membership => {
                            membership = true;
                            applied_config = Some((index, config_members(entry.data)));
                            self.kv.skip(index);
                            Applied::Ignored
                        }
                        _ => {
                            self.kv.skip(index);
                            Applied::Ignored
                        }
                    };
                    self.applied(index, term, applied);
                    if self.want_sync.is_some() && self.syncing.is_none() {
                        drained = false;
                        break;
                    }
                }
                Output::ReadReady { id, .. } => {
                    if let Some((op, reply)) = self.reads.remove(&id) {
                        reply.send(self.serve(&op));
                    }
                }
                Output::ReadFailed { id } => {
                    if let Some((_, reply)) = self.reads.remove(&id) {
                        reply.send(retry("read not confirmed; retry"));
                    }
                }
                Output::StateChanged(s) => {
                    info!(node = self.id, role = ?s.role, term = s.term, leader = ?s.leader, "state changed");
                    if s.role != Role::Leader {
                        for (_, (_, w)) in self.writes.drain() {
                            let reply = match w {
                                PendingWrite::Client(r) | PendingWrite::Admin(r) => r,
                            };
                            reply.send(retry("leadership changed; retry"));
                        }
                    }
                }
                Output::RestoreSnapshot { index, .. } => {
                    self.restore_snapshot(index)?;
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
            for id in ids {
                self.transport.ensure_link(id);
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
    /// or the log is full): the state machine writes it out [`SNAPSHOT_PAIRS_PER_STEP`]
    /// pairs per turn of the event loop (while writes go on: [`Kv::begin_snapshot`]), so
    /// the loop, and this node's transport on the same thread, never pause for long,
    /// however large the state; a thread of its own writes the pieces to the snapshot's
    /// file and seals it. [`snapshot_written`](Self::snapshot_written) takes it from there.
    ///
    /// Replacing the kept snapshot while a leader sends it to a follower is safe: the core
    /// restarts every transfer from offset 0 with the new snapshot, so a follower never gets
    /// chunks of two snapshots. (Waiting for transfers to end instead would stop
    /// compaction for as long as a follower that needs a snapshot stays down.)
    fn maybe_snapshot(&mut self, node: &mut CoreNode) -> Result<(), NodeError> {
        if self.snapshots.building.is_some() {
            return self.continue_snapshot();
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
        if s.writing || (!due && !s.wanted) || index <= s.last {
            return Ok(());
        }
        if self.kv.applied() != index {
            warn!(
                node = self.id,
                index,
                kv = self.kv.applied(),
                "state machine behind; no snapshot"
            );
            return Ok(());
        }
        let Some(meta) = snapshot_meta_at(node.log(), index) else {
            warn!(
                node = self.id,
                index, "no snapshot metadata at the applied index"
            );
            return Ok(());
        };
        let writer = match self.log.snapshot_writer(&meta) {
            Ok(w) => w,
            Err(e) => return self.snapshot_failed(index, e),
        };
        let pieces = spawn_snapshot_writer(self.id, writer, self.snapshots.written.clone())
            .map_err(|e| NodeError::Snapshot(format!("cannot start the snapshot thread: {e}")))?;
        self.kv
            .begin_snapshot()
            .map_err(|e| NodeError::Snapshot(e.to_string()))?;
        self.snapshots.building = Some(Building {
            meta,
            pieces,
            step: Vec::new(),
            ended: false,
        });
        self.continue_snapshot()
    }

    /// Writes out the next pairs of the snapshot being built and hands them to its thread
    /// (waiting for a later turn if the thread is behind); once all are, asks the thread to
    /// seal the file.
    fn continue_snapshot(&mut self) -> Result<(), NodeError> {
        let Some(b) = &mut self.snapshots.building else {
            return Ok(());
        };
        if !b.ended && self.kv.snapshot_in_progress() != Some(b.meta.index) {
            // The state machine was replaced by a leader's snapshot meanwhile: given up
            // (the thread removes its file).
            self.snapshots.building = None;
            return Ok(());
        }
        if b.step.is_empty() && !b.ended {
            match self.kv.continue_snapshot(
                SNAPSHOT_PAIRS_PER_STEP,
                SNAPSHOT_BYTES_PER_STEP,
                &mut b.step,
            ) {
                None => {}
                Some(Ok(())) => b.ended = true,
                Some(Err(e)) => return Err(NodeError::Snapshot(e.to_string())),
            }
        }
        let piece = if !b.step.is_empty() {
            Piece::Bytes(std::mem::take(&mut b.step))
        } else if b.ended {
            Piece::End
        } else {
            return Ok(());
        };
        let end = matches!(piece, Piece::End);
        match b.pieces.try_send(piece) {
            Ok(()) if end => {
                self.snapshots.building = None;
                self.snapshots.writing = true;
            }
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(Piece::Bytes(bytes))) => b.step = bytes,
            Err(std::sync::mpsc::TrySendError::Full(Piece::End)) => {}
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                // The thread stopped on an error, which it reports.
                self.snapshots.building = None;
                self.snapshots.writing = true;
            }
        }
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
        self.snapshots.writing = false;
        let index = match result {
            Ok(index) => index,
            Err(e) => return self.snapshot_failed(node.applied_index(), e),
        };
        match node.snapshot_taken(index) {
            Ok(meta) => {
                info!(node = self.id, index, term = meta.term, "snapshot saved");
                self.snapshots.last = self.snapshots.last.max(index);
                self.snapshots.wanted = false;
            }
            Err(e) => {
                info!(node = self.id, index, error = %e, "snapshot dropped");
                self.log.discard_snapshot(index);
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
        if self.log.is_failed() {
            return Err(NodeError::Storage(e));
        }
        Ok(())
    }

    /// Replaces the state machine with the snapshot the store keeps (installed from the
    /// leader, or found on disk at start), through `index`: read from its file a piece at
    /// a time.
    fn restore_snapshot(&mut self, index: Index) -> Result<(), NodeError> {
        let mut file = SnapshotFile::open(self.log.dir(), index)
            .map_err(|e| NodeError::Snapshot(e.to_string()))?
            .ok_or_else(|| {
                NodeError::Snapshot(format!(
                    "restore to index {index} asked, but the snapshot kept is {:?}",
                    self.log.snapshot_point()
                ))
            })?;
        let kv = Kv::restore_from(&mut file).map_err(|e| NodeError::Snapshot(e.to_string()))?;
        if kv.applied() != index {
            return Err(NodeError::Snapshot(format!(
                "the snapshot at index {index} holds a state machine at index {}",
                kv.applied()
            )));
        }
        for (&id, addr) in kv.addresses() {
            if let Ok(a) = addr.parse::<SocketAddr>() {
                self.transport.set_address(id, a);
            }
            self.addrs.insert(id, addr.clone());
        }
        self.kv = kv;
        self.snapshots.last = self.snapshots.last.max(index);
        // Writes proposed here and covered by the snapshot: their outcome is in the session
        // table, which a retry reads.
        let covered: Vec<Index> = self
            .writes
            .keys()
            .copied()
            .filter(|&i| i <= index)
            .collect();
        for i in covered {
            if let Some((_, PendingWrite::Client(r) | PendingWrite::Admin(r))) =
                self.writes.remove(&i)
            {
                r.send(retry("the state machine was replaced by a snapshot; retry"));
            }
        }
        info!(
            node = self.id,
            index,
            keys = self.kv.len(),
            "state machine restored from a snapshot"
        );
        Ok(())
    }

    fn applied(&mut self, index: Index, term: Term, applied: Applied) {
        if let Applied::Address(id, addr) = &applied {
            if let Ok(a) = addr.parse::<SocketAddr>() {
                self.transport.set_address(*id, a);
            }
            self.addrs.insert(*id, addr.clone());
        }
        let Some((pterm, w)) = self.writes.remove(&index) else {
            return;
        };
        let response = if pterm != term {
            retry("the write was lost to a new leader; retry")
        } else {
            match (&w, applied) {
                (PendingWrite::Client(_), Applied::Write(outcome)) => {
                    Response::Written { outcome, index }
                }
                (PendingWrite::Admin(_), _) => Response::Done,
                _ => failed(ErrorKind::Failed, "unexpected entry"),
            }
        };
        let reply = match w {
            PendingWrite::Client(r) | PendingWrite::Admin(r) => r,
        };
        reply.send(response);
    }

    fn serve(&self, op: &ReadOp) -> Response {
        match op {
            ReadOp::Get { key } => Response::Value(self.kv.get(key).map(<[u8]>::to_vec)),
            ReadOp::List { prefix, limit } => {
                Response::Pairs(self.kv.list(prefix, (*limit).min(100_000) as usize))
            }
        }
    }

    fn redirect(&self, leader: Option<NodeId>) -> Response {
        match leader {
            Some(l) if l != self.id => Response::Redirect {
                leader: Some(l),
                addr: self.addrs.get(&l).cloned(),
            },
            _ => retry("no leader known; retry"),
        }
    }

    fn on_request(
        &mut self,
        node: &mut CoreNode,
        request: Request,
        identity: &Identity,
        reply: Reply,
    ) {
        match request {
            Request::Write {
                client,
                seq,
                ack_below,
                op,
            } => {
                let command = Command::Write {
                    client,
                    seq,
                    ack_below,
                    op,
                };
                self.propose(node, &command, PendingWrite::Client(reply));
            }
            Request::Read { op, consistency } => {
                let mode = match consistency {
                    Consistency::Stale => {
                        reply.send(self.serve(&op));
                        return;
                    }
                    Consistency::Linearizable => ReadMode::ReadIndex,
                    Consistency::Lease => ReadMode::Lease,
                };
                let id = self.next_read;
                self.next_read += 1;
                match node.read(id, mode) {
                    Ok(()) => {
                        self.reads.insert(id, (op, reply));
                    }
                    Err(e) => {
                        reply.send(retry(e.to_string()));
                    }
                }
            }
            Request::Status => {
                reply.send(Response::Status(self.status(node)));
            }
            Request::Admin(op) => {
                if !matches!(identity, Identity::Client { admin: true, .. }) {
                    reply.send(failed(
                        ErrorKind::Forbidden,
                        format!("{identity} may not run admin operations"),
                    ));
                    return;
                }
                info!(node = self.id, by = %identity, ?op, "admin operation");
                self.admin(node, op, reply);
            }
        }
    }

    fn propose(&mut self, node: &mut CoreNode, command: &Command, pending: PendingWrite) {
        let reply = match &pending {
            PendingWrite::Client(r) | PendingWrite::Admin(r) => r.clone(),
        };
        let bytes = match postcard::to_allocvec(command) {
            Ok(b) => b,
            Err(e) => {
                reply.send(failed(ErrorKind::BadRequest, e.to_string()));
                return;
            }
        };
        if node.role() == Role::Leader {
            if let Err(e) = self.log.check_room(EntryKind::Command, bytes.len()) {
                // A snapshot compacts the log: room soon.
                if !self.snapshots.wanted {
                    warn!(node = self.id, error = %e, "the log is full: snapshot and compact");
                }
                self.snapshots.wanted = true;
                reply.send(retry("the log is full; compacting; retry"));
                return;
            }
        }
        match node.propose(&bytes) {
            Ok(p) => {
                self.writes.insert(p.index, (p.term, pending));
            }
            Err(ProposeError::NotLeader { leader }) => {
                reply.send(self.redirect(leader));
            }
            Err(e @ (ProposeError::Busy | ProposeError::Transferring)) => {
                reply.send(retry(e.to_string()));
            }
            Err(e @ ProposeError::TooLarge { .. }) => {
                reply.send(failed(ErrorKind::BadRequest, e.to_string()));
            }
            Err(ProposeError::Storage(coracle::StorageError::Full)) => {
                // The memory log asked for a snapshot (SnapshotNeeded): room soon.
                reply.send(retry("the log is full; compacting; retry"));
            }
            Err(e) => {
                reply.send(failed(ErrorKind::Failed, e.to_string()));
            }
        }
    }

    fn admin(&mut self, node: &mut CoreNode, op: AdminOp, reply: Reply) {
        if let AdminOp::Isolate { peers } = &op {
            let ids: Vec<NodeId> = node.members().map(|m| m.id).chain(peers.clone()).collect();
            for id in ids.into_iter().filter(|&id| id != self.id) {
                self.transport.set_isolated(id, peers.contains(&id));
            }
            warn!(
                node = self.id,
                ?peers,
                "fault injection: isolated from these peers"
            );
            reply.send(Response::Done);
            return;
        }
        if node.role() != Role::Leader {
            reply.send(self.redirect(node.leader()));
            return;
        }
        let mut new_address = None;
        let change = match op {
            AdminOp::AddLearner { id, addr } => {
                let Ok(sock) = addr.parse::<SocketAddr>() else {
                    reply.send(failed(
                        ErrorKind::BadRequest,
                        format!("{addr:?} is not an ip:port address"),
                    ));
                    return;
                };
                new_address = Some((id, sock, addr));
                MembershipChange::AddLearner(id)
            }
            AdminOp::Promote { id } => MembershipChange::Promote(id),
            AdminOp::Remove { id } => MembershipChange::Remove(id),
            AdminOp::Transfer { id } => {
                reply.send(match node.transfer_leadership(id) {
                    Ok(()) => Response::Done,
                    Err(e) => failed(ErrorKind::Failed, e.to_string()),
                });
                return;
            }
            AdminOp::Isolate { .. } => return, // answered above, on any node
        };
        match node.change_membership(change) {
            Ok(p) => {
                self.writes
                    .insert(p.index, (p.term, PendingWrite::Admin(reply)));
                // Only once the core took the change: a refused one leaves no address behind.
                if let Some((id, sock, addr)) = new_address {
                    self.transport.set_address(id, sock);
                    self.addrs.insert(id, addr.clone());
                    let command = Command::SetAddress { id, addr };
                    self.propose(node, &command, PendingWrite::Admin(Reply::nobody()));
                }
            }
            Err(coracle::MembershipError::NotLeader { leader }) => {
                reply.send(self.redirect(leader));
            }
            Err(
                e @ (coracle::MembershipError::ChangeInProgress
                | coracle::MembershipError::TermNotCommitted
                | coracle::MembershipError::Transferring),
            ) => {
                reply.send(retry(e.to_string()));
            }
            Err(e) => {
                reply.send(failed(ErrorKind::Failed, e.to_string()));
            }
        }
    }

    fn status(&self, node: &CoreNode) -> NodeStatus {
        let stats = self.transport.stats();
        NodeStatus {
            id: self.id,
            role: format!("{:?}", node.role()),
            term: node.term(),
            leader: node.leader(),
            commit: node.commit_index(),
            applied: node.applied_index(),
            last_index: node.last_index(),
            members: node
                .members()
                .map(|m| MemberStatus {
                    id: m.id,
                    voter: m.voter,
                    addr: self.addrs.get(&m.id).cloned(),
                    connected: m.id == self.id || self.transport.connected(m.id),
                    match_index: if node.role() == Role::Leader {
                        if m.id == self.id {
                            Some(node.last_index())
                        } else {
                            node.progress(m.id).map(|p| p.match_index)
                        }
                    } else {
                        None
                    },
                })
                .collect(),
            keys: self.kv.len() as u64,
            refused_connections: TransportStats::get(&stats.refused),
            handshakes_abandoned: TransportStats::get(&stats.handshakes_abandoned),
            stray_datagrams: TransportStats::get(&stats.stray_datagrams),
            malformed_frames: TransportStats::get(&stats.malformed),
            dropped_frames: TransportStats::get(&stats.dropped),
        }
    }
}

/// Serves one client connection: each bidirectional stream it opens carries requests.
async fn serve_client(
    conn: quinn::Connection,
    identity: Identity,
    calls: Sender<Call>,
    stats: Arc<TransportStats>,
) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let answers = {
            let (to, queue) = channel::unbounded();
            smol::spawn(write_answers(send, queue)).detach();
            to
        };
        smol::spawn(read_requests(
            recv,
            answers,
            identity.clone(),
            calls.clone(),
            stats.clone(),
        ))
        .detach();
    }
}

/// Reads the requests of one client stream and hands them to the node, without
/// waiting for their answers (the client pipelines).
async fn read_requests(
    recv: quinn::RecvStream,
    answers: Sender<Answer>,
    identity: Identity,
    calls: Sender<Call>,
    stats: Arc<TransportStats>,
) {
    let identity = Arc::new(identity);
    let in_flight = Arc::new(smol::lock::Semaphore::new(REQUESTS_IN_FLIGHT));
    let mut frames = FrameReader::new(recv);
    loop {
        // The first request is waited for; those read with it go to the node together.
        let mut permit = Some(Arc::new(in_flight.acquire_arc().await));
        let mut next = frames.next(MAX_CLIENT_FRAME).await;
        let mut requests = Vec::new();
        // The stream ended (or was refused): the requests read before go on, then no more.
        let mut ended = false;
        loop {
            let bytes = match next {
                Ok(Some(bytes)) => bytes,
                Ok(None) | Err(FrameError::Interrupted) => {
                    ended = true;
                    break;
                }
                Err(e) => {
                    stats
                        .malformed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    warn!(client = %identity, error = %e, "malformed frame: stream closed");
                    frames.stop(ERR_MALFORMED);
                    ended = true;
                    break;
                }
            };
            let (id, request) = match decode_request(&bytes) {
                Ok(RequestFrame { id, request }) => (id, Ok(request)),
                Err((id, e)) => (id, Err(e)),
            };
            let reply = Reply {
                id,
                to: answers.clone(),
                permit,
            };
            match request {
                Ok(request) => requests.push((request, reply)),
                Err(e) => {
                    stats
                        .malformed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    warn!(client = %identity, error = %e, "malformed request");
                    reply.send(failed(ErrorKind::BadRequest, "malformed request"));
                }
            }
            permit = match in_flight.try_acquire_arc() {
                Some(p) => Some(Arc::new(p)),
                None => break,
            };
            next = match frames.buffered(MAX_CLIENT_FRAME) {
                Ok(None) => break,
                other => other,
            };
        }
        if !requests.is_empty() {
            let call = Call::Client {
                requests,
                identity: identity.clone(),
            };
            if let Err(channel::SendError(call)) = calls.send(call).await {
                if let Call::Client { requests, .. } = call {
                    for (_, reply) in requests {
                        reply.send(retry("the node is shutting down"));
                    }
                }
                return;
            }
        }
        if ended {
            return;
        }
    }
}

/// Writes the answers of one client stream: every answer ready when the task runs leaves
/// in one write, and then their requests' permits are returned. Finishes the stream once
/// the requests ended and all were answered.
async fn write_answers(mut send: quinn::SendStream, queue: Receiver<Answer>) {
    let mut buf = Vec::new();
    let mut permits = Vec::new();
    while let Ok(first) = queue.recv().await {
        buf.clear();
        let mut next = Some(first);
        while let Some((answer, permit)) = next {
            if let Err(e) = append_frame(&mut buf, &answer) {
                warn!(error = %e, "cannot encode an answer");
            }
            permits.push(permit);
            next = if buf.len() < 1 << 20 {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
        permits.clear();
    }
    let _ = send.finish();
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
