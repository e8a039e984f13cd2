//! The node's figures in Prometheus form, served over HTTP when `[metrics] listen` is set.
//!
//! [`Metrics`] is owned by the node's event loop, which records events as they happen
//! (an entry applied, a flush begun and ended, a proposal or read and its outcome, a
//! snapshot saved) and copies the core's state ([`Metrics::observe`]: role, term, indexes,
//! each follower's progress, the core's counters, the log's size) at most every
//! [`OBSERVE_EVERY`]. The metrics are atomics shared with the registry, which
//! [`Endpoint::serve`] encodes on each scrape; the transport's counters are read from
//! [`TransportStats`] at the scrape itself. A node without `[metrics]` gets
//! [`Metrics::disabled`], whose recording does nothing (no clock read per entry).
//!
//! The exposition is OpenMetrics text (`prometheus-client`, the Prometheus project's own
//! Rust client), which Prometheus reads natively; names start with `coracle_` and every
//! series carries the node's id as label `node`.

use crate::rt::Runtime;
use crate::server::CoreNode;
use crate::storage::FileLog;
use crate::transport::TransportStats;
use coracle::{NodeId, Role};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How often at most the loop copies the core's state into the metrics: a scrape sees a
/// state at most this old (plus the time to the loop's next turn, at most a heartbeat on
/// a leader).
pub const OBSERVE_EVERY: Duration = Duration::from_millis(10);

/// Concurrent HTTP connections served at most; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;

/// The largest request head accepted (hyper's smallest read buffer); a larger one is
/// answered 431 and the connection closed.
pub const MAX_REQUEST_HEAD: usize = 8192;

/// Time a client has to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How a proposal (a client's write) ended, as counted in `coracle_proposals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposalOutcome {
    /// Appended to the leader's log (it may still be lost to a new leader).
    Accepted,
    /// Committed and applied.
    Committed,
    /// Lost to a new leader, or dropped when this node stopped leading (the client retries).
    Lost,
    /// This node does not lead (the client is redirected).
    NotLeader,
    /// Refused for now: too many uncommitted entries, a transfer under way, the log full.
    Busy,
    /// Refused for good: too large, or the store failed.
    Rejected,
}

impl ProposalOutcome {
    fn label(self) -> &'static str {
        match self {
            ProposalOutcome::Accepted => "accepted",
            ProposalOutcome::Committed => "committed",
            ProposalOutcome::Lost => "lost",
            ProposalOutcome::NotLeader => "not_leader",
            ProposalOutcome::Busy => "busy",
            ProposalOutcome::Rejected => "rejected",
        }
    }
}

/// How a read ended, as counted in `coracle_reads_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Served from this node's state without confirmation (stale read).
    Stale,
    /// Confirmed (ReadIndex or lease) and served.
    Served,
    /// Could not be confirmed (leadership changed): the client retries.
    Failed,
    /// Refused at once (not the leader, too many pending).
    Refused,
}

impl ReadOutcome {
    fn label(self) -> &'static str {
        match self {
            ReadOutcome::Stale => "stale",
            ReadOutcome::Served => "served",
            ReadOutcome::Failed => "failed",
            ReadOutcome::Refused => "refused",
        }
    }
}

type Label = [(&'static str, &'static str); 1];
type PeerLabel = [(&'static str, NodeId); 1];

const ROLES: [(Role, &str); 4] = [
    (Role::Follower, "follower"),
    (Role::PreCandidate, "pre_candidate"),
    (Role::Candidate, "candidate"),
    (Role::Leader, "leader"),
];

/// The metrics a node's loop records.
#[derive(Debug)]
pub struct Metrics {
    inner: Option<Box<Inner>>,
}

#[derive(Debug)]
struct Inner {
    last_observed: Option<Instant>,
    role: Family<Label, Gauge>,
    term: Gauge,
    leader: Gauge,
    commit: Gauge,
    applied: Gauge,
    last_index: Gauge,
    durable: Gauge,
    peer_match: Family<PeerLabel, Gauge>,
    peer_lag: Family<PeerLabel, Gauge>,
    peer_lag_bytes: Family<PeerLabel, Gauge>,
    peers_shown: Vec<NodeId>,
    proposals: Family<Label, Counter>,
    reads: Family<Label, Counter>,
    apply_seconds: Histogram,
    flush_seconds: Histogram,
    flush_batches: Histogram,
    flush_entries: Histogram,
    /// Batches and entries queued since the last flush began, and those of the running one.
    queued: (u64, u64),
    flushing: (u64, u64),
    snapshots: Counter,
    snapshot_bytes: Gauge,
    snapshot_seconds: Histogram,
    snapshots_restored: Counter,
    log_bytes: Gauge,
    storage_stalled: Gauge,
    elections_started: Counter,
    elections_won: Counter,
    stall_step_downs: Counter,
    check_quorum_step_downs: Counter,
    storage_errors: Counter,
}

impl Metrics {
    /// Metrics that record nothing (no `[metrics]` endpoint).
    pub fn disabled() -> Metrics {
        Metrics { inner: None }
    }

    /// Metrics of node `id`, registered (with the counters of `stats`, read at each
    /// scrape) in the registry returned with them.
    pub fn new(id: NodeId, stats: Arc<TransportStats>) -> (Metrics, Registry) {
        let mut r = Registry::with_prefix_and_labels(
            "coracle",
            [(Cow::Borrowed("node"), Cow::Owned(id.to_string()))].into_iter(),
        );
        let m = Inner {
            last_observed: None,
            role: Family::default(),
            term: Gauge::default(),
            leader: Gauge::default(),
            commit: Gauge::default(),
            applied: Gauge::default(),
            last_index: Gauge::default(),
            durable: Gauge::default(),
            peer_match: Family::default(),
            peer_lag: Family::default(),
            peer_lag_bytes: Family::default(),
            peers_shown: Vec::new(),
            proposals: Family::default(),
            reads: Family::default(),
            apply_seconds: Histogram::new(exponential_buckets(1e-6, 2.0, 20)),
            flush_seconds: Histogram::new(exponential_buckets(50e-6, 2.0, 16)),
            flush_batches: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            flush_entries: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            queued: (0, 0),
            flushing: (0, 0),
            snapshots: Counter::default(),
            snapshot_bytes: Gauge::default(),
            snapshot_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            snapshots_restored: Counter::default(),
            log_bytes: Gauge::default(),
            storage_stalled: Gauge::default(),
            elections_started: Counter::default(),
            elections_won: Counter::default(),
            stall_step_downs: Counter::default(),
            check_quorum_step_downs: Counter::default(),
            storage_errors: Counter::default(),
        };
        r.register(
            "role",
            "1 for the node's Raft role, 0 for the others",
            m.role.clone(),
        );
        r.register("term", "Current term", m.term.clone());
        r.register(
            "leader",
            "Id of the leader known in the current term (0: none)",
            m.leader.clone(),
        );
        r.register(
            "commit_index",
            "Highest log index known committed",
            m.commit.clone(),
        );
        r.register(
            "applied_index",
            "Highest log index applied to the state machine",
            m.applied.clone(),
        );
        r.register(
            "last_index",
            "Index of the last entry in the log",
            m.last_index.clone(),
        );
        r.register(
            "durable_index",
            "Highest log index known durable on this node's disk",
            m.durable.clone(),
        );
        r.register(
            "peer_match_index",
            "Leader only: highest index known replicated on each follower (matchIndex)",
            m.peer_match.clone(),
        );
        r.register(
            "peer_lag_entries",
            "Leader only: entries each follower lacks (last index - matchIndex)",
            m.peer_lag.clone(),
        );
        r.register(
            "peer_lag_bytes",
            "Leader only: bytes of log records each follower lacks (those after matchIndex)",
            m.peer_lag_bytes.clone(),
        );
        r.register("proposals", "Client writes by outcome", m.proposals.clone());
        r.register("reads", "Client reads by outcome", m.reads.clone());
        r.register(
            "apply_seconds",
            "Time to apply one committed entry to the state machine",
            m.apply_seconds.clone(),
        );
        r.register(
            "log_flush_seconds",
            "Time from handing a group commit to the fsync thread to its report",
            m.flush_seconds.clone(),
        );
        r.register(
            "log_flush_batches",
            "Write batches of the core made durable by one flush (group commit)",
            m.flush_batches.clone(),
        );
        r.register(
            "log_flush_entries",
            "Log entries made durable by one flush (group commit)",
            m.flush_entries.clone(),
        );
        r.register(
            "snapshots",
            "Snapshots of the state machine saved",
            m.snapshots.clone(),
        );
        r.register(
            "snapshot_bytes",
            "Size of the last snapshot saved",
            m.snapshot_bytes.clone(),
        );
        r.register(
            "snapshot_seconds",
            "Time to write out and seal a snapshot",
            m.snapshot_seconds.clone(),
        );
        r.register(
            "snapshots_restored",
            "State machine restores from a snapshot (installed from the leader or at start)",
            m.snapshots_restored.clone(),
        );
        r.register(
            "log_disk_bytes",
            "Bytes of the log's segments on disk",
            m.log_bytes.clone(),
        );
        r.register(
            "storage_stalled",
            "1 while a flush has run longer than storage.stall_timeout_ms",
            m.storage_stalled.clone(),
        );
        r.register(
            "elections_started",
            "Elections this node started as candidate",
            m.elections_started.clone(),
        );
        r.register(
            "elections_won",
            "Elections this node won",
            m.elections_won.clone(),
        );
        r.register(
            "storage_stall_step_downs",
            "Times this node stepped down because its disk stalled",
            m.stall_step_downs.clone(),
        );
        r.register(
            "check_quorum_step_downs",
            "Times this node stepped down as leader without contact with a quorum",
            m.check_quorum_step_downs.clone(),
        );
        r.register(
            "storage_errors",
            "Failed writes of the log reported to the core",
            m.storage_errors.clone(),
        );
        r.register_collector(Box::new(TransportCollector(stats)));
        (
            Metrics {
                inner: Some(Box::new(m)),
            },
            r,
        )
    }

    /// Copies the core's state and counters and the log's size, unless that was done less
    /// than [`OBSERVE_EVERY`] ago (`force`: regardless).
    pub fn observe(&mut self, node: &CoreNode, log: &FileLog, force: bool) {
        let Some(m) = &mut self.inner else { return };
        let now = Instant::now();
        if !force && m.last_observed.is_some_and(|t| now - t < OBSERVE_EVERY) {
            return;
        }
        m.last_observed = Some(now);
        for (role, name) in ROLES {
            m.role
                .get_or_create(&[("role", name)])
                .set(i64::from(node.role() == role));
        }
        let set = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&m.term, node.term());
        set(&m.leader, node.leader().unwrap_or(0));
        set(&m.commit, node.commit_index());
        set(&m.applied, node.applied_index());
        set(&m.last_index, node.last_index());
        set(&m.durable, node.durable_index());
        set(&m.log_bytes, log.disk_bytes());
        m.storage_stalled.set(i64::from(node.storage_stalled()));
        let c = node.counters();
        for (counter, v) in [
            (&m.elections_started, c.elections_started),
            (&m.elections_won, c.elections_won),
            (&m.stall_step_downs, c.storage_stall_step_downs),
            (&m.check_quorum_step_downs, c.check_quorum_step_downs),
            (&m.storage_errors, c.storage_errors),
        ] {
            counter.inner().store(v, Ordering::Relaxed);
        }
        // Progress is the leader's alone: a follower shows none (a series that stops is
        // how Prometheus tells that a node no longer leads).
        let last = node.last_index();
        let mut shown = Vec::new();
        if node.role() == Role::Leader {
            for peer in node.members().map(|p| p.id).filter(|&p| p != node.id()) {
                if let Some(p) = node.progress(peer) {
                    set(
                        &m.peer_match.get_or_create(&[("peer", peer)]),
                        p.match_index,
                    );
                    set(
                        &m.peer_lag.get_or_create(&[("peer", peer)]),
                        last.saturating_sub(p.match_index),
                    );
                    set(
                        &m.peer_lag_bytes.get_or_create(&[("peer", peer)]),
                        log.bytes_after(p.match_index),
                    );
                    shown.push(peer);
                }
            }
        }
        for gone in m.peers_shown.iter().filter(|p| !shown.contains(p)) {
            m.peer_match.remove(&[("peer", *gone)]);
            m.peer_lag.remove(&[("peer", *gone)]);
            m.peer_lag_bytes.remove(&[("peer", *gone)]);
        }
        m.peers_shown = shown;
    }

    /// A proposal ended (for now) with `outcome`; `n` of them.
    pub fn proposals(&self, outcome: ProposalOutcome, n: usize) {
        if let Some(m) = &self.inner {
            if n > 0 {
                m.proposals
                    .get_or_create(&[("outcome", outcome.label())])
                    .inc_by(n as u64);
            }
        }
    }

    /// A read ended with `outcome`.
    pub fn read(&self, outcome: ReadOutcome) {
        if let Some(m) = &self.inner {
            m.reads.get_or_create(&[("outcome", outcome.label())]).inc();
        }
    }

    /// When an entry's apply starts: the time if the figures are recorded (no clock read
    /// otherwise), for [`Metrics::applied`].
    pub fn apply_started(&self) -> Option<Instant> {
        self.inner.as_ref().map(|_| Instant::now())
    }

    /// The entry whose apply started at `started` ([`Metrics::apply_started`]) is applied.
    pub fn applied(&self, started: Option<Instant>) {
        if let (Some(m), Some(start)) = (&self.inner, started) {
            m.apply_seconds.observe(start.elapsed().as_secs_f64());
        }
    }

    /// A batch of `entries` entries was queued for the next flush.
    pub fn batch_queued(&mut self, entries: usize) {
        if let Some(m) = &mut self.inner {
            m.queued.0 += 1;
            m.queued.1 += entries as u64;
        }
    }

    /// A flush began: it covers what was queued since the last one.
    pub fn flush_began(&mut self) {
        if let Some(m) = &mut self.inner {
            m.flushing = std::mem::take(&mut m.queued);
        }
    }

    /// The flush that began `took` ago reported back.
    pub fn flush_ended(&mut self, took: Duration) {
        if let Some(m) = &mut self.inner {
            let (batches, entries) = std::mem::take(&mut m.flushing);
            m.flush_seconds.observe(took.as_secs_f64());
            m.flush_batches.observe(batches as f64);
            m.flush_entries.observe(entries as f64);
        }
    }

    /// A snapshot of `bytes` bytes was saved, `took` after it began.
    pub fn snapshot_saved(&self, bytes: u64, took: Duration) {
        if let Some(m) = &self.inner {
            m.snapshots.inc();
            m.snapshot_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            m.snapshot_seconds.observe(took.as_secs_f64());
        }
    }

    /// The state machine was restored from a snapshot.
    pub fn snapshot_restored(&self) {
        if let Some(m) = &self.inner {
            m.snapshots_restored.inc();
        }
    }
}

/// The transport's counters, read at each scrape.
#[derive(Debug)]
struct TransportCollector(Arc<TransportStats>);

impl Collector for TransportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let get = TransportStats::get;
        let counters = [
            (
                "malformed_frames",
                "Malformed frames, datagrams and client requests received",
                get(&s.malformed),
            ),
            (
                "reconnects",
                "Connections to a peer made again after an earlier one ended",
                get(&s.reconnects),
            ),
            (
                "peer_connections",
                "Connections established with other nodes",
                get(&s.connections),
            ),
            (
                "peer_dials",
                "Handshakes started to reach other nodes",
                get(&s.dials),
            ),
            (
                "client_connections",
                "Client connections accepted",
                get(&s.client_connections),
            ),
            (
                "handshakes_abandoned",
                "Handshakes the other side gave up",
                get(&s.handshakes_abandoned),
            ),
            (
                "stray_datagrams",
                "Datagrams to the node's port that are no QUIC packet for it",
                get(&s.stray_datagrams),
            ),
            (
                "dropped_frames",
                "Frames dropped on the send side (no connection, queue full)",
                get(&s.dropped),
            ),
            (
                "messages_received",
                "Raft messages received and handed to the node",
                get(&s.received),
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let refused = [
            ("tls", get(&s.refused_tls)),
            ("identity", get(&s.refused_identity)),
            ("incarnation", get(&s.refused_incarnation)),
        ];
        let metric = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "refused_connections",
            "Connections refused, by reason: TLS handshake (certificate, CA, ALPN), an identity not usable, a member back with another data directory",
            None,
            metric.metric_type(),
        )?;
        for (reason, value) in refused {
            ConstCounter::new(value).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}

/// The OpenMetrics text of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        warn!(error = %e, "cannot encode the metrics");
    }
    text
}

/// Why the metrics endpoint could not start.
#[derive(Debug)]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why it cannot be bound.
    pub source: std::io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot serve metrics on {} (metrics.listen): {}",
            self.addr, self.source
        )
    }
}

impl std::error::Error for BindError {}

/// The metrics endpoint's socket, bound (so a node whose address is taken does not start).
pub struct Endpoint {
    listener: std::net::TcpListener,
}

impl Endpoint {
    /// Binds `addr` (TCP).
    pub fn bind(addr: SocketAddr) -> Result<Endpoint, BindError> {
        let err = |source| BindError { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(Endpoint { listener })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `registry` on `runtime` until the task is dropped: `GET /metrics` (or `/`)
    /// gets the exposition, another path 404, another method 405; a request hyper cannot
    /// parse gets 400 (431 for a head over [`MAX_REQUEST_HEAD`]) and the connection is
    /// closed, as is one silent for [`HEADER_TIMEOUT`]. At most [`MAX_CONNECTIONS`] at once.
    /// A listener the runtime's reactor does not take ends the task with a warning.
    pub fn serve(self, registry: Arc<Registry>, runtime: &Runtime) -> crate::rt::Task<()> {
        let listener = Listener::on(self.listener, runtime);
        runtime.spawn(accept_loop(listener, registry, runtime.clone()))
    }
}

/// The endpoint's listener on the runtime's reactor.
enum Listener {
    Smol(smol::net::TcpListener),
    #[cfg(feature = "tokio")]
    Tokio(tokio::net::TcpListener),
}

/// An accepted connection on the runtime's reactor.
enum Stream {
    Smol(smol::net::TcpStream),
    #[cfg(feature = "tokio")]
    Tokio(tokio::net::TcpStream),
}

impl Listener {
    fn on(listener: std::net::TcpListener, runtime: &Runtime) -> std::io::Result<Listener> {
        match runtime {
            Runtime::Smol => smol::net::TcpListener::try_from(listener).map(Listener::Smol),
            #[cfg(feature = "tokio")]
            Runtime::Tokio(_) => runtime
                .enter(|| tokio::net::TcpListener::from_std(listener))
                .map(Listener::Tokio),
        }
    }

    async fn accept(&self) -> std::io::Result<(Stream, SocketAddr)> {
        match self {
            Listener::Smol(l) => l.accept().await.map(|(s, a)| (Stream::Smol(s), a)),
            #[cfg(feature = "tokio")]
            Listener::Tokio(l) => l.accept().await.map(|(s, a)| (Stream::Tokio(s), a)),
        }
    }
}

async fn accept_loop(
    listener: std::io::Result<Listener>,
    registry: Arc<Registry>,
    runtime: Runtime,
) {
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "metrics endpoint: the runtime cannot watch its socket; not serving");
            return;
        }
    };
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                warn!(error = %e, "metrics endpoint: accept failed");
                runtime.sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::Relaxed);
            debug!(%remote, "metrics endpoint: too many connections; closed");
            continue;
        }
        let registry = registry.clone();
        let open = open.clone();
        runtime.spawn_detached(async move {
            let served = match stream {
                Stream::Smol(s) => {
                    let io = smol_hyper::rt::FuturesIo::new(s);
                    serve_connection(io, smol_hyper::rt::SmolTimer::new(), registry).await
                }
                #[cfg(feature = "tokio")]
                Stream::Tokio(s) => {
                    let io = hyper_util::rt::TokioIo::new(s);
                    serve_connection(io, hyper_util::rt::TokioTimer::new(), registry).await
                }
            };
            if let Err(e) = served {
                debug!(%remote, error = %e, "metrics endpoint: connection ended");
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Serves one HTTP/1.1 connection (`io`, with `timer` for the header timeout).
async fn serve_connection<I, T>(io: I, timer: T, registry: Arc<Registry>) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    T: hyper::rt::Timer + Send + Sync + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let answer = respond(&req, &registry);
        async move { Ok::<_, std::convert::Infallible>(answer) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(timer)
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(io, service)
        .await
}

type Body = http_body_util::Full<bytes::Bytes>;

fn respond<B>(req: &hyper::Request<B>, registry: &Registry) -> hyper::Response<Body> {
    use hyper::{header, Method, StatusCode};
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = hyper::Response::new(Body::from(text));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if !matches!(req.uri().path(), "/metrics" | "/") {
        return plain(StatusCode::NOT_FOUND, "the metrics are at /metrics\n");
    }
    let mut r = hyper::Response::new(Body::from(encode(registry)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    r
}
