//! A cluster of smol node tasks on 127.0.0.1 for the integration tests:
//! real UDP sockets, a storage that keeps only what was synced (a crash
//! loses the rest), an optional lossy network, and bounded waits.
#![allow(dead_code)]
// Test support: a poisoned lock or a failed bind is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coracle::{
    Config, Entry, EntryKind, HardState, Index, LogStorage, Node, NodeId, Output, Role,
    StorageError, Term, VecLog,
};
use coracle_udp::codec::{mtu_config, Link, DEFAULT_ENTRIES};
use coracle_udp::event_loop::Datagrams;
use coracle_udp::node::{Application, Durable, UdpNode};
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

/// A `VecLog` whose synced state is copied to `durable`: what survives a
/// crash (a plain in-memory log without it).
pub struct MirrorLog {
    log: VecLog,
    durable: Option<Arc<Mutex<VecLog>>>,
}

impl LogStorage for MirrorLog {
    fn hard_state(&self) -> HardState {
        self.log.hard_state()
    }
    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        self.log.set_hard_state(hard_state)
    }
    fn first_index(&self) -> Index {
        self.log.first_index()
    }
    fn last_index(&self) -> Index {
        self.log.last_index()
    }
    fn term(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }
    fn entry(&self, index: Index) -> Option<Entry<'_>> {
        self.log.entry(index)
    }
    fn append(&mut self, entry: &Entry<'_>) -> Result<(), StorageError> {
        self.log.append(entry)
    }
    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
        self.log.truncate_suffix(from)
    }
    fn compact(&mut self, through: Index) -> Result<(), StorageError> {
        self.log.compact(through)
    }
}

impl Durable for MirrorLog {
    fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(durable) = &self.durable {
            *durable.lock().unwrap() = self.log.clone();
        }
        Ok(())
    }
}

/// The state machine: the commands applied, in order; and the counter store.
pub struct App {
    applied: Arc<Mutex<Vec<Vec<u8>>>>,
    counter: Arc<Mutex<Option<u64>>>,
}

impl Application for App {
    fn output(&mut self, output: Output<'_>) {
        if let Output::Apply(entry) = output {
            if entry.kind == EntryKind::Command {
                self.applied.lock().unwrap().push(entry.data.to_vec());
            }
        }
    }

    fn persist_counter(&mut self, mark: u64) -> bool {
        *self.counter.lock().unwrap() = Some(mark);
        true
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

type Task = smol::Task<(UdpNode<MirrorLog>, App)>;

/// One member: its durable state survives its task.
pub struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
    durable: Arc<Mutex<VecLog>>,
    counter: Arc<Mutex<Option<u64>>>,
    pub applied: Arc<Mutex<Vec<Vec<u8>>>>,
    pub tap: Tap,
    running: Option<(NodeHandle, Task)>,
    starts: u64,
}

pub struct Cluster {
    pub members: Vec<Member>,
    lossy: bool,
    /// Keep what is synced for restarts (a copy of the log on every sync).
    durable: bool,
    pub faults: Arc<Mutex<Faults>>,
}

impl Cluster {
    /// `n` nodes with ids 1..=n on 127.0.0.1, ports picked by the system.
    pub fn start(n: u64, lossy: bool) -> Self {
        Self::start_with(n, lossy, true)
    }

    /// `n` nodes; with `durable` false the logs are plain `VecLog`s and a
    /// restarted node starts empty.
    pub fn start_with(n: u64, lossy: bool, durable: bool) -> Self {
        let mut sockets = Vec::new();
        let mut members = Vec::new();
        for id in 1..=n {
            let socket = SmolDatagrams::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            members.push(Member {
                id,
                addr: socket.local_addr().unwrap(),
                durable: Arc::new(Mutex::new(VecLog::new())),
                counter: Arc::new(Mutex::new(None)),
                applied: Arc::new(Mutex::new(Vec::new())),
                tap: Arc::new(Mutex::new(VecDeque::new())),
                running: None,
                starts: 0,
            });
            sockets.push(socket);
        }
        let mut cluster = Cluster {
            members,
            lossy,
            durable,
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
        let log = MirrorLog {
            log: m.durable.lock().unwrap().clone(),
            durable: self.durable.then(|| m.durable.clone()),
        };
        let node = Node::new(config, log, &ids).unwrap();
        let stored = *m.counter.lock().unwrap();
        let link = Link::new(
            &key(),
            CLUSTER,
            m.id,
            coracle_udp::SendCounter::resume(stored, STRIDE),
        );
        let udp = UdpNode::new(node, link).unwrap();
        // A restarted node's state machine starts empty and replays the log.
        m.applied = Arc::new(Mutex::new(Vec::new()));
        let app = App {
            applied: m.applied.clone(),
            counter: m.counter.clone(),
        };
        let net = TestNet {
            inner: socket,
            loss: self.lossy.then_some(Rng(0xABCD ^ (m.id << 8) ^ m.starts)),
            held: None,
            tap: m.tap.clone(),
            faults: self.faults.clone(),
        };
        let (handle, task) = node_task(udp, app, net, TICK);
        m.running = Some((handle, smol::spawn(task)));
    }

    /// Kills node `id`: its task is dropped; only what it synced survives.
    pub fn kill(&mut self, id: NodeId) {
        let m = self.member_mut(id);
        m.running = None;
    }

    /// Restarts node `id` on its old address from its durable state.
    pub fn restart(&mut self, id: NodeId) {
        let i = self.members.iter().position(|m| m.id == id).unwrap();
        let addr = self.members[i].addr;
        let socket = SmolDatagrams::bind(addr).unwrap();
        self.launch(i, socket);
    }

    pub fn member_mut(&mut self, id: NodeId) -> &mut Member {
        self.members.iter_mut().find(|m| m.id == id).unwrap()
    }

    pub fn handle(&self, id: NodeId) -> Option<&NodeHandle> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.running.as_ref().map(|(h, _)| h))
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
                    let applied = m.applied.lock().unwrap();
                    !expected.iter().all(|c| applied.contains(c))
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
            .map(|m| m.applied.lock().unwrap().clone())
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
