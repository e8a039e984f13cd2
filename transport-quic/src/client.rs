//! The client library of the replicated KV store (what `coracle kv` and `coracle admin`
//! use).
//!
//! A [`Client`] connects over QUIC with its client certificate to any node it is given,
//! and follows the leader: a node that cannot serve a request answers with the leader's
//! address, and the client retries there; on a connection failure or a "retry" answer it
//! tries the next node with a growing backoff, until the request's deadline
//! ([`Client::with_timeout`]).
//!
//! Calls share one QUIC connection and one stream: each request is written with an id and
//! the call waits for the answer with that id, so concurrent calls on one `Client` are in
//! flight together (pipelined) and requests written together leave in the same packets.
//!
//! Each `Client` has a UDP socket of its own; clients made by one [`ClientEndpoint`] share
//! its socket (each still with its own connection and session), as an application that
//! serves many users does.
//!
//! Writes are exactly-once: each gets a sequence number in the client's session, kept
//! across retries, and the state machine applies a `(session, seq)` pair at most once.
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

use crate::certs::ANY_NODE_NAME;
use crate::protocol::{
    append_frame, AdminOp, Consistency, ErrorKind, NodeStatus, ReadOp, Request, Response,
    ResponseFrame, WriteOp, WriteOutcome, MAX_CLIENT_FRAME,
};
use crate::tls::{self, Credentials, QuicSettings, TlsError};
use crate::transport::FrameReader;
use coracle::Index;
use smol::channel::{self, Sender};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Why a client call failed.
#[derive(Debug)]
pub enum ClientError {
    /// The client's certificates are unusable.
    Tls(TlsError),
    /// The local endpoint could not be created.
    Io(std::io::Error),
    /// No node answered in time; the last problem seen.
    Timeout(String),
    /// A node refused the request for good.
    Server {
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
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Tls(e) => write!(f, "{e}"),
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Timeout(last) => write!(f, "no answer in time (last: {last})"),
            ClientError::Closed => write!(f, "the client was closed"),
            ClientError::Server { kind, message } => write!(f, "{kind:?}: {message}"),
            ClientError::Protocol(m) => write!(f, "unexpected answer: {m}"),
            ClientError::NoNodes => f.write_str("no node address given"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A UDP socket and a client identity (certificate) for any number of [`Client`]s: each
/// keeps its own connection and exactly-once session, and the datagrams of all go through
/// the one socket, received in batches. 64 clients with a connection each wrote 27 300-27 900
/// writes/s through one endpoint against 23 800-24 600 with a socket each (`coracle bench`,
/// which uses one). Cheap to clone (a handle).
#[derive(Clone)]
pub struct ClientEndpoint {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

impl fmt::Debug for ClientEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientEndpoint")
            .field("local", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl ClientEndpoint {
    /// An endpoint that presents `creds`, on a UDP socket bound to `bind` (port 0: any).
    pub fn new(creds: &Credentials, bind: SocketAddr) -> Result<ClientEndpoint, ClientError> {
        let config =
            tls::client_config(creds, &QuicSettings::default()).map_err(ClientError::Tls)?;
        let socket = crate::transport::bind_udp(bind).map_err(ClientError::Io)?;
        let endpoint = quinn::Endpoint::new(
            tls::endpoint_config(),
            None,
            socket,
            std::sync::Arc::new(quinn::SmolRuntime),
        )
        .map_err(ClientError::Io)?;
        Ok(ClientEndpoint { endpoint, config })
    }

    /// An endpoint on any port of the unspecified address (IPv4 or IPv6) of the first of
    /// `nodes`'s family.
    pub fn for_nodes(creds: &Credentials, nodes: &[SocketAddr]) -> Result<Self, ClientError> {
        let bind: SocketAddr = match nodes.first().ok_or(ClientError::NoNodes)? {
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        ClientEndpoint::new(creds, bind)
    }

    /// A client on this endpoint that knows the nodes at `nodes` (see [`Client::new`]).
    /// Its [`close`](Client::close) closes its own connection only (a later call connects
    /// again).
    pub fn client(&self, nodes: Vec<SocketAddr>) -> Result<Client, ClientError> {
        Client::on(self.clone(), false, nodes)
    }

    /// Closes the connections of every client on this endpoint.
    pub fn close(&self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"bye");
    }
}

/// A connection to the cluster, shared by concurrent calls (`&self` methods).
pub struct Client {
    endpoint: ClientEndpoint,
    /// The endpoint is this client's alone (`Client::new`): `close` closes it.
    own_endpoint: bool,
    nodes: Vec<SocketAddr>,
    current: Mutex<Option<Arc<Session>>>,
    /// One gate per node address, held while a connection to it is being made (see
    /// `session_with`).
    gates: Mutex<HashMap<SocketAddr, Arc<Gate>>>,
    cursor: AtomicUsize,
    session: u64,
    next_seq: AtomicU64,
    outstanding: Mutex<BTreeSet<u64>>,
    timeout: Duration,
    attempt_timeout: Duration,
    connect_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("nodes", &self.nodes)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// A client that presents `creds` and knows the nodes at `nodes` (one is enough: it
    /// follows redirects to the leader). A random session id is chosen.
    pub fn new(creds: &Credentials, nodes: Vec<SocketAddr>) -> Result<Client, ClientError> {
        Client::on(ClientEndpoint::for_nodes(creds, &nodes)?, true, nodes)
    }

    fn on(
        endpoint: ClientEndpoint,
        own_endpoint: bool,
        nodes: Vec<SocketAddr>,
    ) -> Result<Client, ClientError> {
        if nodes.is_empty() {
            return Err(ClientError::NoNodes);
        }
        Ok(Client {
            endpoint,
            own_endpoint,
            nodes,
            current: Mutex::new(None),
            gates: Mutex::new(HashMap::new()),
            cursor: AtomicUsize::new(0),
            session: random_u64(),
            next_seq: AtomicU64::new(1),
            outstanding: Mutex::new(BTreeSet::new()),
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
        })
    }

    /// Gives up on a call after `timeout` (default 10 s), retries included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries a single attempt that has no answer after `timeout` (default 2 s).
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Gives up connecting to a node after `timeout` (default 500 ms) and tries the next.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
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
            other => Err(unexpected(other)),
        }
    }

    /// Runs an admin operation on the leader (needs an admin certificate).
    pub async fn admin(&self, op: AdminOp) -> Result<(), ClientError> {
        match self.call(&Request::Admin(op)).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `request`, following redirects and retrying until an answer other than a
    /// redirect or "retry" comes, or the timeout passes. A write sent twice this way with
    /// the same session and sequence number is applied once.
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut target: Option<SocketAddr> = None;
        let mut backoff = Duration::from_millis(10);
        let mut last;
        loop {
            // The node a redirect named; else the current session (after a failure, the
            // one another call made meanwhile); else the next node in turn.
            let current = || self.usable_session().map(|s| s.addr);
            let addr = match target.take().or_else(current) {
                Some(a) => a,
                None => {
                    let i = self.cursor.fetch_add(1, Ordering::Relaxed);
                    self.nodes[i % self.nodes.len()]
                }
            };
            match self.attempt(addr, request).await {
                Ok(Response::Redirect {
                    addr: Some(leader), ..
                }) => match leader.parse::<SocketAddr>() {
                    Ok(a) if a != addr => {
                        target = Some(a);
                        continue;
                    }
                    _ => last = format!("redirect from {addr} to {leader}"),
                },
                Ok(Response::Redirect { addr: None, leader }) => {
                    last = format!("{addr}: leader {leader:?} without address")
                }
                Ok(Response::Error {
                    kind: ErrorKind::Retry,
                    message,
                }) => last = format!("{addr}: {message}"),
                Ok(Response::Error { kind, message }) => {
                    return Err(ClientError::Server { kind, message })
                }
                Ok(other) => return Ok(other),
                Err(ClientError::Closed) => return Err(ClientError::Closed),
                Err(e) => {
                    last = format!("{addr}: {e}");
                    let mut cur = lock(&self.current);
                    if cur.as_ref().is_some_and(|s| s.addr == addr) {
                        *cur = None;
                    }
                }
            }
            if Instant::now() + backoff >= deadline {
                return Err(ClientError::Timeout(last));
            }
            smol::Timer::after(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(300));
        }
    }

    /// One attempt of `request` at the node at `addr`: no redirect, no retry.
    pub async fn attempt(
        &self,
        addr: SocketAddr,
        request: &Request,
    ) -> Result<Response, ClientError> {
        let work = async {
            let session = self.session_with(addr).await?;
            session.call(request).await
        };
        let timeout = self.attempt_timeout;
        smol::future::or(work, async {
            smol::Timer::after(timeout).await;
            Err(ClientError::Timeout(format!("{addr} did not answer")))
        })
        .await
    }

    /// The session with the node at `addr`: the current one, or a new connection and
    /// request stream (which replaces the current one). Calls that find no session with
    /// `addr` wait for the one connection to it being made rather than each making their
    /// own (200 calls started at once on a new client made 200 handshakes, and on a slow
    /// machine none finished within the connect timeout, round after round), and if it
    /// fails they fail with it at once, free to try another node.
    async fn session_with(&self, addr: SocketAddr) -> Result<Arc<Session>, ClientError> {
        if let Some(s) = self.current_session(addr) {
            return Ok(s);
        }
        let gate = lock(&self.gates).entry(addr).or_default().clone();
        let failures = gate.failures.load(Ordering::Relaxed);
        let _held = gate.held.lock().await;
        if let Some(s) = self.current_session(addr) {
            return Ok(s);
        }
        if gate.failures.load(Ordering::Relaxed) != failures {
            return Err(ClientError::Timeout(format!(
                "connect to {addr} failed (another call's attempt)"
            )));
        }
        let made = self.connect(addr).await;
        if made.is_err() {
            gate.failures.fetch_add(1, Ordering::Relaxed);
        }
        made
    }

    /// A new connection and request stream to the node at `addr`, made the current session.
    async fn connect(&self, addr: SocketAddr) -> Result<Arc<Session>, ClientError> {
        let connecting = self
            .endpoint
            .endpoint
            .connect_with(self.endpoint.config.clone(), addr, ANY_NODE_NAME)
            .map_err(|e| match e {
                quinn::ConnectError::EndpointStopping => ClientError::Closed,
                e => ClientError::Protocol(e.to_string()),
            })?;
        let timeout = self.connect_timeout;
        let (conn, send, recv) = smol::future::or(
            async {
                let conn = connecting
                    .await
                    .map_err(|e| ClientError::Protocol(format!("connect to {addr}: {e}")))?;
                let (send, recv) = conn
                    .open_bi()
                    .await
                    .map_err(|e| ClientError::Protocol(format!("open a stream to {addr}: {e}")))?;
                Ok((conn, send, recv))
            },
            async {
                smol::Timer::after(timeout).await;
                Err(ClientError::Timeout(format!("connect to {addr} timed out")))
            },
        )
        .await?;
        let session = Arc::new(Session {
            addr,
            conn,
            send: smol::lock::Mutex::new(send),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            broken: AtomicBool::new(false),
        });
        smol::spawn(read_answers(Arc::downgrade(&session), recv)).detach();
        *lock(&self.current) = Some(session.clone());
        Ok(session)
    }

    /// The current session, if it is usable.
    fn usable_session(&self) -> Option<Arc<Session>> {
        lock(&self.current)
            .as_ref()
            .filter(|s| s.is_usable())
            .cloned()
    }

    /// The current session, if it is with `addr` and usable.
    fn current_session(&self, addr: SocketAddr) -> Option<Arc<Session>> {
        self.usable_session().filter(|s| s.addr == addr)
    }

    /// Closes the connection (and the endpoint, if it is this client's alone).
    pub fn close(&self) {
        if self.own_endpoint {
            self.endpoint.close();
        } else if let Some(session) = lock(&self.current).take() {
            session.conn.close(quinn::VarInt::from_u32(0), b"bye");
        }
    }
}

/// Connections to one node address are made one at a time (`Client::session_with`).
#[derive(Default)]
struct Gate {
    held: smol::lock::Mutex<()>,
    /// Connections to the address that could not be made.
    failures: AtomicU64,
}

/// A connection to one node and the stream that carries the requests: answers come back
/// tagged with the request's id, in any order. Dropped (closed) once no call uses it and
/// the client moved on.
struct Session {
    addr: SocketAddr,
    conn: quinn::Connection,
    send: smol::lock::Mutex<quinn::SendStream>,
    /// Calls waiting for an answer, by request id.
    pending: Mutex<HashMap<u64, Sender<Response>>>,
    next_id: AtomicU64,
    /// The stream or connection failed: a new session is needed.
    broken: AtomicBool,
}

impl Session {
    fn is_usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && self.conn.close_reason().is_none()
    }

    async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        // `(id, request)` encodes exactly as a `RequestFrame` (postcard writes a struct's
        // fields in order), without cloning the request.
        append_frame(&mut frame, &(id, request))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (tx, rx) = channel::bounded(1);
        lock(&self.pending).insert(id, tx);
        // Forgets the call if it ends early (an error, or the caller's timeout dropped it).
        let _forget = Forget(self, id);
        {
            let mut send = self.send.lock().await;
            // A call dropped in the middle of its write (the attempt's timeout) leaves part
            // of a frame on the stream: every later frame would be misread, so the session
            // is retired unless the write completes.
            let torn = Retire(self);
            if let Err(e) = send.write_all(&frame).await {
                return Err(ClientError::Protocol(format!("{}: {e}", self.addr)));
            }
            std::mem::forget(torn);
        }
        rx.recv()
            .await
            .map_err(|_| ClientError::Protocol(format!("{}: connection lost", self.addr)))
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
/// ends or the session is dropped; then every waiting call learns the connection is lost.
async fn read_answers(session: Weak<Session>, recv: quinn::RecvStream) {
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
            return;
        };
        let waiting = lock(&s.pending).remove(&id);
        if let Some(tx) = waiting {
            let _ = tx.try_send(response);
        }
    }
}

fn unexpected(r: Response) -> ClientError {
    match r {
        Response::Error { kind, message } => ClientError::Server { kind, message },
        other => ClientError::Protocol(format!("{other:?}")),
    }
}
