//! The KV server: a [`Host`] of the [`Kv`] state machine that serves the KV client
//! protocol of [`crate::protocol`] on the node's address. It uses the host's public
//! [`Handle`] only, as any service of your own would ([`crate::host`]).
//!
//! Each client stream's requests are read together and handed to the node as one
//! [`Batch`]; a write's command is the bytes the client sent, validated by one decode and
//! proposed as received ([`decode_request_command`]); each answer goes to the stream's
//! writer as soon as the node gives it.
//!
//! ```no_run
//! use coracle_quic::{config::NodeConfig, server::RunningNode};
//! let cfg = NodeConfig::load("node.toml".as_ref())?;
//! let node = RunningNode::start(&cfg)?;
//! println!("listening on {}", node.local_addr());
//! node.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::backup::{BackupHeader, BackupMember};
use crate::certs::Identity;
use crate::config::NodeConfig;
use crate::host::{
    Batch, Handle, Host, KeptSnapshot, MembershipError, ProposeError, ReadError, ReadMode,
    ServeClient, SnapshotRequestError, Status,
};
pub use crate::host::{CoreNode, NodeError, INFLIGHT, PEERS, READS};
use crate::kv::{Applied, Kv};
use crate::protocol::{
    append_frame, decode_request_command, AdminOp, Consistency, ErrorKind, MemberStatus,
    NodeStatus, ReadOp, Request, RequestFrame, Response, ResponseFrame, MAX_CLIENT_FRAME,
};
use crate::rt::Runtime;
use crate::transport::{FrameError, FrameReader, TransportStats, ERR_MALFORMED};
use coracle::{Index, NodeId};
use smol::channel::{self, Receiver, Sender};
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{info, warn};

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
struct Reply {
    id: u64,
    to: Sender<Answer>,
    permit: Permit,
}

impl Reply {
    /// Sends one of the many answers of a streamed request ([`AdminOp::BackupStream`]);
    /// `permit` is released once it is written out. False when the stream is gone.
    fn send_part(&self, response: Response, permit: Permit) -> bool {
        let frame = ResponseFrame {
            id: self.id,
            response,
        };
        self.to.try_send((frame, permit)).is_ok()
    }

    fn send(self, response: Response) {
        let frame = ResponseFrame {
            id: self.id,
            response,
        };
        let _ = self.to.try_send((frame, self.permit));
    }
}

/// A KV node: the [`Kv`] state machine on a [`Host`], serving KV clients.
pub struct RunningNode {
    host: Host<Kv>,
}

impl fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningNode")
            .field("host", &self.host)
            .finish()
    }
}

impl RunningNode {
    /// Opens the data directory, loads the certificates, binds the address and starts the
    /// node. Errors name what is wrong (bad certificate, locked directory, address in use).
    pub fn start(cfg: &NodeConfig) -> Result<RunningNode, NodeError> {
        RunningNode::start_on(Runtime::Smol, cfg)
    }

    /// [`start`](Self::start) on `runtime` (see [`crate::rt`]).
    pub fn start_on(runtime: Runtime, cfg: &NodeConfig) -> Result<RunningNode, NodeError> {
        let serve: ServeClient<Kv> = Arc::new(|conn, identity, handle| {
            let runtime = handle.runtime().clone();
            runtime.spawn_detached(serve_client(conn, identity, handle));
        });
        let host = Host::start_on(runtime, cfg, Kv::new(), Some(serve))?;
        Ok(RunningNode { host })
    }

    /// A handle on the node (the host's).
    pub fn handle(&self) -> Handle<Kv> {
        self.host.handle()
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.host.local_addr()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.host.id()
    }

    /// The transport's counters.
    pub fn stats(&self) -> &TransportStats {
        self.host.stats()
    }

    /// Where the metrics are served ([`Host::metrics_addr`]).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.host.metrics_addr()
    }

    /// The metrics as OpenMetrics text ([`Host::metrics_text`]).
    pub fn metrics_text(&self) -> Option<String> {
        self.host.metrics_text()
    }

    /// Fault injection: the node's disk hangs until the guard is dropped
    /// ([`Host::hold_flushes`]).
    pub fn hold_flushes(&self) -> crate::stall::FlushHold {
        self.host.hold_flushes()
    }

    /// True once the node has stopped (after an error, or a shutdown).
    pub fn is_finished(&self) -> bool {
        self.host.is_finished()
    }

    /// Stops the node: makes the log durable, closes the connections, waits for the end.
    pub fn shutdown(self) -> Result<(), NodeError> {
        self.host.shutdown()
    }

    /// [`shutdown`](Self::shutdown) from async code, without blocking the thread
    /// ([`Host::stop`]).
    pub async fn stop(self) -> Result<(), NodeError> {
        self.host.stop().await
    }

    /// Waits until the node stops by itself (an error) or is shut down.
    pub fn join(&mut self) -> Result<(), NodeError> {
        self.host.join()
    }

    /// Asks the node to stop without waiting.
    pub fn request_shutdown(&self) {
        self.host.request_shutdown()
    }
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

/// A redirect to the leader named, or a retry when none is known.
fn redirect(leader: Option<NodeId>, address: Option<String>) -> Response {
    match leader {
        Some(l) => Response::Redirect {
            leader: Some(l),
            addr: address,
        },
        None => retry("no leader known; retry"),
    }
}

/// The answer to a client's write.
fn written(result: Result<(Index, Applied), ProposeError>) -> Response {
    match result {
        Ok((index, Applied::Write(outcome))) => Response::Written { outcome, index },
        Ok((_, Applied::Ignored)) => failed(ErrorKind::Failed, "unexpected entry"),
        Err(ProposeError::NotLeader { leader, address }) => redirect(leader, address),
        Err(e @ ProposeError::TooLarge { .. }) => failed(ErrorKind::BadRequest, e.to_string()),
        Err(ProposeError::Stopped(m)) => failed(ErrorKind::Failed, m),
        Err(e) => retry(e.to_string()),
    }
}

/// The answer to a read.
fn read(kv: Result<&Kv, ReadError>, op: &ReadOp) -> Response {
    match kv {
        Ok(kv) => match op {
            ReadOp::Get { key } => Response::Value(kv.get(key).map(<[u8]>::to_vec)),
            ReadOp::List { prefix, limit } => {
                Response::Pairs(kv.list(prefix, (*limit).min(100_000) as usize))
            }
        },
        Err(ReadError::Stopped(m)) => failed(ErrorKind::Failed, m),
        Err(e) => retry(e.to_string()),
    }
}

/// The answer to an admin operation.
fn admin_done<T>(result: Result<T, MembershipError>) -> Response {
    match result {
        Ok(_) => Response::Done,
        Err(MembershipError::NotLeader { leader, address }) => redirect(leader, address),
        Err(MembershipError::Refused(m) | MembershipError::Stopped(m)) => {
            failed(ErrorKind::Failed, m)
        }
        Err(e) => retry(e.to_string()),
    }
}

/// The status a client asked for.
fn node_status(s: Status, kv: &Kv) -> NodeStatus {
    NodeStatus {
        id: s.id,
        role: format!("{:?}", s.role),
        term: s.term,
        leader: s.leader,
        commit: s.commit,
        applied: s.applied,
        last_index: s.last_index,
        members: s
            .members
            .into_iter()
            .map(|m| MemberStatus {
                id: m.id,
                voter: m.voter,
                addr: m.address,
                connected: m.connected,
                match_index: m.match_index,
            })
            .collect(),
        keys: kv.len() as u64,
        refused_connections: s.transport.refused_connections,
        handshakes_abandoned: s.transport.handshakes_abandoned,
        stray_datagrams: s.transport.stray_datagrams,
        malformed_frames: s.transport.malformed_frames,
        dropped_frames: s.transport.dropped_frames,
    }
}

/// Adds one client request to `batch` (an admin operation runs as a task of its own).
fn on_request(
    batch: &mut Batch<Kv>,
    handle: &Handle<Kv>,
    request: Request,
    command: Option<bytes::Bytes>,
    identity: &Identity,
    reply: Reply,
) {
    match (request, command) {
        (Request::Write { .. }, Some(command)) => {
            batch.propose(command, move |result| reply.send(written(result)));
        }
        (Request::Write { .. }, None) => reply.send(failed(ErrorKind::BadRequest, "no command")),
        (Request::Read { op, consistency }, _) => {
            let mode = match consistency {
                Consistency::Linearizable => ReadMode::ReadIndex,
                Consistency::Lease => ReadMode::Lease,
                Consistency::Stale => ReadMode::Stale,
            };
            batch.read(mode, move |kv| reply.send(read(kv, &op)));
        }
        (Request::Status, _) => {
            batch.status(move |status, kv| reply.send(Response::Status(node_status(status, kv))));
        }
        (Request::Admin(op), _) => {
            if !matches!(identity, Identity::Client { admin: true, .. }) {
                reply.send(failed(
                    ErrorKind::Forbidden,
                    format!("{identity} may not run admin operations"),
                ));
                return;
            }
            info!(node = handle.id(), by = %identity, ?op, "admin operation");
            if op == AdminOp::BackupStream {
                handle
                    .runtime()
                    .spawn_detached(stream_backup(handle.clone(), reply));
            } else {
                handle
                    .runtime()
                    .spawn_detached(admin(handle.clone(), op, reply));
            }
        }
    }
}

/// Runs an admin operation through the handle and answers it.
async fn admin(handle: Handle<Kv>, op: AdminOp, reply: Reply) {
    let response = match op {
        AdminOp::AddLearner { id, addr } => match addr.parse::<SocketAddr>() {
            Ok(addr) => admin_done(handle.add_learner(id, addr).await),
            Err(_) => failed(
                ErrorKind::BadRequest,
                format!("{addr:?} is not an ip:port address"),
            ),
        },
        AdminOp::Promote { id } => admin_done(handle.promote(id).await),
        AdminOp::Remove { id } => admin_done(handle.remove(id).await),
        AdminOp::Transfer { id } => admin_done(handle.transfer_leadership(id).await),
        AdminOp::Isolate { peers } => {
            handle.isolate(peers).await;
            Response::Done
        }
        AdminOp::Leave => match handle.leave().await {
            Ok(()) => {
                info!(
                    node = handle.id(),
                    "removed from the cluster; shutting down"
                );
                reply.send(Response::Done);
                // The answer leaves before the connections close.
                handle
                    .runtime()
                    .sleep(std::time::Duration::from_millis(200))
                    .await;
                handle.shutdown();
                return;
            }
            Err(e) => failed(
                ErrorKind::Failed,
                format!("node {} did not leave: {e}", handle.id()),
            ),
        },
        AdminOp::Change { add, remove } => {
            let mut parsed = Vec::with_capacity(add.len());
            for (id, addr) in add {
                match addr.parse::<SocketAddr>() {
                    Ok(a) if crate::config::check_node_addr(a).is_ok() => parsed.push((id, a)),
                    _ => {
                        return reply.send(failed(
                            ErrorKind::BadRequest,
                            format!("{addr:?} is not an ip:port address a node can listen on"),
                        ))
                    }
                }
            }
            admin_done(handle.change_members(&parsed, &remove).await)
        }
        AdminOp::Priority { id, priority } => admin_done(handle.set_priority(id, priority).await),
        AdminOp::Backup => failed(
            ErrorKind::Failed,
            "backups are streamed now (AdminOp::BackupStream): save it with a coracle of this \
             node's version or newer",
        ),
        // Served by `stream_backup`.
        AdminOp::BackupStream => failed(ErrorKind::BadRequest, "a streamed request"),
    };
    reply.send(response);
}

/// Bytes of state one backup chunk carries.
const BACKUP_CHUNK: usize = 1 << 20;

/// Backup chunks queued for a client stream at most: the next is read from the snapshot
/// file once one is written out, so a slow client meets QUIC flow control and the node
/// holds a few chunks of a backup in memory, whatever its size.
const BACKUP_CHUNKS_QUEUED: usize = 4;

/// Streams a backup of the store to the client ([`crate::backup`], [`AdminOp::BackupStream`]):
/// [`Response::BackupBegin`], the state in [`Response::BackupChunk`]s read from the node's
/// snapshot file on the blocking pool, then [`Response::BackupEnd`]; or an error.
async fn stream_backup(handle: Handle<Kv>, reply: Reply) {
    let end = match send_backup(&handle, &reply).await {
        Ok(state_crc) => Response::BackupEnd { state_crc },
        Err(response) => response,
    };
    reply.send(end);
}

/// The backup's answers but the last: a linearizable read first (the leader confirms it
/// still leads and this node applies through the read index), then a snapshot kept by the
/// node with every entry applied by then ([`Handle::snapshot`]: it holds every write
/// acknowledged before the read), streamed from its file. Returns the CRC-32 of the state
/// sent.
async fn send_backup(handle: &Handle<Kv>, reply: &Reply) -> Result<u32, Response> {
    match handle.read(ReadMode::ReadIndex, |_| ()).await {
        Ok(()) => {}
        Err(ReadError::Stopped(m)) => return Err(failed(ErrorKind::Failed, m)),
        Err(e) => return Err(retry(e.to_string())),
    }
    match handle.snapshot().await {
        Ok(_) => {}
        Err(SnapshotRequestError::Empty) => {
            return Err(failed(
                ErrorKind::Failed,
                "nothing to back up: no entry was applied yet",
            ))
        }
        Err(SnapshotRequestError::Stopped(m)) => return Err(failed(ErrorKind::Failed, m)),
        Err(e) => return Err(retry(e.to_string())),
    }
    let opener = handle.clone();
    let mut snapshot = match smol::unblock(move || opener.open_snapshot()).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(retry("the node keeps no snapshot; retry")),
        Err(e) => return Err(failed(ErrorKind::Failed, e.to_string())),
    };
    let Some(status) = handle.status().await else {
        return Err(retry("the node is shutting down"));
    };
    let header = BackupHeader {
        cluster: status.cluster,
        index: snapshot.index(),
        term: snapshot.term(),
        members: status
            .members
            .into_iter()
            .map(|m| BackupMember {
                id: m.id,
                voter: m.voter,
                address: m.address,
            })
            .collect(),
        state_len: snapshot.remaining(),
    };
    info!(
        node = handle.id(),
        index = header.index,
        bytes = header.state_len,
        "backup: streaming the snapshot"
    );
    if !reply.send_part(Response::BackupBegin(header), None) {
        return Err(retry("the client left"));
    }
    let queued = Arc::new(smol::lock::Semaphore::new(BACKUP_CHUNKS_QUEUED));
    let mut crc = crc32fast::Hasher::new();
    loop {
        let permit = queued.acquire_arc().await;
        let (chunk, s) = smol::unblock(move || (read_chunk(&mut snapshot), snapshot)).await;
        snapshot = s;
        let chunk = chunk.map_err(|e| {
            warn!(node = handle.id(), error = %e, "backup: cannot read the snapshot");
            failed(ErrorKind::Failed, format!("cannot read the snapshot: {e}"))
        })?;
        if chunk.is_empty() {
            return Ok(crc.finalize());
        }
        crc.update(&chunk);
        if !reply.send_part(Response::BackupChunk(chunk), Some(Arc::new(permit))) {
            return Err(retry("the client left"));
        }
    }
}

/// The next [`BACKUP_CHUNK`] bytes of `snapshot` (fewer at its end, none past it).
fn read_chunk(snapshot: &mut KeptSnapshot) -> std::io::Result<Vec<u8>> {
    let len = snapshot.remaining().min(BACKUP_CHUNK as u64) as usize;
    let mut chunk = vec![0u8; len];
    snapshot.read_exact(&mut chunk)?;
    Ok(chunk)
}

/// Serves one client connection: each bidirectional stream it opens carries requests.
async fn serve_client(conn: quinn::Connection, identity: Identity, handle: Handle<Kv>) {
    let stats = handle.transport_stats().unwrap_or_default();
    while let Ok((send, recv)) = conn.accept_bi().await {
        let answers = {
            let (to, queue) = channel::unbounded();
            handle.runtime().spawn_detached(write_answers(send, queue));
            to
        };
        handle.runtime().spawn_detached(read_requests(
            recv,
            answers,
            identity.clone(),
            handle.clone(),
            stats.clone(),
        ));
    }
}

/// Reads the requests of one client stream and hands them to the node, without
/// waiting for their answers (the client pipelines).
async fn read_requests(
    recv: quinn::RecvStream,
    answers: Sender<Answer>,
    identity: Identity,
    handle: Handle<Kv>,
    stats: Arc<TransportStats>,
) {
    let identity = Arc::new(identity);
    let in_flight = Arc::new(smol::lock::Semaphore::new(REQUESTS_IN_FLIGHT));
    let mut frames = FrameReader::new(recv);
    loop {
        // The first request is waited for; those read with it go to the node together.
        let mut permit = Some(Arc::new(in_flight.acquire_arc().await));
        let mut next = frames.next(MAX_CLIENT_FRAME).await;
        let mut batch = handle.batch();
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
            let (id, request) = match decode_request_command(&bytes) {
                Ok((RequestFrame { id, request }, command)) => {
                    (id, Ok((request, command.map(|range| bytes.slice(range)))))
                }
                Err((id, e)) => (id, Err(e)),
            };
            let reply = Reply {
                id,
                to: answers.clone(),
                permit,
            };
            match request {
                Ok((request, command)) => {
                    on_request(&mut batch, &handle, request, command, &identity, reply)
                }
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
        // Answered with "shutting down" (a retry) if the node is gone.
        batch.submit().await;
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
    use crate::protocol::{Command, Request, RequestFrame, WriteOp};

    /// A client's write is proposed as the bytes it sent: they must be the KV command's
    /// encoding, for every kind of write.
    #[test]
    fn a_write_request_is_its_command() {
        let ops = [
            WriteOp::Put {
                key: b"k".to_vec(),
                value: vec![3; 300],
                return_previous: true,
            },
            WriteOp::Delete {
                key: vec![],
                return_previous: false,
            },
            WriteOp::Cas {
                key: b"c".to_vec(),
                expected: Some(vec![]),
                new: None,
            },
        ];
        for op in ops {
            let (client, seq, ack_below) = (u64::MAX, 1 << 40, 7);
            let request = Request::Write {
                client,
                seq,
                ack_below,
                op: op.clone(),
            };
            let body = postcard::to_allocvec(&RequestFrame {
                id: 1 << 50,
                request,
            })
            .unwrap();
            let (_, range) = crate::protocol::decode_request_command(&body).unwrap();
            let command = Command::Write {
                client,
                seq,
                ack_below,
                op,
            };
            assert_eq!(
                &body[range.unwrap()],
                &postcard::to_allocvec(&command).unwrap()[..]
            );
        }
    }
}
