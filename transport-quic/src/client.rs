//! The client library of the replicated KV store (what `coracle kv` and `coracle admin`
//! use).
//!
//! A [`Client`] connects over QUIC with its client certificate to the nodes it is given,
//! and follows the leader: a node that cannot serve a request answers with the leader's
//! address, and the client goes there.
//!
//! Failover follows the cluster, not a client timeout. When a call has had no answer for
//! 100 ms ([`Client::with_probe_after`]), the client asks every node it knows who leads
//! (a status request on a stream of its own), and asks again every 15 ms while the node
//! waited on is silent: as soon as a node names a leader in a newer term (the one waited
//! on died, was paused, or was cut off from its peers and replaced), the call moves there.
//! A round of these questions waits 20 ms for the slower nodes once one answered, never
//! for a majority: a node that cannot answer does not hold the move up.
//! A leader that is alive but slow is waited for. After a "retry" answer or a failed
//! connection, the client asks the same way and goes to the leader named, else to the next
//! node, after a pause that grows from 10 to 300 ms, until the call's deadline
//! ([`Client::with_timeout`]). A read that any node serves ([`Consistency::Stale`]) moves
//! to a node that answers when the one waited on does not. A failed call says which nodes
//! it tried and what went wrong at the last ([`ClientError::Unavailable`]).
//!
//! Calls share one QUIC connection and one stream per node: each request is written with
//! an id and the call waits for the answer with that id, so concurrent calls on one
//! `Client` are in flight together (pipelined) and requests written together leave in the
//! same packets. A connection that is lost (the node stopped or restarted) is dialled again
//! in the background, with growing pauses, for 30 s at most: a redirect to that node later
//! (it may be the new leader after a planned restart) finds it ready rather than waiting
//! for a handshake. A connection that has received nothing for two keep-alive intervals
//! (1 s) is not used: QUIC would keep it until its idle timeout (3 s), although the node
//! died or, restarted, no longer knows it; a new one is dialled.
//!
//! Each `Client` has a UDP socket of its own; clients made by one [`ClientEndpoint`] share
//! its socket (each still with its own connections and session), as an application that
//! serves many users does.
//!
//! Writes are exactly-once: each gets a sequence number in the client's session, kept
//! across retries (at the same node or at a new leader), and the state machine applies a
//! `(session, seq)` pair at most once.
//! Reads are linearizable by default ([`Consistency::Linearizable`]).
//!
//! ```no_run
//! use coracle_quic::client::Client;
//! use coracle_quic::tls::Credentials;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let creds = Credentials::load("certs/ca.pem".as_ref(), "certs/client-alice.pem".as_ref(), "certs/client-alice.key".as_ref())?;
//! let client = Client::new(&creds, vec!["127.0.0.1:7001".parse()?])?;
//! smol::block_on(async {
//!     client.put("greeting", "hello").await?;
//!     // The value replaced, when it is wanted (it costs a copy on every replica).
//!     assert_eq!(client.put_returning_previous("greeting", "hi").await?, Some(b"hello".to_vec()));
//!     assert_eq!(client.get("greeting").await?, Some(b"hi".to_vec()));
//!     let (swapped, _) = client.cas("greeting", Some("hi"), Some("bye")).await?;
//!     assert!(swapped);
//!     Ok(())
//! })
//! # }
//! ```

use crate::backup::{BackupError, BackupHeader, BackupWriter};
use crate::certs::ANY_NODE_NAME;
use crate::protocol::{
    append_frame, AdminOp, Consistency, ErrorKind, NodeStatus, ReadOp, Request, Response,
    ResponseFrame, WriteOp, WriteOutcome, MAX_CLIENT_FRAME,
};
use crate::rt::Runtime;
use crate::tls::{self, Credentials, QuicSettings, TlsError};
use crate::transport::FrameReader;
use coracle::{Index, NodeId, Term};
use smol::channel::{self, Sender};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tracing::debug;

/// Why a client call failed.
#[derive(Debug)]
pub enum ClientError {
    /// The client's certificates are unusable.
    Tls(TlsError),
    /// The local endpoint could not be created.
    Io(std::io::Error),
    /// No node gave an answer the call could use before its deadline (or, for
    /// [`Client::attempt`], the one node asked did not).
    Unavailable {
        /// How long the call tried.
        after: Duration,
        /// The nodes it tried, in the order it first tried them.
        tried: Vec<SocketAddr>,
        /// What went wrong at the last node tried.
        last: Option<Failure>,
    },
    /// A node refused the request for good.
    Server {
        /// The node that refused it.
        node: SocketAddr,
        /// What kind of refusal.
        kind: ErrorKind,
        /// The node's explanation.
        message: String,
    },
    /// The answer does not fit the request.
    Protocol(String),
    /// No node address was given.
    NoNodes,
    /// The client's endpoint was closed ([`Client::close`], [`ClientEndpoint::close`]).
    Closed,
    /// A backup could not be written ([`Client::save_backup`]).
    Backup(BackupError),
    /// The runtime given cannot run a client ([`ClientEndpoint::new_on`]).
    Runtime(crate::rt::RuntimeError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Tls(e) => write!(f, "{e}"),
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Unavailable { after, tried, last } => {
                let after = Seconds(*after);
                match (tried.as_slice(), last) {
                    ([one], Some(last)) if last.node == *one => {
                        write!(f, "{one}: {} (gave up after {after})", last.cause)
                    }
                    _ => {
                        write!(f, "no node answered in time (gave up after {after}; tried ")?;
                        for (i, node) in tried.iter().enumerate() {
                            write!(f, "{}{node}", if i > 0 { ", " } else { "" })?;
                        }
                        match last {
                            Some(last) => write!(f, "); last, {last}"),
                            None => f.write_str(")"),
                        }
                    }
                }
            }
            ClientError::Closed => write!(f, "the client was closed"),
            ClientError::Runtime(e) => write!(f, "{e}"),
            ClientError::Server {
                node,
                kind,
                message,
            } => write!(f, "{node} refused the request: {kind:?}: {message}"),
            ClientError::Protocol(m) => write!(f, "unexpected answer: {m}"),
            ClientError::NoNodes => f.write_str("no node address given"),
            ClientError::Backup(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A duration shown in seconds with a tenth (`2.0 s`), or in milliseconds below one second.
struct Seconds(Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < Duration::from_secs(1) {
            write!(f, "{} ms", self.0.as_millis())
        } else {
            write!(f, "{:.1} s", self.0.as_secs_f64())
        }
    }
}

/// What went wrong at one node: the last problem a [`ClientError::Unavailable`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The node's address.
    pub node: SocketAddr,
    /// What happened there.
    pub cause: Cause,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.node, self.cause)
    }
}

/// Why an attempt at one node gave no answer the call could use.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// No connection could be made (the handshake was refused or failed).
    Connect(String),
    /// No handshake within the connect timeout ([`Client::with_connect_timeout`]).
    ConnectTimeout(Duration),
    /// The connection or its stream broke before the answer came.
    ConnectionLost(String),
    /// No answer within the attempt timeout ([`Client::with_attempt_timeout`]).
    NoAnswer(Duration),
    /// No answer, and another node named a newer leader, where the call went on.
    Replaced {
        /// How long the call waited.
        waited: Duration,
        /// The leader named.
        by: SocketAddr,
    },
    /// The node asked for a retry (no leader known, leadership changed, busy).
    Retry(String),
    /// The node is not the leader and knows no leader's address.
    NoLeader {
        /// The leader it named, if any.
        named: Option<NodeId>,
    },
    /// The node redirected the call to a node that redirected it on, again and again.
    RedirectLoop(SocketAddr),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Connect(e) => write!(f, "cannot connect: {e}"),
            Cause::ConnectTimeout(d) => write!(f, "no handshake within {}", Seconds(*d)),
            Cause::ConnectionLost(e) => write!(f, "connection lost: {e}"),
            Cause::NoAnswer(d) => write!(f, "no answer within {}", Seconds(*d)),
            Cause::Replaced { waited, by } => write!(
                f,
                "no answer within {}, and {by} leads now",
                Seconds(*waited)
            ),
            Cause::Retry(m) => write!(f, "answered \"{m}\""),
            Cause::NoLeader { named: Some(id) } => {
                write!(f, "names node {id} as leader, without its address")
            }
            Cause::NoLeader { named: None } => f.write_str("knows no leader"),
            Cause::RedirectLoop(to) => write!(f, "redirects to {to}, which redirects on"),
        }
    }
}

/// Why an attempt ended without an answer: a problem at the node (the call may go on
/// elsewhere), or one that ends the call.
enum Miss {
    At(Cause),
    Fatal(ClientError),
}

impl From<Cause> for Miss {
    fn from(c: Cause) -> Miss {
        Miss::At(c)
    }
}

/// A UDP socket and a client identity (certificate) for any number of [`Client`]s: each
/// keeps its own connection and exactly-once session, and the datagrams of all go through
/// the one socket, received in batches. 64 clients with a connection each wrote 27 300-27 900
/// writes/s through one endpoint against 23 800-24 600 with a socket each (`coracle bench`,
/// which uses one). Cheap to clone (a handle).
#[derive(Clone)]
pub struct ClientEndpoint {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    /// What the endpoint, its clients' tasks and their timers run on.
    runtime: Runtime,
}

impl fmt::Debug for ClientEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientEndpoint")
            .field("local", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl ClientEndpoint {
    /// An endpoint that presents `creds`, on a UDP socket bound to `bind` (port 0: any),
    /// on smol.
    pub fn new(creds: &Credentials, bind: SocketAddr) -> Result<ClientEndpoint, ClientError> {
        ClientEndpoint::new_on(creds, bind, Runtime::Smol)
    }

    /// [`new`](Self::new) on `runtime` (see [`crate::rt`]): the endpoint, its clients'
    /// tasks and timers run there.
    pub fn new_on(
        creds: &Credentials,
        bind: SocketAddr,
        runtime: Runtime,
    ) -> Result<ClientEndpoint, ClientError> {
        runtime.check().map_err(ClientError::Runtime)?;
        let config =
            tls::client_config(creds, &QuicSettings::default()).map_err(ClientError::Tls)?;
        let socket = crate::transport::bind_udp(bind).map_err(ClientError::Io)?;
        let socket = runtime.wrap_udp_socket(socket).map_err(ClientError::Io)?;
        let endpoint = runtime
            .endpoint(tls::endpoint_config(), None, socket)
            .map_err(ClientError::Io)?;
        Ok(ClientEndpoint {
            endpoint,
            config,
            runtime,
        })
    }

    /// An endpoint on any port of the unspecified address (IPv4 or IPv6) of the first of
    /// `nodes`'s family, on smol.
    pub fn for_nodes(creds: &Credentials, nodes: &[SocketAddr]) -> Result<Self, ClientError> {
        ClientEndpoint::for_nodes_on(creds, nodes, Runtime::Smol)
    }

    /// [`for_nodes`](Self::for_nodes) on `runtime`.
    pub fn for_nodes_on(
        creds: &Credentials,
        nodes: &[SocketAddr],
        runtime: Runtime,
    ) -> Result<Self, ClientError> {
        let bind: SocketAddr = match nodes.first().ok_or(ClientError::NoNodes)? {
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        ClientEndpoint::new_on(creds, bind, runtime)
    }

    /// A client on this endpoint that knows the nodes at `nodes` (see [`Client::new`]).
    /// Its [`close`](Client::close) closes its own connections only (a later call connects
    /// again).
    pub fn client(&self, nodes: Vec<SocketAddr>) -> Result<Client, ClientError> {
        Client::on(self.clone(), false, nodes)
    }

    /// Closes the connections of every client on this endpoint.
    pub fn close(&self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"bye");
    }
}

/// A call with no answer after this long asks the nodes who leads ([`Client::with_probe_after`]).
pub const DEFAULT_PROBE_AFTER: Duration = Duration::from_millis(100);
/// Rounds of "who leads?" of one client are at least this far apart.
const PROBE_INTERVAL: Duration = Duration::from_millis(15);
/// While the node a call waits on answers the probes (it lives and leads still), they slow
/// down to one round per this long.
const PROBE_INTERVAL_ALIVE: Duration = Duration::from_millis(200);
/// Once a node answered a round, the others get this much longer.
const ROUND_GRACE: Duration = Duration::from_millis(20);
/// A round of probes lasts this long at most.
const ROUND_LIMIT: Duration = Duration::from_millis(250);
/// The pause after a failed attempt, doubled after each one up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(300);

/// A connection to the cluster, shared by concurrent calls (`&self` methods).
pub struct Client {
    endpoint: ClientEndpoint,
    /// The endpoint is this client's alone (`Client::new`): `close` closes it.
    own_endpoint: bool,
    /// The nodes known: those given, then the leaders found through them that answered.
    nodes: Mutex<Vec<SocketAddr>>,
    /// A connection and its request stream per node, made when first needed (and made
    /// again in the background when one is lost: see [`redial`]).
    sessions: Arc<Sessions>,
    /// One gate per node address, held while a connection to it is being made (see
    /// `session_with`).
    gates: Mutex<HashMap<SocketAddr, Arc<Gate>>>,
    /// What the client knows of who leads.
    view: Mutex<View>,
    /// Held during a round of "who leads?" (one at a time); when the last one ended.
    asking: smol::lock::Mutex<Option<Instant>>,
    cursor: AtomicUsize,
    session: u64,
    next_seq: AtomicU64,
    outstanding: Mutex<BTreeSet<u64>>,
    timeout: Duration,
    attempt_timeout: Duration,
    connect_timeout: Duration,
    probe_after: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("nodes", &*lock(&self.nodes))
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// What a client knows of the cluster's leadership.
#[derive(Default)]
struct View {
    /// The highest term a node reported.
    term: Term,
    /// The leader: the one a node named in that term, or the node that last served a
    /// request only a leader serves.
    leader: Option<SocketAddr>,
    /// The node that last answered (where requests that any node serves go).
    last_answered: Option<SocketAddr>,
    /// Where each node answered, by its id.
    ids: HashMap<NodeId, SocketAddr>,
    /// The nodes that answered the last round of probes.
    alive: Vec<SocketAddr>,
    /// When the last round of probes ended.
    asked: Option<Instant>,
    /// Nodes that said they do not lead in `term`.
    not_leading: Vec<SocketAddr>,
    /// Counts the changes of `leader`.
    changes: u64,
}

impl View {
    /// Takes in the status the node at `from` reported. A higher term replaces what was
    /// known; in the newest term, a node that says it leads is the leader, and a leader
    /// another node names is too unless it said itself that it does not lead (a leader
    /// that stepped down, say for want of a quorum, never leads that term again; the
    /// others name it until they hear of the next term). An older term says nothing about
    /// who leads now.
    fn learn(&mut self, from: SocketAddr, s: &NodeStatus) {
        self.ids.insert(s.id, from);
        if s.term < self.term {
            return;
        }
        if s.term > self.term {
            self.term = s.term;
            self.set_leader(None);
            self.not_leading.clear();
        }
        if s.leader == Some(s.id) {
            self.not_leading.retain(|&a| a != from);
            self.set_leader(Some(from));
            return;
        }
        if !self.not_leading.contains(&from) {
            self.not_leading.push(from);
        }
        if self.leader == Some(from) {
            self.set_leader(None);
        }
        let named = s.leader.and_then(|id| {
            self.ids.get(&id).copied().or_else(|| {
                let member = s.members.iter().find(|m| m.id == id)?;
                member.addr.as_deref().and_then(node_addr)
            })
        });
        if let Some(named) = named.filter(|a| !self.not_leading.contains(a)) {
            // A term has one leader at most: this one, whatever a node that answered a
            // request (whose term is not known) made the client believe.
            self.set_leader(Some(named));
        }
    }

    fn set_leader(&mut self, leader: Option<SocketAddr>) {
        if self.leader != leader {
            self.leader = leader;
            self.changes += 1;
        }
    }
}

/// A node's address as a node reports it (`ip:port`), unless it cannot be dialled (a
/// listen address such as `0.0.0.0:7001`).
fn node_addr(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
}

/// Who may serve a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServedBy {
    /// The leader only (writes, linearizable and lease reads, membership changes).
    Leader,
    /// Any node (stale reads).
    AnyNode,
    /// The node it is sent to, by its nature (status, fault injection).
    ThisNode,
}

impl ServedBy {
    fn of(request: &Request) -> ServedBy {
        match request {
            Request::Read {
                consistency: Consistency::Stale,
                ..
            } => ServedBy::AnyNode,
            Request::Status | Request::Admin(AdminOp::Isolate { .. }) => ServedBy::ThisNode,
            Request::Write { .. } | Request::Read { .. } | Request::Admin(_) => ServedBy::Leader,
        }
    }
}

/// How a watched attempt ended.
enum Watched {
    /// The node answered.
    Answer(Response),
    /// The node did not answer in time and another node leads now (or, for a request any
    /// node serves, answers where it does not).
    Moved(SocketAddr),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// A client that presents `creds` and knows the nodes at `nodes` (one is enough to
    /// reach the leader, which it then knows too; give every node so that the client can
    /// ask the others who leads when one fails). A random session id is chosen.
    /// It runs on smol; [`new_on`](Self::new_on) runs it on another runtime.
    pub fn new(creds: &Credentials, nodes: Vec<SocketAddr>) -> Result<Client, ClientError> {
        Client::new_on(creds, nodes, Runtime::Smol)
    }

    /// [`new`](Self::new) on `runtime` (see [`crate::rt`]).
    pub fn new_on(
        creds: &Credentials,
        nodes: Vec<SocketAddr>,
        runtime: Runtime,
    ) -> Result<Client, ClientError> {
        Client::on(
            ClientEndpoint::for_nodes_on(creds, &nodes, runtime)?,
            true,
            nodes,
        )
    }

    fn on(
        endpoint: ClientEndpoint,
        own_endpoint: bool,
        mut nodes: Vec<SocketAddr>,
    ) -> Result<Client, ClientError> {
        if nodes.is_empty() {
            return Err(ClientError::NoNodes);
        }
        let mut seen = std::collections::HashSet::new();
        nodes.retain(|a| seen.insert(*a));
        Ok(Client {
            endpoint,
            own_endpoint,
            nodes: Mutex::new(nodes),
            sessions: Arc::new(Sessions::default()),
            gates: Mutex::new(HashMap::new()),
            view: Mutex::new(View::default()),
            asking: smol::lock::Mutex::new(None),
            cursor: AtomicUsize::new(0),
            session: crate::random_u64(),
            next_seq: AtomicU64::new(1),
            outstanding: Mutex::new(BTreeSet::new()),
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            probe_after: DEFAULT_PROBE_AFTER,
        })
    }

    /// Gives up on a call after `timeout` (default 10 s), retries included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Gives up on an attempt at one node after `timeout` (default 2 s) when no other
    /// node names a new leader meanwhile, and tries again (there, or at the next node).
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Gives up connecting to a node after `timeout` (default 500 ms) and tries the next.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// When a call has no answer after `delay` (default [`DEFAULT_PROBE_AFTER`], 100 ms),
    /// the client asks every node it knows who leads (a status request on a stream of its
    /// own), every 15 ms while the node waited on is silent and less and less often (down
    /// to every 200 ms) while it answers: once a node names a newer leader, the call moves
    /// there (a write keeps its sequence number); a request any node serves (a stale read)
    /// moves to a node that answers. The probes are shared by the client's calls: one
    /// round at a time.
    pub fn with_probe_after(mut self, delay: Duration) -> Self {
        self.probe_after = delay;
        self
    }

    /// This client's session id (deduplication of writes).
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Sets `key` to `value`. The cheap put: the node neither keeps nor sends back the
    /// value the key had; [`put_returning_previous`](Self::put_returning_previous) does.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.put_op(key.into(), value.into(), false)
            .await
            .map(|_| ())
    }

    /// Sets `key` to `value` and returns the value it had (`None`: it had none), as etcd's
    /// `prev_kv`. Costs more than [`put`](Self::put): the node copies the previous value
    /// into the write's outcome, keeps it until this client acknowledges the write, and
    /// sends it back. A retry of the write returns the same value.
    pub async fn put_returning_previous(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        self.put_op(key.into(), value.into(), true).await
    }

    async fn put_op(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        return_previous: bool,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let op = WriteOp::Put {
            key,
            value,
            return_previous,
        };
        match self.write(op).await? {
            (WriteOutcome::Done { previous }, _) => Ok(previous),
            (other, _) => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Removes `key` (nothing happens if it is absent). The value it had is neither kept
    /// nor sent back; [`delete_returning_previous`](Self::delete_returning_previous)
    /// returns it.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        self.delete_op(key.into(), false).await.map(|_| ())
    }

    /// Removes `key` and returns the value it had (`None`: it was absent), as etcd's
    /// `prev_kv`. A retry of the write returns the same value.
    pub async fn delete_returning_previous(
        &self,
        key: impl Into<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        self.delete_op(key.into(), true).await
    }

    async fn delete_op(
        &self,
        key: Vec<u8>,
        return_previous: bool,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let op = WriteOp::Delete {
            key,
            return_previous,
        };
        match self.write(op).await? {
            (WriteOutcome::Done { previous }, _) => Ok(previous),
            (other, _) => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Sets `key` to `new` (removes it if `None`) if its value is `expected` (absent if
    /// `None`). Returns whether it swapped, and the value found.
    pub async fn cas(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Option<impl Into<Vec<u8>>>,
        new: Option<impl Into<Vec<u8>>>,
    ) -> Result<(bool, Option<Vec<u8>>), ClientError> {
        let op = WriteOp::Cas {
            key: key.into(),
            expected: expected.map(Into::into),
            new: new.map(Into::into),
        };
        match self.write(op).await? {
            (WriteOutcome::Cas { swapped, current }, _) => Ok((swapped, current)),
            (other, _) => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Runs a write exactly once (retries keep its sequence number); its outcome and log
    /// index.
    pub async fn write(&self, op: WriteOp) -> Result<(WriteOutcome, Index), ClientError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let ack_below = {
            let mut out = lock(&self.outstanding);
            out.insert(seq);
            out.first().copied().unwrap_or(seq)
        };
        let request = Request::Write {
            client: self.session,
            seq,
            ack_below,
            op,
        };
        let result = self.call(&request).await;
        lock(&self.outstanding).remove(&seq);
        match result? {
            Response::Written { outcome, index } => Ok((outcome, index)),
            other => Err(unexpected(other)),
        }
    }

    /// The value of `key`, linearizable.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, ClientError> {
        self.get_with(key, Consistency::Linearizable).await
    }

    /// The value of `key` with the given consistency.
    pub async fn get_with(
        &self,
        key: impl Into<Vec<u8>>,
        consistency: Consistency,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let request = Request::Read {
            op: ReadOp::Get { key: key.into() },
            consistency,
        };
        match self.call(&request).await? {
            Response::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Up to `limit` pairs whose key starts with `prefix`, in key order.
    pub async fn list(
        &self,
        prefix: impl Into<Vec<u8>>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        let request = Request::Read {
            op: ReadOp::List {
                prefix: prefix.into(),
                limit,
            },
            consistency,
        };
        match self.call(&request).await? {
            Response::Pairs(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// The status of the node at `addr` (no redirect).
    pub async fn status_of(&self, addr: SocketAddr) -> Result<NodeStatus, ClientError> {
        match self.attempt(addr, &Request::Status).await? {
            Response::Status(s) => Ok(s),
            Response::Error { kind, message } => Err(ClientError::Server {
                node: addr,
                kind,
                message,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// The status of each node at `nodes`, asked all at once (a silent node holds up
    /// only its own answer), in the order given.
    pub async fn statuses(&self, nodes: &[SocketAddr]) -> Vec<Result<NodeStatus, ClientError>> {
        let asks = nodes.iter().map(|&a| self.status_of(a)).collect();
        gather(asks, |_, _| false)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The node this client takes for the leader (where requests only a leader serves go
    /// first), if any: named by a node in the newest term it heard of, or the node that
    /// served such a request and did not name another.
    pub fn leader(&self) -> Option<SocketAddr> {
        lock(&self.view).leader
    }

    /// Runs an admin operation on the leader (needs an admin certificate).
    pub async fn admin(&self, op: AdminOp) -> Result<(), ClientError> {
        match self.call(&Request::Admin(op)).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Saves a consistent backup of the cluster's store into the file `path`
    /// ([`crate::backup`]; needs an admin certificate): asked of the leader the client
    /// knows (else a node in turn), on a stream of its own, and written as its chunks come
    /// ([`BackupWriter`]: into `path.tmp`, renamed over `path` once whole and fsynced), so
    /// a state of any size is saved. A node that cannot take it (no leader to confirm the
    /// read, a snapshot that failed) or a connection lost midway makes the client start
    /// over at another node until the client's timeout ([`with_timeout`](Self::with_timeout))
    /// has passed; the transfer itself may take longer, as long as no answer is late by
    /// more than that timeout. Returns the backup's header.
    pub async fn save_backup(&self, path: &Path) -> Result<BackupHeader, ClientError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut avoid = None;
        let mut backoff = MIN_BACKOFF;
        loop {
            let addr = self.pick(ServedBy::Leader, avoid);
            if !tried.contains(&addr) {
                tried.push(addr);
            }
            let cause = match self.backup_at(addr, path).await {
                Ok(header) => {
                    // Any node serves a backup (its read confirmed by the leader).
                    let _ = self.answered(addr, ServedBy::AnyNode);
                    return Ok(header);
                }
                Err(Miss::Fatal(e)) => return Err(e),
                Err(Miss::At(cause)) => cause,
            };
            debug!(at = %addr, %cause, "backup goes on elsewhere");
            self.doubt(addr);
            avoid = Some(addr);
            if Instant::now() + backoff >= deadline {
                return Err(ClientError::Unavailable {
                    after: started.elapsed(),
                    tried,
                    last: Some(Failure { node: addr, cause }),
                });
            }
            self.endpoint.runtime.timer_after(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt of [`save_backup`](Self::save_backup) at the node at `addr`.
    async fn backup_at(&self, addr: SocketAddr, path: &Path) -> Result<BackupHeader, Miss> {
        let session = self.session_with(addr).await?;
        let lost = |e: &dyn fmt::Display| Miss::At(Cause::ConnectionLost(e.to_string()));
        let (mut send, recv) = session.conn.open_bi().await.map_err(|e| lost(&e))?;
        let mut frame = Vec::new();
        append_frame(&mut frame, &(1u64, &Request::Admin(AdminOp::BackupStream)))
            .map_err(|e| Miss::Fatal(ClientError::Protocol(e.to_string())))?;
        send.write_all(&frame).await.map_err(|e| lost(&e))?;
        let _ = send.finish();
        let mut frames = FrameReader::new(recv);
        let timeout = self.timeout;
        let refused = |kind, message| match kind {
            ErrorKind::Retry => Miss::At(Cause::Retry(message)),
            kind => Miss::Fatal(ClientError::Server {
                node: addr,
                kind,
                message,
            }),
        };
        let header = match next_answer(&mut frames, timeout, &self.endpoint.runtime).await? {
            Response::BackupBegin(header) => header,
            Response::Error { kind, message } => return Err(refused(kind, message)),
            other => return Err(Miss::Fatal(unexpected(other))),
        };
        let fatal = |e| Miss::Fatal(ClientError::Backup(e));
        let (target, h) = (path.to_path_buf(), header.clone());
        let mut writer = smol::unblock(move || BackupWriter::create(&target, &h))
            .await
            .map_err(fatal)?;
        loop {
            match next_answer(&mut frames, timeout, &self.endpoint.runtime).await? {
                Response::BackupChunk(chunk) => {
                    // File writes on the blocking pool: the caller's executor goes on.
                    writer = smol::unblock(move || writer.write_all(&chunk).map(|()| writer))
                        .await
                        .map_err(|e| {
                            fatal(BackupError::Io {
                                path: path.to_path_buf(),
                                op: "write",
                                source: e,
                            })
                        })?;
                }
                Response::BackupEnd { state_crc } => {
                    if writer.state_crc() != state_crc {
                        return Err(fatal(BackupError::Incomplete(format!(
                            "the state received does not match the checksum {addr} sent"
                        ))));
                    }
                    smol::unblock(move || writer.finish())
                        .await
                        .map_err(fatal)?;
                    return Ok(header);
                }
                Response::Error { kind, message } => return Err(refused(kind, message)),
                other => return Err(Miss::Fatal(unexpected(other))),
            }
        }
    }

    /// Sends `request` until an answer other than a redirect or "retry" comes, or the
    /// timeout passes: to the leader the client knows (else a node in turn), following
    /// redirects, moving to a newer leader when the node waited on is silent and another
    /// names one ([`with_probe_after`](Self::with_probe_after)), and after a "retry" or a
    /// failed connection to the leader the nodes name, or the next node, after a pause that
    /// grows from 10 to 300 ms. A write sent twice this way with the same session and
    /// sequence number is applied once.
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let served = ServedBy::of(request);
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last: Option<Failure> = None;
        let unavailable =
            |tried: &Vec<SocketAddr>, last: &Option<Failure>| ClientError::Unavailable {
                after: started.elapsed(),
                tried: tried.clone(),
                last: last.clone(),
            };
        let mut target: Option<SocketAddr> = None;
        let mut avoid: Option<SocketAddr> = None;
        let mut backoff = MIN_BACKOFF;
        let mut redirects = 0;
        loop {
            if !tried.is_empty() && Instant::now() >= deadline {
                return Err(unavailable(&tried, &last));
            }
            // Named as the leader by a node (a redirect, a move, a round of "who leads?").
            let named = target.is_some();
            let addr = match target.take() {
                Some(a) => a,
                None => self.pick(served, avoid),
            };
            if !tried.contains(&addr) {
                tried.push(addr);
            }
            let since = Instant::now();
            let cause = match self.watched_attempt(addr, request, served, deadline).await {
                Ok(Watched::Answer(Response::Redirect { leader, addr: to })) => {
                    let to = to
                        .as_deref()
                        .and_then(node_addr)
                        .or_else(|| leader.and_then(|id| lock(&self.view).ids.get(&id).copied()));
                    match to {
                        Some(to) if to != addr && redirects <= lock(&self.nodes).len() => {
                            debug!(from = %addr, to = %to, "call redirected");
                            redirects += 1;
                            target = Some(to);
                            continue;
                        }
                        Some(to) if to != addr => Cause::RedirectLoop(to),
                        _ => Cause::NoLeader { named: leader },
                    }
                }
                Ok(Watched::Answer(Response::Error {
                    kind: ErrorKind::Retry,
                    message,
                })) => Cause::Retry(message),
                Ok(Watched::Answer(Response::Error { kind, message })) => {
                    return Err(ClientError::Server {
                        node: addr,
                        kind,
                        message,
                    })
                }
                Ok(Watched::Answer(answer)) => {
                    if self.answered(addr, served) && !named {
                        // A follower forwards what only a leader serves, so an answer
                        // does not show that `addr` leads: ask it, so that the next
                        // requests go straight to the leader it names (once per change
                        // of the leader taken; forwarding costs the cluster a hop).
                        self.check_leader(addr).await;
                    }
                    return Ok(answer);
                }
                Ok(Watched::Moved(to)) => {
                    debug!(from = %addr, to = %to, waited = ?since.elapsed(), "call moved: another node leads");
                    self.doubt(addr);
                    let cause = Cause::Replaced {
                        waited: since.elapsed(),
                        by: to,
                    };
                    if redirects > lock(&self.nodes).len() {
                        cause // moved and redirected in circles: pause first
                    } else {
                        redirects += 1;
                        last = Some(Failure { node: addr, cause });
                        target = Some(to);
                        continue;
                    }
                }
                Err(Miss::Fatal(e)) => return Err(e),
                // Cut short by the deadline: what went wrong before says more.
                Err(Miss::At(Cause::NoAnswer(_)))
                    if last.is_some() && Instant::now() >= deadline =>
                {
                    return Err(unavailable(&tried, &last))
                }
                Err(Miss::At(cause)) => cause,
            };
            redirects = 0;
            self.doubt(addr);
            last = Some(Failure { node: addr, cause });
            avoid = Some(addr);
            let now = Instant::now();
            if now >= deadline {
                return Err(unavailable(&tried, &last));
            }
            target = self
                .await_leader(addr, served, (now + backoff).min(deadline))
                .await;
            debug!(at = %addr, cause = %last.as_ref().map_or(String::new(), |l| l.cause.to_string()), next = ?target, after = ?now.elapsed(), "call goes on");
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt of `request` at the node at `addr`: no redirect, no retry, no move to
    /// another node; fails after the attempt timeout.
    pub async fn attempt(
        &self,
        addr: SocketAddr,
        request: &Request,
    ) -> Result<Response, ClientError> {
        let started = Instant::now();
        let timeout = self.attempt_timeout;
        let work = async { self.session_with(addr).await?.call(request).await };
        let result = smol::future::or(work, async {
            self.endpoint.runtime.timer_after(timeout).await;
            Err(Miss::At(Cause::NoAnswer(timeout)))
        })
        .await;
        result.map_err(|miss| match miss {
            Miss::Fatal(e) => e,
            Miss::At(cause) => ClientError::Unavailable {
                after: started.elapsed(),
                tried: vec![addr],
                last: Some(Failure { node: addr, cause }),
            },
        })
    }

    /// An attempt at `addr` that gives up at the attempt timeout (or the call's
    /// `deadline`), watched meanwhile ([`watch`](Self::watch)).
    async fn watched_attempt(
        &self,
        addr: SocketAddr,
        request: &Request,
        served: ServedBy,
        deadline: Instant,
    ) -> Result<Watched, Miss> {
        let since = Instant::now();
        let end = (since + self.attempt_timeout).min(deadline);
        let work = async {
            let session = self.session_with(addr).await?;
            session.call(request).await.map(Watched::Answer)
        };
        let watch = async {
            match self.watch(addr, served, since, end).await {
                Ok(to) => Ok(Watched::Moved(to)),
                Err(cause) => Err(Miss::At(cause)),
            }
        };
        smol::future::or(work, watch).await
    }

    /// Watches an attempt at `addr` that started at `since`: once it has waited the probe
    /// delay (at once if a failover is under way), asks the nodes who leads,
    /// again and again, until another node leads (or, for a request any node serves,
    /// `addr` is silent and another node answers): then that node. Fails with
    /// [`Cause::NoAnswer`] at `end`.
    async fn watch(
        &self,
        addr: SocketAddr,
        served: ServedBy,
        since: Instant,
        end: Instant,
    ) -> Result<SocketAddr, Cause> {
        let no_answer = || Cause::NoAnswer(end.saturating_duration_since(since));
        if served == ServedBy::ThisNode {
            self.endpoint.runtime.timer_at(end).await;
            return Err(no_answer());
        }
        // At once while a failover is under way: the client asked lately, and did not
        // find `addr` leading (or answering, for a request any node serves).
        let under_way = {
            let v = lock(&self.view);
            let fine = match served {
                ServedBy::AnyNode => v.alive.contains(&addr),
                _ => v.leader == Some(addr),
            };
            !fine && v.asked.is_some_and(|t| t.elapsed() <= self.probe_after)
        };
        if !under_way {
            self.endpoint
                .runtime
                .timer_at((since + self.probe_after).min(end))
                .await;
        }
        let mut interval = PROBE_INTERVAL;
        loop {
            if Instant::now() >= end {
                return Err(no_answer());
            }
            let alive = self
                .ask_who_leads(Some(addr), served == ServedBy::AnyNode, end)
                .await;
            if let Some(to) = self.better_than(addr, served) {
                return Ok(to);
            }
            interval = if alive {
                (interval * 2).min(PROBE_INTERVAL_ALIVE)
            } else {
                PROBE_INTERVAL
            };
            self.endpoint
                .runtime
                .timer_at((Instant::now() + interval).min(end))
                .await;
        }
    }

    /// After a failure at `left`: waits until `until` for the nodes to name a leader (for
    /// a request a leader serves), asking them every 15 ms while they name none. Returns
    /// at once a leader other than `left`, or `left` itself if the nodes named it anew
    /// (say, in a new term); `left` at `until` if they name it as they did before.
    async fn await_leader(
        &self,
        left: SocketAddr,
        served: ServedBy,
        until: Instant,
    ) -> Option<SocketAddr> {
        if served != ServedBy::Leader {
            self.endpoint.runtime.timer_at(until).await;
            return None;
        }
        let before = lock(&self.view).changes;
        loop {
            self.ask_who_leads(None, false, until).await;
            let (leader, changes) = {
                let v = lock(&self.view);
                (v.leader, v.changes)
            };
            match leader {
                Some(l) if l != left || changes != before => return Some(l),
                Some(l) => {
                    self.endpoint.runtime.timer_at(until).await;
                    return Some(l);
                }
                None if Instant::now() >= until => return None,
                None => {
                    self.endpoint
                        .runtime
                        .timer_at((Instant::now() + PROBE_INTERVAL).min(until))
                        .await
                }
            };
        }
    }

    /// A round of "who leads?": a status request to every node known, all at once, on
    /// streams of their own. The round ends when every node answered or failed; when
    /// every node but `suspect` did, unless `wait_for_suspect` (the suspect's answer
    /// matters only for a request any node serves, and a dead one never comes); as soon
    /// as an answer names a leader other than `suspect`; 20 ms after the first node
    /// answered or failed; or after 250 ms (or at `until`). A node that cannot answer
    /// (dead, paused, or reached through a stale connection of its previous run) never
    /// holds a round beyond those 20 ms: the next round asks again 15 ms later, and
    /// answers come in the newest term ([`View::learn`]), so one answer is enough to
    /// move on. A round that ended less than 15 ms ago stands for a new one, and calls
    /// that ask during a round wait for it. True if `suspect` answered the last round.
    async fn ask_who_leads(
        &self,
        suspect: Option<SocketAddr>,
        wait_for_suspect: bool,
        until: Instant,
    ) -> bool {
        let mut last = self.asking.lock().await;
        if last.is_none_or(|t| t.elapsed() >= PROBE_INTERVAL) {
            let began = Instant::now();
            let nodes = lock(&self.nodes).clone();
            let mut end = self
                .endpoint
                .runtime
                .timer_at(until.min(Instant::now() + ROUND_LIMIT));
            let mut grace: Option<crate::rt::Timer> = None;
            let probes = nodes.iter().map(|&a| self.probe(a)).collect();
            let answers = gather(probes, |finished, cx| {
                if Pin::new(&mut end).poll(cx).is_ready() {
                    return true;
                }
                let others_done = !wait_for_suspect
                    && nodes
                        .iter()
                        .zip(finished)
                        .all(|(&a, &done)| done || Some(a) == suspect);
                if others_done || (!wait_for_suspect && self.names_other_leader(suspect)) {
                    return true;
                }
                if !finished.contains(&true) {
                    return false;
                }
                let grace =
                    grace.get_or_insert_with(|| self.endpoint.runtime.timer_after(ROUND_GRACE));
                Pin::new(grace).poll(cx).is_ready()
            })
            .await;
            let now = Instant::now();
            let mut view = lock(&self.view);
            view.alive = answers.into_iter().flatten().flatten().collect();
            debug!(term = view.term, leader = ?view.leader, alive = ?view.alive, took = ?now - began, "asked who leads");
            view.asked = Some(now);
            *last = Some(now);
        }
        suspect.is_some_and(|s| lock(&self.view).alive.contains(&s))
    }

    /// A call waits on `suspect`, and the client now knows another leader (named in the
    /// newest term an answer reported: [`View::learn`]).
    fn names_other_leader(&self, suspect: Option<SocketAddr>) -> bool {
        suspect.is_some() && lock(&self.view).leader.is_some_and(|l| Some(l) != suspect)
    }

    /// Asks the node at `addr` for its status and takes in what it says; its address if
    /// it answered.
    async fn probe(&self, addr: SocketAddr) -> Option<SocketAddr> {
        let session = self.session_with(addr).await.ok()?;
        let status = session.status().await.ok()?;
        lock(&self.view).learn(addr, &status);
        Some(addr)
    }

    /// Where a request goes when no node named a target: the leader known (or, for a
    /// request any node serves, the node that answered last), else the next node in turn
    /// other than `avoid`.
    fn pick(&self, served: ServedBy, avoid: Option<SocketAddr>) -> SocketAddr {
        let preferred = {
            let v = lock(&self.view);
            match served {
                ServedBy::Leader => v.leader.or(v.last_answered),
                ServedBy::AnyNode | ServedBy::ThisNode => v.last_answered.or(v.leader),
            }
        };
        match preferred.filter(|&a| Some(a) != avoid) {
            Some(a) => a,
            None => {
                let nodes = lock(&self.nodes);
                let n = nodes.len();
                (0..n)
                    .map(|_| nodes[self.cursor.fetch_add(1, Ordering::Relaxed) % n])
                    .find(|&a| Some(a) != avoid)
                    .unwrap_or(nodes[0])
            }
        }
    }

    /// The node at `addr` answered a request `served` this way (it leads, if only a leader
    /// serves it); a node reached through a redirect becomes known. True if the client
    /// took `addr` for the leader on this answer (it did not before).
    fn answered(&self, addr: SocketAddr, served: ServedBy) -> bool {
        let (moved, new_leader) = {
            let mut v = lock(&self.view);
            let new_leader = served == ServedBy::Leader && v.leader != Some(addr);
            if new_leader {
                v.set_leader(Some(addr));
            }
            (v.last_answered.replace(addr) != Some(addr), new_leader)
        };
        if moved {
            let mut nodes = lock(&self.nodes);
            if !nodes.contains(&addr) {
                nodes.push(addr);
            }
        }
        new_leader
    }

    /// Asks the node at `addr`, which just served a request only a leader serves, who
    /// leads (a follower that forwarded it names the leader); gives up after
    /// [`ROUND_LIMIT`], keeping what the client believed.
    async fn check_leader(&self, addr: SocketAddr) {
        let asked = async {
            self.probe(addr).await;
        };
        smol::future::or(asked, self.endpoint.runtime.sleep(ROUND_LIMIT)).await;
    }

    /// The node at `addr` failed a request: no longer taken for the leader or the node
    /// to ask first.
    fn doubt(&self, addr: SocketAddr) {
        let mut v = lock(&self.view);
        if v.leader == Some(addr) {
            v.set_leader(None);
        }
        if v.last_answered == Some(addr) {
            v.last_answered = None;
        }
    }

    /// A node to go to instead of the silent `addr`: another leader, or for a request any
    /// node serves, a node that answered the last round when `addr` did not.
    fn better_than(&self, addr: SocketAddr, served: ServedBy) -> Option<SocketAddr> {
        let v = lock(&self.view);
        match served {
            ServedBy::Leader => v.leader.filter(|&l| l != addr),
            ServedBy::AnyNode if !v.alive.contains(&addr) => v.alive.first().copied(),
            ServedBy::AnyNode | ServedBy::ThisNode => None,
        }
    }

    /// The session with the node at `addr`: the usable one, or a new connection and request
    /// stream. Calls that find no session with `addr` wait for the one connection to it
    /// being made rather than each making their own (200 calls started at once on a new
    /// client made 200 handshakes, and on a slow machine none finished within the connect
    /// timeout, round after round), and if it fails they fail with it at once, free to try
    /// another node.
    async fn session_with(&self, addr: SocketAddr) -> Result<Arc<Session>, Miss> {
        if let Some(s) = self.usable_session(addr) {
            return Ok(s);
        }
        let gate = lock(&self.gates).entry(addr).or_default().clone();
        let failures = gate.failures.load(Ordering::Relaxed);
        let _held = gate.held.lock().await;
        if let Some(s) = self.usable_session(addr) {
            return Ok(s);
        }
        if gate.failures.load(Ordering::Relaxed) != failures {
            let cause = lock(&gate.last).clone();
            return Err(Miss::At(cause.unwrap_or_else(|| {
                Cause::Connect("another call's connection attempt failed".into())
            })));
        }
        let made = self.connect(addr).await;
        if let Err(miss) = &made {
            if let Miss::At(cause) = miss {
                *lock(&gate.last) = Some(cause.clone());
            }
            gate.failures.fetch_add(1, Ordering::Relaxed);
        }
        made
    }

    /// A new connection and request stream to the node at `addr`, kept as its session.
    async fn connect(&self, addr: SocketAddr) -> Result<Arc<Session>, Miss> {
        let redial = Redial {
            endpoint: self.endpoint.clone(),
            sessions: Arc::downgrade(&self.sessions),
            timeout: self.connect_timeout,
        };
        let session = dial(addr, redial).await?;
        lock(&self.sessions.by_node).insert(addr, session.clone());
        Ok(session)
    }

    /// The session with `addr`, if it is usable.
    fn usable_session(&self, addr: SocketAddr) -> Option<Arc<Session>> {
        self.sessions.usable(addr)
    }

    /// Closes the connections (and the endpoint, if it is this client's alone). A later
    /// call connects again, unless the endpoint is closed.
    pub fn close(&self) {
        if self.own_endpoint {
            self.endpoint.close();
        }
        self.sessions.closed.store(true, Ordering::Relaxed);
        for (_, session) in lock(&self.sessions.by_node).drain() {
            session.conn.close(quinn::VarInt::from_u32(0), b"bye");
        }
    }
}

/// Polls `futures` together until each has finished or `enough(finished, cx)` says the
/// rest are not worth waiting for (`finished[i]`: future `i` has; `enough` registers its
/// own wake-ups with `cx`); the outputs of those that finished, in order.
async fn gather<F: Future>(
    futures: Vec<F>,
    mut enough: impl FnMut(&[bool], &mut Context<'_>) -> bool,
) -> Vec<Option<F::Output>> {
    let mut futures: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut finished = vec![false; futures.len()];
    std::future::poll_fn(|cx| {
        for ((slot, output), done) in futures.iter_mut().zip(&mut outputs).zip(&mut finished) {
            if let Some(f) = slot {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    *output = Some(v);
                    *slot = None;
                    *done = true;
                }
            }
        }
        if finished.iter().all(|&done| done) || enough(&finished, cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs
}

/// Connections to one node address are made one at a time (`Client::session_with`).
#[derive(Default)]
struct Gate {
    held: smol::lock::Mutex<()>,
    /// Connections to the address that could not be made.
    failures: AtomicU64,
    /// Why the last one could not.
    last: Mutex<Option<Cause>>,
}

/// The sessions of a client, by node.
#[derive(Default)]
struct Sessions {
    by_node: Mutex<HashMap<SocketAddr, Arc<Session>>>,
    /// The client was closed: nothing is dialled in the background any more.
    closed: AtomicBool,
}

impl Sessions {
    fn usable(&self, addr: SocketAddr) -> Option<Arc<Session>> {
        lock(&self.by_node)
            .get(&addr)
            .filter(|s| s.is_usable())
            .cloned()
    }
}

/// What it takes to dial a node again in the background once its connection is lost.
#[derive(Clone)]
struct Redial {
    endpoint: ClientEndpoint,
    sessions: Weak<Sessions>,
    timeout: Duration,
}

/// The first pause before a lost node is dialled again in the background; it doubles after
/// each failed attempt, up to `REDIAL_MAX`, for `REDIAL_FOR` at most.
const REDIAL_MIN: Duration = Duration::from_millis(50);
const REDIAL_MAX: Duration = Duration::from_secs(1);
const REDIAL_FOR: Duration = Duration::from_secs(30);

/// A new connection and request stream to the node at `addr`; if it is lost later, the
/// node is dialled again in the background ([`redial`]).
async fn dial(addr: SocketAddr, redial: Redial) -> Result<Arc<Session>, Miss> {
    let connecting = redial
        .endpoint
        .endpoint
        .connect_with(redial.endpoint.config.clone(), addr, ANY_NODE_NAME)
        .map_err(|e| match e {
            quinn::ConnectError::EndpointStopping => Miss::Fatal(ClientError::Closed),
            e => Miss::At(Cause::Connect(e.to_string())),
        })?;
    let timeout = redial.timeout;
    let started = Instant::now();
    let (conn, send, recv) = smol::future::or(
        async {
            let conn = connecting
                .await
                .map_err(|e| Cause::Connect(e.to_string()))?;
            let (send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| Cause::ConnectionLost(e.to_string()))?;
            Ok((conn, send, recv))
        },
        async {
            redial.endpoint.runtime.timer_after(timeout).await;
            Err(Cause::ConnectTimeout(timeout))
        },
    )
    .await?;
    let session = Arc::new(Session::new(conn, send));
    let runtime = redial.endpoint.runtime.clone();
    runtime.spawn_detached(listen(Arc::downgrade(&session), runtime.clone()));
    runtime.spawn_detached(read_answers(Arc::downgrade(&session), recv, addr, redial));
    debug!(node = %addr, took = ?started.elapsed(), "connected");
    Ok(session)
}

/// Dials the node at `addr` again after its connection was lost (a node restarting, say
/// after a planned restart), with growing pauses, until a session with it is usable: the
/// next call that goes there (a redirect to a new leader) finds a connection ready
/// instead of paying for a handshake (50-200 ms on a loaded machine). Stops when the
/// client is closed or dropped, or after `REDIAL_FOR`.
///
/// Boxed: `dial` spawns the task that calls this, which calls `dial`.
fn redial(addr: SocketAddr, redial: Redial) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(redial_until_usable(addr, redial))
}

async fn redial_until_usable(addr: SocketAddr, redial: Redial) {
    let give_up = Instant::now() + REDIAL_FOR;
    let mut pause = REDIAL_MIN;
    while Instant::now() < give_up {
        redial.endpoint.runtime.timer_after(pause).await;
        let wanted = |sessions: &Sessions| {
            !sessions.closed.load(Ordering::Relaxed) && sessions.usable(addr).is_none()
        };
        if !redial.sessions.upgrade().is_some_and(|s| wanted(&s)) {
            return;
        }
        match dial(addr, redial.clone()).await {
            Ok(session) => {
                if let Some(sessions) = redial.sessions.upgrade().filter(|s| wanted(s)) {
                    lock(&sessions.by_node).insert(addr, session);
                }
                return;
            }
            Err(Miss::Fatal(_)) => return,
            Err(Miss::At(cause)) => {
                debug!(node = %addr, %cause, "dialling again failed");
                pause = (pause * 2).min(REDIAL_MAX)
            }
        }
    }
}

/// A connection that has received no datagram for this long is taken for dead although
/// QUIC has not closed it yet: twice the keep-alive interval, in which a live peer
/// acknowledges at least one keep-alive ([`QuicSettings`]).
fn silent_after() -> Duration {
    QuicSettings::default().keep_alive * 2
}

/// How often a session's connection is looked at to know when it last received a
/// datagram ([`listen`]).
const LISTEN_EVERY: Duration = Duration::from_millis(250);

/// Looks at the session's connection every [`LISTEN_EVERY`] while it is open, so that
/// [`Session::went_silent`] knows within that much when the connection last received a
/// datagram, even for a session no call used for a while (a connection seen only when a
/// call comes may have received its last datagram long before).
async fn listen(session: Weak<Session>, runtime: Runtime) {
    loop {
        runtime.timer_after(LISTEN_EVERY).await;
        match session.upgrade() {
            Some(s) if s.conn.close_reason().is_none() => {
                s.went_silent();
            }
            _ => return,
        }
    }
}

/// A connection to one node and the stream that carries the requests: answers come back
/// tagged with the request's id, in any order. Closed when dropped: when the client or its
/// endpoint closes, or a new connection to the node replaces it and no call uses it.
struct Session {
    conn: quinn::Connection,
    send: smol::lock::Mutex<quinn::SendStream>,
    /// Calls waiting for an answer, by request id.
    pending: Mutex<HashMap<u64, Sender<Response>>>,
    next_id: AtomicU64,
    /// The stream or connection failed: a new session is needed.
    broken: AtomicBool,
    /// Whether the connection still hears from the node ([`Session::went_silent`]).
    heard: Mutex<Heard>,
}

/// When a session's connection was last seen to receive a datagram.
struct Heard {
    /// The connection's count of datagrams received when last looked at.
    datagrams: u64,
    /// When that count was last seen to grow (or the session was made).
    at: Instant,
}

impl Session {
    fn new(conn: quinn::Connection, send: quinn::SendStream) -> Session {
        Session {
            heard: Mutex::new(Heard {
                datagrams: conn.stats().udp_rx.datagrams,
                at: Instant::now(),
            }),
            conn,
            send: smol::lock::Mutex::new(send),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            broken: AtomicBool::new(false),
        }
    }

    fn is_usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
            && self.conn.close_reason().is_none()
            && !self.went_silent()
    }

    /// The connection has received nothing for [`silent_after`] (seen when the client
    /// looks: whenever it is about to use the session, and every [`LISTEN_EVERY`]
    /// besides): the node died or
    /// stopped, or it restarted and the connection is one of its previous run's. QUIC
    /// keeps such a connection open until its idle timeout (3 s), and once its packets go
    /// unacknowledged, congestion control holds new requests back until a loss probe,
    /// whose interval doubles each time: the restarted node would answer the next packet
    /// with a stateless reset, but that packet may leave a second later. A new connection
    /// is dialled instead.
    fn went_silent(&self) -> bool {
        let datagrams = self.conn.stats().udp_rx.datagrams;
        let mut heard = lock(&self.heard);
        if datagrams != heard.datagrams {
            *heard = Heard {
                datagrams,
                at: Instant::now(),
            };
            return false;
        }
        heard.at.elapsed() >= silent_after()
    }

    /// Why the connection can carry no more answers.
    fn lost(&self) -> Cause {
        Cause::ConnectionLost(match self.conn.close_reason() {
            Some(reason) => reason.to_string(),
            None => "the request stream ended".into(),
        })
    }

    async fn call(&self, request: &Request) -> Result<Response, Miss> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        // `(id, request)` encodes exactly as a `RequestFrame` (postcard writes a struct's
        // fields in order), without cloning the request.
        append_frame(&mut frame, &(id, request))
            .map_err(|e| Miss::Fatal(ClientError::Protocol(e.to_string())))?;
        let (tx, rx) = channel::bounded(1);
        {
            // Under the lock `read_answers` clears the waiting calls with: a session it
            // found broken takes no more calls (one registered after the clear would wait
            // for an answer that never comes, until its timeout).
            let mut pending = lock(&self.pending);
            if self.broken.load(Ordering::Relaxed) {
                return Err(Miss::At(self.lost()));
            }
            pending.insert(id, tx);
        }
        // Forgets the call if it ends early (an error, or the caller's timeout dropped it).
        let _forget = Forget(self, id);
        {
            let mut send = self.send.lock().await;
            // A call dropped in the middle of its write (the attempt's timeout, or a move to
            // a new leader) leaves part of a frame on the stream: every later frame would be
            // misread, so the session is retired unless the write completes.
            let torn = Retire(self);
            if let Err(e) = send.write_all(&frame).await {
                return Err(Miss::At(Cause::ConnectionLost(e.to_string())));
            }
            std::mem::forget(torn);
        }
        rx.recv().await.map_err(|_| Miss::At(self.lost()))
    }

    /// The node's status, asked on a stream of its own: the answer does not queue behind
    /// the answers of the request stream, and a probe given up midway leaves the request
    /// stream whole.
    async fn status(&self) -> Result<NodeStatus, Cause> {
        let lost = |e: &dyn fmt::Display| Cause::ConnectionLost(e.to_string());
        let (mut send, recv) = self.conn.open_bi().await.map_err(|e| lost(&e))?;
        let mut frame = Vec::new();
        append_frame(&mut frame, &(1u64, &Request::Status)).map_err(|e| lost(&e))?;
        send.write_all(&frame).await.map_err(|e| lost(&e))?;
        let _ = send.finish();
        match FrameReader::new(recv).next(MAX_CLIENT_FRAME).await {
            Ok(Some(bytes)) => match postcard::from_bytes::<ResponseFrame>(&bytes) {
                Ok(ResponseFrame {
                    response: Response::Status(s),
                    ..
                }) => Ok(s),
                Ok(other) => Err(lost(&format_args!(
                    "a status request answered {:?}",
                    other.response
                ))),
                Err(e) => Err(lost(&e)),
            },
            _ => Err(self.lost()),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
    }
}

struct Retire<'a>(&'a Session);

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        self.0.broken.store(true, Ordering::Relaxed);
    }
}

struct Forget<'a>(&'a Session, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.0.pending).remove(&self.1);
    }
}

/// Hands each answer on the session's stream to the call waiting for it, until the stream
/// ends or the session is dropped; then every waiting call learns the connection is lost,
/// and the node at `addr` is dialled again in the background ([`redial`]).
async fn read_answers(
    session: Weak<Session>,
    recv: quinn::RecvStream,
    addr: SocketAddr,
    again: Redial,
) {
    let mut frames = FrameReader::new(recv);
    loop {
        let frame = frames.next(MAX_CLIENT_FRAME).await;
        let Some(s) = session.upgrade() else { return };
        let answer = match frame {
            Ok(Some(bytes)) => postcard::from_bytes::<ResponseFrame>(&bytes).ok(),
            _ => None,
        };
        let Some(ResponseFrame { id, response }) = answer else {
            s.broken.store(true, Ordering::Relaxed);
            lock(&s.pending).clear();
            drop(s);
            debug!(node = %addr, "connection lost: dialling again in the background");
            let runtime = again.endpoint.runtime.clone();
            runtime.spawn_detached(redial(addr, again));
            return;
        };
        let waiting = lock(&s.pending).remove(&id);
        if let Some(tx) = waiting {
            let _ = tx.try_send(response);
        }
    }
}

/// The next answer on a stream of one streamed request, within `timeout`.
async fn next_answer(
    frames: &mut FrameReader,
    timeout: Duration,
    runtime: &Runtime,
) -> Result<Response, Miss> {
    let answer = smol::future::or(async { Ok(frames.next(MAX_CLIENT_FRAME).await) }, async {
        runtime.timer_after(timeout).await;
        Err(Miss::At(Cause::NoAnswer(timeout)))
    })
    .await?;
    match answer {
        Ok(Some(bytes)) => postcard::from_bytes::<ResponseFrame>(&bytes)
            .map(|f| f.response)
            .map_err(|e| Miss::Fatal(ClientError::Protocol(e.to_string()))),
        Ok(None) => Err(Miss::At(Cause::ConnectionLost(
            "the stream ended before its last answer".into(),
        ))),
        Err(e) => Err(Miss::At(Cause::ConnectionLost(e.to_string()))),
    }
}

fn unexpected(r: Response) -> ClientError {
    ClientError::Protocol(format!("{r:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MemberStatus;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The status node `id` (reached at port 7000 + id) reports: `leader` in `term`; the
    /// members' addresses are the configured ones, at port 8000 + id.
    fn status(id: NodeId, term: Term, leader: Option<NodeId>) -> NodeStatus {
        NodeStatus {
            id,
            role: if leader == Some(id) {
                "Leader"
            } else {
                "Follower"
            }
            .into(),
            term,
            leader,
            commit: 0,
            applied: 0,
            last_index: 0,
            members: (1..=3)
                .map(|m| MemberStatus {
                    id: m,
                    voter: true,
                    addr: Some(format!("127.0.0.1:{}", 8000 + m)),
                    connected: true,
                    match_index: None,
                })
                .collect(),
            keys: 0,
            refused_connections: 0,
            malformed_frames: 0,
            dropped_frames: 0,
            handshakes_abandoned: 0,
            stray_datagrams: 0,
        }
    }

    fn learn(view: &mut View, id: NodeId, term: Term, leader: Option<NodeId>) {
        view.learn(addr(7000 + id as u16), &status(id, term, leader));
    }

    #[test]
    fn the_newest_term_names_the_leader() {
        let mut view = View::default();
        learn(&mut view, 2, 5, Some(1));
        // Node 1 never answered: its configured address.
        assert_eq!(view.leader, Some(addr(8001)));
        learn(&mut view, 1, 5, Some(1));
        // Where it answered is where it is.
        assert_eq!(view.leader, Some(addr(7001)));
        // An election: a higher term without a leader yet.
        learn(&mut view, 3, 6, None);
        assert_eq!((view.term, view.leader), (6, None));
        // A node cut off in an older term says nothing about now.
        learn(&mut view, 1, 5, Some(1));
        assert_eq!((view.term, view.leader), (6, None));
        learn(&mut view, 3, 6, Some(3));
        assert_eq!(view.leader, Some(addr(7003)));
        // A candidate of the same term that lost does not unseat the leader.
        learn(&mut view, 2, 6, None);
        assert_eq!(view.leader, Some(addr(7003)));
        // A node that served a request was taken for the leader; a status naming the
        // leader of the newest term corrects it.
        view.set_leader(Some(addr(7001)));
        learn(&mut view, 2, 6, Some(3));
        assert_eq!(view.leader, Some(addr(7003)));
        // The leader steps down (check-quorum) in its term: the others name it until
        // they hear of a new term, but it leads no more.
        learn(&mut view, 3, 6, None);
        assert_eq!(view.leader, None);
        learn(&mut view, 2, 6, Some(3));
        assert_eq!(view.leader, None);
        // It wins the next term.
        learn(&mut view, 3, 7, Some(3));
        assert_eq!(view.leader, Some(addr(7003)));
        learn(&mut view, 2, 7, Some(3));
        assert_eq!(view.leader, Some(addr(7003)));
    }

    #[test]
    fn listen_addresses_are_not_dialled() {
        assert_eq!(node_addr("127.0.0.1:7001"), Some(addr(7001)));
        assert_eq!(node_addr("0.0.0.0:7001"), None);
        assert_eq!(node_addr("[::]:7001"), None);
        assert_eq!(node_addr("127.0.0.1:0"), None);
        assert_eq!(node_addr("node-1:7001"), None);
        assert_eq!(node_addr(""), None);
    }

    #[test]
    fn an_error_says_once_what_happened() {
        let one = ClientError::Unavailable {
            after: Duration::from_millis(2010),
            tried: vec![addr(1)],
            last: Some(Failure {
                node: addr(1),
                cause: Cause::NoAnswer(Duration::from_secs(2)),
            }),
        };
        assert_eq!(
            one.to_string(),
            "127.0.0.1:1: no answer within 2.0 s (gave up after 2.0 s)"
        );
        let many = ClientError::Unavailable {
            after: Duration::from_secs(5),
            tried: vec![addr(1), addr(2)],
            last: Some(Failure {
                node: addr(2),
                cause: Cause::Retry("no leader known; retry".into()),
            }),
        };
        assert_eq!(
            many.to_string(),
            "no node answered in time (gave up after 5.0 s; tried 127.0.0.1:1, 127.0.0.1:2); \
             last, 127.0.0.1:2: answered \"no leader known; retry\""
        );
        let refused = ClientError::Server {
            node: addr(3),
            kind: ErrorKind::Forbidden,
            message: "client bob may not run admin operations".into(),
        };
        assert_eq!(
            refused.to_string(),
            "127.0.0.1:3 refused the request: Forbidden: client bob may not run admin operations"
        );
    }
}
