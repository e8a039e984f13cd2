//! A local cluster of `coracle node` processes on 127.0.0.1, for `coracle demo` and
//! `coracle bench`: a temporary CA and certificates, one data directory and configuration
//! per node, and each node a child process of this one (the current executable, `coracle
//! node`), which the cluster can crash (SIGKILL), restart, and isolate through the admin
//! fault-injection control.
//!
//! Every node process watches its standard input: when this process ends, however it ends,
//! the pipe closes and the nodes shut down, so no orphan is left behind.

use coracle::{Index, NodeId};
use coracle_quic::certs::{Ca, Identity};
use coracle_quic::client::Client;
use coracle_quic::protocol::{
    AdminOp, Consistency, ErrorKind, NodeStatus, ReadOp, Request, Response, WriteOp,
};
use coracle_quic::tls::Credentials;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Error;

/// The name of the admin client certificate the cluster issues for itself.
pub const ADMIN: &str = "demo";
/// The name of the plain client certificate it issues (for benchmarks).
pub const CLIENT: &str = "bench";

/// The election timeouts, in milliseconds, the demo and the bench start nodes with.
pub const ELECTION_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 20..=60_000;

/// How to build the cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of nodes.
    pub nodes: usize,
    /// Minimum election timeout in milliseconds.
    pub election_timeout_ms: u64,
    /// Heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Keep the directory when the cluster is dropped.
    pub keep: bool,
}

/// A node process.
struct NodeProc {
    child: Child,
}

/// A cluster of node processes on loopback.
pub struct Cluster {
    dir: PathBuf,
    keep: bool,
    exe: PathBuf,
    addrs: Vec<SocketAddr>,
    procs: Vec<Option<NodeProc>>,
    clients: Vec<Client>,
    admin: Credentials,
    election_timeout: Duration,
    session: u64,
    seq: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// Free UDP ports on 127.0.0.1 (bound, then released: a small race, fine on loopback).
fn free_addrs(n: usize) -> Result<Vec<SocketAddr>, Error> {
    let sockets = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<Vec<_>, _>>()?)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

impl Cluster {
    /// Creates the directory, the CA, the certificates and the configurations; starts no
    /// node yet.
    pub fn create(opts: &Options) -> Result<Cluster, Error> {
        let dir = std::env::temp_dir().join(format!(
            "coracle-demo-{}-{:x}",
            std::process::id(),
            random_u64() & 0xffff
        ));
        std::fs::create_dir_all(&dir)?;
        let certs = dir.join("certs");
        let ca = Ca::generate("coracle demo", 2)?;
        ca.write(&certs)?;
        let n = opts.nodes as u64;
        let mut identities: Vec<Identity> = (1..=n).map(Identity::Node).collect();
        identities.push(Identity::Client {
            name: ADMIN.into(),
            admin: true,
        });
        identities.push(Identity::Client {
            name: CLIENT.into(),
            admin: false,
        });
        for identity in &identities {
            ca.issue(identity, 2)?
                .write(&certs, &identity.file_stem())?;
        }
        let addrs = free_addrs(opts.nodes)?;
        let cluster_id = random_u64() & 0xffff_ffff;
        for id in 1..=n {
            let mut s = format!(
                "# Written by `coracle demo`.\nid = {id}\ncluster_id = {cluster_id}\nlisten = \"{}\"\ndata_dir = \"data/node-{id}\"\n",
                addrs[id as usize - 1]
            );
            for (i, a) in addrs.iter().enumerate() {
                s += &format!("[[peers]]\nid = {}\naddr = \"{a}\"\n", i + 1);
            }
            s += &format!(
                "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n"
            );
            s += &format!(
                "[raft]\nelection_timeout_ms = {}\nheartbeat_ms = {}\n",
                opts.election_timeout_ms, opts.heartbeat_ms
            );
            s += "[transport]\nreconnect_max_ms = 500\n";
            std::fs::write(dir.join(format!("node-{id}.toml")), s)?;
        }
        let stem = Identity::Client {
            name: ADMIN.into(),
            admin: true,
        }
        .file_stem();
        let admin = Credentials::load(
            &certs.join("ca.pem"),
            &certs.join(format!("{stem}.pem")),
            &certs.join(format!("{stem}.key")),
        )?;
        let clients = addrs
            .iter()
            .map(|&a| node_client(&admin, a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Cluster {
            dir,
            keep: opts.keep,
            exe: std::env::current_exe()?,
            procs: (0..opts.nodes).map(|_| None).collect(),
            addrs,
            clients,
            admin,
            election_timeout: Duration::from_millis(opts.election_timeout_ms),
            session: random_u64(),
            seq: AtomicU64::new(1),
        })
    }

    /// The directory holding certificates, configurations, data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate directory.
    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// Keep the directory after the cluster is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// The nodes' addresses (node `i + 1` at index `i`).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// The minimum election timeout the nodes run with.
    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    /// Node `id`'s log file.
    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// Starts node `id` (1-based) as a child process, if it is not running.
    pub fn start(&mut self, id: NodeId) -> Result<(), Error> {
        let i = self.index(id)?;
        if self.procs[i].is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let child = Command::new(&self.exe)
            .args(["node", "--log", "info", "--watch-stdin", "--config"])
            .arg(self.dir.join(format!("node-{id}.toml")))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.procs[i] = Some(NodeProc { child });
        // A fresh connection: the one to the previous process is dead.
        self.clients[i] = node_client(&self.admin, self.addrs[i])?;
        Ok(())
    }

    /// Crashes node `id`: SIGKILL, nothing flushed that was not already durable.
    pub fn kill(&mut self, id: NodeId) -> Result<(), Error> {
        let i = self.index(id)?;
        if let Some(mut p) = self.procs[i].take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        Ok(())
    }

    /// True if node `id`'s process runs (as far as this process knows).
    pub fn is_up(&mut self, id: NodeId) -> bool {
        let Ok(i) = self.index(id) else {
            return false;
        };
        match self.procs[i].as_mut() {
            Some(p) => match p.child.try_wait() {
                Ok(None) => true,
                _ => {
                    self.procs[i] = None;
                    false
                }
            },
            None => false,
        }
    }

    /// Node ids whose process runs.
    pub fn up(&mut self) -> Vec<NodeId> {
        (1..=self.len() as NodeId)
            .filter(|&id| self.is_up(id))
            .collect()
    }

    /// Stops every node cleanly (closes their standard input), killing those that do not
    /// stop within 3 s.
    pub fn stop_all(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            drop(p.child.stdin.take());
        }
        let end = Instant::now() + Duration::from_secs(3);
        for slot in &mut self.procs {
            if let Some(mut p) = slot.take() {
                while Instant::now() < end && matches!(p.child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }

    fn index(&self, id: NodeId) -> Result<usize, Error> {
        match usize::try_from(id) {
            Ok(i) if (1..=self.len()).contains(&i) => Ok(i - 1),
            _ => Err(format!("no node {id} in this cluster").into()),
        }
    }

    /// Node `id`'s status, `None` if it is down or does not answer.
    pub async fn status(&self, id: NodeId) -> Option<NodeStatus> {
        let i = self.index(id).ok()?;
        self.procs[i].as_ref()?;
        match self.clients[i]
            .attempt(self.addrs[i], &Request::Status)
            .await
        {
            Ok(Response::Status(s)) => Some(s),
            _ => None,
        }
    }

    /// Every node's status (`None` for those down or silent).
    pub async fn statuses(&self) -> Vec<Option<NodeStatus>> {
        let tasks: Vec<_> = (1..=self.len() as NodeId)
            .map(|id| self.status(id))
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await);
        }
        out
    }

    /// The leader that every answering node agrees on, with its term.
    pub async fn agreed_leader(&self) -> Option<(NodeId, u64)> {
        let all = self.statuses().await;
        let up: Vec<&NodeStatus> = all.iter().flatten().collect();
        let leader = up.iter().find(|s| s.role == "Leader")?;
        up.iter()
            .all(|s| s.leader == Some(leader.id) && s.term == leader.term)
            .then_some((leader.id, leader.term))
    }

    /// Sends a fault-injection order to node `id`: cut it off from `peers` (empty: heal).
    pub async fn isolate(&self, id: NodeId, peers: Vec<NodeId>) -> Result<(), Error> {
        let i = self.index(id)?;
        match self.clients[i]
            .attempt(self.addrs[i], &Request::Admin(AdminOp::Isolate { peers }))
            .await?
        {
            Response::Done => Ok(()),
            other => Err(format!("node {id} answered {other:?}").into()),
        }
    }

    /// Sends `request` to the leader among the running nodes not in `avoid`, following
    /// redirects (but never to a node in `avoid` or down) and retrying every few
    /// milliseconds until an answer other than "retry" comes or `limit` passes. Returns
    /// the node that answered and its answer.
    pub async fn request(
        &self,
        request: &Request,
        up: &[NodeId],
        avoid: &[NodeId],
        limit: Duration,
    ) -> Result<(NodeId, Response), String> {
        let candidates: Vec<NodeId> = up
            .iter()
            .copied()
            .filter(|id| !avoid.contains(id))
            .collect();
        if candidates.is_empty() {
            return Err("no node to ask".into());
        }
        let deadline = Instant::now() + limit;
        let mut next: Option<NodeId> = None;
        let mut turn = 0usize;
        let mut last;
        loop {
            let id = next.take().unwrap_or_else(|| {
                turn += 1;
                candidates[turn % candidates.len()]
            });
            let i = (id - 1) as usize;
            match self.clients[i].attempt(self.addrs[i], request).await {
                Ok(Response::Redirect {
                    leader: Some(l), ..
                }) if l != id && candidates.contains(&l) => {
                    next = Some(l);
                    continue;
                }
                Ok(Response::Redirect { leader, .. }) => {
                    last = format!("node {id} redirects to {leader:?}")
                }
                Ok(Response::Error {
                    kind: ErrorKind::Retry,
                    message,
                }) => last = format!("node {id}: {message}"),
                Ok(Response::Error { kind, message }) => {
                    return Err(format!("node {id}: {kind:?}: {message}"))
                }
                Ok(other) => return Ok((id, other)),
                Err(e) => last = format!("node {id}: {e}"),
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            smol::Timer::after(Duration::from_millis(5)).await;
        }
    }

    /// A new write request of this cluster's admin session (one sequence number: retries
    /// of it are applied once).
    pub fn write_request(&self, key: &str, value: &str) -> Request {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Request::Write {
            client: self.session,
            seq,
            ack_below: seq,
            op: WriteOp::Put {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                return_previous: false,
            },
        }
    }

    /// Writes `key = value` through the leader among `up` minus `avoid`; the node that
    /// committed it and its index.
    pub async fn write(
        &self,
        key: &str,
        value: &str,
        up: &[NodeId],
        avoid: &[NodeId],
        limit: Duration,
    ) -> Result<(NodeId, Index), String> {
        let request = self.write_request(key, value);
        match self.request(&request, up, avoid, limit).await? {
            (id, Response::Written { index, .. }) => Ok((id, index)),
            (id, other) => Err(format!("node {id} answered {other:?}")),
        }
    }

    /// Every pair in the store: linearizable through the leader, or (`on = Some(id)`)
    /// node `id`'s local state.
    pub async fn list(
        &self,
        up: &[NodeId],
        on: Option<NodeId>,
        limit: Duration,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, String> {
        let (consistency, up): (Consistency, Vec<NodeId>) = match on {
            Some(id) => (Consistency::Stale, vec![id]),
            None => (Consistency::Linearizable, up.to_vec()),
        };
        let request = Request::Read {
            op: ReadOp::List {
                prefix: Vec::new(),
                limit: 100_000,
            },
            consistency,
        };
        match self.request(&request, &up, &[], limit).await? {
            (_, Response::Pairs(p)) => Ok(p),
            (id, other) => Err(format!("node {id} answered {other:?}")),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A client bound to one node (so each node keeps its own connection).
fn node_client(admin: &Credentials, addr: SocketAddr) -> Result<Client, Error> {
    Ok(Client::new(admin, vec![addr])?
        .with_attempt_timeout(Duration::from_millis(500))
        .with_connect_timeout(Duration::from_millis(300)))
}

/// Polls `f` every 10 ms until it returns `Some` or `limit` passes.
pub async fn poll<T>(limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        smol::Timer::after(Duration::from_millis(10)).await;
    }
}
