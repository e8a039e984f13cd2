//! A cluster of smol node tasks on 127.0.0.1 for the integration tests:
//! real UDP sockets, a durable store per node that keeps only what was
//! flushed (a crash loses the rest), an optional lossy network, and bounded
//! waits.
#![allow(dead_code)]
// Test support: a poisoned lock or a failed bind is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coracle::{
    Batch, Config, Entry, EntryKind, Index, LogStorage, MemStore, Node, NodeId, Output, Role,
    SyncToken, VecLog,
};
use coracle_udp::codec::{mtu_config, Link, DEFAULT_ENTRIES};
use coracle_udp::event_loop::Datagrams;
use coracle_udp::node::{Application, Completion, UdpNode};
use coracle_udp::smol::{node_task, ClientError, NodeHandle, SmolDatagrams, Status};
use coracle_udp::{ClusterKey, DEFAULT_MTU};

pub const CLUSTER: u64 = 0xC0DA_C1E0;
pub const TICK: Duration = Duration::from_millis(10);
pub const STRIDE: u64 = 256;

/// The last datagrams a node sent, with their receivers.
pub type Tap = Arc<Mutex<VecDeque<(NodeId, Vec<u8>)>>>;

pub fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x77; 32])
}

/// The replicated state machine of the tests: the commands applied, in
/// order, and the index applied last (no-ops included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    pub index: Index,
    pub commands: Vec<Vec<u8>>,
}

impl StateMachine {
    /// Its snapshot: the index, then each command with its length.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.index.to_le_bytes().to_vec();
        for c in &self.commands {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(c);
        }
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Option<Self> {
        let index = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        bytes = &bytes[8..];
        let mut commands = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
            commands.push(bytes.get(4..4 + len)?.to_vec());
            bytes = &bytes[4 + len..];
        }
        Some(Self { index, commands })
    }
}

/// When the stores make a batch durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Nothing is durable: a restarted node starts empty.
    Never,
    /// At once ([`Completion::Now`]).
    Now,
    /// On a task of its own, which reports it through the node's handle
    /// ([`Completion::Later`], `NodeHandle::persisted`).
    Later,
}

/// A member's stores: `written` holds every batch performed, `durable`
/// what a crash keeps (the same store when batches are durable at once).
#[derive(Clone)]
pub struct Stores {
    pub written: Arc<Mutex<MemStore>>,
    pub durable: Arc<Mutex<MemStore>>,
}

/// The host of a test node: the state machine, the counter store and the
/// durable store (a `MemStore` standing for the disk).
pub struct App {
    state: Arc<Mutex<StateMachine>>,
    counter: Arc<Mutex<Option<u64>>>,
    stores: Stores,
    flush: Flush,
    to_flush: Option<smol::channel::Sender<SyncToken>>,
}

impl Application for App {
    fn persist(&mut self, batch: &Batch<'_>) -> Completion {
        if self.flush == Flush::Never {
            return Completion::Now;
        }
        self.stores.written.lock().unwrap().persist(batch);
        match &self.to_flush {
            Some(flusher) if flusher.try_send(batch.token).is_ok() => Completion::Later,
            Some(_) => Completion::Failed,
            None => Completion::Now,
        }
    }

    fn fetch(&mut self, from: Index, to: Index, hand_in: &mut dyn FnMut(Entry<'_>)) -> Completion {
        let store = self.stores.written.lock().unwrap();
        store.fetch(from, to).for_each(hand_in);
        Completion::Now
    }

    fn snapshot_chunk(
        &mut self,
        index: Index,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<(usize, bool)> {
        let store = self.stores.written.lock().unwrap();
        let (bytes, done) = store.snapshot_chunk(index, offset, buf.len())?;
        buf[..bytes.len()].copy_from_slice(bytes);
        Some((bytes.len(), done))
    }

    fn output(&mut self, output: Output<'_>) {
        match output {
            Output::Apply(entry) => {
                let mut state = self.state.lock().unwrap();
                state.index = entry.index;
                if entry.kind == EntryKind::Command {
                    state.commands.push(entry.data.to_vec());
                }
            }
            Output::RestoreSnapshot { index, .. } => {
                let store = self.stores.written.lock().unwrap();
                let (meta, bytes) = store.snapshot.as_ref().expect("a kept snapshot");
                assert_eq!(meta.index, index);
                *self.state.lock().unwrap() = StateMachine::decode(bytes).expect("a snapshot");
            }
            _ => {}
        }
    }

    fn persist_counter(&mut self, mark: u64) -> bool {
        *self.counter.lock().unwrap() = Some(mark);
        true
    }
}

/// `Application::snapshot_chunk` over a `MemStore`: the bytes of its kept
/// snapshot at `index` from `offset`, copied into `buf`.
pub fn read_chunk(
    store: &MemStore,
    index: Index,
    offset: u64,
    buf: &mut [u8],
) -> Option<(usize, bool)> {
    let (bytes, done) = store.snapshot_chunk(index, offset, buf.len())?;
    buf[..bytes.len()].copy_from_slice(bytes);
    Some((bytes.len(), done))
}

/// Makes the written batches durable one token at a time, as a flush
/// thread would, and tells the node.
async fn flusher(tokens: smol::channel::Receiver<SyncToken>, stores: Stores, handle: NodeHandle) {
    while let Ok(token) = tokens.recv().await {
        smol::Timer::after(Duration::from_millis(1)).await;
        let written = stores.written.lock().unwrap().clone();
        *stores.durable.lock().unwrap() = written;
        if handle.persisted(token).await.is_err() {
            return;
        }
    }
}

/// splitmix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What a [`TestNet`] did to the datagrams it was given.
#[derive(Default, Debug, Clone, Copy)]
pub struct Faults {
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

/// The real socket, optionally lossy: drops 20% of the datagrams sent,
/// duplicates 10% and holds back 10% to send after the next one
/// (reordering). Records the last datagrams sent (a tap for replays).
pub struct TestNet {
    inner: SmolDatagrams,
    loss: Option<Rng>,
    held: Option<(NodeId, Vec<u8>)>,
    tap: Tap,
    faults: Arc<Mutex<Faults>>,
}

impl Datagrams for TestNet {
    type Error = std::io::Error;

    async fn send(&mut self, to: NodeId, datagram: &[u8]) -> std::io::Result<()> {
        {
            let mut tap = self.tap.lock().unwrap();
            if tap.len() == 64 {
                tap.pop_front();
            }
            tap.push_back((to, datagram.to_vec()));
        }
        let Some(rng) = self.loss.as_mut() else {
            return self.inner.send(to, datagram).await;
        };
        let roll = rng.below(100);
        if roll < 20 {
            self.faults.lock().unwrap().dropped += 1;
            return Ok(());
        }
        if roll < 30 {
            self.faults.lock().unwrap().duplicated += 1;
            self.inner.send(to, datagram).await?;
            return self.inner.send(to, datagram).await;
        }
        if roll < 40 {
            self.faults.lock().unwrap().reordered += 1;
            if let Some((to, held)) = self.held.replace((to, datagram.to_vec())) {
                self.inner.send(to, &held).await?;
            }
            return Ok(());
        }
        self.inner.send(to, datagram).await?;
        if let Some((to, held)) = self.held.take() {
            self.inner.send(to, &held).await?;
        }
        Ok(())
    }

    async fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.recv(buf).await
    }
}

type Task<S> = smol::Task<(UdpNode<S>, App)>;

/// One member: its durable state survives its task.
pub struct Member<S: LogStorage> {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub stores: Stores,
    counter: Arc<Mutex<Option<u64>>>,
    pub state: Arc<Mutex<StateMachine>>,
    pub tap: Tap,
    running: Option<(NodeHandle, Task<S>, Option<smol::Task<()>>)>,
    starts: u64,
}

pub struct Cluster<S: LogStorage = VecLog> {
    pub members: Vec<Member<S>>,
    lossy: bool,
    flush: Flush,
    /// A fresh memory log.
    new_log: fn() -> S,
    /// Changes the configuration of every node (after `mtu_config`).
    pub configure: fn(&mut Config),
    pub faults: Arc<Mutex<Faults>>,
}

impl Cluster<VecLog> {
    /// `n` nodes with ids 1..=n on 127.0.0.1, ports picked by the system,
    /// their batches durable at once.
    pub fn start(n: u64, lossy: bool) -> Self {
        Self::start_with(n, lossy, Flush::Now)
    }

    /// `n` nodes whose batches become durable as `flush` says.
    pub fn start_with(n: u64, lossy: bool, flush: Flush) -> Self {
        Self::start_full(n, lossy, flush, VecLog::new, |_| {})
    }
}

impl<S: LogStorage + Send + 'static> Cluster<S> {
    /// `n` nodes with memory logs from `new_log`, configured by `configure`.
    pub fn start_full(
        n: u64,
        lossy: bool,
        flush: Flush,
        new_log: fn() -> S,
        configure: fn(&mut Config),
    ) -> Self {
        let mut sockets = Vec::new();
        let mut members = Vec::new();
        for id in 1..=n {
            let socket = SmolDatagrams::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let written = Arc::new(Mutex::new(MemStore::new()));
            let durable = match flush {
                Flush::Later => Arc::new(Mutex::new(MemStore::new())),
                Flush::Now | Flush::Never => written.clone(),
            };
            members.push(Member {
                id,
                addr: socket.local_addr().unwrap(),
                stores: Stores { written, durable },
                counter: Arc::new(Mutex::new(None)),
                state: Arc::new(Mutex::new(StateMachine::default())),
                tap: Arc::new(Mutex::new(VecDeque::new())),
                running: None,
                starts: 0,
            });
            sockets.push(socket);
        }
        let mut cluster = Cluster {
            members,
            lossy,
            flush,
            new_log,
            configure,
            faults: Arc::new(Mutex::new(Faults::default())),
        };
        for (i, socket) in sockets.into_iter().enumerate() {
            cluster.launch(i, socket);
        }
        cluster
    }

    fn launch(&mut self, i: usize, mut socket: SmolDatagrams) {
        let ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        for m in &self.members {
            if m.id != self.members[i].id {
                socket.set_peer(m.id, m.addr);
            }
        }
        let m = &mut self.members[i];
        m.starts += 1;
        let mut config =
            mtu_config::<DEFAULT_MTU, DEFAULT_ENTRIES>(Config::new(m.id, m.id * 1000 + m.starts));
        config.election_ticks = 20;
        config.heartbeat_ticks = 3;
        config.retransmit_ticks = 6;
        (self.configure)(&mut config);
        // What a crash kept: the durable store, which the node's memory log
        // is filled from.
        let durable = m.stores.durable.lock().unwrap().clone();
        *m.stores.written.lock().unwrap() = durable.clone();
        let mut log = (self.new_log)();
        durable.recover(&mut log).unwrap();
        let node = Node::new(config, log, &ids).unwrap();
        let stored = *m.counter.lock().unwrap();
        let link = Link::new(
            &key(),
            CLUSTER,
            m.id,
            coracle_udp::SendCounter::resume(stored, STRIDE),
        );
        let udp = UdpNode::new(node, link).unwrap();
        // A restarted node's state machine starts empty: the node restores
        // it from the snapshot, then replays the log.
        m.state = Arc::new(Mutex::new(StateMachine::default()));
        let (to_flush, tokens) = smol::channel::unbounded();
        let app = App {
            state: m.state.clone(),
            counter: m.counter.clone(),
            stores: m.stores.clone(),
            flush: self.flush,
            to_flush: (self.flush == Flush::Later).then_some(to_flush),
        };
        let net = TestNet {
            inner: socket,
            loss: self.lossy.then_some(Rng(0xABCD ^ (m.id << 8) ^ m.starts)),
            held: None,
            tap: m.tap.clone(),
            faults: self.faults.clone(),
        };
        let (handle, task) = node_task(udp, app, net, TICK);
        let flushing = (self.flush == Flush::Later)
            .then(|| smol::spawn(flusher(tokens, m.stores.clone(), handle.clone())));
        m.running = Some((handle, smol::spawn(task), flushing));
    }

    /// Kills node `id`: its task is dropped; only what its store made
    /// durable survives.
    pub fn kill(&mut self, id: NodeId) {
        let m = self.member_mut(id);
        m.running = None;
    }

    /// Node `id` snapshots its state machine into its store, and tells the
    /// node (which compacts its log behind it). Returns the index.
    pub async fn snapshot(&self, id: NodeId) -> Index {
        let m = self.members.iter().find(|m| m.id == id).unwrap();
        let (index, bytes) = {
            let state = m.state.lock().unwrap();
            (state.index, state.encode())
        };
        for store in [&m.stores.written, &m.stores.durable] {
            store.lock().unwrap().save_taken(index, bytes.clone());
        }
        let handle = self.handle(id).expect("running");
        handle.snapshot_taken(index).await.expect("snapshot kept");
        index
    }

    /// Restarts node `id` on its old address from its durable state.
    pub fn restart(&mut self, id: NodeId) {
        let i = self.members.iter().position(|m| m.id == id).unwrap();
        let addr = self.members[i].addr;
        let socket = SmolDatagrams::bind(addr).unwrap();
        self.launch(i, socket);
    }

    /// A running node other than `leader`.
    pub fn follower_of(&self, leader: NodeId) -> NodeId {
        self.running()
            .into_iter()
            .find(|&id| id != leader)
            .expect("a running follower")
    }

    pub fn member_mut(&mut self, id: NodeId) -> &mut Member<S> {
        self.members.iter_mut().find(|m| m.id == id).unwrap()
    }

    pub fn handle(&self, id: NodeId) -> Option<&NodeHandle> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.running.as_ref().map(|(h, _, _)| h))
    }

    pub fn running(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|m| m.running.is_some())
            .map(|m| m.id)
            .collect()
    }

    pub async fn status(&self, id: NodeId) -> Option<Status> {
        let handle = self.handle(id)?;
        with_timeout(Duration::from_secs(2), handle.status())
            .await
            .and_then(Result::ok)
    }

    /// Waits (at most `timeout`) for a leader among the running nodes that
    /// a majority of the cluster follows, other than `not`.
    pub async fn wait_leader(&self, not: Option<NodeId>, timeout: Duration) -> NodeId {
        let deadline = Instant::now() + timeout;
        let majority = self.members.len() / 2 + 1;
        loop {
            let mut statuses = Vec::new();
            for id in self.running() {
                if let Some(s) = self.status(id).await {
                    statuses.push(s);
                }
            }
            for s in &statuses {
                let agree = statuses
                    .iter()
                    .filter(|o| o.term == s.term && o.leader == Some(s.id))
                    .count();
                if s.role == Role::Leader && Some(s.id) != not && agree >= majority {
                    return s.id;
                }
            }
            assert!(Instant::now() < deadline, "no leader: {statuses:#?}");
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    }

    /// Commits `command` through whichever node leads, retrying (at most
    /// `timeout`) on refusals and timeouts.
    pub async fn commit(&self, command: &[u8], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            assert!(
                Instant::now() < deadline,
                "{:?} not committed",
                String::from_utf8_lossy(command)
            );
            let leader = self.wait_leader(None, timeout).await;
            let Some(handle) = self.handle(leader) else {
                continue;
            };
            match with_timeout(Duration::from_secs(2), handle.propose(command.to_vec())).await {
                Some(Ok(_)) => return,
                Some(Err(ClientError::Propose(_) | ClientError::Lost { .. })) | None => {
                    smol::Timer::after(Duration::from_millis(20)).await;
                }
                Some(Err(e)) => panic!("{e}"),
            }
        }
    }

    /// Waits (at most `timeout`) until every running node applied every
    /// command of `expected`.
    pub async fn wait_applied(&self, expected: &[Vec<u8>], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let lagging: Vec<NodeId> = self
                .members
                .iter()
                .filter(|m| m.running.is_some())
                .filter(|m| {
                    let state = m.state.lock().unwrap();
                    !expected.iter().all(|c| state.commands.contains(c))
                })
                .map(|m| m.id)
                .collect();
            if lagging.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes {lagging:?} did not apply everything"
            );
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    }

    /// State Machine Safety: every node applied a prefix of the same
    /// sequence.
    pub fn check_same_sequence(&self) {
        let sequences: Vec<Vec<Vec<u8>>> = self
            .members
            .iter()
            .map(|m| m.state.lock().unwrap().commands.clone())
            .collect();
        let longest = sequences.iter().max_by_key(|s| s.len()).unwrap();
        for (m, s) in self.members.iter().zip(&sequences) {
            assert_eq!(
                &longest[..s.len()],
                &s[..],
                "node {} applied a different sequence",
                m.id
            );
        }
    }
}

/// `future`, or `None` after `timeout`.
pub async fn with_timeout<T>(
    timeout: Duration,
    future: impl std::future::Future<Output = T>,
) -> Option<T> {
    smol::future::or(async { Some(future.await) }, async {
        smol::Timer::after(timeout).await;
        None
    })
    .await
}
